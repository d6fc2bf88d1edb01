"""``maskcore draw-masks DATA_DIR --out DIR``: masks drawn on a dataset's bare close-ups, worn
right and wrongly, written as pictures in class folders.

The training job draws these itself (``maskcore train --drawn-masks``); this command writes the
same drawings for one split of the close-ups, so that the whole batch path (detector, close-up
rule, paired classifier) can be run and scored on them: ``maskcore batch DIR --out R`` then
``maskcore evaluate R --classes``. No dataset here has photographs of masks worn wrongly on
close-ups; these are the stand-in (:mod:`maskcore.drawn_masks` says how far they go).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import click

from maskcore.cli import new_folder, out_option, run_command
from maskcore.dataset import scan
from maskcore.detector import DEFAULT_DETECTOR
from maskcore.drawn_masks import WAYS, drawn_close_ups
from maskcore.errors import DatasetError
from maskcore.evaluate import SPLITS
from maskcore.manifest import BARE_CLASS
from maskcore.progress import say
from maskcore.split import read_split_record

__all__ = ["draw_masks", "run_draw_masks"]

def run_draw_masks(data_dir: Path, out: Path, *, split: str = "val",
                   split_record: Path = DEFAULT_DETECTOR.parent, seed: int = 0) -> Counter[str]:
    """Write ``out/<class>/<file stem>.<way>.jpg`` for the bare close-ups of ``data_dir`` in
    ``split`` of ``split_record``'s split (``all``: every one); returns the count per way.

    Raises:
        DatasetError: ``data_dir`` has no ``without_mask`` folder.
        UsageError: ``out`` already holds pictures.
    """
    index = scan(data_dir)
    if BARE_CLASS not in index.classes:
        raise DatasetError(f"{data_dir} has no {BARE_CLASS}/ folder of bare faces to draw masks on "
                           f"(classes: {', '.join(index.classes)})")
    new_folder(out)
    wanted = None if split == "all" else set(read_split_record(split_record)["hashes"][split])
    files, seen = [], set()
    for sample in index.samples:
        if index.classes[sample.label] != BARE_CLASS:
            continue
        digest = hashlib.sha256(sample.path.read_bytes()).hexdigest()
        if digest not in seen and (wanted is None or digest in wanted):  # one of exact copies
            files.append((sample.path, digest))
            seen.add(digest)
    say(f"drawing masks on {len(files):,} bare close-ups ({split}) ...", job="draw-masks")
    counts: Counter[str] = Counter()
    for i, way, image in drawn_close_ups(files, seed):
        folder = out / WAYS[way]
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{files[i][0].stem}.{way}.jpg", quality=95)
        counts[way] += 1
    say(f"wrote {sum(counts.values()):,} pictures to {out} ({dict(counts)}); "
        f"{len(files) - sum(counts.values()):,} passed over (no single close-up face turned "
        "little enough)", job="draw-masks")
    return counts


@click.command(short_help="Draw masks, worn right and wrongly, on bare close-ups.")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@out_option
@click.option("--split", type=click.Choice(SPLITS), default="val", show_default=True,
              help="Which close-ups, by the split record; all: every bare close-up.")
@click.option("--split-record", type=click.Path(exists=True, path_type=Path),
              default=DEFAULT_DETECTOR.parent, show_default="the bundled model's",
              help="The split.json (or its folder) that --split is read from.")
@click.option("--seed", default=0, show_default=True,
              help="Seeds each picture's way, colour and place (as training's --seed).")
def draw_masks(data_dir: Path, out: Path, split: str, split_record: Path, seed: int) -> None:
    """Draw a mask on each bare close-up of DATA_DIR (its without_mask/ folder),
    worn right (with_mask/) or wrongly (mask_weared_incorrect/: nose bare, chin
    bare, or on the chin), where the face's landmarks put it.

    \b
    The drawings are those `maskcore train --drawn-masks` trains on, for the
    close-ups of one split: by default the validation ones of the bundled
    model, which it never trained on. Score the batch path on them with
    maskcore batch OUT --out R; maskcore evaluate R --classes
    """
    run_command(run_draw_masks, data_dir, out, split=split, split_record=split_record,
                seed=seed)
