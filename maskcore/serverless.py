"""``handler(event, context)``: the worker as a serverless function (AWS Lambda or alike).

Accepted events:

* S3 ``ObjectCreated`` notifications delivered directly (``Records[].eventSource == "aws:s3"``);
* the same wrapped in SQS messages (each record's ``body`` is an S3 event, or an EventBridge one);
* EventBridge ``Object Created`` events from S3 (``detail.bucket.name``, ``detail.object.key``);
* an EventBridge *scheduled* event (no object): one backlog pass like ``worker --once`` over
  ``$MASKCORE_SOURCE``, the serverless nightly run.

Results go under ``$MASKCORE_RESULTS`` exactly as the worker writes them (one immutable part per
invocation, the consolidated manifest refreshed at most every ``$MASKCORE_CONSOLIDATE_EVERY``
seconds per container and on every scheduled run). The model (``$MASKCORE_MODEL`` or the bundled
one) is loaded once per container and reused. Duplicate deliveries of the same (key, ETag) write
no second row; keys under the results prefix are ignored, so results may share the bucket. For
SQS, only messages whose object could not be read (a transient fault) are returned in
``batchItemFailures``; a picture that cannot be decoded is a result, not a failure.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from dataclasses import replace
from typing import Any

from maskcore.errors import UsageError
from maskcore.events import S3Object, is_scheduled, is_sqs, objects_of
from maskcore.faces import Analyzer, FaceOptions, open_analyzer, results_id
from maskcore.ledger import ResultsStore, etag_field
from maskcore.manifest import is_transient
from maskcore.runners import LocalRunner, RunOptions
from maskcore.settings import ENV, from_env, parse_setting
from maskcore.storage import Ref, S3Store, parse_s3_url
from maskcore.worker import Worker, WorkerConfig, log_event

__all__ = ["handler"]

# No /dev/shm on Lambda, so no process pool: decoding runs in threads of the handler.
_RUNNER = LocalRunner(workers=0)

_ENGINE: Analyzer | None = None
_RESULTS: ResultsStore | None = None
_LAST_CONSOLIDATED = 0.0


def _engine() -> Analyzer:
    """The models, loaded once per container from the MASKCORE_* settings."""
    global _ENGINE
    if _ENGINE is None:
        settings = from_env()
        _ENGINE = open_analyzer(settings.model, device=settings.device,
                                precision=settings.precision,
                                faces=FaceOptions(mode=settings.faces))
    return _ENGINE


def _results(analyzer: Analyzer) -> ResultsStore:
    global _RESULTS
    url = os.environ.get(ENV["results"])
    if not url:
        raise UsageError(f"{ENV['results']} is not set (the s3:// prefix for results)")
    if _RESULTS is None or _RESULTS.store.location != parse_s3_url(url):
        _RESULTS = ResultsStore(S3Store(url), results_id(analyzer), analyzer.engine.classes)
    return _RESULTS


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """Classify the objects an event names (or the backlog, for a scheduled event)."""
    engine = _engine()
    results = _results(engine)
    if is_scheduled(event):
        return _nightly(engine)
    objects = objects_of(event)
    objects = [o for o in objects if not results.owns(o.bucket, o.key)]
    results.refresh()
    # An event without an ETag (some EventBridge rules, hand-made events): ask the bucket, so a
    # redelivery is still recognised as done.
    objects = [o if o.etag else replace(o, etag=S3Store(f"s3://{o.bucket}/").etag_of(o.key))
               for o in objects]
    todo = [o for o in objects
            if not (o.etag and results.is_done(o.url, o.etag))]
    rows = _classify(engine, todo)
    if rows:
        results.write_part(rows)
    failed: set[str] = set()
    by_source = {o.url: o for o in todo}
    for row in rows:
        if is_transient(row) and by_source[row["source"]].message_id:
            failed.add(by_source[row["source"]].message_id)  # type: ignore[arg-type]
    _maybe_consolidate(results)
    log_event("invocation", objects=len(objects), classified=len(rows),
              duplicates=len(objects) - len(todo), transient_failures=len(failed))
    if is_sqs(event):
        return {"batchItemFailures": [{"itemIdentifier": m} for m in sorted(failed)]}
    return {"classified": len(rows), "duplicates": len(objects) - len(todo),
            "errors": sum(r["status"] == "error" for r in rows)}


def _classify(engine: Analyzer, objects: list[S3Object]) -> list[dict[str, Any]]:
    """One batch through the shared pipeline, per source bucket."""
    rows: list[dict[str, Any]] = []
    threshold = from_env().threshold
    per_bucket: dict[str, list[S3Object]] = defaultdict(list)
    for o in objects:
        per_bucket[o.bucket].append(o)
    for bucket, objs in sorted(per_bucket.items()):
        source = S3Store(f"s3://{bucket}/")
        refs = sorted(Ref(source=o.url, key=o.key, etag=o.etag) for o in objs)
        _RUNNER.run(refs, source, engine, rows.append,
                    RunOptions(batch_size=max(len(refs), 1), threshold=threshold,
                               row_extra=etag_field))
    return rows


def _maybe_consolidate(results: ResultsStore, force: bool = False) -> None:
    global _LAST_CONSOLIDATED
    raw = os.environ.get(ENV["consolidate_every"])
    every = parse_setting("consolidate_every", raw) if raw else WorkerConfig.consolidate_every
    if force or time.monotonic() - _LAST_CONSOLIDATED >= every or not _LAST_CONSOLIDATED:
        results.consolidate()
        _LAST_CONSOLIDATED = time.monotonic()


def _nightly(engine: Analyzer) -> dict[str, Any]:
    source = os.environ.get("MASKCORE_SOURCE")
    if not source:
        raise UsageError("a scheduled run needs MASKCORE_SOURCE (the s3:// prefix to classify)")
    settings = from_env()
    cfg = WorkerConfig(source=source, results=os.environ["MASKCORE_RESULTS"], once=True,
                       batch_size=settings.batch_size, threshold=settings.threshold)
    summary = Worker(cfg, engine, _RUNNER).run()
    return {"classified": summary["this_run"]["pictures"], "total": summary["total"],
            "errors": summary["errors"]}
