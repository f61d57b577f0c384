"""DICOM -> PNG throughput (images per CPU-second, i.e. per core) of leanmed's paths against a naive baseline.

Generates full-size mammograms (3328 x 2560, 12-bit stored in 16, a breast with smooth texture and quantum noise
against one side, dark background, a small bright label; half of them MONOCHROME1, half with the breast on the
right) and encodes each as JPEG 2000 lossless and as JPEG Lossless SV1, the two syntaxes of the RSNA data. Then,
each in a fresh single-threaded process (so that its peak RSS is its own), converts them to 256 x 256 PNGs with:

* naive: pydicom `pixel_array` (its default plugins), divide by the maximum, 8-bit, PIL `resize` to 256 x 256;
* exact: `leanmed.data.dicom.preprocess(path_mode="exact")` + `write_png` (on JPEG 2000: the breast found on a
  1/8-resolution decode, then only its box decoded at full resolution);
* exact-whole: the same with `region_decoding=False` (the whole JPEG 2000 image decoded; must give the same PNGs);
* reduced: the same with `path_mode="reduced"` (JPEG 2000 decoded at reduced resolution).

Prints CPU seconds per image, images/s/core, the ratio to naive in the same run, peak RSS per worker process,
the mean absolute difference (grey levels) between the reduced and exact PNGs, a decoder comparison, and the
predicted core-hours for the 54,706 RSNA images.

    python benchmarks/dicom_to_png.py [--images 5] [--keep DIR] [--j2k-fraction 0.5]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

# One thread per process everywhere: the figures are per core.
for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[variable] = "1"

import numpy as np  # noqa: E402

RSNA_IMAGES = 54_706
HEIGHT, WIDTH, BITS_STORED = 3328, 2560, 12
IMAGE_SIZE = 256
METHODS = ("naive", "exact", "exact-whole", "reduced")
GOALS = {
    "exact_vs_naive_j2k": 1.25,
    "exact_vs_naive_sv1": 3.0,
    "reduced_vs_naive_j2k": 10.0,
    "reduced_mad_grey_levels": 1.0,
    "peak_rss_mb": 300.0,
}


# ----------------------------------------------------------------------------------------------------------
# Generated mammograms
# ----------------------------------------------------------------------------------------------------------


def smooth_field(rng: np.random.Generator, grid: tuple[int, int]) -> np.ndarray:
    """Zero-mean, unit-ish smooth random field of HEIGHT x WIDTH from bilinear upsampling of a coarse grid."""
    from PIL import Image

    coarse = rng.normal(0, 1, grid).astype(np.float32)
    return np.asarray(Image.fromarray(coarse).resize((WIDTH, HEIGHT), Image.BILINEAR), dtype=np.float32)


def synthetic_mammogram(seed: int) -> tuple[np.ndarray, bool]:
    """(stored 12-bit values as uint16 in MONOCHROME2 sense, breast_on_right) for one generated mammogram."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    centre_row = HEIGHT * rng.uniform(0.45, 0.55)
    radius_rows, radius_columns = (HEIGHT * rng.uniform(0.38, 0.46), WIDTH * rng.uniform(0.5, 0.75))
    radius = np.sqrt(((yy - centre_row) / radius_rows) ** 2 + (xx / radius_columns) ** 2)
    del yy, xx
    # Compressed breast: flat thickness, rolling off over the outer 10 % of the radius to the skin line.
    thickness = np.clip((1.0 - radius) / 0.1, 0.0, 1.0) ** 0.5
    texture = 350 * smooth_field(rng, (52, 40)) + 150 * smooth_field(rng, (208, 160))
    values = 40 + thickness * (1900 + texture) + rng.normal(0, 2, radius.shape).astype(np.float32)
    values += (radius < 1) * rng.normal(0, 25, radius.shape).astype(np.float32)  # quantum noise in tissue
    values[60:140, WIDTH - 420 : WIDTH - 120] = 3800  # a burnt-in label
    stored = np.clip(values, 0, 2**BITS_STORED - 1).astype(np.uint16)
    on_right = bool(seed % 2)
    return (stored[:, ::-1].copy() if on_right else stored), on_right


def write_dicom(path: Path, frame: bytes, transfer_syntax: str, monochrome1: bool) -> None:
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography, for presentation
    ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = (ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID)
    ds.Modality = "MG"
    ds.Rows, ds.Columns = HEIGHT, WIDTH
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = (16, BITS_STORED, BITS_STORED - 1, 0)
    ds.WindowCenter = (4095 - 2000) if monochrome1 else 2000
    ds.WindowWidth = 3600
    ds.VOILUTFunction = "LINEAR"
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)


