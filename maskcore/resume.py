"""Taking up a stopped batch run where it left off (``maskcore batch --resume``).

A run stopped by Ctrl-C or SIGTERM, or killed, leaves its rows in the results folder's
``*.partial`` files and its settings in ``run.json.partial``
(:class:`~maskcore.manifest.ManifestWriter`). A run that takes it up checks which rows still hold
(:func:`take_up`), classifies only the other pictures, and writes the rows kept among the new
ones (:class:`Merge`). A row holds when:

* the stopped run had the same input and settings (:func:`run_facts`: the models, the face
  stage and the threshold, all of which a row's label depends on; another input's rows would be
  merged into this one's, and its stopped run lost);
* it is whole: an ``ok`` picture row followed by every one of its face rows (a run killed
  mid-write leaves the last picture torn);
* its picture is still listed, and its bytes are those classified (read again and hashed: a
  file rewritten since, whatever its time stamps say, is classified again).

Error rows are not kept: a picture that could not be read may be readable now, and one that
cannot be decoded costs little to find again. So a resumed run ends with the rows a run from
scratch would write, in the same order (:class:`Merge`), but for their ``processed_at``.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import deque
from collections.abc import Callable, Generator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maskcore.errors import StorageError, UsageError
from maskcore.manifest import FACE_ROWS, RUN_FACTS, jsonl_records
from maskcore.storage import Ref, Source

__all__ = ["CHECK_THREADS", "COMPARED", "Merge", "TakenUp", "run_facts", "take_up"]

#: The settings a stopped run must share with the run that takes it up.
COMPARED = ("input", "model_id", "detector_id", "faces_mode", "threshold")

#: Threads reading pictures back to check them: an S3 read mostly waits on the network, so
#: reads one at a time could cost about what classifying the pictures again would; a local
#: read waits on the disk; hashing releases the GIL.
CHECK_THREADS = 16


def run_facts(*, input_id: str, model_id: str, detector_id: str, faces_mode: str,
              threshold: float, started_at: str) -> dict[str, Any]:
    """What ``run.json.partial`` records of a run (:data:`COMPARED`, and when it started).

    ``input_id`` names the input however it was typed: a local folder's resolved path, an S3
    prefix's URL.
    """
    return {"input": input_id, "model_id": model_id, "detector_id": detector_id,
            "faces_mode": faces_mode, "threshold": threshold, "started_at": started_at}


@dataclass
class TakenUp:
    """What was taken from a stopped run: the sources whose rows are kept, and how many of its
    picture rows are not (torn, errors, pictures gone or changed since)."""

    kept: set[str]
    dropped: int = 0


def take_up(stopped: dict[str, Path], facts: dict[str, Any], refs: list[Ref],
            source: Source) -> TakenUp:
    """Which of a stopped run's rows still hold (its files set aside, see
    :attr:`~maskcore.manifest.ManifestWriter.stopped`); :class:`Merge` then writes them.

    Args:
        stopped: the stopped run's files by name.
        facts: this run's settings (:func:`run_facts`).
        refs: what this run lists: rows of other sources are not kept (nor a second row of
            one source).
        source: reads each picture again to check its bytes.

    Raises:
        UsageError: the stopped run had other settings, or left no JSON Lines or settings to
            read back (exit code 2: run without ``--resume`` to start over).
    """
    _check_facts(stopped, facts)
    if "manifest.jsonl" not in stopped:
        raise UsageError("the stopped run in the results folder wrote no manifest.jsonl "
                         "(--format csv): its rows cannot be read back; run without --resume "
                         "to start over")
    by_source = {ref.source: ref for ref in refs}
    taken = TakenUp(kept=set())
    # Pictures being read again, at most a few hundred at a time.
    checking: deque[tuple[str, Future[bool]]] = deque()

    def settle(keep: int) -> None:
        while len(checking) > keep:
            name, unchanged = checking.popleft()
            if unchanged.result():
                taken.kept.add(name)
            else:
                taken.dropped += 1

    with ThreadPoolExecutor(CHECK_THREADS) as pool:
        for row, _faces in _whole_rows(stopped, taken):
            ref = by_source.pop(row.get("source", ""), None)  # popped: one row a picture
            if row.get("status") != "ok" or ref is None:
                taken.dropped += 1
                continue
            checking.append((ref.source,
                             pool.submit(_unchanged, ref, row.get("sha256", ""), source)))
            settle(CHECK_THREADS * 4)
        settle(0)
    return taken


class Merge:
    """Writes the rows taken up among the new ones, so that the rows stay sorted by source as
    a run from scratch writes them: each before the first new row whose source sorts after it.

    Use it as the run's ``emit``, then call :meth:`finish` (also when the run was stopped: the
    rows taken up are then all in its unfinished files).

    Args:
        stopped: the stopped run's files by name.
        taken: what :func:`take_up` kept.
        emit: writes a row (with its face rows under ``FACE_ROWS``).
    """

    def __init__(self, stopped: dict[str, Path], taken: TakenUp,
                 emit: Callable[[dict[str, Any]], None]) -> None:
        self._emit = emit
        # The stopped run's files are read a second time, as the new rows come, rather than
        # held from take_up: memory stays flat whatever the run's size.
        self._file = _whole_rows(stopped)
        self._left = set(taken.kept)  # still to write: one row a picture, as checked
        self._next = self._take()

    def _take(self) -> dict[str, Any] | None:
        """The next row to write, with its face rows, or None when there is none."""
        for row, faces in self._file:
            if row.get("source") in self._left:
                self._left.discard(row["source"])
                return {**row, FACE_ROWS: faces}
        return None

    def __call__(self, row: dict[str, Any]) -> None:
        while self._next is not None and self._next["source"] < row["source"]:
            self._emit(self._next)
            self._next = self._take()
        self._emit(row)

    def finish(self) -> None:
        """Write the rows taken up that no new row came after."""
        while self._next is not None:
            self._emit(self._next)
            self._next = self._take()

    def close(self) -> None:
        """Close the stopped run's files (read lazily, as the new rows come)."""
        self._file.close()


