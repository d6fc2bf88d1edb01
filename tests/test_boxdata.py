"""Training from Pascal VOC box datasets: crops, the by-picture split, a 3-class model end to end,
and a 2-class model still serving the per-face stage."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image, ImageDraw

from maskcore.boxdata import audit_boxes, load_box_dataset
from maskcore.card import ModelCard
from maskcore.cli import main
from maskcore.decode import decode_refs
from maskcore.detector import DetectorSpec
from maskcore.preprocess import PreprocessSpec, crop_face
from maskcore.storage import LocalSource
from maskcore.voc import read_voc, split_of_digest
from tests.helpers import encode
from tests.test_train import FAST, make_dataset

KINDS = {"with_mask": "disc", "without_mask": "square", "mask_weared_incorrect": "bar"}


def _draw(d: ImageDraw.ImageDraw, kind: str, box: tuple[int, int, int, int],
          colour: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = box
    if kind == "disc":
        d.ellipse(box, fill=colour)
    elif kind == "square":
        d.rectangle(box, fill=colour)
    else:
        d.rectangle((x0, y0 + (y1 - y0) // 3, x1, y0 + (y1 - y0) // 2), fill=colour)


def make_voc(root: Path, pictures: int = 36) -> Path:
    """Street-like pictures, each with one face-sized shape of every class, a box that runs over
    the picture's edge and a degenerate (empty) box."""
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    rng = np.random.default_rng(1)
    for i in range(pictures):
        im = Image.new("RGB", (160, 120), tuple(int(c) for c in rng.integers(0, 80, 3)))
        d = ImageDraw.Draw(im)
        objs = []
        for k, (label, kind) in enumerate(KINDS.items()):
            x, y = 8 + 50 * k + int(rng.integers(0, 8)), int(rng.integers(10, 70))
            box = (x, y, x + 30, y + 30)
            _draw(d, kind, box, tuple(int(c) for c in rng.integers(150, 255, 3)))
            objs.append((label, box))
        objs.append(("with_mask", (140, 100, 190, 150)))  # over the edge: clipped
        objs.append(("without_mask", (50, 50, 50, 80)))  # no width: dropped
        im.save(root / "images" / f"p{i:03d}.png")
        body = "".join(
            f"<object><name>{lab}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
            f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for lab, b in objs)
        (root / "annotations" / f"p{i:03d}.xml").write_text(
            f"<annotation><filename>p{i:03d}.png</filename><size><width>160</width>"
            f"<height>120</height></size>{body}</annotation>")
    return root


def test_voc_boxes_are_clipped_and_degenerate_ones_dropped(tmp_path):
    root = make_voc(tmp_path / "voc", pictures=1)
    voc = read_voc(root / "annotations" / "p000.xml")
    assert len(voc.boxes) == 4
    assert voc.boxes[-1].xyxy == (140.0, 100.0, 160.0, 120.0)
    assert (voc.clipped, voc.dropped) == (1, 1)


def test_faces_of_one_picture_share_its_split_and_crops_match_serving(tmp_path):
    root = make_voc(tmp_path / "voc")
    spec = PreprocessSpec(size=(32, 32))
    faces = load_box_dataset(root, spec=spec, margin=0.1, workers=0, progress=False)
    assert len(faces.labels) == 36 * 4
    by_picture: dict[str, set[str]] = {}
    for source, split in zip(faces.sources, faces.splits, strict=True):
        by_picture.setdefault(source.split("#")[0], set()).add(split)
    for name, splits in by_picture.items():
        digest = hashlib.sha256((root / "images" / name).read_bytes()).hexdigest()
        assert splits == {split_of_digest(digest)}, name
    assert set(faces.splits) == {"train", "val", "test"}
    report = audit_boxes(faces)
    assert report["faces_per_class"] == {"mask_weared_incorrect": 36, "with_mask": 72,
                                         "without_mask": 36}
    # The crop training learned from is the crop serving makes for a detection at that box:
    # decoded by the face stage's decode task, cut by the same function.
    source = LocalSource(root / "images")
    items, _ = decode_refs(source, list(source.list())[:1], spec, DetectorSpec())
    box = read_voc(root / "annotations" / "p000.xml").boxes[1].xyxy
    served = crop_face(items[0].picture, box, spec, 0.1)
    trained = faces.x[faces.sources.index("p000.png#1")]
    np.testing.assert_array_equal(served, trained)


def closeups(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "closeups", ["with_mask", "without_mask"], 20,
                        ["disc", "square"])


