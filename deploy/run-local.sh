#!/bin/sh
# Sets voxq up on this machine and runs a worker:
#   1. installs the Debian 12 packages (deploy/install-deps.sh),
#   2. builds into ./build (CUDA backend when nvcc is present, or VOXQ_CUDA=ON|OFF),
#   3. when VOXQ_REDIS_URL is unset, starts a local redis-server on 127.0.0.1:6379 (AOF on,
#      noeviction, data in ./.voxq-redis) unless one already answers there,
#   4. runs `voxq worker` with any arguments given (see ./build/voxq worker --help).
# On an empty store the worker downloads the model first (VOXQ_PULL=1 here; set VOXQ_PULL=0 to
# skip and bring your own with `voxq store import`).
set -eu
cd "$(dirname "$0")/.."
./deploy/install-deps.sh
cuda=${VOXQ_CUDA:-}
if [ -z "$cuda" ]; then
    if command -v nvcc >/dev/null 2>&1; then cuda=ON; else cuda=OFF; fi
fi
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DVOXQ_CUDA="$cuda"
cmake --build build -j "$(nproc 2>/dev/null || echo 2)"
if [ -z "${VOXQ_REDIS_URL:-}" ]; then
    if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
        echo "voxq: using the redis-server already on 127.0.0.1:6379"
    else
        mkdir -p .voxq-redis
        redis-server --bind 127.0.0.1 --port 6379 --dir "$PWD/.voxq-redis" --appendonly yes \
            --maxmemory-policy noeviction --daemonize yes --logfile "$PWD/.voxq-redis/redis.log"
        i=0
        until redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; do
            i=$((i + 1))
            [ "$i" -lt 50 ] || { echo "voxq: redis-server did not start" >&2; exit 1; }
            sleep 0.1
        done
        echo "voxq: started redis-server on 127.0.0.1:6379 (stop: redis-cli shutdown)"
    fi
    VOXQ_REDIS_URL=redis://127.0.0.1:6379
    export VOXQ_REDIS_URL
fi
: "${VOXQ_PULL:=1}"
export VOXQ_PULL
exec ./build/voxq worker "$@"
