"""The S3 worker: find objects not yet classified for the current model, classify, record, repeat.

The loop is small on purpose: ``run()`` lists the source prefix, keeps the objects the ledger
(the result parts in the bucket, see :mod:`maskcore.ledger`) does not hold for this model, and
feeds them to the same pipeline and engine as the batch job, writing one immutable part per batch.
``once=True`` does one pass and consolidates (the nightly run); otherwise it polls until asked to
stop. A stop request lets the batch in hand finish and be written.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from maskcore.clock import stamp_at, utc_now
from maskcore.errors import StorageError, UsageError
from maskcore.faces import Analyzer, results_id
from maskcore.ledger import ResultsStore, etag_field
from maskcore.progress import Progress
from maskcore.runners import LocalRunner, Runner, RunOptions
from maskcore.settings import DEFAULTS
from maskcore.storage import Ref, S3Store

__all__ = ["Worker", "WorkerConfig", "log_event", "parse_shard"]


def log_event(event: str, **fields: Any) -> None:
    """One JSON log line on stderr."""
    record = {"ts": utc_now(),
              "event": event, **fields}
    sys.stderr.write(json.dumps(record) + "\n")
    sys.stderr.flush()


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"I/N"`` -> (I, N); None -> (0, 1). Raises UsageError for anything else."""
    if not text:
        return 0, 1
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError as exc:
        raise UsageError(f"--shard takes I/N, such as 0/2, not {text!r}") from exc
    if n < 1 or not 0 <= i < n:
        raise UsageError(f"--shard {text}: need 0 <= I < N")
    return i, n


def shard_of(key: str, n: int) -> int:
    """Which of ``n`` shards a key belongs to (stable across processes and machines)."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % n


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker watches, where it writes, and how it batches."""

    source: str  # s3://bucket/incoming/
    results: str  # s3://bucket/results/
    once: bool = False
    poll_interval: float = 10.0  # seconds between listings when watching
    batch_size: int = DEFAULTS.batch_size
    max_wait: float = 2.0  # seconds to let a partial batch fill before sending it
    reprocess: bool = False  # redo objects already done for this model
    shard: tuple[int, int] = (0, 1)
    consolidate_every: float = 300.0  # seconds between manifest refreshes when watching
    threshold: float = DEFAULTS.threshold


