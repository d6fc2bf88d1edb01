"""How a long job is asked to stop: SIGTERM (``docker stop``, Kubernetes) or Ctrl-C (SIGINT).

The first signal asks the run to stop after the work in hand, so that what was done is
written; a second exits at once. The batch job and the worker both install :class:`StopRequest`
around their run; the library itself only polls a ``stop`` callable between tasks.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

__all__ = ["SIGNALS", "StopRequest"]

#: The signals that ask a job to stop.
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Turns SIGINT and SIGTERM into a request to stop, for as long as it is entered.

    Args:
        on_first: called with the signal's name when the first one arrives (to say so).
        on_second: called with the signal's name just before a second one ends the process
            with ``os._exit`` (nothing else runs: no ``finally``, no clean-up).

    ``requested`` is what the run polls. Outside the main thread, where Python cannot install
    signal handlers, entering it installs nothing and a signal does what it did before.
    """

    def __init__(self, on_first: Callable[[str], None],
                 on_second: Callable[[str], None] | None = None) -> None:
        self._on_first, self._on_second = on_first, on_second
        self._signum: int | None = None
        self._previous: dict[int, Any] = {}

    def requested(self) -> bool:
        """True once a stop signal has arrived."""
        return self._signum is not None

    @property
    def exit_code(self) -> int:
        """The shell's code for a process ended by the signal that arrived (130 for Ctrl-C,
        143 for SIGTERM); 0 when none did."""
        return 128 + self._signum if self._signum is not None else 0

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self._signum is not None:  # the second signal: no more waiting
            if self._on_second is not None:
                self._on_second(name)
            os._exit(128 + signum)
        self._signum = signum
        self._on_first(name)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
