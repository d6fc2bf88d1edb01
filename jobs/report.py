"""``maskcore report RESULTS --out report.html``: an HTML page of a run, and annotated copies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from maskcore.annotate import annotate_flagged
from maskcore.cli import run_command
from maskcore.progress import say
from maskcore.report import MAX_CARDS, publish_report
from maskcore.results import open_results

__all__ = ["report"]


@click.command(short_help="An HTML report of a run (a results folder or s3:// prefix).")
@click.argument("results")
@click.option("--out", default=None,
              help="The HTML file to write, a path or s3://bucket/key.html [default: "
                   "report.html beside the manifest, in the folder or the bucket].")
@click.option("--source", "source_root", default=None,
              help="Where a local run's pictures are now, if they moved since the run "
                   "[default: the input its summary.json names].")
@click.option("--max-cards", default=MAX_CARDS, show_default=True, type=click.IntRange(1),
              help="Pictures in the gallery at most (flagged first); counts and histograms "
                   "always cover the whole run.")
@click.option("--annotate", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write a full-size copy of each flagged picture, boxes drawn, here.")
def report(results: str, out: str | None, source_root: str | None, max_cards: int,
           annotate: Path | None) -> None:
    """Write one self-contained HTML page about the run in RESULTS.

    \b
    RESULTS is a batch job's --out folder or a worker's results prefix
    (s3://bucket/results/). The page opens from disk with no server or network:
    the run's counts per class and verdict, a score histogram per class, a gallery
    with every face boxed in its class colour (flagged pictures first, then
    uncertain ones, errors, the rest; filter by group and label), the least
    confident faces, and the errors. Thumbnails are made from the source pictures,
    which must still be where the run read them (or give --source).
    """

    def _run() -> Any:
        run = open_results(results, source_root)
        say(f"{len(run.rows):,} pictures and {run.face_count:,} faces in {results}; "
            f"drawing up to {min(max_cards, len(run.rows)):,} thumbnails ...")
        stats, where = publish_report(run, out, max_cards=max_cards,
                                      progress=lambda n: say(f"  {n:,} thumbnails"))
        copies = annotate_flagged(run, annotate, log=say) if annotate is not None else []
        return stats, where, copies

    stats, where, copies = run_command(_run)
    if stats.unavailable:
        say(f"{stats.unavailable:,} source picture(s) could not be read for thumbnails "
            "(moved or deleted since the run? see --source)")
    capped = f" (of {stats.pictures:,}; raise --max-cards for more)" if stats.capped else ""
    click.echo(f"{stats.flagged:,} flagged of {stats.pictures:,} pictures; gallery of "
               f"{stats.cards:,}{capped}. Open {where}")
    if annotate is not None:
        click.echo(f"{len(copies):,} annotated picture(s) in {annotate}")
