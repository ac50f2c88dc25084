//! `meacap-wgpu`: MeaCap-InvLM image captioning on any GPU (wgpu) or CPU, offline by design.

mod bench;
mod caption;
mod doctor;
mod fetch;
mod files;
mod manifest;
mod memory;
mod models;
mod roofline;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "meacap-wgpu",
    version,
    about = "Memory-augmented zero-shot image captioning (MeaCap-InvLM) on any GPU or CPU, offline",
    after_help = "Quick start: `meacap-wgpu doctor` says what is missing; `meacap-wgpu models fetch` downloads it."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Caption images (accepts the original viecap_inference.py flags too).
    Caption(caption::CaptionArgs),
    /// Check that everything a caption run needs is installed; say what to do if not.
    Doctor(doctor::DoctorArgs),
    /// Manage model files.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Build or convert memory banks.
    #[command(subcommand)]
    Memory(MemoryCommand),
    /// Time each stage at full model size (random weights) on CPU and GPU.
    Bench(bench::BenchArgs),
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Download every model from the Hugging Face hub into the checkpoints tree.
    Fetch(fetch::FetchArgs),
    /// Write meacap-manifest.json (sizes and sha256 of every file the browser page needs).
    Manifest(manifest::ManifestArgs),
}

#[derive(Subcommand)]
enum MemoryCommand {
    /// Build a memory bank from a list of captions.
    Build(memory::BuildArgs),
    /// Convert a MeaCap `.pt` memory folder into the native (safetensors) format.
    Convert(memory::ConvertArgs),
}

fn main() -> std::process::ExitCode {
    keep_freed_memory();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("MEACAP_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Caption(args) => caption::run(args),
        Command::Doctor(args) => doctor::run(args),
        Command::Models(ModelsCommand::Fetch(args)) => fetch::run(args),
        Command::Models(ModelsCommand::Manifest(args)) => manifest::run(args),
        Command::Memory(MemoryCommand::Build(args)) => memory::build(args),
        Command::Memory(MemoryCommand::Convert(args)) => memory::convert(args),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// glibc returns freed blocks above its mmap threshold, and the top of the heap above its trim
/// threshold, to the kernel, so every fresh activation of a large batch (a memory build's
/// 2,560-row tensors are 5-21 MB) page-faults its memory back in, zeroed, page by page: ~15 % of
/// a CLIP text pass, and model loading ran ~4x slower for it. Blocks up to glibc's largest mmap
/// threshold (32 MiB) stay in the heap, and up to 256 MiB of free heap is kept for reuse.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}
