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
use crate::device::block_on;
use crate::models::{ids_tensor, read_f32, rows_tensor};
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

/// Per-stage wall-clock times in milliseconds, in pipeline order (a JSON object in that order).
#[derive(Clone, Debug, Default)]
pub struct Timings(pub Vec<(String, f64)>);

impl Serialize for Timings {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (stage, ms) in &self.0 {
            map.serialize_entry(stage, ms)?;
        }
        map.end()
    }
}

impl Timings {
    fn record<T>(&mut self, stage: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let started = self.start();
        let out = f()?;
        self.stop(stage, started);
        Ok(out)
    }
    fn start(&self) -> Instant {
        Instant::now()
    }
    fn stop(&mut self, stage: &str, started: Instant) {
        self.0.push((stage.to_string(), started.elapsed().as_secs_f64() * 1e3));
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
        block_on(self.encode_async(texts))
    }

    /// [`Self::encode`] with an asynchronous read-back (WebGPU in the browser).
    pub async fn encode_async(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
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
        Ok(read_f32(emb).await?.chunks(d).map(<[f32]>::to_vec).collect())
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
        block_on(self.parse_async(captions, max_input, max_output))
    }

    /// [`Self::parse`] with asynchronous read-backs (WebGPU in the browser).
    pub async fn parse_async(&self, captions: &[String], max_input: usize, max_output: usize) -> Result<Vec<String>> {
        if captions.is_empty() {
            return Ok(Vec::new());
        }
        let inputs: Vec<String> = captions.iter().map(|c| concepts::parser_input(c)).collect();
        let batch = self.tokenizer.encode_batch(&inputs, true, Some(max_input), self.t5.config.pad_token_id)?;
        let generated = self.t5.generate_greedy_async(&batch.ids, &batch.attention_mask, max_output).await?;
        generated
            .iter()
            .map(|ids| Ok(concepts::format_scene_graph(&self.tokenizer.decode_clean(ids, true)?)))
            .collect()
    }
}

/// CLIP and its image preprocessing settings.
pub struct ImageEncoder {
    pub clip: Clip,
    pub image_config: ClipImageConfig,
}

impl ImageEncoder {
    pub fn load(files: &dyn ModelFiles, device: &Device) -> Result<Self> {
        let config = ClipConfig::from_json(&files.describe(), files.require("config.json")?.as_ref().as_ref())?;
        let clip = Clip::load(&Weights::from_model_files(files, device)?, &config)?;
        let image_config = match files.open("preprocessor_config.json")? {
            Some(bytes) => ClipImageConfig::from_json(bytes.as_ref().as_ref()).map_err(|message| Error::Config {
                model: files.describe(),
                file: "preprocessor_config.json".into(),
                message,
            })?,
            None => ClipImageConfig::default(),
        };
        Ok(Self { clip, image_config })
    }
}

/// ViECap's mapping network and fine-tuned GPT-2, with the GPT-2 tokenizer and stop ids.
pub struct CaptionDecoder {
    pub viecap: ClipCaptionModel,
    pub tokenizer: TextTokenizer,
    /// Where the checkpoint came from, for messages.
    pub location: String,
    stop_ids: Vec<u32>,
}

impl CaptionDecoder {
    /// `gpt2` holds the tokenizer and `config.json`; `viecap_file` in `viecap` the weights.
    pub fn load(
        gpt2: &dyn ModelFiles,
        viecap: &dyn ModelFiles,
        viecap_file: &str,
        mapping_heads: usize,
        device: &Device,
    ) -> Result<Self> {
        let gpt_config = Gpt2Config::from_json(&gpt2.describe(), gpt2.require("config.json")?.as_ref().as_ref())?;
        let weights = Weights::new(vec![checkpoint_source(viecap, viecap_file)?], device);
        let model = ClipCaptionModel::load(&weights, &gpt_config, mapping_heads)?;
        let tokenizer = TextTokenizer::gpt2(gpt2)?;
        // ViECap stops on the last id of "." and of " .".
        let stop_ids = [".", " ."]
            .iter()
            .map(|s| tokenizer.encode(s, false, None).map(|ids| ids.last().copied()))
            .collect::<Result<Option<Vec<u32>>>>()?
            .ok_or_else(|| Error::Tokenizer { model: gpt2.describe(), message: "cannot encode \".\"".into() })?;
        Ok(Self { viecap: model, tokenizer, location: viecap.location(viecap_file), stop_ids })
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
        let image = ImageEncoder::load(files.clip, device)?;
        let decoder = CaptionDecoder::load(files.gpt2, files.viecap, files.viecap_file, options.mapping_heads, device)?;
        let parser = SceneGraphParser::load(files.parser, device)?;
        let sbert = SentenceEncoder::load(files.sbert, device)?;
        Self::from_parts(image, decoder, parser, sbert, memory, device, options)
    }

