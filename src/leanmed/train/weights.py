"""A cache of pretrained weights, filled once where the network is, read by training jobs that have none.

One model's entry in the cache folder (config ``training.weights_dir``) is three files:

- ``<model>.safetensors``: timm's default ImageNet weights of the model, as the Hugging Face Hub serves them;
- ``<model>.json``: the manifest: the file, its size and sha256, and where it came from (hub endpoint, repository,
  revision and commit, timm's pretrained tag), or, for a model timm has no ImageNet weights for (the ViT-B/32+, the
  MLP), that there is none and the model starts from random weights;
- ``<model>.sha256``: the checksum line (``sha256sum -c`` reads it; empty when there is no weights file).

``fetch_weights`` (the workflow's ``fetch_weights`` rule, a local rule) fills an entry; ``cache_problem`` checks one
against its manifest (the workflow fetches again when the file no longer matches its checksum); training jobs load
the local file (``build_model(name, size, pretrained=<model>.safetensors)``), which needs no network.

Kept free of torch and timm imports at module level: the workflow checks the cache while it plans.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import shutil
import tempfile
from pathlib import Path

from leanmed.fingerprint import file_sha256

__all__ = [
    "WeightsFetchError",
    "CachedWeightsError",
    "weights_file",
    "manifest_file",
    "checksum_file",
    "read_manifest",
    "cache_problem",
    "set_aside",
    "weights_sha256",
    "weights_identity",
    "weights_source",
    "fetch_weights",
    "verify_cached",
    "describe",
]

SAFE_WEIGHTS = "model.safetensors"
TORCH_WEIGHTS = "pytorch_model.bin"
NO_WEIGHTS_NOTE = "timm has no ImageNet weights for this model: training starts from random weights"


class WeightsFetchError(RuntimeError):
    """The weights of a model could not be fetched into the cache."""


class CachedWeightsError(RuntimeError):
    """A cached weights file does not match its manifest (corrupt or replaced)."""


def weights_file(weights_dir: str | Path, model: str) -> Path:
    return Path(weights_dir) / f"{model}.safetensors"


def manifest_file(weights_dir: str | Path, model: str) -> Path:
    return Path(weights_dir) / f"{model}.json"


def checksum_file(weights_dir: str | Path, model: str) -> Path:
    return Path(weights_dir) / f"{model}.sha256"


def read_manifest(path: str | Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def cache_problem(weights_dir: str | Path, model: str) -> str | None:
    """Why the cached entry of ``model`` cannot be used as it is (None: usable, or not fetched yet).

    A manifest that records a weights file whose size or sha256 the file on disk no longer has, or a missing file.
    """
    manifest = read_manifest(manifest_file(weights_dir, model))
    if manifest is None or not manifest.get("available"):
        return None
    path = Path(weights_dir) / manifest["file"]
    if not path.is_file():
        return f"{path} is missing"
    size = path.stat().st_size
    if size != manifest["size"]:
        return f"{path} has {size} bytes, its manifest records {manifest['size']}"
    digest = weights_sha256(path)
    if digest != manifest["sha256"]:
        return f"{path} has sha256 {digest}, its manifest records {manifest['sha256']}"
    return None


@functools.lru_cache(maxsize=64)
def _sha256_of(resolved: str, size: int, mtime_ns: int) -> str:
    return file_sha256(resolved)


def weights_sha256(path: str | Path) -> str:
    """sha256 of a weights file, hashed once per process while its size and mtime stay the same (a training job
    checks a cached file against its manifest and fingerprints it for its checkpoint: one read of the file)."""
    path = Path(path).expanduser().resolve()
    status = path.stat()
    return _sha256_of(str(path), status.st_size, status.st_mtime_ns)


def weights_identity(pretrained: bool | str | Path | None) -> bool | str:
    """What initialises a model, without where its file lies: False / True (timm's weights, by name), or
    ``sha256:<hex>`` of a weights file. A file moved or a weights cache put elsewhere is the same weights: a run
    trained from them is resumed, not trained again; a file replaced by other weights is not."""
    if pretrained is None or isinstance(pretrained, bool):
        return bool(pretrained)
    path = Path(pretrained).expanduser()
    if path.is_file():
        return f"sha256:{weights_sha256(path)}"
    manifest = read_manifest(path.with_suffix(".json"))
    if manifest is not None and not manifest.get("available"):
        return False  # a cache entry of a model timm has no weights for: random initialisation
    raise FileNotFoundError(f"pretrained weights file {str(path)!r} does not exist")


def set_aside(weights_dir: str | Path, model: str) -> Path | None:
    """Move a model's weights file that fails its checksum to ``<file>.corrupt`` and drop its checksum line, so that
    the workflow fetches it again (the manifest, which training jobs depend on, stays until the new fetch)."""
    path = weights_file(weights_dir, model)
    checksum_file(weights_dir, model).unlink(missing_ok=True)
    if not path.exists():
        return None
    aside = path.with_name(path.name + ".corrupt")
    os.replace(path, aside)
    return aside


def weights_source(model: str) -> dict:
    """Where timm takes the default pretrained weights of ``model`` from: the Hugging Face Hub repository (and its
    revision) and timm's tag, or ``available: False`` for a model with no ImageNet weights in timm."""
    from leanmed.train.models import get_model_spec, has_pretrained_weights

    spec = get_model_spec(model)
    if not has_pretrained_weights(model):
        return dict(model=model, timm_name=spec.timm_name, available=False)
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(spec.timm_name)
    source = dict(model=model, timm_name=spec.timm_name, available=True, tag=getattr(cfg, "tag", None))
    if cfg.hf_hub_id:
        repo_id, _, revision = cfg.hf_hub_id.partition("@")
        source.update(repo_id=repo_id, revision=revision or "main", filename=cfg.hf_hub_filename or SAFE_WEIGHTS)
    else:
        source.update(url=cfg.url)
    return source


def _fill_by_hand(model: str, weights_dir: Path, source: dict) -> str:
    where = weights_file(weights_dir, model)
    if source.get("repo_id"):
        url = f"https://huggingface.co/{source['repo_id']}/resolve/{source['revision']}/{SAFE_WEIGHTS}"
    else:
        url = source.get("url") or "(timm names no download location)"
    return (
        f"Fill the cache on a machine with network access (a cluster's login node): `snakemake --until fetch_weights` "
        f"with the same config. Or by hand: download {url} and save it as {where}, then run that command again "
        f"(offline, it records the file you placed), or set `training.pretrained` for {model!r} to the file's path."
    )


def _download(source: dict, into: Path) -> tuple[Path, dict]:
    """Download the weights of ``source`` into folder ``into``; returns the file and what was downloaded."""
    if not source.get("repo_id"):
        raise WeightsFetchError(f"timm has no Hugging Face Hub repository for {source['timm_name']!r}")
    import huggingface_hub
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    record = dict(
        hub=constants.ENDPOINT, repo_id=source["repo_id"], revision=source["revision"],
        huggingface_hub=huggingface_hub.__version__,
    )
    for filename in dict.fromkeys([source["filename"], SAFE_WEIGHTS, TORCH_WEIGHTS]):
        try:
            path = Path(hf_hub_download(
                source["repo_id"], filename, revision=source["revision"], cache_dir=into / "hub",
            ))
        except EntryNotFoundError:
            continue
        record["filename"] = filename
        snapshot = path.parent
        record["commit"] = snapshot.name if len(snapshot.name) == 40 else None
        record["url"] = f"{constants.ENDPOINT}/{source['repo_id']}/resolve/{source['revision']}/{filename}"
        if filename.endswith(".safetensors"):
            return path, record
        import safetensors.torch
        import torch

        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        converted = into / SAFE_WEIGHTS
        safetensors.torch.save_file({key: value.contiguous() for key, value in state.items()}, str(converted))
        record["converted_from"] = filename
        return converted, record
    raise WeightsFetchError(f"{source['repo_id']} has none of {SAFE_WEIGHTS}, {TORCH_WEIGHTS}")


def _write_entry(weights_dir: Path, model: str, manifest: dict) -> dict:
    checksum = checksum_file(weights_dir, model)
    checksum.write_text(f"{manifest['sha256']}  {manifest['file']}\n" if manifest.get("available") else "")
    target = manifest_file(weights_dir, model)
    temporary = target.with_name(target.name + ".tmp")
    temporary.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(temporary, target)
    return manifest


def fetch_weights(model: str, weights_dir: str | Path, source: dict | None = None, log=print) -> dict:
    """Fill the cache entry of ``model`` in ``weights_dir`` and return its manifest.

    A file already there that matches the manifest is kept (nothing is downloaded); otherwise the weights are
    downloaded (into a temporary folder, then moved into place, so an interrupted download leaves nothing behind).
    When the download fails and a weights file was placed there by hand, that file is recorded (with the reason);
    otherwise WeightsFetchError names the model, the cache folder and how to fill it by hand.
    """
    weights_dir = Path(weights_dir)
    weights_dir.mkdir(parents=True, exist_ok=True)
    source = source or weights_source(model)
    base = dict(model=model, timm_name=source["timm_name"], recorded_at=_now())
    if not source["available"]:
        log(f"{model}: {NO_WEIGHTS_NOTE}; nothing to download")
        return _write_entry(weights_dir, model, dict(base, available=False, note=NO_WEIGHTS_NOTE))
    target = weights_file(weights_dir, model)
    previous = read_manifest(manifest_file(weights_dir, model))
    if previous and previous.get("available") and target.is_file() and not cache_problem(weights_dir, model):
        log(f"{model}: {target} matches its manifest (sha256 {previous['sha256']}); nothing to download")
        return _write_entry(weights_dir, model, previous)
    with tempfile.TemporaryDirectory(prefix=f".fetch-{model}-", dir=weights_dir) as scratch:
        try:
            downloaded, record = _download(source, Path(scratch))
        except Exception as error:
            reason = f"{type(error).__name__}: {error}"
            if target.is_file():
                log(f"{model}: the download failed ({reason}); recording the file placed by hand at {target}")
                record = dict(placed_by_hand=True, download_error=reason[:500], expected=source)
            else:
                raise WeightsFetchError(
                    f"Could not fetch the pretrained weights of model {model!r} (timm {source['timm_name']!r}, "
                    f"hub repository {source.get('repo_id')!r}) into the weights cache folder {weights_dir} "
                    f"(config training.weights_dir): {reason}. {_fill_by_hand(model, weights_dir, source)}"
                ) from error
        else:
            # The hub cache's snapshot file is a link to its blob: move the blob itself.
            shutil.move(str(downloaded.resolve()), target.with_name(target.name + ".part"))
            os.replace(target.with_name(target.name + ".part"), target)
            log(f"{model}: downloaded {record['url']} (commit {record.get('commit')}) to {target}")
    manifest = dict(
        base, available=True, tag=source.get("tag"), file=target.name, size=target.stat().st_size,
        sha256=file_sha256(target), source=record,
    )
    return _write_entry(weights_dir, model, manifest)


def verify_cached(path: str | Path) -> dict | None:
    """The manifest beside a weights file (None if there is none); raises CachedWeightsError when the file does not
    match it. A training job calls this before loading, so a corrupt file fails the job at once, saying what to do."""
    path = Path(path)
    manifest = read_manifest(path.with_suffix(".json"))
    if manifest is None:
        return None
    if not manifest.get("available"):
        return manifest
    problem = cache_problem(path.parent, path.stem)
    if problem:
        raise CachedWeightsError(
            f"cached pretrained weights do not match their manifest: {problem}. Fetch them again on a machine with "
            f"network access: `snakemake --until fetch_weights` (it sets the file aside and downloads it anew)."
        )
    return manifest


def describe(path: str | Path) -> str | None:
    """One line on where a cached weights file came from (for metrics.json), or None without a manifest beside it."""
    manifest = read_manifest(Path(path).with_suffix(".json"))
    if manifest is None:
        return None
    if not manifest.get("available"):
        return f"none available in timm: random initialisation (manifest {Path(path).with_suffix('.json')})"
    source = manifest.get("source", {})
    origin = "placed by hand" if source.get("placed_by_hand") else (
        f"{source.get('hub')}/{source.get('repo_id')} {source.get('filename')} commit {source.get('commit')}"
    )
    return f"{path} (timm {manifest['timm_name']}.{manifest.get('tag')}, {origin}, sha256 {manifest['sha256']})"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
