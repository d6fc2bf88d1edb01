"""Dataset scan and audit on a tiny generated dataset with planted problems, and on the shared one."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from maskcore.cli import main
from maskcore.dataset import audit, inspect, scan
from maskcore.errors import DatasetError
from maskcore.split import split_dataset
from tests.helpers import SHARED_DATA, encode, gradient


@pytest.fixture
def tiny(tmp_path):
    root = tmp_path / "data"
    a, b = root / "with_mask", root / "without_mask"
    (a / "nested").mkdir(parents=True)
    b.mkdir()
    for i in range(6):
        (a / f"a{i}.jpg").write_bytes(encode(gradient(40 + i, 30, seed=i), "JPEG"))
    for i in range(5):
        (b / f"b{i}.png").write_bytes(encode(gradient(30, 40 + i, seed=100 + i), "PNG"))
    dup = encode(gradient(33, 33, seed=50), "PNG")
    (a / "nested" / "copy 1.png").write_bytes(dup)  # recursion + a duplicate inside one class
    (a / "copy 2.png").write_bytes(dup)
    (b / "ß odd näme (1).png").write_bytes(encode(gradient(20, 20, seed=7), "PNG"))
    (a / "cross.png").write_bytes(encode(gradient(25, 25, seed=77), "PNG"))
    (b / "cross again.png").write_bytes(encode(gradient(25, 25, seed=77), "PNG"))  # label noise
    (a / "jpeg-named.png").write_bytes(encode(gradient(31, 31, seed=9), "JPEG"))
    (b / "empty.jpg").write_bytes(b"")
    (b / "notes.jpg").write_text("not a picture")
    (a / ".DS_Store").write_bytes(b"\0\0")
    (root / ".hidden").mkdir()
    (root / "README.txt").write_text("stray")
    return root


def test_scan_classes_hidden_and_stray(tiny):
    index = scan(tiny)
    assert index.classes == ("with_mask", "without_mask")
    assert len(index.samples) == 6 + 2 + 1 + 1 + 5 + 1 + 1 + 2
    assert index.hidden_skipped == 2
    assert index.stray_files == ("README.txt",)
    assert all(not p.path.name.startswith(".") for p in index.samples)


def test_audit_report(tiny):
    index = scan(tiny)
    infos, arrays = inspect(index, workers=2, keep_arrays=True, progress=False)
    report = audit(index, infos)
    assert report["files"] == 19
    assert report["files_per_class"] == {"with_mask": 10, "without_mask": 9}
    assert report["duplicates"]["redundant_copies"] == 2
    assert report["duplicates"]["groups"] == 2
    assert report["duplicates"]["cross_class_groups"] == 1
    bad = {u["file"]: u["error"] for u in report["unreadable"]}
    assert set(bad) == {"without_mask/empty.jpg", "without_mask/notes.jpg"}
    assert "empty" in bad["without_mask/empty.jpg"]
    assert report["formats"] == {"PNG": 10, "JPEG": 7}
    assert report["width"]["max"] == 45
    assert len(arrays) == 17  # one per readable file
    assert json.loads(json.dumps(report)) == report  # JSON-ready


def test_split_keeps_duplicates_together_and_is_seeded(tiny):
    index = scan(tiny)
    infos, _ = inspect(index, workers=0, progress=False)
    s1 = split_dataset(infos, val=0.2, test=0.2, seed=3)
    s2 = split_dataset(infos, val=0.2, test=0.2, seed=3)
    assert s1 == s2
    sets = [set(s1.hashes[n]) for n in ("train", "val", "test")]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert sum(len(s) for s in sets) == len({i.sha256 for i in infos if not i.error})
    # every class is in every split
    for part in (s1.train, s1.val, s1.test):
        assert {s1.labels[k] for k in part} == {0, 1}


def test_scan_refuses_a_folder_without_classes(tmp_path):
    with pytest.raises(DatasetError, match="no class folders"):
        scan(tmp_path)
    with pytest.raises(DatasetError, match="not found"):
        scan(tmp_path / "missing")


def test_audit_command_table_and_json(tiny, tmp_path):
    out = tmp_path / "report.json"
    r = CliRunner().invoke(main, ["audit", str(tiny), "--json", str(out), "--workers", "0"])
    assert r.exit_code == 0, r.output
    assert "with_mask" in r.output and "redundant copies" in r.output
    assert json.loads(out.read_text())["files"] == 19
    r = CliRunner().invoke(main, ["audit", str(tiny / "nope")])
    assert r.exit_code == 2
    assert "DatasetError" in r.output and "Traceback" not in r.output


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="the shared face-mask dataset is not here")
def test_audit_of_the_shared_dataset():
    index = scan(SHARED_DATA)
    infos, _ = inspect(index, progress=False)
    report = audit(index, infos)
    assert report["files"] == 4094
    assert report["files_per_class"] == {"with_mask": 2164, "without_mask": 1930}
    assert report["duplicates"]["redundant_copies"] == 103
    assert report["duplicates"]["cross_class_groups"] == 0
    assert report["unreadable"] == []
