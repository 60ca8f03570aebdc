#!/bin/sh
# Device pass: CUDA op tests, the GEMV benchmark, Dia full size on CUDA (steps/s for
# bf16/int8/int4 at 1/4/16/64 sequences), the peer baselines, and the full-size check against
# transformers (engine on CPU with 16 threads, and on CUDA). Binaries from .devbuild/gpu
# (tools/device/build-cuda.sh, then tools/device/stage.sh copies the binaries there).
# Usage on the device: sh tools/device/dia-pass.sh [ops] [gemv] [steps] [ab] [mlp] [profile] [tiny] [dac] [peers] [full] [quant]
# ab: the steps of AB_FMTS (default int8) at AB_SEQS (default 1,64) with the defaults and again
#     with the environment in AB (say AB="VOXQ_CUDA_WIDE_WG=0"), same binary, one line each.
# mlp: the one-launch MLP block (k_mlp) at one sequence: its phase trace (test_cuda_ops, 2 rows),
#     then steps/s per format against the two products (VOXQ_CUDA_MLP=0).
set -u
cd "$(dirname "$0")/../.."
. tools/device/gpu-env.sh
what=${*:-ops gemv steps peers full}
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv,noheader
for w in $what; do
    case $w in
    ops) for t in test_cuda_ops test_cuda_sample; do
           $G/$t > "$OUT/$t.log" 2>&1; echo "$t rc=$? $(tail -1 $OUT/$t.log)";
           grep -E -B3 "FAIL|mismatch" "$OUT/$t.log" | head -30
         done
         # the wide kernel's other variants (bf16 weights, 16 warps), off by default
         VOXQ_CUDA_WIDE_BF16=1 VOXQ_CUDA_WIDE_WN=4 $G/test_cuda_ops > "$OUT/test_cuda_ops_wide.log" 2>&1
         echo "test_cuda_ops (wide bf16, WN=4) rc=$? $(tail -1 $OUT/test_cuda_ops_wide.log)"
         # the two products instead of the one-launch MLP block (VOXQ_CUDA_MLP=0)
         VOXQ_CUDA_MLP=0 $G/test_cuda_ops mlp_block_one_launch > "$OUT/test_cuda_mlp0.log" 2>&1
         echo "test_cuda_ops mlp_block_one_launch (VOXQ_CUDA_MLP=0) rc=$? $(tail -1 $OUT/test_cuda_mlp0.log)" ;;
    gemv) $G/bench_cuda_gemv --reps 20 > "$OUT/gemv.json" 2>&1;
          python3 -c "import json;d=json.load(open('$OUT/gemv.json'));[print('gemv-step',r) for r in d['decoder_weights_step']]" ;;
    steps) for f in bf16 int8 int4; do
             $G/voxq-bench steps --random-full --fmt $f --seqs 1,4,16,64 --steps 64 --text-len 128 \
               --device cuda > "$OUT/steps_$f.json" 2>"$OUT/steps_$f.err"; echo "steps $f rc=$?";
             cat "$OUT/steps_$f.json"; tail -3 "$OUT/steps_$f.err"
           done ;;
    ab) for f in ${AB_FMTS:-int8}; do
          for v in "" "${AB:-}"; do
            # shellcheck disable=SC2086
            env $v $G/voxq-bench steps --random-full --fmt $f --seqs "${AB_SEQS:-1,64}" --steps 64 \
              --text-len 128 --device cuda 2>/dev/null | python3 -c "