def generate(folder: Path, count: int) -> dict[str, list[Path]]:
    """`count` mammograms, each written as JPEG 2000 lossless and as JPEG Lossless SV1; paths per syntax."""
    import imagecodecs

    files: dict[str, list[Path]] = {"j2k": [], "sv1": []}
    for index in range(count):
        stored, _ = synthetic_mammogram(seed=index)
        monochrome1 = index % 4 in (2, 3)
        if monochrome1:
            stored = (2**BITS_STORED - 1 - stored).astype(np.uint16)
        j2k = imagecodecs.jpeg2k_encode(
            stored, level=0, codecformat="J2K", reversible=True, bitspersample=BITS_STORED, numthreads=1
        )
        sv1 = imagecodecs.jpeg8_encode(stored, lossless=True, predictor=1, bitspersample=BITS_STORED)
        for key, frame, syntax in (("j2k", j2k, "1.2.840.10008.1.2.4.90"), ("sv1", sv1, "1.2.840.10008.1.2.4.70")):
            path = folder / key / f"{index}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_dicom(path, frame, syntax, monochrome1)
            files[key].append(path)
    return files


# ----------------------------------------------------------------------------------------------------------
# Conversion methods, run in child processes
# ----------------------------------------------------------------------------------------------------------


def convert_naive(source: Path, target: Path) -> None:
    import pydicom
    from PIL import Image

    pixels = pydicom.dcmread(source).pixel_array.astype(np.float64)
    scaled = (pixels / pixels.max() * 255).astype(np.uint8)
    Image.fromarray(scaled).resize((IMAGE_SIZE, IMAGE_SIZE)).save(target)


def convert_leanmed(source: Path, target: Path, method: str) -> dict:
    from leanmed.data.dicom import preprocess, write_png

    path_mode = "exact" if method == "exact-whole" else method
    image, info = preprocess(
        source, image_size=IMAGE_SIZE, bits=8, path_mode=path_mode, region_decoding=method != "exact-whole"
    )
    write_png(image, target)
    return info


def proc_status_mb(field: str) -> float | None:
    """A memory field of /proc/self/status (VmRSS: current, VmHWM: peak resident set) in MB; None off Linux."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB.

    VmHWM belongs to the process's own address space, which starts afresh at exec; ru_maxrss (the fallback off
    Linux) survives exec on Linux and would report the parent's peak for a freshly spawned worker.
    """
    peak = proc_status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def worker(method: str, files: list[str], out_dir: str, results) -> None:
    """Convert `files` with `method` in this (fresh) process; report CPU/wall seconds, RSS and decoders."""
    import pydicom  # noqa: F401  (imports outside the timed part, as a long-running job would have them)
    from PIL import Image  # noqa: F401

    import leanmed.data.dicom  # noqa: F401

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def run(source: str) -> dict:
        target = out / (Path(source).stem + ".png")
        if method == "naive":
            convert_naive(Path(source), target)
            return {}
        return convert_leanmed(Path(source), target, method)

    run(files[0])  # warm-up: first-call costs (plugin discovery, lazy imports) are not per-image costs
    rss_ready = proc_status_mb("VmRSS") or 0.0
    per_image, decoders, reduces = [], set(), set()
    cpu_start, wall_start = cpu_seconds(), time.perf_counter()
    for source in files:
        before = cpu_seconds()
        info = run(source)
        per_image.append(cpu_seconds() - before)
        decoders.add(info.get("decoder", "pydicom pixel_array (default plugins)"))
        if "reduce" in info:
            reduces.add(info["reduce"])
    results.put(
        {
            "cpu_s": cpu_seconds() - cpu_start,
            "wall_s": time.perf_counter() - wall_start,
            "per_image_cpu_s": per_image,
            "peak_rss_mb": peak_rss_mb(),
            "rss_after_imports_and_warmup_mb": rss_ready,
            "decoders": sorted(decoders),
            "reduce_levels": sorted(reduces),
        }
    )


def run_in_child(method: str, files: list[Path], out_dir: Path) -> dict:
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: its peak RSS is this method's alone
    results = context.Queue()
    process = context.Process(target=worker, args=(method, [str(f) for f in files], str(out_dir), results))
    process.start()
    result = results.get()
    process.join()
    return result


