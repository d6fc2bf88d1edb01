"""The local pipeline: rows in input order whatever the placement, callbacks, stop, limits."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from maskcore.card import ModelCard
from maskcore.faces import FaceOptions, open_analyzer
from maskcore.ledger import etag_field
from maskcore.manifest import FACE_ROWS
from maskcore.pipeline import TAIL_SPLIT, classify, tasks
from maskcore.storage import LocalSource
from tests.conftest import copy_pictures
from tests.helpers import BAD_INPUTS, encode, gradient

VOLATILE = ("processed_at",)


@pytest.fixture
def folder(tmp_path: Path, face_pictures: list[Path]) -> Path:
    """Real faces, made pictures and broken files, interleaved by name."""
    root = tmp_path / "in"
    copy_pictures(face_pictures[:6], root)
    for i in range(40):  # more than one decode task's worth
        (root / f"m{i:02d}.png").write_bytes(encode(gradient(70, 50, seed=i), "PNG"))
    (root / "m20_broken.jpg").write_bytes(BAD_INPUTS["truncated_body"])
    (root / "not_a_picture.jpg").write_bytes(b"hello")
    return root


def run(root: Path, model: Path, faces: str = "auto", **kw):
    source = LocalSource(root)
    analyzer = open_analyzer(str(model), faces=FaceOptions(mode=faces))
    rows: list[dict] = []
    batches: list[list[dict]] = []
    times = classify(list(source.list()), source, analyzer, rows.append,
                     on_batch=batches.append, **kw)
    return rows, batches, times


def stable(rows: list[dict]) -> list[dict]:
    return [{k: (stable(v) if k == FACE_ROWS else v) for k, v in r.items() if k not in VOLATILE}
            for r in rows]


def test_rows_come_in_input_order_whatever_the_placement(folder, model_path):
    names = [r.source for r in LocalSource(folder).list()]
    threads, batches, times = run(folder, model_path, workers=0, batch_size=3)
    procs, _, _ = run(folder, model_path, workers=2, batch_size=4)
    assert [r["source"] for r in threads] == names
    assert stable(threads) == stable(procs)  # decode threads + central engines == processes
    assert [r["status"] for r in threads].count("error") == 2
    # every row reached on_batch once, after emit, in the same order
    assert [r for b in batches for r in b] == threads
    assert times.pictures == len(names)
    assert all(FACE_ROWS in r for r in threads if r["status"] == "ok")


def test_decode_processes_run_the_detector_the_rows_name(folder, model_path, tmp_path):
    """A classifier without an int8 variant runs float32 everywhere; the detector's variant is
    settled apart (int8 on a CPU), and decode processes load that one, not the classifier's:
    their face rows equal those of the driver's own detector."""
    own = tmp_path / "model"
    own.mkdir()
    for name in ("model.onnx", "model.json"):
        shutil.copyfile(model_path.with_name(name), own / name)
    card = ModelCard.read(own / "model.json")
    card.int8 = None
    card.write(own)
    threads, _, _ = run(folder, own, workers=0, batch_size=3)
    procs, _, _ = run(folder, own, workers=2, batch_size=4)
    assert stable(threads) == stable(procs)
    analyzer = open_analyzer(str(own))
    assert analyzer.engine.precision == "fp32" and analyzer.detector_precision == "int8"
    faces = [f for r in procs for f in r.get(FACE_ROWS, [])]
    assert faces and {f["detector_id"] for f in faces} == {analyzer.detector_id}


def test_stop_lets_the_tasks_in_flight_finish_and_starts_none(folder, model_path):
    names = [r.source for r in LocalSource(folder).list()]
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 1  # the first task goes out, then nothing more

    rows, _, _ = run(folder, model_path, faces="off", workers=0, batch_size=1, stop=stop)
    assert 0 < len(rows) < len(names)
    assert [r["source"] for r in rows] == names[: len(rows)]  # a prefix: nothing skipped


def test_row_extra_adds_fields_to_every_row(folder, model_path):
    rows, _, _ = run(folder, model_path, faces="off", workers=2, row_extra=etag_field)
    assert all("etag" in r for r in rows)


def test_batch_size_below_one_is_refused(folder, model_path):
    with pytest.raises(ValueError):
        run(folder, model_path, workers=0, batch_size=0)


@pytest.mark.parametrize(("total", "n", "processes"), [(691, 64, 2), (128, 64, 2), (5, 64, 2),
                                                       (0, 64, 2), (300, 16, 3), (70, 8, 1)])
def test_tasks_keep_the_order_and_cut_the_last_ones_small(total, n, processes):
    refs = list(range(total))
    got = list(tasks(iter(refs), n, processes))
    assert [r for task in got for r in task] == refs and all(got)
    sizes = [len(t) for t in got]
    full = next((k for k, size in enumerate(sizes) if size < n), len(sizes))
    assert sizes[:full] == [n] * full  # whole batches first, then only small tasks
    small = sizes[full:]
    assert sum(small) < processes * n and all(size <= -(-n // TAIL_SPLIT) for size in small)
    assert sum(small) >= min(total, (processes - 1) * n)  # enough to share among processes
