//! `meacap-wgpu bench`: times every network and stage of the pipeline at its real size.
//!
//! Weights are random (deterministic xorshift, uniform with std 0.02 like HF's init; norm gains 1)
//! and served from memory through a [`TensorSource`], so the real loaders run on the real key
//! names and shapes. Random weights cost exactly what real ones cost; they only change *which*
//! tokens come out, so every generation length is forced (T5: EOS disabled; GPT-2:
//! `ignore_stop`) and the work is the worst case, like the original's performance notes.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use burn::prelude::*;
use burn::tensor::{activation, TensorData};
use clap::Args;
use serde::Serialize;

use meacap::decode::{self, SearchConfig};
use meacap::device::{self, DeviceChoice, SelectedDevice};
use meacap::memory::{captions_json, MemoryBank, MemoryOptions, NativeMemoryWriter, StoreDtype, CAPTIONS_FILE, NATIVE_FILE};
use meacap::models::bert::{Bert, BertConfig};
use meacap::models::clip::{Clip, ClipConfig};
use meacap::models::gpt2::{Gpt2Config, KvCache};
use meacap::models::t5::{T5Config, T5};
use meacap::models::{to_vec, to_vec_int};
use meacap::models::viecap::ClipCaptionModel;
use meacap::weights::{contiguous_strides, DType, TensorSource, TensorView, Weights};
use meacap::{FileBytes, MemFiles};

use crate::roofline::Roofline;

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// cpu (burn flex), wgpu, or all (both, CPU first).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Timed runs per stage (after one warm-up run); the median is reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also time retrieval over a 3,300,000-row memory (needs ~21 GB of RAM while it is built).
    #[arg(long)]
    pub large_memory: bool,
    /// Rows of the standard synthetic memory (MeaCap's CC3M-derived bank has about 566 k).
    #[arg(long, default_value_t = 566_000)]
    pub memory_rows: usize,
    /// Greedy decoder steps of the T5 parser (forced: EOS is disabled).
    #[arg(long, default_value_t = 40)]
    pub t5_steps: usize,
    /// New tokens of the GPT-2 beam search (forced: stop tokens are ignored).
    #[arg(long, default_value_t = 20)]
    pub new_tokens: usize,
    /// Images per batch for the batched rows (`caption --batch`): CLIP, retrieval, T5 parse,
    /// MiniLM, mapping and beam search for that many images at once. 1 skips those rows.
    #[arg(long, default_value_t = 4)]
    pub images: usize,
    /// Only these groups (comma-separated): clip, memory, t5, minilm, viecap. Default: all.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
}

const GROUPS: [&str; 5] = ["clip", "memory", "t5", "minilm", "viecap"];

#[derive(Serialize, Clone, Debug)]
struct Row {
    device: String,
    stage: String,
    shape: String,
    median_ms: f64,
    min_ms: f64,
    runs: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    per_step_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gflops: Option<f64>,
    /// The CPU's roofline bound for this step (see [`Roofline::bound_gflops`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    bound_gflops: Option<f64>,
    note: String,
}

#[derive(Serialize, Debug)]
struct Machine {
    cpu: String,
    cores: usize,
    memory_gib: f64,
    load_average_before: String,
    load_average_after: String,
    os: String,
    /// Measured when the CPU is benchmarked.
    #[serde(skip_serializing_if = "Option::is_none")]
    roofline: Option<Roofline>,
}

#[derive(Serialize, Debug)]
struct DeviceInfo {
    device: String,
    description: String,
    adapter: Option<device::AdapterInfo>,
}

#[derive(Serialize, Debug)]
struct Report {
    date_unix: u64,
    command: String,
    machine: Machine,
    devices: Vec<DeviceInfo>,
    flops_formula: &'static str,
    rows: Vec<Row>,
    peak_rss_mib: Option<f64>,
}

const FLOPS_FORMULA: &str = "GFLOP/s = FLOPs / median time; FLOPs = 2 * (weight-matrix parameters touched per token, \
incl. the vocabulary projection, excl. embedding lookups) * tokens + 4 * layers * (heads*head_dim) * attended positions * tokens \
(QK^T and AV). GPT-2 step: tokens = 5 beams, attended = cache + 1. T5 decoder step: tokens = 5 rows, attended = mean self \
length + encoder length; cross-attention K/V are computed once per generation and counted in the encoder-side cost.";

