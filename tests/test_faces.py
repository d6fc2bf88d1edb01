"""The per-face stage: the detector's decoding, boxes in the original picture's pixels (EXIF
orientation included), the fallback to the whole picture, the rows, and the evaluation."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw

from maskcore.cli import main
from maskcore.decode import decode_refs, finer_picture
from maskcore.detector import (
    DEFAULT_DETECTOR,
    Detections,
    DetectorSpec,
    FaceDetector,
    anchors,
    decode_boxes,
    encode_boxes,
    merge_looks,
    nms,
    suppress,
)
from maskcore.errors import ModelError
from maskcore.evaluate import evaluate_run, iou_matrix
from maskcore.faces import open_analyzer, read_closeup
from maskcore.preprocess import DEFAULT_SPEC, crop_face, decode, face_region, to_input
from maskcore.storage import LocalSource
from tests.conftest import EXAMPLES
from tests.helpers import encode, gradient

FACE = EXAMPLES / "without_mask_0.jpg"  # a close-up: one face filling most of the frame
HALVES = Path(__file__).parent / "data" / "closeup_halves.jpg"  # a face boxed whole and by half


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector(device="cpu", threads=1)


@pytest.fixture(scope="module")
def face_box(detector) -> np.ndarray:
    """Where the detector puts the face within the close-up (the close-up's own coordinates),
    learnt from the close-up pasted alone on the plain canvas. Not from the close-up by itself:
    there the face runs over every edge of the frame, which is not what the pasted faces show."""
    x, y, w = REFERENCE
    found = detector.detect([scene([REFERENCE])])[0]
    assert len(found) == 1, f"the pasted close-up should hold exactly one face, found {len(found)}"
    s = w / Image.open(FACE).width
    return (found.xyxy[0] - np.array([x, y, x, y], np.float32)) / s


def scene(placements: list[tuple[int, int, int]], size: tuple[int, int] = (800, 520)
          ) -> Image.Image:
    """A plain street-like canvas with the close-up pasted at (x, y) scaled to width w."""
    im = gradient(*size, seed=3)
    im = Image.blend(im, Image.new("RGB", size, (120, 120, 120)), 0.8)
    face = Image.open(FACE).convert("RGB")
    for x, y, w in placements:
        h = round(face.height * w / face.width)
        im.paste(face.resize((w, h)), (x, y))
    return im


def expected_boxes(face_box: np.ndarray, placements: list[tuple[int, int, int]]) -> np.ndarray:
    face = Image.open(FACE)
    out = []
    for x, y, w in placements:
        s = w / face.width
        out.append([x + face_box[0] * s, y + face_box[1] * s, x + face_box[2] * s,
                    y + face_box[3] * s])
    return np.array(out, np.float32)


PLACES = [(40, 60, 160), (420, 40, 96), (600, 300, 64), (250, 330, 120)]
REFERENCE = (300, 200, 128)  # where face_box pastes the close-up alone


def _check(found: np.ndarray, want: np.ndarray, least_iou: float = 0.7) -> None:
    assert len(found) == len(want), (found, want)
    iou = iou_matrix(found, want)
    assert (iou.max(axis=0) >= least_iou).all(), iou  # every pasted face found where pasted


def _job_boxes(tmp_path: Path, name: str, data: bytes) -> np.ndarray:
    """The face boxes the batch job writes for one picture file."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / name).write_bytes(data)
    r = CliRunner().invoke(main, ["batch", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                                  "--workers", "0", "--no-progress"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in (tmp_path / "out" / "faces.jsonl").read_text().split("\n")
            if x]
    return np.array([[f["x0"], f["y0"], f["x1"], f["y1"]] for f in rows],
                    np.float32).reshape(-1, 4)


def test_pasted_faces_are_found_where_they_were_pasted(detector, face_box):
    im = scene(PLACES)
    found = detector.detect([im])[0]
    _check(found.xyxy, expected_boxes(face_box, PLACES))
    assert (found.score >= detector.spec.score_threshold).all()


@pytest.mark.parametrize("orientation, transpose", [(6, Image.Transpose.ROTATE_90),
                                                    (8, Image.Transpose.ROTATE_270)])
def test_boxes_are_in_the_upright_picture_of_an_exif_rotated_file(detector, face_box, tmp_path,
                                                                  orientation, transpose):
    """The file stores the picture turned a quarter and says so in EXIF: boxes must come out in
    the upright picture's pixels, as the viewer sees it (and as the rows give width/height)."""
    upright = scene(PLACES)
    stored = upright.transpose(transpose)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(stored, "JPEG", quality=95, exif=exif.tobytes())
    pic = decode(data)
    assert (pic.width, pic.height) == upright.size
    found = detector.detect([pic.image], [pic.factor], [(pic.width, pic.height)])[0]
    _check(found.xyxy, expected_boxes(face_box, PLACES))
    # and through the whole job: the face rows carry the same boxes
    _check(_job_boxes(tmp_path, "rotated.jpg", data), expected_boxes(face_box, PLACES))


def test_a_shrunk_jpeg_maps_boxes_back_to_original_pixels(detector, face_box):
    """A large JPEG is decoded at 1/2 or 1/4 scale (draft); boxes are still original pixels."""
    places = [(400, 300, 640), (2000, 900, 480)]
    big = scene(places, size=(3200, 2000))
    pic = decode(encode(big, "JPEG", quality=92), draft=detector.spec.canvas)
    assert pic.factor > 1.5  # the decoder did shrink it
    found = detector.detect([pic.image], [pic.factor], [(pic.width, pic.height)])[0]
    _check(found.xyxy, expected_boxes(face_box, places))


def test_a_large_picture_gets_a_second_finer_look(detector, face_box, tmp_path):
    """Faces small in a large picture: shrunk to the 640 px canvas they are a dozen pixels wide
    and the first look finds none of them; the second look, at 1280 px, finds each where it was
    pasted, in the detector and through the batch job's decoding (a JPEG it may shrink)."""
    places = [(200, 300, 40), (1200, 700, 48), (900, 200, 44)]
    im = scene(places, size=(1600, 1000))
    first_look_only = FaceDetector(device="cpu", threads=1, fine_canvas=0)
    assert len(first_look_only.detect([im])[0]) == 0
    # IoU 0.5, as the evaluation matches faces: the boxes of faces this small are looser
    _check(detector.detect([im])[0].xyxy, expected_boxes(face_box, places), 0.5)
    boxes = _job_boxes(tmp_path, "wide.jpg", encode(im, "JPEG", quality=92))
    _check(boxes, expected_boxes(face_box, places), 0.5)


def test_a_photograph_the_decoder_shrank_is_decoded_again_for_its_second_look(
        detector, face_box, tmp_path):
    """A camera-sized JPEG is decoded a quarter of its size for the first look (1,000 px: the
    decoder keeps both sides at least the 640 px canvas); its file is kept, and only because
    the first look leaves it unsettled it is decoded again at least 1,280 px large, for the
    second look and the crops. Its small faces are found where they were pasted."""
    places = [(500, 750, 100), (3000, 1750, 120), (2250, 500, 110)]
    data = encode(scene(places, size=(4000, 2600)), "JPEG", quality=90)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "camera.jpg").write_bytes(data)
    source = LocalSource(tmp_path / "in")
    item = decode_refs(source, list(source.list()), DEFAULT_SPEC, detector.spec)[0][0]
    assert item.picture is not None and item.picture.image.width == 1000
    assert item.data == data  # kept for a second look
    finer = finer_picture(item, DEFAULT_SPEC, detector.spec)
    assert finer.image.width == 2000 and (finer.width, finer.height) == (4000, 2600)
    first_look_only = FaceDetector(device="cpu", threads=1, fine_canvas=0)
    assert len(first_look_only.detect([item.picture.image], [item.picture.factor])[0]) == 0
    shutil.rmtree(tmp_path / "in")
    _check(_job_boxes(tmp_path, "camera.jpg", data), expected_boxes(face_box, places), 0.5)
    # bytes that no longer decode leave the picture of the first look, not an exception
    # that would take the rows of its whole batch
    broken = replace(item, data=data[: len(data) // 3])
    assert finer_picture(broken, DEFAULT_SPEC, detector.spec) is item.picture


def test_a_close_up_is_not_looked_at_again(detector, face_box, tmp_path):
    """A large picture whose first look finds a face covering a fifth of it (the close-up
    share) gets no second look: that face alone decides its verdict, and the second look costs
    about four first looks. The small faces beside it are then not looked for; without the
    share they are, and the batch job passes its close-up share."""
    small, close = [(100, 100, 56), (120, 700, 64)], (760, 60, 800)
    im = scene([*small, close], size=(1600, 1000))
    _check(detector.detect([im])[0].xyxy, expected_boxes(face_box, [*small, close]), 0.5)
    _check(detector.detect([im], settled=0.2)[0].xyxy, expected_boxes(face_box, [close]), 0.5)
    # a share the close-up does not reach leaves the second look on
    assert len(detector.detect([im], settled=0.5)[0]) == 3
    boxes = _job_boxes(tmp_path, "close.jpg", encode(im, "JPEG", quality=92))
    _check(boxes, expected_boxes(face_box, [close]), 0.5)


def test_a_close_up_face_is_one_face_row(detector, tmp_path):
    """The detector, tuned on small street faces, boxes each half of this close-up's face (a
    face-mask training picture) as a face; in a close-up such a box is no face of its own, so
    the face rows hold the face once."""
    picture = decode(HALVES.read_bytes())
    found = detector.detect([picture.image])[0]
    assert len(found) >= 2, "the network no longer boxes a part of this face: pick another"
    main = found.main_face(0.2, (picture.width, picture.height))
    assert main >= 0
    assert len(_job_boxes(tmp_path, HALVES.name, HALVES.read_bytes())) == 1


def test_a_close_ups_main_face_is_read_whole_and_as_its_crop():
    """The bundled pair reads a close-up's main face twice, the whole picture through its
    close-up network and the face's crop through its face network, and joins the two reads."""
    analyzer = open_analyzer(None, device="cpu")
    source = LocalSource(FACE)
    items = decode_refs(source, list(source.list()), analyzer.engine.spec,
                        analyzer.detector_spec)[0]
    (result,) = analyzer.infer(items)
    assert result.closeup_face >= 0, "the example close-up is no longer taken for one"
    engine, picture = analyzer.engine, items[0].picture
    whole = engine.predict(to_input(picture.image, engine.spec)[None], whole=True)[0]
    crop = engine.predict(crop_face(picture, result.boxes[result.closeup_face], engine.spec,
                                    analyzer.margin)[None], whole=False)[0]
    joined = result.face_proba[result.closeup_face]
    assert joined.tolist() == pytest.approx(read_closeup(whole, crop, engine.classes).tolist(),
                                            rel=1e-4, abs=1e-7)
    # both reads count: the join is neither read alone (both are sure it is bare, to different
    # small shares of the other classes)
    assert joined.tolist() != pytest.approx(whole.tolist(), rel=1e-2, abs=1e-7)
    assert joined.tolist() != pytest.approx(crop.tolist(), rel=1e-2, abs=1e-7)


def test_joined_close_up_reads_keep_the_larger_wrongly_worn_probability():
    classes = ("with_mask", "without_mask", "mask_weared_incorrect")
    whole = np.array([0.7, 0.1, 0.2], np.float32)  # the close-up network
    crop = np.array([0.3, 0.1, 0.6], np.float32)  # the face network saw it worn wrongly
    joined = read_closeup(whole, crop, classes)
    # the third class takes 0.6; the rest (0.4) is shared 0.5 : 0.1 as the mean shares it
    assert joined.tolist() == pytest.approx([0.4 * 5 / 6, 0.4 / 6, 0.6])
    assert read_closeup(crop, whole, classes).tolist() == pytest.approx(joined.tolist())
    # sure of the third class both ways: nothing left to share, and no division by zero
    sure = np.array([0.0, 0.0, 1.0], np.float32)
    assert read_closeup(sure, sure, classes).tolist() == [0.0, 0.0, 1.0]
    # a model without that class: the mean of the two reads
    assert read_closeup(np.array([0.9, 0.1]), np.array([0.5, 0.5]),
                        classes[:2]).tolist() == pytest.approx([0.7, 0.3])


def test_parts_of_the_main_face_are_told_by_how_much_of_them_lies_over_it():
    faces = Detections(np.array([[100, 100, 300, 300],   # the main face
                                 [200, 100, 320, 300],   # its right half and a little more
                                 [280, 100, 400, 300],   # beside it, a sixth of it over it
                                 [10, 10, 40, 40]],      # a face elsewhere
                                np.float32), np.array([0.7, 0.9, 0.8, 0.6], np.float32))
    kept, main = faces.without_parts_of(0, 0.3)
    assert kept.xyxy.tolist() == [[100, 100, 300, 300], [280, 100, 400, 300], [10, 10, 40, 40]]
    assert main == 0 and kept.score.tolist() == pytest.approx([0.7, 0.8, 0.6])
    kept, main = faces.without_parts_of(1, 0.3)  # the main face's index follows it
    assert main == 0 and kept.xyxy[main].tolist() == [200, 100, 320, 300]
    assert len(faces.without_parts_of(0, 0.1)[0]) == 2


def test_two_looks_merge_into_one_box_a_face():
    """The finer look adds the faces the first missed; a face both saw keeps its best box; a
    wide box of the finer look is left to the first (the network's false giants live there)."""
    spec = DetectorSpec(fine_max_face=64.0)
    first = Detections(np.array([[100, 100, 300, 300], [500, 500, 530, 530]], np.float32),
                       np.array([0.9, 0.7], np.float32))
    fine = Detections(np.array([[501, 501, 531, 531],  # the small face again, better scored
                                [600, 600, 640, 640],  # a face only the finer look saw
                                [0, 0, 400, 400]], np.float32),  # too wide for the finer look
                      np.array([0.95, 0.8, 0.99], np.float32))
    merged = merge_looks(first, fine, 1.0, spec)
    assert merged.xyxy.tolist() == [[501, 501, 531, 531], [100, 100, 300, 300],
                                    [600, 600, 640, 640]]
    assert merged.score.tolist() == pytest.approx([0.95, 0.9, 0.8])
    # the finer look's widths are counted in its own canvas pixels: at scale 2 the 40 px face
    # is 80 of them, over the limit, and only the first look's faces stay
    assert len(merge_looks(first, fine[1:2], 2.0, spec)) == 2
    assert merge_looks(first, Detections(), 1.0, spec) is first


def test_decoding_and_nms_on_made_up_network_output():
    """Box codes of zero put a box exactly on its anchor; NMS keeps the better of two twins."""
    spec = DetectorSpec(canvas=64, score_threshold=0.5)
    priors = anchors(spec, 64, 96)
    loc = np.zeros((len(priors), 4), np.float32)
    score = np.zeros(len(priors), np.float32)
    # Two anchors of one cell in the middle of the canvas: sizes 16 and 32, the same centre.
    a = int(np.flatnonzero((priors[:, 0] == 36) & (priors[:, 1] == 28)
                           & (priors[:, 2] == 16))[0])
    b = a + 1
    assert priors[b, 2] == 32 and (priors[b, :2] == priors[a, :2]).all()
    score[a], score[b] = 0.9, 0.8
    cx, cy, w, h = priors[a]
    # The 16 px box inside the 32 px one: IoU 0.25, so plain NMS keeps both ...
    both = DetectorSpec(canvas=64, score_threshold=0.5, nested=1.0)
    assert len(decode_boxes(loc, score, both, scale=0.5, size=(192, 128), canvas=(64, 96))) == 2
    # ... and the nested rule (the default) keeps the better one alone.
    found = decode_boxes(loc, score, spec, scale=0.5, size=(192, 128), canvas=(64, 96))
    assert len(found) == 1 and found.score[0] == np.float32(0.9)
    np.testing.assert_allclose(found.xyxy[0], np.array([cx - w / 2, cy - h / 2, cx + w / 2,
                                                        cy + h / 2]) / 0.5, atol=1e-4)
    twins = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    assert list(nms(twins, np.array([0.7, 0.9, 0.8], np.float32), 0.4)) == [1, 2]
    # Two faces side by side, overlapping by 40% of each: neither is inside the other.
    pair = np.array([[0, 0, 10, 10], [6, 0, 16, 10]], np.float32)
    assert list(nms(pair, np.array([0.9, 0.8], np.float32), 0.4, nested=0.5)) == [0, 1]
    # Of a box and a box inside it, the lower-scored goes, whichever is the larger.
    inner = np.array([[0, 0, 20, 20], [2, 2, 12, 12], [15, 0, 35, 20]], np.float32)
    assert list(nms(inner, np.array([0.8, 0.9, 0.7], np.float32), 0.4, nested=0.5)) == [1, 2]
    assert list(nms(inner, np.array([0.9, 0.8, 0.7], np.float32), 0.4, nested=0.5)) == [0, 2]
    # A face keeps the extent of the larger box put down for it (the close-up rule reads it);
    # a twin that IoU alone suppresses does not enlarge it.
    kept, extent = suppress(inner, np.array([0.8, 0.9, 0.7], np.float32), 0.4, nested=0.5)
    assert list(kept) == [1, 2] and list(extent) == [400.0, 400.0]
    twins = np.array([[0, 0, 10, 10], [0, 0, 11, 11]], np.float32)
    kept, extent = suppress(twins, np.array([0.9, 0.8], np.float32), 0.4, nested=0.5)
    assert list(kept) == [0] and list(extent) == [100.0]


def test_encoding_is_the_inverse_of_decoding():
    """Codes made for training from boxes decode back to those boxes."""
    spec = DetectorSpec(canvas=64, score_threshold=0.5)
    priors = anchors(spec, 64, 64)
    rng = np.random.default_rng(0)
    picked = rng.choice(len(priors), 5, replace=False)
    centre = priors[picked, :2] + rng.uniform(-4, 4, (5, 2))
    size = priors[picked, 2:] * rng.uniform(0.5, 1.5, (5, 2))
    boxes = np.concatenate([centre - size / 2, centre + size / 2], 1).astype(np.float32)
    loc = np.zeros((len(priors), 4), np.float32)
    loc[picked] = encode_boxes(priors[picked], boxes, spec.variance)
    score = np.zeros(len(priors), np.float32)
    score[picked] = np.linspace(0.9, 0.6, 5)
    found = decode_boxes(loc, score, spec, scale=1.0, size=(64, 64), canvas=(64, 64))
    expected = np.clip(boxes, 0, 64)
    assert len(found) == len(nms(expected, score[picked], spec.nms_iou, spec.nested))
    for box in found.xyxy:
        assert np.abs(expected - box).max(axis=1).min() < 1e-3


def _drawing(w: int, h: int, seed: int) -> Image.Image:
    """A flat picture of coloured rectangles: a poster or a screenshot, nothing like a face."""
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(0, 255, 3)))
    draw = ImageDraw.Draw(im)
    for _ in range(6):
        x0, y0 = (int(v) for v in rng.integers(0, (w - 20, h - 20)))
        draw.rectangle((x0, y0, x0 + int(rng.integers(10, 100)), y0 + int(rng.integers(10, 80))),
                       fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return im


def test_a_picture_without_faces_is_classified_whole(tmp_path):
    # Not tests.helpers.gradient: its x*y pattern filling the frame is boxed as a face at 0.7 by
    # the bundled detector (fitted on close-ups that fill the frame), so it is no faceless picture.
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "plain.png").write_bytes(encode(_drawing(300, 200, seed=5)))
    rows = {}
    for mode in ("auto", "off"):
        r = CliRunner().invoke(main, ["batch", str(tmp_path / "in"), "--out",
                                      str(tmp_path / mode), "--faces", mode, "--workers", "0",
                                      "--no-progress"])
        assert r.exit_code == 0, r.output
        rows[mode] = json.loads((tmp_path / mode / "manifest.jsonl").read_text())
    assert rows["auto"]["faces"] == 0 and rows["off"]["faces"] is None
    assert rows["auto"]["label"] == rows["off"]["label"]
    for c, p in rows["off"]["probabilities"].items():
        assert abs(rows["auto"]["probabilities"][c] - p) < 0.02  # decoded at another draft size
    assert (tmp_path / "auto" / "faces.jsonl").read_text() == ""


def test_picture_verdict_is_its_most_serious_face(tmp_path):
    """A masked and an unmasked face in one picture: the picture says without_mask."""
    masked = Image.open(EXAMPLES / "with_mask_2.jpg").convert("RGB").resize((150, 198))
    bare = Image.open(FACE).convert("RGB").resize((150, 149))
    im = Image.new("RGB", (520, 300), (110, 110, 110))
    im.paste(masked, (30, 40))
    im.paste(bare, (320, 60))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "two.png").write_bytes(encode(im))
    r = CliRunner().invoke(main, ["batch", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                                  "--workers", "0", "--no-progress"])
    assert r.exit_code == 0, r.output
    row = json.loads((tmp_path / "out" / "manifest.jsonl").read_text())
    faces = [json.loads(x) for x in (tmp_path / "out" / "faces.jsonl").read_text().split("\n")
             if x]
    labels = sorted(f["label"] for f in faces)
    assert labels == ["with_mask", "without_mask"], faces
    assert row["label"] == "without_mask" and row["faces"] == 2
    assert row["face_counts"] == {"with_mask": 1, "without_mask": 1}


