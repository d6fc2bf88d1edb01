"""``maskcore batch INPUT --out OUT``: classify a folder, a file or an S3 prefix into a manifest."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import click

from maskcore.batch import FORMATS, format_stopped, format_summary, run_batch
from maskcore.cli import (
    ray_options_decorator,
    ray_options_from,
    run_command,
    serving_options,
    setup_logging,
)
from maskcore.progress import say
from maskcore.runners import make_runner
from maskcore.stopping import StopRequest

__all__ = ["batch"]


SHORT_HELP = "Classify a folder, a file or an s3:// prefix into a manifest."


@click.command(short_help=SHORT_HELP)
@click.argument("input_spec", metavar="INPUT")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the results: manifest.jsonl/csv, faces.jsonl/csv and summary.json.")
@serving_options
@click.option("--format", "formats", default="jsonl,csv", show_default=True,
              help="Manifest formats, comma-separated: jsonl, csv.")
@click.option("--fail-on-error", is_flag=True,
              help="Exit 1 when any picture got an error row.")
@click.option("--annotate", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write a full-size copy of each flagged picture (someone unmasked or "
                   "masked wrongly) with its faces boxed and labelled, into this folder.")
@click.option("--resume", is_flag=True,
              help="Take up a run stopped (Ctrl-C, SIGTERM, killed) in --out: keep the rows "
                   "of its *.partial files whose picture is unchanged (sha256) and classify "
                   "only the rest. Needs the same model, --faces and --threshold; error rows "
                   "are tried again. Without a stopped run there, starts from the first picture.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="A bar on a terminal, a log line every few seconds elsewhere.")
@ray_options_decorator
def batch(input_spec: str, out: Path, model: str | None, batch_size: int, device: str,
          precision: str, faces: str, workers: int | None, formats: str, threshold: float,
          fail_on_error: bool, annotate: Path | None, resume: bool, progress: bool,
          runner: str, **ray_args: Any) -> None:
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
    Ctrl-C or SIGTERM stops it after the pictures in hand: their rows stay in
    OUT/*.partial, and OUT's earlier results are not replaced. A second one
    stops at once. The same command with --resume (the stop prints it) then
    classifies only the pictures the stopped run had not done.

    \b
    Exit codes: 0 finished (error rows included), 1 finished with error rows and
    --fail-on-error, 2 unusable input, model or options, 130 / 143 stopped by
    Ctrl-C / SIGTERM.
    """
    chosen = tuple(f.strip() for f in formats.split(",") if f.strip())
    unknown = sorted(set(chosen) - set(FORMATS))
    if unknown or not chosen:
        raise click.BadParameter(f"unknown format(s) {unknown}; choose from "
                                 f"{', '.join(FORMATS)}",
                                 param_hint="--format")
    setup_logging()

    def _run() -> dict[str, Any]:
        chosen_runner = make_runner(runner, workers=workers, device=device,
                                    ray_options=ray_options_from(ray_args))
        return run_batch(input_spec, out, model=model, batch_size=batch_size, device=device,
                         precision=precision, faces=faces, workers=workers, formats=chosen,
                         threshold=threshold, show_progress=progress, runner=chosen_runner,
                         annotate=annotate, stop=stop.requested, resume=resume)

    def on_first(name: str) -> None:
        # On a terminal the progress bar's line is open: the notice goes on a line of its own.
        fresh = "\n" if progress and sys.stderr.isatty() else ""
        say(f"{fresh}{name}: stopping after the pictures in hand (a second one stops at once)")

    with StopRequest(on_first, lambda name: say(f"{name} again: stopped, nothing written")) as stop:
        summary = run_command(_run)
    if summary.get("stopped"):
        say(format_stopped(summary, again=resume_command()))
        sys.exit(stop.exit_code)
    click.echo(format_summary(summary))
    if fail_on_error and summary["errors"]:
        sys.exit(1)


def resume_command() -> str | None:
    """The command line that takes a stopped run up: this one, with ``--resume`` (None when
    this process's arguments are not the command's, as under click's test runner).

    Printed when a run stops, so that a run started with a generated ``--out`` (``make batch``
    names a new folder by the time) is taken up in that folder and not started over in another.
    """
    args = sys.argv[1:]
    if "batch" not in args:
        return None
    # The program as it was run (a path when run from a script), so that the line works as
    # printed even where maskcore is not on PATH; ``python -m maskcore`` through this Python.
    program = [sys.executable, "-m", "maskcore"] if Path(sys.argv[0]).name == "__main__.py" \
        else [sys.argv[0]]
    return shlex.join(program + args + ([] if "--resume" in args else ["--resume"]))
