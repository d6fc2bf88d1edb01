"""Classify pictures from Python: the same models, decoding and rows as the jobs, one call.

    import maskcore

    models = maskcore.open_analyzer(None)             # the bundled models, CUDA when usable
    result = maskcore.classify_picture("examples/street/street_0.jpg", models)
    print(result.label, result.score)                 # the picture's verdict
    for face in result.faces:                         # one dict per face, as in faces.jsonl
        print(face["label"], face["score"], face["x0"], face["y0"], face["x1"], face["y1"])

For many pictures, run the batch job (:func:`maskcore.batch.run_batch`): it decodes in parallel
and batches the engines.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maskcore.decode import decode_refs
from maskcore.faces import Analyzer
from maskcore.manifest import FACE_ROWS
from maskcore.pipeline import row_builder
from maskcore.settings import DEFAULTS
from maskcore.storage import LocalSource, Ref

__all__ = ["Classified", "classify_picture"]


@dataclass(frozen=True)
class Classified:
    """One picture's result: its row (the fields of ``manifest.jsonl``) and its faces' rows."""

    row: dict[str, Any]
    faces: list[dict[str, Any]]

    @property
    def label(self) -> str:
        """The verdict: the most serious face's label (``without_mask`` first), the whole
        picture's when no face was found, ``uncertain`` below the threshold, "" on error."""
        return str(self.row.get("label") or "")

    @property
    def score(self) -> float | None:
        return self.row.get("score")

    @property
    def error(self) -> str:
        """Why the picture could not be classified ("" when it was)."""
        return str(self.row.get("error") or "")


class _Bytes:
    """A source holding one picture's bytes in memory."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def list(self) -> Iterator[Ref]:
        return iter([])

    def read(self, ref: Ref) -> bytes:
        return self.data

    def describe(self) -> str:
        return "bytes"


def classify_picture(picture: str | Path | bytes, analyzer: Analyzer, *,
                     name: str | None = None,
                     threshold: float = DEFAULTS.threshold) -> Classified:
    """Find the faces in one picture and classify each, as the batch job would.

    Args:
        picture: a file's path, or the picture's bytes (any format the jobs read).
        analyzer: the models, from :func:`maskcore.open_analyzer` (load once, call often).
        name: the ``source`` written in the rows [default: the file's name, or "picture"].
        threshold: a top score below it labels a face or the picture ``uncertain``.

    Returns:
        The rows; a picture that cannot be read or decoded gives an error row (see
        :attr:`Classified.error`).

    Raises:
        StorageError: ``picture`` is a path to nothing.
    """
    if isinstance(picture, bytes):
        source: Any = _Bytes(picture)
        ref = Ref(source=name or "picture", key="")
    else:
        path = Path(picture)
        source = LocalSource(path)
        ref = Ref(source=name or path.name, key=str(path.absolute()))
    items, _ = decode_refs(source, [ref], analyzer.engine.spec, analyzer.detector_spec)
    row = row_builder(analyzer, threshold)(analyzer.infer(items))[0]
    faces = row.pop(FACE_ROWS)
    return Classified(row=row, faces=faces)
