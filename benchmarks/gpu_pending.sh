#!/usr/bin/env bash
# The GPU measurements issue 9 still lacks, in one call on a GPU machine, each writing its JSON and log to OUT_DIR:
#   bash benchmarks/gpu_pending.sh OUT_DIR
# One H200: the CUDA tests (graphs, Jacobi windows beside them, FP8), whole 720x720 and 1024x1024 images token by
# token and with Jacobi windows, and continuous batching at the 34B shape (about 8 minutes, mostly image decoding).
# With two GPUs or more it adds tensor parallelism: the raw sharded step (torchrun) and the serving path.
# A step that fails is logged and the next one runs. ONLY="name ..." runs just those steps (e.g. ONLY="tp_spmd").
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: gpu_pending.sh OUT_DIR}
mkdir -p "$out"
py=python3
gpus=$($py -c 'import torch; print(torch.cuda.device_count())')
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; $py -c 'import torch; print(torch.__version__)'; } \
  >"$out/machine.txt" 2>&1

step() {  # step NAME COMMAND...: run, log, keep going
  local name=$1
  shift
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
  echo "== $name: $*" | tee -a "$out/steps.txt"
  local t0=$SECONDS
  "$@" >"$out/$name.log" 2>&1
  echo "   exit $? after $((SECONDS - t0)) s" | tee -a "$out/steps.txt"
}

if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" cuda_tests "* ]]; then
  :
elif $py -c 'import pytest' 2>/dev/null; then
  step cuda_tests $py -m pytest -q -p no:cacheprovider tests/test_engine_cuda.py
else
  echo "== cuda_tests: skipped, no pytest here (carry its wheel)" | tee -a "$out/steps.txt"
fi
step image_time $py benchmarks/image_time.py --shape 34b --device cuda --grids 45x45,64x64 --windows 0,16 \
  --out "$out/image_time_34b.json"
step batching $py benchmarks/batching.py --shape 34b --device cuda --out "$out/batching_34b.json"
step batching_graphs $py benchmarks/batching.py --shape 34b --device cuda --graphs --out "$out/batching_34b_graphs.json"
if [ "$gpus" -ge 2 ]; then
  step tp_spmd torchrun --nproc-per-node 2 benchmarks/tensor_parallel.py --out "$out/tensor_parallel_34b.json"
  step tp_serving $py benchmarks/tensor_parallel.py --engine --world 2 --out "$out/tensor_parallel_engine_34b.json"
fi
