"""Folder-per-class datasets: scanning, one parallel pass over every file, and the audit report.

A dataset is ``ROOT/<class>/.../<file>``: classes are the sub-folder names, sorted, and a label is
the class's position in that order. Hidden files and folders (a leading dot) are skipped and
counted. One pass (:func:`inspect`) reads each file once, hashes it and runs it through the shared
preprocessing; the audit is computed from that pass, and training can keep the arrays it produced
so that no picture is decoded twice.
"""

from __future__ import annotations

import hashlib
import os
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maskcore.boxdata import is_box_dataset
from maskcore.errors import DatasetError, ImageDecodeError
from maskcore.pool import default_workers, make_pool
from maskcore.preprocess import DEFAULT_SPEC, PreprocessSpec, load
from maskcore.progress import Progress
from maskcore.storage import walk_files

__all__ = ["DatasetIndex", "FileInfo", "Sample", "audit", "format_audit", "inspect", "scan"]

#: A balance ratio (smallest class / largest class) under this is called imbalanced.
IMBALANCE_RATIO = 0.8


@dataclass(frozen=True)
class Sample:
    """One file of the dataset and its label."""

    path: Path  # absolute
    label: int  # index into DatasetIndex.classes


@dataclass(frozen=True)
class DatasetIndex:
    """What :func:`scan` found under a dataset root."""

    root: Path
    classes: tuple[str, ...]
    samples: tuple[Sample, ...]
    hidden_skipped: int  # hidden files and folders not entered
    stray_files: tuple[str, ...]  # files directly under the root, outside any class folder

    def relpath(self, sample: Sample) -> str:
        """The sample's path relative to the dataset root, with forward slashes."""
        return sample.path.relative_to(self.root).as_posix()


@dataclass(frozen=True)
class FileInfo:
    """What one pass learned about one file."""

    relpath: str
    label: int
    sha256: str
    n_bytes: int
    width: int = 0
    height: int = 0
    format: str = ""
    mode: str = ""
    error: str = ""  # empty when the picture decoded


