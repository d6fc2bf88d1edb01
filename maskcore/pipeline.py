"""The classification pipeline: read -> decode in a pool -> batch -> analyze -> rows, in order.

Analyzing is :class:`maskcore.faces.Analyzer`: the face detector (unless ``--faces off``) and
the classifier, in batches. Two ways to place the engines, same rows:

* **central** (a GPU, or decoding in threads): worker processes decode a chunk of pictures per
  task and send the pixels back; the main process runs the engines on full batches.
* **in the decode processes** (CPU, processes): each process loads the engines once, with one
  thread, and analyzes the batch it has just decoded; only boxes and probabilities travel back. On a CPU
  this is a third faster: no pixels are copied between processes, and ONNX Runtime's threads do
  not fight the decoders for the same cores.

Either way at most a fixed number of tasks are in flight, so memory stays flat whatever the input
size, and rows come out in the order the refs went in (the batch job sorts refs by source), each
as soon as its batch is classified. A picture that cannot be read or decoded becomes an error
row; nothing about one picture stops the run.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Any

from maskcore.decode import CHUNK, DecodedItem, decode_refs
from maskcore.detector import DetectorSpec
from maskcore.faces import Analyzer, FaceOptions, PictureResult, load_analyzer
from maskcore.manifest import RowBuilder
from maskcore.pool import capped_workers, make_pool
from maskcore.preprocess import PreprocessSpec
from maskcore.progress import Progress
from maskcore.settings import DEFAULTS
from maskcore.storage import Ref, Source

__all__ = ["StageTimes", "analyze_chunk", "classify", "row_builder"]


@dataclass
class StageTimes:
    """Seconds spent per stage, to show where the time goes."""

    decode_cpu: float = 0.0  # summed over workers: read + hash + preprocess
    wait: float = 0.0  # main process waiting for results (worker-bound when large)
    inference: float = 0.0  # summed over wherever the engine runs
    write: float = 0.0
    pictures: int = 0
    batches: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


#: Batches analyzed at once in the main process (the central placement, in front of a GPU).
ANALYZE_THREADS = 3

# The analyzer of a decode process, loaded once by the pool's initializer.
_WORKER_ANALYZER: Analyzer | None = None


def _load_worker_analyzer(model_path: str, precision: str, faces: FaceOptions,
                          detector_precision: str) -> None:
    global _WORKER_ANALYZER
    _WORKER_ANALYZER = load_analyzer(model_path, precision, faces, threads=1,
                                     detector_precision=detector_precision)


def analyze_chunk(source: Source, refs: list[Ref], spec: PreprocessSpec,
                  faces: DetectorSpec | None) -> tuple[list[PictureResult], float, float]:
    """Decode a batch and analyze it with this process's engines (runs in a worker process).

    Returns:
        The results, in order, and the seconds spent decoding and analyzing.
    """
    assert _WORKER_ANALYZER is not None, "the pool was started without _load_worker_analyzer"
    items, seconds = decode_refs(source, refs, spec, faces)
    t0 = time.perf_counter()
    results = _WORKER_ANALYZER.infer(items)
    return results, seconds, time.perf_counter() - t0


def row_builder(analyzer: Analyzer, threshold: float,
                row_extra: Callable[[Ref], dict[str, Any]] | None = None) -> RowBuilder:
    """The row builder for an analyzer's engines."""
    engine = analyzer.engine
    return RowBuilder(engine.classes, threshold=threshold, model_id=engine.model_id,
                      detector_id=analyzer.detector_id,
                      preprocess_version=engine.spec.version, row_extra=row_extra)


