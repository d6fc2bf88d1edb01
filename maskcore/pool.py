"""Process pools for CPU-bound decoding, sized for the machine and safe to start from any parent."""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

__all__ = ["default_workers", "make_pool"]


def default_workers() -> int:
    """All the cores this process may use (honours CPU affinity and cgroup-limited sets)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return max(os.cpu_count() or 1, 1)


def make_pool(workers: int, initializer: Callable[..., None] | None = None,
              initargs: tuple[Any, ...] = ()) -> Executor:
    """A pool of ``workers`` processes; 0 means decode in threads of this process instead.

    ``initializer(*initargs)`` runs once in each process (the pipeline loads an engine there).

    Processes are spawned, not forked: a parent that has loaded TensorFlow or ONNX Runtime (with
    their thread pools) cannot be forked safely, and spawn costs well under a second once.
    """
    if workers <= 0:
        return ThreadPoolExecutor(max_workers=2)
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_process, initargs=(initializer, initargs))


def _start_process(initializer: Callable[..., None] | None, initargs: tuple[Any, ...]) -> None:
    _ignore_signals()
    if initializer is not None:
        initializer(*initargs)


def _ignore_signals() -> None:
    """Decode processes leave shutdown to their parent.

    Ctrl-C reaches the whole process group, and a worker's warm shutdown needs its pool alive to
    finish the batch in hand; the parent ends the pool when it is done.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
