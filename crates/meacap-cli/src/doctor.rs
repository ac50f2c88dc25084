//! `meacap-wgpu doctor`: the hub's file-system report, plus what only the CLI can check — the
//! compute devices wgpu sees and whether each memory bank's shapes agree (captions vs rows, CLIP
//! dimension vs the CLIP model). Memory banks are checked from their headers only, so a 3 M-row
//! bank costs a JSON scan and a few header bytes, not gigabytes of reads.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use meacap::memory::{CAPTIONS_FILE, CLIP_PT_FILE, NATIVE_FILE, NATIVE_FORMAT, WTE_PT_FILE};
use meacap_hub::{DoctorReport, Role};
use serde::Serialize;

use crate::caption::ModelArgs;
use crate::files::map_file;

#[derive(Args, Debug, Clone)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub models: ModelArgs,

    /// Print one JSON object instead of the text report.
    #[arg(long)]
    pub json: bool,
}

/// The compute devices a caption run could use.
#[derive(Debug, Serialize)]
pub struct DeviceReport {
    /// The wgpu adapter, when one opened.
    pub gpu: Option<meacap::device::AdapterInfo>,
    /// Why there is no GPU entry (no adapter, or the probe was skipped).
    pub gpu_error: Option<String>,
    /// The CPU backend, always available.
    pub cpu: String,
    /// What `--device` selects now.
    pub selected: String,
}

/// Shape checks of one memory bank.
#[derive(Debug, Serialize)]
pub struct MemoryCheck {
    pub id: String,
    pub path: PathBuf,
    /// "native" (memory.safetensors) or "meacap" (.pt).
    pub format: Option<String>,
    pub captions: Option<usize>,
    pub rows: Option<usize>,
    pub dim: Option<usize>,
    pub wte_dim: Option<usize>,
    /// The CLIP model's projection_dim, when the CLIP model was found.
    pub clip_dim: Option<usize>,
    pub problems: Vec<String>,
}

impl MemoryCheck {
    pub fn consistent(&self) -> bool {
        self.problems.is_empty()
    }
}

