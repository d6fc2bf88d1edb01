"""Rows built in one place, and the writers: verdicts, uncertain, CSV safety, atomic files."""

from __future__ import annotations

import csv
import gc
import io
import json

import numpy as np
import pytest

from maskcore.errors import StorageError
from maskcore.faces import PictureResult
from maskcore.manifest import (
    FACE_ROWS,
    ManifestWriter,
    RowBuilder,
    csv_safe,
    is_transient,
    read_jsonl,
)
from maskcore.storage import Ref

CLASSES = ["with_mask", "without_mask", "mask_weared_incorrect"]


def builder(threshold: float = 0.5) -> RowBuilder:
    return RowBuilder(CLASSES, threshold=threshold, model_id="m", detector_id="d",
                      preprocess_version="v")


def result(probas: list[list[float]], closeup: int = -1) -> PictureResult:
    n = len(probas)
    return PictureResult(Ref("a.jpg", "/a.jpg"), "s", 100, 80,
                         boxes=np.tile(np.array([[1, 2, 30, 40]], np.float32), (n, 1)),
                         face_scores=np.full(n, 0.9, np.float32),
                         face_proba=np.array(probas, np.float32), faces_checked=True,
                         closeup_face=closeup)


def test_the_verdict_is_the_most_serious_confident_face():
    row = builder()(
        [result([[0.9, 0.05, 0.05], [0.1, 0.1, 0.8], [0.4, 0.35, 0.25]])])[0]
    assert [f["label"] for f in row[FACE_ROWS]] == ["with_mask", "mask_weared_incorrect",
                                                    "uncertain"]
    assert row["label"] == "mask_weared_incorrect" and row["faces"] == 3
    assert row["face_counts"] == {"mask_weared_incorrect": 1, "uncertain": 1, "with_mask": 1}
    assert row["probabilities"]["mask_weared_incorrect"] == 0.8
    # a close-up's main face alone decides
    row = builder()([result([[0.95, 0.05, 0.0], [0.1, 0.9, 0.0]], closeup=0)])[0]
    assert row["label"] == "with_mask" and row["faces"] == 2


def test_no_face_and_error_rows():
    whole = PictureResult(Ref("b.jpg", "/b.jpg"), "s", 10, 10, faces_checked=True,
                          whole=np.array([0.2, 0.7, 0.1], np.float32))
    row = builder()([whole])[0]
    assert (row["faces"], row["label"], row[FACE_ROWS]) == (0, "without_mask", [])
    err = builder()([PictureResult(Ref("c.jpg", "/c.jpg"), error="cannot read: x",
                                   error_kind="not_found")])[0]
    assert err["status"] == "error" and err["error_kind"] == "not_found"
    assert not is_transient(err) and is_transient({**err, "error_kind": "read"})


def test_writer_splits_faces_and_keeps_csv_safe(tmp_path):
    rows = builder()([result([[0.9, 0.05, 0.05]])])
    rows[0]["source"] = "=cmd.jpg"
    out = tmp_path / "out"
    w = ManifestWriter(out, CLASSES)
    for r in rows:
        w.write(r)
    assert not (out / "manifest.jsonl").exists()  # nothing looks finished before close
    w.close({"total": 1})
    pic = json.loads((out / "manifest.jsonl").read_text())
    assert pic["source"] == "=cmd.jpg" and FACE_ROWS not in pic
    assert len((out / "faces.jsonl").read_text().split("\n")) == 2
    rec = next(csv.DictReader(io.StringIO((out / "manifest.csv").read_text(), newline="")))
    assert rec["source"] == "'=cmd.jpg" and rec["n_with_mask"] == "1" and rec["faces"] == "1"
    assert csv_safe(-1.5) == -1.5 and csv_safe("@x") == "'@x" and csv_safe("x=1") == "x=1"


def test_rows_read_back_as_written(tmp_path):
    """What the writer wrote comes back field for field, names from undecodable bytes included;
    records end at "\\n" only, and the rows share their keys and labels (the memory of a
    large run read back for its report)."""
    rows = builder()([result([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1]]) for _ in range(2)])
    for r in (rows[0], *rows[0][FACE_ROWS]):  # a file name's byte 0xE9, a U+2028
        r["source"] = "caf\udce9\u2028line.jpg"
    out = tmp_path / "out"
    w = ManifestWriter(out, CLASSES)
    for r in rows:
        w.write(r)
    w.close({"total": 2})
    with (out / "manifest.jsonl").open("rb") as fh:
        back = list(read_jsonl(fh))
    assert back == [{k: v for k, v in r.items() if k != FACE_ROWS} for r in rows]
    with (out / "faces.jsonl").open("rb") as fh:
        faces = list(read_jsonl(fh))
    assert [f["source"] for f in faces] == [rows[0]["source"]] * 2 + [rows[1]["source"]] * 2
    assert faces[0]["label"] is faces[2]["label"] and back[0]["model_id"] is faces[3]["model_id"]
    assert [k for k in faces[0]][0] is [k for k in faces[3]][0]
    assert back[1]["source"] is faces[2]["source"]


def test_lines_that_are_not_records():
    lines = [b'{"source": "a"}\n', b"\n", b"  \r\n", b"not json\n", b"[1, 2]\n",
             b'{"source": "b", "face_rows": [{"label": "x"}]}']
    assert [r["source"] for r in read_jsonl(lines, skip_bad=True)] == ["a", "b"]
    with pytest.raises(ValueError):
        list(read_jsonl(lines))
    with pytest.raises(ValueError, match="not an object"):
        list(read_jsonl([b"[1, 2]"]))


def test_one_writer_at_a_time_in_a_folder(tmp_path):
    """A second run into a folder being written is refused before it touches a file there, and
    the folder is free again once the first writer is closed, stopped, failed or dropped."""
    out = tmp_path / "out"
    rows = builder()([result([[0.9, 0.05, 0.05]]) for _ in range(300)])  # over a buffer's worth
    first = ManifestWriter(out, CLASSES)
    for r in rows:
        first.write(r)
    with pytest.raises(StorageError, match="another run is writing there"):
        ManifestWriter(out, CLASSES)
    first.close({"total": 300})  # the refused writer truncated nothing of the first one's
    with (out / "manifest.jsonl").open("rb") as fh:
        assert len(list(read_jsonl(fh))) == 300
    second = ManifestWriter(out, CLASSES)
    second.keep_unfinished()
    third = ManifestWriter(out, CLASSES)
    del third  # a writer dropped unclosed
    gc.collect()
    failed = ManifestWriter(out, CLASSES)  # a run that raised: the batch job discards it
    failed.write(rows[0])
    failed.discard()
    assert not list(out.glob("*.partial")) and (out / "summary.json").exists()
    ManifestWriter(out, CLASSES).close({"total": 0})
