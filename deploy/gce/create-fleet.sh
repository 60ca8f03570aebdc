#!/bin/sh
# create-fleet.sh - a GCE managed instance group of voxq GPU workers, autoscaled on queue depth.
#
# Steps: an image from the disk prepared by deploy/prepare-snapshot.sh, an instance template
# (GPU, that image, startup.sh, the Redis URL in metadata), a regional MIG, and an autoscaler
# on two per-VM gauges that every worker exports on /metrics (scraped by the Ops Agent,
# ops-agent.yaml); the autoscaler follows whichever asks for more VMs:
#   - voxq_queue_depth{queue="normal"}: the length of voxq:jobs. Every worker reports the same
#     number, so as a per-VM gauge with target JOBS_PER_VM the group grows while more than
#     JOBS_PER_VM jobs wait, faster the longer the backlog, and stops growing once the backlog
#     is under the target;
#   - voxq_jobs_held: jobs in flight on that VM, which the list length misses (a busy fleet
#     with an empty list). Target 0.8 with VOXQ_CONCURRENCY=1: the group never shrinks below
#     the VMs that are working, and grows while all of them are busy.
# Scale-in is rate-limited (one VM per 10 minutes) and gives the chosen VM's worker SIGTERM
# through the shutdown of voxq-worker.service: the drain (VOXQ_DRAIN_S, 25 s) finishes or
# requeues its jobs within the unit's 60 s stop timeout.
#
# Assumes: gcloud authenticated for PROJECT with the Compute and Monitoring APIs enabled; the
# prepared VM's boot disk `voxq-prep` (holding /models) in ZONE; a Redis reachable from the VMs
# (e.g. Memorystore) at REDIS_URL; L4 GPUs in REGION (change ACCELERATOR/MACHINE for others);
# the Ops Agent with ops-agent.yaml in the image, its metrics written per VM instance (check the
# metric's monitored resource in Metrics Explorer: the autoscaler reads per-VM gauges from
# gce_instance time series). Without the Ops Agent, scale on CPU or a schedule instead.
set -eu
PROJECT=${PROJECT:?set PROJECT}
REGION=${REGION:-us-central1}
ZONE=${ZONE:-us-central1-a}
REDIS_URL=${REDIS_URL:?set REDIS_URL, e.g. redis://10.0.0.3:6379}
MACHINE=${MACHINE:-g2-standard-8}
ACCELERATOR=${ACCELERATOR:-type=nvidia-l4,count=1}
IMAGE=${IMAGE:-voxq-worker-$(date +%Y%m%d)}
JOBS_PER_VM=${JOBS_PER_VM:-4}
MAX_VMS=${MAX_VMS:-16}
HERE=$(cd "$(dirname "$0")" && pwd)
METRICS=prometheus.googleapis.com

gcloud config set project "$PROJECT"
gcloud compute images create "$IMAGE" --source-disk=voxq-prep --source-disk-zone="$ZONE" \
    --family=voxq-worker --force

gcloud compute instance-templates create "$IMAGE" \
    --machine-type="$MACHINE" --accelerator="$ACCELERATOR" \
    --maintenance-policy=TERMINATE --image-family=voxq-worker --boot-disk-size=200GB \
    --metadata-from-file=startup-script="$HERE/startup.sh" \
    --metadata=voxq-redis-url="$REDIS_URL"

gcloud compute instance-groups managed create voxq-workers --region="$REGION" \
    --template="$IMAGE" --size=1 --base-instance-name=voxq

# Beta: the Cloud Monitoring signals with a label filter (queue="normal").
HELD="metric=$METRICS/voxq_jobs_held/gauge,utilization-target=0.8,utilization-target-type=GAUGE"
gcloud beta compute instance-groups managed set-autoscaling voxq-workers --region="$REGION" \
    --min-num-replicas=1 --max-num-replicas="$MAX_VMS" --cool-down-period=300 \
    --scale-in-control=max-scaled-in-replicas=1,time-window=600 \
    --update-stackdriver-metric="$METRICS/voxq_queue_depth/gauge" \
    --stackdriver-metric-filter='metric.label.queue = "normal"' \
    --stackdriver-metric-utilization-target="$JOBS_PER_VM" \
    --stackdriver-metric-utilization-target-type=gauge \
    --custom-metric-utilization="$HELD"

echo "voxq-workers: 1..$MAX_VMS VMs of $MACHINE from image $IMAGE"
echo "new image after an upgrade: rerun prepare-snapshot.sh on voxq-prep, then this script"
echo "with a new IMAGE name and: gcloud compute instance-groups managed rolling-action"
echo "start-update voxq-workers --version=template=NEW --region=$REGION"
