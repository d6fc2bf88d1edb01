"""``maskcore audit DATA_DIR``: what a folder-per-class dataset holds, before training on it."""

from __future__ import annotations

import json
from pathlib import Path

import click

from maskcore.cli import run_command
from maskcore.dataset import audit as audit_report
from maskcore.dataset import format_audit, inspect, scan

SHORT_HELP = "Audit a dataset: balance, sizes, duplicates, unreadable files."


@click.command(short_help=SHORT_HELP)
@click.argument("data_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the full report as JSON here.")
@click.option("--workers", type=int, default=None,
              help="Processes that read and decode files [default: all cores].")
def audit(data_dir: Path, json_path: Path | None, workers: int | None) -> None:
    """Audit a folder-per-class dataset: balance, sizes, formats, duplicates, unreadable files.

    DATA_DIR holds one sub-folder per class (sorted names are the labels). Every file is read once,
    hashed, and decoded with the same preprocessing the model uses.
    """
    def _run() -> None:
        index = scan(data_dir)
        infos, _ = inspect(index, workers=workers)
        report = audit_report(index, infos)
        click.echo(format_audit(report))
        if json_path:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(report, indent=2) + "\n")
            click.echo(f"\nreport written to {json_path}")

    run_command(_run)
