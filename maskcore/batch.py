"""The batch job: classify everything under an input into a manifest, faces and a summary.

:func:`run_batch` is what ``maskcore batch`` (``jobs/batch.py``) and the benchmark call: list
the input, open the models through the runner, stream rows into the
:class:`~maskcore.manifest.ManifestWriter`, and write the summary last.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from maskcore.annotate import annotate_flagged
from maskcore.clock import utc_now
from maskcore.faces import FaceOptions
from maskcore.manifest import FACE_ROWS, ManifestWriter
from maskcore.progress import Progress, say
from maskcore.results import RunResults, group_of
from maskcore.resume import Merge, run_facts, take_up
from maskcore.runners import Runner, RunOptions, make_runner
from maskcore.settings import DEFAULTS
from maskcore.storage import LocalSource, S3Store, open_source

__all__ = ["FORMATS", "format_stopped", "format_summary", "run_batch"]

#: The manifest formats ``--format`` accepts.
FORMATS = ("jsonl", "csv")


def run_batch(
    input_spec: str,
    out: Path,
    *,
    model: str | None = None,
    batch_size: int = DEFAULTS.batch_size,
    device: str = DEFAULTS.device,
    precision: str = DEFAULTS.precision,
    faces: str = DEFAULTS.faces,
    workers: int | None = None,
    formats: tuple[str, ...] = FORMATS,
    threshold: float = DEFAULTS.threshold,
    show_progress: bool = True,
    runner: Runner | None = None,
    annotate: Path | None = None,
    stop: Callable[[], bool] | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Classify every file under ``input_spec``; write the manifest, faces and summary into ``out``.

    Args:
        runner: where the analyzing runs (:func:`maskcore.runners.make_runner`); default this
            machine's decode processes (``workers`` of them; None means all cores).
        annotate: a folder for a full-size copy of every flagged picture, its faces drawn
            (written after the manifest, by :func:`maskcore.annotate.annotate_flagged`).
        stop: polled between tasks (:class:`maskcore.stopping.StopRequest`). Once it returns
            True no new picture is started; the rows of those in flight are written, but to
            the ``*.partial`` files only: nothing in ``out`` is replaced by an unfinished run,
            and no summary or copy is written.
        resume: take up a run stopped in ``out`` (:mod:`maskcore.resume`): its rows that
            still hold are copied, and only the other pictures are classified. Without a
            stopped run there it runs from the first picture.

    Returns:
        The summary (as written to ``summary.json``); for a run stopped before its last
        picture, the counts of what was done with ``stopped`` (True), ``listed`` (the pictures
        it had to do) and ``kept`` (the partial files). A stop that comes once every picture
        is done does not stop the run from being written.

    Raises:
        StorageError: the input cannot be found or listed.
        ModelError: the model or its card cannot be used.
        UsageError: options that cannot work here (``--device cuda`` without CUDA).
    """
    started = utc_now("seconds")
    t0 = time.monotonic()
    # The job's own outputs are not pictures to classify next time: results and, with
    # --annotate, the drawn copies of flagged pictures (a second run would count them twice).
    source = open_source(input_spec, exclude=[out] + ([annotate] if annotate else []))
    if isinstance(source, S3Store):
        source.check()
    runner = runner or make_runner(workers=workers, device=device)
    analyzer = runner.open_analyzer(model, precision=precision, faces=FaceOptions(mode=faces))
    engine = analyzer.engine
    facts = runner.facts(analyzer)
    where = f"{facts['device']} [{facts['provider']}]"
    say(f"model {engine.model_id} ({engine.path}, {engine.precision}) on {where}")
    if analyzer.detector is not None:
        ds = analyzer.detector.spec
        finer = f", {ds.fine_canvas} px for larger pictures" if ds.fine_canvas > ds.canvas else ""
        say(f"faces: detector {analyzer.detector_id} ({analyzer.detector.path.name}, "
            f"{analyzer.detector.precision}, canvas {ds.canvas} px{finer})")
    refs = list(source.list())
    skipped = source.hidden_skipped if isinstance(source, LocalSource) else 0
    input_root = source.path.resolve() if isinstance(source, LocalSource) else None
    own = source.excluded if isinstance(source, LocalSource) else 0
    say(f"{len(refs):,} files under {source.describe()}"
        + (f" ({skipped} hidden skipped)" if skipped else "")
        + (f" ({own} in the output folders left out)" if own else ""))
    settings = run_facts(input_id=str(input_root or source.describe()),
                         model_id=engine.model_id, detector_id=analyzer.detector_id,
                         faces_mode=faces, threshold=threshold, started_at=started)
    writer = ManifestWriter(out, engine.classes, formats, facts=settings, take_up=resume)
    flagged: list[dict[str, Any]] = []  # kept for --annotate only: a few rows, not the run

    def emit(row: dict[str, Any]) -> None:
        writer.write(row)  # copies the row; this one stays as it is
        if annotate is not None and group_of(row, row[FACE_ROWS]) == "flagged":
            flagged.append(row)

    listed = len(refs)
    taken = None
    merge: Merge | None = None
    try:
        if resume and writer.stopped:
            say(f"taking up the stopped run in {out}: each picture it did is read again and "
                "checked against its row's sha256")
            taken = take_up(writer.stopped, settings, refs, source)
            refs = [ref for ref in refs if ref.source not in taken.kept]
            say(f"resuming: {len(taken.kept):,} pictures' rows kept from the stopped run in "
                f"{out}" + (f" ({taken.dropped:,} of its rows not: errors, torn, or pictures "
                            "gone or changed since)" if taken.dropped else "")
                + f"; {len(refs):,} to classify")
            merge = Merge(writer.stopped, taken, emit)
        elif resume:
            say(f"nothing to resume in {out} (no stopped run there): from the first picture")
        bar = Progress(len(refs), "pictures", enabled=show_progress)
        report = runner.run(refs, source, analyzer, merge or emit,
                            RunOptions(batch_size=batch_size, threshold=threshold, progress=bar,
                                       stop=stop))
        if merge is not None:  # stopped or not: every row taken up goes into this run's files
            merge.finish()
    except BaseException:  # a run-level fault (or an interrupt) mid-way: nothing is kept
        writer.discard()
        raise
    finally:
        if merge is not None:
            merge.close()
    bar.close()
    if stop is not None and stop() and writer.tally.total < listed:
        kept = writer.keep_unfinished()
        return {**writer.tally.to_dict(), "stopped": True, "listed": listed,
                "output": str(out), "kept": [str(p) for p in kept]}
    wall = time.monotonic() - t0
    summary = {
        **writer.tally.to_dict(),
        **({"resumed": len(taken.kept)} if taken is not None else {}),
        "skipped": skipped,
        "wall_seconds": round(wall, 3),
        # What this run classified, not the rows it took up from a stopped one.
        "images_per_second": round(len(refs) / wall, 1) if wall > 0 else 0.0,
        "stages": report.times.to_dict(),
        "model_id": engine.model_id,
        "model_path": str(engine.path),
        "faces_mode": faces,
        "detector_id": analyzer.detector_id,
        "precision": engine.precision,
        **({"detector_precision": analyzer.detector.precision}
           if analyzer.detector is not None else {}),
        **facts,
        "batch_size": batch_size,
        "threshold": threshold,
        "input": source.describe(),
        # Where the rows' relative sources lie, whatever folder a report is made from.
        **({"input_path": str(input_root)} if input_root is not None else {}),
        "output": str(out),
        **({"ray_cluster": report.cluster} if report.cluster else {}),
        "started_at": started,
        "finished_at": utc_now("seconds"),
    }
    writer.close(summary)
    if annotate is not None:
        run = RunResults(location=str(out), rows=flagged,
                         faces={r["source"]: r.pop(FACE_ROWS) for r in flagged},
                         summary=summary, input_root=input_root)
        copies = annotate_flagged(run, annotate, log=say)
        summary["annotated"] = {"folder": str(annotate), "pictures": len(copies)}
        say(f"{len(copies):,} flagged picture(s) drawn into {annotate}")
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The end-of-run table."""
    face_labels = summary.get("face_labels", {})
    with_faces = summary.get("faces_mode", "off") != "off"
    lines = ["", f"  {'label':<22} {'pictures':>9}" + (f" {'faces':>9}" if with_faces else "")]
    for label in sorted(set(summary["labels"]) | set(face_labels)):
        n = summary["labels"].get(label, 0)
        lines.append(f"  {label:<22} {n:>9,}"
                     + (f" {face_labels.get(label, 0):>9,}" if with_faces else ""))
    lines.append(f"  {'errors':<22} {summary['errors']:>9,}")
    total_faces = f" {summary.get('faces', 0):>9,}" if with_faces else ""
    lines.append(f"  {'total':<22} {summary['total']:>9,}{total_faces}")
    if with_faces:
        lines.append(f"  ({summary.get('pictures_without_faces', 0):,} pictures had no face found "
                     "and were classified whole)")
    if "resumed" in summary:
        lines.append(f"  ({summary['resumed']:,} pictures' rows taken up from the stopped run; "
                     "the speed below is of the others)")
    lines.append("")
    lines.append(f"  {summary['images_per_second']:,.0f} pictures/s over "
                 f"{summary['wall_seconds']:.1f}s on {summary['device']}; results in "
                 f"{summary['output']}")
    if "annotated" in summary:
        lines.append(f"  {summary['annotated']['pictures']:,} flagged pictures drawn in "
                     f"{summary['annotated']['folder']}")
    lines.append(f"  to look at them: maskcore report {summary['output']}  "
                 f"(writes {Path(summary['output']) / 'report.html'})")
    return "\n".join(lines)


def format_stopped(summary: dict[str, Any], again: str | None = None) -> str:
    """What a stopped run says: how far it got, where its rows are and how to take it up
    (``again``: the command that does, when the caller knows it)."""
    out = summary["output"]
    how = (f"To classify only the rest: {again}" if again else
           "Run it again with --resume to classify only the rest")
    return (f"stopped: {summary['total']:,} of {summary['listed']:,} pictures done, their "
            f"rows in {Path(out) / '*.partial'}. Nothing else in {out} was replaced (an "
            f"earlier run's results stay). {how} (without --resume it starts over).")
