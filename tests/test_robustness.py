"""Hard to break: names, paths, special files, limits, malformed options and orphans."""

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

import psutil
import pytest
from click.testing import CliRunner

from maskcore.cli import main
from tests.conftest import ROOT
from tests.helpers import encode, gradient
from tests.test_worker import BUCKET, RES, SRC, manifest, part_rows, run_once


def batch(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(main, ["batch", *args, "--workers", "0", "--faces", "off",
                                  "--no-progress"])
    return r.exit_code, r.output


def rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "manifest.jsonl").read_text(
        encoding="utf-8", errors="surrogateescape").split("\n") if x]


def test_special_files_are_error_rows_not_hangs(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "ok.png").write_bytes(encode(gradient()))
    os.mkfifo(src / "pipe.jpg")
    (src / "zero.jpg").symlink_to("/dev/zero")
    (src / "gone.jpg").symlink_to(src / "nowhere.jpg")
    t0 = time.monotonic()
    code, output = batch(str(src), "--out", str(tmp_path / "out"))
    assert code == 0, output
    assert time.monotonic() - t0 < 60
    by = {r["source"]: r for r in rows(tmp_path / "out")}
    assert by["ok.png"]["status"] == "ok"
    assert "not a regular file (a FIFO)" in by["pipe.jpg"]["error"]
    assert "not a regular file (a character device)" in by["zero.jpg"]["error"]
    assert "broken symbolic link" in by["gone.jpg"]["error"]


