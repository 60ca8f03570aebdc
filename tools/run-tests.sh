#!/bin/sh
# Configures, builds and runs the whole test suite (every ctest label but cuda).
# Usage: tools/run-tests.sh [BUILD_DIR] [extra cmake -D options...]
#   VOXQ_SANITIZE=1 tools/run-tests.sh build-asan   builds with ASan + UBSan
set -eu
cd "$(dirname "$0")/.."
build=${1:-build}
[ $# -gt 0 ] && shift
san=""
if [ "${VOXQ_SANITIZE:-0}" = 1 ]; then
    san="-DVOXQ_ASAN=ON -DVOXQ_UBSAN=ON -DCMAKE_BUILD_TYPE=Debug"
fi
jobs=$(nproc 2>/dev/null || echo 2)
# shellcheck disable=SC2086
cmake -S . -B "$build" $san "$@"
cmake --build "$build" -j "$jobs"
ctest --test-dir "$build" --output-on-failure -LE cuda -j "$jobs"
