"""Tiny flan-T5-style scene-graph parser: a SentencePiece Unigram tokenizer (converted by transformers to a
flan-T5-like tokenizer.json: Precompiled nmt_nfkc normalizer, Metaspace, "$A </s>" post-processor, 100 extra ids),
a T5ForConditionalGeneration trained briefly on the memory captions, and expected/t5.*"""
import os
import shutil
import time

import sentencepiece as spm
import torch

from memory_data import CAPTIONS, GRAPHS
from meacap_reference import format_scene_graph
from refcommon import EXPECTED, FIX, MARGINS, gen, save_json, save_tensors, seed_all

T5_DIR = os.path.join(FIX, "t5")
PREFIX = "Generate Scene Graph: "
SPM_VOCAB = 300
TRAIN = dict(seed=401, steps=4000, lr=3e-3, max_seconds=240)
# expected/t5: a batch of 5 different-length inputs, as parse() builds them
T5_EXPECTED_IDX = [6, 5, 14, 2, 31]


def train_spm(tmp):
    os.makedirs(tmp, exist_ok=True)
    corpus = []
    for c, g in zip(CAPTIONS, GRAPHS):
        corpus += [PREFIX + c, g, c]
    prefix = os.path.join(tmp, "spiece")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_prefix=prefix, vocab_size=SPM_VOCAB, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        character_coverage=1.0, hard_vocab_limit=False, normalization_rule_name="nmt_nfkc",
        num_threads=1, seed_sentencepiece_size=100000, minloglevel=2,
    )
    return prefix + ".model"


def build_tokenizer():
    from transformers import T5TokenizerFast

    model_file = train_spm("/tmp/meacap_t5_spm")
    tok = T5TokenizerFast(vocab_file=model_file, extra_ids=100, model_max_length=512)
    # register <pad>, </s>, <unk> as special added tokens in tokenizer.json (as in flan-t5's), so that the backend
    # skips them when decoding with skip_special_tokens=True
    tok.sanitize_special_tokens()
    if os.path.isdir(T5_DIR):
        shutil.rmtree(T5_DIR)
    os.makedirs(T5_DIR)
    tok.save_pretrained(T5_DIR)
    return T5TokenizerFast(tokenizer_file=os.path.join(T5_DIR, "tokenizer.json"))


def make_config(vocab):
    from transformers import T5Config

    return T5Config(
        vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
        relative_attention_num_buckets=32, relative_attention_max_distance=128, dropout_rate=0.0,
        layer_norm_epsilon=1e-6, feed_forward_proj="gated-gelu", tie_word_embeddings=False, is_encoder_decoder=True,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, initializer_factor=1.0, use_cache=True,
        architectures=["T5ForConditionalGeneration"],
    )


def greedy_parse(model, tok, captions):
    enc = tok([PREFIX + c for c in captions], max_length=128, truncation=True, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(enc["input_ids"], attention_mask=enc["attention_mask"], use_cache=True,
                             decoder_start_token_id=tok.pad_token_id, num_beams=1, max_length=128,
                             early_stopping=True)
    raw = tok.batch_decode(out, skip_special_tokens=True, clean_up_tokenization_spaces=True)
    return enc, out, [format_scene_graph(t.replace("Generate Scene Graph:", "").strip()) for t in raw], raw


def train(tok):
    from transformers import T5ForConditionalGeneration

    vocab = (len(tok) + 64) // 64 * 64  # larger than the tokenizer, as flan-t5 (32128 vs 32100)
    seed_all(TRAIN["seed"])
    model = T5ForConditionalGeneration(make_config(vocab))
    enc = tok([PREFIX + c for c in CAPTIONS], padding=True, return_tensors="pt")
    lab = tok(GRAPHS, padding=True, return_tensors="pt")["input_ids"]
    lab[lab == tok.pad_token_id] = -100
    opt = torch.optim.AdamW(model.parameters(), lr=TRAIN["lr"], weight_decay=0.0)
    t0 = time.time()
    model.train()
    targets = [format_scene_graph(g) for g in GRAPHS]
    for step in range(TRAIN["steps"]):
        loss = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], labels=lab).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 250 == 249 or time.time() - t0 > TRAIN["max_seconds"]:
            model.eval()
            _, _, got, _ = greedy_parse(model, tok, CAPTIONS)
            model.train()
            ok = sum(a == b for a, b in zip(got, targets))
            print(f"[t5] step {step + 1} loss {loss.item():.4f} exact {ok}/{len(targets)} ({time.time() - t0:.0f}s)")
            if ok == len(targets) or time.time() - t0 > TRAIN["max_seconds"]:
                break
    model.eval()
    return model


