#!/usr/bin/env bash
# The device check of issue 26, prepared for a lent GPU machine (no network there; its image has jax with CUDA,
# flax, optax, orbax, transformers and torch, but neither fastapi nor uvicorn, and no ../shared):
#
#   here:        bash tools/device_check.sh prepare    # .device/: the R1 tokenizer, PandaLM, the [serve] wheels
#   device tool: run(command="bash tools/device_check.sh run", carry=[".device"], timeout_s=540)
#
# Flags after `run` go to `rrm-jax bench device` (`run --quick`: the CPU smoke run, to check this script here).
# `run` writes $OUT/device.json and $OUT/device.log: `rrm-jax bench device` (every section, ~8 minutes on one
# H200); its figures go to docs/device-<card>.json and the README's "Accelerators" table.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=.device
case "${1:-}" in
prepare)
  SHARED=${SHARED:-../shared}
  mkdir -p "$DIR/wheels"
  grep -qx "/$DIR/" .git/info/exclude 2>/dev/null || echo "/$DIR/" >> .git/info/exclude
  cp -r "$SHARED/tokenizers/deepseek-r1-distill-qwen" "$DIR/tokenizer"
  cp "$SHARED/data/pandalm/testset-v1.json" "$DIR/pandalm.json"
  # the device image's Python is 3.12 on x86-64; pip resolves fastapi's and uvicorn's own dependencies
  python -m pip download -q --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 -d "$DIR/wheels" fastapi uvicorn
  du -sh "$DIR"
  ;;
run)
  shift
  OUT=${OUT:-/tmp/device-out}
  mkdir -p "$OUT"
  PY=$(command -v python3)
  "$PY" -m pip install -q --no-index --find-links "$DIR/wheels" fastapi uvicorn 2>&1 | tail -2 || true
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  # torch (the judge section) and a second process (the serve section) share the GPU with this one
  export XLA_PYTHON_CLIENT_PREALLOCATE=false RRM_JAX_HUGEPAGES=0 PYTHONPATH=$PWD
  timeout 520 "$PY" -m rrm_jax.cli bench device --tokenizer "$DIR/tokenizer" --data "$DIR/pandalm.json" \
    --out "$OUT/device.json" "$@" 2>&1 | tee "$OUT/device.log" | grep -v "it/s\]" | tail -40
  ;;
*)
  echo "usage: bash tools/device_check.sh prepare|run" >&2
  exit 2
  ;;
esac