pub fn run(args: BenchArgs) -> Result<ExitCode> {
    let choices: Vec<(&str, DeviceChoice)> = match args.device.to_ascii_lowercase().as_str() {
        "all" | "both" => vec![("cpu", DeviceChoice::Cpu), ("wgpu", DeviceChoice::Wgpu)],
        "cpu" | "flex" => vec![("cpu", DeviceChoice::Cpu)],
        "wgpu" | "gpu" => vec![("wgpu", DeviceChoice::Wgpu)],
        other => anyhow::bail!("unknown --device `{other}` (expected cpu, wgpu or all)"),
    };
    for group in &args.only {
        if !GROUPS.contains(&group.as_str()) {
            anyhow::bail!("unknown group `{group}` in --only (expected some of {})", GROUPS.join(", "));
        }
    }
    let repeat = args.repeat.max(1);
    let load_before = read_trimmed("/proc/loadavg");
    let mut rows = Vec::new();
    let mut devices = Vec::new();
    let mut failed = false;
    let roofline = choices.iter().any(|&(_, c)| c == DeviceChoice::Cpu).then(Roofline::measure);
    for (label, choice) in choices {
        let selected = match device::select(choice) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("warning: skipping {label}: {e}");
                failed = true;
                continue;
            }
        };
        let adapter = if choice == DeviceChoice::Wgpu { device::wgpu_device().ok().map(|(_, a)| a) } else { None };
        eprintln!("== {label}: {}", selected.description);
        devices.push(DeviceInfo { device: label.into(), description: selected.description.clone(), adapter });
        let roofline = roofline.clone().filter(|_| choice == DeviceChoice::Cpu);
        let mut bench = Bench { args: &args, device: selected, label: label.to_string(), repeat, rows: Vec::new(), roofline };
        if let Err(e) = bench.all() {
            eprintln!("error on {label}: {e:#}");
            failed = true;
        }
        rows.extend(bench.rows);
    }
    let report = Report {
        date_unix: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine: Machine {
            cpu: cpu_model(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib: meminfo_kib("MemTotal:").map_or(0.0, |k| k as f64 / (1024.0 * 1024.0)),
            load_average_before: load_before,
            load_average_after: read_trimmed("/proc/loadavg"),
            os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
            roofline,
        },
        devices,
        flops_formula: FLOPS_FORMULA,
        rows,
        peak_rss_mib: status_kib("VmHWM:").map(|k| k as f64 / 1024.0),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn print_table(r: &Report) {
    let m = &r.machine;
    println!("machine: {} ({} cores, {:.1} GiB), {}", m.cpu, m.cores, m.memory_gib, m.os);
    println!("load average: before {} | after {}", m.load_average_before, m.load_average_after);
    if let Some(r) = &m.roofline {
        println!("CPU roofline (measured): {:.0} GFLOP/s peak ({} FMA, {} threads), {:.1} GB/s read", r.peak_gflops, r.simd, r.threads, r.read_gbps);
    }
    for d in &r.devices {
        match &d.adapter {
            Some(a) => println!("device {}: {} [{} {} driver {}]", d.device, d.description, a.backend, a.device_type, a.driver),
            None => println!("device {}: {}", d.device, d.description),
        }
    }
    println!();
    println!("| device | stage | shape | median ms | min ms | per step ms | GFLOP/s | note |");
    println!("|---|---|---|---:|---:|---:|---:|---|");
    for row in &r.rows {
        let opt = |x: Option<f64>, p: usize| x.map_or(String::new(), |v| format!("{v:.p$}"));
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {} | {} | {} |",
            row.device,
            row.stage,
            row.shape,
            row.median_ms,
            row.min_ms,
            opt(row.per_step_ms, 1),
            opt(row.gflops, 1),
            row.note
        );
    }
    println!();
    if let Some(p) = r.peak_rss_mib {
        println!("process peak RSS: {p:.0} MiB");
    }
    println!("{}", r.flops_formula);
}

struct Bench<'a> {
    args: &'a BenchArgs,
    device: SelectedDevice,
    label: String,
    repeat: usize,
    rows: Vec<Row>,
    roofline: Option<Roofline>,
}

