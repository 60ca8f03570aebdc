#!/usr/bin/env python3
"""Full-size Dia-1.6B reference: random weights from a seed, checkpoint plus teacher-forced logits.

For the GPU machine (no network; torch + transformers 5.17 installed), to check the C/CUDA
engine at full size without the real hub weights:

    python3 tests/reference/fullsize_check.py --out /tmp/dia_full \
        --ref /tmp/dia_full_ref.safetensors

1. builds DiaForConditionalGeneration(DiaConfig()) (or the tiny config with --tiny), re-draws
   every weight from --seed (linears and embeddings N(0, 0.02) except the q/k projections,
   scaled so attention logits have std --qk-logit-std; norm weights U(0.8, 1.2)), with --bf16
   rounds them to bf16 first;
2. runs, on the CPU in fp32, the processor-less path: the byte-tokenized --prompt (conditional
   row) and the all-zero ids with the same mask (unconditional row) through the encoder, then
   --steps decoder positions teacher-forced with fixed frames (position 0 = the BOS frame,
   then random codes that respect the delay pattern: channel c is BOS at positions <= d_c;
   --random-frames puts codes on every channel instead);
3. writes the reference safetensors (layout below) and save_pretrained()s the checkpoint to
   --out (F32, or BF16 with --bf16; sharded at --shard-size like the hub repo).
   With --bf16 the BF16 checkpoint is then reloaded with from_pretrained(dtype=bfloat16) and
   run again, giving what transformers computes in bf16 (bf16_* tensors).

Reference file (F32 unless noted; row 0 = conditional, row 1 = unconditional):
    input_ids       I64 [1, S]          prompt bytes ([S1] -> 1, [S2] -> 2)
    attention_mask  I64 [1, S]          all ones (single prompt, no padding)
    decoder_frames  I64 [N, 9]          input frame of each step, fed as is (already delayed)
    encoder_out     [2, S, H]           encoder last_hidden_state (after the final norm)
    logits          [N, 2, 9, 1028]     [step][cond/uncond][channel][vocab]; step t consumes
                                        decoder_frames[0..t] (causal) and predicts position t+1
    bf16_encoder_out, bf16_logits       (--bf16 only) the same computed by transformers with
                                        the model in bf16 on the CPU, stored as F32
    f64_encoder_out, f64_logits         (--f64 only) the same with the model in float64 on the
                                        CPU, rounded to F32: the exact-arithmetic target
The logits are also checked against a step-by-step run (each prefix separately), so they are
what a KV-cached decoder must produce. Metadata records seed, sizes, versions and the prompt.
"""

import argparse
import math
import os
import sys
import time

import torch
from safetensors.torch import save_file

import transformers
from transformers import DiaConfig, DiaForConditionalGeneration, DiaTokenizer

DEFAULT_PROMPT = ("[S1] Dia is an open weights text to dialogue model. [S2] You get full control "
                  "over scripts and voices. [S1] Wow. Amazing. (laughs)")
BOS = 1026


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="checkpoint directory to write (save_pretrained)")
    ap.add_argument("--ref", required=True, help="reference safetensors file to write")
    ap.add_argument("--bf16", action="store_true",
                    help="round weights to bf16, save a BF16 checkpoint, add bf16_* references")
    ap.add_argument("--tiny", action="store_true", help="use the tiny test config (spec 9.1)")
    ap.add_argument("--seed", type=int, default=1234, help="weight seed (default 1234)")
    ap.add_argument("--steps", type=int, default=4, help="decoder steps N (default 4)")
    ap.add_argument("--prompt", default=DEFAULT_PROMPT, help="text prompt")
    ap.add_argument("--shard-size", default="5GB", help="save_pretrained max_shard_size")
    ap.add_argument("--random-frames", action="store_true",
                    help="random codes on every channel after the BOS frame (ignores delays)")
    ap.add_argument("--qk-logit-std", type=float, default=1.5,
                    help="target std of the attention logits (q/k weight scale); 0 = all 0.02")
    ap.add_argument("--f64", action="store_true",
                    help="also store f64_* references computed with the model in float64")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    return ap.parse_args()


