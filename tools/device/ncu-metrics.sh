#!/bin/sh
# Per-kernel hardware metrics of decoder steps under Nsight Compute: duration, DRAM throughput,
# occupancy, issue rate, the main stall reasons a kernel (per issued instruction) and its
# instruction count, for COUNT (default 10, about one layer) kernels from the FROM-th step graph
# launch (default 8). Caches are flushed between kernels (weights are never L2-resident in a real
# step), clocks unlocked. A kernel-name filter narrows it: KERNEL=regex:k_wide_wg.
# Usage on the device: sh tools/device/ncu-metrics.sh [bf16|int8|int4] [seqs]
set -u
cd "$(dirname "$0")/../.."
. tools/device/gpu-env.sh
fmt=${1:-int8}; seqs=${2:-1}
st=smsp__average_warps_issue_stalled
M=gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,dram__bytes_read.sum
M=$M,lts__t_sector_hit_rate.pct,sm__warps_active.avg.pct_of_peak_sustained_active
M=$M,launch__registers_per_thread,smsp__issue_active.avg.pct_of_peak_sustained_active
for s in long_scoreboard barrier wait short_scoreboard math_pipe_throttle membar; do
    M=$M,${st}_${s}_per_issue_active.ratio
done
M=$M,smsp__inst_executed.sum
filt=""; [ -n "${KERNEL:-}" ] && filt="-k ${KERNEL}"
# shellcheck disable=SC2086
VOXQ_CUDA_PROFILE_FROM_STEP=${FROM:-8} timeout 300 ncu --profile-from-start off \
    --clock-control none $filt --metrics "$M" --launch-count "${COUNT:-10}" --csv \
    $G/voxq-bench steps --random-full --fmt "$fmt" --seqs "$seqs" --steps 16 --text-len 128 \
    --device cuda > "$OUT/ncu_metrics_$fmt.csv" 2>"$OUT/ncu_metrics_$fmt.err"
python3 - "$OUT/ncu_metrics_$fmt.csv" <<'PY'
import csv, collections, sys
hdr = None; rows = collections.OrderedDict()
for r in csv.reader(open(sys.argv[1])):
    if 'Kernel Name' in r: hdr = r; continue
    if hdr and len(r) == len(hdr):
        d = dict(zip(hdr, r))
        k = (d['ID'], d['Kernel Name'].split('(')[0][:40], d.get('Grid Size', ''))
        rows.setdefault(k, {})[d['Metric Name']] = d['Metric Value']
def short(m):
    m = m.replace('smsp__average_warps_issue_stalled_', 'stall_')
    return m.replace('_per_issue_active.ratio', '').replace('.pct_of_peak_sustained', '%')
for k, v in rows.items():
    print(k[1], k[2], ' '.join(f"{short(m)}={v[m]}" for m in v))
PY