pub fn run(args: DoctorArgs) -> Result<ExitCode> {
    let resolver = crate::models::resolver(&args.models);
    let report = meacap_hub::doctor(&resolver);
    let devices = probe_devices(&args.models);
    let clip_dim = found_path(&report, Role::Clip).and_then(|p| clip_projection_dim(&p));

    let mut checks: Vec<MemoryCheck> =
        report.memory_banks.iter().map(|b| check_bank(&b.id, &b.path, clip_dim)).collect();
    // The selected bank may live outside the memory dir (--memory-dir pointing at the bank itself).
    let selected = found_path(&report, Role::Memory);
    if let Some(path) = &selected {
        if !checks.iter().any(|c| same_path(&c.path, path)) {
            let id = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            checks.push(check_bank(&id, path, clip_dim));
        }
    }
    let selected_check = selected.as_ref().and_then(|p| checks.iter().find(|c| same_path(&c.path, p)));
    let ready = report.all_found() && selected_check.is_some_and(MemoryCheck::consistent);

    if args.json {
        let mut value = serde_json::to_value(&report)?;
        value["devices"] = serde_json::to_value(&devices)?;
        value["memory_checks"] = serde_json::to_value(&checks)?;
        value["ready"] = serde_json::Value::Bool(ready);
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{}", render_text(&report, &devices, &checks, selected.as_deref(), ready));
    }
    Ok(if ready { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn found_path(report: &DoctorReport, role: Role) -> Option<PathBuf> {
    report.models.iter().find(|m| m.role == role)?.found.as_ref().map(|f| f.path.clone())
}

fn same_path(a: &Path, b: &Path) -> bool {
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}

/// Opens the wgpu adapter unless the user forced the CPU; never fails (no GPU is a normal state).
fn probe_devices(models: &ModelArgs) -> DeviceReport {
    let cpu = meacap::device::SelectedDevice::cpu().description;
    let forced_cpu = models.device.eq_ignore_ascii_case("cpu");
    let (gpu, gpu_error) = if forced_cpu {
        (None, Some("not probed (--device cpu)".to_string()))
    } else {
        // wgpu drivers have been known to panic on broken installs; a doctor must not.
        match std::panic::catch_unwind(meacap::device::wgpu_device) {
            Ok(Ok((_, info))) => (Some(info), None),
            Ok(Err(e)) => (None, Some(format!("{e}; the CPU backend will be used"))),
            Err(_) => (None, Some("the wgpu driver crashed while probing; the CPU backend will be used".into())),
        }
    };
    let selected = match models.device_choice() {
        Err(e) => format!("invalid --device: {e}"),
        Ok(meacap::device::DeviceChoice::Cpu) => cpu.clone(),
        Ok(meacap::device::DeviceChoice::Wgpu) => match &gpu {
            Some(info) => format!("{} ({}, wgpu)", info.name, info.backend),
            None => "wgpu requested but no adapter opened: the caption run will fail".into(),
        },
        Ok(meacap::device::DeviceChoice::Auto) => match &gpu {
            Some(info) if !info.device_type.eq_ignore_ascii_case("Cpu") => format!("{} ({}, wgpu)", info.name, info.backend),
            _ => cpu.clone(),
        },
    };
    DeviceReport { gpu, gpu_error, cpu, selected }
}

/// `projection_dim` of a CLIP folder's config.json (HF's default is 512 when absent).
fn clip_projection_dim(dir: &Path) -> Option<usize> {
    let text = std::fs::read(dir.join("config.json")).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&text).ok()?;
    Some(value.get("projection_dim").and_then(|v| v.as_u64()).map_or(512, |n| n as usize))
}

/// Counts the captions without keeping them (a big bank's JSON is hundreds of MB).
fn count_captions(path: &Path) -> Result<usize, String> {
    let bytes = map_file(path).map_err(|e| format!("{CAPTIONS_FILE}: cannot read: {e}"))?;
    let items: Vec<serde::de::IgnoredAny> = serde_json::from_slice(bytes.as_ref().as_ref())
        .map_err(|e| format!("{CAPTIONS_FILE} is not a JSON array: {e}"))?;
    Ok(items.len())
}

fn check_bank(id: &str, dir: &Path, clip_dim: Option<usize>) -> MemoryCheck {
    let mut check = MemoryCheck {
        id: id.to_string(),
        path: dir.to_path_buf(),
        format: None,
        captions: None,
        rows: None,
        dim: None,
        wte_dim: None,
        clip_dim,
        problems: Vec::new(),
    };
    match count_captions(&dir.join(CAPTIONS_FILE)) {
        Ok(0) => check.problems.push(format!("{CAPTIONS_FILE} is empty")),
        Ok(n) => check.captions = Some(n),
        Err(e) => check.problems.push(e),
    }
    let native = dir.join(NATIVE_FILE);
    let pt = dir.join(CLIP_PT_FILE);
    // Same precedence as MemoryBank::load: our format first.
    let shapes: Result<(Vec<usize>, Option<Vec<usize>>), String> = if native.is_file() {
        check.format = Some("native".into());
        native_shapes(&native)
    } else if pt.is_file() {
        check.format = Some("meacap".into());
        let wte = dir.join(WTE_PT_FILE);
        pt_shape(&pt).and_then(|clip| {
            let wte = if wte.is_file() { Some(pt_shape(&wte)?) } else { None };
            Ok((clip, wte))
        })
    } else {
        Err(format!("no embeddings ({NATIVE_FILE} or {CLIP_PT_FILE})"))
    };
    match shapes {
        Ok((clip, wte)) => {
            if clip.len() != 2 {
                check.problems.push(format!("CLIP embeddings have shape {clip:?}, expected [N, D]"));
            } else {
                check.rows = Some(clip[0]);
                check.dim = Some(clip[1]);
            }
            if let Some(w) = wte {
                if w.len() != 2 || Some(w[0]) != check.rows {
                    check.problems.push(format!("SBERT embeddings have shape {w:?}, expected [{}, E]", clip[0]));
                } else {
                    check.wte_dim = Some(w[1]);
                }
            }
        }
        Err(e) => check.problems.push(e),
    }
    if let (Some(n), Some(rows)) = (check.captions, check.rows) {
        if n != rows {
            check.problems.push(format!("{n} captions but {rows} embedding rows: the files come from different banks"));
        }
    }
    if let (Some(want), Some(dim)) = (clip_dim, check.dim) {
        if want != dim {
            check.problems.push(format!(
                "embeddings are {dim}-d but the CLIP model projects to {want}-d: the bank was built with another CLIP"
            ));
        }
    }
    check
}

fn pt_shape(path: &Path) -> Result<Vec<usize>, String> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let bytes = map_file(path).map_err(|e| format!("{name}: cannot read: {e}"))?;
    // Parses the zip directory and the pickle only; the tensor data stays unread in the map.
    let view = meacap::weights::pickle::read_bare_tensor(path.display().to_string(), bytes).map_err(|e| format!("{e}"))?;
    Ok(view.shape)
}

fn native_shapes(path: &Path) -> Result<(Vec<usize>, Option<Vec<usize>>), String> {
    let bytes = map_file(path).map_err(|e| format!("{NATIVE_FILE}: cannot read: {e}"))?;
    let st = meacap::weights::safetensors::SafetensorsFile::parse(path.display().to_string(), bytes)
        .map_err(|e| format!("{e}"))?;
    if let Some(format) = st.metadata().get("format") {
        if format != NATIVE_FORMAT {
            return Err(format!("{NATIVE_FILE}: format `{format}`, expected `{NATIVE_FORMAT}`"));
        }
    }
    let clip = st.entry("clip").ok_or_else(|| format!("{NATIVE_FILE}: no `clip` tensor"))?.shape.clone();
    Ok((clip, st.entry("wte").map(|e| e.shape.clone())))
}

fn render_text(
    report: &DoctorReport,
    devices: &DeviceReport,
    checks: &[MemoryCheck],
    selected: Option<&Path>,
    ready: bool,
) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_text(&mut out, report, devices, checks, selected, ready);
    out
}

