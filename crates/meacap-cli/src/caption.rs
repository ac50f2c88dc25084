//! `meacap-wgpu caption`: the seed's `python viecap_inference.py ...` as a command.

use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use meacap::device::{self, DeviceChoice};
use meacap::pipeline::{CaptionOptions, Captioner, CaptionerFiles, PromptOrder, Search};

use crate::files::DirFiles;

#[derive(Args, Debug, Clone)]
pub struct CaptionArgs {
    /// Images: files, folders (their images, sorted) or glob patterns. Repeatable.
    #[arg(long = "image-path", alias = "image_path", alias = "image", num_args = 1.., required = true)]
    pub image_path: Vec<String>,

    #[command(flatten)]
    pub models: ModelArgs,

    /// Retrieved memory captions (the original's --memory_caption_num).
    #[arg(long = "memory-caption-num", alias = "memory_caption_num", default_value_t = 5)]
    pub memory_caption_num: usize,

    /// Put the soft prompt before the hard prompt (the order the released checkpoints were trained with).
    #[arg(long = "soft-prompt-first", alias = "soft_prompt_first")]
    pub soft_prompt_first: bool,

    /// Use only the hard (concept) prompt.
    #[arg(long = "only-hard-prompt", alias = "only_hard_prompt")]
    pub only_hard_prompt: bool,

    /// Accepted for compatibility: the original always uses the hard prompt.
    #[arg(long = "using-hard-prompt", alias = "using_hard_prompt", hide = true)]
    pub using_hard_prompt: bool,

    /// Greedy decoding instead of beam search.
    #[arg(long = "using-greedy-search", alias = "using_greedy_search")]
    pub using_greedy_search: bool,

    #[arg(long = "beam-width", alias = "beam_width", default_value_t = 5)]
    pub beam_width: usize,

    /// Images captioned together: the networks and the memory scan run once per batch and beam
    /// search steps every image's beams at once (on a CPU a decoding step costs about the same
    /// for 1 or 8 images). Captions are the same as one at a time. 1 = one image at a time.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub batch: u16,

    /// Print one JSON object per image on stdout.
    #[arg(long)]
    pub json: bool,

    /// Append one JSON line per finished image to FILE; images already in it are skipped.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Original flags without effect in the original either (kept so old command lines run).
    #[arg(long, hide = true)]
    pub temperature: Option<f64>,
    #[arg(long = "top_k", alias = "top-k", hide = true)]
    pub top_k: Option<usize>,
    #[arg(long, hide = true)]
    pub threshold: Option<f64>,
    #[arg(long = "disable_all_entities", hide = true)]
    pub disable_all_entities: bool,
    #[arg(long = "name_of_entities_text", hide = true)]
    pub name_of_entities_text: Option<String>,
    #[arg(long = "prompt_ensemble", hide = true)]
    pub prompt_ensemble: bool,
    #[arg(long = "continuous_prompt_length", hide = true)]
    pub continuous_prompt_length: Option<usize>,
    #[arg(long = "clip_project_length", hide = true)]
    pub clip_project_length: Option<usize>,
    #[arg(long = "text_prompt", hide = true)]
    pub text_prompt: Option<String>,
    #[arg(long = "memory_caption_path", hide = true)]
    pub memory_caption_path: Option<String>,
    #[arg(long = "clip_model", hide = true)]
    pub clip_model: Option<String>,
}

/// Where models come from and what runs them; shared by caption, doctor and bench.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Root of the local model tree (default ./checkpoints).
    #[arg(long, env = "MEACAP_CHECKPOINTS", value_name = "DIR")]
    pub checkpoints: Option<PathBuf>,

    /// Never touch the network (also HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE = 1).
    #[arg(long, alias = "offline_mode", alias = "offline-mode")]
    pub offline: bool,

    /// CLIP model: a folder or a hub id.
    #[arg(long = "vl-model", alias = "vl_model", value_name = "DIR|ID")]
    pub vl_model: Option<String>,

    /// GPT-2 tokenizer and config: a folder or a hub id.
    #[arg(long = "language-model", alias = "language_model", value_name = "DIR|ID")]
    pub language_model: Option<String>,

    /// Scene-graph parser: a folder or a hub id.
    #[arg(long = "parser-checkpoint", alias = "parser_checkpoint", value_name = "DIR|ID")]
    pub parser_checkpoint: Option<String>,

    /// SentenceBERT: a folder or a hub id.
    #[arg(long = "wte-model-path", alias = "wte_model_path", value_name = "DIR|ID")]
    pub wte_model_path: Option<String>,

    /// ViECap checkpoint (.pt).
    #[arg(long = "weight-path", alias = "weight_path", value_name = "FILE")]
    pub weight_path: Option<String>,

    /// Memory bank id: data/memory/<id>/.
    #[arg(long = "memory-id", alias = "memory_id", default_value = "coco")]
    pub memory_id: String,

    /// Folder holding memory banks (default ./data/memory).
    #[arg(long = "memory-dir", alias = "memory_dir", value_name = "DIR")]
    pub memory_dir: Option<PathBuf>,

    /// auto (a GPU if wgpu finds one, else CPU), cpu, or wgpu. `cuda:N` means wgpu.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

