#!/usr/bin/env bash
# The GPU figures in one device call (about 6-8 minutes on one H100/H200):
#   1. `mlbpipe train --device cuda` on tiny cached and raw shards (the trainer's autocast/GradScaler path,
#      two epochs each, then a resume to one more epoch);
#   2. bench_loader.py: samples/s delivered to the GPU and the share of time the GPU was busy, with a
#      paper-size Conformer + MLB training step on every batch, 4 loader workers;
#   3. bench_step.py: MLB and Multi-Loss step time relative to Joint, paper-size models, bf16;
#   4. where pytest is installed, the `gpu` test tier (tests/test_gpu.py).
# Everything it prints is also written under $OUT (the device tool brings that folder back).
#
# The device image has torch, numpy, h5py, opencv, typer and tqdm but not webdataset; carry it as wheels
# (here, once: echo /.whl/ >> .git/info/exclude; then
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 -d .whl webdataset==1.0.2 braceexpand==0.1.7
# ) and run:  bash bench/gpu_check.sh   with carry [".whl"].
# DEVICE=cpu QUICK=1 bash bench/gpu_check.sh runs the same steps, small, on a machine without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-/tmp/gpu_check}
QUICK=${QUICK:-0}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
if [ "$DEVICE" = cuda ]; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"; fi

if [ "$QUICK" = 1 ]; then CLIPS=64; WORKERS=2; STEP_ARGS="--size tiny --steps 2 --repeats 2"
else CLIPS=2000; WORKERS=4; STEP_ARGS="--size paper --steps 10 --repeats 5"; fi

echo "== 1. mlbpipe train --device $DEVICE on tiny shards" | tee "$OUT/train.txt"
$PY - "$OUT" <<'EOF' 2>&1 | tee -a "$OUT/train.txt"
import sys
from pathlib import Path
sys.path.insert(0, "tests")
from helpers.shards import write_shard_folder  # numpy only: no media libraries needed
out = Path(sys.argv[1])
for input_path in ("cached", "raw"):
    write_shard_folder(out / "data" / "shards" / input_path, input_path, counts={"train": 48, "validation": 16, "test": 16})
print("tiny shards written under", out / "data" / "shards")
EOF
for features in cached raw; do
    run="$OUT/run-$features"
    rm -rf "$run"
    common=(train --features "$features" --data "$OUT/data" --method mlb --fusion late-linear --size tiny
            --batch-size 8 --device "$DEVICE" --no-dvclive --out "$run")
    SECONDS=0
    $PY -c "from pipeline.cli import main; main()" "${common[@]}" --epochs 2 2>&1 | tee -a "$OUT/train.txt"
    $PY -c "from pipeline.cli import main; main()" "${common[@]}" --epochs 3 --resume 2>&1 | tee -a "$OUT/train.txt"
    $PY -c "import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[2] + ':', {k: r[k] for k in ('device', 'precision', 'num_parameters')}, '2 epochs, then resumed to 3, in', sys.argv[3], 's')" \
        "$run/run.json" "$features" "$SECONDS" | tee -a "$OUT/train.txt"
done

echo "== 2. loader: samples/s delivered to $DEVICE (on CUDA with a training step per batch)" | tee "$OUT/loader.txt"
LOADER_ARGS=(--clips "$CLIPS" --repeats 2 --workers "$WORKERS" --device "$DEVICE")
if [ "$DEVICE" = cuda ]; then LOADER_ARGS+=(--train-step); fi
$PY bench/bench_loader.py "${LOADER_ARGS[@]}" 2>&1 | tee -a "$OUT/loader.txt"

echo "== 3. step time per method relative to Joint" | tee "$OUT/step.txt"
for features in cached raw; do
    AMP=(); if [ "$DEVICE" = cuda ]; then AMP=(--amp); fi
    $PY bench/bench_step.py --features "$features" --methods joint,multi-loss,mlb --device "$DEVICE" $STEP_ARGS \
        "${AMP[@]}" --out "$OUT/step_$features.json" 2>&1 | tee -a "$OUT/step.txt"
done
if [ "$DEVICE" = cuda ] && $PY -c "import pytest" 2>/dev/null; then
    echo "== 4. the gpu test tier (tests/test_gpu.py: CUDA steps, autocast, GradScaler, resume)" | tee "$OUT/gpu_tests.txt"
    $PY -m pytest -q -m gpu tests/test_gpu.py 2>&1 | tee -a "$OUT/gpu_tests.txt" || true
fi
echo "done; outputs in $OUT"