impl Bench<'_> {
    fn wants(&self, group: &str) -> bool {
        self.args.only.is_empty() || self.args.only.iter().any(|g| g == group)
    }

    fn dev(&self) -> &Device {
        &self.device.device
    }

    /// Waits for queued device work (wgpu runs asynchronously), so a timing includes it.
    fn sync(&self) -> Result<()> {
        self.dev().sync().map_err(|e| anyhow::anyhow!("device sync: {e:?}"))
    }

    /// One warm-up run (wgpu compiles kernels on first use), then `repeat` timed runs.
    fn time<T>(&self, mut f: impl FnMut() -> Result<T>) -> Result<(Vec<f64>, T)> {
        self.time_from(|| (), |()| f())
    }

    /// [`Self::time`] of `f(setup())`, `setup` untimed (e.g. a copy of a KV cache for a step to
    /// extend: on the CPU a cache is host memory, and copying it is not part of a step).
    fn time_from<S, T>(&self, mut setup: impl FnMut() -> S, mut f: impl FnMut(S) -> Result<T>) -> Result<(Vec<f64>, T)> {
        f(setup())?;
        self.sync()?;
        let mut times = Vec::with_capacity(self.repeat);
        let mut last = None;
        for _ in 0..self.repeat {
            let input = setup();
            let t = Instant::now();
            let out = f(input)?;
            self.sync()?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
            last = Some(out);
        }
        let last = last.context("no timed run")?;
        Ok((times, last))
    }

    /// A decoding step's achieved GFLOP/s and, on the CPU, its roofline bound: `weight_bytes` f32
    /// weights are streamed once per step whatever the row count.
    fn set_step_gflops(&mut self, row: usize, step_ms: f64, flops: f64, weight_bytes: f64) {
        let achieved = flops / (step_ms * 1e-3) / 1e9;
        let bound = self.roofline.as_ref().map(|r| r.bound_gflops(flops, weight_bytes));
        let row = &mut self.rows[row];
        row.gflops = Some(achieved);
        row.bound_gflops = bound;
        if let Some(bound) = bound {
            row.note.push_str(&format!("; roofline bound {bound:.0} GFLOP/s ({:.0} % of it)", 100.0 * achieved / bound));
        }
    }

    fn push(&mut self, stage: &str, shape: &str, times: &[f64], note: impl Into<String>) -> usize {
        let row = Row {
            device: self.label.clone(),
            stage: stage.into(),
            shape: shape.into(),
            median_ms: median(times),
            min_ms: times.iter().copied().fold(f64::INFINITY, f64::min),
            runs: times.len(),
            per_step_ms: None,
            gflops: None,
            bound_gflops: None,
            note: note.into(),
        };
        eprintln!("  {:<34} {:>10.1} ms  {}", row.stage, row.median_ms, row.note);
        self.rows.push(row);
        self.rows.len() - 1
    }

    fn all(&mut self) -> Result<()> {
        let mut failures = Vec::new();
        for group in GROUPS {
            if !self.wants(group) {
                continue;
            }
            // Catch panics too (burn panics on device errors such as a buffer over the adapter's
            // limit), so one failing group still leaves the others' rows.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match group {
                "clip" => self.clip(),
                "memory" => {
                    self.memory(self.args.memory_rows)?;
                    if self.args.large_memory {
                        self.memory(3_300_000)?;
                    }
                    Ok(())
                }
                "t5" => self.t5(),
                "minilm" => self.minilm(),
                _ => self.viecap(),
            }));
            let message = match outcome {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => format!("{e:#}"),
                Err(panic) => panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panic".into()),
            };
            let short: String = message.lines().take(3).collect::<Vec<_>>().join(" / ");
            eprintln!("  {group} failed: {short}");
            failures.push(format!("{group}: {short}"));
        }
        if failures.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("{}", failures.join("; "))
        }
    }

    /// Loads a model from a synthetic source once (timed), dropping the source bytes afterwards.
    fn load<M>(&mut self, name: &str, source: Synthetic, f: impl FnOnce(&Weights) -> meacap::Result<M>) -> Result<M> {
        let params = source.params;
        let weights = Weights::new(vec![Box::new(source)], self.dev());
        let t = Instant::now();
        let model = f(&weights)?;
        self.sync()?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        self.push(&format!("load {name}"), &format!("{:.1} M params", params as f64 / 1e6), &[ms], "1 run; bytes already in RAM (warm disk)");
        Ok(model)
    }

    fn clip(&mut self) -> Result<()> {
        let cfg = ClipConfig::from_json("CLIP", CLIP_CONFIG.as_bytes())?;
        let clip = self.load("CLIP ViT-B/32", Synthetic::new("clip", clip_keys(), 1), |w| Clip::load(w, &cfg))?;
        for batch in [1usize, 2] {
            let pixels = random_tensor::<4>([batch, 3, 224, 224], 1.0, 7 + batch as u64, self.dev());
            let (times, _) = self.time(|| Ok(to_vec(clip.image_features(pixels.clone())?)?))?;
            let note = if batch == 1 { "per image pass (the pipeline does 1-2)" } else { "both front-ends in one batch" };
            self.push("CLIP image", &format!("[{batch},3,224,224]"), &times, note);
        }
        if let Some(images) = self.batch_images() {
            let pixels = random_tensor::<4>([2 * images, 3, 224, 224], 1.0, 9, self.dev());
            let (times, _) = self.time(|| Ok(to_vec(clip.image_features(pixels.clone())?)?))?;
            self.push_batch("CLIP image", &format!("[{},3,224,224]", 2 * images), images, &times, "both front-ends of every image in one batch");
        }
        // A memory-build batch: BOS, 18 words, EOS (the largest id, where CLIP pools).
        let mut rng = XorShift::new(11);
        let ids: Vec<Vec<u32>> = (0..128)
            .map(|_| {
                let mut row = vec![49406];
                row.extend((0..18).map(|_| (rng.next() % 49000) as u32));
                row.push(49407);
                row
            })
            .collect();
        let mask = vec![vec![1u32; 20]; 128];
        let (times, _) = self.time(|| Ok(to_vec(clip.text_features(&ids, &mask)?)?))?;
        let i = self.push("CLIP text (memory build)", "128 x 20 tokens", &times, "");
        let per_caption = self.rows[i].median_ms / 128.0;
        self.rows[i].note = format!("{per_caption:.2} ms/caption");
        Ok(())
    }

    fn memory(&mut self, n: usize) -> Result<()> {
        let dim = 512;
        let rows = format!("{n} x {dim}");
        let query: Vec<f32> = {
            let mut rng = XorShift::new(n as u64 + 1);
            (0..dim).map(|_| rng.uniform()).collect()
        };
        // f32 from embeddings in RAM (what `memory build` holds before writing a bank).
        {
            let mut rng = XorShift::new(n as u64);
            let embeddings: Vec<f32> = (0..n * dim).map(|_| rng.uniform()).collect();
            let (bank, ms, rss) = self.measure_rss(|| {
                Ok(MemoryBank::from_embeddings("synthetic", vec![String::new(); n], embeddings, dim, &MemoryOptions::default(), self.dev())?)
            })?;
            self.push("memory bank build (f32)", &rows, &[ms], format!("1 run; check + normalise in place + upload (GPU); {rss}"));
            let (times, hits) = self.time(|| Ok(bank.top_k(&query, 5, self.dev())?))?;
            self.push("retrieval top-5 (f32)", &rows, &times, format!("{} hits; {}", hits.len(), self.retrieval_note()));
            self.retrieval_batch(&bank, "retrieval top-5 (f32)", &rows)?;
        }
        // f16: our bank format, as `memory build --dtype f16` writes it, opened from bytes in RAM
        // (a memory-mapped file behaves the same once in the page cache).
        let (captions_json, safetensors) = {
            let mut rng = XorShift::new(n as u64);
            let mut writer = NativeMemoryWriter::new(Vec::with_capacity(n * dim * 2 + 4096), n, dim, None, StoreDtype::F16)?;
            let mut block = vec![0f32; 4096 * dim];
            for first in (0..n).step_by(4096) {
                let len = (n - first).min(4096) * dim;
                block[..len].iter_mut().for_each(|x| *x = rng.uniform());
                writer.push_clip(&block[..len])?;
            }
            (captions_json(&vec![String::new(); n])?, writer.finish()?)
        };
        let files = MemFiles::new("synthetic-f16").with(CAPTIONS_FILE, captions_json).with(NATIVE_FILE, safetensors);
        let (bank, ms, rss) = self.measure_rss(|| Ok(MemoryBank::load(&files, &MemoryOptions::default(), self.dev())?))?;
        self.push("memory bank load (f16)", &rows, &[ms], format!("1 run; file bytes in RAM; check + row norms (CPU) / widen + upload (GPU); {rss}"));
        let (times, hits) = self.time(|| Ok(bank.top_k(&query, 5, self.dev())?))?;
        self.push("retrieval top-5 (f16)", &rows, &times, format!("{} hits; {}", hits.len(), self.retrieval_note()));
        self.retrieval_batch(&bank, "retrieval top-5 (f16)", &rows)?;
        Ok(())
    }

    /// `top_k_many` for one query per image of a batch.
    fn retrieval_batch(&mut self, bank: &MemoryBank, stage: &str, rows: &str) -> Result<()> {
        let Some(images) = self.batch_images() else { return Ok(()) };
        let mut rng = XorShift::new(images as u64 + 5);
        let queries: Vec<Vec<f32>> = (0..images).map(|_| (0..bank.dim()).map(|_| rng.uniform()).collect()).collect();
        let (times, _) = self.time(|| Ok(bank.top_k_many(&queries, 5, self.dev())?))?;
        self.push_batch(stage, rows, images, &times, "one query per image, the bank read once for up to 8");
        Ok(())
    }

    /// The number of images for the batched rows, if any.
    fn batch_images(&self) -> Option<usize> {
        (self.args.images > 1).then_some(self.args.images)
    }

    /// A row for a whole batch of `images`: the stage gets ", N images" and the note the time
    /// per image (one image: a plain row).
    fn push_batch(&mut self, stage: &str, shape: &str, images: usize, times: &[f64], note: &str) -> usize {
        if images == 1 {
            return self.push(stage, shape, times, note);
        }
        let i = self.push(&format!("{stage}, {images} images"), shape, times, "");
        let per_image = self.rows[i].median_ms / images as f64;
        self.rows[i].note = format!("{per_image:.1} ms per image; {note}");
        i
    }

    fn retrieval_note(&self) -> &'static str {
        if matches!(self.dev().as_dispatch(), burn::backend::DispatchDevice::Flex(_)) {
            "rows read in place, scored on all cores, top-k in one pass"
        } else {
            "scores on the device, read back, top-k on the host"
        }
    }

    /// Runs `f` once, timed, with the process's resident memory before and at its peak.
    fn measure_rss<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<(T, f64, String)> {
        reset_peak_rss();
        let before = status_kib("VmRSS:").unwrap_or(0);
        let t = Instant::now();
        let out = f()?;
        self.sync()?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let peak = status_kib("VmHWM:").unwrap_or(0);
        let note = format!(
            "peak RSS {:.0} MiB (+{:.0} MiB over before, input included)",
            peak as f64 / 1024.0,
            peak.saturating_sub(before) as f64 / 1024.0
        );
        Ok((out, ms, note))
    }

    fn t5(&mut self) -> Result<()> {
        let mut cfg = T5Config::from_json("T5", T5_CONFIG.as_bytes())?;
        // Random weights may emit EOS (id 1) at any step: disable it so every run does the same steps.
        cfg.eos_token_id = u32::MAX;
        let t5 = self.load("Flan-T5-base", Synthetic::new("t5", t5_keys(&cfg), 2), |w| T5::load(w, &cfg))?;
        self.t5_parse(&t5, &cfg, 1)?;
        if let Some(images) = self.batch_images() {
            self.t5_parse(&t5, &cfg, images)?;
        }
        Ok(())
    }

    /// T5 encode and parse of 5 captions per image for `images` images in one batch.
    fn t5_parse(&mut self, t5: &T5, cfg: &T5Config, images: usize) -> Result<()> {
        let mut rng = XorShift::new(21);
        let (rows, len) = (5 * images, 20usize);
        let ids: Vec<Vec<u32>> = (0..rows)
            .map(|_| {
                let mut r: Vec<u32> = (0..len - 1).map(|_| 3 + (rng.next() % 32000) as u32).collect();
                r.push(1);
                r
            })
            .collect();
        let mask = vec![vec![1u32; len]; rows];
        let shape = format!("{rows} x {len} tokens");
        let (enc_times, _) = self.time(|| Ok(to_vec(t5.encode(&ids, &mask)?.hidden)?))?;
        let enc = self.push_batch("T5 encode", &shape, images, &enc_times, "");
        let steps = self.args.t5_steps.max(1);
        let (gen_times, out) = self.time(|| Ok(t5.generate_greedy(&ids, &mask, steps + 1)?))?;
        let done = out.first().map_or(0, Vec::len);
        let note = format!("{done} decoder steps done, EOS disabled");
        let i = self.push_batch("T5 parse (encode + greedy)", &format!("{shape}, {done} steps"), images, &gen_times, &note);
        let step_ms = (self.rows[i].median_ms - self.rows[enc].median_ms).max(0.0) / done.max(1) as f64;
        self.rows[i].per_step_ms = Some(step_ms);
        // Decoder FLOPs per generated token (see FLOPS_FORMULA).
        let (d, inner, ff, layers, vocab) =
            (cfg.d_model as f64, (cfg.num_heads * cfg.d_kv) as f64, cfg.d_ff as f64, cfg.num_decoder_layers.unwrap_or(cfg.num_layers) as f64, cfg.vocab_size as f64);
        let matmul_params = layers * (4.0 * d * inner + 2.0 * d * inner + 3.0 * d * ff) + d * vocab;
        let attended = done as f64 / 2.0 + len as f64;
        let flops = rows as f64 * (2.0 * matmul_params + 4.0 * layers * inner * attended);
        self.rows[i].note.push_str(&format!("; per step = (parse - encode) / steps; {:.2} GFLOP/step", flops / 1e9));
        self.set_step_gflops(i, step_ms, flops, 4.0 * matmul_params);
        Ok(())
    }

    fn minilm(&mut self) -> Result<()> {
        let cfg = BertConfig::from_json("MiniLM", MINILM_CONFIG.as_bytes())?;
        let bert = self.load("all-MiniLM-L6-v2", Synthetic::new("minilm", bert_keys(&cfg), 3), |w| Bert::load(w, &cfg))?;
        let mut rng = XorShift::new(31);
        let ids: Vec<Vec<u32>> = (0..10)
            .map(|_| {
                let mut r = vec![101];
                r.extend((0..6).map(|_| 1000 + (rng.next() % 29000) as u32));
                r.push(102);
                r
            })
            .collect();
        let mask = vec![vec![1u32; 8]; 10];
        let (times, _) = self.time(|| Ok(to_vec(bert.sentence_embeddings(&ids, &mask)?)?))?;
        self.push("MiniLM encode (entities)", "10 x 8 tokens", &times, "mean-pooled, normalised");
        if let Some(images) = self.batch_images() {
            let ids: Vec<Vec<u32>> = (0..images).flat_map(|_| ids.iter().cloned()).collect();
            let mask = vec![vec![1u32; 8]; ids.len()];
            let (times, _) = self.time(|| Ok(to_vec(bert.sentence_embeddings(&ids, &mask)?)?))?;
            self.push_batch("MiniLM encode (entities)", &format!("{} x 8 tokens", ids.len()), images, &times, "every image's entities in one batch (no two alike)");
        }
        Ok(())
    }

    fn viecap(&mut self) -> Result<()> {
        let gpt_cfg = Gpt2Config::from_json("GPT-2", GPT2_CONFIG.as_bytes())?;
        let model = self.load("ViECap (GPT-2 + mapping)", Synthetic::new("viecap", viecap_keys(&gpt_cfg), 4), |w| {
            ClipCaptionModel::load(w, &gpt_cfg, 8)
        })?;
        let d = gpt_cfg.n_embd;
        let feature = random_tensor::<2>([1, 512], 0.05, 41, self.dev());
        let (times, _) = self.time(|| Ok(to_vec(model.mapping_network.forward(feature.clone()))?))?;
        self.push("mapping network", "[1,512] -> [1,10,768]", &times, "");
        if let Some(images) = self.batch_images() {
            let features = random_tensor::<2>([images, 512], 0.05, 42, self.dev());
            let (times, _) = self.time(|| Ok(to_vec(model.mapping_network.forward(features.clone()))?))?;
            self.push_batch("mapping network", &format!("[{images},512] -> [{images},10,768]"), images, &times, "");
        }

        let gpt = &model.gpt;
        // A ~20-embedding prompt: ~10 hard-prompt tokens + the 10-vector soft prompt.
        let prefix_len = 20;
        let prefix = random_tensor::<3>([1, prefix_len, d], 0.035, 43, self.dev());
        let (times, _) = self.time(|| {
            let mut cache = KvCache::default();
            let h = gpt.forward(prefix.clone(), &mut cache)?;
            Ok(to_vec(activation::softmax(gpt.last_logits(h), 1).log())?)
        })?;
        let pre = self.push("GPT-2 prompt pass", &format!("[1,{prefix_len},{d}]"), &times, "cache fill + last logits");

        let new_tokens = self.args.new_tokens.max(1);
        let search = SearchConfig { beam_width: 5, max_new_tokens: new_tokens, stop_ids: vec![13, 764], ignore_stop: true };
        let (times, hyps) = self.time(|| Ok(decode::beam_search(gpt, prefix.clone(), &search)?))?;
        let generated = hyps.first().map_or(0, |h| h.tokens.len());
        let i = self.push(
            "GPT-2 beam search (width 5)",
            &format!("prompt {prefix_len}, {generated} new tokens"),
            &times,
            "stop ignored; per step = (total - prompt pass) / (tokens - 1)",
        );
        let per = (self.rows[i].median_ms - self.rows[pre].median_ms).max(0.0) / (new_tokens.saturating_sub(1).max(1)) as f64;
        self.rows[i].per_step_ms = Some(per);

        if let Some(images) = self.batch_images() {
            // Prompts of 18-22 embeddings: the images' prompts differ in length.
            let prefixes: Vec<Tensor<3>> =
                (0..images).map(|i| random_tensor::<3>([1, 18 + i % 5, d], 0.035, 80 + i as u64, self.dev())).collect();
            let (times, _) = self.time(|| Ok(decode::beam_search_many(gpt, prefixes.clone(), &search)?))?;
            self.push_batch(
                "GPT-2 beam search (width 5)",
                &format!("prompts 18-22, {new_tokens} new tokens"),
                images,
                &times,
                "stop ignored; every image's beams stepped together",
            );
        }

        // One decoder step for 5 beams with a cache of `past` positions, as in a long beam search.
        let beams = 5;
        let layers = gpt_cfg.n_layer as f64;
        let df = d as f64;
        let inner = gpt_cfg.n_inner.unwrap_or(4 * d) as f64;
        let matmul_params = layers * (df * 3.0 * df + df * df + 2.0 * df * inner) + df * gpt_cfg.vocab_size as f64;
        // And one step of a batch's images, each image's beams over their own cache.
        let mut steps = vec![(1usize, 40usize), (1, 80)];
        steps.extend(self.batch_images().map(|images| (images, 40)));
        for (images, past) in steps {
            let mut caches = Vec::with_capacity(images);
            for i in 0..images {
                let mut cache = KvCache::default();
                gpt.forward(random_tensor::<3>([beams, past, d], 0.035, 50 + past as u64 + 100 * i as u64, self.dev()), &mut cache)?;
                caches.push(cache);
            }
            let step = random_tensor::<3>([beams * images, 1, d], 0.035, 60 + past as u64, self.dev());
            let groups = vec![beams; images];
            let (times, _) = self.time_from(|| caches.clone(), |mut c| {
                let h = gpt.forward_groups(step.clone(), &mut c, &groups)?;
                Ok(device::block_on(decode::log_probs(gpt, h))?)
            })?;
            let shape = if images == 1 { format!("batch {beams}, cache {past}") } else { format!("batch {}, cache {past} each", beams * images) };
            let i = self.push_batch("GPT-2 step (KV cache)", &shape, images, &times, "last-position logits read back, softmax.log on the host (as beam search)");
            let flops = (beams * images) as f64 * (2.0 * matmul_params + 4.0 * layers * df * (past + 1) as f64);
            let ms = self.rows[i].median_ms;
            self.rows[i].per_step_ms = Some(ms);
            self.rows[i].note.push_str(&format!("; {:.2} GFLOP/step", flops / 1e9));
            self.set_step_gflops(i, ms, flops, 4.0 * matmul_params);
        }

        // Where a step's time goes: the fixed cost of one read-back, a step whose read-back is 5
        // ids instead of 5 x vocab floats, and steps chained with one read-back at the end.
        let one = random_tensor::<1>([1], 1.0, 70, self.dev());
        let (times, _) = self.time(|| Ok(to_vec(one.clone() + 1.0)?))?;
        self.push("device round trip", "1 float", &times, "one tiny kernel + read back: the fixed cost of a sync");
        let mut cache = KvCache::default();
        gpt.forward(random_tensor::<3>([beams, 40, d], 0.035, 71, self.dev()), &mut cache)?;
        let step = random_tensor::<3>([beams, 1, d], 0.035, 72, self.dev());
        let (times, _) = self.time_from(|| cache.clone(), |mut c| {
            let h = gpt.forward(step.clone(), &mut c)?;
            Ok(to_vec_int(gpt.last_logits(h).argmax(1))?)
        })?;
        self.push("GPT-2 step, argmax read back", &format!("batch {beams}, cache 40"), &times, "5 ids read back instead of the logits");
        let chained = 10;
        let (times, _) = self.time_from(|| cache.clone(), |mut c| {
            let mut x = step.clone();
            for _ in 0..chained {
                let h = gpt.forward(x.clone(), &mut c)?;
                x = x + h.narrow(1, 0, 1) * 1e-3;
            }
            Ok(to_vec(x.narrow(1, 0, 1).narrow(2, 0, 1))?)
        })?;
        let i = self.push(
            "GPT-2 steps chained",
            &format!("batch {beams}, cache 40, {chained} steps"),
            &times,
            "no read-back between steps (launch-bound cost per step)",
        );
        self.rows[i].per_step_ms = Some(self.rows[i].median_ms / chained as f64);
        Ok(())
    }
}

