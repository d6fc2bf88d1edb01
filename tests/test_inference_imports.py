"""The inference side runs without TensorFlow: importing it must not load TensorFlow."""

from __future__ import annotations

import subprocess
import sys

INFERENCE_MODULES = [
    "maskcore",
    "maskcore.cli",
    "maskcore.preprocess",
    "maskcore.dataset",
    "maskcore.card",
    "maskcore.metrics",
    "maskcore.split",
    "maskcore.engine",
    "maskcore.decode",
    "maskcore.pipeline",
    "maskcore.manifest",
    "maskcore.storage",
    "maskcore.ledger",
    "maskcore.worker",
    "maskcore.ray_runner",
    "jobs.audit",
    "jobs.batch",
    "jobs.worker",
    "jobs.serverless",
]


def test_inference_side_does_not_import_tensorflow():
    code = (
        "import importlib, sys\n"
        f"for m in {INFERENCE_MODULES!r}: importlib.import_module(m)\n"
        "heavy = ('tensorflow', 'keras', 'tf2onnx', 'onnx', 'matplotlib', 'ray')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in heavy)\n"
        "assert not bad, bad\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_cli_help_lists_commands_without_tensorflow():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from maskcore.cli import main\n"
        "r = CliRunner().invoke(main, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "assert 'audit' in r.output and 'train' in r.output, r.output\n"
        "assert 'tensorflow' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
