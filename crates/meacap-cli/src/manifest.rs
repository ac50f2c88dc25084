//! `meacap-wgpu models manifest`: writes `meacap-manifest.json` for the browser page, listing each
//! file the page needs with its size and sha256, relative to the folder the page loads from.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use meacap_hub::{build_browser_manifest, Role, BROWSER_MANIFEST_FILE};

use crate::caption::ModelArgs;
use crate::models::resolver;

#[derive(Args, Debug, Clone)]
pub struct ManifestArgs {
    #[command(flatten)]
    pub models: ModelArgs,

    /// The folder the page will load models from (served next to index.html, or picked in the
    /// page); every model file must be under it. Default: the current folder.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub root: PathBuf,

    /// Where to write the manifest (default: <root>/meacap-manifest.json).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

pub fn run(args: ManifestArgs) -> Result<ExitCode> {
    // Resolution only: a manifest describes files that are here, it never downloads.
    let resolver = resolver(&args.models).with_offline(true);
    let found = resolver.resolve_all(&Role::ALL)?;
    let manifest = build_browser_manifest(&found, &args.root, |path, size| {
        eprintln!("hashing {} ({:.1} MB)", path.display(), size as f64 / 1e6);
    })?;
    let out = args.out.unwrap_or_else(|| args.root.join(BROWSER_MANIFEST_FILE));
    let json = serde_json::to_string_pretty(&manifest)?;
    let tmp = out.with_extension("json.part");
    std::fs::write(&tmp, json + "\n").with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &out).with_context(|| format!("writing {}", out.display()))?;
    let files: usize = manifest.models.values().map(|m| m.files.len()).sum();
    println!(
        "wrote {} ({} files, {:.1} MB in all); serve it next to the page's files, or pick its folder in the page",
        out.display(),
        files,
        manifest.total_size() as f64 / 1e6
    );
    Ok(ExitCode::SUCCESS)
}
