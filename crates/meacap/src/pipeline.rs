//! MeaCap-InvLM for one image, stage by stage:
//!
//! ```text
//! bytes ─ preprocess(HF) ─ CLIP vision ─ memory top-k ─ captions ─ T5 parse ─ graphs ─ concepts
//! bytes ─ preprocess(OpenAI) ─ CLIP vision ─ normalise ─ mapping network ─ soft prompt
//! concepts ─ "There are c1, c2 in image." ─ GPT-2 wte ─ hard prompt ─┐
//!                                    [hard, soft] / [soft, hard] / [hard] ─ beam search ─ caption
//! ```
//!
//! Each stage is a plain function of owned data; [`Captioner`] only sequences them, loads the
//! models once, and records per-stage timings.

use burn::prelude::*;
use serde::Serialize;
use web_time::Instant;

use crate::concepts::{self, Concepts};
use crate::decode::{self, Hypothesis, SearchConfig};
use crate::error::{Error, Result};
use crate::files::ModelFiles;
use crate::memory::{Hit, MemoryBank};
use crate::models::bert::{Bert, BertConfig};
use crate::models::clip::{Clip, ClipConfig};
use crate::models::gpt2::Gpt2Config;
use crate::models::t5::{T5Config, T5};
use crate::models::viecap::ClipCaptionModel;
use crate::models::{ids_tensor, to_vec};
use crate::preprocess::{self, ClipImageConfig, FrontEnd};
use crate::tokenize::{pad_batch, TextTokenizer};
use crate::weights::{pickle::PickleCheckpoint, safetensors::SafetensorsFile, TensorSource, Weights};

/// Where the soft prompt goes relative to the hard prompt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PromptOrder {
    /// `[hard, soft]`: what `viecap_inference.py` does by default.
    #[default]
    HardFirst,
    /// `[soft, hard]`: the order the released ViECap checkpoints were trained with.
    SoftFirst,
    /// `[hard]` only.
    OnlyHard,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Search {
    Beam { width: usize },
    Greedy,
}

#[derive(Clone, Debug)]
pub struct CaptionOptions {
    /// Retrieved memory captions (`--memory_caption_num`).
    pub memory_caption_num: usize,
    pub prompt_order: PromptOrder,
    pub search: Search,
    pub max_new_tokens: usize,
    /// Heads of the mapping network (not stored in the checkpoint; ViECap uses 8).
    pub mapping_heads: usize,
    /// Parser input/output limits (the original: 128 and 128).
    pub parser_max_input: usize,
    pub parser_max_output: usize,
}

impl Default for CaptionOptions {
    fn default() -> Self {
        Self {
            memory_caption_num: 5,
            prompt_order: PromptOrder::HardFirst,
            search: Search::Beam { width: 5 },
            max_new_tokens: 64,
            mapping_heads: 8,
            parser_max_input: 128,
            parser_max_output: 128,
        }
    }
}

/// The model folders a captioner needs.
pub struct CaptionerFiles<'a> {
    /// HF `CLIPModel` folder (retrieval and the mapping network's image feature).
    pub clip: &'a dyn ModelFiles,
    /// GPT-2 tokenizer and `config.json` (the weights come from the ViECap checkpoint).
    pub gpt2: &'a dyn ModelFiles,
    /// FACTUAL T5 scene-graph parser.
    pub parser: &'a dyn ModelFiles,
    /// SentenceBERT (all-MiniLM-L6-v2).
    pub sbert: &'a dyn ModelFiles,
    /// The folder holding the ViECap checkpoint, and its file name in it.
    pub viecap: &'a dyn ModelFiles,
    pub viecap_file: &'a str,
}

/// Per-stage wall-clock times in milliseconds, in pipeline order.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Timings(pub Vec<(String, f64)>);

