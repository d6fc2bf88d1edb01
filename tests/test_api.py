"""The package's public surface and error tree, and the two ways to start the command."""

from __future__ import annotations

import subprocess
import sys

import maskcore
from maskcore import errors


def test_public_names_exist():
    for name in maskcore.__all__:
        assert hasattr(maskcore, name), name


def test_every_error_is_a_maskcore_error():
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, maskcore.MaskcoreError)


def test_python_dash_m_and_the_console_script_agree():
    a = subprocess.run([sys.executable, "-m", "maskcore", "--help"], capture_output=True,
                       text=True, timeout=60)
    assert a.returncode == 0 and "batch" in a.stdout and "worker" in a.stdout
    b = subprocess.run([sys.executable, "-m", "maskcore", "--version"], capture_output=True,
                       text=True, timeout=60)
    assert b.returncode == 0 and "0.1.0" in b.stdout