fn median(times: &[f64]) -> f64 {
    let mut t = times.to_vec();
    t.sort_by(|a, b| a.total_cmp(b));
    let n = t.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => t[n / 2],
        _ => (t[n / 2 - 1] + t[n / 2]) / 2.0,
    }
}

/// Deterministic, fast pseudo-random numbers (xorshift64*): nothing here needs quality randomness.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [-1, 1).
    fn uniform(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

fn random_tensor<const D: usize>(shape: [usize; D], scale: f32, seed: u64, device: &Device) -> Tensor<D> {
    let mut rng = XorShift::new(seed);
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| rng.uniform() * scale).collect();
    Tensor::from_data(TensorData::new(data, shape), device)
}

/// An in-memory checkpoint of the given (name, shape) list with random f32 contents.
struct Synthetic {
    name: String,
    bytes: FileBytes,
    index: BTreeMap<String, (Vec<usize>, std::ops::Range<usize>)>,
    params: usize,
}

impl Synthetic {
    fn new(name: &str, specs: Vec<(String, Vec<usize>)>, seed: u64) -> Self {
        // Uniform(-a, a) has std a/sqrt(3): std 0.02 keeps activations in a realistic range.
        let scale = 0.02 * 3f32.sqrt();
        let params: usize = specs.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        let mut bytes = Vec::with_capacity(params * 4);
        let mut index = BTreeMap::new();
        let mut rng = XorShift::new(seed);
        for (key, shape) in specs {
            let n: usize = shape.iter().product();
            let start = bytes.len();
            if is_norm_gain(&key, &shape) {
                for _ in 0..n {
                    bytes.extend_from_slice(&1f32.to_le_bytes());
                }
            } else {
                for _ in 0..n {
                    bytes.extend_from_slice(&(rng.uniform() * scale).to_le_bytes());
                }
            }
            index.insert(key, (shape, start..bytes.len()));
        }
        Self { name: format!("synthetic {name}"), bytes: Arc::new(bytes), index, params }
    }
}