import json, sys
d = json.load(sys.stdin)
print('ab $f [${v:-defaults}]', [(r['seqs'], round(r['ms_per_step'], 3), round(r['realtime_x_total'], 1))
                                 for r in d['results']])"
          done
        done ;;
    mlp) VOXQ_CUDA_MLP_TRACE=1 $G/test_cuda_ops mlp_block_one_launch > "$OUT/mlp_trace.log" 2>&1
         echo "mlp trace: $(tail -1 "$OUT/mlp_trace.log")"
         grep "trace n=2" "$OUT/mlp_trace.log" | head -8
         for f in bf16 int4 int8; do
           for v in VOXQ_CUDA_MLP=0 VOXQ_CUDA_MLP=2; do
             env $v $G/voxq-bench steps --random-full --fmt $f --seqs 1 --steps 64 --text-len 128 \
               --device cuda 2>/dev/null > "$OUT/mlp_ab.json"
             echo "mlp $f [$v] $(grep -o '"ms_per_step": [0-9.]*, "steps_per_s": [0-9.]*' "$OUT/mlp_ab.json")"
           done
         done ;;
    profile) for f in bf16 int8; do
             VOXQ_CUDA_PROFILE=1 $G/voxq-bench steps --random-full --fmt $f --seqs ${PROFILE_SEQS:-1,16} --steps 32 \
               --text-len 128 --device cuda > "$OUT/profile_$f.json" 2>"$OUT/profile_$f.err";
             echo "profile $f rc=$?"; cat "$OUT/profile_$f.json"
           done ;;
    tiny) python3 tests/reference/fullsize_check.py --tiny --steps 8 --out /tmp/tiny \
            --ref /tmp/tiny_ref.st > "$OUT/tiny_ref.log" 2>&1 || tail -3 "$OUT/tiny_ref.log"
          for kv in bf16 f32; do
            $G/voxq-bench check --model /tmp/tiny --ref /tmp/tiny_ref.st --device cuda --kv $kv; echo "rc=$?"
          done ;;
    quant) [ -f /tmp/dia_full_ref.st ] || { echo "quant needs 'full' first"; continue; }
           for f in int8 int4; do
             mkdir -p /tmp/dia_$f
             $G/voxq-bench quantize --model /tmp/dia_full --out /tmp/dia_$f --fmt $f --threads 16
             cat /tmp/dia_$f/model.safetensors > /dev/null   # page cache, as on a warm VM
             echo "== check $f cuda"; $G/voxq-bench check --model /tmp/dia_$f --ref /tmp/dia_full_ref.st --device cuda
             echo "== steps $f checkpoint cuda"; $G/voxq-bench steps --model /tmp/dia_$f --seqs 1,64 --steps 48 \
               --text-len 121 --device cuda
           done ;;
    dac) PYTHONUNBUFFERED=1 python3 tools/device/dac_ref.py --out /tmp/dac --ref /tmp/dac_ref.st \
           --frames 1000 > "$OUT/dac_ref.log" 2>&1; tail -1 "$OUT/dac_ref.log"
         for d in cuda cpu; do $G/voxq-bench dac --model /tmp/dac --ref /tmp/dac_ref.st --device $d --threads 16; done
         VOXQ_CUDA_CONV_DIRECT=1 $G/voxq-bench dac --model /tmp/dac --ref /tmp/dac_ref.st --device cuda ;;
    peers) python3 $G/peer_baselines.py --steps 128 > "$OUT/peers.json" 2>"$OUT/peers.err";
           cat "$OUT/peers.json"; tail -2 "$OUT/peers.err" ;;
    full) PYTHONUNBUFFERED=1 timeout 300 python3 tests/reference/fullsize_check.py --threads 16 \
            --out /tmp/dia_full --ref /tmp/dia_full_ref.st > "$OUT/full_ref.log" 2>&1;
          tail -3 "$OUT/full_ref.log"
          if [ -f /tmp/dia_full_ref.st ]; then
            echo "== full check cpu"; $G/voxq-bench check --model /tmp/dia_full --ref /tmp/dia_full_ref.st --device cpu --threads 16; echo "rc=$?"
            echo "== full check cuda"; $G/voxq-bench check --model /tmp/dia_full --ref /tmp/dia_full_ref.st --device cuda; echo "rc=$?"
            echo "== full steps cpu"; $G/voxq-bench steps --model /tmp/dia_full --seqs 1 --steps 8 --text-len 64 --device cpu --threads 16
          fi ;;
    esac
done
