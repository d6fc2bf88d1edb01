"""The S3 worker against moto's server over real HTTP: once, watch, crashes, faults, shards."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from maskcore.cli import main
from tests.conftest import ROOT
from tests.faulty_proxy import FaultyProxy
from tests.helpers import BAD_INPUTS, encode, gradient

BUCKET = "drop"
SRC = f"s3://{BUCKET}/incoming/"
RES = f"s3://{BUCKET}/results/"


def seed(client, n_good: int, *, bad: bool = True, start: int = 0) -> dict[str, str]:
    """Upload pictures (and, with ``bad``, 10 bad ones and a non-picture); returns key -> status."""
    expected = {}
    faces = sorted((ROOT / "examples").glob("*.jpg"))
    for i in range(start, start + n_good):
        key = f"incoming/{i:04d}.jpg"
        data = faces[i % len(faces)].read_bytes() if i % 3 == 0 else \
            encode(gradient(40 + i % 17, 40, seed=i), "JPEG")
        client.put_object(Bucket=BUCKET, Key=key, Body=data)
        expected[key] = "ok"
    if bad:
        names = sorted(BAD_INPUTS)
        for j in range(10):
            key = f"incoming/bad/{j:02d}.jpg"
            client.put_object(Bucket=BUCKET, Key=key, Body=BAD_INPUTS[names[j % len(names)]] or b"")
            expected[key] = "error"
        client.put_object(Bucket=BUCKET, Key="incoming/notes.txt", Body=b"a note, not a picture")
        expected["incoming/notes.txt"] = "error"
    return expected


def manifest(client) -> list[dict]:
    body = client.get_object(Bucket=BUCKET, Key="results/manifest.jsonl")["Body"].read()
    return [json.loads(line) for line in body.decode().split("\n") if line]


def part_rows(client) -> list[dict]:
    rows = []
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET,
                                                             Prefix="results/parts/")
    for page in pages:
        for obj in page.get("Contents", []):
            body = client.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read()
            rows += [json.loads(x) for x in body.decode().split("\n") if x]
    return rows


def run_once(model_path: Path, *extra: str) -> str:
    r = CliRunner().invoke(main, ["worker", "--source", SRC, "--results", RES, "--once",
                                  "--model", str(model_path), "--workers", "1", *extra])
    assert r.exit_code == 0, r.output
    return r.output


def key_of(row: dict) -> str:
    return row["source"].split("/", 3)[3]


def start_worker(model_path: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "maskcore", "worker", "--source", SRC, "--results", RES,
         "--model", str(model_path), "--workers", "1", *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def bucket(s3_client):
    s3_client.create_bucket(Bucket=BUCKET)
    return s3_client


def test_once_classifies_everything_exactly_once(bucket, model_path):
    expected = seed(bucket, 189)
    assert len(expected) == 200
    out = run_once(model_path, "--batch-size", "32")
    assert "200 objects" in out
    rows = manifest(bucket)
    assert {key_of(r): r["status"] for r in rows} == expected
    assert all(r["etag"] for r in rows)
    assert all(r["model_id"] == rows[0]["model_id"] for r in rows)
    csv_rows = list(csv.DictReader(io.StringIO(
        bucket.get_object(Bucket=BUCKET, Key="results/manifest.csv")["Body"].read().decode())))
    assert [c["source"] for c in csv_rows] == [r["source"] for r in rows]
    assert len(part_rows(bucket)) == 200
    # a second pass finds nothing to do
    out = run_once(model_path)
    assert "this run classified 0" in out
    assert len(part_rows(bucket)) == 200
    summary = json.loads(bucket.get_object(Bucket=BUCKET, Key="results/summary.json")["Body"]
                         .read())
    assert summary["total"] == 200 and summary["errors"] == 11


def test_overwrite_reprocess_and_shards(bucket, model_path):
    seed(bucket, 30, bad=False)
    run_once(model_path, "--shard", "0/2")
    run_once(model_path, "--shard", "1/2")
    rows = part_rows(bucket)
    assert sorted(key_of(r) for r in rows) == sorted(f"incoming/{i:04d}.jpg" for i in range(30))
    # overwrite one object with new content: only it is classified again
    bucket.put_object(Bucket=BUCKET, Key="incoming/0001.jpg",
                      Body=encode(gradient(99, 77, seed=999), "PNG"))
    out = run_once(model_path)
    assert "this run classified 1" in out
    rows = manifest(bucket)
    assert len(rows) == 30
    new = next(r for r in rows if key_of(r) == "incoming/0001.jpg")
    assert (new["width"], new["height"]) == (99, 77)
    # --reprocess redoes all, and the manifest still has one row per object
    out = run_once(model_path, "--reprocess")
    assert "this run classified 30" in out
    assert len(manifest(bucket)) == 30
    assert len(part_rows(bucket)) == 30 + 1 + 30


def test_results_under_the_source_prefix_are_not_classified(bucket, model_path):
    seed(bucket, 5, bad=False)
    r = CliRunner().invoke(main, ["worker", "--source", SRC, "--results", f"{SRC}results/",
                                  "--once", "--model", str(model_path), "--workers", "0"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["worker", "--source", SRC, "--results", f"{SRC}results/",
                                  "--once", "--model", str(model_path), "--workers", "0"])
    assert "this run classified 0" in r.output


@pytest.mark.slow
def test_kill_9_and_restart_loses_and_repeats_nothing(bucket, model_path):
    expected = seed(bucket, 189)
    for parts_before_kill in (1, 4, 9):
        proc = start_worker(model_path, "--once", "--batch-size", "8")
        wait_for(lambda n=parts_before_kill, p=proc: len(_parts(bucket)) >= n or p.poll() is not None,
                 120, f"{parts_before_kill} parts")
        assert proc.poll() is None, "the worker finished before it could be killed mid-run"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    proc = start_worker(model_path, "--once", "--batch-size", "8")
    assert proc.wait(300) == 0, proc.stderr.read()[-2000:]
    rows = part_rows(bucket)
    keys = [key_of(r) for r in rows]
    assert len(keys) == len(set(keys)) == 200  # nothing lost, nothing recorded twice
    assert {key_of(r): r["status"] for r in manifest(bucket)} == expected
    # and exactly one row per face: the consolidated faces match the pictures' counts
    faces = [json.loads(x) for x in bucket.get_object(Bucket=BUCKET, Key="results/faces.jsonl")
             ["Body"].read().decode().split("\n") if x]
    ids = [(f["source"], f["face"]) for f in faces]
    assert len(ids) == len(set(ids)) == sum(r["faces"] or 0 for r in manifest(bucket)) > 0


def _parts(client) -> list[str]:
    resp = client.list_objects_v2(Bucket=BUCKET, Prefix="results/parts/")
    return [o["Key"] for o in resp.get("Contents", [])]


@pytest.mark.slow
def test_watch_mode_picks_up_new_objects_and_stops_on_sigterm(bucket, model_path):
    seed(bucket, 10, bad=False)
    proc = start_worker(model_path, "--poll-interval", "1", "--max-wait", "0.5",
                        "--consolidate-every", "1")
    try:
        wait_for(lambda: len(part_rows(bucket)) == 10, 60, "the first 10 rows")
        t0 = time.monotonic()
        seed(bucket, 5, bad=False, start=100)
        wait_for(lambda: len(part_rows(bucket)) == 15, 1 + 0.5 + 10, "the 5 new rows")
        latency = time.monotonic() - t0
        wait_for(lambda: _manifest_len(bucket) == 15, 15, "the consolidated manifest")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    assert code == 0, proc.stderr.read()[-2000:]
    assert latency < 11.5
    log = proc.stderr.read()
    assert '"event": "stopping"' in log and '"event": "batch"' in log


@pytest.mark.slow
def test_watch_mode_waits_before_trying_an_unreadable_object_again(bucket, model_path,
                                                                    monkeypatch, s3):
    """An object whose GET always fails gets one error row, not one at every poll, while the
    loop goes on classifying what lands; a restarted worker keeps to the same wait."""
    seed(bucket, 4, bad=False)

    def rows_of(key: str) -> list[dict]:
        return [r for r in part_rows(bucket) if key_of(r) == key]

    with FaultyProxy(s3, slowdown_every=0, reset_every=0, always_fail="0001.jpg") as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        monkeypatch.setenv("MASKCORE_S3_ATTEMPTS", "1")
        for new in (100, 200):  # a first worker, then one started after it
            proc = start_worker(model_path, "--poll-interval", "0.2", "--max-wait", "0")
            try:
                wait_for(lambda: rows_of("incoming/0001.jpg"), 60, "the failed read's row")
                seed(bucket, 1, bad=False, start=new)
                wait_for(lambda n=new: rows_of(f"incoming/{n:04d}.jpg"), 60, "a new object's row")
                time.sleep(2)  # some ten polls more
            finally:
                proc.send_signal(signal.SIGTERM)
                code = proc.wait(30)
            log = proc.stderr.read()
            assert code == 0, log[-2000:]
            assert '"event": "retry_later", "objects": 1' in log
    failed = rows_of("incoming/0001.jpg")
    assert len(failed) == 1 and failed[0]["error"].startswith("cannot read"), failed
    assert failed[0]["error_kind"] == "read"
    ok = sorted(key_of(r) for r in part_rows(bucket) if r["status"] == "ok")
    assert ok == [f"incoming/{i:04d}.jpg" for i in (0, 2, 3, 100, 200)]  # each once


def _manifest_len(client) -> int:
    try:
        return len(manifest(client))
    except client.exceptions.NoSuchKey:
        return 0


@pytest.mark.slow
def test_sigterm_mid_run_finishes_the_batch_in_hand(bucket, model_path):
    seed(bucket, 300, bad=False)
    proc = start_worker(model_path, "--once", "--batch-size", "8")
    wait_for(lambda: len(_parts(bucket)) >= 2, 120, "two parts")
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(30)
    assert code == 0, proc.stderr.read()[-2000:]
    assert time.monotonic() - t0 < 30
    rows = part_rows(bucket)
    assert 16 <= len(rows) < 300
    assert len({key_of(r) for r in rows}) == len(rows)
    assert len(manifest(bucket)) == len(rows)  # consolidated on the way out


@pytest.mark.slow
def test_s3_faults_are_retried_and_every_object_ends_with_one_row(bucket, model_path,
                                                                   monkeypatch, s3):
    expected = seed(bucket, 60)
    with FaultyProxy(s3, slowdown_every=5, reset_every=7) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        monkeypatch.setenv("AWS_RETRY_MODE", "standard")
        import maskcore.storage as storage
        monkeypatch.setattr(storage, "_CLIENT", None)  # the in-process client must use the proxy
        run_once(model_path, "--batch-size", "16")
        assert proxy.injected["slowdown"] > 5 and proxy.injected["reset"] > 5
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3)
    rows = manifest(bucket)
    assert {key_of(r): r["status"] for r in rows} == expected
    assert not [r for r in rows if r["error"].startswith("cannot read")]


def test_vanished_object_is_an_error_row_and_the_loop_goes_on(bucket, model_path):
    """An object listed and then deleted before it is read: an error row, retried later."""
    from maskcore.faces import open_analyzer
    from maskcore.runners import LocalRunner
    from maskcore.worker import Worker, WorkerConfig

    seed(bucket, 6, bad=False)
    w = Worker(WorkerConfig(source=SRC, results=RES, once=True),
               open_analyzer(str(model_path)), LocalRunner(workers=0))
    todo = w.pending()
    bucket.delete_object(Bucket=BUCKET, Key="incoming/0002.jpg")
    assert w.process(todo) == 6
    rows = {key_of(r): r for r in part_rows(bucket)}
    assert rows["incoming/0002.jpg"]["status"] == "error"
    assert rows["incoming/0002.jpg"]["error"].startswith("cannot read")
    assert all(r["status"] == "ok" for k, r in rows.items() if k != "incoming/0002.jpg")
    assert [r.key for r in w.pending()] == []  # it is gone from the listing: nothing to redo


def test_a_normal_run_says_what_it_does_and_nothing_else(bucket, model_path):
    """What a person sees: our JSON lines and the summary; no third-party notes, no warnings."""
    seed(bucket, 6, bad=False)
    proc = start_worker(model_path, "--once")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert "6 objects" in out
    events = [json.loads(line)["event"] for line in err.splitlines()]  # every line is ours
    assert events[0] == "start" and events[-1] == "stop"
    assert "credentials" not in err.lower() and "warn" not in err.lower()


def test_a_workers_results_are_scored_against_class_prefixes(bucket, model_path):
    """`maskcore evaluate s3://.../results/ --classes`: a labelled bucket (incoming/<class>/...)
    scored where the worker left its results."""
    examples = sorted((ROOT / "examples").glob("*.jpg"))
    for p in examples:
        folder = "without_mask" if p.name.startswith("without_mask") else "with_mask"
        bucket.put_object(Bucket=BUCKET, Key=f"incoming/{folder}/{p.name}", Body=p.read_bytes())
    bucket.put_object(Bucket=BUCKET, Key="incoming/notes.txt", Body=b"not a picture")
    run_once(model_path, "--faces", "off")
    rows = [r for r in manifest(bucket) if r["status"] == "ok"]
    r = CliRunner().invoke(main, ["evaluate", RES, "--classes", "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["pictures"] == len(rows) == len(examples)
    assert report["outside_classes"] == {"": 1}  # notes.txt, beside the class prefixes
    right = sum(r["label"] == key_of(r).split("/")[1] for r in rows)
    assert report["accuracy"] == round(right / len(rows), 4)
    # A worker's summary names no local model: the split record must be given.
    r = CliRunner().invoke(main, ["evaluate", RES, "--classes", "--split", "test"])
    assert r.exit_code == 2 and "give --split-record" in r.output
