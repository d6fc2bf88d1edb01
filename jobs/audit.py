"""``maskcore audit DATA_DIR``: what a dataset holds (folder-per-class, or Pascal VOC boxes),
before training on it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from maskcore.boxdata import audit_boxes, format_box_audit, is_box_dataset, load_box_dataset
from maskcore.cli import run_command
from maskcore.dataset import audit as audit_report
from maskcore.dataset import format_audit, inspect, scan

SHORT_HELP = "Audit a dataset (class folders or VOC boxes) before training."


@click.command(short_help=SHORT_HELP)
@click.argument("data_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the full report as JSON here.")
@click.option("--workers", type=int, default=None,
              help="Processes that read and decode files [default: all cores].")
def audit(data_dir: Path, json_path: Path | None, workers: int | None) -> None:
    """Audit a dataset before training on it, as `maskcore train` reads it.

    \b
    A folder-per-class DATA_DIR (one sub-folder per class; sorted names are
    the labels): files per class, balance, sizes, formats, duplicates and
    unreadable files. Every file is read once, hashed, and decoded with the
    same preprocessing the model uses.
    \b
    A box dataset (DATA_DIR/images/ and DATA_DIR/annotations/ with Pascal VOC
    files, like face-mask-scenes): faces per class, width and split (the
    split is by picture), boxes over a picture's edge or left out, exact
    copies, VOC files without a picture, pictures without a VOC file and
    unreadable ones. Every box is cut as training cuts it.
    """
    def _run() -> None:
        report: dict[str, Any]
        if is_box_dataset(data_dir):
            report = audit_boxes(load_box_dataset(data_dir, workers=workers))
            click.echo(format_box_audit(report))
        else:
            index = scan(data_dir)
            infos, _ = inspect(index, workers=workers)
            report = audit_report(index, infos)
            click.echo(format_audit(report))
        if json_path:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(report, indent=2) + "\n")
            click.echo(f"\nreport written to {json_path}")

    run_command(_run)