impl Timings {
    fn record<T>(&mut self, stage: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let start = Instant::now();
        let out = f()?;
        self.0.push((stage.to_string(), start.elapsed().as_secs_f64() * 1e3));
        Ok(out)
    }
    pub fn total(&self) -> f64 {
        self.0.iter().map(|(_, ms)| ms).sum()
    }
}

/// One decoded beam as text.
#[derive(Clone, Debug, Serialize)]
pub struct Beam {
    pub text: String,
    pub score: f32,
    pub tokens: Vec<u32>,
}

/// Everything the pipeline produced for one image.
#[derive(Clone, Debug, Serialize)]
pub struct Caption {
    pub caption: String,
    pub concepts: Vec<String>,
    pub memory: Vec<Hit>,
    pub scene_graphs: Vec<String>,
    pub prompt: String,
    pub prompt_ids: Vec<u32>,
    pub beams: Vec<Beam>,
    pub concept_details: Concepts,
    pub timings_ms: Timings,
}

/// SentenceBERT: tokenizer + BERT + pooling settings.
pub struct SentenceEncoder {
    pub bert: Bert,
    pub tokenizer: TextTokenizer,
    pub max_seq_length: usize,
}

impl SentenceEncoder {
    pub fn load(files: &dyn ModelFiles, device: &Device) -> Result<Self> {
        let config = BertConfig::from_json(&files.describe(), files.require("config.json")?.as_ref().as_ref())?;
        let weights = Weights::from_model_files(files, device)?;
        let bert = Bert::load(&weights, &config)?;
        let tokenizer = TextTokenizer::from_tokenizer_json(files)?;
        // sentence-transformers truncates at max_seq_length (all-MiniLM-L6-v2: 256).
        let max_seq_length = files
            .open("sentence_bert_config.json")?
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(b.as_ref().as_ref()).ok())
            .and_then(|v| v["max_seq_length"].as_u64())
            .map_or(config.max_position_embeddings, |n| n as usize)
            .min(config.max_position_embeddings);
        Ok(Self { bert, tokenizer, max_seq_length })
    }

    /// L2-normalised embeddings, one row per text.
    pub fn encode(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let rows = texts
            .iter()
            .map(|t| self.tokenizer.encode(t, true, Some(self.max_seq_length)))
            .collect::<Result<Vec<_>>>()?;
        let pad = self.tokenizer.token_to_id("[PAD]").unwrap_or(0);
        let batch = pad_batch(rows, pad);
        let emb = self.bert.sentence_embeddings(&batch.ids, &batch.attention_mask)?;
        let d = emb.dims()[1];
        Ok(to_vec(emb)?.chunks(d).map(<[f32]>::to_vec).collect())
    }
}

/// The FACTUAL parser: T5 + its tokenizer.
pub struct SceneGraphParser {
    pub t5: T5,
    pub tokenizer: TextTokenizer,
}

impl SceneGraphParser {
    pub fn load(files: &dyn ModelFiles, device: &Device) -> Result<Self> {
        let config = T5Config::from_json(&files.describe(), files.require("config.json")?.as_ref().as_ref())?;
        let weights = Weights::from_model_files(files, device)?;
        Ok(Self { t5: T5::load(&weights, &config)?, tokenizer: TextTokenizer::from_tokenizer_json(files)? })
    }

    /// Captions → formatted scene-graph strings, batched (the original's `parse`).
    pub fn parse(&self, captions: &[String], max_input: usize, max_output: usize) -> Result<Vec<String>> {
        if captions.is_empty() {
            return Ok(Vec::new());
        }
        let inputs: Vec<String> = captions.iter().map(|c| concepts::parser_input(c)).collect();
        let batch = self.tokenizer.encode_batch(&inputs, true, Some(max_input), self.t5.config.pad_token_id)?;
        let generated = self.t5.generate_greedy(&batch.ids, &batch.attention_mask, max_output)?;
        generated
            .iter()
            .map(|ids| Ok(concepts::format_scene_graph(&self.tokenizer.decode_clean(ids, true)?)))
            .collect()
    }
}