    /// Assembles separately loaded models (the browser loads and frees one model's files at a
    /// time), checking that they fit together.
    pub fn from_parts(
        image: ImageEncoder,
        decoder: CaptionDecoder,
        parser: SceneGraphParser,
        sbert: SentenceEncoder,
        memory: MemoryBank,
        device: &Device,
        options: CaptionOptions,
    ) -> Result<Self> {
        let projection_dim = image.clip.config.projection_dim;
        if memory.dim() != projection_dim {
            return Err(Error::Memory {
                memory: memory.name().to_string(),
                message: format!(
                    "embeddings have {} dimensions but the CLIP model projects to {projection_dim}: the memory was built with another CLIP",
                    memory.dim(),
                ),
            });
        }
        let mapping_input = decoder.viecap.mapping_network.config.clip_hidden_size;
        if mapping_input != projection_dim {
            return Err(Error::StrictLoad {
                file: decoder.location.clone(),
                message: format!("the mapping network takes {mapping_input}-d CLIP features, the CLIP model gives {projection_dim}"),
            });
        }
        Ok(Self {
            device: device.clone(),
            options,
            clip: image.clip,
            image_config: image.image_config,
            viecap: decoder.viecap,
            gpt2_tokenizer: decoder.tokenizer,
            parser,
            sbert,
            memory,
            stop_ids: decoder.stop_ids,
        })
    }

    /// Captions one encoded image (JPEG, PNG, WebP, GIF, BMP).
    pub fn caption(&self, image: &[u8], name: &str) -> Result<Caption> {
        block_on(self.caption_async(image, name))
    }

    /// [`Self::caption`] with asynchronous read-backs (WebGPU in the browser).
    pub async fn caption_async(&self, image: &[u8], name: &str) -> Result<Caption> {
        let mut one = self.caption_batch_async(&[(image, name)]).await?;
        one.pop().unwrap_or_else(|| Err(Error::InvalidInput("no caption came back".into())))
    }

    /// Captions several images together: one result per image, in order; an image that cannot
    /// be decoded (or whose stage fails on its own) gets its error without affecting the others.
    /// Each image's caption is the one [`Self::caption`] gives it (the same arithmetic per image;
    /// only a batch's padding and matmul blocking can move the last bits): the networks run once over
    /// the whole batch (CLIP, the mapping network), the memory is scanned once for up to eight
    /// queries, captions retrieved for several images are parsed once, and beam search steps
    /// every image's beams together, which is where a CPU gains (a decoding step is bound by
    /// reading the weights, now read once for all images). In a batch, each image's
    /// `timings_ms` for a shared stage is the batch's time divided by the images in it.
    /// The outer error is a failure of the batch as a whole (a model or device error).
    pub fn caption_batch(&self, images: &[(&[u8], &str)]) -> Result<Vec<Result<Caption>>> {
        block_on(self.caption_batch_async(images))
    }

    /// [`Self::caption_batch`] with asynchronous read-backs (WebGPU in the browser).
    pub async fn caption_batch_async(&self, images: &[(&[u8], &str)]) -> Result<Vec<Result<Caption>>> {
        let mut results: Vec<Option<Result<Caption>>> = images.iter().map(|_| None).collect();
        // Decoding and preprocessing are per image.
        let mut live: Vec<Live> = Vec::with_capacity(images.len());
        for (slot, (bytes, name)) in images.iter().enumerate() {
            let mut t = Timings::default();
            let prepared = t
                .record("decode_image", || preprocess::decode(bytes, name))
                .and_then(|decoded| {
                    t.record("preprocess", || {
                        Ok((
                            preprocess::preprocess(&decoded, FrontEnd::HuggingFace, &self.image_config)?,
                            preprocess::preprocess(&decoded, FrontEnd::OpenAi, &self.image_config)?,
                        ))
                    })
                });
            match prepared {
                Ok((hf, openai)) => live.push(Live { slot, t, pixels: (hf, openai), hits: Vec::new(), graphs: Vec::new() }),
                Err(e) => results[slot] = Some(Err(e)),
            }
        }
        if !live.is_empty() {
            self.caption_live(&mut live, &mut results).await?;
        }
        Ok(results.into_iter().map(|r| r.unwrap_or_else(|| Err(Error::InvalidInput("image was not captioned".into())))).collect())
    }

