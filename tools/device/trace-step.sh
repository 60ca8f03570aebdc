#!/bin/sh
# Timeline of one sequence's decoder step without Nsight Systems: voxq-bench runs under the
# CUPTI kernel tracer (libvoxq_trace.so, built from cupti-trace.c by stage.sh), then the kernels
# of the last LAST step-graph launches (default 32) are lined up by their position in the step:
# per position the kernel, its median duration, its median gap from the end of the kernel before
# (negative: it overlapped, programmatic dependent launch) and its median end increment (how much
# later it ends than the kernel before: what it adds to the step when every kernel launches
# early), then per kernel name the sums a step, then the step's span, busy time and gaps. Graph kernel nodes share the correlation id
# of their graph launch; that is how steps are told apart.
# Usage on the device: [START=N] sh tools/device/trace-step.sh [bf16|int8|int4] [seqs] [env ...]
# (START: untimed steps first, voxq-bench --start)
set -u
cd "$(dirname "$0")/../.."
. tools/device/gpu-env.sh
[ -f "$G/libvoxq_trace.so" ] || { echo "trace-step: $G/libvoxq_trace.so not staged"; exit 0; }
fmt=${1:-int8}; seqs=${2:-1}
if [ $# -ge 2 ]; then shift 2; else shift $#; fi
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
    /usr/local/cuda-13.0/targets/x86_64-linux/lib; do
    [ -d "$d" ] && LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$d"
done
export LD_LIBRARY_PATH
csv="$OUT/trace_${fmt}_$seqs.csv"
env "$@" VOXQ_TRACE_OUT="$csv" LD_PRELOAD="$PWD/$G/libvoxq_trace.so" timeout 300 $G/voxq-bench steps \
    --random-full --fmt "$fmt" --seqs "$seqs" --steps 64 --start "${START:-0}" --text-len 128 \
    --device cuda \
    > "$OUT/trace_${fmt}_$seqs.json" 2> "$OUT/trace_${fmt}_$seqs.err"
echo "trace $fmt seqs=$seqs $* rc=$? $(tail -1 "$OUT/trace_${fmt}_$seqs.err")" \
    "$(grep -o '"ms_per_step": [0-9.]*' "$OUT/trace_${fmt}_$seqs.json")"
python3 - "$csv" "${LAST:-32}" "${FULL:-1}" <<'PY'
import collections, re, statistics, subprocess, sys
path, last, full = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows = []
for line in open(path):
    f = line.rstrip('\n').split(',', 7)
    if len(f) == 8:
        rows.append((int(f[0]), int(f[1]), int(f[2]), int(f[3]), f[7]))
names = sorted({r[4] for r in rows})
try:
    dem = subprocess.run(['c++filt'], input='\n'.join(names), capture_output=True, text=True).stdout.split('\n')
except OSError:
    dem = names
short = {}
for raw, d in zip(names, dem):
    d = re.sub(r'\(.*$', '', d or raw)
    d = re.sub(r'^void ', '', d)
    d = re.sub(r'\(eng_\w+\)', '', d)
    short[raw] = d[:60]
by = collections.defaultdict(list)
for r in rows:
    by[r[2]].append(r)
groups = [sorted(g) for g in by.values() if len(g) > 20]
if not groups:
    sys.exit('trace-step: no graph launches found')
size = collections.Counter(len(g) for g in groups).most_common(1)[0][0]
steps = sorted((g for g in groups if len(g) == size), key=lambda g: g[0][0])[-last:]
print(f"{len(steps)} steps of {size} kernels")
span = [(g[-1][1] - g[0][0]) / 1e3 for g in steps]
busy = [sum(k[1] - k[0] for k in g) / 1e3 for g in steps]
gaps = [sum(max(0, g[i][0] - g[i - 1][1]) for i in range(1, len(g))) / 1e3 for g in steps]
lead = [(steps[i][0][0] - steps[i - 1][-1][1]) / 1e3 for i in range(1, len(steps))]
med = statistics.median
print(f"step span {med(span):.1f} us, kernel time {med(busy):.1f} us, positive gaps {med(gaps):.1f} us,"
      f" between steps {med(lead) if lead else float('nan'):.1f} us")
pos = []
for i in range(size):
    d = med((g[i][1] - g[i][0]) / 1e3 for g in steps)
    gp = med((g[i][0] - g[i - 1][1]) / 1e3 for g in steps) if i else float('nan')
    inc = med((g[i][1] - g[i - 1][1]) / 1e3 for g in steps) if i else d
    pos.append((short[steps[-1][i][4]], d, gp, inc))
agg = collections.defaultdict(lambda: [0, 0.0, 0.0, 0.0])
for name, d, gp, inc in pos:
    a = agg[name]; a[0] += 1; a[1] += d; a[2] += gp if gp == gp else 0; a[3] += inc
print(f"{'kernel':60} {'n/step':>6} {'us/step':>8} {'gap us/step':>11} {'median us':>9}"
      f" {'end incr. us/step':>17}")
for name, (n, d, gp, inc) in sorted(agg.items(), key=lambda kv: -kv[1][3]):
    print(f"{name:60} {n:6d} {d:8.1f} {gp:11.1f} {d / n:9.2f} {inc:17.1f}")
if full:
    print("position: kernel, median duration us, median gap us, median end increment us")
    for i, (name, d, gp, inc) in enumerate(pos):
        if full > 1 or i < 16 or i >= size - 12:
            print(f"{i:4d} {name:60} {d:7.2f} {gp:7.2f} {inc:7.2f}")
PY