def scan(root: str | os.PathLike[str]) -> DatasetIndex:
    """List a folder-per-class dataset.

    Raises:
        DatasetError: the root is missing or has no class folder.
    """
    root_path = Path(root).expanduser().resolve()
    if not root_path.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    hidden = 0
    classes: list[str] = []
    stray: list[str] = []
    for entry in sorted(root_path.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            hidden += 1
        elif entry.is_dir():
            classes.append(entry.name)
        else:
            stray.append(entry.name)
    if not classes:
        hint = "expected ROOT/<class>/<pictures>, or a box dataset: ROOT/images/ and " \
            "ROOT/annotations/ (Pascal VOC)"
        if is_box_dataset(root_path.parent):
            hint = f"it is the {root_path.name}/ of the box dataset {root_path.parent}: give that"
        raise DatasetError(f"no class folders under {root_path} ({hint})")
    samples: list[Sample] = []
    for label, name in enumerate(classes):
        # The walk the batch job's input uses: iterative, each folder once, hidden skipped; a
        # folder it cannot read becomes a sample whose read fails, so the audit lists it.
        entries, skipped = walk_files(root_path / name)
        hidden += skipped
        samples.extend(Sample(path=f, label=label) for f, _ in entries)
    return DatasetIndex(
        root=root_path,
        classes=tuple(classes),
        samples=tuple(samples),
        hidden_skipped=hidden,
        stray_files=tuple(stray),
    )


def inspect(
    index: DatasetIndex,
    *,
    spec: PreprocessSpec = DEFAULT_SPEC,
    workers: int | None = None,
    keep_arrays: bool = False,
    progress: bool = True,
) -> tuple[list[FileInfo], dict[int, np.ndarray]]:
    """Read, hash and preprocess every file once, in parallel.

    Args:
        index: from :func:`scan`.
        spec: the preprocessing to run (training passes the one it will record in the card).
        workers: processes to use; default all cores.
        keep_arrays: also return the preprocessed arrays (for training), keyed by sample position.
        progress: report progress on stderr.

    Returns:
        One :class:`FileInfo` per sample, in ``index.samples`` order, and the arrays of the
        pictures that decoded (empty unless ``keep_arrays``).
    """
    workers = default_workers() if workers is None else workers
    jobs = [(str(s.path), index.relpath(s), s.label, spec, keep_arrays) for s in index.samples]
    infos: list[FileInfo] = []
    arrays: dict[int, np.ndarray] = {}
    bar = Progress(len(jobs), "files", enabled=progress)
    with make_pool(workers) as pool:
        for i, (info, array) in enumerate(pool.map(_inspect_one, jobs, chunksize=16)):
            infos.append(info)
            if array is not None:
                arrays[i] = array
            bar.update()
    bar.close()
    return infos, arrays


def _inspect_one(job: tuple[str, str, int, PreprocessSpec, bool]) -> tuple[FileInfo, Any]:
    path, relpath, label, spec, keep = job
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return FileInfo(relpath, label, "", 0, error=f"cannot read file: {exc.strerror}"), None
    digest = hashlib.sha256(data).hexdigest()
    try:
        d = load(data, spec)
    except ImageDecodeError as exc:
        return FileInfo(relpath, label, digest, len(data), error=str(exc)), None
    info = FileInfo(relpath, label, digest, len(data), d.width, d.height, d.format, d.mode)
    return info, (d.array if keep else None)


def audit(index: DatasetIndex, infos: list[FileInfo]) -> dict[str, Any]:
    """The audit report, as JSON-ready values, from one :func:`inspect` pass."""
    per_class = Counter(i.label for i in infos)
    counts = {name: per_class.get(k, 0) for k, name in enumerate(index.classes)}
    readable = [i for i in infos if not i.error]
    nonzero: list[int] = list(counts.values())
    top = max(nonzero, default=0)
    balance = min(nonzero) / top if top else 0.0
    by_hash: dict[str, list[FileInfo]] = defaultdict(list)
    for i in infos:
        if i.sha256:
            by_hash[i.sha256].append(i)
    groups = [g for g in by_hash.values() if len(g) > 1]
    cross = [g for g in groups if len({i.label for i in g}) > 1]

    def stats(values: list[int]) -> dict[str, float]:
        if not values:
            return {"min": 0, "median": 0, "max": 0}
        return {"min": min(values), "median": statistics.median(values), "max": max(values)}

    return {
        "root": str(index.root),
        "classes": list(index.classes),
        "files": len(infos),
        "files_per_class": counts,
        "balance_ratio": round(balance, 4),
        "imbalanced": balance < IMBALANCE_RATIO,
        "hidden_skipped": index.hidden_skipped,
        "stray_files": list(index.stray_files),
        "width": stats([i.width for i in readable]),
        "height": stats([i.height for i in readable]),
        "over_1_megapixel": sum(i.width * i.height > 1_000_000 for i in readable),
        "formats": dict(Counter(i.format for i in readable).most_common()),
        "modes": dict(Counter(i.mode for i in readable).most_common()),
        "unreadable": [{"file": i.relpath, "error": i.error} for i in infos if i.error],
        "duplicates": {
            "groups": len(groups),
            "redundant_copies": sum(len(g) - 1 for g in groups),
            "cross_class_groups": len(cross),
            "cross_class": [
                [{"file": i.relpath, "class": index.classes[i.label]} for i in g] for g in cross
            ],
            "examples": [[i.relpath for i in g] for g in groups[:5]],
        },
    }


def format_audit(report: dict[str, Any]) -> str:
    """The audit report as a terminal table."""
    lines = [f"Dataset: {report['root']}", ""]
    width = max([len(c) for c in report["classes"]] + [5])
    total = report["files"] or 1
    lines.append(f"  {'class':<{width}}  {'files':>7}  {'share':>6}")
    for name, n in report["files_per_class"].items():
        lines.append(f"  {name:<{width}}  {n:>7,}  {n / total:>6.1%}")
    lines.append(f"  {'total':<{width}}  {report['files']:>7,}")
    flag = "  (imbalanced)" if report["imbalanced"] else ""
    lines.append("")
    lines.append(f"  balance ratio (smallest/largest class): {report['balance_ratio']:.3f}{flag}")
    w, h = report["width"], report["height"]
    lines.append(
        f"  width  min/median/max: {w['min']} / {w['median']:g} / {w['max']}   "
        f"height: {h['min']} / {h['median']:g} / {h['max']}"
    )
    lines.append(f"  pictures over 1 megapixel: {report['over_1_megapixel']}")
    lines.append("  formats: " + ", ".join(f"{k} {v}" for k, v in report["formats"].items()))
    lines.append("  modes:   " + ", ".join(f"{k} {v}" for k, v in report["modes"].items()))
    d = report["duplicates"]
    lines.append(
        f"  exact duplicates: {d['redundant_copies']} redundant copies in {d['groups']} groups, "
        f"{d['cross_class_groups']} groups spanning classes"
    )
    for group in d["cross_class"]:
        lines.append("    label noise: " + ", ".join(f"{g['file']} ({g['class']})" for g in group))
    lines.append(f"  unreadable files: {len(report['unreadable'])}")
    for u in report["unreadable"][:20]:
        lines.append(f"    {u['file']}: {u['error']}")
    if len(report["unreadable"]) > 20:
        lines.append(f"    ... and {len(report['unreadable']) - 20} more (see the JSON report)")
    lines.append(f"  hidden entries skipped: {report['hidden_skipped']}")
    if report["stray_files"]:
        lines.append(f"  files outside any class folder (ignored): {len(report['stray_files'])}")
    return "\n".join(lines)
