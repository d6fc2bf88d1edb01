"""The classification pipeline: read -> preprocess in a pool -> batch -> engine -> rows, in order.

Two ways to place the engine, same rows:

* **central** (a GPU, or decoding in threads): worker processes decode a chunk of pictures per
  task and send the pixels back; the main process runs the one engine on full batches.
* **in the decode processes** (CPU, processes): each process loads the engine once, with one
  thread, and classifies the batch it has just decoded; only probabilities travel back. On a CPU
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
from concurrent.futures import Executor
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np

from maskcore.decode import CHUNK, DecodedRef, decode_chunk
from maskcore.engine import Engine
from maskcore.manifest import error_row, ok_row
from maskcore.pool import default_workers, make_pool
from maskcore.preprocess import PreprocessSpec
from maskcore.progress import Progress
from maskcore.storage import Ref, Source

__all__ = ["StageTimes", "classify", "classify_chunk"]


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


# The engine of a decode process, loaded once by the pool's initializer.
_WORKER_ENGINE: Engine | None = None


def _load_worker_engine(model_path: str, precision: str) -> None:
    global _WORKER_ENGINE
    _WORKER_ENGINE = Engine(model_path, device="cpu", threads=1,
                            precision=precision)  # type: ignore[arg-type]


def classify_chunk(source: Source, refs: list[Ref], spec: PreprocessSpec
                   ) -> tuple[list[DecodedRef], np.ndarray, float, float]:
    """Decode a batch and classify it with this process's engine (runs in a worker process).

    Returns:
        The decoded records, the probabilities of those that decoded (in order), and the
        seconds spent decoding and classifying.
    """
    assert _WORKER_ENGINE is not None, "the pool was started without _load_worker_engine"
    decoded, stacked, seconds = decode_chunk(source, refs, spec)
    t0 = time.perf_counter()
    proba = _WORKER_ENGINE.predict(stacked) if len(stacked) else \
        np.empty((0, len(_WORKER_ENGINE.classes)), np.float32)
    return decoded, proba, seconds, time.perf_counter() - t0


def classify(
    refs: Iterable[Ref],
    source: Source,
    engine: Engine,
    emit: Callable[[dict[str, Any]], None],
    *,
    batch_size: int = 64,
    workers: int | None = None,
    threshold: float = 0.5,
    progress: Progress | None = None,
    row_extra: Callable[[Ref], dict[str, Any]] | None = None,
    on_batch: Callable[[list[dict[str, Any]]], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> StageTimes:
    """Classify every ref and hand each row to ``emit``, in input order.

    Args:
        refs: what to classify, in the order rows should come out.
        source: reads a ref's bytes (must pickle when ``workers`` > 0).
        engine: the loaded model. On the CPU with ``workers`` > 0, each decode process loads
            its own copy of the same file (one thread each) and this one only supplies the card.
        emit: called with each row.
        batch_size: pictures per engine call.
        workers: decode processes; None means all cores, 0 decodes in threads of this process.
        threshold: a top score below it labels the row ``uncertain``.
        progress: counts rows as they are emitted.
        row_extra: extra fields for a ref's row (the worker adds ``etag``).
        on_batch: called with the rows of each batch after they were emitted.
        stop: polled between tasks; when it returns True no new task starts, the tasks in
            flight finish and their rows are emitted.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    workers = default_workers() if workers is None else workers
    times = StageTimes()
    rows_of = _RowMaker(engine, threshold, row_extra)

    def deliver(decoded: list[DecodedRef], proba: np.ndarray) -> None:
        t0 = time.perf_counter()
        rows = rows_of(decoded, proba)
        for row in rows:
            emit(row)
        times.write += time.perf_counter() - t0
        times.pictures += len(rows)
        if progress is not None:
            progress.update(len(rows))
        if on_batch is not None and rows:
            on_batch(rows)

    if workers > 0 and engine.device == "cpu":
        with make_pool(workers, _load_worker_engine,
                       (str(engine.path), engine.precision)) as pool:
            for decoded, proba, t_decode, t_infer in _in_order(
                    pool, classify_chunk, (source, engine.spec), _chunks(iter(refs), batch_size),
                    workers * 2, stop, times):
                times.decode_cpu += t_decode
                times.inference += t_infer
                times.batches += 1
                deliver(decoded, proba)
        return times

    pending: deque[tuple[DecodedRef, np.ndarray | None]] = deque()
    n_ok = 0

    def flush(limit: int | None) -> None:
        """Classify up to ``limit`` decoded pictures (all if None) and deliver rows up to there."""
        nonlocal n_ok
        take: list[DecodedRef] = []
        arrays: list[np.ndarray] = []
        # Error rows that follow the last picture of a full batch wait for the next one; at
        # the end (limit None) everything goes.
        while pending and (limit is None or len(arrays) < limit):
            d, arr = pending.popleft()
            take.append(d)
            if arr is not None:
                arrays.append(arr)
        n_ok -= len(arrays)
        proba = np.empty((0, len(engine.classes)), np.float32)
        if arrays:
            t0 = time.perf_counter()
            proba = engine.predict(np.stack(arrays))
            times.inference += time.perf_counter() - t0
            times.batches += 1
        deliver(take, proba)

    with make_pool(workers) as pool:
        for decoded, stacked, seconds in _in_order(
                pool, decode_chunk, (source, engine.spec), _chunks(iter(refs), CHUNK),
                max(2, (workers or 2) * 3), stop, times):
            times.decode_cpu += seconds
            for d in decoded:
                pending.append((d, stacked[d.row] if d.row >= 0 else None))
                n_ok += d.row >= 0
            while n_ok >= batch_size:
                flush(batch_size)
    flush(None)
    return times


class _RowMaker:
    """Rows for decoded refs: ok rows take the next probabilities, in order."""

    def __init__(self, engine: Engine, threshold: float,
                 row_extra: Callable[[Ref], dict[str, Any]] | None) -> None:
        self.classes = engine.classes
        self.threshold = threshold
        self.extra = row_extra or (lambda ref: {})
        self.common = {"model_id": engine.model_id, "preprocess_version": engine.spec.version}

    def __call__(self, decoded: list[DecodedRef], proba: np.ndarray) -> list[dict[str, Any]]:
        rows, k = [], 0
        for d in decoded:
            if d.row < 0:
                rows.append(error_row(d.ref.source, d.error, sha256=d.sha256,
                                      extra=self.extra(d.ref), **self.common))
            else:
                rows.append(ok_row(d.ref.source, proba[k], self.classes, threshold=self.threshold,
                                   sha256=d.sha256, width=d.width, height=d.height,
                                   extra=self.extra(d.ref), **self.common))
                k += 1
        return rows


def _in_order(pool: Executor, fn: Callable[..., Any], args: tuple[Source, PreprocessSpec],
              chunks: Iterator[list[Ref]], in_flight: int, stop: Callable[[], bool] | None,
              times: StageTimes) -> Iterator[Any]:
    """Results of ``fn(source, chunk, spec)`` in submission order, at most ``in_flight`` pending."""
    futures: deque[Any] = deque()

    def top_up() -> None:
        while len(futures) < in_flight and not (stop and stop()):
            chunk = next(chunks, None)
            if chunk is None:
                return
            futures.append(pool.submit(fn, args[0], chunk, args[1]))

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