pub struct Captioner {
    pub device: Device,
    pub options: CaptionOptions,
    pub clip: Clip,
    pub image_config: ClipImageConfig,
    pub viecap: ClipCaptionModel,
    pub gpt2_tokenizer: TextTokenizer,
    pub parser: SceneGraphParser,
    pub sbert: SentenceEncoder,
    pub memory: MemoryBank,
    stop_ids: Vec<u32>,
}

/// Opens a `.pt` (zip+pickle) or `.safetensors` checkpoint by its name.
fn checkpoint_source(files: &dyn ModelFiles, name: &str) -> Result<Box<dyn TensorSource>> {
    let bytes = files.require(name)?;
    let location = files.location(name);
    if name.ends_with(".safetensors") {
        Ok(Box::new(SafetensorsFile::parse(location, bytes)?))
    } else {
        Ok(Box::new(PickleCheckpoint::parse(location, bytes)?))
    }
}

impl Captioner {
    /// Loads every model once. `memory` is an already-opened memory bank.
    pub fn load(files: &CaptionerFiles<'_>, memory: MemoryBank, device: &Device, options: CaptionOptions) -> Result<Self> {
        let clip_config = ClipConfig::from_json(&files.clip.describe(), files.clip.require("config.json")?.as_ref().as_ref())?;
        let clip = Clip::load(&Weights::from_model_files(files.clip, device)?, &clip_config)?;
        let image_config = match files.clip.open("preprocessor_config.json")? {
            Some(bytes) => ClipImageConfig::from_json(bytes.as_ref().as_ref()).map_err(|message| Error::Config {
                model: files.clip.describe(),
                file: "preprocessor_config.json".into(),
                message,
            })?,
            None => ClipImageConfig::default(),
        };
        if memory.dim() != clip_config.projection_dim {
            return Err(Error::Memory {
                memory: memory.name().to_string(),
                message: format!(
                    "embeddings have {} dimensions but the CLIP model projects to {}: the memory was built with another CLIP",
                    memory.dim(),
                    clip_config.projection_dim
                ),
            });
        }
        let gpt_config = Gpt2Config::from_json(&files.gpt2.describe(), files.gpt2.require("config.json")?.as_ref().as_ref())?;
        let viecap_weights = Weights::new(vec![checkpoint_source(files.viecap, files.viecap_file)?], device);
        let viecap = ClipCaptionModel::load(&viecap_weights, &gpt_config, options.mapping_heads)?;
        if viecap.mapping_network.config.clip_hidden_size != clip_config.projection_dim {
            return Err(Error::StrictLoad {
                file: files.viecap.location(files.viecap_file),
                message: format!(
                    "the mapping network takes {}-d CLIP features, the CLIP model gives {}",
                    viecap.mapping_network.config.clip_hidden_size, clip_config.projection_dim
                ),
            });
        }
        let gpt2_tokenizer = TextTokenizer::gpt2(files.gpt2)?;
        // ViECap stops on the last id of "." and of " .".
        let stop_ids = [".", " ."]
            .iter()
            .map(|s| gpt2_tokenizer.encode(s, false, None).map(|ids| ids.last().copied()))
            .collect::<Result<Option<Vec<u32>>>>()?
            .ok_or_else(|| Error::Tokenizer { model: files.gpt2.describe(), message: "cannot encode \".\"".into() })?;
        Ok(Self {
            parser: SceneGraphParser::load(files.parser, device)?,
            sbert: SentenceEncoder::load(files.sbert, device)?,
            device: device.clone(),
            options,
            clip,
            image_config,
            viecap,
            gpt2_tokenizer,
            memory,
            stop_ids,
        })
    }

    fn pixels(&self, values: Vec<f32>) -> Tensor<4> {
        let s = self.image_config.crop_size;
        Tensor::<1>::from_floats(values.as_slice(), &self.device).reshape([1, 3, s, s])
    }

