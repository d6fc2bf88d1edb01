"""Results in a bucket: immutable part files that double as the ledger, and a consolidated manifest.

Layout under the results prefix::

    parts/<model_id>/<UTC time>-<writer>-<seq>.jsonl   one per batch, PUT whole, never changed
    manifest.jsonl, manifest.csv, summary.json        consolidated view, rewritten whole
    faces.jsonl, faces.csv                            the faces of those rows, rewritten whole

The parts are the record of what is done: an object is done for a model when a part under that
model's folder holds a row for its (bucket, key, ETag). Nothing lives on local disk, so a new pod carries
on where the last one stopped; a batch in flight when a worker is killed has no part yet and is
simply done again. The consolidated manifest holds one row per object: the latest row written
for it (so an overwritten object shows its new content's result, and ``--reprocess`` replaces
old rows). Rows whose object could not be read are recorded but not counted as done, so the next
pass tries them again; a watching worker waits longer before each further try of an object that
stays unreadable (:func:`retry_wait`).
"""

from __future__ import annotations

import io
import json
import os
import socket
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from maskcore.clock import file_stamp, seconds_of, utc_now
from maskcore.manifest import ManifestWriter, is_transient, jsonl_records, rows_to_jsonl
from maskcore.results import REPORT_NAME
from maskcore.storage import Ref, S3Store

__all__ = ["RETRY_FIRST", "RETRY_MOST", "ResultsStore", "etag_field", "retry_wait"]

#: GETs in flight while the ledger reads parts, and parts read per window (see refresh).
READ_THREADS = 16
READ_WINDOW = 64

#: The consolidated files, in the order they are rewritten, and their content types.
CONSOLIDATED = (("manifest.jsonl", "application/x-ndjson"), ("manifest.csv", "text/csv"),
                ("faces.jsonl", "application/x-ndjson"), ("faces.csv", "text/csv"),
                ("summary.json", "application/json"))

#: An object whose read failed (``error_kind`` ``read``) is not done, so a watching worker tries
#: it again. One that stays unreadable (a permission the worker lacks, a key it cannot decrypt)
#: was tried, and written as a new part, at every poll: some 6,600 parts a day at the default 10 s,
#: every one read again by each worker that starts. So the next try comes RETRY_FIRST seconds
#: after the first failure and twice as long after each further one, never more than RETRY_MOST
#: apart: 12 tries in the first day, then 4 a day. The failures are counted from the parts, so a
#: restarted worker keeps to the same wait; a fault that passes (throttling, a 5xx) is tried
#: again within a minute.
RETRY_FIRST = 60.0
RETRY_MOST = 6 * 3600.0


def retry_wait(failures: int) -> float:
    """Seconds from an object's latest failed read to its next try, after ``failures`` of them."""
    return min(RETRY_FIRST * 2.0 ** min(max(failures, 1) - 1, 64), RETRY_MOST)


def etag_field(ref: Ref) -> dict[str, str]:
    """The field a worker's rows add: the object's ETag, half of the ledger's identity.

    A module-level function, not a lambda, so it travels to decode processes and Ray actors."""
    return {"etag": ref.etag}


