#!/bin/sh
# Runs on the device machine: CUDA op tests, GEMV/step benchmark and the peer baselines, in one
# call, logs under $OUT. Usage (device run): sh tools/device/run-cuda-pass.sh [what...]
#   what: tests bench peers (default: all three)
set -u
cd "$(dirname "$0")/../.."
export LD_LIBRARY_PATH="$PWD/.devbuild/lib:${LD_LIBRARY_PATH:-}"
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
b=.devbuild/cuda
what=${*:-tests bench peers}
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
for w in $what; do
    case $w in
    tests) $b/tests/cuda/test_cuda_ops 2>&1 | tee "$OUT/test_cuda_ops.log" | tail -40 ;;
    bench) $b/tests/cuda/bench_cuda_gemv --reps 30 > "$OUT/bench_gemv.json" 2>"$OUT/bench_gemv.err";
           tail -20 "$OUT/bench_gemv.json"; cat "$OUT/bench_gemv.err" ;;
    peers) python3 .devbuild/peer_baselines.py --skip-generate | tee "$OUT/peers.json" ;;
    esac
done
