"""Timestamps, in one format: ISO 8601 in UTC with a ``Z`` (rows, summaries, log lines, cards).

Rows carry milliseconds, and the ledger keeps the newest row of a source by comparing
``processed_at`` as text: that is right only because every stamp has this one fixed width.
"""

from __future__ import annotations

from datetime import datetime, timezone

__all__ = ["file_stamp", "seconds_of", "stamp_at", "utc_now"]


def utc_now(timespec: str = "milliseconds") -> str:
    """Now, e.g. ``2026-11-24T15:47:06.232Z`` (``timespec="seconds"``: without the fraction)."""
    return _iso(datetime.now(timezone.utc), timespec)


def stamp_at(seconds: float, timespec: str = "seconds") -> str:
    """A Unix time in the same format, e.g. for when something is due."""
    return _iso(datetime.fromtimestamp(seconds, timezone.utc), timespec)


def seconds_of(stamp: str) -> float | None:
    """The Unix time of a stamp in this format (a row's ``processed_at``); None if it is not one."""
    try:
        when = datetime.fromisoformat(stamp)
    except (TypeError, ValueError):
        return None
    return when.timestamp() if when.tzinfo is not None else None


def _iso(when: datetime, timespec: str) -> str:
    return when.isoformat(timespec=timespec).replace("+00:00", "Z")


def file_stamp() -> str:
    """Now, for a file name that sorts by time: ``20261124T154706.232805Z``."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
