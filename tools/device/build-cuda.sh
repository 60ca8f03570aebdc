#!/bin/sh
# Builds the engine-only CUDA tree for the device machine (sm_90a) into .devbuild/cuda, with
# libcjson.so.1 beside the binaries (the device machine has no Debian packages), and copies the
# peer baseline script so it travels with the tree. Run here, then pass .devbuild in `carry`.
set -eu
cd "$(dirname "$0")/../.."
out=.devbuild/cuda
cmake -S . -B "$out" -DVOXQ_CUDA=ON -DVOXQ_ENGINE_ONLY=ON -DCMAKE_BUILD_TYPE=Release \
    -DVOXQ_TEST_DIRS="${VOXQ_TEST_DIRS:-common;cuda;ops;safetensors;reference}" >/dev/null
cmake --build "$out" -j "$(nproc)"
mkdir -p .devbuild/lib
cp -L /usr/lib/x86_64-linux-gnu/libcjson.so.1 .devbuild/lib/
[ -f ../shared/tools/peer_baselines.py ] && cp ../shared/tools/peer_baselines.py .devbuild/
echo "built $out"
