"""The model card: round trip, refusals, and the bundled cards."""

from __future__ import annotations

import json

import pytest

from maskcore.card import CARD_NAME, ModelCard, file_sha256
from maskcore.errors import ModelError
from maskcore.preprocess import PreprocessSpec
from tests.conftest import ROOT


def test_round_trip_keeps_every_field(tmp_path):
    card = ModelCard(classes=["a", "b", "c"], preprocess=PreprocessSpec(size=(64, 64)),
                     onnx_sha256="ab" * 32, extra={"face_crop": {"margin": 0.1}},
                     int8={"onnx_file": "model.int8.onnx", "onnx_sha256": "cd" * 32},
                     whole_picture={"input": "whole", "closeup_network": {"model_id": "ef" * 6}})
    back = ModelCard.read(card.write(tmp_path))
    assert back.classes == card.classes and back.preprocess == card.preprocess
    assert back.extra == card.extra and back.int8 == card.int8
    assert back.whole_picture == card.whole_picture and back.whole_input == "whole"
    assert back.model_id == "ab" * 6
    assert json.loads((tmp_path / CARD_NAME).read_text())["int8"]["model_id"] == "cd" * 6


@pytest.mark.parametrize("text, says", [
    ("not json", "cannot read model card"),
    ('{"classes": ["a"]}', "missing or has a malformed field"),
    ('{"classes": ["a"], "preprocess": {"version": "mc-pre-0", "size": [8, 8]}}',
     "not implemented here"),
])
def test_broken_cards_are_model_errors(tmp_path, text, says):
    (tmp_path / CARD_NAME).write_text(text)
    with pytest.raises(ModelError, match=says):
        ModelCard.read(tmp_path / CARD_NAME)
    with pytest.raises(ModelError, match="not found"):
        ModelCard.read(tmp_path / "elsewhere" / CARD_NAME)


def test_the_bundled_cards_match_their_files():
    card = ModelCard.read(ROOT / "models" / CARD_NAME)
    assert card.onnx_sha256 == file_sha256(ROOT / "models" / card.onnx_file)
    assert card.int8 and card.int8["onnx_sha256"] == file_sha256(ROOT / "models" /
                                                               card.int8["onnx_file"])
    assert card.classes == ["with_mask", "without_mask", "mask_weared_incorrect"]
    # the bundled model is the face network paired with a close-up network of the same three
    # classes, which learned the third from masks drawn on bare close-ups
    closeup = card.whole_picture["closeup_network"] if card.whole_picture else {}
    assert closeup["classes"] == card.classes
    drawn = [d for d in closeup["training_data"]["datasets"] if d["name"].endswith("drawn-masks")]
    assert len(drawn) == 1 and sum(drawn[0]["ways_per_split"]["train"].values()) > 500
    # the card says which datasets, by name and fingerprint, never where they sat
    assert "/work" not in (ROOT / "models" / CARD_NAME).read_text()
    assert "root" not in card.extra["training_data"]
    assert "root" not in card.whole_picture["closeup_network"]["training_data"]
    detector = json.loads((ROOT / "models" / "face_detector.json").read_text())
    assert detector["onnx_sha256"] == file_sha256(ROOT / "models" / detector["onnx_file"])


def test_a_whole_picture_entry_without_its_input_is_refused(tmp_path):
    d = {"classes": ["a", "b"], "preprocess": PreprocessSpec().to_dict(),
         "whole_picture": {"rule": "no input named"}}
    (tmp_path / CARD_NAME).write_text(json.dumps(d))
    with pytest.raises(ModelError, match="whole_picture entry needs"):
        ModelCard.read(tmp_path / CARD_NAME)
