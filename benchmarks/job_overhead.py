"""Where a training job's wall time goes outside training: process start to metrics.json, phase by phase.

Each round starts a fresh Python process that does what ``workflow/scripts/train.py`` does (import
``leanmed.train.devices``, claim a device, import ``leanmed.train.job``, ``run(TrainConfig(...))``) on generated
PNGs (train/val/test like tests/test_loop.py), energy on as the study runs it. Inside the child, the job's functions
are wrapped by name with timers (self time: a nested timed call is subtracted from its caller), so the same driver
measures any revision of the code. Imports are timed by wrapping ``importlib._bootstrap._find_and_load`` (every first
import of a module goes through it) and attributed to the module's top-level package
(an import done lazily inside a phase is counted under "imports", not under that phase).

    fixed part = total (process start to metrics.json written) - training epochs (training + validation passes)

``--baseline REV`` also measures the code of git revision REV (a temporary ``git worktree``), alternating rounds
old/new so machine noise hits both alike, and prints the ratio of the median fixed parts.

Usage: python benchmarks/job_overhead.py [--rounds 3] [--model densenet121] [--image-size 64] [--epochs 2]
       [--train 48 --val 16 --test 64] [--batch-size 32] [--inference-repeats 5] [--checkpoint-interval 60]
       [--baseline REV] [--json OUT]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Order of the rows printed; anything else timed ends up under "other (untimed code)".
ROWS = [
    ("interpreter start", "interpreter"),
    ("imports: torch", "import:torch"),
    ("imports: timm (+torchvision)", "import:timm"),
    ("imports: bitsandbytes", "import:bitsandbytes"),
    ("imports: carbontracker", "import:carbontracker"),
    ("imports: leanmed + rest", "import:other"),
    ("device claim", "claim_gpu"),
    ("dataset load (decode PNGs)", "dataset"),
    ("input fingerprint (sha256 of PNGs)", "fingerprint"),
    ("model build (+ .to(device))", "model_build"),
    ("optimizer build", "optimizer"),
    ("carbontracker construction", "energy_construct"),
    ("carbontracker epoch start/end", "energy_epoch"),
    ("carbontracker stop", "energy_stop"),
    ("carbontracker result (read logs)", "energy_result"),
    ("training epochs (train+val passes)", "epochs"),
    ("checkpoints + epochs.csv", "checkpoints"),
    ("test evaluation (+ load best.pt)", "test_eval"),
    ("inference timing (warm-up + repeats)", "inference"),
    ("provenance (git, versions)", "provenance"),
    ("metrics record + schema validation", "record"),
    ("writing predictions/metrics", "writing"),
    ("other (untimed code)", "other"),
]


# --------------------------------------------------------------------------------------------------------------------
# Child: one job in this (fresh) process


def _child(spec: dict) -> None:
    process_start = spec["launched_at"]
    t_main = time.time()
    import importlib

    times: dict[str, float] = {}
    stack: list[float] = []  # time spent in nested timed calls, per open frame

    def add(key, seconds):
        times[key] = times.get(key, 0.0) + seconds

    def timed(key, function):
        if getattr(function, "_leanmed_timed", False):
            return function

        def wrapper(*args, **kwargs):
            stack.append(0.0)
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - started
                nested = stack.pop()
                label = key(args) if callable(key) else key
                add(label, elapsed - nested)
                if stack:
                    stack[-1] += elapsed

        wrapper._leanmed_timed = True
        return wrapper

    def patch(module, name, key):
        if hasattr(module, name):
            setattr(module, name, timed(key, getattr(module, name)))

    import importlib._bootstrap as bootstrap

    # every first import of a module: self time per top-level package ("imp:<package>")
    bootstrap._find_and_load = timed(lambda args: "imp:" + args[0].split(".")[0], bootstrap._find_and_load)

    devices = importlib.import_module("leanmed.train.devices")
    timed("claim_gpu", devices.claim_gpu)(spec["config"].get("device", "auto"))
    job = importlib.import_module("leanmed.train.job")

    from leanmed.train import energy, loop, measure, record

    patch(job, "ImageDataset", "dataset")
    patch(job, "split_fingerprint", "fingerprint")
    patch(job, "build_model", "model_build")
    patch(job, "build_optimizer", "optimizer")
    patch(job, "_save_epoch", "checkpoints")
    patch(job, "save_atomically", "checkpoints")  # since the last.pt schedule (no _save_epoch)
    patch(job, "load_checkpoint", "test_eval")
    in_test = {"on": False}
    patch(loop, "train_one_epoch", "epochs")
    patch(loop, "evaluate", lambda args: "test_eval" if in_test["on"] else "epochs")
    for holder in (job, measure):
        patch(holder, "time_inference", "inference")
    for holder in (record, measure):
        patch(holder, "provenance", "provenance")
        patch(holder, "git_revision", "provenance")
    for holder in (job, record):
        patch(holder, "metrics_record", "record")
        patch(holder, "memory_block", "record")
        patch(holder, "validate_metrics", "record")
        patch(holder, "write_json", "writing")
        patch(holder, "write_csv", "writing")
    meter = energy.EnergyMeter
    for name in ("_construct", "construct", "_start_construction", "_wait_for_tracker"):
        patch(meter, name, "energy_construct")
    for name in ("epoch_start", "epoch_end"):
        patch(meter, name, "energy_epoch")
    patch(meter, "finish", "energy_stop")
    patch(meter, "result", "energy_result")
    original_test_and_time = getattr(job, "_test_and_time", None)
    if original_test_and_time is not None:
        def test_and_time(*args, **kwargs):
            in_test["on"] = True
            try:
                return original_test_and_time(*args, **kwargs)
            finally:
                in_test["on"] = False

        job._test_and_time = timed("other", test_and_time)
    run = timed("other", job.run)
    started = time.perf_counter()
    # An older revision (--baseline) may lack an option: it runs without it, as that code did.
    known = {field.name for field in dataclasses.fields(job.TrainConfig)}
    run(job.TrainConfig(**{key: value for key, value in spec["config"].items() if key in known}))
    finished = time.time()
    add("run_total", time.perf_counter() - started)
    leaked = sorted(name for name in ("bitsandbytes", "carbontracker", "pandas", "matplotlib", "skimage", "scipy",
                                      "sklearn", "seaborn", "jsonschema", "psutil", "cpuinfo")
                    if name in sys.modules)
    Path(spec["result"]).write_text(json.dumps({
        "process_start": process_start, "main_start": t_main, "metrics_written": finished, "times": times,
        "modules": leaked,
    }))
    if hasattr(job, "exit_without_teardown"):  # what workflow/scripts/train.py ends with, where the code has it
        job.exit_without_teardown(0)


# --------------------------------------------------------------------------------------------------------------------
# Parent


def _make_split(root: Path, counts: dict[str, int], size: int) -> str:
    from leanmed.synthetic import write_split

    return write_split(root, counts, size=size)


def _one_round(src: Path, spec: dict, workdir: Path, label: str) -> dict:
    out_dir = workdir / f"run-{label}"
    result = workdir / f"result-{label}.json"
    spec = dict(spec, result=str(result), config=dict(spec["config"], out_dir=str(out_dir)))
    # src first; what the caller put on PYTHONPATH (e.g. a bundle of packages on a GPU machine) stays after it.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")])),
               PYTHONDONTWRITEBYTECODE="1")
    launched = time.time()
    spec["launched_at"] = launched
    completed = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        env=env, capture_output=True, text=True, cwd=str(workdir),
    )
    exited = time.time()
    if completed.returncode != 0:
        raise SystemExit(f"{label}: job failed\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}")
    child = json.loads(result.read_text())
    times = {}
    other_imports = {}
    import_rows = {"torch": "import:torch", "timm": "import:timm", "torchvision": "import:timm",
                   "bitsandbytes": "import:bitsandbytes", "carbontracker": "import:carbontracker"}
    for key, seconds in child["times"].items():
        if key.startswith("imp:"):
            package = key[4:]
            row = import_rows.get(package, "import:other")
            if row == "import:other":
                other_imports[package] = seconds
        else:
            row = key
        times[row] = times.get(row, 0.0) + seconds
    times.pop("run_total", None)
    total = child["metrics_written"] - launched
    times["interpreter"] = child["main_start"] - launched
    times["other"] = times.get("other", 0.0) + (total - sum(times.values()))
    metrics = json.loads((out_dir / "metrics.json").read_text())
    return {"times": times, "total": total, "exit": exited - launched, "modules": child["modules"],
            "other_imports": dict(sorted(other_imports.items(), key=lambda item: -item[1])[:8]),
            "train_time_total_s": metrics["training"]["train_time_total_s"],
            "test_accuracy": metrics["test"]["accuracy"], "inference_repeats": metrics["inference"]["repeats"]}


def _summary(rounds: list[dict]) -> dict:
    keys = {key for one in rounds for key in one["times"]}
    median = {key: statistics.median(one["times"].get(key, 0.0) for one in rounds) for key in keys}
    total = statistics.median(one["total"] for one in rounds)
    fixed = statistics.median(one["total"] - one["times"].get("epochs", 0.0) for one in rounds)
    return {"rows": median, "total": total, "fixed": fixed,
            "exit": statistics.median(one["exit"] for one in rounds), "modules": rounds[-1]["modules"],
            "other_imports": rounds[-1]["other_imports"],
            "inference_repeats": rounds[-1]["inference_repeats"]}


def _print(summaries: dict[str, dict]) -> None:
    names = list(summaries)
    print(f"{'phase (median seconds)':42s}" + "".join(f"{name:>14s}" for name in names))
    for label, key in ROWS:
        print(f"{label:42s}" + "".join(f"{summaries[name]['rows'].get(key, 0.0):14.3f}" for name in names))
    for label, key in (("TOTAL to metrics.json", "total"), ("FIXED = total - training epochs", "fixed"),
                       ("process exit", "exit")):
        print(f"{label:42s}" + "".join(f"{summaries[name][key]:14.3f}" for name in names))
    for name in names:
        print(f"{name}: heavy modules loaded: {', '.join(summaries[name]['modules']) or 'none'}; "
              f"inference repeats recorded: {summaries[name]['inference_repeats']}")
        print(f"{name}: biggest 'leanmed + rest' imports (s): " + ", ".join(
            f"{package} {seconds:.2f}" for package, seconds in summaries[name]["other_imports"].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="densenet121")
    parser.add_argument("--setting", default="fp32")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train", type=int, default=48)
    parser.add_argument("--val", type=int, default=16)
    parser.add_argument("--test", type=int, default=64)
    parser.add_argument("--inference-repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-energy", action="store_true")
    parser.add_argument("--checkpoint-interval", type=float, default=60.0,
                        help="training.checkpoint_interval_s (config.yaml's default 60; 0: last.pt every epoch)")
    parser.add_argument("--baseline", help="git revision to compare against (measured from a temporary worktree)")
    parser.add_argument("--json", help="write the per-round figures here")
    args = parser.parse_args()
    if args.child:
        _child(json.loads(args.child))
        return

    with tempfile.TemporaryDirectory(prefix="leanmed-overhead-") as temporary:
        workdir = Path(temporary)
        split_csv = _make_split(workdir / "data", {"train": args.train, "val": args.val, "test": args.test},
                                args.image_size)
        config = dict(split_csv=split_csv, dataset="bench", model=args.model, setting=args.setting, seed=1,
                      image_size=args.image_size, lr=1e-4, batch_size=args.batch_size, max_epochs=args.epochs,
                      patience=args.epochs + 1, energy=not args.no_energy, inference_repeats=args.inference_repeats,
                      threads=args.threads, device=args.device, checkpoint_interval_s=args.checkpoint_interval)
        sources = {"current": ROOT / "src"}
        worktree = None
        if args.baseline:
            worktree = workdir / "baseline"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(worktree),
                            args.baseline], check=True)
            sources = {f"baseline {args.baseline[:10]}": worktree / "src", "current": ROOT / "src"}
        results: dict[str, list[dict]] = {name: [] for name in sources}
        try:
            for round_index in range(args.rounds):
                for name, src in sources.items():
                    one = _one_round(src, {"config": config}, workdir, f"{name.split()[0]}-{round_index}")
                    results[name].append(one)
                    print(f"round {round_index + 1} {name}: total {one['total']:.2f} s, fixed "
                          f"{one['total'] - one['times'].get('epochs', 0.0):.2f} s", file=sys.stderr)
        finally:
            if worktree is not None:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)])
        summaries = {name: _summary(rounds) for name, rounds in results.items()}
        print(f"{args.model} {args.image_size} px, {args.setting}, {args.epochs} epochs, "
              f"{args.train}/{args.val}/{args.test} images, energy {'off' if args.no_energy else 'on'}, "
              f"{args.rounds} rounds, {os.cpu_count()} CPUs")
        _print(summaries)
        if len(summaries) == 2:
            old, new = summaries.values()
            print(f"fixed part, current / baseline: {new['fixed'] / old['fixed']:.2f} "
                  f"({new['fixed']:.2f} s / {old['fixed']:.2f} s, medians over rounds)")
            old_rounds, new_rounds = results.values()

            def fixed(one, to_exit=False):
                return (one["exit"] if to_exit else one["total"]) - one["times"].get("epochs", 0.0)

            for to_exit, what in ((False, "to metrics.json"), (True, "to process exit")):
                ratios = [fixed(b, to_exit) / fixed(a, to_exit) for a, b in zip(old_rounds, new_rounds)]
                print(f"fixed part {what}, per round (each round runs baseline then current): "
                      + ", ".join(f"{ratio:.2f}" for ratio in ratios) + f"; median {statistics.median(ratios):.2f}")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
