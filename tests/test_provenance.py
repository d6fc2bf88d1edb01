"""The machine and versions a card records for whoever wants a trained file again."""

from __future__ import annotations

import os

import pytest

from maskcore import provenance

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9B14
flags\t\t: fpu sse2 avx2 fma avx512f avx512_bf16 sha_ni
"""


def test_the_machine_names_the_processor_and_the_features_that_pick_kernels(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text(CPUINFO)
    for name in provenance.ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    found = provenance.machine(info)
    assert found["cpu"] == "AMD EPYC 9B14"
    assert found["cpu_features"] == ["avx2", "avx512f", "avx512_bf16"]  # in CPU_FEATURES order
    assert found["environment"] == {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert found["cores"] == len(os.sched_getaffinity(0))


def test_without_cpuinfo_the_machine_is_still_described(tmp_path):
    found = provenance.machine(tmp_path / "absent")
    assert found["cpu"] and found["cpu_features"] == [] and found["cores"] >= 1


@pytest.mark.parametrize("package", ["numpy", "pillow"])
def test_versions_name_the_installed_packages(package):
    from importlib import metadata
    assert provenance.versions()[package] == metadata.version(package)
