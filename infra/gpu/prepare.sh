#!/usr/bin/env bash
# Run here, from the project root, before a session's lent GPU is used: makes what
# infra/gpu/check.sh needs on the GPU machine, in folders git ignores.
#
#   .gpucheck/   wheels of Pillow and click for CPython 3.12 (the machine's Python; it has NumPy),
#                the name of the onnxruntime-gpu wheel, and PICTURES street pictures
#   .ortgpu/pNN/ onnxruntime-gpu 1.31.1 (255 MB; ../shared/tools/ort-gpu-parts.sh downloads it)
#                cut into parts of PART_MIB, so that each part and this working tree (about 22 MB,
#                the models most of it) travel in one call under its 64 MiB: the shared script's
#                45 MiB parts do not fit beside this tree.
#
# Then, with the device tool, one call per part back to back (the machine stays warm about 30 s
# after a call, and what earlier calls carried stays while it is held), the last one also
# carrying .gpucheck and running the check:
#   run carry=[".ortgpu/p00"] command="true"
#   ...
#   run carry=[".ortgpu/pNN", ".gpucheck"] command="bash infra/gpu/check.sh" timeout_s=480
# check.sh writes its figures under $OUT; docs/BENCHMARKS.md's GPU section takes them.
set -euo pipefail
PICTURES=${PICTURES:-200}
PART_MIB=${PART_MIB:-40}
SCENES=${SCENES:-../shared/datasets/face-mask-scenes/images}
root=$(git rev-parse --show-toplevel); cd "$root"
bash ../shared/tools/ort-gpu-parts.sh >/dev/null  # downloads the wheel once, into .ortgpu/all
whl=$(ls .ortgpu/all/onnxruntime_gpu-*.whl | head -1)
rm -rf .ortgpu/p[0-9]* .gpucheck
split -b "${PART_MIB}M" -d -a 2 "$whl" .ortgpu/all/chunk-
i=0
for c in .ortgpu/all/chunk-*; do  # p00, p01, ...: check.sh joins them in name order
  d=$(printf ".ortgpu/p%02d" "$i"); mkdir -p "$d"; mv "$c" "$d/part"; i=$((i+1))
done
mkdir -p .gpucheck/wheels .gpucheck/street
basename "$whl" > .gpucheck/ort-wheel
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .gpucheck/wheels \
  "pillow>=10.3,<13" "click>=8.1,<9"
# Every k-th street picture, so that the sample spans the dataset.
mapfile -t all < <(ls "$SCENES" | grep -i '\.jpe\?g$' | sort)
step=$(( ${#all[@]} / PICTURES )); step=$(( step > 0 ? step : 1 ))
for ((j = 0; j < ${#all[@]} && j / step < PICTURES; j += step)); do
  cp "$SCENES/${all[j]}" .gpucheck/street/
done
echo "onnxruntime-gpu in $i parts: $(ls -d .ortgpu/p[0-9]* | tr '\n' ' ')"
echo ".gpucheck: $(ls .gpucheck/street | wc -l) street pictures, $(ls .gpucheck/wheels | tr '\n' ' ')"
du -sh .ortgpu/p[0-9]* .gpucheck | tr '\t' ' '
