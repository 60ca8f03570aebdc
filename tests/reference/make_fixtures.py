#!/usr/bin/env python3
"""Build the tiny Dia / DAC reference fixtures with Hugging Face transformers.

Writes into tests/reference/data/ (or --out):
  dia_tiny/        tiny random Dia checkpoint (save_pretrained, fp32)
  dac_tiny/        tiny random DAC checkpoint, plain (folded) conv weights
  dac_tiny_wn/     the same DAC with legacy weight_g / weight_v tensors (not folded)
  dac_tiny_param/  the same DAC with parametrizations.weight.original0/1 tensors
  dia_ref.safetensors, dac_ref.safetensors, tokenizer_cases.json

Everything is computed on the CPU in fp32 from fixed seeds, single-threaded, so running the
script twice gives byte-identical files.  The layout of every file is documented in
tests/reference/data/README.md; the recipe follows /work/shared/spec/dia.md section 9.
"""

import argparse
import json
import math
import os
import sys
import warnings

import torch
from safetensors.torch import load_file, save_file

import transformers
from transformers import (
    DacConfig,
    DacModel,
    DiaConfig,
    DiaDecoderConfig,
    DiaEncoderConfig,
    DiaFeatureExtractor,
    DiaForConditionalGeneration,
    DiaProcessor,
    DiaTokenizer,
)

SEED_DIA = 0                 # weight re-draw of the tiny Dia (chosen for clear margins)
SEED_DAC = 44100             # weight re-draw of the tiny DAC
SEED_DAC_CODES = 9           # random codes for dac_ref
SEED_SAMPLE = 1234           # torch RNG for the sampled (s1) run

PROMPTS = ["[S1] Hello there. [S2] Hi!", "[S1] Short."]
# A second greedy batch, same model: the first prompt makes channel 0 choose EOS by itself
# (unforced) at position 16 while the second runs to the forced EOS, so a batch with one
# finished and one running item (PAD fed back) is exercised.  Found by trying 100 short
# "[S1] a [S2] b" prompts with this seed; about 2 in 100 end early.
EOS_PROMPTS = ["[S1] Fine. [S2] No.", "[S1] Short."]
MIN_MARGIN = 1e-4            # refuse fixtures whose greedy decisions are closer than this

MAX_NEW = 40                 # greedy run length (T = MAX_NEW + 1 frames)
RAW_STEPS = 4                # gen_raw_logits keeps the first RAW_STEPS steps
GUIDANCE = 3.0
TOP_K = 45
S1 = dict(temperature=1.8, top_p=0.9, top_k=45, guidance_scale=3.0, max_new_tokens=30)

BOS, EOS, PAD = 1026, 1024, 1025
NUM_CHANNELS = 9
DELAY = [0, 8, 9, 10, 11, 12, 13, 14, 15]


def tiny_dia_config():
    """Tiny Dia config of spec 9.1: hidden 64, 2+2 layers, GQA 4:2 in the decoder."""
    enc = DiaEncoderConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=4, head_dim=16, intermediate_size=128,
                           vocab_size=256, max_position_embeddings=1024)
    dec = DiaDecoderConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=16, intermediate_size=128,
                           cross_num_attention_heads=4, cross_num_key_value_heads=4,
                           cross_head_dim=16, cross_hidden_size=64, vocab_size=1028,
                           num_channels=NUM_CHANNELS, max_position_embeddings=3072)
    return DiaConfig(encoder_config=enc, decoder_config=dec)


def tiny_dac_config():
    """Tiny DAC of spec 9.1: hidden 32, hop 8, decoder 32 -> 16 -> 8 -> 1, 9 codebooks."""
    return DacConfig(encoder_hidden_size=8, downsampling_ratios=[2, 4], decoder_hidden_size=32,
                     n_codebooks=9, codebook_size=1024, codebook_dim=8, sampling_rate=44100)


