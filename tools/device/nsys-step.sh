#!/bin/sh
# Timeline of decoder steps under Nsight Systems, where the device has nsys: from the FROM-th step
# graph launch (VOXQ_CUDA_PROFILE_FROM_STEP, default 8) to the end, every kernel node of the step
# graphs traced, then per kernel name its count, median duration and median gap from the end of
# the kernel before it (negative: it overlapped, programmatic dependent launch). What it is for:
# where one sequence's step spends the time between kernels, which ncu (kernels serialized)
# cannot show.
# Usage on the device: sh tools/device/nsys-step.sh [bf16|int8|int4] [seqs]
set -u
cd "$(dirname "$0")/../.."
. tools/device/gpu-env.sh
command -v nsys >/dev/null 2>&1 || { echo "nsys-step: no nsys on this machine"; exit 0; }
fmt=${1:-int8}; seqs=${2:-1}
VOXQ_CUDA_PROFILE_FROM_STEP=${FROM:-8} timeout 300 nsys profile --capture-range=cudaProfilerApi \
    --trace=cuda --cuda-graph-trace=node --force-overwrite=true -o "$OUT/step_$fmt" \
    $G/voxq-bench steps --random-full --fmt "$fmt" --seqs "$seqs" --steps 12 --text-len 128 \
    --device cuda > "$OUT/nsys_$fmt.log" 2>&1
echo "nsys profile rc=$?"
nsys stats --report cuda_gpu_trace --format csv --output "$OUT/trace_$fmt" \
    "$OUT/step_$fmt.nsys-rep" > "$OUT/nsys_stats_$fmt.log" 2>&1
echo "nsys stats rc=$?"
python3 - "$OUT/trace_${fmt}_cuda_gpu_trace.csv" <<'PY'
import collections, csv, statistics, sys
rows = list(csv.reader(open(sys.argv[1])))
hdr = rows[0]
col = lambda word: next(i for i, h in enumerate(hdr) if word in h)
s, d, n = col('Start'), col('Duration'), col('Name')
ks = sorted((int(r[s]), int(r[d]), r[n].split('(')[0][:50]) for r in rows[1:] if len(r) == len(hdr))
dur, gap = collections.defaultdict(list), collections.defaultdict(list)
for i, (st, du, name) in enumerate(ks):
    dur[name].append(du / 1e3)
    if i: gap[name].append((st - ks[i - 1][0] - ks[i - 1][1]) / 1e3)
print(f"{len(ks)} kernels over {(ks[-1][0] + ks[-1][1] - ks[0][0]) / 1e3:.1f} us")
print(f"{'kernel':50} {'count':>6} {'median us':>10} {'median gap us':>14}")
for name in sorted(dur, key=lambda k: -sum(dur[k])):
    g = statistics.median(gap[name]) if gap[name] else float('nan')
    print(f"{name:50} {len(dur[name]):6d} {statistics.median(dur[name]):10.2f} {g:14.2f}")
PY
