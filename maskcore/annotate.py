"""Annotated copies: each flagged picture, full size, with its faces boxed and labelled.

For people who forward a picture rather than a row. ``maskcore batch --annotate DIR`` calls
:func:`annotate_flagged` after its run, and ``maskcore report RESULTS --annotate DIR`` does the
same for any results (a worker's included).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path, PurePosixPath

from maskcore.draw import draw_faces, encode_jpeg
from maskcore.errors import MaskcoreError, StorageError
from maskcore.preprocess import decode
from maskcore.results import RunResults, group_of

__all__ = ["annotate_flagged", "annotated_name"]


def annotated_name(source: str) -> PurePosixPath:
    """Where a source's annotated copy goes, under the output folder: its own relative path
    (an ``s3://`` URL's bucket and key), with no way out of the folder, as a JPEG."""
    rest = source.removeprefix("s3://")
    parts = [p for p in PurePosixPath(rest).parts if p not in ("", ".", "..", "/")] or ["picture"]
    name = parts[-1]
    parts[-1] = name if name.lower().endswith((".jpg", ".jpeg")) else name + ".jpg"
    return PurePosixPath(*parts)


def annotate_flagged(results: RunResults, out_dir: Path,
                     log: Callable[[str], None] | None = None) -> list[Path]:
    """Write an annotated JPEG of every flagged picture into ``out_dir``; returns their paths.

    A picture that cannot be read again (moved, deleted since the run) is skipped with a line
    to ``log``; writing into ``out_dir`` failing raises.

    Raises:
        StorageError: ``out_dir`` cannot be written.
    """
    written = []
    for row in results.rows:
        faces = results.faces_of(row["source"])
        if group_of(row, faces) != "flagged":
            continue
        try:
            picture = decode(results.read_source(row["source"]))
        except MaskcoreError as exc:
            if log is not None:
                log(f"annotate: skipped {row['source']}: {exc}")
            continue
        path = out_dir / annotated_name(row["source"])
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(encode_jpeg(draw_faces(picture, faces), 90))
        except OSError as exc:
            raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from exc
        written.append(path)
    return written
