"""Score a run's picture labels against class folders: ``maskcore evaluate RESULTS --classes``.

The run classified a folder-per-class dataset (``ROOT/<class>/.../<picture>``, the layout
``maskcore train`` reads), so each picture's true class is the first folder of its path under
the run's input. From the rows:

* accuracy over the pictures whose folder names a class of the model, with its 95% Wilson
  interval (``uncertain`` counts as wrong: it is not the class);
* recall and precision per class, and the confusion matrix (rows: the folder, columns: the
  label given, ``uncertain`` included);
* the pictures read wrong, most confident first, and how many rows are errors or lie in a
  folder that names no class of the model (left out of the figures).

Exact copies (the same sha256) count once, as the training split keeps one file of each; a
group of copies spread over several folders takes the folder most of them are in, as there.
``split`` keeps the pictures of one part of the model's split record (``split.json``, by content
hash): the close-ups' test figures in docs/MODEL.md are ``--split test`` of the bundled model.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path, PurePosixPath
from typing import Any

from maskcore.errors import ModelError, UsageError
from maskcore.evaluate import SPLITS
from maskcore.metrics import format_interval, ratio, wilson
from maskcore.results import RunResults, open_results
from maskcore.split import read_split_record, split_record_path

__all__ = ["evaluate_classes", "format_class_report", "true_class"]

#: How many wrongly read pictures the report lists (the JSON has them all).
SHOWN_WRONG = 20


def true_class(source: str, run: RunResults) -> str:
    """The class folder a row's picture lies in: the first folder of its path under the run's
    input (a batch run's sources are relative to it; an S3 run's are URLs under it).

    Raises:
        UsageError: an ``s3://`` source outside the prefix the run's summary names.
    """
    if source.startswith("s3://"):
        root = str(run.summary.get("input") or run.summary.get("source") or "")
        root = root if root.endswith("/") else root + "/"
        if not root.startswith("s3://") or not source.startswith(root):
            raise UsageError(f"{source} is not under the input the run's summary names "
                             f"({root.rstrip('/') or 'none'}): cannot tell its class folder")
        source = source[len(root):]
    parts = PurePosixPath(source).parts
    return parts[0] if len(parts) > 1 else ""


def _split_hashes(run: RunResults, split: str, record: Path | None) -> tuple[set[str], str]:
    """The content hashes of one part of a split record (by default the one beside the model
    the run's summary names), and where the record was read."""
    if record is None:
        model_path = run.summary.get("model_path")
        if not model_path or str(model_path).startswith("s3://"):
            raise UsageError("the run's summary names no local model, so its split record "
                             "cannot be found: give --split-record")
        record = Path(model_path).parent
    path = split_record_path(record)
    try:
        hashes = read_split_record(path)["hashes"]
    except ModelError as exc:
        raise UsageError(str(exc)) from exc
    if split not in hashes:
        raise UsageError(f"{path} names no {split!r} pictures")
    return set(hashes[split]), str(path)


def evaluate_classes(results: str | Path, *, split: str = "all",
                     split_record: str | Path | None = None) -> dict[str, Any]:
    """Score the picture labels of the run in ``results`` (a batch job's ``--out`` folder, or a
    worker's ``s3://`` results prefix) against the class folders its pictures lie in.

    Args:
        results: the run's results.
        split: ``all``, or the part of the split record to keep.
        split_record: the ``split.json`` to read ``split`` from (or its folder); by default the
            one beside the model the run's summary names.

    Raises:
        UsageError: nothing could be scored, or the split record cannot be read.
    """
    if split not in SPLITS:
        raise UsageError(f"--split takes {', '.join(SPLITS)}, not {split!r}")
    run = open_results(str(results))
    keep, record = (None, "") if split == "all" else _split_hashes(
        run, split, Path(split_record) if split_record is not None else None)
    classes = sorted({k for r in run.rows for k in (r.get("probabilities") or {})})
    errors = 0
    outside: Counter[str] = Counter()
    groups: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for row in sorted(run.rows, key=lambda r: r["source"]):
        folder = true_class(row["source"], run)
        if folder not in classes:
            outside[folder] += 1
        elif keep is not None and row.get("sha256") and row["sha256"] not in keep:
            continue  # another part of the split (an unreadable file has no hash: counted)
        elif row["status"] != "ok":
            errors += 1
        else:
            groups[row["sha256"]].append((folder, row))
    if not groups:
        where = f" in the {split} split" if keep is not None else ""
        raise UsageError(f"no picture of {results} lies in a folder named for a class of the "
                         f"model ({', '.join(classes) or 'no rows'}){where}")
    labels = classes + ["uncertain"]
    present = sorted({f for members in groups.values() for f, _ in members})
    confusion = {c: dict.fromkeys(labels, 0) for c in present}
    wrong = []
    for members in groups.values():
        # Most copies' folder, the first in path order on a tie (Counter keeps first-seen order).
        truth = Counter(f for f, _ in members).most_common(1)[0][0]
        row = next(r for f, r in members if f == truth)
        confusion[truth][row["label"] if row["label"] in labels else "uncertain"] += 1
        if row["label"] != truth:
            wrong.append({"source": row["source"], "class": truth, "label": row["label"],
                          "score": row["score"], "faces": row.get("faces")})
    n = len(groups)
    right = n - len(wrong)
    per_class = {}
    for c in present:
        given = sum(confusion[t][c] for t in present)
        per_class[c] = {"pictures": sum(confusion[c].values()),
                        "recall": ratio(confusion[c][c], sum(confusion[c].values())),
                        "recall_ci95": wilson(confusion[c][c], sum(confusion[c].values())),
                        "precision": ratio(confusion[c][c], given)}
    wrong.sort(key=lambda w: (-(w["score"] or 0.0), w["source"]))
    return {
        "results": str(results),
        "split": split,
        "split_record": record,
        "faces_mode": run.summary.get("faces_mode"),
        "model_id": run.summary.get("model_id"),
        "pictures": n,
        "copies_counted_once": sum(len(m) for m in groups.values()) - n,
        "errors": errors,
        "outside_classes": dict(outside),
        "accuracy": ratio(right, n),
        "accuracy_ci95": wilson(right, n),
        "wrong": len(wrong),
        "per_class": per_class,
        "confusion": {"columns": labels,
                      "rows": {c: list(confusion[c].values()) for c in present}},
        "wrong_pictures": wrong,
    }


def format_class_report(report: dict[str, Any]) -> str:
    """The figures as a short table for a terminal."""

    def pct(x: float | None) -> str:
        return "  n/a" if x is None else f"{x:.4f}"

    split = report["split"] + (f", from {report['split_record']}" if report["split_record"] else "")
    mode = f", --faces {report['faces_mode']}" if report["faces_mode"] else ""
    lines = [f"{report['pictures']} pictures ({split}{mode}), each read as the class folder "
             "it lies in",
             f"  accuracy   {pct(report['accuracy'])}   95% CI {report['accuracy_ci95']}"
             f"   ({report['wrong']} wrong)"]
    for c, m in report["per_class"].items():
        lines.append(f"  {c:<24} recall {pct(m['recall'])} {format_interval(m['recall_ci95'])}  precision "
                     f"{pct(m['precision'])}  ({m['pictures']} pictures)")
    labels = report["confusion"]["columns"]
    rows = report["confusion"]["rows"]
    first = max(len(c) for c in rows) + 2
    lines += ["", "confusion (rows: class folder, columns: label given)",
              " " * (first + 2) + "".join(f"  {s}" for s in labels)]
    for c, counts in rows.items():
        lines.append(f"  {c:<{first}}" + "".join(f"  {k:>{len(s)}}"
                                                 for s, k in zip(labels, counts, strict=True)))
    notes = []
    if report["copies_counted_once"]:
        notes.append(f"{_n(report['copies_counted_once'], 'exact copy', 'exact copies')} "
                     "counted once")
    if report["errors"]:
        notes.append(f"{_n(report['errors'], 'error row')} not scored")
    for folder, k in report["outside_classes"].items():
        notes.append(f"{_n(k, 'file')} outside any class folder, not scored" if not folder
                     else f"{_n(k, 'file')} in {folder}/, not a class of the model, not scored")
    if notes:
        lines += [""] + [f"  {s}" for s in notes]
    if report["wrong_pictures"]:
        shown = report["wrong_pictures"][:SHOWN_WRONG]
        lines += ["", "read wrong, most confident first"
                  + (f" ({len(shown)} of {report['wrong']}; --json lists all)"
                     if report["wrong"] > len(shown) else "")]
        for w in shown:
            score = "" if w["score"] is None else f" {w['score']:.3f}"
            faces = "" if w["faces"] is None else f", {_n(w['faces'], 'face')}"
            lines.append(f"  {w['source']}: {w['label']}{score}{faces}")
    return "\n".join(lines)


def _n(k: int, one: str, many: str | None = None) -> str:
    return f"{k} {one if k == 1 else many or one + 's'}"
