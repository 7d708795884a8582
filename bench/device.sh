#!/usr/bin/env bash
# One call on the lent GPU machine: build nbdist against the machine's torch, run the GPU tests and
# the benchmarks, and leave every result as JSON under $OUT (the device tool brings $OUT back).
#   usage: bash bench/device.sh [phase ...]    phases: build tests launch monitor jobs ddp arc (default: all);
#   also tests-launch / tests-ddp (GPU launcher / DDP tests only), profile (bench/launch_profile.py), sweep (DDP
#   comm variants: SWEEP=variant,... SWEEP_SETTINGS=p2p,nop2p,nop2p_ce SWEEP_ACCUM SWEEP_STEPS)
# NVLink multicast stays off (NCCL_NVLS_ENABLE=0): using it can put the shared host's GPUs out of
# service. Each benchmark has its own time limit so that one slow phase cannot eat the whole call.
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
OUT=${OUT:-$root/bench/out}
mkdir -p "$OUT"
phases=${*:-build tests launch monitor jobs ddp arc}
py=python3   # the image's own venv (/opt/torch/.venv) with torch, pybind11, scikit-build-core
has() { [[ " $phases " == *" $1 "* ]]; }
step() { echo "=== $* ($(date +%T))"; }

step probe
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader
nvidia-smi topo -m 2>/dev/null | head -5
df -h /dev/shm | tail -1
python3 -c 'import torch; m = lambda: "/libcuda.so" in open("/proc/self/maps").read(); a = m(); print("torch", torch.__version__, "cuda", torch.version.cuda, "gpus", torch.cuda.device_count(), "driver mapped after import:", a, "after device_count:", m())'

if has build || ! "$py" -c 'import nbdist._core' 2>/dev/null; then
  step build
  # Installed into the image's environment (the machine is thrown away after the lease): nothing is
  # fetched, and the extension is built against that torch, without build isolation.
  "$py" -m pip install -q --no-index --no-build-isolation --no-deps . 2>&1 | tail -20
  "$py" -c 'import nbdist._core, nbdist._ddp' || { echo "build failed"; exit 1; }
fi

if has tests; then
  step gpu tests
  # Run from outside the tree so the installed package (with its extensions) is what gets imported.
  (cd /tmp && NBDIST_MONITOR_LOAD_S=30 timeout 300 "$py" -m pytest "$root/tests" -m gpu -q -rs -p no:cacheprovider \
    -o addopts="" --rootdir="$root" -c "$root/pyproject.toml" 2>&1 | tee "$OUT/gpu_tests.log" | tail -25)
fi
if has tests-ddp; then
  step gpu ddp tests
  (cd /tmp && timeout 300 "$py" -m pytest "$root/tests/ddp" -m gpu -q -rs -p no:cacheprovider \
    -o addopts="" --rootdir="$root" -c "$root/pyproject.toml" 2>&1 | tee "$OUT/gpu_ddp_tests.log" | tail -30)
fi
if has tests-launch; then
  step gpu launch tests
  (cd /tmp && timeout 200 "$py" -m pytest "$root/tests/launch" -m gpu -q -rs -p no:cacheprovider \
    -o addopts="" --rootdir="$root" -c "$root/pyproject.toml" 2>&1 | tee "$OUT/gpu_launch_tests.log" | tail -15)
fi
if has profile; then
  step launch profile
  timeout 100 "$py" bench/launch_profile.py --ranks 2 --repeats 10 --out "$OUT/launch_profile.json" | head -45
fi
if has sweep; then
  step ddp sweep
  NBDIST_BENCH_LOG_DIR="$OUT/ddp_sweep_logs" NBDIST_BENCH_TIMEOUT=${SWEEP_TIMEOUT:-200} timeout $((${SWEEP_TIMEOUT:-200} * 2 + 20)) "$py" bench/ddp_throughput.py --out "$OUT/ddp_sweep.json" --accum "${SWEEP_ACCUM:-1}" \
    --steps "${SWEEP_STEPS:-15}" --settings "${SWEEP_SETTINGS:-p2p,nop2p,nop2p_ce}" \
    --sweep "${SWEEP:-torch_ddp,nbdist_ddp}" 2>&1 | grep -v "^\[rank" | tail -40
fi
if has launch && [ -f bench/launch_latency.py ]; then
  step launch latency
  timeout 260 "$py" bench/launch_latency.py --ranks 2 --nccl --repeats "${LAUNCH_REPEATS:-5}" --slow-repeats 1 --out "$OUT/launch_latency_gpu.json"
fi
if has monitor && [ -f bench/monitor_overhead.py ]; then
  step monitor overhead
  "$py" bench/nvml_call_cost.py --out "$OUT/nvml_call_cost.json"
  timeout 150 "$py" bench/monitor_overhead.py --seconds 12 --hz 10 --energy-hz 1 --out "$OUT/monitor_overhead_gpu.json"
fi
if has jobs && [ -f bench/background_jobs.py ]; then
  step background jobs
  timeout 150 "$py" bench/background_jobs.py --seconds 3 --reps 2 --out "$OUT/background_jobs_gpu.json"
fi
if has ddp && [ -f bench/ddp_throughput.py ]; then
  step ddp throughput
  timeout 300 "$py" bench/ddp_throughput.py --out "$OUT/ddp_throughput_gpu.json"
fi
if has arc && [ -f bench/arc_decode.py ]; then
  step arc decode
  # CPU-only, but the GPU host's cores are quiet: the clean single-core figure comes from here.
  timeout 90 "$py" bench/arc_decode.py --repeat 15 --ref-repeat 3 --out "$OUT/arc_decode_device.json"
fi
step done
