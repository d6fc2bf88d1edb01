"""``maskcore pair FACES_DIR CLOSEUPS_DIR --out DIR``: join a close-up model to the face model.

The joining itself is :func:`maskcore.pairing.pair_models`.
"""

from __future__ import annotations

from pathlib import Path

import click

from maskcore.cli import run_command
from maskcore.progress import say

__all__ = ["pair"]

SHORT_HELP = "Join a close-up model to the face model, for whole pictures."


@click.command(short_help=SHORT_HELP)
@click.argument("faces_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.argument("closeups_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the paired model.onnx, model.int8.onnx and model.json (may be "
                   "FACES_DIR).")
def pair(faces_dir: Path, closeups_dir: Path, out: Path) -> None:
    """Join the close-up model in CLOSEUPS_DIR to the face model in FACES_DIR.

    \b
    Both as `maskcore train` writes them: the face model reads face crops (and
    knows every class), the close-up model was trained on whole close-ups (its
    classes are the face model's first ones). The pair is one ONNX file with one
    model id: face crops run through the face network alone, at its cost; whole
    pictures (close-ups, pictures without a face found, --faces off) through both,
    the close-up network splitting what the face network gives the classes they
    share. Both variants (float32, int8) are joined and checked against the two
    networks run apart. The close-up pictures must be split alike in both models.
    Writes into --out: model.onnx, model.int8.onnx, model.json (the face model's
    card, with a whole_picture entry), and the face model's report, split and plots.
    """
    from maskcore.pairing import pair_models

    card = run_command(pair_models, faces_dir, closeups_dir, out,
                       log=lambda msg: say(msg, job="pair"))
    click.echo(f"paired model {card.model_id} in {out}")
