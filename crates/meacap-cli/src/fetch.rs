//! `meacap-wgpu fetch` (being written).

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct FetchArgs {}

pub fn run(_args: FetchArgs) -> Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
