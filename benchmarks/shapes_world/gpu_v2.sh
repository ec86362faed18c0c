#!/usr/bin/env bash
# Train the whole v2 proxy on one GPU in one go (every stage of train_staged.py), inside 10 minutes.
#
# Prepared for the device machine (torch is there, diffusers is not): from the repo root here,
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl diffusers==0.42.1
# then run, carrying .whl:   bash benchmarks/shapes_world/gpu_v2.sh
# What comes back under $OUT: the exported checkpoint (a tar) and the run's log. Untar the
# checkpoint into benchmarks/shapes_world/checkpoint_v2 and copy the log beside it.
set -euo pipefail
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD/src:$PWD
else
  export PYTHONPATH=$PWD/src:$PWD
fi
OUT=${OUT:-/tmp/out}
WORK=/tmp/v2
mkdir -p "$OUT" "$WORK"
# steps sized for about 8 minutes on one H100 at these batches; the CPU recipe's step counts are
# the defaults of train_staged.py (same schedule shapes, smaller batches)
timeout 560 python3 -m benchmarks.shapes_world.train_staged --work "$WORK" --world v2 --stage all --device cuda \
  --out "$WORK/checkpoint_v2" --scenes 40000 --workers 14 \
  --vae-steps 3000 --vae-batch 64 --clip-steps 3000 --clip-batch 512 \
  --t2i-steps 8000 --edit-steps 8000 --batch 256 --lr 1e-3 --save-every 1000 --max-minutes 9 \
  2>&1 | tail -n 40 || true
cp "$WORK/train_log.jsonl" "$OUT/train_log.jsonl"
if [ -d "$WORK/checkpoint_v2" ]; then
  cp "$WORK/train_log.jsonl" "$WORK/checkpoint_v2/"
  tar -C "$WORK" -cf "$OUT/checkpoint_v2.tar" checkpoint_v2 text_to_image
else  # out of time: bring the states back so a CPU or a later GPU chunk continues them
  tar -C "$WORK" -cf "$OUT/states.tar" vae clip t2i edit 2>/dev/null || true
fi
ls -la "$OUT"
