"""The classification pipeline: read -> preprocess in a pool -> batch -> engine -> rows, in order.

Decoding runs in worker processes, a chunk of pictures per task, while the main process runs the
engine on the batches already decoded; at most a fixed number of chunks are in flight, so memory
stays flat whatever the input size. Rows come out in the order the refs went in (the batch job
sorts refs by source), each as soon as its batch is classified. A picture that cannot be read or
decoded becomes an error row; nothing about one picture stops the run.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import numpy as np

from maskcore.decode import CHUNK, Decoded, decode_chunk
from maskcore.engine import Engine
from maskcore.manifest import error_row, ok_row
from maskcore.pool import default_workers, make_pool
from maskcore.progress import Progress
from maskcore.storage import Ref, Source

__all__ = ["StageTimes", "classify"]


@dataclass
class StageTimes:
    """Seconds spent per stage, to show where the time goes."""

    decode_cpu: float = 0.0  # summed over workers: read + hash + preprocess
    wait: float = 0.0  # main process waiting for decoded chunks (decode-bound when large)
    inference: float = 0.0
    write: float = 0.0
    pictures: int = 0
    batches: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


@dataclass
class _Pending:
    """Decoded refs waiting for their batch, in input order."""

    items: deque[tuple[Decoded, np.ndarray | None]] = field(default_factory=deque)
    ok: int = 0


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
        engine: the loaded model.
        emit: called with each row.
        batch_size: pictures per engine call.
        workers: decode processes; None means all cores, 0 decodes in threads of this process.
        threshold: a top score below it labels the row ``uncertain``.
        progress: counts rows as they are emitted.
        row_extra: extra fields for a ref's row (the worker adds ``etag``).
        on_batch: called with the rows of each batch after they were emitted.
        stop: polled between chunks; when it returns True no new chunk starts, the chunks in
            flight finish and their rows are emitted.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    workers = default_workers() if workers is None else workers
    spec = engine.spec
    times = StageTimes()
    pending = _Pending()
    extra = row_extra or (lambda ref: {})
    common = {"model_id": engine.model_id, "preprocess_version": spec.version}

    def flush(limit: int | None) -> None:
        """Classify up to ``limit`` decoded pictures (all if None) and emit rows up to there."""
        take: list[tuple[Decoded, np.ndarray | None]] = []
        n_ok = 0
        while pending.items and (limit is None or n_ok < limit):
            d, arr = pending.items.popleft()
            take.append((d, arr))
            n_ok += arr is not None
        # Error rows that follow the last picture of a full batch wait for the next one; at
        # the end (limit None) everything goes.
        pending.ok -= n_ok
        arrays = [a for _, a in take if a is not None]
        proba = np.empty((0, len(engine.classes)), np.float32)
        if arrays:
            t0 = time.perf_counter()
            proba = engine.predict(np.stack(arrays))
            times.inference += time.perf_counter() - t0
            times.batches += 1
        t0 = time.perf_counter()
        rows = []
        k = 0
        for d, arr in take:
            if arr is None:
                row = error_row(d.ref.source, d.error, sha256=d.sha256,
                                extra=extra(d.ref), **common)
            else:
                row = ok_row(d.ref.source, proba[k], engine.classes, threshold=threshold,
                             sha256=d.sha256, width=d.width, height=d.height,
                             extra=extra(d.ref), **common)
                k += 1
            emit(row)
            rows.append(row)
        times.write += time.perf_counter() - t0
        times.pictures += len(take)
        if progress is not None:
            progress.update(len(take))
        if on_batch is not None and rows:
            on_batch(rows)

    def accept(result: tuple[list[Decoded], np.ndarray, float]) -> None:
        decoded, stacked, seconds = result
        times.decode_cpu += seconds
        for d in decoded:
            pending.items.append((d, stacked[d.row] if d.row >= 0 else None))
            pending.ok += d.row >= 0
        while pending.ok >= batch_size:
            flush(batch_size)

    chunks = _chunks(iter(refs), CHUNK)
    in_flight_max = max(2, (workers or 2) * 3)
    with make_pool(workers) as pool:
        futures: deque[Any] = deque()

        def submit_more() -> None:
            while len(futures) < in_flight_max and not (stop and stop()):
                chunk = next(chunks, None)
                if chunk is None:
                    return
                futures.append(pool.submit(decode_chunk, source, chunk, spec))

        submit_more()
        while futures:
            t0 = time.perf_counter()
            result = futures.popleft().result()
            times.wait += time.perf_counter() - t0
            submit_more()
            accept(result)
    flush(None)
    return times


def _chunks(it: Iterator[Ref], n: int) -> Iterator[list[Ref]]:
    while chunk := list(islice(it, n)):
        yield chunk