fn is_norm_gain(key: &str, shape: &[usize]) -> bool {
    let k = key.to_ascii_lowercase();
    shape.len() == 1 && k.ends_with(".weight") && (k.contains("norm") || k.contains(".ln_"))
}

impl TensorSource for Synthetic {
    fn file(&self) -> &str {
        &self.name
    }
    fn names(&self) -> Vec<String> {
        self.index.keys().cloned().collect()
    }
    fn view(&self, name: &str) -> Option<TensorView> {
        let (shape, range) = self.index.get(name)?;
        Some(TensorView {
            dtype: DType::F32,
            shape: shape.clone(),
            strides: contiguous_strides(shape),
            offset: 0,
            bytes: self.bytes.clone(),
            range: range.clone(),
        })
    }
}

// Standard configs, as in the models' HF `config.json` files.
const CLIP_CONFIG: &str = r#"{"projection_dim": 512,
 "text_config": {"vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048, "num_attention_heads": 8,
   "num_hidden_layers": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5},
 "vision_config": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12,
   "image_size": 224, "patch_size": 32, "num_channels": 3, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}}"#;
const GPT2_CONFIG: &str = r#"{"vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12,
 "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5}"#;
const T5_CONFIG: &str = r#"{"vocab_size": 32128, "d_model": 768, "d_kv": 64, "d_ff": 2048, "num_layers": 12,
 "num_decoder_layers": 12, "num_heads": 12, "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
 "layer_norm_epsilon": 1e-6, "feed_forward_proj": "gated-gelu", "tie_word_embeddings": false,
 "decoder_start_token_id": 0, "eos_token_id": 1, "pad_token_id": 0}"#;
