"""A close-up network joined to the face network in one ONNX file (``maskcore pair``).

The three-class face network learned street faces of 20 px beside close-ups of 500 px with one
network's capacity, and reads whole close-ups less well than a network trained on close-ups
alone (docs/MODEL.md). Rather than run two models, the pair is one file with one model id: an
``If`` on a boolean input (``whole``) runs, for whole pictures, the close-up network as well and
lets it split the probability the face network gives the classes both know; the classes only
the face network knows (a mask worn wrongly) keep the face network's probability. Face crops
take the other branch, the face network alone, at its own cost: ONNX Runtime runs only the
branch taken.

For a close-up network with classes ``C`` (the face network's first ``len(C)``), face network
probabilities ``p`` and close-up network probabilities ``q``::

    whole[c] = (1 - sum(p[len(C):])) * q[c]   for c in C
    whole[k] = p[k]                           for the face network's other classes

A close-up network that knows every class of the face network (the bundled one since v13,
trained with drawn masks) leaves the face network nothing to give: then ``whole = q`` and the
whole-picture branch does not run the face network at all. The face network's weights stay in
the outer graph either way; its nodes are in the branches that use them.

Training side only: imports ``onnx`` (the inference side reads the result with ONNX Runtime).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from maskcore.card import CARD_NAME, ModelCard, file_sha256, model_id_of
from maskcore.errors import ModelError
from maskcore.split import SPLIT_FILE, read_split_record

__all__ = ["WHOLE_INPUT", "face_network", "join_networks", "pair_models"]

WHOLE_INPUT = "whole"
_CLOSEUP = "closeup/"  # prefix of every name taken from the close-up network
_JOIN = "pair/"  # prefix of the nodes that join the two
_FACE = "face/"  # prefix of the face network's output inside the pair
# Files of the face network's folder that describe it and travel with the pair.
_COMPANIONS = ("model.keras", "report.json", "audit.json", SPLIT_FILE, "history.png",
               "confusion.png", "calibration.png", "errors.png")


def join_networks(face: onnx.ModelProto, closeup: onnx.ModelProto, *, input_name: str,
                  output_name: str) -> onnx.ModelProto:
    """One model: ``face`` for crops, and the close-up rule above when ``whole`` is true.

    Both networks take ``input_name`` and give probabilities as ``output_name``; the close-up
    network's classes are the face network's first ones. ``face`` is changed in place and
    returned.

    Raises:
        ModelError: the two cannot be joined (inputs, outputs, classes or opsets that differ).
    """
    g, cg = face.graph, closeup.graph
    for model, what in ((face, "face"), (closeup, "close-up")):
        if [i.name for i in model.graph.input] != [input_name] or \
                [o.name for o in model.graph.output] != [output_name]:
            raise ModelError(f"the {what} network must have the one input {input_name!r} and "
                             f"the one output {output_name!r}")
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for n in model.graph.node for a in n.attribute):
            raise ModelError(f"the {what} network holds sub-graphs (is it paired already?)")
    n_face = _classes_of(g.output[0])
    n_close = _classes_of(cg.output[0])
    if not 0 < n_close <= n_face:
        raise ModelError(f"the close-up network has {n_close} classes, the face network "
                         f"{n_face}: it must have at most as many")
    opsets = _merged_opsets(face, closeup)

    # The close-up network's names, prefixed; its input becomes the shared one.
    rename = {input_name: input_name}
    for node in cg.node:
        for name in (*node.input, *node.output):
            if name and name not in rename:
                rename[name] = _CLOSEUP + name
    for init in cg.initializer:
        rename.setdefault(init.name, _CLOSEUP + init.name)
    for node in cg.node:
        node.name = _CLOSEUP + node.name
        node.input[:] = [rename[x] if x else x for x in node.input]
        node.output[:] = [rename[x] if x else x for x in node.output]
    for init in cg.initializer:
        init.name = rename[init.name]
    q = rename[output_name]

    # The face network's output becomes an inner tensor; the If gives the model's output. Its
    # nodes move into the branches that use them, its weights stay in the outer graph (a branch
    # reads them from there), so a whole picture read by a close-up network that knows every
    # class does not run the face network at all (ONNX Runtime runs only the branch taken).
    p = _FACE + output_name
    _rename_tensor(g, output_name, p)
    face_nodes = list(g.node)
    del g.node[:]

    if n_close == n_face:  # the close-up network alone: whole = q
        whole_nodes = [*cg.node,
                       helper.make_node("Identity", [q], [_JOIN + "whole"], name=_JOIN + "whole")]
        whole_inits = [*cg.initializer]
    else:
        whole_nodes = [*cg.node, *_copies(face_nodes), *_joining(p, q)]
        whole_inits = [*cg.initializer, *_joining_constants(n_close, n_face)]
    out_info = [helper.make_tensor_value_info(_JOIN + "whole", TensorProto.FLOAT,
                                              ["batch", n_face])]
    then_branch = helper.make_graph(whole_nodes, "whole_picture", [], out_info,
                                    initializer=whole_inits)
    else_branch = helper.make_graph(
        [*face_nodes, helper.make_node("Identity", [p], [_JOIN + "face"], name=_JOIN + "face")],
        "face_crop", [],
        [helper.make_tensor_value_info(_JOIN + "face", TensorProto.FLOAT, ["batch", n_face])])
    g.node.append(helper.make_node("If", [WHOLE_INPUT], [output_name], name=_JOIN + "if",
                                   then_branch=then_branch, else_branch=else_branch))
    g.input.append(helper.make_tensor_value_info(WHOLE_INPUT, TensorProto.BOOL, []))
    del g.output[:]
    g.output.append(helper.make_tensor_value_info(output_name, TensorProto.FLOAT,
                                                  ["batch", n_face]))
    del face.opset_import[:]
    face.opset_import.extend(helper.make_opsetid(domain, version)
                             for domain, version in sorted(opsets.items()))
    face.metadata_props.add(key="whole_input", value=WHOLE_INPUT)
    onnx.checker.check_model(face)
    return face


def face_network(paired: onnx.ModelProto, *, output_name: str) -> onnx.ModelProto:
    """The face network alone, taken back out of a pair :func:`join_networks` made (changed in
    place and returned): what the pair computes for face crops, as a plain one-input model.

    Raises:
        ModelError: ``paired`` is not such a pair.
    """
    g = paired.graph
    ifs = [n for n in g.node if n.op_type == "If" and list(n.output) == [output_name]]
    if len(ifs) != 1 or WHOLE_INPUT not in {i.name for i in g.input}:
        raise ModelError("not a paired model: no whole-picture branch to take off")
    g.node.remove(ifs[0])
    if not any(_FACE + output_name in n.output for n in g.node):
        # The face network's nodes are in the face-crop branch (pairs made since 2026-12-07),
        # not in the outer graph: bring them back out, without the branch's closing Identity.
        (crop,) = [a.g for a in ifs[0].attribute if a.name == "else_branch"]
        g.node.extend(n for n in crop.node if n.name != _JOIN + "face")
    _rename_tensor(g, _FACE + output_name, output_name)
    (flag,) = [i for i in g.input if i.name == WHOLE_INPUT]
    g.input.remove(flag)
    for prop in [m for m in paired.metadata_props if m.key == "whole_input"]:
        paired.metadata_props.remove(prop)
    onnx.checker.check_model(paired)
    return paired


def pair_models(faces_dir: Path, closeups_dir: Path, out: Path, *,
                log: Callable[[str], None] = print) -> ModelCard:
    """Join the close-up model in ``closeups_dir`` to the face model in ``faces_dir``, both as
    ``maskcore train`` writes them, into ``out``: ``model.onnx``, its int8 variant when both
    have one, the card, and the face model's report, split and plots.

    Raises:
        ModelError: missing models, or two that cannot be paired (preprocessing, classes, or
            close-up pictures split differently, which would leak one's test pictures into the
            other's training).
    """
    face = ModelCard.read(faces_dir / CARD_NAME)
    close = ModelCard.read(closeups_dir / CARD_NAME)
    if face.whole_picture or close.whole_picture:
        raise ModelError("one of the two models is paired already")
    if face.preprocess != close.preprocess:
        raise ModelError("the two models were trained with different preprocessing")
    if face.classes[:len(close.classes)] != close.classes:
        raise ModelError(f"the close-up model's classes {close.classes} must be the face "
                         f"model's first ones ({face.classes})")
    _check_same_split(faces_dir, closeups_dir)
    out.mkdir(parents=True, exist_ok=True)

    variants = ["fp32"]
    if face.int8 and close.int8:
        variants.append("int8")
    else:
        log("one of the two has no int8 variant: the pair has none either")
    written: dict[str, tuple[str, str]] = {}
    for precision in variants:
        face_file, _ = face.variant(precision)
        close_file, _ = close.variant(precision)
        joined = join_networks(onnx.load(faces_dir / face_file), onnx.load(closeups_dir / close_file),
                               input_name=face.input_name, output_name=face.output_name)
        tmp = out / (face_file + ".tmp")
        onnx.save(joined, tmp)
        worst = _check_joined(tmp, faces_dir / face_file, closeups_dir / close_file,
                              face.input_name, len(close.classes))
        log(f"{precision}: the pair computes what the two networks do (largest difference "
            f"{worst:.1e})")
        tmp.replace(out / face_file)
        written[precision] = (face_file, file_sha256(out / face_file))

    if out.resolve() != faces_dir.resolve():
        for name in _COMPANIONS:
            if (faces_dir / name).is_file():
                shutil.copy2(faces_dir / name, out / name)

    networks = {"face_network": _summary(face, faces_dir),
                "closeup_network": {**_summary(close, closeups_dir),
                                    "gflops_per_picture": close.extra.get("gflops_per_picture"),
                                    "metrics": close.extra.get("metrics", {}),
                                    "int8_metrics": (close.int8 or {}).get("metrics", {}),
                                    "training": close.extra.get("training", {}),
                                    "training_data": close.extra.get("training_data", {})}}
    face.onnx_sha256 = written["fp32"][1]
    face.int8 = ({**face.int8, "onnx_sha256": written["int8"][1]}
                 if "int8" in written and face.int8 else None)
    face.whole_picture = {
        "input": WHOLE_INPUT,
        "meaning": "true: the inputs are whole pictures (close-ups, pictures without a face "
                   "found, --faces off), read by the close-up network"
                   + (" alone, which knows every class" if close.classes == face.classes else
                      " and the face network together") +
                   "; false: face crops, read by the face network alone",
        "rule": "whole[c] = (1 - sum of the face network's probabilities of the classes the "
                "close-up network does not know) * close-up network[c]; the other classes "
                "keep the face network's probability",
        **networks,
    }
    card_path = face.write(out)
    log(f"wrote {card_path}: model id {face.model_id}"
        + (f", int8 {model_id_of(written['int8'][1])}" if "int8" in written else ""))
    return face


def _joining(p: str, q: str) -> list[onnx.NodeProto]:
    """The nodes of the rule in the module's notes: ``p`` the face network's probabilities,
    ``q`` the close-up network's; the result is ``pair/whole``."""
    return [
        helper.make_node("Slice", [p, _JOIN + "start", _JOIN + "end", _JOIN + "axis"],
                         [_JOIN + "only_face"], name=_JOIN + "only_face"),
        helper.make_node("ReduceSum", [_JOIN + "only_face", _JOIN + "axis"],
                         [_JOIN + "only_face_sum"], keepdims=1, name=_JOIN + "only_face_sum"),
        helper.make_node("Sub", [_JOIN + "one", _JOIN + "only_face_sum"], [_JOIN + "shared"],
                         name=_JOIN + "shared"),
        helper.make_node("Mul", [_JOIN + "shared", q], [_JOIN + "split"], name=_JOIN + "split"),
        helper.make_node("Concat", [_JOIN + "split", _JOIN + "only_face"], [_JOIN + "whole"],
                         axis=1, name=_JOIN + "whole"),
    ]


def _joining_constants(n_close: int, n_face: int) -> list[onnx.TensorProto]:
    """The constants :func:`_joining` reads: which of the face network's classes are its own."""
    return [numpy_helper.from_array(np.array([n_close], np.int64), _JOIN + "start"),
            numpy_helper.from_array(np.array([n_face], np.int64), _JOIN + "end"),
            numpy_helper.from_array(np.array([1], np.int64), _JOIN + "axis"),
            numpy_helper.from_array(np.array(1.0, np.float32), _JOIN + "one")]


def _copies(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """Copies of ``nodes``, for a second branch that runs them too."""
    out = []
    for node in nodes:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        out.append(copy)
    return out


def _rename_tensor(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename a tensor wherever the graph's nodes make or use it."""
    for node in graph.node:
        node.input[:] = [new if x == old else x for x in node.input]
        node.output[:] = [new if x == old else x for x in node.output]


def _classes_of(value: onnx.ValueInfoProto) -> int:
    dims = value.type.tensor_type.shape.dim
    if len(dims) != 2 or not dims[1].dim_value:
        raise ModelError(f"output {value.name!r} is not (batch, classes)")
    return int(dims[1].dim_value)


def _merged_opsets(a: onnx.ModelProto, b: onnx.ModelProto) -> dict[str, int]:
    merged = {o.domain: o.version for o in a.opset_import}
    for o in b.opset_import:
        if merged.setdefault(o.domain, o.version) != o.version:
            raise ModelError(f"the two networks use opset {merged[o.domain]} and {o.version} of "
                             f"domain {o.domain or 'ai.onnx'!r}")
    return merged


def _check_same_split(faces_dir: Path, closeups_dir: Path) -> None:
    """The close-up pictures must fall in the same split in both models."""
    face, close = read_split_record(faces_dir), read_split_record(closeups_dir)
    for part in ("train", "val", "test"):
        if set(close["hashes"][part]) - set(face["hashes"][part]):
            raise ModelError(
                f"the close-up model's {part} pictures are not all in the face model's {part} "
                f"split: train both with the same --split-seed, so neither learns the other's "
                f"validation or test pictures")


def _check_joined(joined: Path, face: Path, closeup: Path, input_name: str, n_close: int,
                  n: int = 32) -> float:
    """Largest difference between the pair and the two networks run apart, on fixed random
    inputs; raises if it is not float noise."""
    x = np.random.default_rng(0).random((n, *_input_shape(face, input_name)), dtype=np.float32)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3

    def run(path: Path, **extra: Any) -> np.ndarray:
        s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        out: np.ndarray = s.run(None, {input_name: x, **extra})[0]
        return out

    p, q = run(face), run(closeup)
    rest = p[:, n_close:]
    expected = np.concatenate([(1 - rest.sum(1, keepdims=True)) * q, rest], axis=1)
    worst = 0.0
    for whole, want in ((False, p), (True, expected)):
        got = run(joined, **{WHOLE_INPUT: np.array(whole)})
        worst = max(worst, float(np.abs(got - want).max()))
    if worst > 1e-5:
        raise ModelError(f"the joined model differs from its two networks by {worst:.2e}")
    return worst


def _input_shape(path: Path, input_name: str) -> tuple[int, ...]:
    model = onnx.load(path, load_external_data=False)
    (value,) = [i for i in model.graph.input if i.name == input_name]
    return tuple(int(d.dim_value) for d in value.type.tensor_type.shape.dim[1:])


def _summary(card: ModelCard, folder: Path) -> dict[str, Any]:
    return {"model_id": model_id_of(file_sha256(folder / card.onnx_file)),
            **({"int8_model_id": model_id_of(str(card.int8.get("onnx_sha256", "")))}
               if card.int8 else {}),
            "classes": list(card.classes)}
