#!/usr/bin/env bash
# `emu35-robot eval` on a many-core machine that has Python 3.12 and PyTorch but no package index (the device tool's
# H200 machines: 16 cores; 60 mini episodes in about 2 minutes against 25 on a 2-core machine).
#
#   bash benchmarks/eval_on_device.sh prepare            # here, with internet: wheels into .whl/, EGL loaders into .gl/
#   bash benchmarks/eval_on_device.sh run OUT EVAL_ARGS  # there, in the repository root, with .whl and .gl carried
#   bash benchmarks/eval_on_device.sh with CMD ARGS...   # there: any command in the same set-up (e.g. `python3 -m
#                                                        # emu35_robot train collect`; benchmarks/lm_on_device.py)
#
# `run` unpacks the glvnd EGL loader (MuJoCo renders through the NVIDIA EGL driver), installs the wheels into
# /tmp/site, runs `python3 -m emu35_robot eval --planner mini --engines mujoco --image-size 128 --no-video
# --no-progress --workers (cores - 1) EVAL_ARGS --out /tmp/eval` (EVAL_ARGS may say `--engines pybullet`: the last
# one counts), then copies the records and the report table to OUT as single files (the device tool refuses to copy
# back many files). RESUME=FILE continues a cut-off run's records; EVAL_TIMEOUT=SECONDS cuts the eval off in time to
# copy back what it has, inside the device tool's per-call limit. With `--mini-device cuda` the mini plans on the
# GPU, one server for every worker (a checked ClearTable episode's 9,400 tokens no longer take minutes of a core).
# PyBullet publishes no wheel for Python 3.12: `prepare` builds one from the sdist with a local Python 3.12 (PY312,
# e.g. pyenv's) and numpy (so camera images come back as arrays), then keeps only the modules and the Panda, stripped
# and LZMA-compressed (benchmarks/slim_wheel.py: 4 MiB of the carry's 64). One thread per worker: runs reproduce
# exactly on one machine; another CPU or thread count sums in another order and can flip a greedy token now and then
# (README, Development).
set -euo pipefail
cd "$(dirname "$0")/.."
setup() {  # the EGL loader (MuJoCo renders through the NVIDIA EGL driver) and the wheels, once per machine and wheel set
  local wheels
  wheels=$(cat .whl/*.whl .gl/*.deb | md5sum | cut -d' ' -f1)  # a warm machine may hold an older set
  if [ "$(cat /tmp/site/.installed 2>/dev/null)" != "$wheels" ]; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
    rm -rf /tmp/site
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    echo "$wheels" >/tmp/site/.installed
  fi
  export PYTHONPATH=/tmp/site:$PWD OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
  export __EGL_VENDOR_LIBRARY_FILENAMES=${__EGL_VENDOR_LIBRARY_FILENAMES:-/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json}
}

case "${1:-}" in
prepare)
  mkdir -p .whl .gl
  grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >>.git/info/exclude
  grep -qx "/.gl/" .git/info/exclude 2>/dev/null || echo "/.gl/" >>.git/info/exclude
  plat=()
  for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    plat+=(--platform "$p")
  done
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" \
    -d .whl mujoco==4.0.0 mujoco-core==4.0.0 glfw==2.11.0 pyopengl gymnasium==1.4.0 farama-notifications \
    grpcio==1.85.3 grpcio-health-checking grpcio-reflection protobuf==7.36.2
  py312=${PY312:-python3.12}  # ~8 minutes on 2 cores
  if ! ls .whl/pybullet-3.2.7-cp312-*.whl >/dev/null 2>&1; then
    "$py312" -m pip install -q "numpy>=2" setuptools wheel
    "$py312" -m pip wheel -q --no-deps --no-build-isolation -w /tmp/pybullet-wheel pybullet==3.2.7
    python3 benchmarks/slim_wheel.py /tmp/pybullet-wheel/pybullet-3.2.7-cp312-*.whl .whl \
      --keep 'pybullet_data/__init__.py' --keep 'pybullet_data/franka_panda/*' --keep 'pybullet_utils/*' --drop 'eglRenderer*'
  fi
  o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
  mkdir -p /tmp/amd64/partial
  apt-get "${o[@]}" update >/dev/null
  (cd .gl && apt-get "${o[@]}" download libegl1 libglvnd0 libopengl0 libgl1 libglx0)
  du -sh .whl .gl
  ;;
with)
  shift
  setup
  exec "$@"
  ;;
run)
  out=${2:?usage: eval_on_device.sh run OUT [EVAL_ARGS...]}
  shift 2
  mkdir -p "$out"
  setup
  rm -rf /tmp/eval  # a second run in one call must not resume the first one's records (eval resumes from --out)
  if [ -n "${RESUME:-}" ]; then  # RESUME=FILE: the episodes.jsonl of a cut-off run with the same arguments
    mkdir -p /tmp/eval && cp "$RESUME" /tmp/eval/episodes.jsonl
  fi
  workers=$(($(getconf _NPROCESSORS_ONLN) - 1))
  status=0
  # EVAL_TIMEOUT=SECONDS ends the eval there and still copies back what it recorded (0: no limit)
  timeout "${EVAL_TIMEOUT:-0}" python3 -m emu35_robot eval --planner mini --engines mujoco --image-size 128 \
    --no-video --no-progress --workers "$workers" "$@" --out /tmp/eval >"$out/eval.log" 2>&1 || status=$?
  cp /tmp/eval/episodes.jsonl "$out/episodes.jsonl" 2>/dev/null || true
  cp /tmp/eval/report.md "$out/report.md" 2>/dev/null || true
  grep "^| " "$out/eval.log" || tail -20 "$out/eval.log"
  exit $status
  ;;
*)
  echo "usage: $0 prepare | run OUT [EVAL_ARGS...] | with CMD [ARGS...]" >&2
  exit 2
  ;;
esac
