"""``maskcore batch --resume``: a stopped run is taken up where it left off, and only rows that
still hold are kept (same settings, whole, the picture unchanged)."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from maskcore.batch import format_summary, run_batch
from maskcore.cli import main
from maskcore.decode import CHUNK
from maskcore.errors import UsageError
from maskcore.manifest import ManifestWriter
from maskcore.resume import Merge, TakenUp
from tests.conftest import copy_pictures
from tests.helpers import encode, gradient


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _lines_raw(path: Path) -> list[dict]:
    """JSON Lines split at b"\\n" only, names that are not UTF-8 as surrogate escapes."""
    return [json.loads(line.decode("utf-8", "surrogateescape"))
            for line in path.read_bytes().split(b"\n") if line]


def _stable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "processed_at"} for r in rows]


def _results(out: Path) -> dict[str, list[dict]]:
    """A run's rows in the order written (a resumed run keeps them sorted by source)."""
    return {name: _stable(_lines(out / name)) for name in ("manifest.jsonl", "faces.jsonl")}


def _csv_stable(path: Path) -> list[dict]:
    return _stable(list(csv.DictReader(io.StringIO(path.read_text(), newline=""))))


def _after_polls(n: int):
    """A stop request that comes after ``n`` polls: the run starts ``n`` decode tasks (of
    ``CHUNK`` pictures each, decoding in threads), finishes them and stops."""
    polls = iter(range(n + 1))
    return lambda: next(polls, n) >= n


@pytest.fixture
def pictures(tmp_path, face_pictures) -> Path:
    """More pictures than one decode task holds, so a run can stop between tasks."""
    root = tmp_path / "in"
    copy_pictures(face_pictures, root / "a")
    copy_pictures(face_pictures, root / "b")
    assert sum(1 for p in root.rglob("*") if p.is_file()) > CHUNK
    return root


def _run(root: Path, out: Path, model: Path, **kw) -> dict:
    return run_batch(str(root), out, model=str(model), workers=0, show_progress=False, **kw)


def test_a_stopped_run_is_taken_up_and_ends_as_a_fresh_run_would(tmp_path, pictures,
                                                                   model_path):
    out = tmp_path / "out"
    stopped = _run(pictures, out, model_path, stop=_after_polls(1))
    assert stopped["stopped"] and stopped["total"] == CHUNK < stopped["listed"]
    assert (out / "run.json.partial").is_file()
    before = {r["source"]: r for r in _lines(out / "manifest.jsonl.partial")}

    # Since the stop: one picture it did is rewritten (same name, other bytes), one deleted.
    done = sorted(before)
    changed, gone = pictures / done[0], pictures / done[1]
    shutil.copyfile(pictures / done[-1], changed)
    gone.unlink()

    summary = _run(pictures, out, model_path, resume=True)
    assert summary["resumed"] == CHUNK - 2
    fresh = tmp_path / "fresh"
    _run(pictures, fresh, model_path)
    assert _results(out) == _results(fresh)
    assert _csv_stable(out / "manifest.csv") == _csv_stable(fresh / "manifest.csv")
    assert _csv_stable(out / "faces.csv") == _csv_stable(fresh / "faces.csv")
    assert not list(out.glob("*.partial")) and not list(out.glob("*.stopped"))
    # The rows taken up are the stopped run's own (its time stamps), the others new.
    after = {r["source"]: r for r in _lines(out / "manifest.jsonl")}
    kept = [s for s in done if s not in (done[0], done[1])]
    assert all(after[s]["processed_at"] == before[s]["processed_at"] for s in kept)
    assert after[done[0]]["sha256"] != before[done[0]]["sha256"]
    assert "taken up from the stopped run" in format_summary(summary)


