"""``python -m jobs.bench_gpu --data DIR``: throughput of the classifier and the face detector on
CUDA, alone and end to end, for docs/BENCHMARKS.md's GPU section.

Needs onnxruntime-gpu with a working CUDA provider (``--device cuda`` refuses otherwise) and
nothing of the training side, so it runs on a bare GPU machine with the inference packages.
"""

from __future__ import annotations

import platform
import tempfile
import time
from pathlib import Path

import click
import numpy as np
from PIL import Image

from maskcore.detector import FaceDetector
from maskcore.engine import Engine
from maskcore.errors import ImageDecodeError, StorageError
from maskcore.preprocess import decode
from maskcore.storage import LocalSource


def _rate(fn: object, n: int, repeat: int = 3) -> float:
    """Items a second of ``fn()`` (which handles ``n`` items), best of ``repeat`` after a warm-up."""
    fn()  # type: ignore[operator]
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        best = min(best, time.perf_counter() - t0)
    return n / best


def _pictures(data: Path) -> list[Image.Image]:
    """The pictures under ``data``, decoded: listed as the batch job lists them (hidden files
    skipped), and files that are not pictures passed over, since a licence file beside the
    pictures must not end a run on a lent GPU's short time."""
    source = LocalSource(data)
    images = []
    for ref in source.list():
        try:
            images.append(decode(source.read(ref)).image)
        except (StorageError, ImageDecodeError):
            continue
    if not images:
        raise click.UsageError(f"no picture in {data}")
    return images


@click.command()
@click.option("--data", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="A folder of street pictures.")
@click.option("--device", default="cuda", type=click.Choice(["cuda", "cpu", "auto"]))
def bench_gpu(data: Path, device: str) -> None:
    """Print a Markdown table of pictures (or faces) a second on ``device``."""
    from maskcore.batch import run_batch

    rows = []
    engine = Engine(device=device, precision="fp32")  # type: ignore[arg-type]
    click.echo(f"classifier {engine.model_id} on {engine.device} [{engine.provider}]")
    x = np.random.default_rng(0).random((1024, *engine.spec.size, 3), dtype=np.float32)
    # A paired model reads face crops and whole pictures with different networks: both.
    for whole in ((False, True) if engine.has_whole_branch else (False,)):
        what = "whole pictures" if whole else "faces"
        for b in (64, 256, 1024):
            r = _rate(lambda b=b, whole=whole: [engine.predict(x[i:i + b], whole=whole)
                                                for i in range(0, len(x), b)], len(x))
            rows.append((f"classifier alone, batch {b} ({what} a second)", r))
    det = FaceDetector(device=device)  # type: ignore[arg-type]
    click.echo(f"detector {det.model_id} on {det.device} "
               f"[{det.session.get_providers()[0]}]")
    images = _pictures(data)
    canvas = det.prepare(images[0])[0]
    for b in (1, 8, 32, 64):
        batch = np.stack([canvas] * b)
        reps = max(1, 256 // b)
        r = _rate(lambda batch=batch, reps=reps: [det.run(batch) for _ in range(reps)], b * reps)
        rows.append((f"detector network alone, batch {b}, canvas {canvas.shape[1]}x"
                     f"{canvas.shape[2]}", r))
    rows.append(("detector with pre- and post-processing (detect), decoded pictures",
                 _rate(lambda: det.detect(images), len(images))))
    with tempfile.TemporaryDirectory() as tmp:
        for faces in ("auto", "off"):
            s = run_batch(str(data), Path(tmp) / faces, device=device, precision="fp32",
                          faces=faces, show_progress=False)
            rows.append((f"maskcore batch --faces {faces} --device {device}, end to end "
                         f"({s['total']} pictures, {s['workers']} decode workers)",
                         s["images_per_second"]))
    click.echo(f"\n{platform.node()}, {len(images)} pictures from {data}\n")
    click.echo("| stage | per second |\n| --- | ---: |")
    for name, r in rows:
        click.echo(f"| {name} | {r:,.0f} |")


if __name__ == "__main__":
    bench_gpu()
