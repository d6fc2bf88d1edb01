"""Classification metrics from labels and probabilities, in NumPy alone."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["evaluate", "expected_calibration_error", "format_interval", "ratio", "roc_auc",
           "summary_line", "wilson"]


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve for a binary task (Mann-Whitney U, ties counted half).

    Args:
        y_true: 1 for the positive class, 0 otherwise.
        score: the positive class's probability.
    """
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(score, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # Average ranks over ties so that equal scores count as half a win.
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def expected_calibration_error(
    y_true: np.ndarray, proba: np.ndarray, bins: int = 10
) -> tuple[float, list[dict[str, float]]]:
    """ECE of the top-class confidence, and the per-bin table (for the reliability figure)."""
    conf = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y_true).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    table = []
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        mask = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        n = int(mask.sum())
        if n == 0:
            continue
        acc, avg_conf = float(correct[mask].mean()), float(conf[mask].mean())
        ece += n / len(conf) * abs(acc - avg_conf)
        table.append({"lo": float(lo), "hi": float(hi), "count": n, "accuracy": acc,
                      "confidence": avg_conf})
    return float(ece), table


def evaluate(y_true: np.ndarray, proba: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1, confusion matrix, ROC AUC (binary), ECE."""
    y_true = np.asarray(y_true, dtype=np.int64)
    pred = proba.argmax(axis=1)
    k = len(classes)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (y_true, pred), 1)
    per_class = {}
    for c, name in enumerate(classes):
        tp = int(confusion[c, c])
        fp = int(confusion[:, c].sum() - tp)
        fn = int(confusion[c, :].sum() - tp)
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        per_class[name] = {"precision": p, "recall": r, "f1": f1, "support": int(tp + fn)}
    ece, bins = expected_calibration_error(y_true, proba)
    out: dict[str, Any] = {
        "n": int(len(y_true)),
        "accuracy": float((pred == y_true).mean()) if len(y_true) else 0.0,
        "per_class": per_class,
        "macro_f1": float(np.mean([v["f1"] for v in per_class.values()])),
        "confusion": {"classes": list(classes), "rows_true_cols_pred": confusion.tolist()},
        "ece": ece,
        "calibration_bins": bins,
        "errors": int((pred != y_true).sum()),
    }
    if k == 2:
        out["roc_auc"] = roc_auc(y_true == 1, proba[:, 1])
        out["roc_auc_positive_class"] = classes[1]
    else:  # one-vs-rest, macro
        aucs = [roc_auc(y_true == c, proba[:, c]) for c in range(k)]
        # A class absent from the test split has no AUC (nan); none at all gives nan, quietly.
        known = [a for a in aucs if not np.isnan(a)]
        out["roc_auc"] = float(np.mean(known)) if known else float("nan")
        out["roc_auc_kind"] = "one-vs-rest macro"
    return out


def summary_line(metrics: dict[str, Any]) -> str:
    """One line of the headline figures."""
    return (
        f"accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['macro_f1']:.4f}, "
        f"ROC AUC {metrics['roc_auc']:.4f}, ECE {metrics['ece']:.4f}, errors {metrics['errors']}"
    )


def ratio(a: int, b: int) -> float | None:
    """a / b to four places, or None when there is nothing to divide by."""
    return round(a / b, 4) if b else None


def wilson(k: int, n: int, z: float = 1.96) -> list[float] | None:
    """The 95% Wilson score interval of k successes in n (None for n = 0)."""
    if not n:
        return None
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(centre - half, 4), round(centre + half, 4)]


def format_interval(ci: list[float] | None) -> str:
    """A :func:`wilson` interval for a report line: ``(95% CI 0.38-0.96)``, or ``""``."""
    return "" if ci is None else f"(95% CI {ci[0]:.2f}-{ci[1]:.2f})"