def test_size_limit_refuses_before_reading(tmp_path, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    (src / "big.png").write_bytes(encode(gradient(300, 300)))
    (src / "small.png").write_bytes(encode(gradient(8, 8)))
    monkeypatch.setenv("MASKCORE_MAX_BYTES", "2000")
    code, output = batch(str(src), "--out", str(tmp_path / "out"))
    assert code == 0, output
    by = {r["source"]: r for r in rows(tmp_path / "out")}
    assert by["big.png"]["error"].startswith("too large")
    assert by["small.png"]["status"] == "ok"
    monkeypatch.setenv("MASKCORE_MAX_BYTES", "lots")
    code, output = batch(str(src), "--out", str(tmp_path / "out2"))
    assert code == 2 and "MASKCORE_MAX_BYTES" in output


def _remove_deep(top: Path) -> None:
    """Remove a folder chain deeper than shutil.rmtree (recursive) can, bottom up."""
    chain = [top]
    while (chain[-1] / "d").is_dir():
        chain.append(chain[-1] / "d")
    for folder in reversed(chain):
        for entry in folder.iterdir():
            if not entry.is_dir():
                entry.unlink()
        folder.rmdir()


def test_names_that_are_not_utf8_deep_folders_and_formulas(tmp_path, request):
    src = tmp_path / "in"
    src.mkdir()
    png = encode(gradient())
    raw = os.fsencode(src) + b"/caf\xe9.png"  # Latin-1, not UTF-8
    with open(raw, "wb") as fh:
        fh.write(png)
    request.addfinalizer(lambda: _remove_deep(src / "d"))  # pytest's own cleanup recurses
    deep = src
    for _ in range(1100):  # deeper than Python's recursion limit
        deep = deep / "d"
        os.mkdir(deep)  # one at a time: pathlib's mkdir(parents=True) recurses
    (deep / "deep.png").write_bytes(png)
    (src / "=HYPERLINK(1).png").write_bytes(png)
    (src / "line\rbreak.png").write_bytes(png)
    code, output = batch(str(src), "--out", str(tmp_path / "out"))
    assert code == 0, output
    got = rows(tmp_path / "out")
    assert len(got) == 4 and all(r["status"] == "ok" for r in got)
    names = {r["source"] for r in got}
    assert "caf\udce9.png" in names  # the same bytes back, via surrogate escapes
    assert b"caf\xe9.png" in (tmp_path / "out" / "manifest.jsonl").read_bytes()
    assert any(n.endswith("d/deep.png") for n in names)
    assert "=HYPERLINK(1).png" in names  # the JSON Lines keep the exact name
    text = (tmp_path / "out" / "manifest.csv").read_bytes().decode("utf-8", "surrogateescape")
    records = list(csv.DictReader(io.StringIO(text, newline="")))
    sources = {r["source"] for r in records}
    assert "'=HYPERLINK(1).png" in sources  # a spreadsheet sees text, not a formula
    assert "line\rbreak.png" in sources and len(records) == 4  # quoted, not split


def test_output_inside_the_input_is_not_classified_next_time(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.png").write_bytes(encode(gradient()))
    for _ in range(2):
        code, output = batch(str(src), "--out", str(src / "results"))
        assert code == 0, output
        assert [r["source"] for r in rows(src / "results")] == ["a.png"]


@pytest.mark.parametrize("where", ["the input", "above it"])
def test_output_that_holds_the_input_is_refused(tmp_path, where):
    """--out (or --annotate) naming the input folder, or a folder the input lies in, would
    leave every picture out as the job's own output: refused before anything is written."""
    src = tmp_path / "in" / "pictures"
    src.mkdir(parents=True)
    (src / "a.png").write_bytes(encode(gradient()))
    out = src if where == "the input" else tmp_path / "in"
    for option in ("--out", "--annotate"):
        args = ["--out", str(out)] if option == "--out" else \
            ["--out", str(tmp_path / "res"), "--annotate", str(out)]
        code, output = batch(str(src), *args)
        assert code == 2, output
        assert "a folder this job writes to" in output, output
    assert sorted(p.name for p in src.iterdir()) == ["a.png"]
    assert not (tmp_path / "res").exists() and sorted(p.name for p in (tmp_path / "in").iterdir()) \
        == ["pictures"]


def test_annotated_copies_inside_the_input_are_not_classified_next_time(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "face.jpg").write_bytes((ROOT / "examples" / "without_mask_0.jpg").read_bytes())
    for _ in range(2):
        code, output = batch(str(src), "--out", str(tmp_path / "res"), "--annotate",
                             str(src / "flagged"))
        assert code == 0, output
        assert [r["source"] for r in rows(tmp_path / "res")] == ["face.jpg"]
    assert [p.name for p in (src / "flagged").iterdir()]  # there was a copy to leave out


def test_a_failed_run_keeps_the_previous_manifest(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.png").write_bytes(encode(gradient()))
    out = tmp_path / "out"
    assert batch(str(src), "--out", str(out))[0] == 0
    before = (out / "manifest.jsonl").read_bytes()
    code, output = batch(str(src), "--out", str(out), "--model", str(tmp_path / "nope.onnx"))
    assert code == 2
    assert (out / "manifest.jsonl").read_bytes() == before


@pytest.mark.parametrize("args, env, says", [
    (["", "--out", "x"], {}, "input is empty"),
    (["in", "--out", "x", "--threshold", "nan"], {}, "not a finite number"),
])
def test_malformed_inputs_are_usage_errors(tmp_path, monkeypatch, args, env, says):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    r = CliRunner().invoke(main, ["batch", *args])
    assert r.exit_code == 2, r.output
    assert says in r.output and "Traceback" not in r.output
    assert not (tmp_path / "x" / "manifest.jsonl").exists()


def test_malformed_environment_values_are_usage_errors(tmp_path):
    """In a process of its own: the S3 client is made once per process, from the environment."""
    env = {**os.environ, "MASKCORE_S3_ATTEMPTS": "abc", "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
           "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"}
    r = subprocess.run([sys.executable, "-m", "maskcore", "batch", "s3://b/in/", "--out",
                        str(tmp_path / "x")], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2, r.stderr
    assert "MASKCORE_S3_ATTEMPTS='abc'" in r.stderr and "Traceback" not in r.stderr


def test_worker_refuses_non_finite_intervals():
    for opt in ("--poll-interval", "--max-wait", "--threshold"):
        r = CliRunner().invoke(main, ["worker", "--source", SRC, "--results", RES, opt, "nan"])
        assert r.exit_code == 2 and "not a finite number" in r.output, r.output


@pytest.fixture
def bucket(s3_client):
    s3_client.create_bucket(Bucket=BUCKET)
    return s3_client


def test_keys_with_line_separators_are_done_once(bucket, model_path):
    png = encode(gradient(40, 40))
    keys = [f"incoming/a{ch}b.png" for ch in ("\u2028", "\u2029", "\u0085", "\x1c", "\x0b")]
    for k in keys:
        bucket.put_object(Bucket=BUCKET, Key=k, Body=png)
    run_once(model_path, "--faces", "off")
    assert "this run classified 0" in run_once(model_path, "--faces", "off")
    assert sorted(r["source"] for r in manifest(bucket)) == sorted(f"s3://{BUCKET}/{k}"
                                                                   for k in keys)


def test_a_foreign_object_under_the_parts_is_set_aside(bucket, model_path):
    bucket.put_object(Bucket=BUCKET, Key="incoming/a.png", Body=encode(gradient()))
    run_once(model_path, "--faces", "off")
    parts = bucket.list_objects_v2(Bucket=BUCKET, Prefix="results/parts/")["Contents"]
    folder = parts[0]["Key"].rsplit("/", 1)[0]
    bucket.put_object(Bucket=BUCKET, Key=f"{folder}/foreign.jsonl",
                      Body=b'{"hello": 1}\n[1, 2]\nnull\n')
    out = run_once(model_path, "--faces", "off")
    assert "this run classified 0" in out
    assert len(part_rows(bucket)) == 4  # the row, and the three foreign lines left alone


def test_decode_processes_die_with_their_parent(tmp_path):
    """kill -9 of the job: its decode processes must not outlive it."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(400):
        (src / f"{i:04d}.png").write_bytes(encode(gradient(200, 150, seed=i)))
    proc = subprocess.Popen(
        [sys.executable, "-m", "maskcore", "batch", str(src), "--out", str(tmp_path / "out"),
         "--workers", "2", "--no-progress"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + 60
    children: list[psutil.Process] = []
    while time.monotonic() < deadline and len(children) < 2:
        children = [c for c in parent.children(recursive=True) if "python" in c.name().lower()]
        time.sleep(0.1)
    assert len(children) >= 2, "the decode processes did not start"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"orphaned decode processes: {[p.pid for p in alive]}"


@pytest.mark.parametrize("results", [f"s3://{BUCKET}/", SRC, f"s3://{BUCKET}/incoming/res"])
def test_results_that_overlap_the_source_hide_no_picture(bucket, model_path, results):
    png = encode(gradient(40, 40))
    keys = ["incoming/a.png", "incoming/resume.png", "incoming/sub/b.png"]
    for k in keys:
        bucket.put_object(Bucket=BUCKET, Key=k, Body=png)
    for _ in range(2):  # the second pass finds its own results and classifies nothing
        r = CliRunner().invoke(main, ["worker", "--source", SRC, "--results", results, "--once",
                                      "--model", str(model_path), "--workers", "0",
                                      "--faces", "off"])
        assert r.exit_code == 0, r.output
    assert "3 objects" in r.output and "this run classified 0" in r.output


def test_two_buckets_sharing_a_results_prefix_lose_nothing(s3_client, model_path):
    png = encode(gradient(40, 40))
    for b in ("one", "two"):
        s3_client.create_bucket(Bucket=b)
        s3_client.put_object(Bucket=b, Key="in/same.png", Body=png)  # same key, same content
    for b in ("one", "two"):
        r = CliRunner().invoke(main, ["worker", "--source", f"s3://{b}/in/", "--results",
                                      "s3://one/results/", "--once", "--model", str(model_path),
                                      "--workers", "0", "--faces", "off"])
        assert r.exit_code == 0, r.output
        assert "this run classified 1" in r.output, (b, r.output)


def test_an_endpoint_that_never_answers_is_given_up_on_in_bounded_time(tmp_path):
    """A server that accepts connections and says nothing: each attempt times out, is logged,
    and the run ends with a clear error (exit 2), not a hang."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                held.append(conn)  # never answered
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    port = server.getsockname()[1]
    env = {**os.environ, "AWS_ENDPOINT_URL": f"http://user:secret@127.0.0.1:{port}",
           "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1",
           "MASKCORE_S3_ATTEMPTS": "3", "MASKCORE_S3_TIMEOUT": "1"}
    try:
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "maskcore", "worker", "--source", SRC,
                            "--results", RES, "--once"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=120)
        took = time.monotonic() - t0
    finally:
        stop.set()
        thread.join(5)
        for c in held:
            c.close()
        server.close()
    assert r.returncode == 2, r.stderr[-2000:]
    assert took < 60
    assert r.stderr.count('"s3_attempt_failed"') >= 2
    assert "error: StorageError: cannot list" in r.stderr
    assert "secret" not in r.stderr  # credentials in an endpoint URL are never printed


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every folder: permissions cannot "
                                              "make one unreadable (CI runs as root)")
def test_an_unreadable_folder_is_an_error_row(tmp_path):
    src = tmp_path / "in"
    (src / "locked").mkdir(parents=True)
    (src / "locked" / "a.png").write_bytes(encode(gradient()))
    (src / "ok.png").write_bytes(encode(gradient()))
    (src / "locked").chmod(0)
    try:
        code, output = batch(str(src), "--out", str(tmp_path / "out"), "--fail-on-error")
    finally:
        (src / "locked").chmod(0o755)
    assert code == 1, output
    by = {r["source"]: r for r in rows(tmp_path / "out")}
    assert by["locked/"]["error"].startswith("cannot read folder")


def test_an_output_location_that_cannot_be_written_is_a_run_error(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.png").write_bytes(encode(gradient()))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, output = batch(str(src), "--out", str(blocker))
    assert code == 2 and "is a file" in output
    # under a file, and where even root cannot create a folder
    for out in (blocker / "below", Path("/proc/maskcore-results")):
        code, output = batch(str(src), "--out", str(out))
        assert code == 2, output
        assert "cannot write results to" in output and "Traceback" not in output
