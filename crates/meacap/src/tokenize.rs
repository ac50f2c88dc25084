//! Tokenizers for the four text models, from `tokenizer.json` (or GPT-2's `vocab.json` +
//! `merges.txt`), with their padding and truncation made explicit instead of inherited from
//! whatever the file carries (all-MiniLM's `tokenizer.json` pads to 128, for instance).

use std::collections::HashMap;

use tokenizers::models::bpe::BPE;
use tokenizers::{PaddingParams, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::error::{Error, Result};
use crate::files::ModelFiles;

/// A batch of token ids padded to one length, with its attention mask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub ids: Vec<Vec<u32>>,
    pub attention_mask: Vec<Vec<u32>>,
}

#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    model: String,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TextTokenizer({})", self.model)
    }
}

impl TextTokenizer {
    /// `tokenizer.json` of a model folder.
    pub fn from_tokenizer_json(files: &dyn ModelFiles) -> Result<Self> {
        let model = files.describe();
        let bytes = files.require("tokenizer.json")?;
        let mut inner = Tokenizer::from_bytes(bytes.as_ref().as_ref())
            .map_err(|e| Error::Tokenizer { model: model.clone(), message: format!("tokenizer.json: {e}") })?;
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| Error::Tokenizer { model: model.clone(), message: e.to_string() })?;
        Ok(Self { inner, model })
    }

    /// GPT-2's byte-level BPE: `tokenizer.json`, else built from `vocab.json` + `merges.txt`.
    pub fn gpt2(files: &dyn ModelFiles) -> Result<Self> {
        if files.exists("tokenizer.json") {
            return Self::from_tokenizer_json(files);
        }
        let model = files.describe();
        let err = |message: String| Error::Tokenizer { model: model.clone(), message };
        let vocab_bytes = files.open("vocab.json")?;
        let merges_bytes = files.open("merges.txt")?;
        let (Some(vocab_bytes), Some(merges_bytes)) = (vocab_bytes, merges_bytes) else {
            return Err(err("neither tokenizer.json nor vocab.json + merges.txt is present".into()));
        };
        let vocab: HashMap<String, u32> =
            serde_json::from_slice(vocab_bytes.as_ref().as_ref()).map_err(|e| err(format!("vocab.json: {e}")))?;
        let vocab: tokenizers::models::bpe::Vocab = vocab.into_iter().collect();
        let merges_text = std::str::from_utf8(merges_bytes.as_ref().as_ref()).map_err(|e| err(format!("merges.txt: {e}")))?;
        let mut merges = Vec::new();
        for (n, line) in merges_text.lines().enumerate() {
            if line.starts_with("#version") || line.trim().is_empty() {
                continue;
            }
            let mut parts = line.split(' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(b), None) => merges.push((a.to_string(), b.to_string())),
                _ => return Err(err(format!("merges.txt line {}: expected two symbols, got `{line}`", n + 1))),
            }
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| err(format!("building BPE: {e}")))?;
        let mut inner = Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(tokenizers::pre_tokenizers::byte_level::ByteLevel::new(false, true, true)));
        inner.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::default()));
        Ok(Self { inner, model })
    }

    /// CLIP's BPE: `tokenizer.json`, else built from `vocab.json` + `merges.txt` exactly as
    /// transformers' `CLIPConverter` builds the fast tokenizer (NFC, whitespace collapsing and
    /// lower-casing; CLIP's split pattern; byte-level BPE with `</w>` word ends; BOS/EOS around).
    pub fn clip(files: &dyn ModelFiles) -> Result<Self> {
        if files.exists("tokenizer.json") {
            return Self::from_tokenizer_json(files);
        }
        let model = files.describe();
        let err = |message: String| Error::Tokenizer { model: model.clone(), message };
        let (Some(vocab_bytes), Some(merges_bytes)) = (files.open("vocab.json")?, files.open("merges.txt")?) else {
            return Err(err("neither tokenizer.json nor vocab.json + merges.txt is present".into()));
        };
        let vocab: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(vocab_bytes.as_ref().as_ref()).map_err(|e| err(format!("vocab.json: {e}")))?;
        let id = |token: &str| {
            vocab.get(token).and_then(|v| v.as_u64()).ok_or_else(|| err(format!("vocab.json has no `{token}`")))
        };
        let (bos, eos) = (id("<|startoftext|>")?, id("<|endoftext|>")?);
        let merges_text = std::str::from_utf8(merges_bytes.as_ref().as_ref()).map_err(|e| err(format!("merges.txt: {e}")))?;
        let merges: Vec<&str> = merges_text.lines().filter(|l| !l.starts_with("#version") && !l.trim().is_empty()).collect();
        let special = |id: u64, content: &str| {
            serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                               "rstrip": false, "normalized": true, "special": true})
        };
        let json = serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [special(bos, "<|startoftext|>"), special(eos, "<|endoftext|>")],
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "NFC"},
                {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
                {"type": "Lowercase"}]},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": "'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+"},
                 "behavior": "Removed", "invert": true},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]},
            "post_processor": {"type": "RobertaProcessing", "sep": ["<|endoftext|>", eos], "cls": ["<|startoftext|>", bos],
                               "trim_offsets": false, "add_prefix_space": false},
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": "<|endoftext|>", "continuing_subword_prefix": "",
                      "end_of_word_suffix": "</w>", "fuse_unk": false, "byte_fallback": false,
                      "vocab": vocab, "merges": merges}
        });
        let bytes = serde_json::to_vec(&json).map_err(|e| err(e.to_string()))?;
        let inner = Tokenizer::from_bytes(&bytes).map_err(|e| err(format!("building CLIP BPE: {e}")))?;
        Ok(Self { inner, model })
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Ids of `text`; `special` adds the tokenizer's special tokens (BOS/EOS/CLS/SEP) as its
    /// post-processor says; `max_length` truncates (special tokens included, as HF does).
    pub fn encode(&self, text: &str, special: bool, max_length: Option<usize>) -> Result<Vec<u32>> {
        let tokenizer = self.with_truncation(max_length)?;
        let encoding = tokenizer
            .encode(text, special)
            .map_err(|e| Error::Tokenizer { model: self.model.clone(), message: format!("encoding {text:?}: {e}") })?;
        Ok(encoding.get_ids().to_vec())
    }

    fn with_truncation(&self, max_length: Option<usize>) -> Result<std::borrow::Cow<'_, Tokenizer>> {
        match max_length {
            None => Ok(std::borrow::Cow::Borrowed(&self.inner)),
            Some(max_length) => {
                let mut t = self.inner.clone();
                t.with_truncation(Some(TruncationParams {
                    direction: TruncationDirection::Right,
                    max_length,
                    strategy: TruncationStrategy::LongestFirst,
                    stride: 0,
                }))
                .map_err(|e| Error::Tokenizer { model: self.model.clone(), message: e.to_string() })?;
                Ok(std::borrow::Cow::Owned(t))
            }
        }
    }

    /// A batch padded to its longest row with `pad_id` (HF `padding=True`).
    pub fn encode_batch(&self, texts: &[String], special: bool, max_length: Option<usize>, pad_id: u32) -> Result<Batch> {
        let rows = texts.iter().map(|t| self.encode(t, special, max_length)).collect::<Result<Vec<_>>>()?;
        Ok(pad_batch(rows, pad_id))
    }

    /// Text of `ids` (special tokens kept or skipped), without clean-up.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| Error::Tokenizer { model: self.model.clone(), message: format!("decoding: {e}") })
    }

    /// `decode(..., clean_up_tokenization_spaces=True)` as transformers ≤ 4.x applies it.
    pub fn decode_clean(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        Ok(clean_up_tokenization(&self.decode(ids, skip_special)?))
    }

    /// Exposes the inner tokenizer's padding settings, e.g. to read a pad token.
    pub fn padding(&self) -> Option<&PaddingParams> {
        self.inner.get_padding()
    }
}

/// Pads rows to the longest with `pad_id` and builds the attention mask.
pub fn pad_batch(rows: Vec<Vec<u32>>, pad_id: u32) -> Batch {
    let len = rows.iter().map(Vec::len).max().unwrap_or(0);
    let attention_mask = rows.iter().map(|r| (0..len).map(|i| u32::from(i < r.len())).collect()).collect();
    let ids = rows
        .into_iter()
        .map(|mut r| {
            r.resize(len, pad_id);
            r
        })
        .collect();
    Batch { ids, attention_mask }
}

/// transformers' `clean_up_tokenization`: removes the spaces BPE decoding leaves before
/// punctuation and contractions (`" ."` → `"."`), as GPT-2 and T5 decoding did in 4.19–4.26.
pub fn clean_up_tokenization(text: &str) -> String {
    text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}
