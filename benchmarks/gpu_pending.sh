#!/usr/bin/env bash
# The GPU measurements issue 9 still needs, each writing its JSON and log to OUT_DIR:
#   bash benchmarks/gpu_pending.sh OUT_DIR
# One H200: the CUDA tests (graphs, Jacobi beside them, FP8, the Triton skinny kernel, the Gluon FP8 kernel), the
# decode step (cuBLAS bf16; bf16 and FP8 as serve runs them: Triton products and decode attention), the float8 kernel
# variants (fp8_variants.py), the same step at commit 1cd583f when OLD_TREE names an export of it (the 2026-11-24
# figures: `git archive 1cd583f model benchmarks | tar -x -C DIR`), where a step's time goes (profile_step.py, bf16
# and FP8), whole 720x720 and 1024x1024 images, and continuous batching at the 34B shape (with and without the batch's
# lookahead). With two GPUs it adds tensor parallelism: the raw sharded step and the serving path.
# Every step has a time limit (a hung step must not eat the device budget); one that fails or times out is logged and
# the next one runs. ONLY="name ..." runs just those steps (e.g. ONLY="decode tp_spmd"). All steps: about 25 minutes,
# more than one 10-minute device call: split them with ONLY.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: gpu_pending.sh OUT_DIR}
mkdir -p "$out"
py=python3
gpus=$($py -c 'import torch; print(torch.cuda.device_count())')
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; $py -c 'import torch; print(torch.__version__)'; } \
  >"$out/machine.txt" 2>&1

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log, keep going
  local name=$1 limit=$2
  shift 2
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
  echo "== $name: $*" | tee -a "$out/steps.txt"
  local t0=$SECONDS
  timeout -k 10 "$limit" "$@" >"$out/$name.log" 2>&1
  echo "   exit $? after $((SECONDS - t0)) s" | tee -a "$out/steps.txt"
}

step cuda_tests 300 $py -m pytest -q -p no:cacheprovider tests/test_engine_cuda.py tests/test_skinny_mm.py tests/test_decode_attention.py
step decode 360 $py benchmarks/decode.py --shape 34b --variants fused,skinny_attn,skinny_fp8_attn --streams 1cfg,8cfg \
  --out "$out/decode_34b.json"
# the decode fusions (QK-norm/RoPE/KV writes in one kernel, SwiGLU in gate_up's epilogue) against the separate ops
step decode_fusions_ab 330 $py benchmarks/decode.py --shape 34b \
  --variants skinny_attn_sep,skinny_attn,skinny_fp8_attn_sep,skinny_fp8_attn --streams 1cfg --steps 128 --prefill 256 \
  --out "$out/decode_34b_fusions_ab.json"
if [ -n "${OLD_TREE:-}" ]; then
  step decode_1cd583f 240 $py "$OLD_TREE/benchmarks/decode.py" --shape 34b --variants fused --streams 1cfg,8cfg \
    --out "$out/decode_34b_1cd583f.json"
fi
step sampling 120 $py benchmarks/sampling_step.py --device cuda --streams 1,8
step fp8_variants 240 $py benchmarks/fp8_variants.py --rows 2,8 --variants cur,read,gluon --out "$out/fp8_variants.json"
# gate_up with the SwiGLU in the Gluon kernel's epilogue (two accumulators) against the plain product, every config
step fp8_glu 200 $py benchmarks/fp8_variants.py --rows 2 --shapes gate_up --variants gluon,gluon_glu \
  --out "$out/fp8_variants_glu.json"
step profile 240 $py benchmarks/profile_step.py --rows 2 --prefill 2048 --trace "$out/trace_bf16.json" \
  --out "$out/profile_34b.txt"
step profile_fp8 240 $py benchmarks/profile_step.py --rows 2 --fp8 --trace "$out/trace_fp8.json" \
  --out "$out/profile_34b_fp8.txt"
step image_time 420 $py benchmarks/image_time.py --shape 34b --device cuda --grids 45x45,64x64 --windows 0 --lookahead 1,0 \
  --out "$out/image_time_34b.json"
step batching 300 $py benchmarks/batching.py --shape 34b --device cuda --graphs --out "$out/batching_34b_graphs.json"
step batching_image 300 $py benchmarks/batching.py --shape 34b --device cuda --graphs --image \
  --out "$out/batching_34b_graphs_image.json"
# the batch engine's lookahead against the batch without it (on by default since this A/B ran on an H200, 2026-12-01)
step batching_image_lookahead 300 $py benchmarks/batching.py --shape 34b --device cuda --graphs --image --lookahead 1,0 \
  --streams 1,8 --out "$out/batching_34b_graphs_image_lookahead.json"
if [ "$gpus" -ge 2 ]; then
  step tp_spmd 240 torchrun --nproc-per-node 2 benchmarks/tensor_parallel.py --no-single --out "$out/tensor_parallel_34b.json"
  step lamport_tests 180 $py -m pytest -q -p no:cacheprovider tests/test_lamport_all_reduce.py
  step tp_lamport 330 torchrun --nproc-per-node 2 benchmarks/tensor_parallel.py --all-reduce peer,lamport \
    --out "$out/tensor_parallel_lamport_34b.json"
  # the A/Bs still open (2026-11-30): PDL after the sums against PDL everywhere, and the serving path with and without
  step tp_pdl_ab 300 torchrun --nproc-per-node 2 benchmarks/tensor_parallel.py \
    --all-reduce lamport,lamport_pdl,lamport_pdl_all,lamport_pdl --out "$out/tensor_parallel_pdl_ab_34b.json"
  step tp_serving_nopdl 240 $py benchmarks/tensor_parallel.py --engine --world 2 --all-reduce lamport_nopdl \
    --out "$out/tensor_parallel_engine_lamport_nopdl_34b.json"
  step tp_serving_lamport 240 $py benchmarks/tensor_parallel.py --engine --world 2 --all-reduce lamport \
    --out "$out/tensor_parallel_engine_lamport_34b.json"
  # the leader's lookahead (ids broadcast from rank 0; off by default until this A/B): against the one-GPU decode step
  # with the lookahead (decode.py, above)
  step tp_serving_lookahead 240 $py benchmarks/tensor_parallel.py --engine --world 2 --all-reduce lamport --lookahead \
    --out "$out/tensor_parallel_engine_lamport_lookahead_34b.json"
  step tp_spmd_peer 300 torchrun --nproc-per-node 2 benchmarks/tensor_parallel.py --all-reduce peer \
    --out "$out/tensor_parallel_peer_34b.json"
  step tp_profile 240 torchrun --nproc-per-node 2 benchmarks/tensor_parallel.py --all-reduce peer \
    --profile "$out/tp_profile" --out "$out/tensor_parallel_profile_34b.json"
  step tp_serving 240 $py benchmarks/tensor_parallel.py --engine --world 2 --out "$out/tensor_parallel_engine_34b.json"
fi
