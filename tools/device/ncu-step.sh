#!/bin/sh
# Per-kernel device time of decoder steps under Nsight Compute: profiling starts at the FROM-th
# step graph launch (VOXQ_CUDA_PROFILE_FROM_STEP, so admissions and captures stay out) and takes
# COUNT kernels, cuBLAS's included. Launches are serialized, so the sum is an upper bound of the
# step; the split between kernels is what it is for.
# Usage on the device: sh tools/device/ncu-step.sh [bf16|int8|int4] [seqs] [warm]
#   warm: no cache flush and no clock locking between kernels (closer to the graph's times)
#   FROM (default 8), COUNT (default 400) from the environment
set -u
cd "$(dirname "$0")/../.."
. tools/device/gpu-env.sh
fmt=${1:-bf16}; seqs=${2:-1}
ctl=""; [ "${3:-}" = warm ] && ctl="--cache-control none --clock-control none"
# shellcheck disable=SC2086
VOXQ_CUDA_PROFILE_FROM_STEP=${FROM:-8} timeout 400 ncu --profile-from-start off $ctl \
    --metrics gpu__time_duration.sum --launch-count "${COUNT:-400}" --csv \
    $G/voxq-bench steps --random-full --fmt "$fmt" --seqs "$seqs" --steps 24 --text-len 128 \
    --device cuda > "$OUT/ncu_$fmt.csv" 2>"$OUT/ncu_$fmt.err"
python3 - "$OUT/ncu_$fmt.csv" <<'PY'
import csv, collections, sys
hdr = None; agg = collections.defaultdict(list); seq = []
for r in csv.reader(open(sys.argv[1])):
    if 'Kernel Name' in r: hdr = r; continue
    if hdr and len(r) == len(hdr):
        d = dict(zip(hdr, r))
        if d.get('Metric Name') == 'gpu__time_duration.sum':
            name = d['Kernel Name'].split('(')[0][:58]
            us = float(d['Metric Value'].replace(',', '')) / 1e3
            agg[(name, d.get('Grid Size', ''))].append(us)
            seq.append(name)
# whole steps only: from the first decoder embedding to the last one
starts = [i for i, n in enumerate(seq) if n.startswith('k_embed_sum')]
tot = sum(sum(v) for v in agg.values())
print(f"kernels {len(seq)}, embeddings {len(starts)}, sum {tot:.1f} us")
for k, v in sorted(agg.items(), key=lambda kv: -sum(kv[1])):
    print(f"{k[0]:58s} {k[1]:>12s} n={len(v):4d} mean={sum(v)/len(v):7.2f}us {100*sum(v)/tot:5.1f}%")
PY