def test_another_input_or_other_settings_are_refused_and_the_stopped_rows_stay(tmp_path, pictures,
                                                                            model_path):
    out = tmp_path / "out"
    _run(pictures, out, model_path, stop=_after_polls(1))
    partial = {p.name: p.read_bytes() for p in out.iterdir()}
    result = CliRunner().invoke(main, ["batch", str(pictures), "--out", str(out), "--model",
                                       str(model_path), "--threshold", "0.8", "--resume",
                                       "--no-progress"])
    assert result.exit_code == 2, result.output
    assert "threshold 0.5 then, 0.8 now" in result.output and "Traceback" not in result.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == partial
    # Another input (a folder inside the first): its rows would replace the stopped run's.
    result = CliRunner().invoke(main, ["batch", str(pictures / "a"), "--out", str(out),
                                       "--model", str(model_path), "--resume", "--no-progress"])
    assert result.exit_code == 2, result.output
    assert f"input {str(pictures.resolve())!r} then, {str((pictures / 'a').resolve())!r} now" in result.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == partial
    # The same settings and the same folder, however typed: taken up.
    summary = run_batch(f"{pictures}/../{pictures.name}/", out, model=str(model_path),
                        workers=0, show_progress=False, resume=True)
    assert summary["resumed"] == CHUNK


def test_a_torn_end_is_classified_again(tmp_path, pictures, model_path):
    """A run killed mid-write leaves a picture row without all its face rows: that picture, and
    nothing before it, is done again."""
    out = tmp_path / "out"
    _run(pictures, out, model_path, stop=_after_polls(1))
    rows = _lines(out / "manifest.jsonl.partial")
    with_faces = [i for i, r in enumerate(rows) if r["faces"]]
    last = with_faces[-1]
    faces = (out / "faces.jsonl.partial").read_bytes()
    (out / "faces.jsonl.partial").write_bytes(faces[: len(faces) - 10])  # its last face torn
    (out / "manifest.jsonl.partial").write_text(
        "".join(json.dumps(r) + "\n" for r in rows[: last + 1]))
    summary = _run(pictures, out, model_path, resume=True)
    assert summary["resumed"] == last
    fresh = tmp_path / "fresh"
    _run(pictures, fresh, model_path)
    assert _results(out) == _results(fresh)


def test_resume_without_a_stopped_run_starts_from_the_first_picture(tmp_path, pictures,
                                                                      model_path):
    out = tmp_path / "out"
    first = _run(pictures, out, model_path, resume=True)
    assert "resumed" not in first and first["total"] == first["ok"] > CHUNK
    again = _run(pictures, out, model_path, resume=True)  # a finished run is not taken up
    assert "resumed" not in again and again["total"] == first["total"]


def test_a_run_that_fails_gives_the_stopped_run_back(tmp_path):
    """The writer sets a stopped run's files aside under its lock; discarding puts them back."""
    out = tmp_path / "out"
    stopped = ManifestWriter(out, ["with_mask"], facts={"threshold": 0.5})
    stopped.write({"source": "a.png", "status": "ok", "label": "with_mask", "faces": 0,
                   "face_rows": []})
    stopped.keep_unfinished()
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "run.json.partial" in files

    taking = ManifestWriter(out, ["with_mask"], facts={"threshold": 0.5}, take_up=True)
    assert sorted(taking.stopped) == ["faces.csv", "faces.jsonl", "manifest.csv",
                                      "manifest.jsonl", "run.json"]
    assert all(p.name.endswith(".stopped") for p in taking.stopped.values())
    taking.discard()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files

    finishing = ManifestWriter(out, ["with_mask"], facts={"threshold": 0.5}, take_up=True)
    finishing.close({"total": 0})
    assert sorted(p.name for p in out.iterdir()) == [
        "faces.csv", "faces.jsonl", "manifest.csv", "manifest.jsonl", "summary.json"]


def test_resume_with_a_csv_only_stopped_run_says_why(tmp_path, pictures, model_path):
    out = tmp_path / "out"
    _run(pictures, out, model_path, stop=_after_polls(1), formats=("csv",))
    with pytest.raises(UsageError, match="wrote no manifest.jsonl"):
        _run(pictures, out, model_path, resume=True)
    assert (out / "manifest.csv.partial").is_file()  # given back as it was


