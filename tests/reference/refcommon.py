"""Shared helpers for the fixture generators (paths, seeding, writers, margin bookkeeping)."""
import json
import os
import random

import numpy as np
import torch
from safetensors.torch import save_file

torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
FIX = os.path.join(ROOT, "tests", "fixtures")
EXPECTED = os.path.join(FIX, "expected")


def fx(*parts):
    """Path under tests/fixtures, creating the parent folder."""
    p = os.path.join(FIX, *parts)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    return p


def seed_all(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def gen(seed):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def save_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write("\n")


def save_tensors(path, tensors):
    """safetensors, every float tensor stored as contiguous f32."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    out = {}
    for k, v in tensors.items():
        v = v.detach().cpu()
        if v.is_floating_point():
            v = v.float()
        out[k] = v.contiguous()
    save_file(out, path)


def randomize_1d(model, seed, w_std=0.1, b_std=0.1):
    """LayerNorm weights -> 1 + w_std*N, every 1-D bias -> b_std*N, so parity tests see every parameter."""
    g = gen(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() != 1:
                continue
            n = torch.randn(p.shape, generator=g)
            if name.endswith("bias"):
                p.copy_(b_std * n)
            else:  # norm weights
                p.copy_(1.0 + w_std * n)


def normal_(p, std, g):
    with torch.no_grad():
        p.copy_(torch.randn(p.shape, generator=g) * std)


class Margins:
    """Minimum decision margins found while generating the fixtures (checked against a floor)."""

    def __init__(self):
        self.m = {}

    def add(self, kind, value, where=""):
        value = float(value)
        cur = self.m.get(kind)
        if cur is None or value < cur[0]:
            self.m[kind] = (value, where)

    def check(self, floors):
        bad = []
        for kind, floor in floors.items():
            if kind in self.m and self.m[kind][0] <= floor:
                bad.append(f"{kind}: {self.m[kind][0]:.3g} <= {floor} at {self.m[kind][1]}")
        return bad

    def report(self):
        return {k: {"min": v[0], "where": v[1]} for k, v in sorted(self.m.items())}


MARGINS = Margins()
FLOORS = {
    "gpt2_greedy_top1_top2_logit": 1e-3,
    "beam_5th_6th_avg_score": 1e-4,
    "t5_greedy_top1_top2_logit": 1e-3,
    "retrieval_top5_6th_cosine": 1e-4,
    "sbert_pair_sim_minus_0.55": 1e-4,
}
