#!/bin/sh
# Where each hop of a one-sequence decoder step spends its time, block by block: voxq-bench runs
# under the CUPTI kernel tracer (libvoxq_trace.so, as trace-step.sh) with VOXQ_CUDA_BLOCK_TRACE
# on, so every block of the small products (k_gemv, k_mma) also records its SM and %globaltimer
# at start, after griddepcontrol.wait and at its end. The records are matched to the kernels of
# the last three steps (per weight, in launch order) and, per kernel position in a layer, the
# medians over the layers are printed in µs from the end of the kernel in front: launch, first / last block
# start, first / median / last wait return, median / last block end, kernel end; then the
# median and largest time a block runs after its wait. The trace itself slows the step (one
# atomic a block): compare positions inside one run, not against untraced steps.
# Usage on the device: sh tools/device/block-trace.sh [bf16|int8|int4] [env ...]
set -u
cd "$(dirname "$0")/../.."
. tools/device/gpu-env.sh
[ -f "$G/libvoxq_trace.so" ] || { echo "block-trace: $G/libvoxq_trace.so not staged"; exit 0; }
fmt=${1:-int8}
[ $# -ge 1 ] && shift
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    [ -d "$d" ] && LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$d"
done
export LD_LIBRARY_PATH
kern="$OUT/blocktrace_kernels_$fmt.csv" blk="$OUT/blocktrace_blocks_$fmt.csv"
env "$@" VOXQ_CUDA_BLOCK_TRACE=60000 VOXQ_CUDA_BLOCK_TRACE_OUT="$blk" VOXQ_TRACE_OUT="$kern" \
    LD_PRELOAD="$PWD/$G/libvoxq_trace.so" timeout 300 $G/voxq-bench steps --random-full \
    --fmt "$fmt" --seqs 1 --steps 64 --start "${START:-0}" --text-len 128 --device cuda \
    > "$OUT/blocktrace_$fmt.json" 2> "$OUT/blocktrace_$fmt.err"
echo "block-trace $fmt $* rc=$? $(grep -o '"ms_per_step": [0-9.]*' "$OUT/blocktrace_$fmt.json")"
python3 - "$kern" "$blk" <<'PY'
import collections, csv, statistics as st, sys
kern_path, blk_path = sys.argv[1], sys.argv[2]
kernels = []  # the CUPTI tracer's rows: start, end, correlation id, ..., grid, ..., name
for r in csv.reader(open(kern_path)):
    if r and r[0].isdigit():
        kernels.append(dict(s=int(r[0]), e=int(r[1]), corr=int(r[2]), grid=int(r[4]) * int(r[5]),
                            name=r[7]))
blocks = [dict(tag=r['tag'], grid=int(r['grid']), t0=int(r['t_start']), t1=int(r['t_wait']),
               t2=int(r['t_end'])) for r in csv.DictReader(open(blk_path))]
if not blocks:
    sys.exit('block-trace: no block records')
# One step graph launch = one correlation id; keep the complete ones.
steps = collections.defaultdict(list)
for k in kernels:
    steps[k['corr']].append(k)
size = max(len(v) for v in steps.values())
full = sorted((v for v in steps.values() if len(v) == size), key=lambda v: v[0]['s'])
# %globaltimer and CUPTI's clock differ by an offset: line up the last product's end, then match.
traced = ('k_gemv', 'k_mma')
off = max(k['e'] for k in kernels if any(t in k['name'] for t in traced)) - max(b['t2'] for b in blocks)
for b in blocks:
    for f in ('t0', 't1', 't2'):
        b[f] += off
# A launch's records: one weight (tag), starts within 100 µs of each other, one per block.
launches = []
by_tag = collections.defaultdict(list)
for b in blocks:
    by_tag[b['tag']].append(b)
for rs in by_tag.values():
    rs.sort(key=lambda b: b['t0'])
    cur = [rs[0]]
    for b in rs[1:]:
        if b['t0'] - cur[-1]['t0'] > 100000:
            launches.append(cur)
            cur = []
        cur.append(b)
    launches.append(cur)
launches = sorted((l for l in launches if len(l) == l[0]['grid']), key=lambda l: l[0]['t0'])
lo = min(b['t0'] for b in blocks)
covered = [v for v in full if v[0]['s'] >= lo]
def short(name):
    for pat, tag in (('k_gemv', 'gemv'), ('k_mma', 'mma'), ('k_mlp', 'mlp'),
                     ('k_attention_decode', 'attention'), ('k_sample', 'sample'),
                     ('k_embed', 'embed')):
        if pat in name:
            return tag
    return name[:16]
res = collections.defaultdict(list)
for v in covered[-3:]:
    ks = sorted(v, key=lambda k: k['s'])
    gi = [i for i, k in enumerate(ks) if any(t in k['name'] for t in traced)]
    mine = [l for l in launches if ks[0]['s'] - 20000 <= l[0]['t0'] <= ks[-1]['e']]
    if len(mine) != len(gi):
        print('block-trace: a step with %d product launches and %d traced ones, skipped'
              % (len(gi), len(mine)))
        continue
    for i, recs in zip(gi, mine):
        k, prev = ks[i], ks[i - 1]
        pe = prev['e']
        t0 = sorted(b['t0'] - pe for b in recs)
        t1 = sorted(b['t1'] - pe for b in recs)
        t2 = sorted(b['t2'] - pe for b in recs)
        run = sorted(b['t2'] - b['t1'] for b in recs)
        where = 'logits' if i == len(ks) - 2 else 'layer pos %d' % ((i - 1) % 7)
        res[(where, short(k['name']), k['grid'], short(prev['name']))].append(
            (k['s'] - pe, t0[0], t0[-1], t1[0], st.median(t1), t1[-1], st.median(t2), t2[-1],
             k['e'] - pe, st.median(run), run[-1]))
print('µs from the end of the kernel in front (negative: before it ended), medians over layers')
print('%-12s %-4s %5s %-9s %3s' % ('hop', 'kern', 'grid', 'after', 'n') +
      ' launch start0 startN  wait0 waitMd  waitN  endMd   endN  k_end |  runMd  runMx')
for key in sorted(res):
    v = res[key]
    med = [st.median(x[j] for x in v) / 1000 for j in range(11)]
    print('%-12s %-4s %5d %-9s %3d' % (key + (len(v),)) +
          ''.join(' %6.2f' % m for m in med[:9]) + ' | ' + ' '.join('%6.2f' % m for m in med[9:]))
PY
