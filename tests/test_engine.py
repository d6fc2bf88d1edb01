"""The classifier engine: precision variants, device refusals, checks against the card."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from maskcore.card import ModelCard
from maskcore.engine import CPU_SLICE, Engine, open_session
from maskcore.errors import ModelError, UsageError
from tests.conftest import ROOT


def test_variants_have_their_own_ids_and_agree(model_path):
    fp32 = Engine(model_path, device="cpu", precision="fp32")
    int8 = Engine(model_path, device="cpu", precision="int8")
    auto = Engine(model_path, device="cpu")
    assert auto.precision == "int8" and auto.model_id == int8.model_id != fp32.model_id
    x = np.random.default_rng(0).random((6, *fp32.spec.size, 3), dtype=np.float32)
    a, b = fp32.predict(x), int8.predict(x)
    assert a.shape == (6, 3) and np.allclose(a.sum(1), 1, atol=1e-4)
    assert np.abs(a - b).max() < 0.2
    with pytest.raises(ValueError, match="does not fit"):
        fp32.predict(x[:, :64])


def test_a_large_batch_gives_what_its_pictures_give_alone(model_path):
    """On a CPU a batch runs in slices: every input still gets its own probabilities, in order,
    through the branch it asked for."""
    engine = Engine(model_path, device="cpu")
    n = CPU_SLICE * 2 + 5
    x = np.random.default_rng(1).random((n, *engine.spec.size, 3), dtype=np.float32)
    for whole in (False, True):
        together = engine.predict(x, whole=whole)
        alone = np.concatenate([engine.predict(x[i:i + 1], whole=whole) for i in range(n)])
        assert together.shape == (n, len(engine.classes))
        assert np.allclose(together, alone, atol=1e-6)
    assert engine.has_whole_branch  # the bundled pair: the two calls above took both branches
    assert not np.allclose(engine.predict(x, whole=True), engine.predict(x, whole=False))


def test_a_card_of_another_model_is_refused(model_path, tmp_path):
    for name in ("model.onnx", "model.int8.onnx", "model.json"):
        shutil.copyfile(model_path.with_name(name), tmp_path / name)
    card = ModelCard.read(tmp_path / "model.json")
    card.onnx_sha256 = "0" * 64
    card.write(tmp_path)
    with pytest.raises(ModelError, match="does not match its card"):
        Engine(tmp_path, device="cpu", precision="fp32")
    with pytest.raises(ModelError, match="model not found"):
        Engine(tmp_path / "nothing-here.onnx")


def test_device_and_precision_refusals(model_path):
    with pytest.raises(UsageError, match="device must be"):
        Engine(model_path, device="tpu")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="precision must be"):
        Engine(model_path, precision="fp16")  # type: ignore[arg-type]
    # Asking for CUDA gives CUDA or a clear error, never a silent CPU run.
    try:
        engine = Engine(model_path, device="cuda")
    except UsageError as exc:
        assert "--device cuda" in str(exc)
    else:
        assert engine.device == "cuda"
    try:
        _, where = open_session(ROOT / "models" / "face_detector.onnx", "cuda")
    except UsageError as exc:
        assert "--device cuda" in str(exc)
    else:
        assert where == "cuda"
