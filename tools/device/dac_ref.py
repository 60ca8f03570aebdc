#!/usr/bin/env python3
"""Random full-size DAC 44.1 kHz (spec dia.md 2.2 config) and its transformers decode, for
`voxq-bench dac`. Writes DIR (save_pretrained) and REF.safetensors with `codes` [1, 9, N] (int64)
and `wave` (f32, the decode of those codes, computed in fp32 on the CPU).
Usage: python3 tools/device/dac_ref.py --out /tmp/dac --ref /tmp/dac_ref.st [--frames 3000]"""
import argparse
import torch
from safetensors.torch import save_file
from transformers import DacConfig, DacModel

ap = argparse.ArgumentParser()
ap.add_argument("--out", required=True)
ap.add_argument("--ref", required=True)
ap.add_argument("--frames", type=int, default=3000)
ap.add_argument("--seed", type=int, default=0)
a = ap.parse_args()
torch.manual_seed(a.seed)
cfg = DacConfig(encoder_hidden_size=64, downsampling_ratios=[2, 4, 8, 8], decoder_hidden_size=1536,
                n_codebooks=9, codebook_size=1024, codebook_dim=8, sampling_rate=44100)
model = DacModel(cfg).eval()
with torch.no_grad():
    for name, p in model.named_parameters():
        if name.endswith("alpha"):
            p.uniform_(0.5, 1.5)
    model.save_pretrained(a.out)
    codes = torch.randint(0, 1024, (1, 9, a.frames))
    wave = model.decode(audio_codes=codes).audio_values
save_file({"codes": codes.contiguous(), "wave": wave.float().contiguous()}, a.ref)
print(f"saved {a.out} and {a.ref}: {a.frames} frames, wave {tuple(wave.shape)}")
