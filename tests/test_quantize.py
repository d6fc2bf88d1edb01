"""The int8 variant: made from the float32 model, checked against it, chosen by --precision."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from PIL import Image

from maskcore.card import ModelCard, file_sha256
from maskcore.cli import main
from maskcore.detector import FaceDetector, decode_boxes, letterbox, to_canvases
from maskcore.engine import Engine
from maskcore.errors import ModelError, UsageError
from maskcore.evaluate import iou_matrix
from maskcore.pairing import face_network
from maskcore.preprocess import preprocess
from maskcore.quantize import DETECTOR_QUANTIZED, INT8_FILE, make_int8_variant, quantize_detector
from tests.conftest import EXAMPLES, copy_pictures


@pytest.fixture
def fp32_only(tmp_path, model_path) -> Path:
    """The bundled model's float32 face network and its card, without the int8 variant (the
    quantizer takes one network: pairs are made of networks quantized before)."""
    folder = tmp_path / "fp32"
    folder.mkdir()
    card = ModelCard.read(model_path)
    onnx.save(face_network(onnx.load(model_path), output_name=card.output_name),
              folder / "model.onnx")
    card.onnx_sha256 = file_sha256(folder / "model.onnx")
    card.int8 = card.whole_picture = None
    card.write(folder)
    return folder


def _pixels(paths: list[Path], card: ModelCard) -> np.ndarray:
    return np.stack([preprocess(p.read_bytes(), card.preprocess) for p in paths])


def test_variant_agrees_with_float32_and_keeps_the_metadata(fp32_only, face_pictures):
    card = ModelCard.read(fp32_only / "model.json")
    x = _pixels(face_pictures, card)
    y = np.array([int(i % 2) for i in range(len(x))])  # metrics need both classes; any will do
    lines: list[str] = []
    entry = make_int8_variant(fp32_only / "model.onnx", x, x, y, card.classes, log=lines.append)
    int8 = fp32_only / INT8_FILE
    assert entry["parity"]["passed"] and int8.is_file()
    assert entry["onnx_sha256"] == file_sha256(int8)
    assert entry["parity"]["n"] == len(x) and entry["parity"]["label_agreement"] == 1.0
    assert "int8 variant" in lines[0]
    card.int8 = entry
    card.write(fp32_only)

    fp32 = Engine(fp32_only, device="cpu", precision="fp32")
    q = Engine(fp32_only, device="cpu")  # auto on a CPU: the variant
    assert (q.precision, q.path.name) == ("int8", INT8_FILE)
    assert q.model_id == entry["onnx_sha256"][:12] != fp32.model_id
    meta = q.session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["classes"]) == card.classes
    assert meta["preprocess_version"] == card.preprocess.version
    a, b = fp32.predict(x), q.predict(x)
    assert (a.argmax(1) == b.argmax(1)).all()
    assert np.abs(a - b).max() < 0.1
    assert np.allclose(b.sum(1), 1, atol=1e-5)  # the head stays float: real probabilities
    # The variant's own file, named directly, is the int8 model.
    assert Engine(int8, device="cpu").model_id == q.model_id


def test_a_variant_that_disagrees_is_dropped(fp32_only, face_pictures):
    card = ModelCard.read(fp32_only / "model.json")
    x = _pixels(face_pictures, card)
    y = np.zeros(len(x), dtype=np.int64)
    entry = make_int8_variant(fp32_only / "model.onnx", x, x, y, card.classes,
                              log=lambda _: None, min_agreement=1.01)
    assert not entry["parity"]["passed"]
    assert not (fp32_only / INT8_FILE).exists()


def test_precision_choices_and_their_errors(fp32_only, model_path, tmp_path):
    # No variant listed: auto is float32; int8 asked for is a clear error.
    assert Engine(fp32_only, device="cpu").precision == "fp32"
    with pytest.raises(ModelError, match="no int8 variant"):
        Engine(fp32_only, device="cpu", precision="int8")
    # The bundled model lists one.
    bundled = Engine(model_path, device="cpu")
    assert bundled.precision == "int8"
    assert bundled.model_id == ModelCard.read(model_path).int8["onnx_sha256"][:12]
    with pytest.raises(UsageError, match="is the int8 variant"):
        Engine(model_path.with_name(INT8_FILE), device="cpu", precision="fp32")
    # Listed but not copied along: auto falls back to float32; asked for, it is missing.
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("model.onnx", "model.json"):
        shutil.copyfile(model_path.with_name(name), partial / name)
    assert Engine(partial, device="cpu").precision == "fp32"
    with pytest.raises(ModelError, match="model not found"):
        Engine(partial, device="cpu", precision="int8")
    # A float32 file under another name is the one loaded.
    shutil.copyfile(model_path, partial / "renamed.onnx")
    renamed = Engine(partial / "renamed.onnx", device="cpu", precision="fp32")
    assert renamed.path.name == "renamed.onnx" and renamed.model_id == bundled.card.model_id
    # A variant file that is not the one the card names.
    shutil.copyfile(model_path, partial / INT8_FILE)
    with pytest.raises(ModelError, match="does not match its card"):
        Engine(partial, device="cpu", precision="int8")


def test_batch_reports_the_precision_it_ran(tmp_path, face_pictures, model_path):
    folder = tmp_path / "in"
    copy_pictures(face_pictures, folder)
    rows = {}
    for precision in ("fp32", "int8"):
        out = tmp_path / precision
        r = CliRunner().invoke(main, ["batch", str(folder), "--out", str(out), "--model",
                                      str(model_path), "--precision", precision,
                                      "--no-progress", "--workers", "1"])
        assert r.exit_code == 0, r.output
        summary = json.loads((out / "summary.json").read_text())
        assert summary["precision"] == precision
        rows[precision] = [json.loads(line) for line in
                           (out / "manifest.jsonl").read_text().splitlines()]
        assert {row["model_id"] for row in rows[precision]} == {summary["model_id"]}
    assert rows["fp32"][0]["model_id"] != rows["int8"][0]["model_id"]
    assert [r["label"] for r in rows["fp32"]] == [r["label"] for r in rows["int8"]]


def test_quantize_command_refuses_what_it_cannot_check(fp32_only, model_path, tmp_path):
    data = tmp_path / "data"
    for cls in ("with_mask", "without_mask"):
        copy_pictures(sorted((model_path.parents[1] / "examples").glob(f"{cls}_*"))[:2], data / cls)
    runner = CliRunner()
    r = runner.invoke(main, ["quantize", str(fp32_only), "--data", str(data)])
    assert r.exit_code == 2 and "split record" in r.output and "Traceback" not in r.output
    shutil.copyfile(model_path.with_name("split.json"), fp32_only / "split.json")
    r = runner.invoke(main, ["quantize", str(fp32_only), "--data", str(data), "--workers", "0"])
    assert r.exit_code == 2 and "are not in" in r.output and "Traceback" not in r.output
    assert not (fp32_only / INT8_FILE).exists()


def test_the_face_detector_is_quantized_in_its_neck_alone(tmp_path):
    """quantize_detector puts exactly the convolutions named under DETECTOR_QUANTIZED in int8 (a
    convolution whose weights a DequantizeLinear gives), keeps the backbone and the heads
    float32, and the result boxes a face where the float32 network does."""
    det = FaceDetector(device="cpu", precision="fp32")
    side = 320
    pictures = [Image.open(p).convert("RGB") for p in sorted(EXAMPLES.glob("*_mask_*"))[:6]]
    canvases = to_canvases([letterbox(im, det.spec, side)[0] for im in pictures], det.spec,
                           (side, side))
    out = tmp_path / "detector.int8.onnx"
    made = quantize_detector(det.path, out, canvases)
    assert made["calibration"]["pictures"] == len(pictures)
    graph = onnx.load(out).graph
    maker = {o: n.op_type for n in graph.node for o in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    int8 = {n.name for n in convs if maker.get(n.input[1]) == "DequantizeLinear"}
    assert int8 == {n.name for n in convs if n.name.startswith(DETECTOR_QUANTIZED)}
    assert 0 < len(int8) < len(convs)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for im, canvas in zip(pictures, canvases, strict=True):
        scale = side / max(im.size)
        loc, conf, _ = session.run(None, {det.input_name: canvas[None]})
        mine = decode_boxes(loc[0], conf[0, :, 1], det.spec, scale, im.size, (side, side))
        ref_loc, ref_score = det.run(canvas[None])
        ref = decode_boxes(ref_loc[0], ref_score[0], det.spec, scale, im.size, (side, side))
        assert len(ref), "each example close-up shows a face"
        assert len(mine) and iou_matrix(ref.xyxy[:1], mine.xyxy).max() >= 0.9
