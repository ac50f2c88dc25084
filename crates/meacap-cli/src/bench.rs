//! `meacap-wgpu bench` (being written).

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {}

pub fn run(_args: BenchArgs) -> Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
