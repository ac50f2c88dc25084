"""The original MeaCap-InvLM stages in PyTorch, timed at full size with random weights.

Counterpart of `meacap-wgpu bench` (same stages, shapes and forced lengths) for side-by-side runs:
the original's algorithms are kept (beam search recomputes the whole sequence every step with
logits at every position; retrieval re-normalises the whole memory per query).

    OMP_WAIT_POLICY=PASSIVE ~/.cache/meacap-wgpu/pyref/bin/python tests/reference/bench_original.py

(PyTorch's default OpenMP spin-wait makes small matmuls ~100x slower on busy cores.)
Needs torch and transformers 4.26.1; downloads nothing (models are built from configs).
"""

import argparse
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F
from transformers import (BertConfig, BertModel, CLIPConfig, CLIPModel, GPT2Config, GPT2LMHeadModel,
                          T5Config, T5ForConditionalGeneration)


def timed(fn, repeat):
    fn()  # warm-up, as the Rust side
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--memory-rows", type=int, default=566_000)
    ap.add_argument("--t5-steps", type=int, default=40)
    ap.add_argument("--new-tokens", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    rows = []

    def push(stage, shape, times, note=""):
        row = {"stage": stage, "shape": shape, "median_ms": statistics.median(times), "min_ms": min(times), "note": note}
        rows.append(row)
        print(f"  {stage:<34} {row['median_ms']:>10.1f} ms  {note}", flush=True)
        return row

    def load(name, build):
        t = time.perf_counter()
        model = build().eval()
        push(f"build {name}", f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params",
             [(time.perf_counter() - t) * 1e3], "random init (no file read)")
        return model

    # CLIP ViT-B/32
    clip = load("CLIP ViT-B/32", lambda: CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_attention_heads=8,
                         num_hidden_layers=12, max_position_embeddings=77),
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                           image_size=224, patch_size=32),
        projection_dim=512)))
    for b in (1, 2):
        px = torch.randn(b, 3, 224, 224)
        push("CLIP image", f"[{b},3,224,224]", timed(lambda: clip.get_image_features(pixel_values=px), args.repeat))
    ids = torch.randint(0, 49000, (128, 20))
    ids[:, 0], ids[:, -1] = 49406, 49407
    r = push("CLIP text (memory build)", "128 x 20 tokens",
             timed(lambda: clip.get_text_features(input_ids=ids, attention_mask=torch.ones_like(ids)), args.repeat))
    r["note"] = f"{r['median_ms'] / 128:.2f} ms/caption"
    del clip

    # Retrieval as the original: the whole memory is re-normalised for every query.
    memory = torch.randn(args.memory_rows, 512)
    query = torch.randn(1, 512)

    def retrieve():
        image = query / query.norm(dim=-1, keepdim=True)
        mem = memory / memory.norm(dim=-1, keepdim=True)
        sim = image @ mem.T
        return torch.topk(sim.squeeze(0), 5)
    push("retrieval top-5", f"{args.memory_rows} x 512", timed(retrieve, args.repeat), "re-normalises memory per query")
    del memory

    # Flan-T5-base, greedy with EOS out of reach (min_length forces the full length).
    t5 = load("Flan-T5-base", lambda: T5ForConditionalGeneration(T5Config(
        vocab_size=32128, d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_decoder_layers=12, num_heads=12,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0, eos_token_id=1,
        pad_token_id=0)))
    ids = torch.randint(3, 32000, (5, 20))
    ids[:, -1] = 1
    mask = torch.ones_like(ids)
    enc = push("T5 encode", "5 x 20 tokens", timed(lambda: t5.encoder(input_ids=ids, attention_mask=mask), args.repeat))
    steps = args.t5_steps
    out = []

    def parse():
        out.append(t5.generate(input_ids=ids, attention_mask=mask, max_length=steps + 1, min_length=steps + 1,
                               num_beams=1, do_sample=False))
    r = push("T5 parse (encode + greedy)", f"5 x 20 tokens, {steps} steps", timed(parse, args.repeat))
    done = out[-1].shape[1] - 1
    r["per_step_ms"] = (r["median_ms"] - enc["median_ms"]) / max(done, 1)
    r["note"] = f"{done} decoder steps (HF generate, KV cache)"
    del t5

    bert = load("all-MiniLM-L6-v2", lambda: BertModel(BertConfig(
        vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
        add_pooling_layer=False))
    ids = torch.randint(1000, 30000, (10, 8))
    ids[:, 0], ids[:, -1] = 101, 102
    mask = torch.ones_like(ids)

    def sbert():
        h = bert(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).float()
        return F.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)
    push("MiniLM encode (entities)", "10 x 8 tokens", timed(sbert, args.repeat))
    del bert

    # ViECap mapping network: same sizes as the Rust side (8 layers, 8 heads, MLP ratio 2).
    class Layer(torch.nn.Module):
        def __init__(self, d):
            super().__init__()
            self.norm1, self.norm2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
            self.attn = torch.nn.MultiheadAttention(d, 8, batch_first=True)
            self.fc1, self.fc2 = torch.nn.Linear(d, 2 * d), torch.nn.Linear(2 * d, d)

        def forward(self, x):
            h = self.norm1(x)
            x = x + self.attn(h, h, h, need_weights=False)[0]
            return x + self.fc2(F.relu(self.fc1(self.norm2(x))))

    class Mapping(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(512, 10 * 768)
            self.prefix_const = torch.nn.Parameter(torch.randn(10, 768))
            self.layers = torch.nn.ModuleList([Layer(768) for _ in range(8)])

        def forward(self, x):
            x = self.linear(x).view(x.shape[0], 10, 768)
            h = torch.cat([x, self.prefix_const.unsqueeze(0).expand(x.shape[0], -1, -1)], 1)
            for layer in self.layers:
                h = layer(h)
            return h[:, 10:]
    mapping = load("mapping network", Mapping)
    feat = torch.randn(1, 512)
    push("mapping network", "[1,512] -> [1,10,768]", timed(lambda: mapping(feat), args.repeat))

    gpt = load("GPT-2 124M", lambda: GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_positions=1024, n_embd=768,
                                                                 n_layer=12, n_head=12)))
    prefix = torch.randn(1, 20, 768) * 0.02
    wte = gpt.transformer.wte

    def beam_search(width=5, n=args.new_tokens):
        # ViECap search.py: full recompute each step, logits at every position, stop ignored.
        generated = prefix
        scores, tokens, lengths = None, None, torch.ones(width)
        for step in range(n):
            logits = gpt(inputs_embeds=generated).logits[:, -1, :]
            logp = logits.softmax(-1).log()
            if scores is None:
                scores, nxt = logp.topk(width, -1)
                generated = generated.expand(width, *generated.shape[1:])
                nxt, scores = nxt.permute(1, 0), scores.squeeze(0)
                tokens = nxt
            else:
                lengths = lengths + 1
                avg = (scores[:, None] + logp) / lengths[:, None]
                avg, nxt = avg.view(-1).topk(width, -1)
                src = nxt // logp.shape[1]
                lengths = lengths[src]
                nxt = (nxt % logp.shape[1]).unsqueeze(1)
                tokens = torch.cat((tokens[src], nxt), dim=1)
                generated = generated[src]
                scores = avg * lengths
            generated = torch.cat((generated, wte(nxt.view(-1, 1))), dim=1)
        return tokens
    r = push("GPT-2 beam search (width 5)", f"prompt 20, {args.new_tokens} new tokens", timed(beam_search, args.repeat),
             "original: full recompute, logits at every position")
    r["per_step_ms"] = r["median_ms"] / args.new_tokens
    for length in (40, 80):
        x = torch.randn(5, length + 1, 768) * 0.02
        r = push("GPT-2 step (original way)", f"batch 5, length {length}",
                 timed(lambda: gpt(inputs_embeds=x).logits[:, -1].softmax(-1).log(), args.repeat))
        r["per_step_ms"] = r["median_ms"]

    info = {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
            "load_average": open("/proc/loadavg").read().strip()}
    if args.json:
        print(json.dumps({"info": info, "rows": rows}, indent=1))
    else:
        print(info)
        print("| stage | shape | median ms | min ms | per step ms | note |\n|---|---|---:|---:|---:|---|")
        for r in rows:
            ps = f"{r['per_step_ms']:.1f}" if "per_step_ms" in r else ""
            print(f"| {r['stage']} | {r['shape']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | {ps} | {r['note']} |")


if __name__ == "__main__":
    main()
