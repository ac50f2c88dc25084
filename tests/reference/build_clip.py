"""Tiny CLIP (real 49408 BPE vocabulary) + HF tokenizer/processor files, and expected/clip.*"""
import gzip
import json
import os

import numpy as np
import torch
from PIL import Image, ImageDraw

from refcommon import FIX, EXPECTED, fx, gen, randomize_1d, save_json, save_tensors, seed_all

CLIP_DIR = os.path.join(FIX, "clip")
PIPE_IMG_DIR = os.path.join(FIX, "pipeline", "images")

# The real openai/clip-vit-base-patch32 preprocessor_config.json (legacy feature-extractor form).
PREPROCESSOR_CONFIG = {
    "crop_size": 224,
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "size": 224,
}

CLIP_TEXTS = [
    "a brown dog sitting on a wooden bench",
    "A man throwing a frisbee to a dog in the park.",
    "a café with a red umbrella",
    "Two   DOGS playing on the grass!!",
    "",
    # long: more than 50 tokens, truncated to max_length=50 (EOS kept at position 49)
    "a very long caption " + " ".join(f"word{i}" for i in range(60)),
]

# (file name, width, height): not square; 400x303 has (H-224) % 4 == 3 after resize -> HF floor vs torchvision round.
# seeds picked (by a search over synth_image seeds with the tiny models) so that the pipeline covers: an attribute
# prefix ("brown dog"), three concepts, a heavily merged case, and (nothing.png) no concept at all.
PIPE_IMAGES = [("street.jpg", 400, 303, 28), ("portrait.png", 260, 347, 3), ("wide.jpg", 333, 250, 2),
               ("nothing.png", 260, 347, 2)]


