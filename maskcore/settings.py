"""The serving defaults, written once: the CLI options, the serverless handler and the library
read them from here.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields, replace
from typing import Any

from maskcore.errors import UsageError

__all__ = ["CHOICES", "DEFAULTS", "ENV", "RANGES", "ServingSettings", "from_env", "parse_number"]


@dataclass(frozen=True)
class ServingSettings:
    """How a batch, a worker or the handler runs the model."""

    model: str | None = None  # None: $MASKCORE_MODEL, else the bundled model
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto | fp32 | int8
    faces: str = "auto"  # auto | off
    batch_size: int = 64  # pictures per inference call
    threshold: float = 0.5  # top probability below which a label is "uncertain"


DEFAULTS = ServingSettings()

#: Environment variable of each setting (the CLI declares the same names), and of the two
#: places only the environment names: another face detector's card (``detector``) and the
#: serverless handler's results prefix (``results``).
ENV = {"model": "MASKCORE_MODEL", "device": "MASKCORE_DEVICE", "precision": "MASKCORE_PRECISION",
       "faces": "MASKCORE_FACES", "batch_size": "MASKCORE_BATCH_SIZE",
       "threshold": "MASKCORE_THRESHOLD", "consolidate_every": "MASKCORE_CONSOLIDATE_EVERY",
       "detector": "MASKCORE_DETECTOR", "results": "MASKCORE_RESULTS"}

#: What each setting that is a choice accepts (the CLI offers the same).
CHOICES = {"device": ("auto", "cpu", "cuda"), "precision": ("auto", "fp32", "int8"),
           "faces": ("auto", "off")}

#: Each numeric setting's type and bounds, inclusive (the CLI checks the same).
RANGES: dict[str, tuple[type[int] | type[float], int, int]] = {
    "batch_size": (int, 1, 4096), "threshold": (float, 0, 1),
    "consolidate_every": (float, 1, 86400)}


def from_env(environ: dict[str, str] | None = None) -> ServingSettings:
    """Settings from ``MASKCORE_*`` variables, checked like the CLI checks its options.

    Raises:
        UsageError: a variable whose value cannot be used (named, with what it takes).
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(ServingSettings):
        raw = env.get(ENV[f.name])
        if raw is None or raw == "":
            continue
        values[f.name] = parse_setting(f.name, raw)
    return replace(DEFAULTS, **values)


def parse_setting(name: str, raw: str) -> Any:
    """One setting's value from text, or UsageError naming its variable."""
    var = ENV.get(name, name)
    if name in CHOICES:
        if raw not in CHOICES[name]:
            raise UsageError(f"{var}={raw!r}: takes {', '.join(CHOICES[name])}")
        return raw
    if name in RANGES:
        cast, low, high = RANGES[name]
        what = f"{'a whole number' if cast is int else 'a number'} from {low} to {high}"
        return parse_number(var, raw, cast, low, high, what)
    return raw


def parse_number(var: str, raw: str, cast: type[int] | type[float], low: float, high: float,
                 what: str) -> Any:
    """``raw`` as a finite number in [low, high], or UsageError saying what it takes."""
    try:
        value = cast(raw)
    except ValueError:
        raise UsageError(f"{var}={raw!r}: takes {what}") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise UsageError(f"{var}={raw!r}: takes {what}")
    return value