def save_t5(model):
    """config + generation_config + model.safetensors. The tied encoder/decoder embed_tokens copies of shared.weight
    are left out (as current transformers writes it; safetensors refuses aliased tensors); lm_head.weight is its own
    (untied) tensor."""
    from safetensors.torch import save_file

    model.config.save_pretrained(T5_DIR)
    model.generation_config.save_pretrained(T5_DIR)
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()
          if k not in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")}
    save_file(sd, os.path.join(T5_DIR, "model.safetensors"), metadata={"format": "pt"})


def build():
    from transformers import T5ForConditionalGeneration, T5TokenizerFast

    tok = build_tokenizer()
    model = train(tok)
    save_t5(model)
    model = T5ForConditionalGeneration.from_pretrained(T5_DIR).eval()
    assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()
    tok = T5TokenizerFast(tokenizer_file=os.path.join(T5_DIR, "tokenizer.json"))

    # every memory caption, for the report
    _, _, parsed_all, _ = greedy_parse(model, tok, CAPTIONS)

    caps = [CAPTIONS[i] for i in T5_EXPECTED_IDX]
    enc, out, formatted, raw = greedy_parse(model, tok, caps)
    with torch.no_grad():
        gen_out = model.generate(enc["input_ids"], attention_mask=enc["attention_mask"], use_cache=True,
                                 decoder_start_token_id=0, num_beams=1, max_length=128, early_stopping=True,
                                 output_scores=True, return_dict_in_generate=True)
        assert torch.equal(gen_out.sequences, out)
        for step, sc in enumerate(gen_out.scores):
            unfinished = [b for b in range(out.shape[0]) if 1 not in out[b, 1:step + 1].tolist()]
            for b in unfinished:
                top2 = sc[b].topk(2).values
                MARGINS.add("t5_greedy_top1_top2_logit", top2[0] - top2[1], f"expected/t5 row {b} step {step}")
        enc_h = model.encoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        dec_in = out[:, :3]
        tf_logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                          decoder_input_ids=dec_in).logits
    save_tensors(os.path.join(EXPECTED, "t5.safetensors"), {
        "encoder_last_hidden_state": enc_h, "decoder_logits_first3": tf_logits,
    })
    save_json(os.path.join(EXPECTED, "t5.json"), {
        "inputs": [PREFIX + c for c in caps],
        "input_ids": enc["input_ids"].tolist(),
        "attention_mask": enc["attention_mask"].tolist(),
        "decoder_input_ids_first3": dec_in.tolist(),
        "generate_ids": out.tolist(),
        "decoded": raw,
        "formatted": formatted,
        "memory_parses": [{"caption": c, "target": format_scene_graph(g), "greedy": p}
                          for c, g, p in zip(CAPTIONS, GRAPHS, parsed_all)],
        "tokenizer_check": [{"text": s, "ids": tok(s)["input_ids"], "tokens": tok.tokenize(s)}
                            for s in ["Generate Scene Graph: a café with a red umbrella", "  Two  spaces ,(x)",
                                      "naïve ＦＵＬＬＷＩＤＴＨ text", "unknown ☃ char"]],
    })
    ok = sum(p == format_scene_graph(g) for p, g in zip(parsed_all, GRAPHS))
    print(f"[t5] memory parses exact: {ok}/{len(GRAPHS)}")