const MINILM_CONFIG: &str = r#"{"vocab_size": 30522, "hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
 "intermediate_size": 1536, "hidden_act": "gelu", "max_position_embeddings": 512, "type_vocab_size": 2, "layer_norm_eps": 1e-12}"#;

type Specs = Vec<(String, Vec<usize>)>;

fn linear(out: &mut Specs, key: &str, d_in: usize, d_out: usize, bias: bool) {
    out.push((format!("{key}.weight"), vec![d_out, d_in]));
    if bias {
        out.push((format!("{key}.bias"), vec![d_out]));
    }
}

fn norm(out: &mut Specs, key: &str, d: usize, bias: bool) {
    out.push((format!("{key}.weight"), vec![d]));
    if bias {
        out.push((format!("{key}.bias"), vec![d]));
    }
}

fn clip_keys() -> Specs {
    let mut s = Specs::new();
    let layers = |s: &mut Specs, root: &str, d: usize, ff: usize| {
        for i in 0..12 {
            let l = format!("{root}.encoder.layers.{i}");
            for p in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                linear(s, &format!("{l}.self_attn.{p}"), d, d, true);
            }
            norm(s, &format!("{l}.layer_norm1"), d, true);
            linear(s, &format!("{l}.mlp.fc1"), d, ff, true);
            linear(s, &format!("{l}.mlp.fc2"), ff, d, true);
            norm(s, &format!("{l}.layer_norm2"), d, true);
        }
    };
    s.push(("vision_model.embeddings.class_embedding".into(), vec![768]));
    s.push(("vision_model.embeddings.patch_embedding.weight".into(), vec![768, 3, 32, 32]));
    s.push(("vision_model.embeddings.position_embedding.weight".into(), vec![50, 768]));
    norm(&mut s, "vision_model.pre_layrnorm", 768, true);
    layers(&mut s, "vision_model", 768, 3072);
    norm(&mut s, "vision_model.post_layernorm", 768, true);
    s.push(("text_model.embeddings.token_embedding.weight".into(), vec![49408, 512]));
    s.push(("text_model.embeddings.position_embedding.weight".into(), vec![77, 512]));
    layers(&mut s, "text_model", 512, 2048);
    norm(&mut s, "text_model.final_layer_norm", 512, true);
    linear(&mut s, "visual_projection", 768, 512, false);
    linear(&mut s, "text_projection", 512, 512, false);
    s
}

