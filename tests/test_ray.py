"""The Ray Data runner, with real Ray (local, 2 CPUs) against the local S3 server over HTTP."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from maskcore.batch import run_batch
from maskcore.cli import main
from maskcore.runners import make_runner
from maskcore.stopping import StopRequest
from tests.conftest import ROOT
from tests.helpers import encode, gradient
from tests.test_worker import BUCKET, RES, SRC, key_of, manifest, part_rows, seed

pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'maskcore[ray]')")


@pytest.fixture
def ray_env(monkeypatch):
    """Ray's files in a short private folder (its socket paths must stay short), no dashboard."""
    tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", tmp)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    yield tmp
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def bucket(s3_client):
    s3_client.create_bucket(Bucket=BUCKET)
    return s3_client


def _rows(out: Path, name: str = "manifest.jsonl") -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "processed_at"}
            for line in (out / name).read_text().split("\n") if line]


@pytest.mark.slow
def test_ray_rows_equal_local_rows_on_s3(bucket, ray_env, tmp_path, model_path):
    expected = seed(bucket, 189)  # 200 objects: 10 bad ones and a non-picture among them
    outs = {}
    for runner in ("local", "ray"):
        outs[runner] = tmp_path / runner
        r = CliRunner().invoke(main, ["batch", SRC, "--out", str(outs[runner]), "--model",
                                      str(model_path), "--runner", runner, "--workers", "1",
                                      "--batch-size", "32", "--no-progress"])
        assert r.exit_code == 0, r.output
    local, ray_rows = _rows(outs["local"]), _rows(outs["ray"])
    assert len(ray_rows) == 200
    assert ray_rows == local
    # face by face: the same boxes, labels and scores
    local_faces, ray_faces = _rows(outs["local"], "faces.jsonl"), _rows(outs["ray"], "faces.jsonl")
    assert ray_faces == local_faces
    assert len(ray_faces) == sum(r["faces"] or 0 for r in ray_rows) > 0
    assert {key_of(r): r["status"] for r in ray_rows} == expected
    summary = json.loads((outs["ray"] / "summary.json").read_text())
    assert summary["runner"] == "ray" and summary["ray_cluster"]["CPU"] >= 2
    # each runner says how it was sized, and not the other's size
    assert summary["inference_actors"] == 1 and "workers" not in summary
    local_summary = json.loads((outs["local"] / "summary.json").read_text())
    assert local_summary["workers"] == 1 and "inference_actors" not in local_summary
    assert (outs["ray"] / "manifest.csv").read_text().count("\n") == 201


@pytest.mark.slow
def test_worker_once_on_ray_killed_and_rerun(bucket, ray_env, model_path):
    # Enough objects that the pass is still running when the second part appears (with 120 it
    # sometimes finished in the moment between the check and the kill).
    n = 320
    expected = seed(bucket, n, bad=False)
    cmd = [sys.executable, "-m", "maskcore", "worker", "--source", SRC, "--results", RES,
           "--once", "--runner", "ray", "--batch-size", "8", "--model", str(model_path)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if len(bucket.list_objects_v2(Bucket=BUCKET, Prefix="results/parts/")
               .get("Contents", [])) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the worker finished before it could be killed mid-run"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes it started
    proc.wait(10)
    done_before = len(part_rows(bucket))
    assert 0 < done_before < n
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    keys = [key_of(row) for row in part_rows(bucket)]
    assert len(keys) == len(set(keys)) == n
    assert {key_of(row): row["status"] for row in manifest(bucket)} == expected


def test_ray_sizes_that_would_hang_are_refused(ray_env, tmp_path, model_path):
    pic = ROOT / "examples" / "without_mask_0.jpg"
    for extra, needle in ((["--gpus-per-actor", "1"], "GPU"),
                          (["--inference-actors", "2"], "leave none to decode")):
        r = CliRunner().invoke(main, ["batch", str(pic), "--out", str(tmp_path / "o"), "--model",
                                      str(model_path), "--runner", "ray", "--no-progress", *extra])
        assert r.exit_code == 2, r.output
        assert needle in r.output and "Traceback" not in r.output


def test_runner_ray_without_ray_installed_exits_2(tmp_path, model_path):
    """Hide Ray from the import system: the command must say how to install it."""
    code = (
        "import sys\n"
        "class NoRay:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'ray' or name.startswith('ray.'):\n"
        "            raise ImportError('no ray here')\n"
        "sys.meta_path.insert(0, NoRay())\n"
        "from maskcore.cli import main\n"
        "main()\n"
    )
    r = subprocess.run([sys.executable, "-c", code, "batch", "examples/", "--out",
                        str(tmp_path / "o"), "--runner", "ray", "--model", str(model_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "maskcore[ray]" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-c", code, "worker", "--source", SRC, "--results", RES,
                        "--once", "--runner", "ray", "--model", str(model_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "maskcore[ray]" in r.stderr


@pytest.mark.slow
def test_sigterm_during_a_ray_run_stops_it_after_the_batch_in_hand(ray_env, tmp_path,
                                                                   model_path):
    """ray.init installs its own SIGTERM handler (it exits at once); the job's must win, so
    that `docker stop` lets a Ray run write what it did, as a local run does."""
    root = tmp_path / "in"
    root.mkdir()
    for i in range(12):
        (root / f"{i:02d}.png").write_bytes(encode(gradient(64, 48, seed=i), "PNG"))
    stop = StopRequest(lambda name: None)
    signalled: list[bool] = []

    def poll() -> bool:  # the first poll comes after the first batch, with Ray running
        if not signalled:
            signalled.append(True)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)  # the handler runs in this thread between bytecodes
        return stop.requested()

    with stop:
        summary = run_batch(str(root), tmp_path / "out", model=str(model_path), batch_size=2,
                            runner=make_runner("ray"), stop=poll, show_progress=False)
    assert summary["stopped"] and summary["listed"] == 12
    assert 0 < summary["total"] < 12
    assert stop.exit_code == 128 + signal.SIGTERM
