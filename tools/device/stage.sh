#!/bin/sh
# Copies the engine-only CUDA binaries of a build tree (default .devbuild/cuda, made by
# build-cuda.sh), libcjson.so.1, the CUPTI kernel tracer (built here) and the peer baseline
# script into .devbuild/gpu, the folder the device scripts run from (pass .devbuild/gpu in the
# device call's `carry`).
# Usage: sh tools/device/stage.sh [BUILD_DIR]
set -eu
cd "$(dirname "$0")/../.."
b=${1:-.devbuild/cuda}
g=.devbuild/gpu
rm -rf "$g"
mkdir -p "$g"
for f in "$b/engine/voxq-bench" "$b/tests/cuda/test_cuda_ops" "$b/tests/cuda/test_cuda_sample" \
    "$b/tests/cuda/bench_cuda_gemv"; do
    gzip -c "$f" > "$g/$(basename "$f").gz"
done
cp -L /usr/lib/x86_64-linux-gnu/libcjson.so.1 "$g/"
# The CUPTI kernel tracer for trace-step.sh, where this machine has CUPTI.
cuda=${CUDA_HOME:-/usr/local/cuda}
if [ -f "$cuda/include/cupti.h" ]; then
    cc -O2 -Wall -Wextra -shared -fPIC -o "$g/libvoxq_trace.so" tools/device/cupti-trace.c \
        -I"$cuda/include" -L"$cuda/lib64" -lcupti
fi
[ -f ../shared/tools/peer_baselines.py ] && cp ../shared/tools/peer_baselines.py "$g/"
du -sh "$g"