impl ModelArgs {
    pub fn device_choice(&self) -> Result<DeviceChoice> {
        if self.device.starts_with("cuda") {
            return Ok(DeviceChoice::Wgpu);
        }
        self.device.parse().map_err(anyhow::Error::msg)
    }
}

const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"];

/// Expands files, folders and glob patterns into a sorted, de-duplicated image list.
pub fn expand_images(patterns: &[String]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for pattern in patterns {
        let path = Path::new(pattern);
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("reading folder {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && p.extension().and_then(|e| e.to_str()).is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
                })
                .collect();
            found.sort();
            out.extend(found);
        } else if path.exists() {
            out.push(path.to_path_buf());
        } else if pattern.contains(['*', '?', '[']) {
            let mut found: Vec<PathBuf> = glob::glob(pattern)
                .with_context(|| format!("bad glob pattern {pattern:?}"))?
                .filter_map(|p| p.ok())
                .filter(|p| p.is_file())
                .collect();
            if found.is_empty() {
                bail!("no file matches {pattern:?}");
            }
            found.sort();
            out.extend(found);
        } else {
            // Reported per image later, so a batch goes on past a missing file.
            out.push(path.to_path_buf());
        }
    }
    let mut seen = HashSet::new();
    out.retain(|p| seen.insert(p.clone()));
    Ok(out)
}

/// Images already captioned in an `--output` file (by the `image` field of each JSON line).
fn already_done(output: &Path) -> Result<HashSet<String>> {
    let mut done = HashSet::new();
    let file = match std::fs::File::open(output) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(done),
        Err(e) => return Err(e).with_context(|| format!("reading {}", output.display())),
    };
    for line in std::io::BufReader::new(file).lines() {
        let line = line?;
        // A line cut short by an interrupted run is ignored: that image is captioned again.
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
            if let (Some(image), None) = (v["image"].as_str(), v.get("error")) {
                done.insert(image.to_string());
            }
        }
    }
    Ok(done)
}

/// Writes one line to stdout. A closed pipe (`... | head`) ends the program quietly instead of
/// panicking as `println!` would; everything finished is already in `--output`.
fn stdout_line(line: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{line}").and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        other => Ok(other?),
    }
}