    /// Captions one encoded image (JPEG, PNG, WebP, GIF, BMP).
    pub fn caption(&self, image: &[u8], name: &str) -> Result<Caption> {
        let mut t = Timings::default();
        let decoded = t.record("decode_image", || preprocess::decode(image, name))?;
        let (hf, openai) = t.record("preprocess", || {
            Ok((
                preprocess::preprocess(&decoded, FrontEnd::HuggingFace, &self.image_config)?,
                preprocess::preprocess(&decoded, FrontEnd::OpenAi, &self.image_config)?,
            ))
        })?;
        // One CLIP pass when both front-ends agree, else one batch of two.
        let (retrieval_features, mapping_features) = t.record("clip_image", || {
            if hf == openai {
                let f = self.clip.image_features(self.pixels(hf.clone()))?;
                Ok((f.clone(), f))
            } else {
                let s = self.image_config.crop_size;
                let both: Vec<f32> = hf.iter().chain(openai.iter()).copied().collect();
                let pixels = Tensor::<1>::from_floats(both.as_slice(), &self.device).reshape([2, 3, s, s]);
                let f = self.clip.image_features(pixels)?;
                Ok((f.clone().narrow(0, 0, 1), f.narrow(0, 1, 1)))
            }
        })?;
        let query = to_vec(retrieval_features)?;
        let memory = t.record("retrieval", || self.memory.top_k(&query, self.options.memory_caption_num, &self.device))?;
        let captions: Vec<String> = memory.iter().map(|h| h.caption.clone()).collect();
        let scene_graphs = t.record("parse", || {
            self.parser.parse(&captions, self.options.parser_max_input, self.options.parser_max_output)
        })?;
        let concept_details =
            t.record("concepts", || concepts::retrieve_concepts(&scene_graphs, &captions, |texts| self.sbert.encode(texts)))?;
        let concepts = concept_details.concepts.clone();
        let soft = t.record("mapping", || {
            let norm = mapping_features.clone().powi_scalar(2).sum_dim(1).sqrt();
            Ok(self.viecap.mapping_network.forward(mapping_features / norm))
        })?;
        let prompt = concepts::compose_prompt(&concepts);
        let prompt_ids = self.gpt2_tokenizer.encode(&prompt, false, None)?;
        let beams = t.record("generate", || self.generate(&prompt_ids, soft))?;
        let caption = beams.first().map(|b| b.text.clone()).unwrap_or_default();
        Ok(Caption { caption, concepts, memory, scene_graphs, prompt, prompt_ids, beams, concept_details, timings_ms: t })
    }

    /// Decodes from the hard prompt ids and the soft prompt `[1, k, d]` in the configured order.
    pub fn generate(&self, prompt_ids: &[u32], soft: Tensor<3>) -> Result<Vec<Beam>> {
        let gpt = &self.viecap.gpt;
        let hard = gpt.embed_tokens(ids_tensor(&[prompt_ids.to_vec()], &self.device));
        let prefix = match self.options.prompt_order {
            PromptOrder::HardFirst => Tensor::cat(vec![hard, soft], 1),
            PromptOrder::SoftFirst => Tensor::cat(vec![soft, hard], 1),
            PromptOrder::OnlyHard => hard,
        };
        let mut cfg = SearchConfig {
            beam_width: 1,
            max_new_tokens: self.options.max_new_tokens,
            stop_ids: self.stop_ids.clone(),
            ignore_stop: false,
        };
        let hypotheses: Vec<Hypothesis> = match self.options.search {
            Search::Beam { width } => {
                cfg.beam_width = width;
                decode::beam_search(gpt, prefix, &cfg)?
            }
            Search::Greedy => vec![decode::greedy_search(gpt, prefix, &cfg)?],
        };
        hypotheses
            .into_iter()
            .map(|h| Ok(Beam { text: self.gpt2_tokenizer.decode_clean(&h.tokens, false)?, score: h.score, tokens: h.tokens }))
            .collect()
    }
}
