"""`maskcore pair`: a close-up model joined to the face model, and how serving uses the pair."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from maskcore.card import CARD_NAME, ModelCard, file_sha256
from maskcore.cli import main
from maskcore.engine import Engine
from maskcore.errors import ModelError
from maskcore.preprocess import preprocess
from tests.test_boxdata import make_voc
from tests.test_train import FAST, make_dataset

EXAMPLES = Path(__file__).parents[1] / "examples"


def _invoke(*args: str) -> str:
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r.output


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A 3-class face model (close-ups and boxed faces), a 2-class close-up model trained on the
    same close-ups, the pair of the two, and a close-up model split otherwise."""
    root = tmp_path_factory.mktemp("pairing")
    voc = make_voc(root / "voc")
    closeups = make_dataset(root / "closeups", ["with_mask", "without_mask"], 20,
                            ["disc", "square"])
    paths = {"voc": voc, "closeups_data": closeups, "faces": root / "faces",
             "closeups": root / "closeups_model", "pair": root / "pair",
             "elsewhere": root / "split_elsewhere"}
    _invoke("train", closeups, voc, "--out", paths["faces"], *FAST)
    _invoke("train", closeups, "--out", paths["closeups"], *FAST, "--seed", "3",
            "--split-seed", "0")
    _invoke("train", closeups, "--out", paths["elsewhere"], *FAST, "--split-seed", "1")
    _invoke("pair", paths["faces"], paths["closeups"], "--out", paths["pair"])
    return paths


def _pictures(models: dict[str, Path]) -> np.ndarray:
    spec = ModelCard.read(models["faces"] / CARD_NAME).preprocess
    files = sorted(models["closeups_data"].rglob("*.png"))[::4]
    return np.stack([preprocess(p.read_bytes(), spec) for p in files])


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_the_pair_reads_crops_with_the_face_network_and_whole_pictures_with_both(
        models, precision):
    pair = Engine(models["pair"], device="cpu", precision="auto")
    if precision == "int8" and pair.precision != "int8":
        # the int8 variant is kept only when it agrees with float32 on the test split
        assert pair.card.int8 is None
        return
    pair = Engine(models["pair"], device="cpu", precision=precision)
    face = Engine(models["faces"], device="cpu", precision=precision)
    close = Engine(models["closeups"], device="cpu", precision=precision)
    assert pair.has_whole_branch and not face.has_whole_branch
    x = _pictures(models)
    p, q = face.predict(x), close.predict(x)
    np.testing.assert_allclose(pair.predict(x), p, atol=1e-6)
    whole = pair.predict(x, whole=True)
    expected = np.concatenate([(1 - p[:, 2:]) * q, p[:, 2:]], axis=1)
    np.testing.assert_allclose(whole, expected, atol=1e-6)
    np.testing.assert_allclose(whole.sum(1), 1, atol=1e-5)
    assert not np.allclose(whole, p, atol=1e-3)  # so the comparisons above could fail


def test_a_close_up_network_of_every_class_reads_whole_pictures_alone(models, tmp_path):
    """With a close-up network that knows the face network's three classes (as the bundled one
    since it learned drawn masks), whole pictures are its output alone and do not run the face
    network; the face network still comes back out of such a pair whole."""
    import onnx

    from maskcore.pairing import face_network

    three = tmp_path / "closeups3"
    _invoke("train", models["closeups_data"], models["voc"], "--out", three, *FAST,
            "--seed", "5", "--split-seed", "0")
    _invoke("pair", models["faces"], three, "--out", tmp_path / "pair")
    pair = Engine(tmp_path / "pair", device="cpu", precision="fp32")
    face = Engine(models["faces"], device="cpu", precision="fp32")
    close = Engine(three, device="cpu", precision="fp32")
    x = _pictures(models)
    q = close.predict(x)
    np.testing.assert_array_equal(pair.predict(x, whole=True), q)
    np.testing.assert_allclose(pair.predict(x), face.predict(x), atol=1e-6)
    assert not np.allclose(q, face.predict(x), atol=1e-3)  # two different readers
    model = onnx.load(tmp_path / "pair" / "model.onnx")
    (branch,) = [n for n in model.graph.node if n.op_type == "If"]
    then = next(a.g for a in branch.attribute if a.name == "then_branch")
    assert all(n.name.startswith(("closeup/", "pair/")) for n in then.node)
    plain = face_network(model, output_name="probabilities")
    onnx.save(plain, tmp_path / "face.onnx")
    np.testing.assert_allclose(_run(tmp_path / "face.onnx", x), face.predict(x), atol=1e-6)


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    out: np.ndarray = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"image": x})[0]
    return out


def test_the_card_says_what_was_joined(models):
    card = ModelCard.read(models["pair"] / CARD_NAME)
    assert card.onnx_sha256 == file_sha256(models["pair"] / "model.onnx")
    assert card.classes == ["with_mask", "without_mask", "mask_weared_incorrect"]
    w = card.whole_picture
    assert w is not None and w["input"] == "whole"
    assert w["face_network"]["model_id"] == ModelCard.read(models["faces"] / CARD_NAME).model_id
    closeup = ModelCard.read(models["closeups"] / CARD_NAME)
    assert w["closeup_network"]["model_id"] == closeup.model_id
    assert w["closeup_network"]["training"]["config"]["seed"] == 3
    # the face model's report and split travel with the pair
    for name in ("report.json", "split.json", "confusion.png"):
        assert (models["pair"] / name).read_bytes() == (models["faces"] / name).read_bytes()


