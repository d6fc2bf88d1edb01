"""The runner protocol and the local pipeline behind it: order, callbacks, stop, placement."""

from __future__ import annotations

from pathlib import Path

import pytest

from maskcore.errors import UsageError
from maskcore.faces import FaceOptions
from maskcore.ledger import etag_field
from maskcore.manifest import FACE_ROWS
from maskcore.runners import LocalRunner, RayRunner, RunOptions, make_runner
from maskcore.storage import LocalSource
from maskcore.worker import Worker, WorkerConfig
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


def run(runner: LocalRunner, root: Path, model: Path, faces: str = "auto", **kw):
    source = LocalSource(root)
    analyzer = runner.open_analyzer(str(model), faces=FaceOptions(mode=faces))
    rows: list[dict] = []
    batches: list[list[dict]] = []
    report = runner.run(list(source.list()), source, analyzer, rows.append,
                        RunOptions(on_batch=batches.append, **kw))
    return rows, batches, report


def stable(rows: list[dict]) -> list[dict]:
    return [{k: (stable(v) if k == FACE_ROWS else v) for k, v in r.items() if k not in VOLATILE}
            for r in rows]


def test_rows_come_in_input_order_whatever_the_placement(folder, model_path):
    names = [r.source for r in LocalSource(folder).list()]
    threads, batches, report = run(LocalRunner(workers=0), folder, model_path, batch_size=3)
    procs, _, _ = run(LocalRunner(workers=2), folder, model_path, batch_size=4)
    assert [r["source"] for r in threads] == names
    assert stable(threads) == stable(procs)  # decode threads + central engines == processes
    assert [r["status"] for r in threads].count("error") == 2
    # every row reached on_batch once, after emit, in the same order
    assert [r for b in batches for r in b] == threads
    assert report.times.pictures == len(names)
    assert all(FACE_ROWS in r for r in threads if r["status"] == "ok")


def test_stop_lets_the_tasks_in_flight_finish_and_starts_none(folder, model_path):
    names = [r.source for r in LocalSource(folder).list()]
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 1  # the first task goes out, then nothing more

    rows, _, _ = run(LocalRunner(workers=0), folder, model_path, faces="off", batch_size=1,
                     stop=stop)
    assert 0 < len(rows) < len(names)
    assert [r["source"] for r in rows] == names[: len(rows)]  # a prefix: nothing skipped


def test_row_extra_adds_fields_to_every_row(folder, model_path):
    rows, _, _ = run(LocalRunner(workers=2), folder, model_path, faces="off",
                     row_extra=etag_field)
    assert all("etag" in r for r in rows)


def test_batch_size_below_one_is_refused(folder, model_path):
    with pytest.raises(ValueError):
        run(LocalRunner(workers=0), folder, model_path, batch_size=0)


def test_make_runner_names_and_facts(model_path):
    with pytest.raises(UsageError, match="unknown runner"):
        make_runner("spark")
    local = make_runner("local", workers=0, device="cpu")
    assert isinstance(local, LocalRunner) and local.workers == 0
    analyzer = local.open_analyzer(str(model_path), faces=FaceOptions(mode="off"))
    assert local.facts(analyzer) == {"runner": "local", "device": "cpu",
                                     "provider": "CPUExecutionProvider"}
    ray = make_runner("ray", device="cuda")
    assert isinstance(ray, RayRunner)
    assert ray.facts(analyzer) == {"runner": "ray", "device": "cuda", "provider": "per Ray actor"}


def test_a_watching_worker_refuses_a_cluster_runner():
    cfg = WorkerConfig(source="s3://b/in/", results="s3://b/out/", once=False)
    with pytest.raises(UsageError, match="--once"):
        Worker(cfg, analyzer=None, runner=RayRunner())  # type: ignore[arg-type]
