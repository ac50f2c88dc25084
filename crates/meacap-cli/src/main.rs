//! `meacap-wgpu`: MeaCap-InvLM image captioning on any GPU (wgpu) or CPU, offline by design.

mod caption;
mod files;
mod models;

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
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("MEACAP_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Caption(args) => caption::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::from(2)
        }
    }
}
