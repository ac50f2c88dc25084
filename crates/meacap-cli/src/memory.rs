//! `meacap-wgpu memory` (being written).

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct BuildArgs {}

#[derive(Args, Debug, Clone)]
pub struct ConvertArgs {}

pub fn build(_args: BuildArgs) -> Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}

pub fn convert(_args: ConvertArgs) -> Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
