"""``maskcore cut-faces DATA_DIR --out DIR``: the boxed faces of a Pascal VOC dataset, each cut
out as a picture of its own, in class folders.

Close-ups of masks worn wrongly are what no dataset here holds as photographs; the boxed street
faces are the nearest thing (93 of them in ``face-mask-scenes``). Cut out with a margin and
put through ``maskcore batch``, each is a small close-up: the detector finds its face and the
close-up rule reads it as the batch job reads any close-up. ``maskcore evaluate R --classes``
then scores it per class. The split is the box datasets' own (by picture, from the sha256 of
its bytes: :func:`maskcore.voc.split_of_digest`), so ``--split test`` holds only faces of test
pictures, which neither the classifier nor the detector learned from.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import click

from maskcore.boxdata import box_files
from maskcore.cli import new_folder, out_option, run_command
from maskcore.errors import ImageDecodeError
from maskcore.evaluate import SPLITS
from maskcore.preprocess import decode, face_region
from maskcore.progress import say
from maskcore.voc import read_voc, split_of_digest

__all__ = ["cut_faces", "run_cut_faces"]


def run_cut_faces(data_dir: Path, out: Path, *, split: str = "val", margin: float = 0.5,
                  min_width: float = 32.0) -> Counter[str]:
    """Write ``out/<class>/<picture stem>_<box index>.png`` for each box of ``data_dir`` at
    least ``min_width`` pixels wide, in pictures of ``split`` (``all``: every picture), grown by
    ``margin`` and made square (:func:`maskcore.preprocess.face_region`, after EXIF
    orientation); returns the count per class.

    Raises:
        DatasetError: ``data_dir`` is not a box dataset.
        UsageError: ``out`` already holds files.
    """
    pairs = box_files(data_dir)
    new_folder(out)
    counts: Counter[str] = Counter()
    unreadable = 0
    for image_path, xml_path in pairs:
        data = image_path.read_bytes()
        if split != "all" and split_of_digest(hashlib.sha256(data).hexdigest()) != split:
            continue
        try:
            picture = decode(data)
        except ImageDecodeError:
            unreadable += 1
            continue
        for i, box in enumerate(read_voc(xml_path).boxes):
            if box.width < min_width:
                continue
            region = face_region(box.xyxy, picture.width, picture.height, margin)
            folder = out / box.label
            folder.mkdir(parents=True, exist_ok=True)
            picture.image.crop(region).save(folder / f"{image_path.stem}_{i}.png")
            counts[box.label] += 1
    say(f"wrote {sum(counts.values()):,} faces of {len(pairs):,} pictures ({split}) to {out}: "
        f"{dict(counts)}" + (f"; {unreadable} pictures unreadable" if unreadable else ""),
        job="cut-faces")
    return counts


@click.command(short_help="Cut a box dataset's faces out as pictures, in class folders.")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@out_option
@click.option("--split", type=click.Choice(SPLITS), default="val", show_default=True,
              help="Faces of the pictures of this split (by picture, as training splits box "
                   "datasets); all: every picture.")
@click.option("--margin", type=click.FloatRange(0, 2), default=0.5, show_default=True,
              help="Share of a box's size added on each side (the cut is made square).")
@click.option("--min-width", type=click.FloatRange(0), default=32.0, show_default=True,
              help="Leave out boxes narrower than this many pixels.")
def cut_faces(data_dir: Path, out: Path, split: str, margin: float, min_width: float) -> None:
    """Cut each boxed face of DATA_DIR (images/ and annotations/ with Pascal VOC
    files, like face-mask-scenes) out as a picture of its own, into a folder
    per class.

    \b
    Each face becomes a small close-up, photographed, of any class the boxes
    name (masks worn wrongly included). Score the batch path on them with
    maskcore batch OUT --out R; maskcore evaluate R --classes
    """
    run_command(run_cut_faces, data_dir, out, split=split, margin=margin, min_width=min_width)