def redraw_dia(model, seed):
    """Re-draw every Dia parameter so that norms and attention are not degenerate.

    Default init gives std 0.02 linears and all-one norm weights, which hides bugs in the norm
    and makes attention nearly uniform.  Here: norm weights U(0.8, 1.2); embedding tables
    N(0, 1); every linear [out, in] N(0, 1) / sqrt(in), so activations keep unit scale and the
    scale-1.0 attention logits have std ~ sqrt(head_dim) (clearly peaked softmax).
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                p.copy_(0.8 + 0.4 * torch.rand(p.shape, generator=gen))
            elif "embed" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            elif p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1]))
            else:
                raise RuntimeError(f"redraw_dia: unexpected parameter {name} {tuple(p.shape)}")


def conv_modules(model):
    """All Conv1d / ConvTranspose1d modules of a DacModel, by name, sorted."""
    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)):
            out.append((name, mod))
    return sorted(out, key=lambda t: t[0])


def dac_conv_gain(name):
    """Extra gain for some DAC convs so that the waveform stays well inside tanh's range.

    The nine summed codebook projections are scaled by 1/3 (unit-scale latent), residual
    branches by 0.3 (three residual units per block would otherwise grow the signal ~3x per
    block) and the output conv so that pre-tanh values have std ~0.5.
    """
    if name.startswith("quantizer.") and ".out_proj." in name:
        return 1.0 / 3.0
    if ".res_unit" in name and name.endswith("conv2.weight"):
        return 0.3
    if name == "decoder.conv2.weight":
        return 0.25
    return 1.0


def redraw_dac(model, seed):
    """Re-draw every DAC parameter and return the weight-norm pairs (g, v) of every conv.

    Snake alphas U(0.5, 1.5); codebooks N(0, 1); biases N(0, 0.1); each conv weight is built
    from a random direction v (with a random per-dim0 scale, so v is not unit-norm) and a gain
    g, and set to PyTorch's own torch._weight_norm(v, g, 0).  The plain model therefore holds
    exactly the weights that a weight-normed checkpoint folds to.  Conv gains keep unit-scale
    activations (fan-in = in*k for Conv1d, 2*in for the stride-s, kernel-2s ConvTranspose1d).
    """
    gen = torch.Generator().manual_seed(seed)
    pairs = {}
    convs = dict(conv_modules(model))
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("alpha"):
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))
            elif name.endswith("codebook.weight"):
                p.copy_(torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".weight") and name[: -len(".weight")] in convs:
                mod = convs[name[: -len(".weight")]]
                if isinstance(mod, torch.nn.ConvTranspose1d):
                    fan_in = 2 * p.shape[0]
                else:
                    fan_in = p.shape[1] * p.shape[2]
                w = torch.randn(p.shape, generator=gen) / math.sqrt(fan_in)
                w = w * dac_conv_gain(name)
                g = w.flatten(1).norm(dim=1).reshape(-1, *([1] * (p.dim() - 1)))
                scale = 0.5 + 1.5 * torch.rand(g.shape, generator=gen)
                v = w * scale
                p.copy_(torch._weight_norm(v, g, 0))
                pairs[name[: -len(".weight")]] = (g.clone(), v.clone())
            else:
                raise RuntimeError(f"redraw_dac: unexpected parameter {name} {tuple(p.shape)}")
    return pairs


def save_dac_weight_norm(model, pairs, outdir, legacy):
    """Save the DAC with unfolded weight norm: legacy weight_g/weight_v or parametrizations."""
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    for name, (g, v) in pairs.items():
        del sd[name + ".weight"]
        if legacy:
            sd[name + ".weight_g"] = g.contiguous()
            sd[name + ".weight_v"] = v.contiguous()
        else:
            sd[name + ".parametrizations.weight.original0"] = g.contiguous()
            sd[name + ".parametrizations.weight.original1"] = v.contiguous()
    os.makedirs(outdir, exist_ok=True)
    model.config.to_json_file(os.path.join(outdir, "config.json"))
    save_file(sd, os.path.join(outdir, "model.safetensors"), metadata={"format": "pt"})


def check_dac_weight_norm(config, out, codes, wave_ref):
    """Load both unfolded DAC files through PyTorch's own weight norm and decode `codes`.

    dac_tiny_param goes through torch.nn.utils.parametrizations.weight_norm (what
    DacModel.apply_weight_norm uses), dac_tiny_wn through the legacy torch.nn.utils.weight_norm
    hooks.  Both must decode bit-identically to the plain model, which proves the files hold
    exactly the weights that dac_tiny holds folded.
    """
    for sub, legacy in (("dac_tiny_param", False), ("dac_tiny_wn", True)):
        model = DacModel(config).eval()
        for _, mod in conv_modules(model):
            if legacy:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    torch.nn.utils.weight_norm(mod, dim=0)
            else:
                torch.nn.utils.parametrizations.weight_norm(mod, dim=0)
        sd = load_file(os.path.join(out, sub, "model.safetensors"))
        model.load_state_dict(sd, strict=True)
        with torch.no_grad():
            wave = model.decode(audio_codes=codes).audio_values
        diff = (wave - wave_ref).abs().max().item()
        if diff != 0.0:
            raise RuntimeError(f"{sub} decodes differently from dac_tiny: max |diff| {diff}")


def decision_margins(g, batch, forced_at):
    """Smallest margin of every greedy decision that reaches the returned sequence, per item.

    A decision is the argmax over valid ids of the conditional logits restricted to the top-k
    set of the guided logits.  Its margin is the smallest perturbation of the raw logits that
    could change it: the gap between the best and second-best candidate, the gap that keeps
    the chosen id inside the top-k set, and the gap that keeps any better-scoring id outside
    it.  Positions forced by the delay pattern (BOS, forced EOS, PAD) are skipped.  Returns
    [(margin, step, channel)] so the script can refuse fixtures with near-ties that an
    independent fp32 implementation could legitimately resolve differently.
    """
    seq = g.sequences
    res = []
    for b in range(batch):
        hits = (seq[b, :, 0] == EOS).nonzero().flatten().tolist()
        e0 = hits[0] if hits else seq.shape[1]
        worst = (float("inf"), -1, -1)
        for step, lg in enumerate(g.logits):
            pos = step + 1
            lg = lg.float().reshape(2, batch, NUM_CHANNELS, -1)
            for c in range(NUM_CHANNELS):
                d = DELAY[c]
                if pos <= d or pos > e0 + d or (pos == e0 + d and (c > 0 or e0 >= forced_at)):
                    continue
                lc = lg[0, b, c]
                guided = lc + GUIDANCE * (lc - lg[1, b, c])
                order = torch.argsort(guided, descending=True, stable=True)
                inset = torch.zeros_like(lc, dtype=torch.bool)
                inset[order[:TOP_K]] = True
                valid = torch.ones_like(inset)
                valid[(PAD if c == 0 else EOS):] = False
                vals = torch.where(inset & valid, lc, torch.tensor(-float("inf")))
                top2, idx = torch.topk(vals, 2)
                chosen = idx[0].item()
                m = (top2[0] - top2[1]).item()
                m = min(m, guided[chosen].item() - guided[order[TOP_K]].item())
                better_out = (~inset) & valid & (lc > lc[chosen])
                if better_out.any():
                    m = min(m, guided[order[TOP_K - 1]].item() - guided[better_out].max().item())
                worst = min(worst, (m, step, c))
        res.append(worst)
    return res


def boundary_gaps(g, batch, temperature=None, top_p=None, ref_scores=None):
    """Per row [steps, batch, 9]: how close the -inf pattern of the scores is to changing.

    guided: G[45th] - G[46th] of the guided logits G = Lc + g*(Lc - Lu) (the CFG top-k set
    boundary), in logit units.  topp (sampling only): min |cumsum - (1 - top_p)| over the
    ascending-sorted softmax of the scores that enter top-p, in probability units (inf where
    top-p has a single candidate).  A row with a tiny gap can legitimately differ by one
    boundary entry in another fp32 implementation; the C tests use these to excuse it.
    The top-p inputs are recomputed here (CFG filter, temperature, EOS filter; top-k 45 is a
    no-op after the CFG filter) and, when ref_scores is given, the resulting finite pattern
    is checked against transformers' scores on every row that has more than one candidate.
    """
    guided, topp = [], []
    for step, lg in enumerate(g.logits):
        lg = lg.float().reshape(2, batch, NUM_CHANNELS, -1)
        lc, lu = lg[0], lg[1]
        gl = lc + GUIDANCE * (lc - lu)
        srt = torch.sort(gl, dim=-1, descending=True).values
        guided.append(srt[..., TOP_K - 1] - srt[..., TOP_K])
        if top_p is None:
            continue
        row_gap = torch.full((batch, NUM_CHANNELS), float("inf"))
        for b in range(batch):
            for c in range(NUM_CHANNELS):
                idx = torch.topk(gl[b, c], TOP_K).indices
                v = torch.full_like(lc[b, c], -float("inf"))
                v[idx] = lc[b, c, idx] / temperature
                v[(PAD if c == 0 else EOS):] = -float("inf")
                if v.argmax().item() == EOS:
                    continue
                v[EOS] = -float("inf")
                order = torch.argsort(v)
                probs = torch.softmax(v[order], 0)
                cum = probs.cumsum(0)
                finite = torch.isfinite(v[order])
                row_gap[b, c] = (cum[finite] - (1 - top_p)).abs().min()
                remove = cum <= (1 - top_p)
                remove[-1] = False
                kept = torch.zeros_like(finite)
                kept[order] = finite & ~remove
                if ref_scores is not None:
                    want = torch.isfinite(ref_scores[step, b, c])
                    if want.sum() > 1 and not torch.equal(want, kept):
                        raise RuntimeError(f"top-p recomputation differs at {step},{b},{c}")
        topp.append(row_gap)
    guided = torch.stack(guided).contiguous()
    return guided, (torch.stack(topp).contiguous() if topp else None)


def undelay(seq):
    """Codes [1, 9, N] that batch_decode hands to the DAC for one returned sequence [T, 9].

    Spec 6.4: start = number of BOS in channel 0, end = T - (number of PAD in channel 0) - 1,
    code[t][c] = seq[t + d_c][c] for start <= t < end.
    """
    T = seq.shape[0]
    start = int((seq[:, 0] == BOS).sum())
    end = T - int((seq[:, 0] == PAD).sum()) - 1
    codes = torch.stack([seq[start + d:end + d, c] for c, d in enumerate(DELAY)])
    return codes.unsqueeze(0).contiguous()


def greedy(model, inputs):
    """The spec 9.2 greedy CFG run, with the processor's delayed decoder inputs."""
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=MAX_NEW, do_sample=False,
                              guidance_scale=GUIDANCE, top_k=TOP_K,
                              return_dict_in_generate=True, output_logits=True,
                              output_scores=True)


