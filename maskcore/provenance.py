"""What a model was trained with (for its card) and a benchmark ran on: package versions and
the machine. The one place that reads the processor's name and features.

A fit is deterministic on one machine and not across machines: the same commit, data, seed and
package versions gave the face detector's first epoch a class loss of 1.583 on a 2-core AVX-512
machine, 1.571 with oneDNN held to AVX2, 1.569 on one thread and 1.606 on four (docs/MODEL.md).
TensorFlow's CPU kernels split their sums by thread count and instruction set. So a card records
both, and whoever wants a trained file again byte for byte knows which machine to ask for.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["cpu_flags", "cpu_name", "machine", "versions"]

#: Packages whose version can change a trained model's bytes.
PACKAGES = ("tensorflow-cpu", "tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime-gpu",
            "onnxruntime", "numpy", "pillow")

#: CPU features that change which kernels oneDNN picks (and so a fit's arithmetic).
CPU_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_bf16")

#: Settings read from the environment that change the kernels or how their work is split.
ENVIRONMENT = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS",
               "ONEDNN_MAX_CPU_ISA", "TF_ENABLE_ONEDNN_OPTS", "TF_DETERMINISTIC_OPS")


def versions() -> dict[str, str]:
    """Python's version and that of each installed package of :data:`PACKAGES`."""
    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


CPUINFO = Path("/proc/cpuinfo")


def _cpuinfo_field(key: str, cpuinfo: str | Path) -> str | None:
    """The first ``key`` line's value in ``cpuinfo`` (Linux); None where there is none."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in text.splitlines()
                 if line.startswith(key)), None)


def cpu_name(cpuinfo: str | Path = CPUINFO) -> str:
    """The processor's name: its ``model name`` (Linux), else what ``platform`` says."""
    return (_cpuinfo_field("model name", cpuinfo) or platform.processor() or platform.machine()
            or "unknown")


def cpu_flags(cpuinfo: str | Path = CPUINFO) -> set[str]:
    """The processor's feature flags (Linux; empty elsewhere)."""
    return set((_cpuinfo_field("flags", cpuinfo) or "").split())


def machine(cpuinfo: str | Path = CPUINFO) -> dict[str, Any]:
    """The processor, the cores this process may use, and the settings that split the work.

    ``cpuinfo`` is read where it exists (Linux); elsewhere the processor is what ``platform``
    says and the features are not listed.
    """
    flags = cpu_flags(cpuinfo)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return {"cpu": cpu_name(cpuinfo), "cpu_features": [f for f in CPU_FEATURES if f in flags],
            "cores": cores,
            "environment": {k: os.environ[k] for k in ENVIRONMENT if k in os.environ}}
