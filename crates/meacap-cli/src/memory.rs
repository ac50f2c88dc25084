//! `meacap-wgpu memory convert` (MeaCap `.pt` folder → our safetensors format) and
//! `meacap-wgpu memory build` (captions → CLIP + SBERT embeddings → a bank), as MeaCap's
//! `prepare_embedding.py` does it, but resumable: embeddings go to part files batch by batch, so
//! an interrupted build of millions of captions continues where it stopped.
//!
//! Every final file is written to a temporary name in the output folder and renamed into place, so
//! a bank folder never holds a half-written file under its real name.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use meacap::memory::{
    captions_fingerprint, captions_json, convert_to_native, EmbeddingPart, NativeMemoryWriter, StoreDtype, CAPTIONS_FILE,
    NATIVE_FILE,
};
use meacap_hub::Role;

use crate::caption::ModelArgs;
use crate::files::{map_file, DirFiles};

/// Test hook: `MEACAP_TEST_STOP_AFTER_BATCHES=N` makes `memory build` exit (code 3) after N
/// batches, as if interrupted, so the tests can check that a rerun resumes. Not for users.
pub const STOP_AFTER_BATCHES_VAR: &str = "MEACAP_TEST_STOP_AFTER_BATCHES";

/// CLIP text length used by MeaCap's memory builder (`max_length=50, truncation=True`).
const CLIP_MAX_LENGTH: usize = 50;

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtypeArg {
    F32,
    F16,
}