def build_config(tiny):
    """Full DiaConfig() defaults, or the tiny config shared with make_fixtures.py."""
    if not tiny:
        return DiaConfig()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from make_fixtures import tiny_dia_config
    return tiny_dia_config()


def qk_std(name, config, logit_std, fan_in):
    """Std for a q/k projection weight so that scale-1.0 attention logits have std ~logit_std.

    With unit-RMS normed inputs, q_j and k_j have std sigma*sqrt(fan_in) and a head's q.k
    has std (sigma^2 * fan_in) * sqrt(head_dim).  Plain N(0, 0.02) gives ~4.6 for the encoder
    (near-argmax softmax), which makes the random model chaotic: bf16 and fp32 transformers
    then disagree by O(1) in the logits, so no bf16 comparison would be meaningful.
    """
    if "encoder." in name:
        head_dim = config.encoder_config.head_dim
    elif "cross_attention" in name:
        head_dim = config.decoder_config.cross_head_dim
    else:
        head_dim = config.decoder_config.head_dim
    return math.sqrt(logit_std / math.sqrt(head_dim) / fan_in)


def redraw(model, seed, bf16, logit_std):
    """Deterministically overwrite every parameter (name order) from a CPU generator.

    Norm weights U(0.8, 1.2) so a missing or misplaced norm shows; q/k projections scaled for
    attention logits of std logit_std (see qk_std; 0 disables); everything else N(0, 0.02)
    as the spec allows for the full-size check.  With bf16 the values are rounded to bf16 so
    the fp32 reference is computed from exactly the weights the BF16 checkpoint holds.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                v = 0.8 + 0.4 * torch.rand(p.shape, generator=gen)
            else:
                std = 0.02
                if logit_std > 0 and name.endswith(("q_proj.weight", "k_proj.weight")):
                    std = qk_std(name, model.config, logit_std, p.shape[1])
                v = torch.randn(p.shape, generator=gen).mul_(std)
            if bf16:
                v = v.to(torch.bfloat16).float()
            p.copy_(v)
            del v


def make_frames(n, delays, seed, random_frames):
    """Decoder input frames [n, C]: BOS frame, then random codes with channel c BOS at t <= d_c.

    With the default delays and n <= 9 that leaves channels 1..8 all BOS (what generation
    feeds); random_frames puts codes on every channel from position 1 on, which exercises the
    per-channel embedding offsets but is not a state the delayed generation loop produces.
    """
    gen = torch.Generator().manual_seed(seed + 1)
    frames = torch.randint(0, 1024, (n, len(delays)), generator=gen, dtype=torch.int64)
    for c, d in enumerate(delays):
        frames[: 1 if random_frames else d + 1, c] = BOS
    return frames


def forward(model, ids, mask, frames):
    """Encoder output [2,S,H] and logits [N,2,9,V] of cond + uncond rows, as fp32.

    Logits are upcast exactly like the generation loop does; a float64 model's results are
    rounded to fp32 (relative 6e-8, far below the fp32 model's own error).
    """
    n, c = frames.shape
    text = torch.cat([ids, torch.zeros_like(ids)], 0)
    tmask = torch.cat([mask, mask], 0)
    dec = frames.unsqueeze(0).expand(2, n, c).contiguous()
    with torch.no_grad():
        enc = model.model.encoder(input_ids=text, attention_mask=tmask).last_hidden_state
        out = model(input_ids=text, attention_mask=tmask, decoder_input_ids=dec)
    logits = out.logits.float().reshape(2, c, n, -1).permute(2, 0, 1, 3).contiguous()
    return enc.float().contiguous(), logits


def check_incremental(model, ids, mask, frames, logits):
    """Max |diff| between the one-pass logits and running each prefix frames[:t+1] alone."""
    worst = 0.0
    for t in range(frames.shape[0]):
        _, lt = forward(model, ids, mask, frames[: t + 1])
        worst = max(worst, (lt[t] - logits[t]).abs().max().item())
    return worst


def main():
    args = parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    t0 = time.time()

    config = build_config(args.tiny)
    model = DiaForConditionalGeneration(config).eval()
    redraw(model, args.seed, args.bf16, args.qk_logit_std)
    nparams = sum(p.numel() for p in model.parameters())
    print(f"model: {nparams} parameters, built in {time.time() - t0:.1f} s", flush=True)

    ids = torch.tensor([DiaTokenizer()(args.prompt, add_special_tokens=False)["input_ids"]],
                       dtype=torch.int64)
    mask = torch.ones_like(ids)
    frames = make_frames(args.steps, config.delay_pattern, args.seed, args.random_frames)

    t1 = time.time()
    enc, logits = forward(model, ids, mask, frames)
    inc = check_incremental(model, ids, mask, frames, logits)
    print(f"fp32 reference: S={ids.shape[1]} N={args.steps} in {time.time() - t1:.1f} s; "
          f"one-pass vs per-prefix max |diff| {inc:.3g}; logits std {logits.std().item():.3f}",
          flush=True)
    if inc > 1e-3:
        raise RuntimeError(f"one-pass and per-prefix logits disagree by {inc}")

    ref = {"input_ids": ids, "attention_mask": mask, "decoder_frames": frames,
           "encoder_out": enc, "logits": logits}

    if args.f64:
        # The exact-arithmetic target: at full size the fp32 results of two correct
        # implementations differ by ~1e-3 in the logits, so compare both against this.
        t2 = time.time()
        model.double()
        fenc, flogits = forward(model, ids, mask, frames)
        model.float()
        ref["f64_encoder_out"], ref["f64_logits"] = fenc, flogits
        print(f"f64 reference in {time.time() - t2:.1f} s; fp32 vs f64: encoder max |diff| "
              f"{(enc - fenc).abs().max().item():.3g}, logits max |diff| "
              f"{(logits - flogits).abs().max().item():.3g}", flush=True)

    t2 = time.time()
    if args.bf16:
        model.to(torch.bfloat16)
    model.save_pretrained(args.out, max_shard_size=args.shard_size)
    for name in os.listdir(args.out):           # save_pretrained leaves the shards 0600
        os.chmod(os.path.join(args.out, name), 0o644)
    size = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    print(f"saved {args.out} ({size / 1e9:.2f} GB, {'BF16' if args.bf16 else 'F32'}) "
          f"in {time.time() - t2:.1f} s", flush=True)

    if args.bf16:
        # What a transformers user gets from the BF16 checkpoint: reload it in bf16.
        del model
        t3 = time.time()
        bmodel = DiaForConditionalGeneration.from_pretrained(args.out, dtype=torch.bfloat16)
        benc, blogits = forward(bmodel.eval(), ids, mask, frames)
        ref["bf16_encoder_out"], ref["bf16_logits"] = benc, blogits
        print(f"bf16 reference in {time.time() - t3:.1f} s; bf16 vs fp32 logits max |diff| "
              f"{(blogits - logits).abs().max().item():.3g}", flush=True)

    meta = {"seed": str(args.seed), "size": "tiny" if args.tiny else "full",
            "weights": "bf16" if args.bf16 else "f32", "steps": str(args.steps),
            "frames": "random" if args.random_frames else "delayed",
            "prompt": args.prompt, "parameters": str(nparams),
            "transformers": transformers.__version__, "torch": torch.__version__,
            "qk_logit_std": str(args.qk_logit_std),
            "init": "N(0,0.02); q/k for qk_logit_std; norm weights U(0.8,1.2); sorted names"}
    os.makedirs(os.path.dirname(os.path.abspath(args.ref)), exist_ok=True)
    save_file({k: v.contiguous() for k, v in ref.items()}, args.ref, metadata=meta)
    print(f"wrote {args.ref}; total {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
