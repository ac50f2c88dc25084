//! `meacap-wgpu models fetch`: downloads the hub's models into the checkpoints tree (verified,
//! resumable; see `meacap_hub::fetch`) and says what it did and what it could not do.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use meacap_hub::{Env, FetchOptions, FileOutcome, Role, VIECAP_RELEASE_URL};

#[derive(Args, Debug, Clone)]
pub struct FetchArgs {
    /// Checkpoints folder to download into (default: $MEACAP_CHECKPOINTS or ./checkpoints).
    #[arg(long, value_name = "DIR")]
    pub to: Option<PathBuf>,

    /// Only these roles (clip, gpt2, parser, sbert, memory; viecap is not on the hub). Repeatable
    /// or comma-separated.
    #[arg(long, value_name = "ROLE", num_args = 1.., value_delimiter = ',')]
    pub only: Vec<Role>,

    /// Branch, tag or commit to download (default main).
    #[arg(long, value_name = "REV")]
    pub revision: Option<String>,

    /// Memory banks to download (folders memory/<id>/ of the MeaCap repository). Repeatable.
    #[arg(long = "memory-id", alias = "memory_id", value_name = "ID", num_args = 1.., value_delimiter = ',', default_value = "coco")]
    pub memory_id: Vec<String>,

    /// Folder the memory banks go to (default ./data/memory).
    #[arg(long = "memory-dir", alias = "memory_dir", value_name = "DIR")]
    pub memory_dir: Option<PathBuf>,

    /// Refuse to download (as HF_HUB_OFFLINE=1 does); useful to check what would be needed.
    #[arg(long, alias = "offline_mode", alias = "offline-mode")]
    pub offline: bool,
}

pub fn run(args: FetchArgs) -> Result<ExitCode> {
    let env = Env::from_process();
    let to = args.to.clone().unwrap_or_else(|| env.checkpoints_dir());
    let mut options = FetchOptions::new(&to);
    if let Some(dir) = &args.memory_dir {
        options.memory_dir = dir.clone();
    }
    if !args.only.is_empty() {
        options.roles = args.only.clone();
    }
    options.memory_ids = args.memory_id.clone();
    options.revision = args.revision.clone();
    options.offline = args.offline;
    options.progress = true;

    let report = meacap_hub::fetch(&env, &options).with_context(|| format!("fetching models into {}", to.display()))?;
    for model in &report.models {
        let count = |o: FileOutcome| model.files.iter().filter(|f| f.outcome == o).count();
        let bytes: u64 = model
            .files
            .iter()
            .filter(|f| f.outcome != FileOutcome::AlreadyPresent)
            .map(|f| f.size)
            .sum();
        println!(
            "✓ {:<7} {}@{} → {}",
            model.role.key(),
            model.repo,
            model.commit.as_deref().unwrap_or(&model.revision),
            model.path.display()
        );
        println!(
            "      {} downloaded, {} resumed, {} already present ({:.1} MiB transferred)",
            count(FileOutcome::Downloaded),
            count(FileOutcome::Resumed),
            count(FileOutcome::AlreadyPresent),
            bytes as f64 / (1024.0 * 1024.0)
        );
    }
    for skipped in &report.skipped {
        println!("- {:<7} skipped: {}", skipped.role.key(), skipped.reason);
    }
    // ViECap is never downloaded; say where it comes from unless it is already in place.
    let viecap = to.join(Role::Viecap.spec().local_name);
    if !options.roles.contains(&Role::Viecap) && !viecap.is_file() {
        println!(
            "- viecap  not on the Hugging Face hub: download checkpoints.zip from the `checkpoints` release of \
             https://github.com/FeiElysia/ViECap ({VIECAP_RELEASE_URL}), unzip it and copy \
             train_coco/coco_prefix-0014.pt to {} (or pass --weight-path FILE)",
            viecap.display()
        );
    }
    println!("run `meacap-wgpu doctor` to check the result");
    Ok(ExitCode::SUCCESS)
}
