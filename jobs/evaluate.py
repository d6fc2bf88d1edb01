"""``maskcore evaluate RESULTS``: score a run against Pascal VOC boxes (``--boxes DIR``: faces
and verdicts) or against the class folders its pictures lie in (``--classes``: picture labels)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from maskcore.cli import run_command
from maskcore.evaluate import SPLITS, evaluate_run, format_report
from maskcore.evaluate_classes import evaluate_classes, format_class_report

__all__ = ["evaluate"]


@click.command(short_help="Score a run against VOC boxes or class folders.")
@click.argument("results")
@click.option("--boxes", type=click.Path(file_okay=False, path_type=Path),
              help="Folder of VOC *.xml files (or a dataset folder with annotations/): score "
                   "the faces and the verdicts.")
@click.option("--classes", is_flag=True,
              help="The run classified a folder-per-class dataset (ROOT/<class>/...): score "
                   "each picture's label against its class folder.")
@click.option("--split", type=click.Choice(SPLITS), default="all", show_default=True,
              help="Score only one part of the split: with --boxes the by-picture split (from "
                   "each picture's sha256), with --classes the model's split record.")
@click.option("--split-record", type=click.Path(exists=True, path_type=Path),
              help="With --classes: the split.json (or its folder) to take --split from "
                   "[default: the one beside the model the run's summary names].")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def evaluate(results: str, boxes: Path | None, classes: bool, split: str,
             split_record: Path | None, as_json: bool) -> None:
    """Score RESULTS (a batch job's --out folder, or a worker's s3:// results
    prefix) against boxes or class folders.

    \b
    --boxes DIR: faces match boxes at IoU >= 0.5. Prints detection recall (all
    faces, >= 24 px, >= 32 px), precision and false boxes a picture; label
    accuracy and per-class precision and recall on matched faces; average
    precision per class and its mean; and the picture verdict ("is someone here
    not wearing a mask properly?"): accuracy and recall, with 95% Wilson
    intervals. A run with --faces off has no faces: only its verdicts are scored.

    \b
    --classes (a run over ROOT/<class>/... folders, either --faces mode):
    picture label accuracy with its 95% Wilson interval, recall and precision
    per class, the confusion matrix and the pictures read wrong. Exact copies
    count once; 'uncertain' counts as wrong. The close-up figures in
    docs/MODEL.md are --classes --split test on the face-mask dataset.
    """
    if (boxes is None) == (not classes):
        raise click.UsageError("give one of --boxes DIR or --classes")
    if split_record is not None and not classes:
        raise click.UsageError("--split-record goes with --classes")
    if classes:
        report = run_command(evaluate_classes, results, split=split, split_record=split_record)
        click.echo(json.dumps(report, indent=2) if as_json else format_class_report(report))
    else:
        report = run_command(evaluate_run, results, boxes, split=split)
        click.echo(json.dumps(report, indent=2) if as_json else format_report(report))
