"""Progress for long work: a bar with rate and ETA on a terminal, a log line every few seconds elsewhere.

Everything goes to stderr so that stdout stays clean for what a command is asked to print.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress", "say"]


def say(line: str, *, job: str = "") -> None:
    """One line for the person running a job, on stderr (``job`` prefixes it as ``[job]``).

    Jobs a person runs say what they do with this; the worker, which runs unattended, writes JSON
    lines instead (:func:`maskcore.worker.log_event`).
    """
    print(f"[{job}] {line}" if job else line, file=sys.stderr, flush=True)


class Progress:
    """Counts finished items and reports them without flooding a log.

    Args:
        total: the number of items expected, or None when unknown.
        label: a short word for the items ("pictures", "files").
        stream: where to write; stderr by default.
        every: seconds between log lines when ``stream`` is not a terminal.
        enabled: False silences it entirely (library use, tests).
    """

    def __init__(
        self,
        total: int | None,
        label: str = "items",
        *,
        stream: TextIO | None = None,
        every: float = 5.0,
        enabled: bool = True,
    ) -> None:
        self.total = total
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.every = every
        self.enabled = enabled
        self.done = 0
        self.start = time.monotonic()
        self._last = self.start  # first report after one interval, not at the first item
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, n: int = 1) -> None:
        """Count ``n`` more finished items and report if it is time to."""
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last >= (0.2 if self._tty else self.every):
            self._last = now
            self._write(final=False)

    def close(self) -> None:
        """Write the last state (and end the bar's line on a terminal)."""
        if self.enabled:
            self._write(final=True)

    @property
    def rate(self) -> float:
        """Items per second so far."""
        elapsed = time.monotonic() - self.start
        return self.done / elapsed if elapsed > 0 else 0.0

    def _write(self, *, final: bool) -> None:
        rate = self.rate
        if self.total:
            left = max(self.total - self.done, 0)
            eta = f"{left / rate:,.0f}s" if rate > 0 else "?"
            frac = min(self.done / self.total, 1.0)
            count = f"{self.done:,}/{self.total:,} {self.label}"
        else:
            eta, frac, count = "?", 0.0, f"{self.done:,} {self.label}"
        if self._tty:
            bar = "#" * int(frac * 30)
            line = f"\r[{bar:<30}] {count} {rate:,.0f}/s ETA {eta}  "
            self.stream.write(line + ("\n" if final else ""))
        else:
            self.stream.write(f"progress: {count}, {rate:,.0f}/s, ETA {eta}\n")
        self.stream.flush()
