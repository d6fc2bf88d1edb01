"""Masks drawn on bare close-ups (maskcore.drawn_masks): the landmarks of real faces, each way
covering what it says, the draws tied to the picture, and the training job and `maskcore
draw-masks` using them."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageOps

from maskcore.card import ModelCard
from maskcore.cli import main
from maskcore.drawn_masks import WAY_SHARES, WAYS, LandmarkFinder, draw_mask, way_for
from maskcore.preprocess import decode
from tests.test_boxdata import make_voc
from tests.test_train import FAST, make_dataset

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# The README's bare close-ups whose face is one, frontal enough to carry a drawn mask
# (without_mask_5 is passed over: its face covers too little of it).
BARE = [EXAMPLES / f"without_mask_{i}.jpg" for i in range(5)]


@pytest.fixture(scope="module")
def finder() -> LandmarkFinder:
    return LandmarkFinder(threads=1)


def _image(path: Path) -> Image.Image:
    return decode(path.read_bytes()).image


def test_landmarks_of_real_close_ups_lie_where_a_face_has_them(finder):
    for path in BARE:
        marks = finder.find(_image(path))
        assert marks is not None, path.name
        left, right, nose, mouth_l, mouth_r = marks
        assert left[0] < right[0] and mouth_l[0] < mouth_r[0], path.name
        eyes_y, mouth_y = (left[1] + right[1]) / 2, (mouth_l[1] + mouth_r[1]) / 2
        assert eyes_y < nose[1] < mouth_y, path.name
    # no face, no landmarks; and a face too small a share of its picture is passed over
    assert finder.find(Image.new("RGB", (200, 160), (90, 140, 200))) is None
    small = Image.new("RGB", (600, 600), (40, 40, 40))
    small.paste(_image(BARE[0]), (10, 10))
    assert finder.find(small) is None


# Which parts of the face each way covers: the bridge of the nose, its tip, the mouth, the chin.
COVERS = {
    "worn_right": {"bridge": True, "nose": True, "mouth": True, "chin": True},
    "nose_bare": {"bridge": False, "nose": False, "mouth": True, "chin": True},
    "chin_bare": {"bridge": True, "nose": True, "mouth": True, "chin": False},
    "on_chin": {"bridge": False, "nose": False, "mouth": False, "chin": True},
}


def test_each_way_covers_what_it_says(finder):
    image = _image(BARE[4])  # the largest: 320 x 433
    marks = finder.find(image)
    assert marks is not None
    eyes = (marks[0] + marks[1]) / 2
    mouth = (marks[3] + marks[4]) / 2
    points = {"bridge": eyes + 0.35 * (mouth - eyes), "nose": marks[2], "mouth": mouth,
              "chin": mouth + 0.55 * (mouth - eyes)}
    before = np.asarray(image, np.float32)
    assert set(COVERS) == set(WAYS)
    for way, expected in COVERS.items():
        for seed in range(3):  # several colours and places
            after = np.asarray(draw_mask(image, marks, way, random.Random(seed)), np.float32)
            for part, covered in expected.items():
                x, y = (int(round(v)) for v in points[part])
                change = float(np.abs(after[y - 2:y + 3, x - 2:x + 3] -
                                      before[y - 2:y + 3, x - 2:x + 3]).mean())
                assert (change > 8) == covered, (way, seed, part, change)


def test_each_picture_gets_its_own_way_the_same_every_run():
    digests = [f"{i:064x}" for i in range(4000)]
    first = [way_for(d, 0)[0] for d in digests]
    assert first == [way_for(d, 0)[0] for d in digests]
    assert first != [way_for(d, 1)[0] for d in digests]
    counts = Counter(first)
    for way, share in WAY_SHARES.items():
        assert abs(counts[way] / len(digests) - share) < 0.03, (way, counts)


def _close_ups(root: Path) -> Path:
    """A folder-per-class dataset of real close-ups: each README example four ways (as it is,
    mirrored, and both enlarged), so that each split has bare faces to draw on."""
    for cls, paths in (("without_mask", BARE),
                       ("with_mask", sorted(EXAMPLES.glob("with_mask_*.*")))):
        (root / cls).mkdir(parents=True)
        for path in paths:
            image = _image(path)
            for k, variant in enumerate((image, ImageOps.mirror(image))):
                for scale in (1.0, 1.25):
                    size = (round(variant.width * scale), round(variant.height * scale))
                    variant.resize(size).save(root / cls / f"{path.stem}_{k}_{scale}.png")
    return root


def test_training_draws_masks_in_each_close_ups_split_and_the_command_writes_them(tmp_path,
                                                                                finder):
    folders = _close_ups(tmp_path / "closeups")
    voc = make_voc(tmp_path / "voc")
    out = tmp_path / "model"
    r = CliRunner().invoke(main, ["train", str(folders), str(voc), "--out", str(out), *FAST,
                                  "--drawn-masks"])
    assert r.exit_code == 0, r.output
    card = ModelCard.read(out / "model.json")
    drawn = {d["name"]: d for d in card.extra["training_data"]["datasets"]}["closeups-drawn-masks"]
    ways = drawn["ways_per_split"]
    assert set(ways) == {"train", "val", "test"} and all(sum(w.values()) for w in ways.values())
    # every bare close-up whose face can carry a mask got one drawing, in its own split
    record = json.loads((out / "split.json").read_text())
    drawable = {hashlib.sha256(p.read_bytes()).hexdigest()
                for p in (folders / "without_mask").iterdir() if finder.find(_image(p)) is not None}
    assert len(drawable) >= 15
    for split, hashes in record["hashes"].items():
        assert sum(ways[split].values()) == len(drawable & set(hashes)), split
    report = json.loads((out / "report.json").read_text())
    assert "closeups-drawn-masks" in report["test_per_dataset"]

    # the same drawings written out, for the bare close-ups of one split of that record
    written = tmp_path / "drawn"
    r = CliRunner().invoke(main, ["draw-masks", str(folders), "--out", str(written),
                                  "--split", "test", "--split-record", str(out)])
    assert r.exit_code == 0, r.output
    files = sorted(written.glob("*/*.jpg"))
    assert len(files) == sum(ways["test"].values())
    by_way = Counter(f.name.split(".")[-2] for f in files)
    assert by_way == Counter({w: n for w, n in ways["test"].items() if n})
    for f in files:
        assert f.parent.name == WAYS[f.name.split(".")[-2]]
    # it refuses to write into a folder that holds pictures already
    r = CliRunner().invoke(main, ["draw-masks", str(folders), "--out", str(written)])
    assert r.exit_code == 2 and "not empty" in r.output

    # a dataset with no face to draw on is refused by name, not trained on silently
    shapes = make_dataset(tmp_path / "shapes", ["with_mask", "without_mask"], 20,
                          ["disc", "square"])
    r = CliRunner().invoke(main, ["train", str(shapes), "--out", str(tmp_path / "m2"), *FAST,
                                  "--drawn-masks"])
    assert r.exit_code == 2 and "has a face to draw a mask on" in r.output, r.output
