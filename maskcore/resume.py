"""Taking up a stopped batch run where it left off (``maskcore batch --resume``).

A run stopped by Ctrl-C or SIGTERM, or killed, leaves its rows in the results folder's
``*.partial`` files and its settings in ``run.json.partial``
(:class:`~maskcore.manifest.ManifestWriter`). A run that takes it up copies the rows that still
hold into its own files and classifies only the other pictures. A row holds when:

* the stopped run had the same settings (:func:`run_facts`: the models, the face stage and the
  threshold, all of which a row's label depends on);
* it is whole: an ``ok`` picture row followed by every one of its face rows (a run killed
  mid-write leaves the last picture torn);
* its picture is still listed, and its bytes are those classified (read again and hashed: a
  file rewritten since, whatever its time stamps say, is classified again).

Error rows are not kept: a picture that could not be read may be readable now, and one that
cannot be decoded costs little to find again. So a resumed run ends with the rows a run from
scratch would write, but for their ``processed_at`` and their order: the rows taken up come
first, in the stopped run's order, then the others in the listing's.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maskcore.errors import StorageError, UsageError
from maskcore.manifest import FACE_ROWS, RUN_FACTS, jsonl_records
from maskcore.storage import Ref, Source

__all__ = ["CHECK_THREADS", "COMPARED", "TakenUp", "run_facts", "take_up"]

#: The settings a stopped run must share with the run that takes it up.
COMPARED = ("model_id", "detector_id", "faces_mode", "threshold")

#: Threads reading pictures back to check them: an S3 read mostly waits on the network, so
#: reads one at a time could cost about what classifying the pictures again would; a local
#: read waits on the disk; hashing releases the GIL.
CHECK_THREADS = 16


def run_facts(*, model_id: str, detector_id: str, faces_mode: str, threshold: float,
              started_at: str) -> dict[str, Any]:
    """What ``run.json.partial`` records of a run (:data:`COMPARED`, and when it started)."""
    return {"model_id": model_id, "detector_id": detector_id, "faces_mode": faces_mode,
            "threshold": threshold, "started_at": started_at}


@dataclass
class TakenUp:
    """What was taken from a stopped run: the sources whose rows were kept, and how many of
    its picture rows were not (torn, errors, pictures gone or changed since)."""

    kept: set[str]
    dropped: int = 0


def take_up(stopped: dict[str, Path], facts: dict[str, Any], refs: list[Ref], source: Source,
            emit: Callable[[dict[str, Any]], None]) -> TakenUp:
    """Hand ``emit`` the rows to keep from a stopped run's set-aside files, in their order:
    picture rows, each carrying its face rows under :data:`~maskcore.manifest.FACE_ROWS`.

    Args:
        stopped: the stopped run's files by name (:attr:`ManifestWriter.stopped`).
        facts: this run's settings (:func:`run_facts`).
        refs: what this run lists: rows of other sources are not kept (nor a second row of
            one source).
        source: reads a picture again to check its bytes.
        emit: called with each row kept.

    Raises:
        UsageError: the stopped run had other settings, or left no JSON Lines or settings to
            read back (exit code 2: run without ``--resume`` to start over).
    """
    _check_facts(stopped, facts)
    manifest = stopped.get("manifest.jsonl")
    if manifest is None:
        raise UsageError("the stopped run in the results folder wrote no manifest.jsonl "
                         "(--format csv): its rows cannot be read back; run without --resume "
                         "to start over")
    by_source = {ref.source: ref for ref in refs}
    faces_path = stopped.get("faces.jsonl")
    taken = TakenUp(kept=set())
    # Rows whose picture is being read again, in order; emitted once their check is back.
    checking: deque[tuple[dict[str, Any], Ref, Future[bool]]] = deque()

    def settle(keep: int) -> None:
        while len(checking) > keep:
            row, ref, unchanged = checking.popleft()
            if unchanged.result():
                taken.kept.add(ref.source)
                emit(row)
            else:
                taken.dropped += 1

    with manifest.open("rb") as pictures, \
            (faces_path.open("rb") if faces_path is not None else io.BytesIO()) as faces, \
            ThreadPoolExecutor(CHECK_THREADS) as pool:
        face_rows = (record for record, _ in jsonl_records(faces, skip_bad=True))
        for row, _ in jsonl_records(pictures, skip_bad=True):
            ok = row.get("status") == "ok"
            own = [next(face_rows, None) for _ in range((row.get("faces") or 0) if ok else 0)]
            if any(face is None or face.get("source") != row.get("source") for face in own):
                # A torn end (a run killed mid-write): nothing after it can be paired.
                taken.dropped += 1
                break
            ref = by_source.pop(row.get("source", ""), None)  # popped: one row a picture
            if not ok or ref is None:
                taken.dropped += 1
                continue
            checking.append(({**row, FACE_ROWS: own}, ref,
                             pool.submit(_unchanged, ref, row.get("sha256", ""), source)))
            settle(CHECK_THREADS * 4)
        settle(0)
    return taken


def _check_facts(stopped: dict[str, Path], facts: dict[str, Any]) -> None:
    path = stopped.get(RUN_FACTS)
    if path is None:
        raise UsageError("the stopped run in the results folder left no run.json.partial (an "
                         "older maskcore wrote it): its settings are unknown; run without "
                         "--resume to start over")
    try:
        before = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the stopped run's settings ({path.name}): {exc}; run "
                         "without --resume to start over") from exc
    differ = [f"{key} {before.get(key)!r} then, {facts[key]!r} now" for key in COMPARED
              if before.get(key) != facts[key]]
    if differ:
        raise UsageError("the stopped run in the results folder had other settings ("
                         + "; ".join(differ) + "): resume with the same model, --faces and "
                         "--threshold, or run without --resume to start over")


def _unchanged(ref: Ref, sha256: str, source: Source) -> bool:
    """Whether the picture's bytes are still those a row was made from (runs in a thread)."""
    try:
        data = source.read(ref)
    except StorageError:
        return False
    return hashlib.sha256(data).hexdigest() == sha256
