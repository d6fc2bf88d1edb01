"""``maskcore batch INPUT --out OUT``: classify a folder, a file or an S3 prefix into a manifest."""

from __future__ import annotations

import logging
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from maskcore.cli import ray_options_decorator, ray_options_from, run_command, serving_options
from maskcore.faces import FaceOptions, open_analyzer
from maskcore.manifest import ManifestWriter
from maskcore.pipeline import classify
from maskcore.pool import capped_workers
from maskcore.progress import Progress
from maskcore.ray_runner import RayOptions, classify_ray
from maskcore.settings import DEFAULTS
from maskcore.storage import LocalSource, S3Store, open_source

__all__ = ["batch", "run_batch"]

FORMATS = ("jsonl", "csv")


def run_batch(
    input_spec: str,
    out: Path,
    *,
    model: str | None = None,
    batch_size: int = DEFAULTS.batch_size,
    device: str = DEFAULTS.device,
    precision: str = DEFAULTS.precision,
    faces: str = DEFAULTS.faces,
    workers: int | None = None,
    formats: tuple[str, ...] = FORMATS,
    threshold: float = DEFAULTS.threshold,
    show_progress: bool = True,
    runner: str = "local",
    ray_options: Any = None,
) -> dict[str, Any]:
    """Classify every file under ``input_spec``; write the manifest, faces and summary into ``out``.

    Returns:
        The summary (as written to ``summary.json``).

    Raises:
        StorageError: the input cannot be found or listed.
        ModelError: the model or its card cannot be used.
        UsageError: options that cannot work here (``--device cuda`` without CUDA).
    """
    started = datetime.now(timezone.utc)
    t0 = time.monotonic()
    source = open_source(input_spec, exclude=out)
    if isinstance(source, S3Store):
        source.check()
    if runner == "ray":
        ray_options = ray_options or RayOptions()
    analyzer = open_analyzer(model, device=device, precision=precision,
                             faces=FaceOptions(mode=faces), runner=runner,
                             actors_on_gpu=bool(ray_options and ray_options.gpus_per_actor > 0))
    engine = analyzer.engine
    workers = capped_workers(workers)
    where = f"Ray actors ({device})" if runner == "ray" else \
        f"{engine.device} [{engine.provider}]"
    click.echo(f"model {engine.model_id} ({engine.path}, {engine.precision}) on {where}", err=True)
    if analyzer.detector is not None:
        click.echo(f"faces: detector {analyzer.detector_id} ({analyzer.detector.path.name}, "
                   f"canvas {analyzer.detector.spec.canvas} px)", err=True)
    refs = list(source.list())
    skipped = source.hidden_skipped if isinstance(source, LocalSource) else 0
    own = source.excluded if isinstance(source, LocalSource) else 0
    click.echo(f"{len(refs):,} files under {source.describe()}"
               + (f" ({skipped} hidden skipped)" if skipped else "")
               + (f" ({own} in the output folder {out} left out)" if own else ""), err=True)
    writer = ManifestWriter(out, engine.classes, formats)
    bar = Progress(len(refs), "pictures", enabled=show_progress)
    cluster: dict[str, float] = {}
    if runner == "ray":
        times, cluster = classify_ray(refs, source, analyzer, writer.write, device=device,
                                      batch_size=batch_size, threshold=threshold,
                                      progress=bar, options=ray_options)
    else:
        times = classify(refs, source, analyzer, writer.write, batch_size=batch_size,
                         workers=workers, threshold=threshold, progress=bar)
    bar.close()
    wall = time.monotonic() - t0
    summary = {
        **writer.tally.to_dict(),
        "skipped": skipped,
        "wall_seconds": round(wall, 3),
        "images_per_second": round(len(refs) / wall, 1) if wall > 0 else 0.0,
        "stages": times.to_dict(),
        "model_id": engine.model_id,
        "model_path": str(engine.path),
        "faces_mode": faces,
        "detector_id": analyzer.detector_id,
        "precision": engine.precision,
        "device": device if runner == "ray" else engine.device,
        "provider": "per Ray actor" if runner == "ray" else engine.provider,
        "batch_size": batch_size,
        "workers": workers,
        "threshold": threshold,
        "input": source.describe(),
        "output": str(out),
        "runner": runner,
        **({"ray_cluster": cluster} if runner == "ray" else {}),
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    writer.close(summary)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The end-of-run table."""
    face_labels = summary.get("face_labels", {})
    with_faces = summary.get("faces_mode", "off") != "off"
    lines = ["", f"  {'label':<22} {'pictures':>9}" + (f" {'faces':>9}" if with_faces else "")]
    for label in sorted(set(summary["labels"]) | set(face_labels)):
        n = summary["labels"].get(label, 0)
        lines.append(f"  {label:<22} {n:>9,}"
                     + (f" {face_labels.get(label, 0):>9,}" if with_faces else ""))
    lines.append(f"  {'errors':<22} {summary['errors']:>9,}")
    total_faces = f" {summary.get('faces', 0):>9,}" if with_faces else ""
    lines.append(f"  {'total':<22} {summary['total']:>9,}{total_faces}")
    if with_faces:
        lines.append(f"  ({summary.get('pictures_without_faces', 0):,} pictures had no face found "
                     "and were classified whole)")
    lines.append("")
    lines.append(f"  {summary['images_per_second']:,.0f} pictures/s over "
                 f"{summary['wall_seconds']:.1f}s on {summary['device']}; results in "
                 f"{summary['output']}")
    return "\n".join(lines)


SHORT_HELP = "Classify a folder, a file or an s3:// prefix into a manifest."


@click.command(short_help=SHORT_HELP)
@click.argument("input_spec", metavar="INPUT")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for manifest.jsonl, manifest.csv and summary.json.")
@serving_options
@click.option("--format", "formats", default="jsonl,csv", show_default=True,
              help="Manifest formats, comma-separated: jsonl, csv.")
@click.option("--fail-on-error", is_flag=True,
              help="Exit 1 when any picture got an error row.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="A bar on a terminal, a log line every few seconds elsewhere.")
@ray_options_decorator
def batch(input_spec: str, out: Path, model: str | None, batch_size: int, device: str,
          precision: str, faces: str, workers: int | None, formats: str, threshold: float,
          fail_on_error: bool, progress: bool, runner: str, **ray_args: Any) -> None:
    """Classify every picture under INPUT: a folder (recursive), one file, or s3://bucket/prefix/.

    \b
    Which files are pictures is decided by their content, not their names. Every
    non-hidden file gets exactly one row: status ok with a label and probabilities,
    or status error with the reason. With --faces auto (the default) every face
    found gets a row in OUT/faces.jsonl and faces.csv (its box, label, score), and
    the picture's label is its most serious face (without_mask first). Writes
    OUT/manifest.jsonl, manifest.csv, faces.jsonl, faces.csv and summary.json
    (each appears only once complete; an earlier run's stay until then).
    S3 settings come from the standard AWS variables (AWS_ENDPOINT_URL for MinIO,
    Ceph or a local server).

    \b
    Exit codes: 0 finished (error rows included), 1 finished with error rows and
    --fail-on-error, 2 unusable input, model or options.
    """
    chosen = tuple(f.strip() for f in formats.split(",") if f.strip())
    unknown = sorted(set(chosen) - set(FORMATS))
    if unknown or not chosen:
        raise click.BadParameter(f"unknown format(s) {unknown}; choose from jsonl, csv",
                                 param_hint="--format")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    def _run() -> dict[str, Any]:
        return run_batch(input_spec, out, model=model, batch_size=batch_size, device=device,
                         precision=precision, faces=faces, workers=workers, formats=chosen,
                         threshold=threshold,
                         show_progress=progress, runner=runner,
                         ray_options=ray_options_from(ray_args))

    summary = run_command(_run)
    click.echo(format_summary(summary))
    if fail_on_error and summary["errors"]:
        sys.exit(1)
