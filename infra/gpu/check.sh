#!/usr/bin/env bash
# Run on the lent GPU machine, from the project root, after infra/gpu/prepare.sh's parts have
# travelled (see its header): installs onnxruntime-gpu, Pillow and click beside the machine's
# Python, checks that CUDA really runs both models, measures them (jobs.bench_gpu) and compares
# the rows of a CUDA run with a CPU run of the same pictures, float32 both.
# Writes $OUT/gpu_check.txt (everything printed) and $OUT/bench_gpu.md.
# To try it anywhere: DEVICE=cpu runs the same steps on a CPU, PYTHON picks the Python, and
# INSTALL=0 uses what that Python has instead of installing the carried wheels.
set -euo pipefail
OUT=${OUT:-/tmp/gpu-check}; mkdir -p "$OUT"
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
exec > >(tee "$OUT/gpu_check.txt") 2>&1
site=/tmp/maskcore-site
if [ "${INSTALL:-1}" = 1 ]; then
  whl=/tmp/$(cat .gpucheck/ort-wheel)
  cat .ortgpu/p*/part > "$whl"
  "$PY" -m pip install -q --no-index --no-deps --target "$site" "$whl" .gpucheck/wheels/*.whl
  export PYTHONPATH="$site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$PY" - "$DEVICE" <<'PY'
import sys
import onnxruntime as ort
if hasattr(ort, "preload_dlls"):
    ort.preload_dlls()  # CUDA and cuDNN from the machine's pip packages
from maskcore.detector import FaceDetector
from maskcore.engine import Engine
device = sys.argv[1]
print("onnxruntime", ort.__version__, "lists", ort.get_available_providers())
engine = Engine(device=device, precision="fp32")
detector = FaceDetector(device=device, precision="fp32")
# The sessions' own providers, not the list above (which names CUDA wherever the wheel does).
print("classifier", engine.model_id, "runs on", engine.session.get_providers())
print("detector", detector.model_id, "runs on", detector.session.get_providers())
PY
"$PY" -m jobs.bench_gpu --data .gpucheck/street --device "$DEVICE" | tee "$OUT/bench_gpu.md"
for d in "$DEVICE" cpu; do
  "$PY" -m maskcore batch .gpucheck/street --out "/tmp/rows-$d" --device "$d" --precision fp32 \
    --no-progress 2>&1 | tail -3
done
"$PY" - "$DEVICE" <<'PY'
import json, sys
def rows(d, name):
    return {r["source"]: r for r in map(json.loads, open(f"/tmp/rows-{d}/{name}"))}
gpu, cpu = rows(sys.argv[1], "manifest.jsonl"), rows("cpu", "manifest.jsonl")
same = sum(gpu[s]["label"] == cpu[s]["label"] for s in cpu)
faces = [sum(r["faces"] or 0 for r in x.values()) for x in (gpu, cpu)]
print(f"{sys.argv[1]} against cpu, float32 both: the same picture label on {same} of {len(cpu)}; "
      f"faces {faces[0]} against {faces[1]}")
PY