def train_on_both(tmp_path: Path, *extra: str) -> tuple[Path, Path]:
    """Train on close-ups and a VOC dataset made here; returns the VOC folder and the model's."""
    voc = make_voc(tmp_path / "voc")
    out = tmp_path / "model"
    r = CliRunner().invoke(main, ["train", str(closeups(tmp_path)), str(voc), "--out", str(out),
                                  *FAST, *extra])
    assert r.exit_code == 0, r.output
    assert "box dataset voc" in r.output and "mask_weared_incorrect" in r.output
    return voc, out


def test_three_classes_from_boxes_and_folders_train_and_serve(tmp_path):
    voc, out = train_on_both(tmp_path, "--crop-margin", "0.15")
    card = ModelCard.read(out / "model.json")
    assert card.classes == ["with_mask", "without_mask", "mask_weared_incorrect"]
    assert card.extra["face_crop"]["margin"] == 0.15
    names = {d["name"] for d in card.extra["training_data"]["datasets"]}
    assert names == {"voc", "closeups"}
    assert str(tmp_path) not in json.dumps(card.extra)  # names and fingerprints, not paths
    report = json.loads((out / "report.json").read_text())
    assert set(report["test_per_dataset"]) == {"voc", "closeups"}
    per_class = report["test"]["per_class"]
    assert set(per_class) == set(card.classes)
    assert all({"precision", "recall"} <= set(v) for v in per_class.values())
    # the 3-class model serves: rows carry three probabilities
    r = CliRunner().invoke(main, ["batch", str(voc / "images"), "--out", str(tmp_path / "res"),
                                  "--model", str(out), "--workers", "0", "--no-progress"])
    assert r.exit_code == 0, r.output
    row = json.loads((tmp_path / "res" / "manifest.jsonl").read_text().split("\n")[0])
    assert set(row["probabilities"]) == set(card.classes)


