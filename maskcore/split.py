"""A seeded, stratified train/validation/test split that never separates exact duplicates.

Pictures with the same content hash form one group, and a group goes to one split whole; the split
then keeps one file per group (the redundant copies add nothing but weight, and in a test split
they would count one picture several times). A group whose copies carry different labels is label
noise: it takes the label most of its copies carry.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maskcore.dataset import FileInfo
from maskcore.errors import DatasetError, ModelError

__all__ = ["SPLIT_FILE", "Split", "read_split_record", "split_dataset", "split_from_record",
           "split_record_path", "write_split_record"]

#: The split record beside a trained model: which pictures (by content hash) were in which split.
SPLIT_FILE = "split.json"


def write_split_record(model_dir: Path, record: dict[str, Any]) -> Path:
    """Write a model's split record (``seed``, ``shares``, ``sizes``, ``hashes`` for a
    folder-per-class dataset, and ``datasets``: what each dataset contributed)."""
    path = model_dir / SPLIT_FILE
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def split_record_path(location: Path) -> Path:
    """The split record a location names: ``location`` itself, or the record in it when it is
    a model's folder."""
    return location / SPLIT_FILE if location.is_dir() else location


def read_split_record(location: Path) -> dict[str, Any]:
    """A model's split record (``location``: the model's folder, or the record itself), with
    the ``hashes`` of its folder-per-class split.

    Raises:
        ModelError: there is no readable record, or it names no folder-per-class split.
    """
    path = split_record_path(location)
    try:
        record: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read the split record {path}: {exc}") from exc
    if not isinstance(record, dict) or not isinstance(record.get("hashes"), dict):
        raise ModelError(f"{path} records no folder-per-class split (a model trained on box "
                         "datasets alone has none)")
    return record


@dataclass(frozen=True)
class Split:
    """Positions (into the inspect() list) of one representative file per content group."""

    train: list[int]
    val: list[int]
    test: list[int]
    labels: dict[int, int]  # position -> label (the group's majority label)
    hashes: dict[str, list[str]]  # split name -> sorted content hashes

    def sizes(self) -> dict[str, int]:
        """Pictures per split."""
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def split_dataset(
    infos: list[FileInfo],
    *,
    val: float = 0.15,
    test: float = 0.15,
    seed: int = 0,
) -> Split:
    """Split the readable files of an inspect() pass, stratified by label, duplicates kept together.

    Args:
        infos: one pass over the dataset; unreadable files (``error`` set) are left out.
        val: share of each class for validation.
        test: share of each class for the test split.
        seed: the shuffle seed; the same seed and files give the same split.
    """
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ValueError("val and test must be shares in [0, 1) adding up to less than 1")
    groups, group_label = _groups(infos)
    by_label: dict[int, list[str]] = defaultdict(list)
    for digest in sorted(groups):
        by_label[group_label[digest]].append(digest)
    rng = random.Random(seed)
    parts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for label in sorted(by_label):
        digests = by_label[label]
        rng.shuffle(digests)
        n = len(digests)
        n_test, n_val = round(n * test), round(n * val)
        parts["test"] += digests[:n_test]
        parts["val"] += digests[n_test:n_test + n_val]
        parts["train"] += digests[n_test + n_val:]
    return _split(groups, group_label, parts)


def split_from_record(infos: list[FileInfo], hashes: dict[str, list[str]]) -> Split:
    """The split a model was trained on, rebuilt from its record (``split.json``'s ``hashes``)
    and a new pass over the same dataset.

    Raises:
        DatasetError: a recorded picture is not among the readable files of ``infos``.
    """
    groups, group_label = _groups(infos)
    for name, digests in hashes.items():
        missing = sum(d not in groups for d in digests)
        if missing:
            raise DatasetError(f"{missing} of the {len(digests)} {name} pictures of the recorded "
                               "split are not in this dataset")
    return _split(groups, group_label, {n: list(hashes.get(n, [])) for n in ("train", "val", "test")})


def _groups(infos: list[FileInfo]) -> tuple[dict[str, list[int]], dict[str, int]]:
    """Positions of the readable files per content hash, and each group's majority label."""
    groups: dict[str, list[int]] = defaultdict(list)
    for k, info in enumerate(infos):
        if not info.error:
            groups[info.sha256].append(k)
    labels = {d: Counter(infos[k].label for k in members).most_common(1)[0][0]
              for d, members in groups.items()}
    return groups, labels


def _split(groups: dict[str, list[int]], group_label: dict[str, int],
           parts: dict[str, list[str]]) -> Split:
    rep = {d: min(groups[d]) for d in groups}  # the first file of a group stands for it

    def positions(name: str) -> list[int]:
        return sorted(rep[d] for d in parts[name])

    return Split(
        train=positions("train"),
        val=positions("val"),
        test=positions("test"),
        labels={rep[d]: group_label[d] for d in groups},
        hashes={name: sorted(ds) for name, ds in parts.items()},
    )