def tokenizer_cases(tok):
    """Tokenizer reference cases: spec 9.3 ones, non-ASCII, tags without spaces, <pad>."""
    texts = [
        "[S1] Hello [S2] hi.",
        "[S1]Hi[S2]x",
        "\u00e9",
        "<pad>a",
        "[s1] lower",
        "[S1] Hello there. [S2] Hi!",
        "[S1] Short.",
        "",
        "[S1][S2][S1]",
        "[S2]<pad>[S1]",
        "a<pad>b<pad>",
        "[S1", "[S3] x", "S1]", "<pad", "<PAD>", "[ S1]",
        "caf\u00e9 na\u00efve \u00fcber",
        "\u65e5\u672c\u8a9e\u3067\u8a71\u3059",
        "emoji \U0001F600 ok",
        "tab\tnew\nline\r\n",
        "  leading and trailing  ",
        "\u00e9[S1]\u00e9",
        "x" * 1100,
    ]
    cases = []
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        cases.append({"text": text, "ids": [int(i) for i in ids]})
    return cases


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "data"), help="output directory")
    args = ap.parse_args()

    if transformers.__version__ != "5.17.0":
        print(f"warning: transformers {transformers.__version__}, fixtures were made with 5.17.0",
              file=sys.stderr)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*max_length. is ignored.*")
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)
    out = args.out
    os.makedirs(out, exist_ok=True)

    # ---- models ---------------------------------------------------------------------------
    dia = DiaForConditionalGeneration(tiny_dia_config()).eval()
    redraw_dia(dia, SEED_DIA)
    dac_cfg = tiny_dac_config()
    dac = DacModel(dac_cfg).eval()
    pairs = redraw_dac(dac, SEED_DAC)
    dia.save_pretrained(os.path.join(out, "dia_tiny"))
    reloaded = DiaForConditionalGeneration.from_pretrained(os.path.join(out, "dia_tiny")).eval()
    for k, v in dia.state_dict().items():
        if not torch.equal(v, reloaded.state_dict()[k]):
            raise RuntimeError(f"dia_tiny does not round-trip: {k}")
    dac.save_pretrained(os.path.join(out, "dac_tiny"))
    save_dac_weight_norm(dac, pairs, os.path.join(out, "dac_tiny_wn"), legacy=True)
    save_dac_weight_norm(dac, pairs, os.path.join(out, "dac_tiny_param"), legacy=False)

    proc = DiaProcessor(DiaFeatureExtractor(sampling_rate=44100, hop_length=512), DiaTokenizer(),
                        dac)

    # ---- DAC reference --------------------------------------------------------------------
    gen = torch.Generator().manual_seed(SEED_DAC_CODES)
    codes = torch.randint(0, 1024, (1, 9, 12), generator=gen, dtype=torch.int64)
    with torch.no_grad():
        latent = dac.quantizer.from_codes(codes)[0]
        wave = dac.decode(audio_codes=codes).audio_values
    check_dac_weight_norm(dac_cfg, out, codes, wave)
    save_file({"dac_codes": codes.contiguous(), "dac_latent": latent.float().contiguous(),
               "dac_wave": wave.float().contiguous()},
              os.path.join(out, "dac_ref.safetensors"))

    # ---- Dia: inputs, encoder, first step --------------------------------------------------
    ref = {}
    inputs = proc(text=PROMPTS, padding=True, return_tensors="pt")
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    B = ids.shape[0]
    ref["input_ids"] = ids.to(torch.int64)
    ref["attention_mask"] = mask.to(torch.int64)
    ref["decoder_input_ids"] = inputs["decoder_input_ids"].to(torch.int64)
    bos_frame = torch.full((B, 1, NUM_CHANNELS), BOS, dtype=torch.int64)
    with torch.no_grad():
        ref["encoder_out"] = dia.model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        lc = dia(input_ids=ids, attention_mask=mask, decoder_input_ids=bos_frame).logits
        lu = dia(input_ids=torch.zeros_like(ids), attention_mask=mask,
                 decoder_input_ids=bos_frame).logits
    ref["step0_logits_cond"] = lc.reshape(B, NUM_CHANNELS, -1)
    ref["step0_logits_uncond"] = lu.reshape(B, NUM_CHANNELS, -1)

    # ---- Dia: greedy CFG generation (delayed path) ----------------------------------------
    g = greedy(dia, inputs)
    seq = g.sequences.to(torch.int64)
    ref["gen_sequences"] = seq
    raw = torch.stack([t.float().reshape(2, B, NUM_CHANNELS, -1) for t in g.logits[:RAW_STEPS]])
    ref["gen_raw_logits"] = raw
    ref["gen_scores"] = torch.stack([t.float().reshape(B, NUM_CHANNELS, -1) for t in g.scores])
    # The generation loop's first step (batched cond+uncond rows, so other GEMM shapes) must
    # match the standalone first step up to fp32 rounding; this also checks that the
    # unconditional rows are "all-zero ids with the conditional mask".
    for i, key in enumerate(("step0_logits_cond", "step0_logits_uncond")):
        d = (raw[0, i] - ref[key]).abs().max().item()
        if d > 1e-5:
            raise RuntimeError(f"{key} differs from generate's step 0 by {d}")
        print(f"{key}: max |diff| vs generate step 0 = {d:.3g}")
    ref["gen_guided_gap"], _ = boundary_gaps(g, B)
    audios = proc.batch_decode(g.sequences)
    for i, a in enumerate(audios):
        ref[f"audio_{i}"] = a.float().reshape(-1)
        codes_i = undelay(seq[i])
        ref[f"audio_codes_{i}"] = codes_i
        with torch.no_grad():
            again = dac.decode(audio_codes=codes_i).audio_values.reshape(-1)
        if not torch.equal(again, ref[f"audio_{i}"]):
            raise RuntimeError(f"undelay() disagrees with batch_decode for item {i}")

    # ---- Dia: a run where channel 0 picks EOS by itself ------------------------------------
    eos_inputs = proc(text=EOS_PROMPTS, padding=True, return_tensors="pt")
    ge = greedy(dia, eos_inputs)
    eseq = ge.sequences.to(torch.int64)
    ref["eos_input_ids"] = eos_inputs["input_ids"].to(torch.int64)
    ref["eos_attention_mask"] = eos_inputs["attention_mask"].to(torch.int64)
    ref["eos_sequences"] = eseq
    forced_at = MAX_NEW + 1 - 16
    eos_pos = [(eseq[b, :, 0] == EOS).nonzero().flatten().tolist() for b in range(B)]
    if not (eos_pos[0] and eos_pos[0][0] < forced_at):
        raise RuntimeError(f"no unforced EOS in the eos run: channel-0 EOS at {eos_pos}")
    for name, run in (("main", g), ("eos", ge)):
        margins = decision_margins(run, B, forced_at)
        print(f"{name} run: smallest greedy decision margin per item (margin, step, channel):",
              [(f"{m:.2e}", st, c) for m, st, c in margins])
        if min(m for m, _, _ in margins) < MIN_MARGIN:
            raise RuntimeError(f"{name} run has a near-tie below {MIN_MARGIN}: {margins}")

    # ---- Dia: sampled run, non-delayed path (teacher-forced check of processing order) ----
    torch.manual_seed(SEED_SAMPLE)
    with torch.no_grad():
        s = dia.generate(input_ids=ids, attention_mask=mask, do_sample=True,
                         return_dict_in_generate=True, output_scores=True, output_logits=True,
                         **S1)
    ref["s1_seq"] = s.sequences.to(torch.int64)
    ref["s1_scores"] = torch.stack([t.float().reshape(B, NUM_CHANNELS, -1) for t in s.scores])
    ref["s1_guided_gap"], ref["s1_topp_gap"] = boundary_gaps(
        s, B, S1["temperature"], S1["top_p"], ref["s1_scores"])
    print("smallest boundary gaps: gen guided %.2e, s1 guided %.2e, s1 top-p %.2e" % (
        ref["gen_guided_gap"].min(), ref["s1_guided_gap"].min(), ref["s1_topp_gap"].min()))

    ref = {k: v.detach().contiguous() for k, v in ref.items()}
    save_file(ref, os.path.join(out, "dia_ref.safetensors"))

    with open(os.path.join(out, "tokenizer_cases.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer_cases(proc.tokenizer), f, ensure_ascii=False, indent=1)
        f.write("\n")

    # save_pretrained writes model.safetensors with mode 0600; make the tree uniformly 0644.
    for root, _, files in os.walk(out):
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)

    for k in sorted(ref):
        print(f"{k:22s} {str(ref[k].dtype):14s} {list(ref[k].shape)}")
    print("channel-0 EOS positions, main run:",
          [(seq[b, :, 0] == EOS).nonzero().flatten().tolist() for b in range(B)])
    print("channel-0 EOS positions, eos run:", eos_pos)


if __name__ == "__main__":
    main()
