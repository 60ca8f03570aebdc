#!/bin/sh
# startup.sh - GCE startup script of a voxq worker VM made from the prepared image
# (deploy/prepare-snapshot.sh). Runs as root at every boot.
#
# Assumes: the image has voxq, /etc/systemd/system/voxq-worker.service and the store at /models
# (on the boot disk, or on a disk created from a snapshot and attached as `models`); instance
# metadata `voxq-redis-url` (required) and optionally `voxq-env` (extra KEY=VALUE lines).
set -eu
MD=http://metadata.google.internal/computeMetadata/v1/instance/attributes
md() { curl -fsS -H 'Metadata-Flavor: Google' "$MD/$1" 2>/dev/null || true; }

# A store disk attached from a snapshot: mount it at /models (the unit waits for the mount).
if [ -e /dev/disk/by-id/google-models ] && ! mountpoint -q /models; then
    mkdir -p /models
    mount -o discard,defaults /dev/disk/by-id/google-models /models
fi

REDIS=$(md voxq-redis-url)
if [ -z "$REDIS" ]; then
    echo "voxq startup: instance metadata voxq-redis-url is not set; not starting" >&2
    exit 1
fi
mkdir -p /etc/voxq
{
    echo "VOXQ_REDIS_URL=$REDIS"
    echo "VOXQ_STORE=/models"
    echo "VOXQ_PULL=1" # a no-op when the image's store has the model
    echo "VOXQ_METRICS_ADDR=0.0.0.0:9464"
    echo "VOXQ_WORKER_ID=$(hostname)"
    md voxq-env
} >/etc/voxq/voxq.env.new
mv /etc/voxq/voxq.env.new /etc/voxq/voxq.env
chmod 0640 /etc/voxq/voxq.env

# Start reading the weights now, while the GPU driver and the worker come up.
(find /models/models -name '*.safetensors' -exec cat {} + >/dev/null 2>&1 &)
systemctl enable --now voxq-worker
