"""Process pools for CPU-bound decoding, sized for the machine and safe to start from any parent."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

__all__ = ["capped_workers", "default_workers", "make_pool"]


def default_workers() -> int:
    """All the cores this process may use (honours CPU affinity and cgroup-limited sets)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return max(os.cpu_count() or 1, 1)


def capped_workers(workers: int | None) -> int:
    """Decode processes to start: all cores by default, and never more than twice the cores
    (64 processes on 2 cores ran 14 times slower and took 2.5 GB); a larger request is capped
    with a note on stderr."""
    cores = default_workers()
    if workers is None:
        return cores
    if workers > 2 * cores:
        sys.stderr.write(f"note: --workers {workers} capped at {2 * cores} (twice the {cores} "
                         "cores this process may use)\n")
        return 2 * cores
    return workers


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
                               initializer=_start_process,
                               initargs=(os.getpid(), initializer, initargs))


def _start_process(parent: int, initializer: Callable[..., None] | None,
                   initargs: tuple[Any, ...]) -> None:
    _ignore_signals()
    _die_with_parent(parent)
    if initializer is not None:
        initializer(*initargs)


def _die_with_parent(parent: int) -> None:
    """Ask Linux to kill this process when its parent dies (``PR_SET_PDEATHSIG``).

    Decode processes ignore SIGTERM and SIGINT (below), so a parent killed with SIGKILL would
    otherwise leave them behind for good. Elsewhere than Linux the pool's own pipes end them
    once they next wait for work.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the call: nobody will send the signal
        os._exit(1)


def _ignore_signals() -> None:
    """Decode processes leave shutdown to their parent.

    Ctrl-C reaches the whole process group, and a worker's warm shutdown needs its pool alive to
    finish the batch in hand; the parent ends the pool when it is done.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
