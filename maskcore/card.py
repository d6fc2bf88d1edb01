"""The model card: the contract between training and inference.

``model.json`` sits beside ``model.onnx`` and says what the model expects and produces: classes,
input and output tensors, the full preprocessing spec and version, and the ONNX file's sha256,
whose first 12 hex digits are the model id that every manifest row carries. Inference reads all
of this back from the card; nothing on the inference side repeats these constants.

A card may also list an int8 variant (``model.int8.onnx``, quantized from ``model.onnx`` by the
training job and checked against it): same input, output, classes and preprocessing, its own
sha256 and so its own model id, since its probabilities differ in the second decimal.

A card may also say the file holds a **whole-picture branch** (``whole_picture``, written by
``maskcore pair``): a boolean input, named there, that runs the picture through a close-up network
joined to the face network, for inputs that are whole pictures rather than face crops.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maskcore.errors import ModelError
from maskcore.preprocess import PreprocessSpec

__all__ = ["CARD_NAME", "ModelCard", "file_sha256", "model_id_of"]

CARD_NAME = "model.json"
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_id_of(sha256: str) -> str:
    """The model id: the first 12 hex digits of the ONNX file's sha256."""
    return sha256[:12]


@dataclass
class ModelCard:
    """What inference needs to know about a model, plus how it was made."""

    classes: list[str]
    preprocess: PreprocessSpec
    onnx_file: str = "model.onnx"  # relative to the card's folder
    onnx_sha256: str = ""
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    extra: dict[str, Any] = field(default_factory=dict)  # training facts: metrics, split, versions
    # The int8 variant: {"onnx_file", "onnx_sha256", ...how it was made and checked}, or None.
    int8: dict[str, Any] | None = None
    # The whole-picture branch: {"input": name of the boolean input, ...how it was joined}, or None.
    whole_picture: dict[str, Any] | None = None

    @property
    def whole_input(self) -> str | None:
        """The boolean input that switches the network to whole pictures (None: no such branch)."""
        return str(self.whole_picture["input"]) if self.whole_picture else None

    @property
    def model_id(self) -> str:
        """First 12 hex digits of the ONNX file's sha256."""
        return model_id_of(self.onnx_sha256)

    def variant(self, precision: str) -> tuple[str, str]:
        """``(file name, sha256)`` of the ``fp32`` model or its ``int8`` variant.

        Raises:
            ModelError: ``int8`` asked for, and the card lists no int8 variant.
        """
        if precision == "fp32":
            return self.onnx_file, self.onnx_sha256
        if precision == "int8":
            if not self.int8:
                raise ModelError("this model's card lists no int8 variant (model.int8.onnx); "
                                 "use --precision fp32 or auto")
            return str(self.int8["onnx_file"]), str(self.int8.get("onnx_sha256", ""))
        raise ValueError(f"precision must be fp32 or int8, not {precision!r}")

    def to_dict(self) -> dict[str, Any]:
        """The card as JSON-ready values."""
        h, w = self.preprocess.size
        return {
            "model_id": self.model_id,
            "onnx_file": self.onnx_file,
            "onnx_sha256": self.onnx_sha256,
            "classes": list(self.classes),
            "input": {"name": self.input_name, "shape": ["batch", h, w, 3], "dtype": "float32"},
            "output": {"name": self.output_name, "shape": ["batch", len(self.classes)],
                       "dtype": "float32", "meaning": "one probability per class, summing to 1"},
            "preprocess": self.preprocess.to_dict(),
            **({"int8": {"model_id": model_id_of(self.int8.get("onnx_sha256", "")), **self.int8}}
               if self.int8 else {}),
            **({"whole_picture": dict(self.whole_picture)} if self.whole_picture else {}),
            **self.extra,
        }

    def write(self, folder: str | Path) -> Path:
        """Write ``model.json`` into ``folder``; returns its path."""
        path = Path(folder) / CARD_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def read(cls, path: str | Path) -> ModelCard:
        """Read a card (``model.json``), or the card beside a ``model.onnx``.

        Raises:
            ModelError: missing or malformed card, or a preprocessing version not implemented here.
        """
        path = Path(path)
        if path.suffix == ".onnx":
            path = path.with_name(CARD_NAME)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ModelError(f"model card not found: {path}") from exc
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot read model card {path}: {exc}") from exc
        known = {"model_id", "onnx_file", "onnx_sha256", "classes", "input", "output", "preprocess",
                 "int8", "whole_picture"}
        try:
            spec = PreprocessSpec.from_dict(d["preprocess"])
            return cls(
                classes=[str(c) for c in d["classes"]],
                preprocess=spec,
                onnx_file=str(d.get("onnx_file", "model.onnx")),
                onnx_sha256=str(d.get("onnx_sha256", "")),
                input_name=str(d.get("input", {}).get("name", INPUT_NAME)),
                output_name=str(d.get("output", {}).get("name", OUTPUT_NAME)),
                extra={k: v for k, v in d.items() if k not in known},
                int8=_int8_entry(d.get("int8")),
                whole_picture=_whole_entry(d.get("whole_picture")),
            )
        except ValueError as exc:
            raise ModelError(f"model card {path}: {exc}") from exc
        except (KeyError, TypeError, IndexError) as exc:
            raise ModelError(f"model card {path} is missing or has a malformed field: {exc}") from exc


def _int8_entry(d: Any) -> dict[str, Any] | None:
    """The card's int8 entry without its derived ``model_id``; None when absent."""
    if not d:
        return None
    if not isinstance(d, dict) or not d.get("onnx_file"):
        raise ValueError("the int8 entry needs an onnx_file")
    return {k: v for k, v in d.items() if k != "model_id"}


def _whole_entry(d: Any) -> dict[str, Any] | None:
    """The card's whole-picture entry; None when absent."""
    if not d:
        return None
    if not isinstance(d, dict) or not d.get("input"):
        raise ValueError("the whole_picture entry needs the name of its input")
    return dict(d)
