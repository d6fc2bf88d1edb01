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
pass tries them again.
"""

from __future__ import annotations

import io
import json
import os
import socket
import uuid
from typing import Any

from maskcore.clock import file_stamp, utc_now
from maskcore.manifest import (
    FACE_FIELDS,
    Tally,
    is_transient,
    read_jsonl,
    rows_to_csv,
    rows_to_jsonl,
    split_faces,
)
from maskcore.results import REPORT_NAME
from maskcore.storage import Ref, S3Store

__all__ = ["ResultsStore", "etag_field"]


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
        self._latest: dict[str, dict[str, Any]] = {}  # source URL -> latest row

    #: What this store writes beside its parts (each at the results prefix).
    OUTPUTS = ("manifest.jsonl", "manifest.csv", "faces.jsonl", "faces.csv", "summary.json",
               REPORT_NAME)

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
        """Read the parts written since the last refresh (by any worker)."""
        for ref in self.store.list(self.parts_prefix):
            if ref.key in self._seen_parts or not ref.key.endswith(".jsonl"):
                continue
            data, _ = self.store.get(ref.key)
            self._absorb(_parse_rows(data))
            self._seen_parts.add(ref.key)

    def is_done(self, url: str, etag: str) -> bool:
        """Whether a row for this object content (``s3://bucket/key`` and ETag) already exists
        for this model. The bucket is part of the identity: two sources may share a results
        prefix, and the same key and content in two buckets are two pictures."""
        return (url, etag) in self._done

    def _absorb(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            if not is_transient(row):
                self._done.add((row["source"], row.get("etag", "")))
            old = self._latest.get(row["source"])
            if old is None or row["processed_at"] >= old["processed_at"]:
                self._latest[row["source"]] = row

    # --- writing ----------------------------------------------------------------------------

    def write_part(self, rows: list[dict[str, Any]]) -> str:
        """PUT one batch's rows as a new immutable part; returns its key."""
        self._seq += 1
        stamp = file_stamp()
        key = f"{self.parts_prefix}{stamp}-{self.writer_id}-{self._seq:06d}.jsonl"
        self.store.put(key, rows_to_jsonl(rows), "application/x-ndjson")
        self._seen_parts.add(key)
        self._absorb(rows)
        return key

    def consolidate(self, extra_summary: dict[str, Any] | None = None) -> dict[str, Any]:
        """Rewrite manifest.jsonl, manifest.csv and summary.json from every part of this model."""
        self.refresh()
        rows, faces = split_faces(self._latest[s] for s in sorted(self._latest))
        tally = Tally()
        for r in rows:
            tally.add(r)
        summary = {
            **tally.to_dict(),
            "model_id": self.model_id,
            "parts": len(self._seen_parts),
            "results": self.store.location.url,
            "consolidated_at": utc_now("seconds"),
            **(extra_summary or {}),
        }
        loc = self.store.location
        self.store.put(loc.join("manifest.jsonl"), rows_to_jsonl(rows), "application/x-ndjson")
        self.store.put(loc.join("manifest.csv"), rows_to_csv(rows, self.classes, ("etag",)),
                       "text/csv")
        self.store.put(loc.join("faces.jsonl"), rows_to_jsonl(faces), "application/x-ndjson")
        self.store.put(loc.join("faces.csv"),
                       rows_to_csv(faces, self.classes, ("etag",), FACE_FIELDS), "text/csv")
        self.store.put(loc.join("summary.json"), (json.dumps(summary, indent=2) + "\n").encode(),
                       "application/json")
        return summary


def _parse_rows(data: bytes) -> list[dict[str, Any]]:
    """The rows of a part. A part is PUT whole, so a line that is not a row is someone else's
    file: skipped, as are rows without a source and a status."""
    return [row for row in read_jsonl(io.BytesIO(data), errors="replace", skip_bad=True)
            if isinstance(row.get("source"), str) and row.get("status") in ("ok", "error")]