fn write_text(
    out: &mut String,
    report: &DoctorReport,
    devices: &DeviceReport,
    checks: &[MemoryCheck],
    selected: Option<&Path>,
    ready: bool,
) -> std::fmt::Result {
    writeln!(out, "Models")?;
    for model in &report.models {
        match &model.found {
            Some(found) => writeln!(
                out,
                "  ✓ {:<7} {} ({}{})",
                model.role.key(),
                found.path.display(),
                found.source,
                found.commit.as_deref().map(|c| format!(", commit {c}")).unwrap_or_default()
            )?,
            None => {
                writeln!(out, "  ✗ {:<7} {} — {} — not found", model.role.key(), model.id, model.summary)?;
                if let Some(note) = &model.note {
                    writeln!(out, "      note: {note}")?;
                }
                for candidate in &model.candidates {
                    writeln!(out, "      searched {candidate}")?;
                }
                if let Some(fix) = &model.fix {
                    writeln!(out, "      fix: {fix}")?;
                }
            }
        }
    }

    writeln!(out, "\nDevices")?;
    match (&devices.gpu, &devices.gpu_error) {
        (Some(gpu), _) => {
            writeln!(out, "  ✓ GPU     {} ({}, {}, driver {})", gpu.name, gpu.backend, gpu.device_type, gpu.driver)?
        }
        (None, Some(err)) => writeln!(out, "  - GPU     {err}")?,
        (None, None) => writeln!(out, "  - GPU     none")?,
    }
    writeln!(out, "  ✓ CPU     {}", devices.cpu)?;
    writeln!(out, "  selected: {}", devices.selected)?;

    writeln!(out, "\nMemory banks in {}", report.memory_dir.display())?;
    if checks.is_empty() {
        writeln!(out, "  (none) — fix: meacap-wgpu models fetch --only memory --memory-id {}", report.memory_id)?;
    }
    for check in checks {
        let mark = if check.consistent() { "✓" } else { "✗" };
        let is_selected = selected.is_some_and(|p| same_path(&check.path, p));
        let shape = match (check.rows, check.dim) {
            (Some(n), Some(d)) => format!("{n} × {d}"),
            _ => "?".into(),
        };
        let captions = check.captions.map_or("?".into(), |n| n.to_string());
        let wte = check.wte_dim.map(|e| format!(", SBERT {e}-d")).unwrap_or_default();
        let format = check.format.as_deref().unwrap_or("?");
        writeln!(
            out,
            "  {mark} {:<12} {captions} captions, CLIP {shape}{wte} ({format}){}",
            check.id,
            if is_selected { "  ← selected" } else { "" }
        )?;
        for problem in &check.problems {
            writeln!(out, "      problem: {problem}")?;
        }
    }

    report.write_settings(out, "a caption run downloads what is missing; --offline forbids it")?;
    writeln!(out)?;
    if ready {
        writeln!(out, "✓ ready: `meacap-wgpu caption --image-path IMAGE` can run")?;
    } else {
        writeln!(out, "✗ not ready: fix the ✗ lines above (`meacap-wgpu models fetch` downloads what the hub has)")?;
    }
    Ok(())
}