def test_an_s3_run_is_taken_up_too(s3, s3_client, tmp_path, face_pictures, model_path):
    """Sources are s3:// URLs there; a picture overwritten since the stop is classified again."""
    s3_client.create_bucket(Bucket="photos")
    bodies = [p.read_bytes() for p in face_pictures]
    for i in range(CHUNK + 4):
        s3_client.put_object(Bucket="photos", Key=f"in/{i:03d}.jpg", Body=bodies[i % len(bodies)])
    s3_client.put_object(Bucket="photos", Key="in/000_notes.txt", Body=b"not a picture")
    out = tmp_path / "out"
    stopped = run_batch("s3://photos/in/", out, model=str(model_path), workers=0,
                        show_progress=False, stop=_after_polls(1))
    assert stopped["total"] == CHUNK
    s3_client.put_object(Bucket="photos", Key="in/001.jpg", Body=bodies[-1])  # overwritten
    summary = run_batch("s3://photos/in/", out, model=str(model_path), workers=0,
                        show_progress=False, resume=True)
    # Not kept: the error row of the text file (tried again) and the overwritten picture.
    assert summary["resumed"] == CHUNK - 2 and summary["total"] == CHUNK + 5
    fresh = tmp_path / "fresh"
    run_batch("s3://photos/in/", fresh, model=str(model_path), workers=0, show_progress=False)
    assert _results(out) == _results(fresh)


def test_names_that_are_not_utf8_or_hold_line_ends_are_taken_up(tmp_path, model_path):
    """Rows are matched to pictures by name: names the JSON Lines keep as surrogate escapes or
    that hold line ends match again, and no picture gets two rows."""
    root = tmp_path / "in"
    root.mkdir()
    picture = encode(gradient(48, 48), "PNG")
    # "!" sorts before the digits: these are among the first task's pictures.
    odd = [b"!caf\xe9.png", "!a\u2028b.png".encode(), b"!line\nbreak.png", b"!x\ry.png"]
    for name in odd + [f"{i:03d}.png".encode() for i in range(CHUNK)]:
        with open(os.fsencode(root) + b"/" + name, "wb") as fh:
            fh.write(picture)
    out = tmp_path / "out"
    stopped = _run(root, out, model_path, stop=_after_polls(1))
    assert stopped["total"] == CHUNK
    done = {r["source"] for r in _lines_raw(out / "manifest.jsonl.partial")}
    assert {"!caf\udce9.png", "!a\u2028b.png", "!line\nbreak.png", "!x\ry.png"} <= done
    summary = _run(root, out, model_path, resume=True)
    assert summary["resumed"] == CHUNK and summary["total"] == CHUNK + len(odd)
    sources = [r["source"] for r in _lines_raw(out / "manifest.jsonl")]
    assert len(sources) == len(set(sources)) == CHUNK + len(odd)


def test_a_resumed_run_stopped_again_keeps_every_row(tmp_path, pictures, model_path):
    """The rows taken up go into the new run's files even when it is stopped before the new
    rows they sort after: a third run takes up both."""
    out = tmp_path / "out"
    _run(pictures, out, model_path, stop=_after_polls(1))
    first = _stable(_lines(out / "manifest.jsonl.partial"))
    # Pictures added since, sorting before every one done: the next run starts with them.
    added = sorted(p for p in pictures.rglob("*") if p.is_file())[: CHUNK + 2]
    for i, p in enumerate(added):
        shutil.copyfile(p, pictures / f"!{i:02d}{p.suffix}")
    second = _run(pictures, out, model_path, resume=True, stop=_after_polls(1))
    assert second["stopped"] and second["total"] == 2 * CHUNK < second["listed"]
    rows = _stable(_lines(out / "manifest.jsonl.partial"))
    assert all(r["source"].startswith("!") for r in rows[:CHUNK]) and rows[CHUNK:] == first
    final = _run(pictures, out, model_path, resume=True)
    assert final["resumed"] == 2 * CHUNK
    fresh = tmp_path / "fresh"
    _run(pictures, fresh, model_path)
    assert _results(out) == _results(fresh)


def test_merge_writes_each_row_taken_up_once_in_source_order(tmp_path):
    """Rows taken up go in among the new ones by source; a source the stopped file holds twice
    is written once, and rows no new row sorts after are written by finish()."""
    def row(name: str) -> dict:
        return {"source": name, "status": "ok", "faces": 0}

    manifest = tmp_path / "manifest.jsonl.stopped"
    manifest.write_text("".join(json.dumps(row(s)) + "\n" for s in ("a", "c", "c", "e", "f")))
    written: list[str] = []
    merge = Merge({"manifest.jsonl": manifest}, TakenUp(kept={"a", "c", "e", "f"}),
                  lambda r: written.append(r["source"]))
    for name in ("b", "d"):
        merge(row(name))
    assert written == ["a", "b", "c", "d"]
    merge.finish()
    merge.close()
    assert written == ["a", "b", "c", "d", "e", "f"]