    /// The shared stages for the images that decoded; fills `results`.
    async fn caption_live(&self, live: &mut [Live], results: &mut [Option<Result<Caption>>]) -> Result<()> {
        let share = |started: Instant, live: &mut [Live], stage: &str| {
            let ms = started.elapsed().as_secs_f64() * 1e3 / live.len().max(1) as f64;
            for image in live {
                image.t.0.push((stage.to_string(), ms));
            }
        };
        // CLIP: one pass over every image, each image once when both front-ends agree. The stage
        // ends when the retrieval features are back on the host (GPU work is queued lazily).
        let started = Instant::now();
        let s = self.image_config.crop_size;
        let mut pixels: Vec<f32> = Vec::new();
        let (mut retrieval_rows, mut mapping_rows) = (Vec::new(), Vec::new());
        for image in live.iter_mut() {
            let (hf, openai) = std::mem::take(&mut image.pixels);
            let row = pixels.len() / (3 * s * s);
            retrieval_rows.push(row);
            pixels.extend_from_slice(&hf);
            if hf == openai {
                mapping_rows.push(row);
            } else {
                mapping_rows.push(row + 1);
                pixels.extend_from_slice(&openai);
            }
        }
        let count = pixels.len() / (3 * s * s);
        let pixels = Tensor::<1>::from_floats(pixels.as_slice(), &self.device).reshape([count, 3, s, s]);
        let features = self.clip.image_features(pixels)?;
        let rows = |r: &[usize]| rows_tensor(r, &self.device);
        let retrieval_features = if count == live.len() { features.clone() } else { features.clone().select(0, rows(&retrieval_rows)) };
        let mapping_features = if mapping_rows == retrieval_rows { retrieval_features.clone() } else { features.select(0, rows(&mapping_rows)) };
        let dim = retrieval_features.dims()[1];
        let queries: Vec<Vec<f32>> = read_f32(retrieval_features).await?.chunks(dim).map(<[f32]>::to_vec).collect();
        share(started, live, "clip_image");

        let started = Instant::now();
        let hits = self.memory.top_k_many_async(&queries, self.options.memory_caption_num, &self.device).await?;
        for (image, hits) in live.iter_mut().zip(hits) {
            image.hits = hits;
        }
        share(started, live, "retrieval");

        // A caption retrieved for several images is parsed once.
        let started = Instant::now();
        let (unique, index) = unique_strings(live.iter().flat_map(|image| image.hits.iter().map(|h| h.caption.as_str())));
        let parsed =
            self.parser.parse_async(&unique, self.options.parser_max_input, self.options.parser_max_output).await?;
        for image in live.iter_mut() {
            image.graphs = image.hits.iter().map(|h| parsed[index[&h.caption]].clone()).collect();
        }
        share(started, live, "parse");

        // Entities of every image embedded in one batch, each distinct entity once.
        let started = Instant::now();
        let counts: Vec<concepts::EntityCounts> = live.iter().map(|image| concepts::count_entities(&image.graphs)).collect();
        let entities: Vec<Vec<String>> = counts.iter().map(concepts::EntityCounts::entities).collect();
        let (unique, index) = unique_strings(entities.iter().flatten().map(String::as_str));
        let embeddings = self.sbert.encode_async(&unique).await?;
        let ranked: Vec<Result<Concepts>> = counts
            .into_iter()
            .zip(&entities)
            .zip(live.iter())
            .map(|((counts, entities), image)| {
                let rows: Vec<Vec<f32>> = entities.iter().map(|e| embeddings[index[e]].clone()).collect();
                let captions: Vec<&str> = image.hits.iter().map(|h| h.caption.as_str()).collect();
                concepts::rank_with_embeddings(counts, &rows, &captions)
            })
            .collect();
        share(started, live, "concepts");

        let started = Instant::now();
        let norm = mapping_features.clone().powi_scalar(2).sum_dim(1).sqrt();
        let soft = self.viecap.mapping_network.forward(mapping_features / norm);
        share(started, live, "mapping");

        // Images whose concepts or prompt fail drop out here with their error.
        let mut decoding = Vec::new();
        for ((i, image), concept_details) in live.iter().enumerate().zip(ranked) {
            let prepared = concept_details.and_then(|details| {
                let prompt = concepts::compose_prompt(&details.concepts);
                let prompt_ids = self.gpt2_tokenizer.encode(&prompt, false, None)?;
                Ok((details, prompt, prompt_ids))
            });
            match prepared {
                Ok(p) => decoding.push((i, p)),
                Err(e) => results[image.slot] = Some(Err(e)),
            }
        }
        let started = Instant::now();
        let prompts: Vec<(&[u32], Tensor<3>)> =
            decoding.iter().map(|(i, (_, _, ids))| (ids.as_slice(), soft.clone().narrow(0, *i, 1))).collect();
        let beams = self.generate_many_async(&prompts).await?;
        let ms = started.elapsed().as_secs_f64() * 1e3 / decoding.len().max(1) as f64;
        for ((i, (concept_details, prompt, prompt_ids)), beams) in decoding.into_iter().zip(beams) {
            let image = &mut live[i];
            let mut t = std::mem::take(&mut image.t);
            t.0.push(("generate".into(), ms));
            let caption = beams.first().map(|b| b.text.clone()).unwrap_or_default();
            results[image.slot] = Some(Ok(Caption {
                caption,
                concepts: concept_details.concepts.clone(),
                memory: std::mem::take(&mut image.hits),
                scene_graphs: std::mem::take(&mut image.graphs),
                prompt,
                prompt_ids,
                beams,
                concept_details,
                timings_ms: t,
            }));
        }
        Ok(())
    }

