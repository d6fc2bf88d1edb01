"""RetinaFace's ONNX graph trained in TensorFlow: the training side of
:mod:`maskcore.detector_training`, the only part of it that imports TensorFlow and ONNX.

:class:`OnnxConvNet` reads the graph's convolutions (batch norms are already folded into them),
activations, FPN upsampling and class and box heads into TensorFlow, and writes trained weights
back into the same graph, so the ONNX file stays the source of truth for the architecture and
the detector's NumPy pre- and post-processing (:mod:`maskcore.detector`) stay as they are.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import numpy_helper
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's start-up chatter out of job logs

import tensorflow as tf  # noqa: E402
from tensorflow import keras  # noqa: E402

from maskcore.cnn import setup_tensorflow  # noqa: E402
from maskcore.errors import ModelError  # noqa: E402
from maskcore.progress import say  # noqa: E402

if TYPE_CHECKING:
    from maskcore.detector import FaceDetector
    from maskcore.detector_training import DetectorTraining

__all__ = ["OnnxConvNet", "fit", "multibox_loss", "parity"]


class OnnxConvNet:
    """RetinaFace's ONNX graph as a TensorFlow function of trainable weights.

    Supports what the network is made of: convolutions (grouped ones only as depthwise),
    LeakyRelu, Relu, Add, nearest 2x Resize and channel Concat, up to the three SSH outputs, then
    the class and box heads. Landmarks are not computed. Tensors are NHWC.
    """

    HEADS = ("/ssh1/Relu_output_0", "/ssh2/Relu_output_0", "/ssh3/Relu_output_0")

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        graph = onnx.load(self.path).graph
        self.initial = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        # The exporter repeats a shared convolution with its weights behind Identity nodes.
        alias = {n.output[0]: n.input[0] for n in graph.node
                 if n.op_type == "Identity" and n.input[0] in self.initial}
        self.variables: dict[str, Any] = {}
        self.depthwise: set[str] = set()
        self.nodes: list[tuple[str, list[str], str, dict[str, Any]]] = []
        for node in graph.node:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            inputs = [alias.get(i, i) for i in node.input]
            if node.op_type == "Conv":
                weight, bias = inputs[1], inputs[2]
                w = self.initial[weight]
                if attrs.get("group", 1) == 1:
                    kernel = w.transpose(2, 3, 1, 0)  # (out, in, kh, kw) -> (kh, kw, in, out)
                elif attrs["group"] == w.shape[0] and w.shape[1] == 1:
                    kernel = w.transpose(2, 3, 0, 1)  # depthwise: (kh, kw, channels, 1)
                    self.depthwise.add(weight)
                else:
                    raise ModelError(f"{self.path}: grouped convolution {node.name} is not "
                                     "depthwise; not supported")
                if "landmark" in weight:
                    continue
                self.variables[weight] = tf.Variable(kernel, name=_tf_name(weight))
                self.variables[bias] = tf.Variable(self.initial[bias], name=_tf_name(bias))
            self.nodes.append((node.op_type, inputs, node.output[0], attrs))
        missing = [h for h in self.HEADS if h not in {n[2] for n in self.nodes}]
        if missing:
            raise ModelError(f"{self.path} is not the RetinaFace graph this trainer knows "
                             f"(no {', '.join(missing)})")

    def __call__(self, x: Any) -> tuple[Any, Any]:
        """Canvases (N, H, W, 3) -> class logits (N, A, 2) and box codes (N, A, 4)."""
        env: dict[str, Any] = {"input": x}
        for op, inputs, output, attrs in self.nodes:
            ready = bool(inputs) and inputs[0] in env
            if op == "Conv" and ready and inputs[1] in self.variables:
                if "_head" in inputs[1]:
                    continue  # the heads are applied below, per level
                pad = attrs["pads"][0]
                stride = attrs["strides"][0]
                y = env[inputs[0]]
                if pad:  # ONNX pads both sides alike; TF's "SAME" does not at stride 2
                    y = tf.pad(y, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
                if inputs[1] in self.depthwise:
                    y = tf.nn.depthwise_conv2d(y, self.variables[inputs[1]],
                                               [1, stride, stride, 1], "VALID")
                else:
                    y = tf.nn.conv2d(y, self.variables[inputs[1]], stride, "VALID")
                env[output] = y + self.variables[inputs[2]]
            elif op == "LeakyRelu" and ready:
                env[output] = tf.nn.leaky_relu(env[inputs[0]], attrs["alpha"])
            elif op == "Relu" and ready:
                env[output] = tf.nn.relu(env[inputs[0]])
            elif op == "Add" and all(i in env for i in inputs):
                env[output] = env[inputs[0]] + env[inputs[1]]
            elif op == "Resize" and ready:
                # Nearest, to the next level's size: twice the side on canvases of 32 px steps.
                env[output] = tf.repeat(tf.repeat(env[inputs[0]], 2, axis=1), 2, axis=2)
            elif op == "Concat" and attrs.get("axis") == 1 and all(i in env for i in inputs):
                env[output] = tf.concat([env[i] for i in inputs], -1)
        logits: list[Any] = []
        codes: list[Any] = []
        for level, name in enumerate(self.HEADS):
            features = env[name]
            n = tf.shape(features)[0]
            for head, width, out in (("class_head", 2, logits), ("bbox_head", 4, codes)):
                prefix = f"{head}.{head}.{level}"
                y = tf.nn.conv2d(features, self.variables[f"{prefix}.weight"], 1, "VALID")
                # NHWC, then the anchors of a cell in turn: the ONNX graph's own order.
                out.append(tf.reshape(y + self.variables[f"{prefix}.bias"], [n, -1, width]))
        return tf.concat(logits, 1), tf.concat(codes, 1)

    def trainable(self) -> list[Any]:
        """Every weight the forward pass uses."""
        return list(self.variables.values())

    def write_onnx(self, path: str | Path) -> None:
        """The source graph with this network's weights in place of its own."""
        model = onnx.load(self.path)
        for init in model.graph.initializer:
            var = self.variables.get(init.name)
            if var is None:
                continue
            value = var.numpy()
            if value.ndim == 4:
                value = value.transpose((2, 3, 0, 1) if init.name in self.depthwise
                                        else (3, 2, 0, 1))
            if value.shape != self.initial[init.name].shape:
                raise ModelError(f"weight {init.name}: shape {value.shape}, graph has "
                                 f"{self.initial[init.name].shape}")
            init.CopyFrom(numpy_helper.from_array(value.astype(np.float32), init.name))
        onnx.save(model, str(path))