def test_a_two_class_model_still_serves_the_face_stage(tmp_path):
    data = make_dataset(tmp_path / "data", ["with_mask", "without_mask"], 20, ["disc", "square"])
    out = tmp_path / "model"
    r = CliRunner().invoke(main, ["train", str(data), "--out", str(out), *FAST])
    assert r.exit_code == 0, r.output
    pics = tmp_path / "pics"
    pics.mkdir()
    (pics / "face.jpg").write_bytes((Path(__file__).parents[1] / "examples" /
                                     "without_mask_4.jpg").read_bytes())
    (pics / "plain.png").write_bytes(encode(Image.new("RGB", (90, 60), (30, 90, 200))))
    r = CliRunner().invoke(main, ["batch", str(pics), "--out", str(tmp_path / "res"), "--model",
                                  str(out), "--workers", "0", "--no-progress"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in (tmp_path / "res" / "manifest.jsonl").read_text().split("\n")
            if x]
    assert [r["faces"] for r in rows] == [1, 0]
    assert all(set(r["probabilities"]) == {"with_mask", "without_mask"} for r in rows)


def test_audit_command_on_a_box_dataset(tmp_path):
    root = make_voc(tmp_path / "voc", pictures=6)
    # A copy of a picture under another name (with its boxes), a VOC file whose picture is
    # gone, a picture nobody boxed, and a box with no coordinates.
    (root / "images" / "copy.png").write_bytes((root / "images" / "p000.png").read_bytes())
    xml = (root / "annotations" / "p000.xml").read_text()
    (root / "annotations" / "copy.xml").write_text(xml.replace("p000.png", "copy.png"))
    (root / "annotations" / "gone.xml").write_text(xml.replace("p000.png", "gone.png"))
    Image.new("RGB", (40, 30)).save(root / "images" / "unboxed.png")
    (root / "annotations" / "p001.xml").write_text(
        (root / "annotations" / "p001.xml").read_text().replace(
            "</annotation>", "<object><name>with_mask</name><bndbox><xmin>3</xmin>"
            "</bndbox></object></annotation>"))
    out = tmp_path / "audit.json"
    r = CliRunner().invoke(main, ["audit", str(root), "--json", str(out), "--workers", "0"])
    assert r.exit_code == 0, r.output
    assert "box dataset voc: 7 pictures, 28 faces" in r.output
    report = json.loads(out.read_text())
    assert report["faces_per_class"] == {"mask_weared_incorrect": 7, "with_mask": 14,
                                         "without_mask": 7}
    # every picture has one box over its edge and one with no width; p001 one without corners
    assert report["boxes_clipped"] == 7 and report["boxes_dropped"] == 8
    assert report["redundant_copies"] == 1
    assert report["without_picture"] == ["gone.xml"]
    assert report["without_boxes"] == ["unboxed.png"]
    assert "VOC files whose picture is missing: 1 (first: gone.xml)" in r.output
    # a copy takes its original's split, faces and all
    digest = hashlib.sha256((root / "images" / "copy.png").read_bytes()).hexdigest()
    assert sum(report["faces_per_split"].values()) == 28
    assert report["faces_per_split"][split_of_digest(digest)] >= 8
    # Pointed at the pictures' folder, it names the dataset to give instead.
    r = CliRunner().invoke(main, ["audit", str(root / "images")])
    assert r.exit_code == 2 and f"of the box dataset {root}: give that" in r.output, r.output


def test_cut_faces_writes_each_boxed_face_of_a_split_as_a_picture(tmp_path):
    root = make_voc(tmp_path / "voc", pictures=12)
    out = tmp_path / "cut"
    r = CliRunner().invoke(main, ["cut-faces", str(root), "--out", str(out), "--split", "all",
                                  "--margin", "0.5", "--min-width", "25"])
    assert r.exit_code == 0, r.output
    # the three 30 px faces of each picture; the clipped 20 px box is under --min-width
    for label in KINDS:
        assert len(list((out / label).glob("*.png"))) == 12
    voc = read_voc(root / "annotations" / "p003.xml")
    picture = Image.open(root / "images" / "p003.png")
    for i, box in enumerate(voc.boxes[:3]):
        cut = Image.open(out / box.label / f"p003_{i}.png")
        cx, cy = (box.xyxy[0] + box.xyxy[2]) / 2, (box.xyxy[1] + box.xyxy[3]) / 2
        region = (int(np.floor(cx - 30)), int(np.floor(cy - 30)), int(np.ceil(cx + 30)),
                  int(np.ceil(cy + 30)))  # 30 px and half of it on each side, square
        region = (max(region[0], 0), max(region[1], 0), min(region[2], 160),
                  min(region[3], 120))
        assert np.array_equal(np.asarray(cut), np.asarray(picture.crop(region)))
    # --split keeps the faces of that split's pictures only, as training splits them
    val = [p.stem for p in sorted((root / "images").glob("*.png"))
           if split_of_digest(hashlib.sha256(p.read_bytes()).hexdigest()) == "val"]
    assert 0 < len(val) < 12, "the made pictures should fall in more than one split"
    r = CliRunner().invoke(main, ["cut-faces", str(root), "--out", str(tmp_path / "val"),
                                  "--min-width", "0"])
    assert r.exit_code == 0, r.output
    written = sorted(p.stem for p in (tmp_path / "val").rglob("*.png"))
    assert written == sorted(f"{stem}_{i}" for stem in val for i in range(4))
    # a folder that holds files already is refused, not mixed into
    r = CliRunner().invoke(main, ["cut-faces", str(root), "--out", str(out)])
    assert r.exit_code == 2 and "not empty" in r.output


def test_refit_adds_the_box_datasets_validation_faces(tmp_path):
    _, out = train_on_both(tmp_path, "--epochs", "3", "--refit")
    card = ModelCard.read(out / "model.json")
    training = card.extra["training"]
    refit = training["refit"]
    per_split = {d["name"]: d for d in card.extra["training_data"]["datasets"]}
    voc_val = per_split["voc"]["faces_per_split"]["val"]
    closeups = per_split["closeups"]["split_sizes"]
    voc_train = per_split["voc"]["faces_per_split"]["train"]
    # The box dataset's validation faces join training; the close-ups' stay out.
    assert refit["validation_added"] == {"voc": voc_val} and voc_val > 0
    assert refit["samples"] == closeups["train"] + voc_train + voc_val
    assert refit["epochs"] == training["best_epoch"]
    history = json.loads((out / "report.json").read_text())["refit"]["history"]
    assert len(history["loss"]) == refit["epochs"]
    assert len(history["val_loss"]) == refit["epochs"]  # on the close-ups' validation alone
    assert "class_weight" in refit


def test_refit_without_a_box_dataset_is_refused_before_training(tmp_path):
    r = CliRunner().invoke(main, ["train", str(closeups(tmp_path)), "--out", str(tmp_path / "m"),
                                  *FAST, "--refit"])
    assert r.exit_code == 2
    assert "no box dataset" in r.output and "Epoch" not in r.output
    assert not (tmp_path / "m").exists()
