"""Pretrained weights fetched once into a cache (rule fetch_weights), for compute nodes without network.

A stand-in Hugging Face Hub on 127.0.0.1 (HF_ENDPOINT) serves timm's test_resnet weights (generated here at random
initialisation) the way huggingface_hub's hf_hub_download asks for them: HEAD then GET on
/{repo_id}/resolve/{revision}/{filename}, with ETag, X-Repo-Commit and Content-Length.
"""
import hashlib
import http.server
import json
import shutil
import socket
import threading
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from leanmed.train.models import build_model
from leanmed.train.record import pretrained_record
from leanmed.train.weights import (
    CachedWeightsError,
    WeightsFetchError,
    cache_problem,
    fetch_weights,
    manifest_file,
    weights_file,
    weights_identity,
    weights_source,
)

MODEL = "test_resnet"
REPO_ID = "timm/test_resnet.r160_in1k"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class StandInHub(http.server.ThreadingHTTPServer):
    """Serves one repository's model.safetensors; `status` forces an error answer; `requests` logs what was asked."""

    def __init__(self, payload):
        super().__init__(("127.0.0.1", 0), HubHandler)
        self.payload = payload
        self.status = 200
        self.requests = []

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.server_address[1]}"

    def downloads(self):
        """Weights files served (huggingface_hub also asks /api/agent-harnesses once a day: not counted)."""
        return [path for method, path in self.requests if method == "GET" and "/resolve/" in path]


class HubHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _answer(self, with_body):
        hub = self.server
        hub.requests.append((self.command, self.path))
        if hub.status != 200:
            self.send_response(hub.status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path != f"/{REPO_ID}/resolve/main/model.safetensors":
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("ETag", f'"{hashlib.sha256(hub.payload).hexdigest()}"')
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("Content-Length", str(len(hub.payload)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if with_body:
            self.wfile.write(hub.payload)

    def do_HEAD(self):
        self._answer(with_body=False)

    def do_GET(self):
        self._answer(with_body=True)


@pytest.fixture(scope="module")
def imagenet_like_weights(tmp_path_factory):
    """test_resnet as timm's ImageNet checkpoint is shaped (3 channels, 1000 classes), at random initialisation."""
    torch.manual_seed(0)
    model = timm.create_model(MODEL, pretrained=False)
    path = tmp_path_factory.mktemp("hub") / "model.safetensors"
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(path))
    return path.read_bytes()


@pytest.fixture
def hub(imagenet_like_weights, monkeypatch, tmp_path):
    server = StandInHub(imagenet_like_weights)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    # huggingface_hub reads HF_ENDPOINT at import: the environment serves Snakemake's jobs, the constant this process.
    from huggingface_hub import constants

    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setattr(constants, "ENDPOINT", server.endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    yield server
    server.shutdown()
    server.server_close()


def block_network(monkeypatch):
    """Every connection attempt fails (as on a compute node without network), and huggingface_hub is offline."""
    attempts = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError(f"network blocked in this test: connect to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return attempts


def test_source_is_timms_hub_repository_or_none():
    source = weights_source(MODEL)
    assert source["available"] and source["repo_id"] == REPO_ID and source["revision"] == "main"
    assert weights_source("densenet121")["repo_id"].startswith("timm/densenet121.")
    assert not weights_source("vit_base_patch32_plus_256")["available"]
    assert not weights_source("mlp")["available"]


def test_fetch_records_checksum_and_reuses_a_good_file(hub, tmp_path):
    cache = tmp_path / "weights"
    manifest = fetch_weights(MODEL, cache)
    path = weights_file(cache, MODEL)
    assert path.read_bytes() == hub.payload
    assert manifest["sha256"] == hashlib.sha256(hub.payload).hexdigest() and manifest["size"] == len(hub.payload)
    assert manifest["source"]["repo_id"] == REPO_ID and manifest["source"]["commit"] == COMMIT
    assert manifest["source"]["hub"] == hub.endpoint
    assert json.loads(manifest_file(cache, MODEL).read_text()) == manifest
    assert (cache / f"{MODEL}.sha256").read_text() == f"{manifest['sha256']}  {MODEL}.safetensors\n"
    assert sorted(p.name for p in cache.iterdir()) == [f"{MODEL}.json", f"{MODEL}.safetensors", f"{MODEL}.sha256"]
    assert len(hub.downloads()) == 1

    fetch_weights(MODEL, cache)  # a good file: nothing downloaded
    assert len(hub.downloads()) == 1

    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")  # same size, other bytes
    assert "sha256" in cache_problem(cache, MODEL)
    with pytest.raises(CachedWeightsError, match="fetch_weights"):
        build_model(MODEL, 32, pretrained=str(path))


def test_a_model_without_imagenet_weights_is_recorded_without_download(hub, tmp_path):
    manifest = fetch_weights("vit_base_patch32_plus_256", tmp_path)
    assert manifest["available"] is False and "random" in manifest["note"]
    assert not hub.downloads()


def test_weights_count_by_their_content_not_where_their_file_lies(hub, tmp_path):
    """What a checkpoint's fingerprint records of training.pretrained: a cache moved elsewhere holds the same weights,
    a file with other bytes other weights; a cache entry of a model without weights is a random initialisation."""
    cache = tmp_path / "weights"
    fetch_weights(MODEL, cache)
    fetch_weights("vit_base_patch32_plus_256", cache)
    moved = Path(shutil.copytree(cache, tmp_path / "scratch/weights"))
    identity = weights_identity(str(weights_file(cache, MODEL)))
    assert identity == f"sha256:{hashlib.sha256(hub.payload).hexdigest()}"
    assert weights_identity(weights_file(moved, MODEL)) == identity
    assert weights_identity(weights_file(moved, "vit_base_patch32_plus_256")) is False  # no file, random weights
    assert (weights_identity(True), weights_identity(False), weights_identity(None)) == (True, False, False)
    other = weights_file(moved, MODEL)
    other.write_bytes(other.read_bytes()[:-10] + b"0123456789")
    assert weights_identity(other) not in (identity, None)


def test_the_cached_file_loads_with_the_network_blocked(hub, tmp_path, monkeypatch):
    cache = tmp_path / "weights"
    fetch_weights(MODEL, cache)  # with the network up
    path = weights_file(cache, MODEL)
    requests_before = len(hub.requests)  # any request at all, not only downloads
    attempts = block_network(monkeypatch)
    monkeypatch.setattr("leanmed.train.models._hub_reachable", lambda *a, **k: pytest.fail("probed the hub"))

    model = build_model(MODEL, 32, pretrained=str(path))
    reference = timm.create_model(MODEL, pretrained=False)
    reference.load_state_dict(load_file(path))
    stem = next(name for name, value in model.state_dict().items() if value.ndim == 4)
    summed = reference.state_dict()[stem].sum(dim=1, keepdim=True)
    assert torch.allclose(model.state_dict()[stem], summed, atol=1e-6)  # the cached ImageNet stem, summed over RGB
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 1)
    assert not attempts and len(hub.requests) == requests_before

    class Cfg:
        pretrained = str(path)
        model = MODEL

    record = pretrained_record(Cfg)  # metrics.json's model.pretrained: the file and where it came from
    assert str(path) in record and REPO_ID in record and hashlib.sha256(hub.payload).hexdigest() in record


@pytest.mark.parametrize("failure", ["server error 500", "server down"])
def test_a_failed_fetch_names_the_model_and_the_cache_folder(hub, tmp_path, monkeypatch, failure):
    # huggingface_hub retries a 500 or a refused connection five times with back-off (about 46 s): skip the waits.
    import huggingface_hub.utils._http as hub_http

    monkeypatch.setattr(hub_http.time, "sleep", lambda seconds: None)
    if failure == "server down":
        hub.shutdown()
        hub.server_close()  # connections to its port are refused
    else:
        hub.status = 500
    cache = tmp_path / "weights"
    with pytest.raises(WeightsFetchError) as raised:
        fetch_weights(MODEL, cache)
    message = str(raised.value)
    assert MODEL in message and str(cache) in message and "snakemake --until fetch_weights" in message
    assert f"{MODEL}.safetensors" in message and not weights_file(cache, MODEL).exists()


# ---------------------------------------------------------------- the workflow's fetch_weights rule, for real
STUDY = {
    "datasets": {"rsna": {"models": ["test_resnet", "mlp_small"]}, "lidc": {"models": ["test_resnet"]}},
    "settings": ["fp32"],
    "seeds": [1],
    "downsampling": {"runs": []},
    "training": {"pretrained": True, "weights_dir": "cache/weights"},
    "dicom": {"shards": 2},
}
NO_RETRY_WAITS = (  # huggingface_hub retries a failed request 5 times with back-off (about 46 s): skip the waits
    "import huggingface_hub.utils._http as hub_http\nhub_http.time = type('T', (), {'sleep': staticmethod(lambda s: None),"
    " 'time': staticmethod(__import__('time').time), 'monotonic': staticmethod(__import__('time').monotonic)})\n"
)


@pytest.mark.integration
def test_fetch_weights_rule_fetches_once_refetches_a_corrupt_file_and_stops_on_failure(hub, tmp_path, monkeypatch):
    from leanmed.demo import generate_lidc, generate_rsna
    from workflow_helpers import copy_workflow, planned_jobs, snakemake, write_config

    workdir = copy_workflow(tmp_path / "study")
    generate_rsna(workdir / "data/rsna", n_patients=6, image_shape=(64, 52), seed=1)
    generate_lidc(workdir / "data/lidc/data_lidc.pickle", n_patients=4, patches_per_patient=2, seed=1)
    write_config(workdir / "study.yaml", STUDY)
    cache = workdir / "cache/weights"
    until = ("--until", "fetch_weights", "--configfile", "study.yaml")

    # The first plan fetches each pretrained model once (test_resnet from the hub; the MLP is recorded as having none).
    assert planned_jobs(workdir, *until) == {"fetch_weights": 2}
    assert planned_jobs(workdir, "--configfile", "study.yaml")["train"] == 3
    snakemake(workdir, "--cores", "1", *until)
    assert len(hub.downloads()) == 1
    manifest = json.loads((cache / "test_resnet.json").read_text())
    assert manifest["sha256"] == hashlib.sha256(hub.payload).hexdigest()
    assert json.loads((cache / "mlp_small.json").read_text())["available"] is False

    # A second plan fetches nothing; the training jobs load the cached file.
    assert planned_jobs(workdir, *until) == {}
    assert len(hub.downloads()) == 1
    dry_run = snakemake(workdir, "-n", "--configfile", "study.yaml").stdout
    assert "rule fetch_weights" not in dry_run and "cache/weights/test_resnet.json" in dry_run  # a train input

    # A corrupted file fails its checksum: set aside and fetched again; the training jobs are not replanned for it.
    path = cache / "test_resnet.safetensors"
    path.write_bytes(b"\0" * path.stat().st_size)
    assert planned_jobs(workdir, *until) == {"fetch_weights": 1}
    assert (cache / "test_resnet.safetensors.corrupt").exists()
    snakemake(workdir, "--cores", "1", *until)
    assert len(hub.downloads()) == 2 and path.read_bytes() == hub.payload
    assert planned_jobs(workdir, *until) == {}

    # A failed fetch (the hub answers 500) stops the study at that rule, naming the model and the cache folder.
    for entry in cache.glob("test_resnet.*"):
        entry.unlink()
    hub.status = 500
    patches = tmp_path / "patches"
    patches.mkdir()
    (patches / "sitecustomize.py").write_text(NO_RETRY_WAITS)
    monkeypatch.setenv("PYTHONPATH", str(patches))
    training_job = "results/runs/lidc/test_resnet/fp32/s1/seed1/metrics.json"  # the LIDC chain: quick to prepare
    process = snakemake(workdir, training_job, "--cores", "1", "--configfile", "study.yaml", check=False)
    message = process.stdout + process.stderr
    assert process.returncode != 0
    assert "Could not fetch the pretrained weights of model 'test_resnet'" in message
    assert "cache/weights" in message and "snakemake --until fetch_weights" in message
    assert "Error in rule fetch_weights" in message and not (workdir / training_job).exists()
