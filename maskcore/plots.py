"""Training plots: learning curves, confusion matrix, reliability diagram, worst mistakes."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers or in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["plot_history", "plot_confusion", "plot_calibration", "plot_errors"]


def plot_history(history: dict[str, list[float]], path: Path,
                 refit: dict[str, list[float]] | None = None) -> Path:
    """Accuracy and loss per epoch, train against validation; with ``refit``, the training
    curve of the network fitted again (train plus the box datasets' validation faces) too."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    for ax, key in zip(axes, ("accuracy", "loss"), strict=True):
        ax.plot(epochs, history.get(key, []), label="train")
        ax.plot(epochs, history.get(f"val_{key}", []), label="validation")
        if refit:
            ax.plot(np.arange(1, len(refit.get(key, [])) + 1), refit.get(key, []), "--",
                    label="refit, train + box validation (exported)")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_confusion(confusion: list[list[int]], classes: list[str], path: Path) -> Path:
    """The test confusion matrix with counts in the cells."""
    m = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(1.6 * len(classes) + 2, 1.4 * len(classes) + 1.5))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            colour = "white" if m[i, j] > m.max() / 2 else "black"
            ax.text(j, i, str(m[i, j]), ha="center", va="center", color=colour)
    ax.set_title("test confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_calibration(bins: list[dict[str, float]], ece: float, path: Path) -> Path:
    """Reliability diagram: accuracy against confidence per bin, with the ECE in the title."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect")
    ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-", label="model")
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"calibration, ECE = {ece:.4f}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_errors(
    images: np.ndarray,
    y_true: np.ndarray,
    proba: np.ndarray,
    classes: list[str],
    names: list[str],
    path: Path,
    limit: int = 16,
) -> Path:
    """Contact sheet of the worst test mistakes (highest wrong confidence).

    With no mistakes, it shows the least confident correct answers instead, and says so.
    """
    pred = proba.argmax(1)
    wrong = np.flatnonzero(pred != y_true)
    if len(wrong):
        order = wrong[np.argsort(-proba[wrong, pred[wrong]])][:limit]
        title = f"worst test mistakes ({len(wrong)} in all)"
    else:
        order = np.argsort(proba.max(1))[:limit]
        title = "no test mistakes: the least confident correct answers"
    cols = 4
    rows = max(int(np.ceil(len(order) / cols)), 1)
    # Three lines of title need about 0.5 inch above each 3-inch picture.
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.7 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, k in zip(axes.flat, order, strict=False):
        ax.imshow(np.clip(images[k], 0, 1))
        ax.set_title(
            f"true {classes[y_true[k]]}\npred {classes[pred[k]]} {proba[k, pred[k]]:.3f}\n"
            f"{_tail(names[k], 30)}",
            fontsize=8,
        )
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _tail(text: str, width: int) -> str:
    """``text``, or its last ``width - 1`` characters after an ellipsis when it is longer."""
    return text if len(text) <= width else "\u2026" + text[-(width - 1):]