    /// Decodes from the hard prompt ids and the soft prompt `[1, k, d]` in the configured order.
    pub fn generate(&self, prompt_ids: &[u32], soft: Tensor<3>) -> Result<Vec<Beam>> {
        block_on(self.generate_async(prompt_ids, soft))
    }

    /// [`Self::generate`] with asynchronous read-backs (WebGPU in the browser).
    pub async fn generate_async(&self, prompt_ids: &[u32], soft: Tensor<3>) -> Result<Vec<Beam>> {
        let mut one = self.generate_many_async(&[(prompt_ids, soft)]).await?;
        Ok(one.pop().unwrap_or_default())
    }

    /// [`Self::generate`] for several images' prompts, decoded together (see
    /// [`decode::beam_search_many`]).
    pub async fn generate_many_async(&self, prompts: &[(&[u32], Tensor<3>)]) -> Result<Vec<Vec<Beam>>> {
        let gpt = &self.viecap.gpt;
        let prefixes: Vec<Tensor<3>> = prompts
            .iter()
            .map(|(prompt_ids, soft)| {
                let hard = gpt.embed_tokens(ids_tensor(&[prompt_ids.to_vec()], &self.device));
                match self.options.prompt_order {
                    PromptOrder::HardFirst => Tensor::cat(vec![hard, soft.clone()], 1),
                    PromptOrder::SoftFirst => Tensor::cat(vec![soft.clone(), hard], 1),
                    PromptOrder::OnlyHard => hard,
                }
            })
            .collect();
        let mut cfg = SearchConfig {
            beam_width: 1,
            max_new_tokens: self.options.max_new_tokens,
            stop_ids: self.stop_ids.clone(),
            ignore_stop: false,
        };
        let hypotheses: Vec<Vec<Hypothesis>> = match self.options.search {
            Search::Beam { width } => {
                cfg.beam_width = width;
                decode::beam_search_many_async(gpt, prefixes, &cfg).await?
            }
            Search::Greedy => decode::greedy_search_many_async(gpt, prefixes, &cfg).await?.into_iter().map(|h| vec![h]).collect(),
        };
        hypotheses
            .into_iter()
            .map(|beams| {
                beams
                    .into_iter()
                    .map(|h| Ok(Beam { text: self.gpt2_tokenizer.decode_clean(&h.tokens, false)?, score: h.score, tokens: h.tokens }))
                    .collect()
            })
            .collect()
    }
}

/// One image on its way through [`Captioner::caption_batch`].
struct Live {
    /// Its index in the batch.
    slot: usize,
    t: Timings,
    /// Preprocessed for the Hugging Face and the OpenAI front-ends (taken by the CLIP stage).
    pixels: (Vec<f32>, Vec<f32>),
    hits: Vec<Hit>,
    graphs: Vec<String>,
}

/// Distinct strings in first-seen order, and each one's index among them.
fn unique_strings<'a>(items: impl Iterator<Item = &'a str>) -> (Vec<String>, std::collections::HashMap<String, usize>) {
    let mut unique = Vec::new();
    let mut index = std::collections::HashMap::new();
    for item in items {
        index.entry(item.to_string()).or_insert_with(|| {
            unique.push(item.to_string());
            unique.len() - 1
        });
    }
    (unique, index)
}
