"""A finished run's results, read back: from a batch job's folder or a worker's ``s3://`` prefix.

Both write the same files (``manifest.jsonl``, ``faces.jsonl``, ``summary.json``); the report and
``--annotate`` read them through :func:`open_results`, and the source pictures through
:meth:`RunResults.read_source` (a batch row's ``source`` is relative to the input the summary
names; a worker row's is the object's ``s3://`` URL).
"""

from __future__ import annotations

import io
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from maskcore.errors import StorageError, UsageError
from maskcore.manifest import VERDICT_ORDER, read_jsonl
from maskcore.storage import LocalSource, Ref, S3Store, parse_s3_url

__all__ = ["FLAGGED", "REPORT_NAME", "RunResults", "group_of", "open_results"]

#: Where ``maskcore report`` puts its page by default: beside the manifest (a worker's ledger
#: counts it among its own files, so a results prefix inside the source never classifies it).
REPORT_NAME = "report.html"

#: Labels that flag a picture: somebody here is not wearing a mask properly.
FLAGGED = VERDICT_ORDER[:2]

#: A picture's group, in the order the report shows them.
GROUPS = ("flagged", "uncertain", "error", "clear")


def group_of(row: dict[str, Any], faces: list[dict[str, Any]]) -> str:
    """``flagged`` (someone unmasked or masked wrongly), ``uncertain`` (the picture or one of its
    faces below the threshold), ``error``, or ``clear``."""
    if row["status"] != "ok":
        return "error"
    if row["label"] in FLAGGED:
        return "flagged"
    if row["label"] == "uncertain" or any(f["label"] == "uncertain" for f in faces):
        return "uncertain"
    return "clear"


@dataclass
class RunResults:
    """The rows, faces and summary of one run, and where its source pictures are."""

    location: str  # the results folder or s3:// prefix, as given
    rows: list[dict[str, Any]]
    faces: dict[str, list[dict[str, Any]]]  # by picture source, in face order
    summary: dict[str, Any]
    input_root: Path | None = None  # where a batch run's relative sources lie
    _stores: dict[str, S3Store] = field(default_factory=dict, repr=False)

    @property
    def face_count(self) -> int:
        return sum(len(v) for v in self.faces.values())

    def faces_of(self, source: str) -> list[dict[str, Any]]:
        return self.faces.get(source, [])

    def read_source(self, source: str) -> bytes:
        """The bytes of the picture a row names.

        Raises:
            StorageError: it cannot be found or read (moved, deleted, no access).
        """
        if source.startswith("s3://"):
            loc = parse_s3_url(source)
            store = self._stores.get(loc.bucket)
            if store is None:
                store = self._stores[loc.bucket] = S3Store(f"s3://{loc.bucket}/")
            return store.get(loc.prefix)[0]
        if self.input_root is None:
            raise StorageError(f"cannot find {source}: the summary names no input folder")
        path = self.input_root if self.input_root.is_file() else self.input_root / source
        return LocalSource(path).read(Ref(source=source, key=str(path)))


def open_results(location: str, source_root: str | None = None) -> RunResults:
    """Read a run's results.

    Args:
        location: a results folder (the batch job's ``--out``) or ``s3://bucket/results/``.
        source_root: where the pictures of a local run are now, when not where the summary says.

    Raises:
        UsageError: the location holds no manifest (not a results folder).
        StorageError: it cannot be read.
    """
    if location.startswith("s3://"):
        store = S3Store(location if location.endswith("/") else location + "/")

        def open_(name: str) -> BinaryIO | None:
            try:
                return io.BytesIO(store.get(store.location.join(name))[0])
            except StorageError as exc:
                if exc.kind == "not_found":
                    return None
                raise
    else:
        folder = Path(location)

        def open_(name: str) -> BinaryIO | None:
            path = folder / name
            try:
                return path.open("rb")
            except FileNotFoundError:
                return None
            except OSError as exc:
                raise StorageError(f"cannot read {path}: {exc.strerror or exc}") from exc

    manifest = open_("manifest.jsonl")
    if manifest is None:
        stopped = not location.startswith("s3://") and (
            Path(location) / "manifest.jsonl.partial").exists()
        raise UsageError(f"{location} holds no manifest.jsonl: "
                         + ("only the partial rows of a run that was stopped or is still "
                            "running; run it again to the end" if stopped else
                            "give the folder a batch run wrote (its --out) or a worker's "
                            "results prefix"))
    with manifest:
        rows = list(read_jsonl(manifest))
    summary: dict[str, Any] = {}
    summary_file = open_("summary.json")
    if summary_file is not None:
        with summary_file:
            summary = json.loads(summary_file.read() or b"{}")
    faces: dict[str, list[dict[str, Any]]] = defaultdict(list)
    faces_file = open_("faces.jsonl")
    if faces_file is not None:
        with faces_file:
            for face in read_jsonl(faces_file):
                faces[face["source"]].append(face)
    root = source_root or summary.get("input_path")
    return RunResults(location=location, rows=rows, faces=dict(faces),
                      summary=summary, input_root=Path(root) if root else None)