def _whole_rows(stopped: dict[str, Path], taken: TakenUp | None = None
                ) -> Generator[tuple[dict[str, Any], list[dict[str, Any]]], None, None]:
    """A stopped run's picture rows, each with its face rows, in order, up to a torn end (a run
    killed mid-write: a picture row without all its face rows; counted in ``taken``)."""
    faces_path = stopped.get("faces.jsonl")
    with stopped["manifest.jsonl"].open("rb") as pictures, \
            (faces_path.open("rb") if faces_path is not None else io.BytesIO()) as faces:
        face_rows = (record for record, _ in jsonl_records(faces, skip_bad=True))
        for row, _ in jsonl_records(pictures, skip_bad=True):
            n = (row.get("faces") or 0) if row.get("status") == "ok" else 0
            own = [next(face_rows, None) for _ in range(n)]
            if any(face is None or face.get("source") != row.get("source") for face in own):
                if taken is not None:
                    taken.dropped += 1
                return
            yield row, [face for face in own if face is not None]


def _check_facts(stopped: dict[str, Path], facts: dict[str, Any]) -> None:
    path = stopped.get(RUN_FACTS)
    if path is None:
        raise UsageError("the stopped run in the results folder left no run.json.partial (a "
                         "maskcore from before --resume wrote it): its settings are unknown; "
                         "run without --resume to start over")
    try:
        before = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the stopped run's settings ({path.name}): {exc}; run "
                         "without --resume to start over") from exc
    # A run stopped by a maskcore that did not record its input yet is not held to it.
    compared = [key for key in COMPARED if key in before or key != "input"]
    differ = [f"{key} {before.get(key)!r} then, {facts[key]!r} now" for key in compared
              if before.get(key) != facts[key]]
    if differ:
        raise UsageError("the stopped run in the results folder had other settings ("
                         + "; ".join(differ) + "): resume with the same input, model, --faces "
                         "and --threshold, or run without --resume to start over")


def _unchanged(ref: Ref, sha256: str, source: Source) -> bool:
    """Whether the picture's bytes are still those a row was made from (runs in a thread)."""
    try:
        data = source.read(ref)
    except StorageError:
        return False
    return hashlib.sha256(data).hexdigest() == sha256
