"""The batch job end to end: every file one row, right statuses, exit codes, formats, S3, memory."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner
from PIL import Image

from maskcore.batch import format_stopped, run_batch
from maskcore.cli import main
from maskcore.errors import UsageError
from maskcore.manifest import ManifestWriter
from maskcore.results import open_results
from tests.conftest import ROOT, copy_pictures
from tests.helpers import BAD_INPUTS, encode, gradient, png_with_size

VOLATILE = ("processed_at",)


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def _stable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]


def _run(args: list[str]) -> tuple[int, str]:
    r = CliRunner().invoke(main, args)
    return r.exit_code, r.output


def _classify(root: Path, out: Path, model: Path, *extra: str) -> tuple[list[dict], str]:
    """Run the batch job (no progress); assert it finished; return its rows and output."""
    code, output = _run(["batch", str(root), "--out", str(out), "--model", str(model),
                         "--no-progress", *extra])
    assert code == 0, output
    return _rows(out), output


@pytest.fixture
def mixed(tmp_path, face_pictures) -> tuple[Path, dict[str, str]]:
    """A folder of good pictures and every kind of bad file; returns it and the expected statuses."""
    root = tmp_path / "in"
    expected: dict[str, str] = {}
    for p in copy_pictures(face_pictures, root / "faces"):
        expected[f"faces/{p.name}"] = "ok"
    (root / "made").mkdir()
    for i, fmt in enumerate(["PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"]):
        name = f"made/pic{i}.{'jpg' if fmt == 'PNG' else 'bin'}"  # names that lie
        (root / name).write_bytes(encode(gradient(60 + i, 50, seed=i), fmt))
        expected[name] = "ok"
    for name, data in BAD_INPUTS.items():
        (root / f"bad_{name}.jpg").write_bytes(data)
        expected[f"bad_{name}.jpg"] = "error"
    (root / "bomb.png").write_bytes(png_with_size(20_000, 20_000))
    expected["bomb.png"] = "error"
    (root / "dangling.jpg").symlink_to(root / "nowhere.jpg")
    expected["dangling.jpg"] = "error"
    (root / "linked.png").symlink_to(root / "made" / "pic0.jpg")
    expected["linked.png"] = "ok"
    (root / ".hidden.jpg").write_bytes(encode(gradient(), "JPEG"))
    (root / ".cache").mkdir()
    (root / ".cache" / "x.jpg").write_bytes(encode(gradient(), "JPEG"))
    return root, expected


def test_every_file_gets_one_row_with_the_right_status(mixed, tmp_path, model_path):
    root, expected = mixed
    out = tmp_path / "out"
    rows, output = _classify(root, out, model_path, "--workers", "2")
    assert {r["source"]: r["status"] for r in rows} == expected
    assert [r["source"] for r in rows] == sorted(expected)  # stable order
    for r in rows:
        if r["status"] == "ok":
            assert r["label"] in ("with_mask", "without_mask")
            assert abs(sum(r["probabilities"].values()) - 1) < 1e-4
            assert r["score"] == max(r["probabilities"].values())
            assert r["width"] > 0 and r["height"] > 0 and len(r["sha256"]) == 64
            assert r["error"] == ""
        else:
            assert r["error"] and r["label"] == "" and r["probabilities"] == {}
    by = {r["source"]: r for r in rows}
    assert "megapixels" in by["bomb.png"]["error"]
    assert "empty" in by["bad_empty.jpg"]["error"]
    assert "broken symbolic link" in by["dangling.jpg"]["error"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["total"] == len(expected)
    assert summary["errors"] == sum(s == "error" for s in expected.values())
    assert summary["skipped"] == 2
    assert summary["device"] == "cpu" and summary["provider"] == "CPUExecutionProvider"
    assert summary["model_id"] == rows[0]["model_id"]
    assert "errors" in output and "pictures/s" in output
    assert not list(out.glob("*.partial"))


def test_exit_codes(mixed, tmp_path, model_path):
    root, _ = mixed
    base = ["--model", str(model_path), "--workers", "0", "--no-progress"]
    code, _ = _run(["batch", str(root), "--out", str(tmp_path / "a"), "--fail-on-error", *base])
    assert code == 1
    good = tmp_path / "good"
    copy_pictures([root / "made" / "pic1.bin"], good)
    code, _ = _run(["batch", str(good), "--out", str(tmp_path / "b"), "--fail-on-error", *base])
    assert code == 0
    for args, needle in [
        (["batch", str(tmp_path / "missing"), "--out", str(tmp_path / "c"), *base], "not found"),
        (["batch", str(good), "--out", str(tmp_path / "d"), "--model",
          str(tmp_path / "none.onnx")], "model not found"),
        (["batch", str(good), "--out", str(tmp_path / "e"), "--device", "cuda", *base], "cuda"),
        (["batch", str(good), "--out", str(tmp_path / "f"), "--format", "xml", *base], "format"),
    ]:
        code, output = _run(args)
        assert code == 2, output
        assert needle in output.lower()
        assert "Traceback" not in output


def test_csv_and_jsonl_agree(mixed, tmp_path, model_path):
    root, _ = mixed
    out = tmp_path / "out"
    rows, _ = _classify(root, out, model_path, "--workers", "0")
    records = list(csv.DictReader(io.StringIO((out / "manifest.csv").read_text())))
    assert len(records) == len(rows)
    for row, rec in zip(rows, records, strict=True):
        for key, value in row.items():
            if key == "probabilities":
                for cls in ("with_mask", "without_mask"):
                    want = value.get(cls)
                    assert rec[f"p_{cls}"] == ("" if want is None else str(want))
            elif key == "face_counts":
                for cls in ("with_mask", "without_mask"):
                    want = "" if row["faces"] is None else str(value.get(cls, 0))
                    assert rec[f"n_{cls}"] == want
            else:
                assert rec[key] == ("" if value is None else str(value)), key
    faces = [json.loads(line) for line in (out / "faces.jsonl").read_text().split("\n") if line]
    face_records = list(csv.DictReader(io.StringIO((out / "faces.csv").read_text())))
    assert len(faces) == len(face_records) == sum(r["faces"] or 0 for r in rows)


def test_rows_do_not_depend_on_workers_or_batch_size(mixed, tmp_path, model_path):
    root, _ = mixed
    results = []
    for workers, size in [(0, 64), (1, 1), (2, 7)]:
        rows, _ = _classify(root, tmp_path / f"w{workers}b{size}", model_path,
                            "--workers", str(workers), "--batch-size", str(size))
        results.append(_stable(rows))
    assert results[0] == results[1] == results[2]


def test_exif_rotation_gives_the_same_label(tmp_path, face_pictures, model_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i, p in enumerate(face_pictures[:6]):
        upright = Image.open(p).convert("RGB")
        upright.save(folder / f"{i}_upright.png")
        exif = Image.Exif()
        exif[0x0112] = 6  # stored turned a quarter; the tag turns it back
        upright.rotate(90, expand=True).save(folder / f"{i}_tagged.png", exif=exif.tobytes())
    rows, _ = _classify(folder, tmp_path / "out", model_path, "--workers", "0")
    by = {r["source"]: r for r in rows}
    for i in range(min(6, len(face_pictures))):
        a, b = by[f"{i}_upright.png"], by[f"{i}_tagged.png"]
        assert a["label"] == b["label"]
        assert (a["width"], a["height"]) == (b["width"], b["height"])
        assert abs(a["score"] - b["score"]) < 1e-3


def test_s3_input(s3, s3_client, tmp_path, face_pictures, model_path):
    s3_client.create_bucket(Bucket="photos")
    names = []
    for i, p in enumerate(face_pictures[:5]):
        key = f"in/day1/{i}.jpg"
        s3_client.put_object(Bucket="photos", Key=key, Body=p.read_bytes())
        names.append(key)
    s3_client.put_object(Bucket="photos", Key="in/day1/readme.txt", Body=b"not a picture")
    s3_client.put_object(Bucket="photos", Key="elsewhere/x.jpg", Body=b"outside the prefix")
    out = tmp_path / "out"
    code, output = _run(["batch", "s3://photos/in/", "--out", str(out), "--model",
                         str(model_path), "--workers", "1", "--no-progress"])
    assert code == 0, output
    rows = _rows(out)
    assert [r["source"] for r in rows] == sorted(
        [f"s3://photos/{k}" for k in names] + ["s3://photos/in/day1/readme.txt"])
    assert [r["status"] for r in rows].count("error") == 1
    code, output = _run(["batch", "s3://no-such-bucket/x/", "--out", str(tmp_path / "o2"),
                         "--model", str(model_path), "--no-progress"])
    assert code == 2 and "NoSuchBucket" in output


@pytest.mark.slow
def test_memory_stays_flat_on_a_large_input(tmp_path, model_path):
    """Peak RSS of the job's whole process tree on 5,000 files is close to that on 500."""
    small = encode(gradient(48, 48), "PNG")
    big_dir, small_dir = tmp_path / "big", tmp_path / "small"
    for d, n in ((big_dir, 5000), (small_dir, 500)):
        d.mkdir()
        for i in range(n):
            (d / f"{i:05d}.png").write_bytes(small)
    script = ROOT / "tests" / "peak_rss.py"
    peaks = {}
    for name, d in (("small", small_dir), ("big", big_dir)):
        out = subprocess.run(
            [sys.executable, str(script), sys.executable, "-m", "maskcore", "batch", str(d),
             "--out", str(tmp_path / f"out_{name}"), "--model", str(model_path),
             "--workers", "2", "--no-progress"],
            capture_output=True, text=True, timeout=600, cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert out.returncode == 0, out.stderr[-2000:]
        peaks[name] = int(out.stdout.strip().splitlines()[-1])
    growth_mb = (peaks["big"] - peaks["small"]) / 2**20
    assert growth_mb < 60, peaks  # 10x the pictures; the row buffer is all that may grow


def _fresh_shell_env() -> dict[str, str]:
    """The environment of a fresh shell: under `make test ARGS=...` make exports its
    command-line variables to every make below it (the environment and MAKEFLAGS), and
    pytest's ARGS would reach `maskcore batch`."""
    flags = os.environ.get("MAKEFLAGS", "")
    given = {w.split("=", 1)[0] for w in re.split(r"(?<!\\) ", flags.partition(" -- ")[2])
             if "=" in w}
    return {k: v for k, v in os.environ.items()
            if k not in given | {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"}}


def test_make_batch_on_examples(tmp_path):
    """The README's first command, through make, as a person types it."""
    out = tmp_path / "res"
    r = subprocess.run(["make", "-s", "batch", "INPUT=examples/", f"OUTPUT={out}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, env=_fresh_shell_env())
    assert r.returncode == 0, r.stderr[-2000:]
    assert "with_mask" in r.stdout and "pictures/s" in r.stdout
    assert "maskcore report" in r.stdout  # where to look next
    assert "warn" not in r.stderr.lower()  # a CPU run is normal, not a warning
    assert {p.name for p in out.iterdir()} == {"manifest.jsonl", "manifest.csv", "faces.jsonl",
                                               "faces.csv", "summary.json"}
    assert json.loads((out / "summary.json").read_text())["errors"] == 0


def test_make_batch_resume_takes_up_the_newest_stopped_run(tmp_path):
    """`make batch ARGS=--resume` without OUTPUT= resumes in the folder a stopped run left, not
    in a new timestamped one where there would be nothing to resume (make -n: the command)."""
    runs = tmp_path / "results"
    for name, age in (("20260101T000000Z", 60), ("older-by-name-newer", 0), ("done", 0)):
        (runs / name).mkdir(parents=True)
        if name != "done":  # a finished run leaves no run.json.partial
            partial = runs / name / "run.json.partial"
            partial.write_text("{}")
            os.utime(partial, (time.time() - age,) * 2)

    def out_of(*variables: str) -> str:
        r = subprocess.run(["make", "-s", "-n", "batch", "INPUT=examples/", f"RUNS={runs}",
                            *variables], cwd=ROOT, capture_output=True, text=True, timeout=60,
                           env=_fresh_shell_env())
        assert r.returncode == 0, r.stderr
        found = re.search(r'--out "([^"]+)"', r.stdout)
        assert found, r.stdout
        return found[1]

    assert out_of("ARGS=--workers 1 --resume") == str(runs / "older-by-name-newer")
    assert out_of("ARGS=--resume", f"OUTPUT={tmp_path / 'mine'}") == str(tmp_path / "mine")
    fresh = out_of()  # without --resume: a new folder named by the time
    assert re.fullmatch(re.escape(str(runs)) + r"/\d{8}T\d{6}Z", fresh), fresh
    for partial in runs.glob("*/run.json.partial"):
        partial.unlink()
    assert out_of("ARGS=--resume") != str(runs / "older-by-name-newer")  # none stopped: new


def test_threshold_labels_low_scores_uncertain(tmp_path, face_pictures, model_path):
    folder = tmp_path / "in"
    copy_pictures(face_pictures, folder)
    plain, _ = _classify(folder, tmp_path / "plain", model_path, "--workers", "0")
    assert all(r["label"] != "uncertain" for r in plain)
    cut = sorted(r["score"] for r in plain)[len(plain) // 2]  # half the scores fall below it
    strict, _ = _classify(folder, tmp_path / "strict", model_path, "--workers", "0",
                          "--threshold", str(cut))
    for a, b in zip(plain, strict, strict=True):
        assert b["label"] == ("uncertain" if a["score"] < cut else a["label"])
        assert b["probabilities"] == a["probabilities"]
    assert any(r["label"] == "uncertain" for r in strict)
    summary = json.loads((tmp_path / "strict" / "summary.json").read_text())
    assert summary["labels"].get("uncertain", 0) == sum(r["label"] == "uncertain" for r in strict)


@pytest.mark.slow
def test_sigterm_stops_after_the_pictures_in_hand_and_replaces_nothing(tmp_path, model_path):
    """`docker stop` mid-run: the rows done are kept as partial files, the earlier results stay,
    the exit code says how it ended, and no decode process outlives the job."""
    root, out = tmp_path / "in", tmp_path / "out"
    root.mkdir()
    picture = encode(gradient(64, 64), "PNG")
    for i in range(600):
        (root / f"{i:04d}.png").write_bytes(picture)
    out.mkdir()
    (out / "summary.json").write_text('{"earlier": true}\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "maskcore", "batch", str(root), "--out", str(out), "--model",
         str(model_path), "--workers", "2", "--batch-size", "8", "--no-progress"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        for line in proc.stderr:  # the pictures are listed: the pool is starting
            if "files under" in line:
                break
        time.sleep(2)
        children = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    said = re.search(r"stopped: (\d+) of 600 pictures done", stderr)
    assert said, stderr[-2000:]
    rows = [json.loads(line) for line in (out / "manifest.jsonl.partial").read_text().splitlines()]
    assert 0 < len(rows) == int(said[1]) < 600
    assert len({r["source"] for r in rows}) == len(rows) and all(r["status"] == "ok" for r in rows)
    faces = (out / "faces.jsonl.partial").read_text().splitlines()
    assert len(faces) == sum(r["faces"] for r in rows)
    assert {p.name for p in out.iterdir() if not p.name.endswith(".partial")} == {"summary.json"}
    assert json.loads((out / "summary.json").read_text()) == {"earlier": True}
    assert "Traceback" not in stderr and stdout == ""
    assert children  # the decode processes, which must end with the job
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, [c.pid for c in alive]
    # Taken up by the command the stop printed (the same one with --resume): the rest is
    # classified, and every picture has one row.
    again = re.search(r"To classify only the rest: (.+) \(without --resume it starts over\)",
                      stderr)
    assert again, stderr[-2000:]
    command = shlex.split(again[1])
    assert command[:4] == [sys.executable, "-m", "maskcore", "batch"], command
    assert command[-1] == "--resume" and str(out) in command
    taken = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert taken.returncode == 0, taken.stderr[-2000:]
    assert f"resuming: {len(rows)} pictures' rows kept" in taken.stderr, taken.stderr[-2000:]
    resumed = _rows(out)
    assert len(resumed) == len({r["source"] for r in resumed}) == 600
    assert resumed[: len(rows)] == rows
    assert [r["source"] for r in resumed] == sorted(r["source"] for r in resumed)
    assert json.loads((out / "summary.json").read_text())["resumed"] == len(rows)


def test_a_run_stopped_before_it_starts_replaces_nothing(tmp_path, face_pictures, model_path):
    root, out = tmp_path / "in", tmp_path / "out"
    copy_pictures(face_pictures[:3], root)
    first = run_batch(str(root), out, model=str(model_path), workers=0, show_progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    stopped = run_batch(str(root), out, model=str(model_path), workers=0, show_progress=False,
                        stop=lambda: True)
    assert stopped["stopped"] and stopped["listed"] == first["total"] == 3
    assert stopped["total"] == 0
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.suffix != ".partial"} == before
    assert sorted(Path(p).name for p in stopped["kept"]) == sorted(f"{n}.partial" for n in (
        "manifest.jsonl", "manifest.csv", "faces.jsonl", "faces.csv", "run.json"))
    assert (out / "manifest.jsonl.partial").read_text() == ""
    assert "0 of 3 pictures done" in format_stopped(stopped)
    fresh = tmp_path / "fresh"  # a folder only a stopped run wrote into: reports say so
    run_batch(str(root), fresh, model=str(model_path), workers=0, show_progress=False,
              stop=lambda: True)
    with pytest.raises(UsageError, match="a run that was stopped"):
        open_results(str(fresh))


def test_a_second_run_into_a_folder_being_written_is_refused(tmp_path, face_pictures,
                                                               model_path):
    root, out = tmp_path / "in", tmp_path / "out"
    copy_pictures(face_pictures[:2], root)
    running = ManifestWriter(out, ["with_mask", "without_mask"])  # another run, mid-way
    code, output = _run(["batch", str(root), "--out", str(out), "--model", str(model_path),
                         "--no-progress"])
    assert code == 2 and "another run is writing there" in output, output
    assert "Traceback" not in output
    running.close({"total": 0})
    rows, _ = _classify(root, out, model_path)  # free again once that run is done
    assert len(rows) == 2