def test_crop_region_is_square_around_the_box_and_clipped():
    assert face_region((10, 20, 30, 60), 200, 200, 0.0) == (0, 20, 40, 60)
    assert face_region((10, 20, 30, 60), 200, 200, 0.5) == (0, 0, 60, 80)
    x0, y0, x1, y1 = face_region((190, 190, 260, 260), 200, 200, 0.1)
    assert (x1, y1) == (200, 200) and x0 < x1 and y0 < y1
    pic = decode(encode(gradient(120, 90)))
    assert crop_face(pic, (10, 10, 40, 50)).shape == (128, 128, 3)


def _voc(path: Path, name: str, size: tuple[int, int], boxes: list[tuple[str, list[float]]]
         ) -> None:
    objs = "".join(
        f"<object><name>{label}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for label, b in boxes)
    path.write_text(f"<annotation><filename>{name}</filename><size><width>{size[0]}</width>"
                    f"<height>{size[1]}</height></size>{objs}</annotation>")


def test_evaluate_scores_a_run_against_voc_boxes(tmp_path, face_box):
    images, ann = tmp_path / "data" / "images", tmp_path / "data" / "annotations"
    images.mkdir(parents=True)
    ann.mkdir()
    want = expected_boxes(face_box, PLACES)
    scene(PLACES).save(images / "a.png")
    _voc(ann / "a.xml", "a.png", (800, 520), [("without_mask", list(map(float, b)))
                                             for b in want])
    gradient(200, 150).save(images / "empty.png")
    _voc(ann / "empty.xml", "empty.png", (200, 150), [])
    r = CliRunner().invoke(main, ["batch", str(images), "--out", str(tmp_path / "out"),
                                  "--workers", "0", "--no-progress"])
    assert r.exit_code == 0, r.output
    report = evaluate_run(tmp_path / "out", tmp_path / "data")
    assert report["pictures"] == 2 and report["boxed_faces"] == 4
    assert report["detection"]["recall"] == 1.0
    assert report["detection"]["false_boxes_per_picture"] == 0.0
    faces = [json.loads(x) for x in (tmp_path / "out" / "faces.jsonl").read_text().split("\n")
             if x and json.loads(x)["source"] == "a.png"]
    bare = sum(f["label"] == "without_mask" for f in faces)
    assert report["labels"]["matched_faces"] == 4
    assert report["labels"]["per_class"]["without_mask"]["recall"] == bare / 4
    said = json.loads((tmp_path / "out" / "manifest.jsonl").read_text().split("\n")[0])
    assert said["source"] == "a.png"
    # one picture with unmasked faces, one without any face
    assert report["verdict"]["recall"] == float(said["label"] == "without_mask")
    r = CliRunner().invoke(main, ["evaluate", str(tmp_path / "out"), "--boxes",
                                  str(tmp_path / "data")])
    assert r.exit_code == 0 and "recall, faces >= 32 px" in r.output
    r = CliRunner().invoke(main, ["evaluate", str(tmp_path / "nowhere"), "--boxes", str(ann)])
    assert r.exit_code == 2 and "no manifest.jsonl" in r.output
    # A run that classified pictures whole has no faces: its verdicts are scored, and no
    # detection figures that would read as a detector finding nothing.
    r = CliRunner().invoke(main, ["batch", str(images), "--out", str(tmp_path / "off"),
                                  "--faces", "off", "--workers", "0", "--no-progress"])
    assert r.exit_code == 0, r.output
    whole = evaluate_run(tmp_path / "off", tmp_path / "data")
    assert whole["faces_mode"] == "off" and whole["detection"] is None and whole["labels"] is None
    said = json.loads((tmp_path / "off" / "manifest.jsonl").read_text().split("\n")[0])
    assert whole["verdict"]["recall"] == float(said["label"] in ("without_mask",
                                                                  "mask_weared_incorrect"))
    r = CliRunner().invoke(main, ["evaluate", str(tmp_path / "off"), "--boxes",
                                  str(tmp_path / "data")])
    assert r.exit_code == 0 and "--faces off" in r.output and "recall, faces" not in r.output


def test_evaluate_tells_how_far_the_verdict_hangs_on_small_faces(tmp_path):
    """The ceiling comes from the boxes alone; the missed list from the run's verdicts."""
    ann, out = tmp_path / "annotations", tmp_path / "out"
    ann.mkdir()
    out.mkdir()
    pictures = {  # name: (boxes, the run's verdict)
        "missed.png": ([("without_mask", [10.0, 10.0, 40.0, 40.0])], "with_mask"),
        "tiny.png": ([("mask_weared_incorrect", [5.0, 5.0, 15.0, 15.0]),
                      ("with_mask", [50.0, 50.0, 90.0, 90.0])], "mask_weared_incorrect"),
        "fine.png": ([("with_mask", [50.0, 50.0, 90.0, 90.0])], "with_mask"),
    }
    rows = []
    for name, (boxes, label) in pictures.items():
        _voc(ann / f"{name[:-4]}.xml", name, (100, 100), boxes)
        rows.append(json.dumps({"source": name, "status": "ok", "sha256": "0" * 64,
                                "label": label}))
    (out / "manifest.jsonl").write_text("\n".join(rows) + "\n")
    (out / "faces.jsonl").write_text("")
    v = evaluate_run(out, ann)["verdict"]
    assert v["recall"] == 0.5 and v["pictures_with_someone_unmasked"] == 2
    # A 10 px face decides one of the two pictures: a reader blind below 12 px reaches 0.5.
    assert v["recall_ceiling"] == {"8": 1.0, "12": 0.5, "16": 0.5, "24": 0.5}
    assert v["missed_widest_face_px"] == [30.0]
    r = CliRunner().invoke(main, ["evaluate", str(out), "--boxes", str(ann)])
    assert r.exit_code == 0 and "widest unmasked face (px): 30" in r.output, r.output


def copy_detector(dst: Path, int8_file: bool = True) -> dict:
    """The bundled detector's files (its int8 variant's too, unless not ``int8_file``) copied
    into ``dst``; returns its card, to change and write there."""
    card = json.loads(DEFAULT_DETECTOR.read_text())
    for entry in (card, card["int8"]) if int8_file else (card,):
        shutil.copy(DEFAULT_DETECTOR.with_name(entry["onnx_file"]), dst / entry["onnx_file"])
    (dst / DEFAULT_DETECTOR.name).write_text(json.dumps(card))
    return card


def test_a_cpu_runs_the_detectors_int8_variant_and_float32_on_request(detector, face_box):
    """The bundled card lists an int8 variant (its neck quantized): a CPU runs it under auto,
    as it runs the classifier's, and float32 when asked; each has its own id, and both find
    the pasted faces where they were pasted, in nearly the same boxes."""
    card = json.loads(DEFAULT_DETECTOR.read_text())
    assert detector.precision == "int8" and detector.path.name == card["int8"]["onnx_file"]
    fp32 = FaceDetector(device="cpu", threads=1, precision="fp32")
    assert fp32.precision == "fp32" and fp32.path.name == card["onnx_file"]
    assert fp32.model_id != detector.model_id
    im = scene(PLACES)
    found = [d.detect([im])[0] for d in (detector, fp32)]
    for f in found:
        _check(f.xyxy, expected_boxes(face_box, PLACES))
    assert (iou_matrix(*(f.xyxy for f in found)).max(axis=1) >= 0.9).all()


def test_a_detector_card_and_its_int8_variant_must_agree(tmp_path):
    card = copy_detector(tmp_path, int8_file=False)
    # Listed but not there: auto runs float32; asked for, it is an error.
    assert FaceDetector(tmp_path, device="cpu").precision == "fp32"
    with pytest.raises(ModelError, match="face detector not found"):
        FaceDetector(tmp_path, device="cpu", precision="int8")
    shutil.copy(DEFAULT_DETECTOR.with_name(card["int8"]["onnx_file"]),
                tmp_path / card["int8"]["onnx_file"])
    card["int8"]["onnx_sha256"] = "0" * 64
    (tmp_path / DEFAULT_DETECTOR.name).write_text(json.dumps(card))
    with pytest.raises(ModelError, match="does not match its card"):
        FaceDetector(tmp_path, device="cpu")
    del card["int8"]
    (tmp_path / DEFAULT_DETECTOR.name).write_text(json.dumps(card))
    assert FaceDetector(tmp_path, device="cpu").precision == "fp32"
    with pytest.raises(ModelError, match="lists no int8 variant"):
        FaceDetector(tmp_path, device="cpu", precision="int8")


def test_the_detector_id_covers_its_settings(tmp_path):
    """Another canvas or threshold gives other boxes: another id, so a worker's ledger redoes
    the pictures instead of taking the old rows as done."""
    base = FaceDetector(device="cpu")
    assert FaceDetector(device="cpu").model_id == base.model_id  # stable
    assert FaceDetector(device="cpu", canvas=736).model_id != base.model_id
    card = copy_detector(tmp_path)
    assert FaceDetector(tmp_path, device="cpu").model_id == base.model_id  # same file, same spec
    card["spec"]["score_threshold"] = 0.5
    (tmp_path / DEFAULT_DETECTOR.name).write_text(json.dumps(card))
    assert FaceDetector(tmp_path, device="cpu").model_id != base.model_id


def test_the_environment_names_another_detector(tmp_path, monkeypatch, model_path):
    """$MASKCORE_DETECTOR (what the container images set) picks the detector's card."""
    card = copy_detector(tmp_path)
    card["spec"]["score_threshold"] = 0.5
    (tmp_path / DEFAULT_DETECTOR.name).write_text(json.dumps(card))
    bundled = open_analyzer(str(model_path), device="cpu").detector_id
    monkeypatch.setenv("MASKCORE_DETECTOR", str(tmp_path))
    chosen = open_analyzer(str(model_path), device="cpu")
    assert chosen.detector is not None and chosen.detector.spec.score_threshold == 0.5
    assert chosen.detector_id == FaceDetector(tmp_path, device="cpu").model_id != bundled