fn t5_keys(c: &T5Config) -> Specs {
    let (d, inner, ff) = (c.d_model, c.num_heads * c.d_kv, c.d_ff);
    let mut s = Specs::new();
    s.push(("shared.weight".into(), vec![c.vocab_size, d]));
    let attn = |s: &mut Specs, key: &str| {
        linear(s, &format!("{key}.q"), d, inner, false);
        linear(s, &format!("{key}.k"), d, inner, false);
        linear(s, &format!("{key}.v"), d, inner, false);
        linear(s, &format!("{key}.o"), inner, d, false);
    };
    for (stack, layers, decoder) in [("encoder", c.num_layers, false), ("decoder", c.num_decoder_layers.unwrap_or(c.num_layers), true)] {
        for i in 0..layers {
            let b = format!("{stack}.block.{i}.layer");
            attn(&mut s, &format!("{b}.0.SelfAttention"));
            if i == 0 {
                s.push((format!("{b}.0.SelfAttention.relative_attention_bias.weight"), vec![c.relative_attention_num_buckets, c.num_heads]));
            }
            norm(&mut s, &format!("{b}.0.layer_norm"), d, false);
            let ff_index = if decoder {
                attn(&mut s, &format!("{b}.1.EncDecAttention"));
                norm(&mut s, &format!("{b}.1.layer_norm"), d, false);
                2
            } else {
                1
            };
            linear(&mut s, &format!("{b}.{ff_index}.DenseReluDense.wi_0"), d, ff, false);
            linear(&mut s, &format!("{b}.{ff_index}.DenseReluDense.wi_1"), d, ff, false);
            linear(&mut s, &format!("{b}.{ff_index}.DenseReluDense.wo"), ff, d, false);
            norm(&mut s, &format!("{b}.{ff_index}.layer_norm"), d, false);
        }
        norm(&mut s, &format!("{stack}.final_layer_norm"), d, false);
    }
    s.push(("lm_head.weight".into(), vec![c.vocab_size, d]));
    s
}

