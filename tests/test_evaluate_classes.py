"""`maskcore evaluate RESULTS --classes`: a run over class folders scored picture by picture."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from maskcore.cli import main
from maskcore.errors import UsageError
from maskcore.evaluate_classes import evaluate_classes, true_class
from maskcore.metrics import wilson
from maskcore.results import RunResults
from tests.conftest import BUNDLED_MODEL

CLASSES = ("with_mask", "without_mask")


def _class_of(picture: Path) -> str:
    """The class a test picture shows: its folder in the shared dataset, or its name's start
    in examples/ (with_mask_0.jpg)."""
    if picture.parent.name in CLASSES:
        return picture.parent.name
    return "without_mask" if picture.name.startswith("without_mask") else "with_mask"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, face_pictures) -> Path:
    """ROOT/<class>/ with real pictures, an exact copy, a cut file, a stray file at the root
    and a folder that names no class."""
    root = tmp_path_factory.mktemp("classes") / "data"
    for i, p in enumerate(face_pictures):
        folder = root / _class_of(p)
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, folder / f"{i:03d}{p.suffix}")
    first = sorted((root / "with_mask").iterdir())[0]
    shutil.copyfile(first, root / "with_mask" / "copy_of_first.jpg")
    (root / "with_mask" / "cut.jpg").write_bytes(first.read_bytes()[:200])
    (root / "README.md").write_text("pictures by class\n")
    (root / "misc").mkdir()
    shutil.copyfile(first, root / "misc" / "other.jpg")
    return root


@pytest.fixture(scope="module")
def model_without_record(tmp_path_factory) -> Path:
    """The bundled model's files without its split record."""
    folder = tmp_path_factory.mktemp("model")
    for name in ("model.onnx", "model.int8.onnx", "model.json"):
        shutil.copyfile(BUNDLED_MODEL.with_name(name), folder / name)
    return folder


def _batch(dataset: Path, out: Path, model: Path, *extra: str) -> list[dict]:
    r = CliRunner().invoke(main, ["batch", str(dataset), "--out", str(out), "--model", str(model),
                                  "--faces", "off", "--workers", "0", "--no-progress", *extra])
    assert r.exit_code == 0, r.output
    return [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]


def test_a_run_over_class_folders_is_scored_picture_by_picture(tmp_path, dataset,
                                                                 model_without_record):
    rows = _batch(dataset, tmp_path / "out", model_without_record)
    report = evaluate_classes(tmp_path / "out")
    in_classes = [r for r in rows if r["source"].split("/")[0] in CLASSES]
    ok = {r["sha256"]: r for r in in_classes if r["status"] == "ok"}  # the copy shares a hash
    assert report["pictures"] == len(ok) == len(in_classes) - 2  # less the copy and the cut file
    assert report["copies_counted_once"] == 1 and report["errors"] == 1
    assert report["outside_classes"] == {"": 1, "misc": 1}
    wrong = sorted(r["source"] for r in ok.values() if r["label"] != r["source"].split("/")[0])
    assert sorted(w["source"] for w in report["wrong_pictures"]) == wrong
    assert report["accuracy"] == round(1 - len(wrong) / len(ok), 4)
    counts = report["confusion"]["rows"]
    for c in CLASSES:
        mine = [r for r in ok.values() if r["source"].startswith(c + "/")]
        assert sum(counts[c]) == report["per_class"][c]["pictures"] == len(mine)
        col = report["confusion"]["columns"].index(c)
        assert counts[c][col] == sum(r["label"] == c for r in mine)
        # the recall's interval is Wilson's, and the terminal table prints it
        lo, hi = report["per_class"][c]["recall_ci95"]
        assert [lo, hi] == wilson(counts[c][col], len(mine))
        assert lo <= report["per_class"][c]["recall"] <= hi
    r = CliRunner().invoke(main, ["evaluate", str(tmp_path / "out"), "--classes"])
    assert r.exit_code == 0, r.output
    for c in CLASSES:
        lo, hi = report["per_class"][c]["recall_ci95"]
        assert f"(95% CI {lo:.2f}-{hi:.2f})" in r.output
    assert f"({len(wrong)} wrong)" in r.output and "1 exact copy counted once" in r.output
    assert "1 file in misc/, not a class of the model" in r.output


def test_uncertain_pictures_count_wrong(tmp_path, dataset, model_without_record):
    rows = _batch(dataset, tmp_path / "out", model_without_record, "--threshold", "0.9999")
    unsure = {r["sha256"] for r in rows if r["label"] == "uncertain"
              and r["source"].split("/")[0] in CLASSES}
    assert unsure, "a threshold this high leaves some pictures uncertain"
    report = evaluate_classes(tmp_path / "out")
    col = report["confusion"]["columns"].index("uncertain")
    assert sum(row[col] for row in report["confusion"]["rows"].values()) == len(unsure)
    assert sum(w["label"] == "uncertain" for w in report["wrong_pictures"]) == len(unsure)


def test_split_comes_from_the_models_record_or_the_one_given(tmp_path, dataset,
                                                             model_without_record):
    rows = _batch(dataset, tmp_path / "out", model_without_record)
    # The run's model has no split.json beside it: a clear refusal, not a guess.
    r = CliRunner().invoke(main, ["evaluate", str(tmp_path / "out"), "--classes",
                                  "--split", "test"])
    assert r.exit_code == 2 and "cannot read the split record" in r.output
    picked = sorted({r["sha256"] for r in rows if r["status"] == "ok"
                     and r["source"].startswith("without_mask/")})[:2]
    record = tmp_path / "split.json"
    record.write_text(json.dumps({"hashes": {"train": [], "val": [], "test": picked}}))
    report = evaluate_classes(tmp_path / "out", split="test", split_record=record)
    assert report["pictures"] == 2 and report["per_class"].keys() == {"without_mask"}
    with pytest.raises(UsageError, match="in the val split"):
        evaluate_classes(tmp_path / "out", split="val", split_record=tmp_path)


def test_the_class_of_a_picture_is_its_first_folder_under_the_input():
    local = RunResults("out", rows=[], faces={}, summary={"input": "data/"})
    assert true_class("with_mask/a/b.jpg", local) == "with_mask"
    assert true_class("README.md", local) == ""
    bucket = RunResults("out", rows=[], faces={}, summary={"input": "s3://b/data"})
    assert true_class("s3://b/data/without_mask/x.jpg", bucket) == "without_mask"
    with pytest.raises(UsageError, match="not under the input"):
        true_class("s3://b/elsewhere/with_mask/x.jpg", bucket)


def test_evaluate_takes_boxes_or_classes_not_both(tmp_path):
    for args in ([], ["--classes", "--boxes", str(tmp_path)], ["--boxes", str(tmp_path),
                                                                 "--split-record", str(tmp_path)]):
        r = CliRunner().invoke(main, ["evaluate", str(tmp_path), *args])
        assert r.exit_code == 2, (args, r.output)