def decoder_worker(files: dict[str, list[str]], results) -> None:
    """CPU seconds per image of the candidate decoders on the generated frames (best of two runs per file)."""
    import io

    import imagecodecs
    import libjpeg
    import openjpeg
    import pydicom
    from PIL import Image

    def frame_of(path: str) -> bytes:
        ds = pydicom.dcmread(path)
        return next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))

    def pillow_j2k(frame: bytes, reduce: int) -> np.ndarray:
        image = Image.open(io.BytesIO(frame))
        image.reduce = reduce
        image.load()
        return np.asarray(image)

    candidates = {
        "j2k": {
            "imagecodecs.jpeg2k_decode (OpenJPEG)": lambda f: imagecodecs.jpeg2k_decode(f, numthreads=1),
            "pylibjpeg-openjpeg": lambda f: openjpeg.decode(f, j2k_format=0),
            "Pillow (OpenJPEG), full": lambda f: pillow_j2k(f, 0),
            "Pillow (OpenJPEG), reduce=2": lambda f: pillow_j2k(f, 2),
            "Pillow (OpenJPEG), reduce=3": lambda f: pillow_j2k(f, 3),
        },
        "sv1": {
            "imagecodecs.jpeg8_decode (libjpeg-turbo)": imagecodecs.jpeg8_decode,
            "imagecodecs.ljpeg_decode (liblj92)": imagecodecs.ljpeg_decode,
            "pylibjpeg-libjpeg": libjpeg.decode,
        },
    }
    report = {}
    for syntax, decoders in candidates.items():
        frames = [frame_of(path) for path in files[syntax]]
        for name, decode in decoders.items():
            decode(frames[0])
            times = []
            for frame in frames:
                best = float("inf")
                for _ in range(2):
                    before = cpu_seconds()
                    decode(frame)
                    best = min(best, cpu_seconds() - before)
                times.append(best)
            report[(syntax, name)] = statistics.mean(times)
    results.put(report)


def compare_decoders(files: dict[str, list[Path]], count: int) -> dict:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    subset = {key: [str(p) for p in paths[:count]] for key, paths in files.items()}
    process = context.Process(target=decoder_worker, args=(subset, results))
    process.start()
    report = results.get()
    process.join()
    return report


def mean_abs_difference(folder_a: Path, folder_b: Path) -> list[float]:
    from PIL import Image

    differences = []
    for png in sorted(folder_a.glob("*.png")):
        a = np.asarray(Image.open(png), dtype=np.float64)
        b = np.asarray(Image.open(folder_b / png.name), dtype=np.float64)
        differences.append(float(np.abs(a - b).mean()))
    return differences


# ----------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------