impl From<DtypeArg> for StoreDtype {
    fn from(d: DtypeArg) -> Self {
        match d {
            DtypeArg::F32 => StoreDtype::F32,
            DtypeArg::F16 => StoreDtype::F16,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct BuildArgs {
    /// Captions: a JSON array of strings (.json) or one caption per line (any other extension).
    #[arg(long, value_name = "FILE")]
    pub captions: PathBuf,

    /// Output bank folder, e.g. data/memory/NAME (created if needed).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// Stored element type; f16 halves the file at ~1e-3 relative precision.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DtypeArg,

    /// Captions per batch (MeaCap's builder uses 128).
    #[arg(long = "batch-size", alias = "batch_size", default_value_t = 128)]
    pub batch_size: usize,

    /// Skip the SBERT embeddings (only MeaCap-TF uses them).
    #[arg(long = "no-wte")]
    pub no_wte: bool,

    #[command(flatten)]
    pub models: ModelArgs,
}

#[derive(Args, Debug, Clone)]
pub struct ConvertArgs {
    /// MeaCap memory folder (memory_captions.json + memory_clip_embeddings.pt).
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,

    /// Output folder (created if needed); may be the same folder.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DtypeArg,

    /// Also store memory_wte_embeddings.pt (SBERT rows) when present.
    #[arg(long = "with-wte")]
    pub with_wte: bool,
}

/// A file being written under a temporary name in its final folder.
struct AtomicFile {
    tmp: PathBuf,
    dest: PathBuf,
}

impl AtomicFile {
    fn create(dest: &Path) -> Result<(Self, BufWriter<File>)> {
        let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = dest.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
        let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        Ok((Self { tmp, dest: dest.to_path_buf() }, BufWriter::with_capacity(1 << 20, file)))
    }

    fn commit(self, writer: BufWriter<File>) -> Result<()> {
        let file = writer.into_inner().map_err(|e| e.into_error()).with_context(|| format!("writing {}", self.tmp.display()))?;
        file.sync_all().with_context(|| format!("syncing {}", self.tmp.display()))?;
        std::fs::rename(&self.tmp, &self.dest)
            .with_context(|| format!("renaming {} to {}", self.tmp.display(), self.dest.display()))?;
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        // After a failed write the temporary is useless; after a commit it no longer exists.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<()> {
    let (file, mut w) = AtomicFile::create(dest)?;
    w.write_all(bytes).with_context(|| format!("writing {}", dest.display()))?;
    file.commit(w)
}

pub fn convert(args: ConvertArgs) -> Result<ExitCode> {
    if !args.from.join(CAPTIONS_FILE).is_file() {
        bail!("{} has no {CAPTIONS_FILE}: expected a MeaCap memory folder", args.from.display());
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let files = DirFiles::new("memory", &args.from);
    let dest = args.out.join(NATIVE_FILE);
    let (tmp, writer) = AtomicFile::create(&dest)?;
    let (captions, writer) = convert_to_native(&files, writer, args.dtype.into(), args.with_wte)
        .with_context(|| format!("converting {}", args.from.display()))?;
    tmp.commit(writer)?;
    write_atomic(&args.out.join(CAPTIONS_FILE), &captions)?;
    let size = std::fs::metadata(&dest).map(|m| m.len()).unwrap_or(0);
    println!("✓ wrote {} ({:.1} MiB) and {CAPTIONS_FILE}", dest.display(), size as f64 / (1024.0 * 1024.0));
    println!("  use it with: meacap-wgpu caption --memory-dir {} ...", args.out.display());
    Ok(ExitCode::SUCCESS)
}

/// Captions from a JSON array or a text file (one per line; blank lines skipped).
fn read_caption_list(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let is_json = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let captions: Vec<String> = if is_json {
        serde_json::from_str(&text).with_context(|| format!("{} is not a JSON array of strings", path.display()))?
    } else {
        text.lines().map(|l| l.trim_end_matches('\r')).filter(|l| !l.trim().is_empty()).map(str::to_string).collect()
    };
    if captions.is_empty() {
        bail!("{} holds no captions", path.display());
    }
    Ok(captions)
}

/// CLIP's pad token id from its tokenizer files (`pad_token`, a string or `{content}`), as
/// CLIPTokenizerFast pads; `<|endoftext|>` when the files do not say.
fn clip_pad_id(dir: &Path, tokenizer: &meacap::tokenize::TextTokenizer) -> Result<u32> {
    let mut name = None;
    for file in ["special_tokens_map.json", "tokenizer_config.json"] {
        let Ok(bytes) = std::fs::read(dir.join(file)) else { continue };
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes) else { continue };
        let pad = &value["pad_token"];
        if let Some(s) = pad.as_str().or_else(|| pad["content"].as_str()) {
            name = Some(s.to_string());
            break;
        }
    }
    let name = name.unwrap_or_else(|| "<|endoftext|>".to_string());
    tokenizer
        .token_to_id(&name)
        .with_context(|| format!("the CLIP tokenizer in {} has no pad token {name:?}", dir.display()))
}

/// FNV-1a of some bytes, for short fingerprints.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// One resumable embedding stream (`<out>/<name>.part`).
struct Part {
    path: PathBuf,
    file: File,
    dim: usize,
    rows_done: usize,
}

impl Part {
    /// Opens (checking it belongs to this build) or creates a part file.
    fn open(path: PathBuf, dim: usize, rows: usize, fingerprint: &str) -> Result<Self> {
        let header = EmbeddingPart::header(dim, rows, fingerprint)?;
        if path.is_file() {
            let bytes = map_file(&path).with_context(|| format!("reading {}", path.display()))?;
            let state = EmbeddingPart::inspect(bytes.as_ref().as_ref(), dim, rows, fingerprint)
                .with_context(|| format!("resuming from {}", path.display()))?;
            drop(bytes);
            let file = OpenOptions::new().read(true).write(true).open(&path).with_context(|| format!("opening {}", path.display()))?;
            Ok(Self { path, file, dim, rows_done: state.rows_done })
        } else {
            let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            file.write_all(&header).with_context(|| format!("writing {}", path.display()))?;
            Ok(Self { path, file, dim, rows_done: 0 })
        }
    }

    /// Drops everything past `rows` (a torn last write, or rows the other part lacks).
    fn truncate_to(&mut self, rows: usize) -> Result<()> {
        let len = (EmbeddingPart::HEADER_LEN + rows * self.dim * 4) as u64;
        self.file.set_len(len).with_context(|| format!("truncating {}", self.path.display()))?;
        self.file.seek(SeekFrom::Start(len))?;
        self.rows_done = rows;
        Ok(())
    }

    fn append(&mut self, rows: &[f32]) -> Result<()> {
        let bytes = EmbeddingPart::encode_rows(rows, self.dim)?;
        self.file.write_all(&bytes).with_context(|| format!("writing {}", self.path.display()))?;
        // Data first, then the next batch: after a crash the file ends at a batch boundary or
        // inside the last batch, which `inspect` trims to whole rows.
        self.file.sync_data().with_context(|| format!("syncing {}", self.path.display()))?;
        self.rows_done += rows.len() / self.dim;
        Ok(())
    }
}

pub fn build(args: BuildArgs) -> Result<ExitCode> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let captions = read_caption_list(&args.captions)?;
    let n = captions.len();
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;

    let resolver = crate::models::resolver(&args.models);
    let clip_dir = resolver.resolve(Role::Clip)?.path;
    let sbert_dir = if args.no_wte { None } else { Some(resolver.resolve(Role::Sbert)?.path) };
    let selected = meacap::device::select(args.models.device_choice()?)?;
    let device = &selected.device;

    let clip_files = DirFiles::new("clip", &clip_dir);
    let config_bytes = std::fs::read(clip_dir.join("config.json")).with_context(|| format!("reading {}/config.json", clip_dir.display()))?;
    let config = meacap::models::clip::ClipConfig::from_json(&clip_files_describe(&clip_files), &config_bytes)?;
    let clip = meacap::models::clip::Clip::load(&meacap::weights::Weights::from_model_files(&clip_files, device)?, &config)
        .context("loading CLIP")?;
    let tokenizer = meacap::tokenize::TextTokenizer::clip(&clip_files)?;
    let pad_id = clip_pad_id(&clip_dir, &tokenizer)?;
    let sbert = match &sbert_dir {
        Some(dir) => Some(meacap::pipeline::SentenceEncoder::load(&DirFiles::new("sbert", dir), device).context("loading SBERT")?),
        None => None,
    };
    let dim = config.projection_dim;
    let wte_dim = match &sbert {
        Some(s) => Some(s.encode(&captions[..1])?.first().map_or(0, Vec::len)),
        None => None,
    };

    // Ties the part files to these captions and these models: a rerun with anything else starts over
    // only after the user deletes them (inspect refuses the mismatch).
    let captions_fp = captions_fingerprint(&captions);
    let model_fp = |dir: &Path| fnv(&std::fs::read(dir.join("config.json")).unwrap_or_default());
    let clip_fp = format!("{captions_fp}-clip{:08x}", model_fp(&clip_dir) as u32);
    let mut clip_part = Part::open(args.out.join("memory.clip.part"), dim, n, &clip_fp)?;
    let mut wte_part = match (&sbert_dir, wte_dim) {
        (Some(dir), Some(e)) => {
            let fp = format!("{captions_fp}-sbert{:08x}", model_fp(dir) as u32);
            Some((Part::open(args.out.join("memory.wte.part"), e, n, &fp)?, fp))
        }
        _ => None,
    };
    let start = clip_part.rows_done.min(wte_part.as_ref().map_or(n, |(p, _)| p.rows_done));
    clip_part.truncate_to(start)?;
    if let Some((p, _)) = wte_part.as_mut() {
        p.truncate_to(start)?;
    }
    if start > 0 {
        eprintln!("resuming: {start} of {n} captions already embedded");
    }
    eprintln!("embedding {n} captions on {}", selected.description);

    let stop_after: Option<usize> = std::env::var(STOP_AFTER_BATCHES_VAR).ok().and_then(|v| v.parse().ok());
    let bar = indicatif::ProgressBar::new(n as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} captions, {elapsed} elapsed, ETA {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_position(start as u64);
    let mut batches = 0usize;
    let mut at = start;
    while at < n {
        let end = (at + args.batch_size).min(n);
        let batch = &captions[at..end];
        // CLIPTokenizerFast(padding=True, max_length=50, truncation=True), as MeaCap's builder.
        let tokens = tokenizer.encode_batch(batch, true, Some(CLIP_MAX_LENGTH), pad_id)?;
        let features = clip.text_features(&tokens.ids, &tokens.attention_mask)?;
        let rows = meacap::models::to_vec(features)?;
        clip_part.append(&rows).with_context(|| format!("captions {at}..{end}"))?;
        if let (Some(s), Some((p, _))) = (&sbert, wte_part.as_mut()) {
            let wte: Vec<f32> = s.encode(batch)?.into_iter().flatten().collect();
            p.append(&wte).with_context(|| format!("captions {at}..{end}"))?;
        }
        at = end;
        bar.set_position(at as u64);
        batches += 1;
        if stop_after.is_some_and(|k| batches >= k) && at < n {
            bar.abandon();
            eprintln!("stopping after {batches} batches ({STOP_AFTER_BATCHES_VAR}); rerun to resume");
            return Ok(ExitCode::from(3));
        }
    }
    bar.finish_and_clear();

    // Parts complete: stream them into the final file.
    let dtype: StoreDtype = args.dtype.into();
    let dest = args.out.join(NATIVE_FILE);
    let (tmp, writer) = AtomicFile::create(&dest)?;
    let clip_bytes = map_file(&clip_part.path)?;
    let clip_bytes: &[u8] = clip_bytes.as_ref().as_ref();
    EmbeddingPart::inspect(clip_bytes, dim, n, &clip_fp)?;
    let mut w = NativeMemoryWriter::new(writer, n, dim, wte_dim, dtype)?;
    const CHUNK: usize = 16384;
    for s in (0..n).step_by(CHUNK) {
        w.push_clip(&EmbeddingPart::rows(clip_bytes, dim, s, (s + CHUNK).min(n))?)?;
    }
    if let (Some((p, fp)), Some(e)) = (&wte_part, wte_dim) {
        let bytes = map_file(&p.path)?;
        let bytes: &[u8] = bytes.as_ref().as_ref();
        EmbeddingPart::inspect(bytes, e, n, fp)?;
        for s in (0..n).step_by(CHUNK) {
            w.push_wte(&EmbeddingPart::rows(bytes, e, s, (s + CHUNK).min(n))?)?;
        }
    }
    tmp.commit(w.finish()?)?;
    write_atomic(&args.out.join(CAPTIONS_FILE), &captions_json(&captions)?)?;
    let _ = std::fs::remove_file(&clip_part.path);
    if let Some((p, _)) = &wte_part {
        let _ = std::fs::remove_file(&p.path);
    }
    println!(
        "✓ built {} ({n} captions, CLIP {dim}-d{})",
        args.out.display(),
        wte_dim.map(|e| format!(", SBERT {e}-d")).unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

fn clip_files_describe(files: &DirFiles) -> String {
    use meacap::files::ModelFiles;
    files.describe()
}
