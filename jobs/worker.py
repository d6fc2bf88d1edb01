"""``maskcore worker``: watch an S3 prefix and classify what arrives, or do one pass (``--once``)."""

from __future__ import annotations

import sys
from typing import Any

import click

from maskcore.cli import (
    Finite,
    env_option,
    ray_options_decorator,
    ray_options_from,
    run_command,
    serving_options,
    setup_logging,
)
from maskcore.faces import FaceOptions
from maskcore.report import publish_report
from maskcore.results import open_results
from maskcore.runners import Runner, make_runner
from maskcore.settings import DEFAULTS, ENV, RANGES
from maskcore.stopping import StopRequest
from maskcore.worker import Worker, WorkerConfig, log_event, parse_shard

__all__ = ["worker", "run_worker"]


def run_worker(cfg: WorkerConfig, runner: Runner, *, model: str | None,
               precision: str = DEFAULTS.precision, faces: str = DEFAULTS.faces,
               show_progress: bool = False) -> dict[str, Any]:
    """Build the analyzer and worker, install the signal handlers, run. Returns the summary."""
    analyzer = runner.open_analyzer(model, precision=precision, faces=FaceOptions(mode=faces))
    w = Worker(cfg, analyzer, runner)

    def on_first(name: str) -> None:
        log_event("stopping", signal=name,
                  note="finishing the batch in hand; a second signal exits at once")
        w.request_stop()

    with StopRequest(on_first, lambda name: log_event("forced_exit", signal=name)):
        return w.run(show_progress=show_progress)


SHORT_HELP = "Watch an S3 prefix and classify what lands (--once: one pass)."


@click.command(short_help=SHORT_HELP)
@env_option("--source", env="MASKCORE_SOURCE", required=True,
            help="The prefix to classify: s3://bucket/incoming/.")
@env_option("--results", env="MASKCORE_RESULTS", required=True,
            help="Where result parts and the consolidated manifest go: s3://bucket/results/.")
@env_option("--once", env="MASKCORE_ONCE", is_flag=True,
            help="One pass over everything not yet done, consolidate, exit (the nightly run).")
@env_option("--poll-interval", env="MASKCORE_POLL_INTERVAL", default=WorkerConfig.poll_interval,
            type=Finite(0.1, 86400), help="Seconds between listings.")
@env_option("--max-wait", env="MASKCORE_MAX_WAIT", default=WorkerConfig.max_wait,
            type=Finite(0, 3600),
            help="Seconds a partial batch waits for more pictures before it is sent.")
@env_option("--reprocess", env="MASKCORE_REPROCESS", is_flag=True,
            help="Classify everything again, done or not (after a model change, say).")
@env_option("--shard", env="MASKCORE_SHARD", default=None,
            help="I/N: take only the keys whose hash falls in shard I of N (run N workers).")
@env_option("--consolidate-every", env=ENV["consolidate_every"],
            default=WorkerConfig.consolidate_every, type=Finite(*RANGES["consolidate_every"][1:]),
            help="Seconds between refreshes of the consolidated manifest when watching.")
@env_option("--report", env="MASKCORE_REPORT", is_flag=True,
            help="With --once: write RESULTS/report.html (maskcore report) after the pass.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar [default: only on a terminal].")
@serving_options
@ray_options_decorator
def worker(source: str, results: str, once: bool, poll_interval: float, max_wait: float,
           reprocess: bool, shard: str | None, consolidate_every: float, report: bool,
           progress: bool | None,
           model: str | None, device: str, precision: str, faces: str, batch_size: int,
           workers: int | None, threshold: float, runner: str, **ray_args: Any) -> None:
    """Classify the pictures that land under an S3 prefix, never losing or repeating one.

    \b
    What is done lives in the bucket (result parts under RESULTS/parts/<model id>/),
    so a restarted or replacement worker carries on where the last one stopped.
    Results: RESULTS/manifest.jsonl, manifest.csv and summary.json, one row per object,
    and RESULTS/faces.jsonl and faces.csv, one row per face (--faces auto).
    SIGTERM or Ctrl-C: finish and write the batch in hand, then exit 0; a second
    signal exits at once. S3 settings come from the standard AWS variables
    (AWS_ENDPOINT_URL for MinIO, Ceph or a local server). With --once, --runner ray
    runs the pass on a Ray cluster (the same ledger and results).
    """
    setup_logging()
    if report and not once:
        raise click.UsageError("--report goes with --once (a watching worker never finishes)",
                               ctx=click.get_current_context())

    def _run() -> dict[str, Any]:
        cfg = WorkerConfig(source=source, results=results, once=once,
                           poll_interval=poll_interval, batch_size=batch_size,
                           max_wait=max_wait, reprocess=reprocess, shard=parse_shard(shard),
                           consolidate_every=consolidate_every, threshold=threshold)
        chosen = make_runner(runner, workers=workers, device=device,
                             ray_options=ray_options_from(ray_args))
        show = sys.stderr.isatty() if progress is None else progress
        summary = run_worker(cfg, chosen, model=model, precision=precision, faces=faces,
                             show_progress=show)
        if report:
            _, where = publish_report(open_results(results))
            log_event("report", url=where)
        return summary

    summary = run_command(_run)
    click.echo(f"{summary['total']:,} objects in {summary['results']}manifest.csv: "
               + ", ".join(f"{k} {v:,}" for k, v in summary["labels"].items())
               + f", errors {summary['errors']:,}; this run classified "
               f"{summary['this_run']['pictures']:,}")
