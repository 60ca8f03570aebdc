#!/bin/sh
# Where inside a kernel the time goes: Nsight Compute's warp-stall samples per SASS instruction
# (SourceCounters) for COUNT (default 6) kernels matching KERNEL (default regex:k_wide) from the
# FROM-th step graph launch (default 8), grouped into regions that end at a barrier, wgmma wait,
# branch or async-copy fence, each with its share of the kernel's samples and its main stall
# reasons. Also keeps the per-instruction CSV (gzip) and the SpeedOfLight details in $OUT.
# Usage on the device: sh tools/device/ncu-source.sh [bf16|int8|int4] [seqs]
set -u
cd "$(dirname "$0")/../.."
. tools/device/gpu-env.sh
fmt=${1:-int8}; seqs=${2:-64}
rep=/tmp/ncu_source_${fmt}_$seqs
VOXQ_CUDA_PROFILE_FROM_STEP=${FROM:-8} timeout 300 ncu --profile-from-start off \
    --clock-control none -k "${KERNEL:-regex:k_wide}" --launch-count "${COUNT:-6}" \
    --section SourceCounters --section SpeedOfLight --import-source no -f -o "$rep" \
    $G/voxq-bench steps --random-full --fmt "$fmt" --seqs "$seqs" --steps 12 --text-len 128 \
    --device cuda > "$OUT/ncu_source.log" 2>&1 || { tail -3 "$OUT/ncu_source.log"; exit 1; }
ncu --import "$rep.ncu-rep" --print-details all > "$OUT/ncu_source_details.txt" 2>&1
ncu --import "$rep.ncu-rep" --page source --csv --print-source sass > /tmp/ncu_source.csv 2>&1
gzip -c /tmp/ncu_source.csv > "$OUT/ncu_source.csv.gz"
python3 - /tmp/ncu_source.csv <<'PY'
import csv, re, sys
kernels, hdr = [], None
for row in csv.reader(open(sys.argv[1])):
    if row and row[0] == 'Kernel Name':
        kernels.append((row[1], [])); continue
    if row and row[0] == 'Address':
        hdr = row; continue
    if kernels and hdr and len(row) == len(hdr):
        kernels[-1][1].append(dict(zip(hdr, row)))
SAMPLES = 'Warp Stall Sampling (All Samples)'
fence = re.compile(r'BAR|DEPBAR|BRA|EXIT|UCGABAR|ERRBAR|LDGDEPBAR|HGMMA.*gsb0')
seen = set()
for name, rows in kernels:
    if not rows or (name, len(rows)) in seen:   # the source page repeats some kernels
        continue
    seen.add((name, len(rows)))
    reasons = [h for h in rows[0] if h.startswith('stall_') and 'Not Issued' not in h]
    total = sum(int(r[SAMPLES] or 0) for r in rows) or 1
    print(f'== {name[:90]}: {total} samples, {len(rows)} instructions')
    start = 0
    for i, r in enumerate(rows + [None]):
        if r is not None and not fence.search(r['Source']) and i < len(rows) - 1:
            continue
        seg = rows[start:i + 1]
        start = i + 1
        s = sum(int(x[SAMPLES] or 0) for x in seg)
        if 100 * s < 2 * total:
            continue
        why = sorted(((sum(int(x[k] or 0) for x in seg), k[6:]) for k in reasons), reverse=True)
        last = seg[-1]['Source'].strip()[:40]
        print(f'  [{start - len(seg):4d}-{start - 1:4d}] {100 * s / total:5.1f}%  ends {last:40s} '
              + ' '.join(f'{k}={v}' for v, k in why[:3] if v))
PY