def core_hours(images_per_core_second: float, images: float = RSNA_IMAGES) -> float:
    return images / images_per_core_second / 3600


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5, help="mammograms generated per transfer syntax (default 5)")
    parser.add_argument("--decoder-images", type=int, default=3, help="images per decoder in the comparison")
    parser.add_argument("--keep", type=Path, help="keep the generated DICOMs and PNGs in this folder")
    parser.add_argument(
        "--j2k-fraction",
        type=float,
        default=0.5,
        help="assumed share of JPEG 2000 files among the RSNA images, for the mixed core-hour estimate (default 0.5)",
    )
    args = parser.parse_args(argv)

    import imagecodecs
    import PIL
    import pydicom

    folder = Path(tempfile.mkdtemp(prefix="leanmed_dicom_bench_")) if args.keep is None else args.keep
    folder.mkdir(parents=True, exist_ok=True)
    try:
        print("DICOM -> PNG benchmark (leanmed.data.dicom)")
        print(
            f"  machine: {platform.machine()}, {os.cpu_count()} logical CPUs, load average {os.getloadavg()[0]:.2f}"
            " (other processes share the cores: CPU seconds, not wall seconds, are the per-core measure)"
        )
        print(
            f"  python {platform.python_version()}, numpy {np.__version__}, pydicom {pydicom.__version__}, "
            f"Pillow {PIL.__version__}, imagecodecs {imagecodecs.__version__}"
        )
        started = time.perf_counter()
        files = generate(folder / "dicom", args.images)
        from leanmed.data.dicom_decode import parse_j2k_header

        ds = pydicom.dcmread(files["j2k"][0])
        header = parse_j2k_header(next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1)))
        sizes = {key: statistics.mean(p.stat().st_size for p in paths) / 1e6 for key, paths in files.items()}
        print(
            f"  generated {args.images} mammograms x 2 syntaxes ({HEIGHT} x {WIDTH}, {BITS_STORED}-bit; JPEG 2000 "
            f"{sizes['j2k']:.1f} MB with {header.decomposition_levels} wavelet levels, SV1 {sizes['sv1']:.1f} MB "
            f"per file) in {time.perf_counter() - started:.1f} s"
        )
        print()

        results = {}
        for syntax in ("j2k", "sv1"):
            for method in METHODS if syntax == "j2k" else ("naive", "exact", "reduced"):
                results[(syntax, method)] = run_in_child(method, files[syntax], folder / "png" / syntax / method)

        syntax_names = {"j2k": "JPEG 2000 lossless", "sv1": "JPEG Lossless SV1"}
        print(
            f"{'syntax':20s} {'path':11s} {'CPU s/image':>11s} {'images/s/core':>13s} {'x naive':>8s} "
            f"{'wall s/image':>12s} {'peak RSS MB':>11s}  decoder"
        )
        for syntax in ("j2k", "sv1"):
            naive_rate = args.images / results[(syntax, "naive")]["cpu_s"]
            for method in METHODS if syntax == "j2k" else ("naive", "exact", "reduced"):
                r = results[(syntax, method)]
                rate = args.images / r["cpu_s"]
                decoder = ", ".join(r["decoders"])
                if r["reduce_levels"] and max(r["reduce_levels"]) > 0:
                    decoder += f" (reduce={','.join(map(str, r['reduce_levels']))})"
                print(
                    f"{syntax_names[syntax]:20s} {method:11s} {r['cpu_s'] / args.images:11.3f} {rate:13.2f} "
                    f"{rate / naive_rate:8.2f} {r['wall_s'] / args.images:12.3f} {r['peak_rss_mb']:11.0f}  {decoder}"
                )
        print(
            "  (peak RSS = VmHWM of the worker process, interpreter and libraries included; after imports and "
            "one warm-up image: "
            + ", ".join(f"{m} {results[('j2k', m)]['rss_after_imports_and_warmup_mb']:.0f}" for m in METHODS)
            + " MB on JPEG 2000)"
        )

        mad_j2k = mean_abs_difference(folder / "png" / "j2k" / "exact", folder / "png" / "j2k" / "reduced")
        mad_sv1 = mean_abs_difference(folder / "png" / "sv1" / "exact", folder / "png" / "j2k" / "exact")
        print()
        print(
            f"reduced vs exact PNG, mean absolute difference per image (grey levels of 255): "
            f"{', '.join(f'{d:.3f}' for d in mad_j2k)}; max {max(mad_j2k):.3f}"
        )
        print(f"exact path, SV1 vs JPEG 2000 of the same image (both lossless, must be 0): max {max(mad_sv1):.3f}")
        mad_region = mean_abs_difference(folder / "png" / "j2k" / "exact", folder / "png" / "j2k" / "exact-whole")
        print(f"exact path on JPEG 2000, breast-box decode vs whole decode (must be 0): max {max(mad_region):.3f}")

        print()
        print(f"decoders alone, CPU s/image (mean over {args.decoder_images} images, best of 2 runs each):")
        for (syntax, name), seconds in compare_decoders(files, args.decoder_images).items():
            print(f"  {syntax_names[syntax]:20s} {name:42s} {seconds:7.3f}")

        print()
        print(f"predicted core-hours for the {RSNA_IMAGES:,} RSNA images (generated-image CPU cost per image):")
        mixed = {}
        for method in ("naive", "exact", "reduced"):
            per_image = {s: results[(s, method)]["cpu_s"] / args.images for s in ("j2k", "sv1")}
            mixed[method] = args.j2k_fraction * per_image["j2k"] + (1 - args.j2k_fraction) * per_image["sv1"]
            print(
                f"  {method:8s} all JPEG 2000 {core_hours(1 / per_image['j2k']):6.2f}   all SV1 "
                f"{core_hours(1 / per_image['sv1']):6.2f}   {args.j2k_fraction:.0%} JPEG 2000 mix "
                f"{core_hours(1 / mixed[method]):6.2f}"
            )

        ratio = {
            key: (args.images / results[key]["cpu_s"]) / (args.images / results[(key[0], "naive")]["cpu_s"])
            for key in results
        }
        peak = max(results[(s, m)]["peak_rss_mb"] for s in ("j2k", "sv1") for m in ("exact", "reduced"))
        checks = [
            (
                "exact >= 1.25x naive on JPEG 2000",
                ratio[("j2k", "exact")],
                ratio[("j2k", "exact")] >= GOALS["exact_vs_naive_j2k"],
            ),
            (
                "exact >= 3x naive on SV1",
                ratio[("sv1", "exact")],
                ratio[("sv1", "exact")] >= GOALS["exact_vs_naive_sv1"],
            ),
            (
                "reduced >= 10x naive on JPEG 2000",
                ratio[("j2k", "reduced")],
                ratio[("j2k", "reduced")] >= GOALS["reduced_vs_naive_j2k"],
            ),
            ("reduced vs exact MAD <= 1 grey level", max(mad_j2k), max(mad_j2k) <= GOALS["reduced_mad_grey_levels"]),
            ("leanmed peak RSS <= 300 MB per worker", peak, peak <= GOALS["peak_rss_mb"]),
            (
                "exact PNGs identical: box decode, whole decode, SV1",
                max(mad_region + mad_sv1),
                max(mad_region + mad_sv1) == 0,
            ),
        ]
        print()
        print("goals:")
        for name, value, met in checks:
            print(f"  {'met' if met else 'NOT met':8s} {name:40s} ({value:.2f})")
        print(f"  load average at the end {os.getloadavg()[0]:.2f}; total {time.perf_counter() - started:.0f} s")
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