VISION_GAIN = 4.0
TEXT_GAIN = 3.0


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def build_clip_vocab(tmp):
    """HF CLIP vocab.json/merges.txt from the OpenAI bpe_simple_vocab_16e6.txt.gz (same construction as SimpleTokenizer)."""
    import clip

    bpe = os.path.join(os.path.dirname(clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    for m in merges:
        vocab.append("".join(m))
    vocab.extend(["<|startoftext|>", "<|endoftext|>"])
    assert len(vocab) == 49408
    encoder = {v: i for i, v in enumerate(vocab)}
    os.makedirs(tmp, exist_ok=True)
    with open(os.path.join(tmp, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(encoder, f, ensure_ascii=False)
    with open(os.path.join(tmp, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for m in merges:
            f.write(" ".join(m) + "\n")
    return os.path.join(tmp, "vocab.json"), os.path.join(tmp, "merges.txt")


def synth_image(w, h, seed):
    """A deterministic RGB picture: a random two-colour gradient or stripes, noise, and random shapes."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c0, c1 = rng.randint(0, 256, 3).astype(np.float32), rng.randint(0, 256, 3).astype(np.float32)
    style = seed % 3
    if style == 0:
        t = (xx / w * rng.uniform(0.2, 1) + yy / h * rng.uniform(0.2, 1)) / 2
    elif style == 1:
        t = 0.5 + 0.5 * np.sin((xx * rng.uniform(0.02, 0.3) + yy * rng.uniform(0.02, 0.3)))
    else:
        t = ((xx // rng.randint(8, 40) + yy // rng.randint(8, 40)) % 2).astype(np.float32)
    arr = c0 * (1 - t[..., None]) + c1 * t[..., None] + rng.normal(0, rng.uniform(2, 30), (h, w, 3))
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    for j in range(int(rng.randint(3, 12))):
        x0, y0 = int(rng.randint(0, w - 40)), int(rng.randint(0, h - 40))
        x1, y1 = x0 + int(rng.randint(20, 160)), y0 + int(rng.randint(20, 160))
        col = tuple(int(c) for c in rng.randint(0, 256, 3))
        [d.ellipse, d.rectangle][j % 2]([x0, y0, x1, y1], fill=col)
    return img


def make_pipeline_images():
    """Small deterministic RGB pictures for the pipeline and CLIP fixtures (seeds chosen so that the three images
    retrieve different memory captions and give different concept lists)."""
    os.makedirs(PIPE_IMG_DIR, exist_ok=True)
    paths = []
    for name, w, h, seed in PIPE_IMAGES:
        img = synth_image(w, h, seed)
        p = os.path.join(PIPE_IMG_DIR, name)
        if name.endswith(".jpg"):
            img.save(p, quality=90)
        else:
            img.save(p)
        paths.append(p)
    return paths


def build_tokenizer():
    from transformers import CLIPTokenizerFast

    vocab, merges = build_clip_vocab("/tmp/meacap_clip_vocab")
    tok = CLIPTokenizerFast(vocab_file=vocab, merges_file=merges, model_max_length=77)
    return tok


def check_tokenizer_vs_openai(tok):
    from clip.simple_tokenizer import SimpleTokenizer

    st = SimpleTokenizer()
    sot, eot = st.encoder["<|startoftext|>"], st.encoder["<|endoftext|>"]
    sents = [
        "a brown dog sitting on a wooden bench",
        "A man throwing a frisbee, to a dog in the park.",
        "a café with a red umbrella",
        "Hello   world!! it's 2024 :) naïve résumé",
        "There are giraffe, building in image.",
        "日本語 テキスト and emoji 🐶",
    ]
    for s in sents:
        a = tok(s)["input_ids"]
        b = [sot] + st.encode(s) + [eot]
        assert a == b, (s, a, b)
    return sents


def build_model():
    from transformers import CLIPConfig, CLIPModel

    text_config = dict(
        vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=16,
        bos_token_id=0, eos_token_id=2, pad_token_id=1,  # same (legacy) values as openai/clip-vit-base-patch32
    )
    vision_config = dict(
        image_size=224, patch_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_channels=3, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=16,
    )
    cfg = CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=16,
                     logit_scale_init_value=2.6592)
    seed_all(101)
    model = CLIPModel(cfg)
    g = gen(102)
    with torch.no_grad():
        # wider init than HF's 0.02 so that different inputs give clearly different features
        model.text_model.embeddings.token_embedding.weight.normal_(0, 1.0, generator=g)
        model.text_model.embeddings.position_embedding.weight.normal_(0, 0.3, generator=g)
        model.vision_model.embeddings.patch_embedding.weight.normal_(0, 0.2, generator=g)
        model.vision_model.embeddings.position_embedding.weight.normal_(0, 0.3, generator=g)
        model.vision_model.embeddings.class_embedding.normal_(0, 1.0, generator=g)
        model.logit_scale.fill_(4.6052)  # exp = 100, as in the real checkpoint
        # stronger encoder layers than HF's init, so that the pooled token depends on the content (otherwise all
        # images, and all captions, map to nearly the same direction and retrieval always returns the same hubs)
        for tower, gain in ((model.vision_model, VISION_GAIN), (model.text_model, TEXT_GAIN)):
            for p in tower.encoder.parameters():
                if p.dim() == 2:
                    p.mul_(gain)
    randomize_1d(model, 103)
    model.eval()
    return model


def build():
    from transformers import CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizerFast

    tok = build_tokenizer()
    checked = check_tokenizer_vs_openai(tok)
    model = build_model()
    os.makedirs(CLIP_DIR, exist_ok=True)
    model.save_pretrained(CLIP_DIR, safe_serialization=True)
    proc = CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tok)
    proc.save_pretrained(CLIP_DIR)
    save_json(os.path.join(CLIP_DIR, "preprocessor_config.json"), PREPROCESSOR_CONFIG)

    # reload everything from the folder, as the original does
    model = CLIPModel.from_pretrained(CLIP_DIR).eval()
    proc = CLIPProcessor.from_pretrained(CLIP_DIR)
    tok = CLIPTokenizerFast.from_pretrained(CLIP_DIR)
    return model, proc, tok, checked


def expected(model, proc, tok, img_paths, checked):
    imgs = [Image.open(p) for p in img_paths[:2]]
    with torch.no_grad():
        pv = proc(images=imgs, return_tensors="pt")["pixel_values"]
        vout = model.vision_model(pixel_values=pv)
        vpooled = vout[1]
        img_embeds = model.visual_projection(vpooled)
        assert torch.allclose(img_embeds, model.get_image_features(pixel_values=pv), atol=1e-6)
        enc = tok(CLIP_TEXTS, padding=True, return_tensors="pt", max_length=50, truncation=True)
        tout = model.text_model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        tpooled = tout[1]
        text_embeds = model.text_projection(tpooled)
    save_tensors(os.path.join(EXPECTED, "clip.safetensors"), {
        "pixel_values": pv,
        "vision_last_hidden_state": vout[0],
        "vision_pooled": vpooled,
        "image_embeds": img_embeds,
        "text_last_hidden_state": tout[0],
        "text_pooled": tpooled,
        "text_embeds": text_embeds,
    })
    single = [tok(s)["input_ids"] for s in checked]
    save_json(os.path.join(EXPECTED, "clip.json"), {
        "images": [os.path.relpath(p, FIX) for p in img_paths[:2]],
        "texts": CLIP_TEXTS,
        "input_ids": enc["input_ids"].tolist(),
        "attention_mask": enc["attention_mask"].tolist(),
        "tokenizer_check": [{"text": s, "ids": ids} for s, ids in zip(checked, single)],
        "logit_scale_exp": float(model.logit_scale.exp()),
    })