def test_batch_sends_whole_pictures_and_crops_to_their_branches(models, tmp_path):
    """--faces off reads every picture whole; the face stage reads a picture without a face
    whole and a face among others from its crop."""
    pics = tmp_path / "pics"
    pics.mkdir()
    masked = Image.open(EXAMPLES / "with_mask_2.jpg").convert("RGB").resize((150, 198))
    bare = Image.open(EXAMPLES / "without_mask_4.jpg").convert("RGB").resize((150, 149))
    crowd = Image.new("RGB", (520, 300), (110, 110, 110))
    crowd.paste(masked, (30, 40))
    crowd.paste(bare, (320, 60))
    crowd.save(pics / "two faces.png")
    Image.new("RGB", (90, 60), (30, 90, 200)).save(pics / "plain.png")

    def run(model: str, faces: str) -> tuple[dict[str, dict], list[dict]]:
        out = tmp_path / f"{model}-{faces}"
        _invoke("batch", pics, "--out", out, "--model", models[model], "--faces", faces,
                "--workers", "0", "--no-progress")
        rows = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
        face_rows = [json.loads(x) for x in (out / "faces.jsonl").read_text().splitlines()]
        return {Path(r["source"]).name: r for r in rows}, face_rows

    pair_off, _ = run("pair", "off")
    pair_auto, pair_faces = run("pair", "auto")
    face_auto, face_faces = run("faces", "auto")
    spec = ModelCard.read(models["faces"] / CARD_NAME).preprocess
    x = np.stack([preprocess((pics / n).read_bytes(), spec) for n in ("plain.png", "two faces.png")])
    whole = Engine(models["pair"], device="cpu").predict(x, whole=True)
    classes = ModelCard.read(models["pair"] / CARD_NAME).classes
    for name, expected in zip(("plain.png", "two faces.png"), whole, strict=True):
        got = [pair_off[name]["probabilities"][c] for c in classes]
        np.testing.assert_allclose(got, expected, atol=1e-4)
    # without a face found the default mode reads the picture whole too
    assert pair_auto["plain.png"]["faces"] == 0
    assert pair_auto["plain.png"]["probabilities"] != face_auto["plain.png"]["probabilities"]
    # the two faces of the crowd are crops: the face network's reading, whatever the pair
    assert pair_auto["two faces.png"]["faces"] == 2 and len(pair_faces) == len(face_faces) == 2
    assert [f["score"] for f in pair_faces] == [f["score"] for f in face_faces]


def test_what_cannot_be_paired_is_refused(models, tmp_path):
    r = CliRunner().invoke(main, ["pair", str(models["faces"]), str(models["elsewhere"]),
                                  "--out", str(tmp_path / "a")])
    assert r.exit_code == 2 and "--split-seed" in r.output, r.output
    r = CliRunner().invoke(main, ["pair", str(models["pair"]), str(models["closeups"]),
                                  "--out", str(tmp_path / "b")])
    assert r.exit_code == 2 and "paired already" in r.output, r.output
    r = CliRunner().invoke(main, ["pair", str(models["closeups"]), str(models["faces"]),
                                  "--out", str(tmp_path / "c")])
    assert r.exit_code == 2 and "first ones" in r.output, r.output
    r = CliRunner().invoke(main, ["quantize", str(models["pair"]), "--data",
                                  str(models["closeups_data"]), "--workers", "0"])
    assert r.exit_code == 2 and "paired model" in r.output, r.output


def test_a_card_that_names_a_branch_the_file_lacks_is_refused(models, tmp_path):
    card = ModelCard.read(models["faces"] / CARD_NAME)
    (tmp_path / "model.onnx").write_bytes((models["faces"] / "model.onnx").read_bytes())
    card.int8 = None
    card.whole_picture = {"input": "whole"}
    card.write(tmp_path)
    with pytest.raises(ModelError, match="no such boolean scalar input"):
        Engine(tmp_path, device="cpu")
    # and a file with an input its card does not name
    pair = ModelCard.read(models["pair"] / CARD_NAME)
    (tmp_path / "model.onnx").write_bytes((models["pair"] / "model.onnx").read_bytes())
    pair.int8, pair.whole_picture = None, None
    pair.write(tmp_path)
    with pytest.raises(ModelError, match="not in its card"):
        Engine(tmp_path, device="cpu")


def test_the_face_network_comes_back_out_of_the_pair(models, tmp_path):
    import onnx
    import onnxruntime as ort

    from maskcore.pairing import face_network

    plain = face_network(onnx.load(models["pair"] / "model.onnx"), output_name="probabilities")
    assert [i.name for i in plain.graph.input] == ["image"]
    onnx.save(plain, tmp_path / "face.onnx")
    x = _pictures(models)
    back = ort.InferenceSession(str(tmp_path / "face.onnx"), providers=["CPUExecutionProvider"])
    face = ort.InferenceSession(str(models["faces"] / "model.onnx"),
                                providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(back.run(None, {"image": x})[0],
                                  face.run(None, {"image": x})[0])
    with pytest.raises(ModelError, match="not a paired model"):
        face_network(onnx.load(models["faces"] / "model.onnx"), output_name="probabilities")
