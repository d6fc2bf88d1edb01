"""``make bench``: how fast the batch job is, against the seeds' way and against its own floor.

On the same pictures, in one run:

(a) the seeds' predictive system: Keras, per picture open -> resize -> /255 -> ``predict`` of one;
(b) Keras batched: the same preprocessing, then ``model.predict(batch_size=64)``;
(c) this batch job end to end (manifest written), all cores decoding;
(d) decode + preprocess alone with the same worker count (the floor on a CPU);
(e) ONNX Runtime inference alone on preprocessed batches;
(f) the batch job on the Ray runner (in-process Ray on this machine), when Ray is installed;
and, for the sizing rule in docs/SCALE.md, decoding on one process and inference on one thread.

Writes docs/BENCHMARKS.md (the CPU section; a GPU section measured on a lent machine is kept).
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time
from concurrent.futures import Executor
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import click
import numpy as np

from maskcore import provenance
from maskcore.dataset import scan
from maskcore.decode import CHUNK, decode_refs, stack_inputs
from maskcore.engine import DEFAULT_MODEL, Device, Engine, Precision
from maskcore.pool import default_workers, make_pool
from maskcore.storage import LocalSource, Ref

GPU_MARKER = "<!-- gpu section: kept by make bench -->"  # and everything after it


def _seeds_preprocess(path: Path, size: tuple[int, int]) -> np.ndarray:
    """What the seeds did: open, RGB, resize, /255 (no EXIF, no alpha handling, no draft)."""
    from PIL import Image

    im = Image.open(path).convert("RGB").resize((size[1], size[0]))
    return np.asarray(im, dtype=np.float32) / 255.0


def bench_seeds(model: Any, paths: list[Path], size: tuple[int, int]) -> float:
    t0 = time.perf_counter()
    for p in paths:
        model.predict(_seeds_preprocess(p, size)[None], verbose=0)
    return time.perf_counter() - t0


def bench_keras_batched(model: Any, paths: list[Path], size: tuple[int, int]) -> float:
    t0 = time.perf_counter()
    x = np.stack([_seeds_preprocess(p, size) for p in paths])
    model.predict(x, batch_size=64, verbose=0)
    return time.perf_counter() - t0


def bench_decode(pool: Executor, refs: list[Ref], engine: Engine) -> tuple[float, np.ndarray]:
    source = LocalSource("/")
    t0 = time.perf_counter()
    futures = [pool.submit(decode_refs, source, refs[i:i + CHUNK], engine.spec)
               for i in range(0, len(refs), CHUNK)]
    arrays = [it.whole for f in futures for it in f.result()[0] if it.whole is not None]
    return time.perf_counter() - t0, stack_inputs(arrays, engine.spec)


def bench_detector(paths: list[Path], device: Device, threads: int | None,
                   precision: Precision = "auto") -> tuple[float, int]:
    """The face detector's network alone, called as the job calls it (one canvas of the
    picture's shape a call on a CPU, batches of square canvases on CUDA; the variant the job
    runs unless ``precision`` says which); decoding and letterboxing not counted."""
    from maskcore.detector import FaceDetector, letterbox
    from maskcore.preprocess import decode

    det = FaceDetector(device=device, threads=threads, precision=precision)
    pictures = [letterbox(decode(p.read_bytes()).image, det.spec)[0] for p in paths]
    batches = [batch for _, _, batch in det.batches(pictures)]
    det.run(batches[0])  # warm-up
    t0 = time.perf_counter()
    for batch in batches:
        det.run(batch)
    return time.perf_counter() - t0, len(pictures)


def bench_onnx(engine: Engine, x: np.ndarray, batch: int = 64, *, whole: bool = True) -> float:
    """Seconds to classify ``x`` in batches: as whole pictures (what (c) does with close-ups),
    or as face crops (which a model with a whole-picture branch reads with one network)."""
    engine.predict(x[:batch], whole=whole)  # warm-up
    t0 = time.perf_counter()
    for i in range(0, len(x), batch):
        engine.predict(x[i:i + batch], whole=whole)
    return time.perf_counter() - t0


@click.command()
@click.option("--data", default="../shared/datasets/face-mask", show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Folder of pictures.")
@click.option("--model", default=str(DEFAULT_MODEL), show_default=True,
              help="model.onnx; model.keras beside it is used for (a) and (b).")
@click.option("--limit", default=0, show_default=True,
              help="Pictures to measure on, the same ones for every stage (0: all).")
@click.option("--workers", type=int, default=None, help="Decode processes [default: all cores].")
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--precision", default="auto", type=click.Choice(["auto", "fp32", "int8"]),
              help="Which variant (c), (e) and (f) run [default: as the batch job would].")
@click.option("--scenes", default="../shared/datasets/face-mask-scenes/images", show_default=True,
              type=click.Path(path_type=Path),
              help="Street pictures for the face stage's figures (skipped when absent).")
@click.option("--write", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the results into this Markdown file (docs/BENCHMARKS.md).")
def bench(data: Path, model: str, limit: int, workers: int | None, device: Device, precision: Precision,
          scenes: Path, write: Path | None) -> None:
    """Measure (a)-(e) on the same pictures and print the ratios."""
    from maskcore.batch import run_batch
    from maskcore.runners import make_runner

    workers = default_workers() if workers is None else workers
    index = scan(data)
    limit = limit or len(index.samples)
    step = max(len(index.samples) // limit, 1)
    picked = list(index.samples[::step])[:limit]
    paths = [s.path for s in picked]
    engine = Engine(model, device=device, precision=precision)
    keras_path = Path(engine.path).with_name("model.keras")
    results: dict[str, float] = {}
    n = len(paths)
    counts: dict[str, int] = {}  # pictures a stage ran on, where not the n close-ups
    notes: list[str] = []  # lines under the tables
    click.echo(f"{n} pictures from {data}; model {engine.model_id} ({engine.precision}) on "
               f"{engine.device}; "
               f"{workers} decode workers", err=True)

    tmp = Path(tempfile.mkdtemp(prefix="maskcore-bench-"))
    try:
        # Links, not copies: the batch job reads the same files.
        for i, p in enumerate(paths):
            (tmp / "in").mkdir(exist_ok=True)
            os.symlink(p, tmp / "in" / f"{i:05d}{p.suffix}")
        # (c) is the whole-picture job, as before the face stage: close-ups need no detector.
        summary = run_batch(str(tmp / "in"), tmp / "out", model=model, device=device,
                            precision=engine.precision, faces="off", workers=workers,
                            show_progress=False)
        results["c"] = summary["wall_seconds"]
        stages = summary["stages"]
        summary = run_batch(str(tmp / "in"), tmp / "out_faces", model=model, device=device,
                            precision=engine.precision, faces="auto", workers=workers,
                            show_progress=False)
        results["cf"] = summary["wall_seconds"]
        if scenes.is_dir():
            # (g) is the goal the host's noise moves most (a run is 8-10 s): the median of a
            # few runs, each written down, rather than whichever one the hour gave.
            street_runs = [run_batch(str(scenes), tmp / "out_scenes", model=model,
                                     device=device, precision=engine.precision, faces="auto",
                                     workers=workers, show_progress=False)
                           for _ in range(STREET_RUNS)]
            walls = [run["wall_seconds"] for run in street_runs]
            results["g"] = float(np.median(walls))
            counts["g"] = street_runs[0]["total"]
            notes.append(f"(g) is the median of {STREET_RUNS} runs of the "
                         f"{counts['g']} street pictures: "
                         + ", ".join(f"{counts['g'] / w:.1f}" for w in walls)
                         + " pictures a second, in the order they ran.")
            street_paths = sorted(scenes.iterdir())
            results["h"], counts["h"] = bench_detector(street_paths, device, None)
            camera = _camera_sized(street_paths[:CAMERA_PICTURES], tmp / "camera")
            big = run_batch(str(camera), tmp / "out_camera", model=model, device=device,
                            precision=engine.precision, faces="auto", workers=workers,
                            show_progress=False)
            results["i"], counts["i"] = big["wall_seconds"], big["total"]
            results["h1"], counts["h1"] = bench_detector(street_paths, device, 1)
            if device != "cuda":  # what the detector's int8 variant saves
                results["h1f"], counts["h1f"] = bench_detector(street_paths, device, 1, "fp32")

        if _has("ray"):
            ray_summary = run_batch(str(tmp / "in"), tmp / "out_ray", model=model, device=device,
                                    precision=engine.precision, faces="off", workers=workers,
                                    show_progress=False,
                                    runner=make_runner("ray", device=device))
            results["f"] = ray_summary["wall_seconds"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    refs = [Ref(source=str(p), key=str(p)) for p in paths]
    with make_pool(workers) as pool:
        bench_decode(pool, refs[: CHUNK * workers], engine)  # start the processes first
        results["d"], x = bench_decode(pool, refs, engine)
    results["e"] = bench_onnx(engine, x)
    if engine.has_whole_branch:
        results["e_crops"] = bench_onnx(engine, x, whole=False)
    with make_pool(1) as pool:
        bench_decode(pool, refs[:CHUNK], engine)
        results["d1"], _ = bench_decode(pool, refs, engine)
    one_thread = Engine(model, device=device, threads=1, precision=engine.precision)
    results["e1"] = bench_onnx(one_thread, x)
    if engine.has_whole_branch:
        results["e1_crops"] = bench_onnx(one_thread, x, whole=False)
    if engine.precision == "int8":  # what the variant saves
        results["e1f"] = bench_onnx(Engine(model, device=device, threads=1, precision="fp32"), x)

    if keras_path.is_file():
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import keras

        kmodel = keras.saving.load_model(keras_path)
        size = engine.spec.size
        kmodel.predict(np.zeros((1, *size, 3), np.float32), verbose=0)  # warm-up
        results["b"] = bench_keras_batched(kmodel, paths, size)
        seeds_n = min(n, 1000)  # per-picture predict is slow; its rate is what counts
        results["a"] = bench_seeds(kmodel, paths[:seeds_n], size) * n / seeds_n
    else:
        click.echo(f"no {keras_path}: skipping (a) and (b)", err=True)

    rate = {k: counts.get(k, n) / v for k, v in results.items()}
    table = _table(rate, results, n, stages) + "".join(f"\n\n{line}" for line in notes)
    click.echo(table)
    if write:
        _write(write, table, n, workers, engine)
        click.echo(f"\nwritten to {write}", err=True)


#: Runs of the street pictures that (g) is the median of.
STREET_RUNS = 3

#: Street pictures enlarged to a camera's frame for stage (i): what a phone or a camera's
#: full-size pictures cost, the detector's second look included (docs/MODEL.md).
CAMERA_PICTURES = 40
CAMERA_SIDE = 4032


def _camera_sized(paths: list[Path], folder: Path) -> Path:
    """``paths`` enlarged so that their longer side is :data:`CAMERA_SIDE`, as JPEG files in
    ``folder`` (no more detail than the originals, the size and the cost of a camera's)."""
    from PIL import Image

    folder.mkdir(parents=True)
    for i, p in enumerate(paths):
        with Image.open(p) as im:
            rgb = im.convert("RGB")
        k = CAMERA_SIDE / max(rgb.size)
        rgb.resize((round(rgb.width * k), round(rgb.height * k)),
                   Image.Resampling.BICUBIC).save(folder / f"{i:03d}.jpg", quality=90)
    return folder


def _table(rate: dict[str, float], secs: dict[str, float], n: int, stages: dict[str, Any]) -> str:
    names = {  # in the table's order
        "a": "(a) seeds: Keras, one picture per predict",
        "b": "(b) Keras batched (predict, batch 64)",
        "c": "(c) maskcore batch --faces off, end to end",
        "cf": "(c') maskcore batch --faces auto (the default), end to end",
        "d": "(d) decode + preprocess alone",
        "e": "(e) ONNX Runtime inference alone",
        "e_crops": "(e') ONNX Runtime inference alone, read as face crops (the face network)",
        "f": "(f) maskcore batch --runner ray (in-process Ray, same machine)",
        "g": "(g) maskcore batch --faces auto on the street pictures (691), end to end",
        "h": "(h) face detector network alone, street pictures, canvas 640, all cores",
        "i": f"(i) maskcore batch --faces auto on {CAMERA_PICTURES} street pictures enlarged "
             f"to {CAMERA_SIDE:,} px (a camera's frame), end to end",
        "d1": "decode + preprocess, 1 process",
        "e1": "ONNX Runtime inference, 1 thread",
        "e1_crops": "ONNX Runtime inference, 1 thread, read as face crops",
        "e1f": "ONNX Runtime inference, 1 thread, float32 (for comparison)",
        "h1": "face detector network alone, 1 thread",
        "h1f": "face detector network alone, 1 thread, float32 (for comparison)",
    }
    lines = ["| stage | seconds | pictures/s |", "| --- | ---: | ---: |"]
    goal_g = rate.get("g")
    for k, name in names.items():
        if k in rate:
            lines.append(f"| {name} | {secs[k]:.2f} | {rate[k]:,.0f} |")
    lines += ["", "| ratio | measured | goal |", "| --- | ---: | ---: |"]
    for a, b, goal in (("c", "a", 40), ("c", "b", 2), ("c", "d", 0.5), ("f", "c", None)):
        if a in rate and b in rate:
            r = rate[a] / rate[b]
            target = "(none: a comparison)" if goal is None else \
                f">= {goal}x ({'met' if r >= goal else 'NOT met'})"
            lines.append(f"| ({a}) / ({b}) | {r:,.2f}x | {target} |")
    if goal_g is not None:
        lines.append(f"| (g) street pictures a second | {goal_g:,.1f} | >= 80 "
                     f"({'met' if goal_g >= 80 else 'NOT met'}) |")
    lines += ["", f"Stage times inside (c), {n} pictures: decode CPU summed over workers "
              f"{stages['decode_cpu']:.2f}s, main process waiting for worker results "
              f"{stages['wait']:.2f}s, inference summed over processes {stages['inference']:.2f}s, "
              f"manifest rows {stages['write']:.2f}s, {stages['batches']} batches."]
    return "\n".join(lines)


INT8_NOTE = """
On a CPU the batch job runs the model's int8 variant (`models/model.int8.onnx`: convolutions
quantized, the head left float32; see docs/MODEL.md). Its convolutions use the CPU's int8
dot-product instructions (AVX-512 VNNI here), so one thread classifies more than twice as many
pictures a second as float32 (the rows "ONNX Runtime inference, 1 thread"), and decoding, not
inference, is now most of the cost of (c). With float32 the same job ran 540 pictures/s, 29
times (a). The face detector has an int8 variant too, its neck's convolutions quantized
(`models/face_detector.int8.onnx`): the last two rows, and (g) and (h) run it.
"""


def _write(path: Path, table: str, n: int, workers: int, engine: Engine) -> None:
    old = path.read_text() if path.is_file() else ""
    gpu = old[old.index(GPU_MARKER):] if GPU_MARKER in old else (
        f"{GPU_MARKER}\n## GPU\n\nNot measured: no GPU machine was lent to the task that wrote "
        "this file (the device tool's status answered `can_start_another: false`). On a machine "
        "with one, `make bench ARGS=\"--device cuda\"` measures (c) and (e) on CUDA; record the "
        "figures here.\n")
    variant = (f"Model {engine.model_id}, the int8 variant of {engine.card.model_id}"
               if engine.precision == "int8" else f"Model {engine.model_id}")
    face_gflops = engine.card.extra.get("gflops_per_picture", "?")
    cost = f"{face_gflops} GFLOPs a picture"
    if engine.card.whole_picture:
        closeup = engine.card.whole_picture["closeup_network"]
        whole = closeup.get("gflops_per_picture", "?")
        # A close-up network that knows every class reads whole pictures alone (maskcore.pairing).
        if closeup.get("classes") != engine.card.classes:
            whole = f"{face_gflops} + {whole}"
        cost = (f"the face and close-up networks paired: {face_gflops} GFLOPs a face crop, "
                f"{whole} a whole picture")
    installed = provenance.versions()
    versions = ", ".join(f"{p} {installed[p]}" for p in ("onnxruntime-gpu", "pillow", "numpy")
                         if p in installed)
    text = f"""# Benchmarks

Written by `make bench` on {datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}.

## CPU

Machine: {provenance.cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}; {versions}.
{variant} ({cost}),
{n} pictures of the shared face-mask dataset (every k-th file), {workers} decode workers,
batch 64, provider {engine.provider}. Numbers move by 10-20% between runs on a shared machine.

{table}

(a) runs on the first 1,000 pictures and is scaled to {n}: one `predict` call per picture
costs the same whatever the picture. On a CPU, (c) runs the model inside each decode process
(loaded once per process, one ONNX Runtime thread), so only probabilities cross processes;
(e) is the single engine with all cores, as it runs in front of a GPU. (c), (e) and the
inference rows read the close-ups as whole pictures, as `--faces off` does; with a paired model
the rows "read as face crops" give the face network alone, what the face stage pays a face.
{INT8_NOTE if engine.precision == "int8" else ""}
{gpu}"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _has(pkg: str) -> bool:
    try:
        metadata.version(pkg)
        return True
    except metadata.PackageNotFoundError:
        return False


if __name__ == "__main__":
    bench()
