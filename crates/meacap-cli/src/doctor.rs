//! `meacap-wgpu doctor` (being written).

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct DoctorArgs {}

pub fn run(_args: DoctorArgs) -> Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
