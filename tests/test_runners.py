"""The runner protocol: one way to run the stages, chosen once; the local runner's rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from maskcore.errors import UsageError
from maskcore.faces import FaceOptions
from maskcore.runners import LocalRunner, RayRunner, RunOptions, make_runner
from maskcore.storage import LocalSource
from maskcore.worker import Worker, WorkerConfig
from tests.conftest import copy_pictures


def test_the_local_runner_gives_the_pipelines_rows_and_callbacks(tmp_path: Path, face_pictures,
                                                                 model_path):
    root = tmp_path / "in"
    copy_pictures(face_pictures[:5], root)
    source = LocalSource(root)
    runner = make_runner("local", workers=0)
    analyzer = runner.open_analyzer(str(model_path), faces=FaceOptions(mode="off"))
    rows: list[dict] = []
    batches: list[list[dict]] = []
    report = runner.run(list(source.list()), source, analyzer, rows.append,
                        RunOptions(batch_size=2, on_batch=batches.append))
    assert [r["source"] for r in rows] == [r.source for r in source.list()]
    assert [r for b in batches for r in b] == rows
    assert report.times.pictures == 5 and report.cluster == {}


def test_make_runner_names_and_facts(model_path):
    with pytest.raises(UsageError, match="unknown runner"):
        make_runner("spark")
    local = make_runner("local", workers=0, device="cpu")
    assert isinstance(local, LocalRunner) and local.workers == 0
    analyzer = local.open_analyzer(str(model_path), faces=FaceOptions(mode="off"))
    assert local.facts(analyzer) == {"runner": "local", "device": "cpu",
                                     "provider": "CPUExecutionProvider", "workers": 0}
    ray = make_runner("ray", device="cuda")
    assert isinstance(ray, RayRunner)
    assert ray.facts(analyzer) == {"runner": "ray", "device": "cuda", "provider": "per Ray actor",
                                   "inference_actors": 1}


def test_a_watching_worker_refuses_a_cluster_runner():
    cfg = WorkerConfig(source="s3://b/in/", results="s3://b/out/", once=False)
    with pytest.raises(UsageError, match="--once"):
        Worker(cfg, analyzer=None, runner=RayRunner())  # type: ignore[arg-type]