def classify(
    refs: Iterable[Ref],
    source: Source,
    analyzer: Analyzer,
    emit: Callable[[dict[str, Any]], None],
    *,
    batch_size: int = DEFAULTS.batch_size,
    workers: int | None = None,
    threshold: float = DEFAULTS.threshold,
    progress: Progress | None = None,
    row_extra: Callable[[Ref], dict[str, Any]] | None = None,
    on_batch: Callable[[list[dict[str, Any]]], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> StageTimes:
    """Classify every ref and hand each row to ``emit``, in input order.

    Args:
        refs: what to classify, in the order rows should come out.
        source: reads a ref's bytes (must pickle when ``workers`` > 0).
        analyzer: the loaded classifier (and detector, with the face stage). On the CPU with
            ``workers`` > 0, each decode process loads its own copies of the same files (one
            thread each) and this one only supplies the cards.
        emit: called with each picture row (its face rows under ``manifest.FACE_ROWS``).
        batch_size: pictures per engine call.
        workers: decode processes; None means all cores, 0 decodes in threads of this process.
        threshold: a top score below it labels the row ``uncertain``.
        progress: counts rows as they are emitted.
        row_extra: extra fields for a ref's rows (the worker adds ``etag``).
        on_batch: called with the rows of each batch after they were emitted.
        stop: polled between tasks; when it returns True no new task starts, the tasks in
            flight finish and their rows are emitted.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    workers = capped_workers(workers)
    times = StageTimes()
    rows_of = row_builder(analyzer, threshold, row_extra)
    engine = analyzer.engine
    side = analyzer.detector_spec

    def deliver(results: list[PictureResult]) -> None:
        t0 = time.perf_counter()
        rows = rows_of(results)
        for row in rows:
            emit(row)
        times.write += time.perf_counter() - t0
        times.pictures += len(rows)
        if progress is not None:
            progress.update(len(rows))
        if on_batch is not None and rows:
            on_batch(rows)

    if workers > 0 and engine.device == "cpu":
        with make_pool(workers, _load_worker_analyzer,
                       (str(engine.path), engine.precision, analyzer.faces,
                        analyzer.detector_precision)) as pool:
            for results, t_decode, t_infer in _in_order(
                    pool, analyze_chunk, (source, engine.spec, side),
                    tasks(iter(refs), batch_size, workers), workers * 2, stop, times):
                times.decode_cpu += t_decode
                times.inference += t_infer
                times.batches += 1
                deliver(results)
        return times

    pending: deque[DecodedItem] = deque()
    n_ok = 0
    # Batches are analyzed in a few threads of this process: the engines release the GIL while
    # they run, so one batch's network overlaps the next one's canvases and crops (the Python
    # around a GPU). Results are delivered in submission order.
    analyzing: deque[Future[tuple[list[PictureResult], float]]] = deque()

    def analyze(take: list[DecodedItem]) -> tuple[list[PictureResult], float]:
        t0 = time.perf_counter()
        return analyzer.infer(take), time.perf_counter() - t0

    def deliver_done(keep: int) -> None:
        while len(analyzing) > keep:
            results, seconds = analyzing.popleft().result()
            if any(not r.error for r in results):
                times.inference += seconds
                times.batches += 1
            deliver(results)

    def flush(limit: int | None) -> None:
        """Send up to ``limit`` decoded pictures (all if None) to be analyzed."""
        nonlocal n_ok
        take: list[DecodedItem] = []
        taken_ok = 0
        # Error rows that follow the last picture of a full batch wait for the next one; at
        # the end (limit None) everything goes.
        while pending and (limit is None or taken_ok < limit):
            item = pending.popleft()
            take.append(item)
            taken_ok += item.ok
        n_ok -= taken_ok
        analyzing.append(threads.submit(analyze, take))
        deliver_done(ANALYZE_THREADS)

    with make_pool(workers) as pool, ThreadPoolExecutor(ANALYZE_THREADS) as threads:
        for items, seconds in _in_order(
                pool, decode_refs, (source, engine.spec, side), _chunks(iter(refs), CHUNK),
                max(2, (workers or 2) * 3), stop, times):
            times.decode_cpu += seconds
            for item in items:
                pending.append(item)
                n_ok += item.ok
            while n_ok >= batch_size:
                flush(batch_size)
        flush(None)
        deliver_done(0)
    return times


def _in_order(pool: Executor, fn: Callable[..., Any], args: tuple[Any, ...],
              chunks: Iterator[list[Ref]], in_flight: int, stop: Callable[[], bool] | None,
              times: StageTimes) -> Iterator[Any]:
    """Results of ``fn(source, chunk, *rest)`` in submission order, at most ``in_flight`` pending."""
    futures: deque[Any] = deque()

    def top_up() -> None:
        while len(futures) < in_flight and not (stop and stop()):
            chunk = next(chunks, None)
            if chunk is None:
                return
            futures.append(pool.submit(fn, args[0], chunk, *args[1:]))

    top_up()
    while futures:
        t0 = time.perf_counter()
        result = futures.popleft().result()
        times.wait += time.perf_counter() - t0
        top_up()
        yield result


def _chunks(it: Iterator[Ref], n: int) -> Iterator[list[Ref]]:
    while chunk := list(islice(it, n)):
        yield chunk


#: How many tasks the last refs of a run are cut into, per process (see :func:`tasks`).
TAIL_SPLIT = 4


def tasks(it: Iterator[Ref], n: int, processes: int) -> Iterator[list[Ref]]:
    """Tasks of ``n`` refs for ``processes`` processes, the last of them smaller.

    A free process takes the next task, so the run ends when its longest last task does: with
    tasks of a whole batch one process could still be analyzing 64 street pictures (two seconds
    on a CPU) while the others wait. So the refs that remain once fewer than ``processes`` full
    tasks are left are cut into ``TAIL_SPLIT`` tasks per process. Reads at most
    ``processes * n`` refs ahead.
    """
    window = list(islice(it, n * processes))
    while len(window) == n * processes:
        yield window[:n]
        window = window[n:]
        window.extend(islice(it, n))
    if window:
        size = -(-len(window) // (processes * TAIL_SPLIT))
        for start in range(0, len(window), size):
            yield window[start:start + size]
