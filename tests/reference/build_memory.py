"""memory/tiny: captions + CLIP text embeddings (as prepare_embedding.py: batches of 128, CLIPTokenizerFast padding=True
max_length=50 truncation=True, pooled -> text_projection, not normalised) + SBERT embeddings (normalised)."""
import json
import os

import torch

from memory_data import CAPTIONS
from refcommon import FIX

MEMORY_DIR = os.path.join(FIX, "memory", "tiny")


def build():
    from sentence_transformers import SentenceTransformer
    from transformers import CLIPModel, CLIPTokenizerFast

    os.makedirs(MEMORY_DIR, exist_ok=True)
    with open(os.path.join(MEMORY_DIR, "memory_captions.json"), "w", encoding="utf-8") as f:
        json.dump(CAPTIONS, f, ensure_ascii=False)
    clip = CLIPModel.from_pretrained(os.path.join(FIX, "clip")).eval()
    tok = CLIPTokenizerFast.from_pretrained(os.path.join(FIX, "clip"))
    sbert = SentenceTransformer(os.path.join(FIX, "bert"), device="cpu")
    clip_parts, wte_parts = [], []
    with torch.no_grad():
        for i in range(0, len(CAPTIONS), 128):
            batch = CAPTIONS[i:i + 128]
            enc = tok(batch, padding=True, return_tensors="pt", max_length=50, truncation=True)
            pooled = clip.text_model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])[1]
            clip_parts.append(clip.text_projection(pooled).detach().cpu())
            wte_parts.append(sbert.encode(batch, convert_to_tensor=True, normalize_embeddings=True).cpu())
    clip_emb = torch.cat(clip_parts).float()
    wte_emb = torch.cat(wte_parts).float()
    # padding does not change a caption's embedding (causal text tower pooled at the first EOS)
    with torch.no_grad():
        one = tok([CAPTIONS[0]], return_tensors="pt")
        single = clip.text_projection(clip.text_model(**one)[1])
    assert torch.allclose(single[0], clip_emb[0], atol=1e-5)
    torch.save(clip_emb, os.path.join(MEMORY_DIR, "memory_clip_embeddings.pt"))
    torch.save(wte_emb, os.path.join(MEMORY_DIR, "memory_wte_embeddings.pt"))
    print(f"[memory] {len(CAPTIONS)} captions, clip {tuple(clip_emb.shape)}, wte {tuple(wte_emb.shape)}")