fn bert_keys(c: &BertConfig) -> Specs {
    let (d, ff) = (c.hidden_size, c.intermediate_size);
    let mut s = Specs::new();
    s.push(("embeddings.word_embeddings.weight".into(), vec![c.vocab_size, d]));
    s.push(("embeddings.position_embeddings.weight".into(), vec![c.max_position_embeddings, d]));
    s.push(("embeddings.token_type_embeddings.weight".into(), vec![c.type_vocab_size, d]));
    norm(&mut s, "embeddings.LayerNorm", d, true);
    for i in 0..c.num_hidden_layers {
        let l = format!("encoder.layer.{i}");
        for p in ["query", "key", "value"] {
            linear(&mut s, &format!("{l}.attention.self.{p}"), d, d, true);
        }
        linear(&mut s, &format!("{l}.attention.output.dense"), d, d, true);
        norm(&mut s, &format!("{l}.attention.output.LayerNorm"), d, true);
        linear(&mut s, &format!("{l}.intermediate.dense"), d, ff, true);
        linear(&mut s, &format!("{l}.output.dense"), ff, d, true);
        norm(&mut s, &format!("{l}.output.LayerNorm"), d, true);
    }
    s
}

/// ViECap's `coco_prefix-0014.pt` layout: the mapping network (512 → 10×768, 8 layers, MLP ratio 2)
/// and the fine-tuned GPT-2 (HF `Conv1D` weights are `[in, out]`).
fn viecap_keys(c: &Gpt2Config) -> Specs {
    let (d, inner) = (c.n_embd, c.n_inner.unwrap_or(4 * c.n_embd));
    let mut s = Specs::new();
    let m = "mapping_network";
    linear(&mut s, &format!("{m}.linear"), 512, 10 * d, true);
    s.push((format!("{m}.prefix_const"), vec![10, d]));
    for i in 0..8 {
        let l = format!("{m}.transformer.layers.{i}");
        norm(&mut s, &format!("{l}.norm1"), d, true);
        linear(&mut s, &format!("{l}.attn.to_queries"), d, d, false);
        linear(&mut s, &format!("{l}.attn.to_keys_values"), d, 2 * d, false);
        linear(&mut s, &format!("{l}.attn.project"), d, d, true);
        norm(&mut s, &format!("{l}.norm2"), d, true);
        linear(&mut s, &format!("{l}.mlp.fc1"), d, 2 * d, true);
        linear(&mut s, &format!("{l}.mlp.fc2"), 2 * d, d, true);
    }
    let t = "gpt.transformer";
    s.push((format!("{t}.wte.weight"), vec![c.vocab_size, d]));
    s.push((format!("{t}.wpe.weight"), vec![c.n_positions, d]));
    let conv1d = |s: &mut Specs, key: &str, d_in: usize, d_out: usize| {
        s.push((format!("{key}.weight"), vec![d_in, d_out]));
        s.push((format!("{key}.bias"), vec![d_out]));
    };
    for i in 0..c.n_layer {
        let b = format!("{t}.h.{i}");
        norm(&mut s, &format!("{b}.ln_1"), d, true);
        conv1d(&mut s, &format!("{b}.attn.c_attn"), d, 3 * d);
        conv1d(&mut s, &format!("{b}.attn.c_proj"), d, d);
        norm(&mut s, &format!("{b}.ln_2"), d, true);
        conv1d(&mut s, &format!("{b}.mlp.c_fc"), d, inner);
        conv1d(&mut s, &format!("{b}.mlp.c_proj"), inner, d);
    }
    norm(&mut s, &format!("{t}.ln_f"), d, true);
    s
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path).map(|s| s.trim().to_string()).unwrap_or_else(|_| "unknown".into())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|m| m.trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into())
}

fn kib_field(path: &str, field: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn status_kib(field: &str) -> Option<u64> {
    kib_field("/proc/self/status", field)
}

fn meminfo_kib(field: &str) -> Option<u64> {
    kib_field("/proc/meminfo", field)
}

/// Resets the kernel's peak-RSS mark (VmHWM) so a stage's own peak can be read (Linux ≥ 4.0;
/// silently nothing elsewhere).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
