"""``maskcore evaluate RESULTS --boxes DIR``: score a run's faces and verdicts against VOC boxes."""

from __future__ import annotations

import json
from pathlib import Path

import click

from maskcore.cli import run_command
from maskcore.evaluate import evaluate_run, format_report

__all__ = ["evaluate"]


@click.command(short_help="Score a run's faces against Pascal VOC box files.")
@click.argument("results", type=click.Path(file_okay=False, path_type=Path))
@click.option("--boxes", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder of VOC *.xml files (or a dataset folder with annotations/).")
@click.option("--split", type=click.Choice(["all", "train", "val", "test"]), default="all",
              show_default=True,
              help="Score only one part of the by-picture split (from each picture's sha256).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def evaluate(results: Path, boxes: Path, split: str, as_json: bool) -> None:
    """Score RESULTS (a batch job's --out folder, run with --faces auto) against boxes.

    \b
    Faces match boxes at IoU >= 0.5. Prints detection recall (all faces, >= 24 px,
    >= 32 px), precision and false boxes a picture; label accuracy and per-class
    precision and recall on matched faces; average precision per class and its
    mean; and the picture verdict ("is someone here not wearing a mask properly?"):
    accuracy and recall, with 95% Wilson intervals.
    """
    report = run_command(evaluate_run, results, boxes, split=split)
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report))