class ResultsStore:
    """The results prefix of one model: what is done, new parts, the consolidated manifest.

    Args:
        results: the ``s3://bucket/prefix/`` for results.
        model_id: the model whose rows count as done.
        classes: the model's classes (CSV columns).
    """

    def __init__(self, results: S3Store, model_id: str, classes: list[str]) -> None:
        loc = results.location
        if loc.prefix and not loc.prefix.endswith("/"):
            # "s3://b/in/res" is the folder res/, never a prefix of "in/resume.jpg".
            results = S3Store(f"{loc.url}/", client=results._client)
        self.store = results
        self.model_id = model_id
        self.classes = classes
        self.parts_prefix = results.location.join(f"parts/{model_id}/")
        self.writer_id = f"{socket.gethostname()[:24]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._seq = 0
        self._seen_parts: set[str] = set()
        self._done: set[tuple[str, str]] = set()
        # (source URL, ETag) -> (failed reads, the latest one's processed_at), for retry_at.
        self._failed: dict[tuple[str, str], tuple[int, str]] = {}
        # source URL -> (processed_at, its latest row as the line it was read from). The bytes,
        # not the parsed dict: with the key and the done set, a street picture with 4 faces
        # takes 2.6 KB so, against 5.0 KB as a dict, and a worker holds the prefix's whole
        # history (docs/DEPLOY.md).
        self._latest: dict[str, tuple[str, bytes]] = {}

    #: What this store writes beside its parts (each at the results prefix).
    OUTPUTS = (*(name for name, _ in CONSOLIDATED), REPORT_NAME)

    def owns(self, bucket: str, key: str) -> bool:
        """Whether an object is one this results prefix holds (its parts and consolidated
        files), exactly: a results prefix that contains the source (the bucket root, say)
        hides none of the source's pictures."""
        loc = self.store.location
        if bucket != loc.bucket:
            return False
        return key.startswith(loc.join("parts/")) or key in {loc.join(n) for n in self.OUTPUTS}

    # --- the ledger -----------------------------------------------------------------------

    def refresh(self) -> None:
        """Read the parts written since the last refresh (by any worker), in listing order.

        A worker that starts reads every part of its model (one for each batch any worker ever
        wrote): a year of nightly 10,000-picture runs is some 57,000 parts, and one GET at a
        time that is 57,000 round trips (half an hour at 30 ms). So ``READ_THREADS`` GETs are in
        flight at once, a window of ``READ_WINDOW`` parts at a time, so that no more than that
        many parts' bytes are held.
        """
        new = [ref.key for ref in self.store.list(self.parts_prefix)
               if ref.key not in self._seen_parts and ref.key.endswith(".jsonl")]
        if not new:
            return
        _ = self.store.client  # made once, here; boto3's clients are safe to share by threads
        with ThreadPoolExecutor(min(READ_THREADS, len(new))) as pool:
            for start in range(0, len(new), READ_WINDOW):
                window = new[start:start + READ_WINDOW]
                for key, (data, _etag) in zip(window, pool.map(self.store.get, window),
                                              strict=True):
                    self._absorb(_parse_rows(data))
                    self._seen_parts.add(key)

    def is_done(self, url: str, etag: str) -> bool:
        """Whether a row for this object content (``s3://bucket/key`` and ETag) already exists
        for this model. The bucket is part of the identity: two sources may share a results
        prefix, and the same key and content in two buckets are two pictures."""
        return (url, etag) in self._done

    def retry_at(self, url: str, etag: str) -> float | None:
        """When an object whose reads failed may be tried again (Unix time, by
        :func:`retry_wait`); None for an object with no failed read."""
        failed = self._failed.get((url, etag))
        if failed is None:
            return None
        count, latest = failed
        return (seconds_of(latest) or 0.0) + retry_wait(count)

    def _absorb(self, records: list[tuple[dict[str, Any], bytes]]) -> None:
        for row, line in records:
            source, at = row["source"], str(row.get("processed_at", ""))
            ident = (source, row.get("etag", ""))
            if not is_transient(row):
                self._done.add(ident)
                self._failed.pop(ident, None)  # done: its failed reads no longer matter
            elif ident not in self._done:
                count, latest = self._failed.get(ident, (0, ""))
                self._failed[ident] = (count + 1, max(latest, at))
            old = self._latest.get(source)
            if old is None or at >= old[0]:
                self._latest[source] = (at, line)

    # --- writing ----------------------------------------------------------------------------

    def write_part(self, rows: list[dict[str, Any]]) -> str:
        """PUT one batch's rows as a new immutable part; returns its key."""
        self._seq += 1
        stamp = file_stamp()
        key = f"{self.parts_prefix}{stamp}-{self.writer_id}-{self._seq:06d}.jsonl"
        data = rows_to_jsonl(rows)
        self.store.put(key, data, "application/x-ndjson")
        self._seen_parts.add(key)
        # The part's lines are its rows, one each (JSON escapes every newline inside a row),
        # and they are kept as refresh would read them back.
        self._absorb(list(zip(rows, data.split(b"\n")[:-1], strict=True)))
        return key

    def consolidate(self, extra_summary: dict[str, Any] | None = None) -> dict[str, Any]:
        """Rewrite manifest.jsonl/csv, faces.jsonl/csv and summary.json from every part of this
        model; returns the summary.

        The files are written a row at a time by the batch job's own writer into a local
        temporary folder, and uploaded from there. Built in memory, they took 3.7 KB a street
        picture (4 faces) on top of the ledger (0.4 KB so), and a results prefix that lives for
        years outgrows a single PUT's 5 GB (faces.jsonl holds 1.4 KB a street picture).
        """
        self.refresh()
        loc = self.store.location
        with tempfile.TemporaryDirectory(prefix="maskcore-consolidate-") as tmp:
            writer = ManifestWriter(tmp, self.classes, extra_fields=("etag",))
            for source in sorted(self._latest):
                writer.write(_row_of(self._latest[source][1]))
            summary = {
                **writer.tally.to_dict(),
                "model_id": self.model_id,
                "parts": len(self._seen_parts),
                "results": loc.url,
                "consolidated_at": utc_now("seconds"),
                **(extra_summary or {}),
            }
            writer.close(summary)
            for name, content_type in CONSOLIDATED:
                self.store.put_file(loc.join(name), Path(tmp) / name, content_type)
        return summary


def _parse_rows(data: bytes) -> list[tuple[dict[str, Any], bytes]]:
    """The rows of a part, each with its line. A part is PUT whole, so a line that is not a
    row is someone else's file: skipped, as are rows without a source and a status."""
    return [(row, line) for row, line in jsonl_records(io.BytesIO(data), errors="replace",
                                                       skip_bad=True)
            if isinstance(row.get("source"), str) and row.get("status") in ("ok", "error")]


def _row_of(line: bytes) -> dict[str, Any]:
    """A row kept as its line, parsed again (as :func:`_parse_rows` read it)."""
    row: dict[str, Any] = json.loads(line.decode("utf-8", "replace"))
    return row