def _tf_name(onnx_name: str) -> str:
    return "".join(c if c.isalnum() or c in "._" else "_" for c in onnx_name)


def multibox_loss(logits: Any, codes: Any, labels: Any, targets: Any,
                  cfg: DetectorTraining) -> tuple[Any, Any]:
    """(class loss, box loss) of a batch, each summed and divided by its number of positives."""
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)  # (N, A)
    positive = labels > 0
    n_pos = tf.reduce_sum(tf.cast(positive, tf.float32), 1)
    # The hardest negatives of each picture: rank the negatives by their loss.
    negative_ce = tf.where(positive, -1.0, ce)
    rank = tf.argsort(tf.argsort(negative_ce, axis=1, direction="DESCENDING"), axis=1)
    keep = cfg.negatives_per_positive * n_pos
    chosen = positive | (tf.cast(rank, tf.float32) < keep[:, None])
    norm = tf.maximum(tf.reduce_sum(n_pos), 1.0)
    class_loss = tf.reduce_sum(tf.where(chosen, ce, 0.0)) / norm
    diff = tf.abs(codes - targets)
    smooth_l1 = tf.reduce_sum(tf.where(diff < 1.0, 0.5 * diff * diff, diff - 0.5), -1)
    box_loss = cfg.box_weight * tf.reduce_sum(tf.where(positive, smooth_l1, 0.0)) / norm
    return class_loss, box_loss


def fit(net: OnnxConvNet,
        batch: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]],
        pictures: int, n_anchors: int, cfg: DetectorTraining, rng: np.random.Generator
        ) -> list[dict[str, Any]]:
    """Train ``net`` for ``cfg.epochs`` epochs with Adam; returns the mean losses of each epoch.

    Args:
        batch: picture indices -> (canvases (N, S, S, 3), anchor classes (N, A), box codes
            (N, A, 4)), drawn anew each time (the augmentation).
        pictures: how many training pictures there are.
        n_anchors: anchors on the square training canvas.
    """
    setup_tensorflow(cfg.seed)
    weights = net.trainable()
    optimizer = keras.optimizers.Adam(cfg.learning_rate)

    def train_step(x: Any, labels: Any, targets: Any) -> tuple[Any, Any]:
        with tf.GradientTape() as tape:
            logits, codes = net(x)
            class_loss, box_loss = multibox_loss(logits, codes, labels, targets, cfg)
            loss = class_loss + box_loss  # inside the tape, or it has no gradient
        optimizer.apply_gradients(zip(tape.gradient(loss, weights), weights, strict=True))
        return class_loss, box_loss

    # One graph for every batch: the canvas is square and fixed, only N may vary.
    step = tf.function(train_step, input_signature=[
        tf.TensorSpec([None, cfg.canvas, cfg.canvas, 3], tf.float32),
        tf.TensorSpec([None, n_anchors], tf.int32),
        tf.TensorSpec([None, n_anchors, 4], tf.float32)])
    history = []
    for epoch in range(cfg.epochs):
        t_epoch = time.monotonic()
        order = rng.permutation(pictures)
        losses = []
        # Whole batches only (one graph shape), but at least one batch however few pictures.
        for start in range(0, max(pictures - cfg.batch_size, 0) + 1, cfg.batch_size):
            c, b = step(*batch(order[start:start + cfg.batch_size]))
            losses.append((float(c), float(b)))
        mean = np.mean(losses, axis=0)
        history.append({"epoch": epoch + 1, "class_loss": round(float(mean[0]), 4),
                        "box_loss": round(float(mean[1]), 4)})
        say(f"epoch {epoch + 1}/{cfg.epochs}: class loss {mean[0]:.3f}, box loss {mean[1]:.3f} "
            f"({time.monotonic() - t_epoch:.0f} s)")
    return history


def parity(net: OnnxConvNet, detector: FaceDetector, image: np.ndarray) -> float:
    """Largest difference between ``detector`` (the written ONNX file) and the trained network,
    in face probability and box code, on one picture's canvas.

    Raises:
        ModelError: they differ by more than 1e-3.
    """
    canvas, _ = detector.prepare(Image.fromarray(image))
    loc, score = detector.run(canvas[None])
    logits, codes = net(tf.constant(canvas[None].transpose(0, 2, 3, 1)))
    diff = max(float(np.abs(tf.nn.softmax(logits)[..., 1].numpy() - score).max()),
               float(np.abs(codes.numpy() - loc).max()))
    if diff > 1e-3:
        raise ModelError(f"the written detector differs from the trained one by {diff:.2g}")
    return round(diff, 7)
