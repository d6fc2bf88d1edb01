"""The inference side runs without TensorFlow: importing it must not load TensorFlow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

#: The only modules that may load TensorFlow, tf2onnx, ONNX or matplotlib: the training side's.
TRAINING_ONLY = {"maskcore.cnn", "maskcore.export", "maskcore.pairing", "maskcore.plots",
                 "maskcore.quantize", "maskcore.retinaface_tf"}

ROOT = Path(__file__).resolve().parents[1]
INFERENCE_MODULES = sorted(
    f"{p.parent.name}.{p.stem}".removesuffix(".__init__")
    for folder in ("maskcore", "jobs") for p in (ROOT / folder).glob("*.py")
    if p.stem != "__main__" and f"{folder}.{p.stem}" not in TRAINING_ONLY
)


def test_every_module_is_listed():
    # A new module lands in the import check by itself; this fails if the glob finds nothing.
    assert {"maskcore.runners", "maskcore.batch", "maskcore.training", "jobs.batch"} \
        <= set(INFERENCE_MODULES)


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