class Worker:
    """Runs the watch/once loop for one source prefix and one model.

    ``runner`` is where the analyzing runs (this machine's decode processes by default; a Ray
    cluster for the nightly pass) and ``analyzer`` the one it opened.
    """

    def __init__(self, cfg: WorkerConfig, analyzer: Analyzer,
                 runner: Runner | None = None) -> None:
        runner = runner or LocalRunner()
        if runner.name != "local" and not cfg.once:
            raise UsageError(f"--runner {runner.name} runs the nightly pass: use it with --once")
        self.cfg = cfg
        self.analyzer = analyzer
        self.engine = analyzer.engine
        self.runner = runner
        self.source = S3Store(cfg.source)
        self.results = ResultsStore(S3Store(cfg.results), results_id(analyzer),
                                    self.engine.classes)
        self._stop = threading.Event()
        self._written: set[tuple[str, str]] = set()  # (s3 URL, etag) written by this run
        self._waiting = 0  # objects left for a later try at the last listing (logged on change)
        self.totals = {"pictures": 0, "errors": 0, "batches": 0, "passes": 0}

    def request_stop(self) -> None:
        """Finish the batch in hand, write it, and return from :meth:`run`."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def pending(self) -> list[Ref]:
        """Objects under the source prefix that still need a row for this model, less those
        whose reads failed and whose next try is not due yet (when watching)."""
        self.results.refresh()
        bucket = self.source.location.bucket
        i, n = self.cfg.shard
        todo = []
        now = time.time()
        waiting: list[float] = []  # when each object whose reads failed is due again
        for ref in self.source.list():
            if self.results.owns(bucket, ref.key):
                continue  # our own results, when they live under the source prefix
            if n > 1 and shard_of(ref.key, n) != i:
                continue
            done = ((ref.source, ref.etag) in self._written if self.cfg.reprocess
                    else self.results.is_done(ref.source, ref.etag))
            if done:
                continue
            # A watching worker tries an unreadable object again only when it is due (the
            # ledger's retry_wait); a --once pass tries it once, its schedule being the wait.
            due = None if self.cfg.once else self.results.retry_at(ref.source, ref.etag)
            if due is not None and due > now:
                waiting.append(due)
            else:
                todo.append(ref)
        if len(waiting) != self._waiting:
            self._waiting = len(waiting)
            log_event("retry_later", objects=len(waiting),
                      next_try=stamp_at(min(waiting)) if waiting else None)
        return todo

    def process(self, refs: list[Ref], progress: Progress | None = None) -> int:
        """Classify ``refs``, one part per batch; returns how many rows were written."""
        written = 0

        def on_batch(rows: list[dict[str, Any]]) -> None:
            nonlocal written
            t0 = time.monotonic()
            key = self.results.write_part(rows)
            for r in rows:
                self._written.add((r["source"], r["etag"]))
            errors = sum(r["status"] == "error" for r in rows)
            written += len(rows)
            self.totals["pictures"] += len(rows)
            self.totals["errors"] += errors
            self.totals["batches"] += 1
            elapsed = time.monotonic() - batch_start[0]
            log_event("batch", count=len(rows), errors=errors, seconds=round(elapsed, 3),
                      images_per_second=round(len(rows) / elapsed, 1) if elapsed else None,
                      part=key, write_seconds=round(time.monotonic() - t0, 3))
            batch_start[0] = time.monotonic()

        batch_start = [time.monotonic()]
        self.runner.run(refs, self.source, self.analyzer, lambda row: None,
                        RunOptions(batch_size=self.cfg.batch_size, threshold=self.cfg.threshold,
                                   progress=progress, row_extra=etag_field, on_batch=on_batch,
                                   stop=self._stop.is_set))
        return written

    def run(self, *, show_progress: bool = False) -> dict[str, Any]:
        """Watch (or, with ``once``, do one pass); returns the final consolidated summary.

        Raises:
            StorageError: the source or results prefix cannot be listed at start.
        """
        self.source.check()
        self.results.store.check()
        log_event("start", source=self.cfg.source, results=self.cfg.results,
                  model_id=self.engine.model_id, detector_id=self.analyzer.detector_id,
                  **self.runner.facts(self.analyzer),
                  precision=self.engine.precision, once=self.cfg.once,
                  shard=f"{self.cfg.shard[0]}/{self.cfg.shard[1]}")
        last_consolidated = time.monotonic()
        while not self.stopping:
            todo = self._pending_with_retry()
            if todo and not self.cfg.once and len(todo) < self.cfg.batch_size \
                    and self.cfg.max_wait > 0:
                # A partial batch waits a little for company, then goes.
                if not self._stop.wait(self.cfg.max_wait):
                    todo = self._pending_with_retry()
            self.totals["passes"] += 1
            if todo:
                log_event("pass", pending=len(todo))
                bar = Progress(len(todo), "pictures", enabled=show_progress)
                try:
                    self.process(todo, bar)
                except StorageError as exc:
                    # S3 still failing after botocore's retries. The batch whose part could not
                    # be written is not recorded, so the next pass does it again.
                    if self.cfg.once:
                        raise
                    log_event("pass_failed", error=str(exc))
                finally:
                    bar.close()
            if self.cfg.once:
                break
            if time.monotonic() - last_consolidated >= self.cfg.consolidate_every:
                self._consolidate()
                last_consolidated = time.monotonic()
            self._stop.wait(self.cfg.poll_interval)
        summary = self._consolidate()
        log_event("stop", **self.totals)
        return summary

    def _pending_with_retry(self) -> list[Ref]:
        """Listing fails only after botocore's own retries; in watch mode try again later."""
        try:
            return self.pending()
        except StorageError as exc:
            if self.cfg.once:
                raise
            log_event("list_failed", error=str(exc))
            return []

    def _consolidate(self) -> dict[str, Any]:
        t0 = time.monotonic()
        summary = self.results.consolidate({
            "source": self.cfg.source, **self.runner.facts(self.analyzer),
            "precision": self.engine.precision,
            "faces_mode": self.analyzer.faces.mode, "detector_id": self.analyzer.detector_id,
            "batch_size": self.cfg.batch_size,
            "this_run": dict(self.totals),
        })
        log_event("consolidated", rows=summary["total"], errors=summary["errors"],
                  seconds=round(time.monotonic() - t0, 3))
        return summary