pub fn run(args: CaptionArgs) -> Result<ExitCode> {
    let options = CaptionOptions {
        memory_caption_num: args.memory_caption_num,
        prompt_order: if args.only_hard_prompt {
            PromptOrder::OnlyHard
        } else if args.soft_prompt_first {
            PromptOrder::SoftFirst
        } else {
            PromptOrder::HardFirst
        },
        search: if args.using_greedy_search { Search::Greedy } else { Search::Beam { width: args.beam_width } },
        ..CaptionOptions::default()
    };
    let images = expand_images(&args.image_path)?;
    let done = match &args.output {
        Some(path) => already_done(path)?,
        None => HashSet::new(),
    };
    let todo: Vec<PathBuf> = images.into_iter().filter(|p| !done.contains(&p.display().to_string())).collect();
    if todo.is_empty() {
        eprintln!("nothing to do: every image is already in the output file");
        return Ok(ExitCode::SUCCESS);
    }

    let selected = device::select(args.models.device_choice()?)?;
    let models = crate::models::resolve_for_caption(&args.models)?;
    let memory = crate::models::open_memory(&models.memory, &selected.device)?;
    let clip = DirFiles::new("clip", &models.clip);
    let gpt2 = DirFiles::new("gpt2", &models.gpt2);
    let parser = DirFiles::new("parser", &models.parser);
    let sbert = DirFiles::new("sbert", &models.sbert);
    let viecap_dir = models.viecap.parent().unwrap_or(Path::new(".")).to_path_buf();
    let viecap_file = models.viecap.file_name().and_then(|f| f.to_str()).unwrap_or_default().to_string();
    let viecap = DirFiles::new("viecap", &viecap_dir);
    let files = CaptionerFiles { clip: &clip, gpt2: &gpt2, parser: &parser, sbert: &sbert, viecap: &viecap, viecap_file: &viecap_file };
    let load_start = std::time::Instant::now();
    let captioner = Captioner::load(&files, memory, &selected.device, options).context("loading the models")?;
    eprintln!("models loaded in {:.1}s on {}", load_start.elapsed().as_secs_f64(), selected.description);

    let mut output = match &args.output {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?,
        ),
        None => None,
    };
    let progress = (todo.len() > 1).then(|| {
        let bar = indicatif::ProgressBar::new(todo.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} images, {elapsed} elapsed, ETA {eta} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let mut failures = 0usize;
    for chunk in todo.chunks(usize::from(args.batch)) {
        let names: Vec<String> = chunk.iter().map(|p| p.display().to_string()).collect();
        let read: Vec<std::io::Result<Vec<u8>>> = chunk.iter().map(std::fs::read).collect();
        let results = caption_chunk(&captioner, &names, &read);
        for (name, result) in names.iter().zip(results) {
            let line = match result {
                Ok(caption) => {
                    let mut value = serde_json::to_value(&caption)?;
                    value["image"] = serde_json::Value::String(name.clone());
                    if args.json {
                        stdout_line(&serde_json::to_string(&value)?)?;
                    } else {
                        let msg = format!("{name}: {}", caption.caption);
                        // suspend, not bar.println: the latter is dropped when stderr is not a terminal.
                        match &progress {
                            Some(bar) => bar.suspend(|| stdout_line(&msg))?,
                            None => stdout_line(&msg)?,
                        }
                    }
                    Some(value)
                }
                Err(err) => {
                    failures += 1;
                    let msg = format!("error: {name}: {err}");
                    match &progress {
                        Some(bar) => bar.suspend(|| eprintln!("{msg}")),
                        None => eprintln!("{msg}"),
                    }
                    None
                }
            };
            if let (Some(file), Some(value)) = (output.as_mut(), line) {
                // One line per image, flushed at once: an interrupted run loses nothing it finished.
                writeln!(file, "{}", serde_json::to_string(&value)?)?;
                file.flush()?;
            }
            if let Some(bar) = &progress {
                bar.inc(1);
            }
        }
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    if failures > 0 {
        eprintln!("{failures} of {} images failed", todo.len());
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// Captions one batch of files: one result per file. Unreadable files get their error; if the
/// batch fails as a whole (a model or device error), each image is retried alone so the error
/// lands on the image that causes it and the others are still captioned.
fn caption_chunk(captioner: &Captioner, names: &[String], read: &[std::io::Result<Vec<u8>>]) -> Vec<meacap::Result<meacap::pipeline::Caption>> {
    let unreadable = |name: &str, e: &std::io::Error| meacap::Error::Image { image: name.to_string(), message: format!("cannot read: {e}") };
    let batch: Vec<(&[u8], &str)> = names
        .iter()
        .zip(read)
        .filter_map(|(name, bytes)| bytes.as_ref().ok().map(|b| (b.as_slice(), name.as_str())))
        .collect();
    let mut captioned = match captioner.caption_batch(&batch) {
        Ok(results) => results.into_iter(),
        Err(e) if batch.len() > 1 => {
            eprintln!("warning: a batch of {} images failed ({e}); captioning them one at a time", batch.len());
            batch.iter().map(|(bytes, name)| captioner.caption(bytes, name)).collect::<Vec<_>>().into_iter()
        }
        Err(e) => vec![Err(e)].into_iter(),
    };
    names
        .iter()
        .zip(read)
        .map(|(name, bytes)| match bytes {
            Ok(_) => captioned.next().unwrap_or_else(|| Err(meacap::Error::InvalidInput(format!("{name}: no result")))),
            Err(e) => Err(unreadable(name, e)),
        })
        .collect()
}
