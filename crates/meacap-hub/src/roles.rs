//! The models MeaCap needs, as data: one table that the resolver, `doctor`, `models fetch`, the
//! CLI's flags and the docs all read.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One model (or data) slot in the pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// CLIP ViT-B/32: image and text embeddings (memory retrieval, soft prompt).
    Clip,
    /// GPT-2 tokenizer + config (the fine-tuned weights come from the ViECap checkpoint).
    Gpt2,
    /// Flan-T5 textual scene-graph parser.
    Parser,
    /// Sentence-BERT (all-MiniLM-L6-v2) for merging similar concepts.
    Sbert,
    /// ViECap checkpoint: mapping network + fine-tuned GPT-2, one `.pt` file.
    Viecap,
    /// A MeaCap memory bank (captions + CLIP embeddings).
    Memory,
}

impl Role {
    pub const ALL: [Role; 6] =
        [Role::Clip, Role::Gpt2, Role::Parser, Role::Sbert, Role::Viecap, Role::Memory];

    /// The roles `models fetch` downloads when `--only` is not given (ViECap is not on the hub).
    pub const DEFAULT_FETCH: [Role; 5] =
        [Role::Clip, Role::Gpt2, Role::Parser, Role::Sbert, Role::Memory];

    /// The row of [`ROLES`] for this role.
    pub fn spec(self) -> &'static RoleSpec {
        // ROLES is ordered like Role::ALL; the match keeps that honest at compile time.
        let index = match self {
            Role::Clip => 0,
            Role::Gpt2 => 1,
            Role::Parser => 2,
            Role::Sbert => 3,
            Role::Viecap => 4,
            Role::Memory => 5,
        };
        &ROLES[index]
    }

    /// The short name used by `--only` and in reports ("clip", "gpt2", ...).
    pub fn key(self) -> &'static str {
        self.spec().key
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// Error for a role name that is not in the table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown model role '{0}' (expected one of: clip, gpt2, parser, sbert, viecap, memory)")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase();
        Role::ALL
            .into_iter()
            .find(|role| role.key() == wanted)
            .ok_or_else(|| UnknownRole(s.to_string()))
    }
}

/// How one requirement can be met.
#[derive(Clone, Copy, Debug)]
pub enum FileOption {
    /// All of these files.
    Files(&'static [&'static str]),
    /// A safetensors index and every shard its `weight_map` lists.
    ShardedSafetensors { index: &'static str },
}

impl FileOption {
    fn describe(&self) -> String {
        match self {
            FileOption::Files(files) => files.join(" + "),
            FileOption::ShardedSafetensors { index } => format!("{index} + its shards"),
        }
    }
}

/// How `models fetch` picks among the options of a group present in the repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pick {
    /// Only the first option available (weights: one format, safetensors preferred).
    First,
    /// Every option available (tokenizers: keep both the fast and the slow files).
    AllAvailable,
}

/// One requirement: at least one of `options` must be present.
#[derive(Clone, Copy, Debug)]
pub struct FileGroup {
    /// "config", "weights", "tokenizer", ...
    pub label: &'static str,
    /// In order of preference.
    pub options: &'static [FileOption],
    pub pick: Pick,
}

impl FileGroup {
    /// "tokenizer (tokenizer.json, or vocab.json + merges.txt)" or just "config.json".
    pub fn describe(&self) -> String {
        match self.options {
            [FileOption::Files([single])] => (*single).to_string(),
            options => {
                let alternatives: Vec<String> = options.iter().map(FileOption::describe).collect();
                format!("{} ({})", self.label, alternatives.join(", or "))
            }
        }
    }
}

/// Where a role lives on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// A Hugging Face model folder `<checkpoints>/<local_name>/`.
    HubFolder,
    /// A single file `<checkpoints>/<local_name>`.
    SingleFile,
    /// A memory bank folder `<memory dir>/<id>/`, on the hub under `memory/<id>/`.
    MemoryBank,
}

/// One row of the model table.
#[derive(Debug)]
pub struct RoleSpec {
    pub role: Role,
    /// `--only` value and report name.
    pub key: &'static str,
    /// The CLI flag that sets an explicit location.
    pub cli_flag: &'static str,
    /// Flags of the original Python script accepted as aliases.
    pub cli_aliases: &'static [&'static str],
    /// Hugging Face repository (`None` for ViECap, which is a GitHub release asset).
    pub hub_repo: Option<&'static str>,
    /// Other ids the same model is cached under by older code (e.g. `gpt2` for
    /// `openai-community/gpt2`): the HF cache is searched for them too.
    pub legacy_ids: &'static [&'static str],
    /// Folder (or file, for ViECap) under the checkpoints dir; for memory, the default bank id.
    pub local_name: &'static str,
    pub layout: Layout,
    pub summary: &'static str,
    pub required: &'static [FileGroup],
    /// Downloaded by `models fetch` when the repository has them; never required.
    pub optional: &'static [&'static str],
}

const CONFIG: FileGroup =
    FileGroup { label: "config", options: &[FileOption::Files(&["config.json"])], pick: Pick::First };

const WEIGHTS: FileGroup = FileGroup {
    label: "weights",
    options: &[
        FileOption::Files(&["model.safetensors"]),
        FileOption::ShardedSafetensors { index: "model.safetensors.index.json" },
        FileOption::Files(&["pytorch_model.bin"]),
    ],
    pick: Pick::First,
};

const BPE_TOKENIZER: FileGroup = FileGroup {
    label: "tokenizer",
    options: &[FileOption::Files(&["tokenizer.json"]), FileOption::Files(&["vocab.json", "merges.txt"])],
    pick: Pick::AllAvailable,
};

/// Default memory bank id (MeaCap's `--memory_id` default).
pub const DEFAULT_MEMORY_ID: &str = "cc3m";

/// Where the ViECap checkpoint comes from (it is not on the Hugging Face hub).
pub const VIECAP_RELEASE_URL: &str =
    "https://github.com/FeiElysia/ViECap/releases/download/checkpoints/checkpoints.zip";

/// The model table. Ordered like [`Role::ALL`].
pub static ROLES: [RoleSpec; 6] = [
    RoleSpec {
        role: Role::Clip,
        key: "clip",
        cli_flag: "--vl-model",
        cli_aliases: &["--vl_model", "--clip_model"],
        hub_repo: Some("openai/clip-vit-base-patch32"),
        legacy_ids: &[],
        local_name: "clip-vit-base-patch32",
        layout: Layout::HubFolder,
        summary: "CLIP ViT-B/32 (image/text embeddings)",
        required: &[CONFIG, WEIGHTS, BPE_TOKENIZER],
        optional: &["preprocessor_config.json", "tokenizer_config.json", "special_tokens_map.json"],
    },
    RoleSpec {
        role: Role::Gpt2,
        key: "gpt2",
        cli_flag: "--language-model",
        cli_aliases: &["--language_model"],
        hub_repo: Some("openai-community/gpt2"),
        legacy_ids: &["gpt2"],
        local_name: "gpt2",
        layout: Layout::HubFolder,
        summary: "GPT-2 tokenizer and config (weights come from the ViECap checkpoint)",
        required: &[CONFIG, BPE_TOKENIZER],
        optional: &["tokenizer_config.json", "generation_config.json"],
    },
    RoleSpec {
        role: Role::Parser,
        key: "parser",
        cli_flag: "--parser-checkpoint",
        cli_aliases: &["--parser_checkpoint"],
        hub_repo: Some("lizhuang144/flan-t5-base-VG-factual-sg"),
        legacy_ids: &[],
        local_name: "flan-t5-base-VG-factual-sg",
        layout: Layout::HubFolder,
        summary: "Flan-T5 textual scene-graph parser",
        required: &[
            CONFIG,
            WEIGHTS,
            FileGroup {
                label: "tokenizer",
                options: &[FileOption::Files(&["tokenizer.json"]), FileOption::Files(&["spiece.model"])],
                pick: Pick::AllAvailable,
            },
        ],
        optional: &[
            "tokenizer_config.json",
            "special_tokens_map.json",
            "added_tokens.json",
            "generation_config.json",
        ],
    },
    RoleSpec {
        role: Role::Sbert,
        key: "sbert",
        cli_flag: "--wte-model-path",
        cli_aliases: &["--wte_model_path"],
        hub_repo: Some("sentence-transformers/all-MiniLM-L6-v2"),
        legacy_ids: &[],
        local_name: "all-MiniLM-L6-v2",
        layout: Layout::HubFolder,
        summary: "Sentence-BERT all-MiniLM-L6-v2 (concept merging)",
        required: &[
            CONFIG,
            WEIGHTS,
            FileGroup {
                label: "tokenizer",
                options: &[FileOption::Files(&["tokenizer.json"]), FileOption::Files(&["vocab.txt"])],
                pick: Pick::AllAvailable,
            },
        ],
        optional: &[
            "modules.json",
            "1_Pooling/config.json",
            "sentence_bert_config.json",
            "config_sentence_transformers.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
        ],
    },
    RoleSpec {
        role: Role::Viecap,
        key: "viecap",
        cli_flag: "--weight-path",
        cli_aliases: &["--weight_path"],
        hub_repo: None,
        legacy_ids: &[],
        local_name: "train_coco/coco_prefix-0014.pt",
        layout: Layout::SingleFile,
        summary: "ViECap checkpoint (mapping network + fine-tuned GPT-2)",
        required: &[],
        optional: &[],
    },
    RoleSpec {
        role: Role::Memory,
        key: "memory",
        cli_flag: "--memory-dir",
        cli_aliases: &["--memory_dir", "--memory-id", "--memory_id"],
        hub_repo: Some("JoeyZoZ/MeaCap"),
        legacy_ids: &[],
        local_name: DEFAULT_MEMORY_ID,
        layout: Layout::MemoryBank,
        summary: "MeaCap memory bank (captions + CLIP embeddings)",
        required: &[
            FileGroup {
                label: "captions",
                options: &[FileOption::Files(&["memory_captions.json"])],
                pick: Pick::First,
            },
            FileGroup {
                label: "embeddings",
                options: &[
                    FileOption::Files(&["memory_clip_embeddings.pt"]),
                    FileOption::Files(&["memory.safetensors"]),
                ],
                pick: Pick::First,
            },
        ],
        optional: &["memory_wte_embeddings.pt"],
    },
];

/// What a folder holds for a role.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Completeness {
    /// Required files found (relative names).
    pub present: Vec<String>,
    /// Unmet requirements, human readable ("tokenizer (tokenizer.json, or spiece.model)").
    pub missing: Vec<String>,
}

impl Completeness {
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty()
    }
}

/// Checks a folder against a role's required files. A dangling symlink (blob missing from an HF
/// cache) counts as missing. For [`Layout::SingleFile`] roles use [`check_single_file`].
pub fn check_folder(role: Role, dir: &Path) -> Completeness {
    let mut result = Completeness::default();
    for group in role.spec().required {
        match group.options.iter().find_map(|option| option_present(dir, option).ok()) {
            Some(files) => result.present.extend(files),
            None => {
                // Name the precise gap when the preferred-but-sharded option is half there.
                let detail = group.options.iter().find_map(|option| match option_present(dir, option) {
                    Err(OptionGap::Shards(detail)) => Some(detail),
                    _ => None,
                });
                result.missing.push(match detail {
                    Some(detail) => format!("{}; {detail}", group.describe()),
                    None => group.describe(),
                });
            }
        }
    }
    result
}

/// Checks a single-file role: the file exists and is not empty.
pub fn check_single_file(path: &Path) -> Result<u64, String> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Err("is a folder, expected a file".to_string()),
        Ok(meta) if meta.len() == 0 => Err("is an empty file".to_string()),
        Ok(meta) => Ok(meta.len()),
        Err(_) => Err("absent".to_string()),
    }
}

enum OptionGap {
    Absent,
    /// The index exists but is unreadable or lists missing shards.
    Shards(String),
}

fn option_present(dir: &Path, option: &FileOption) -> Result<Vec<String>, OptionGap> {
    match option {
        FileOption::Files(files) => {
            if files.iter().all(|file| dir.join(file).is_file()) {
                Ok(files.iter().map(|f| f.to_string()).collect())
            } else {
                Err(OptionGap::Absent)
            }
        }
        FileOption::ShardedSafetensors { index } => {
            let index_path = dir.join(index);
            if !index_path.is_file() {
                return Err(OptionGap::Absent);
            }
            let shards = read_shard_list(&index_path).map_err(OptionGap::Shards)?;
            let missing: Vec<&String> = shards.iter().filter(|s| !dir.join(s).is_file()).collect();
            if missing.is_empty() {
                let mut files = vec![index.to_string()];
                files.extend(shards);
                Ok(files)
            } else {
                let names: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
                Err(OptionGap::Shards(format!("{index} lists missing shards {}", names.join(", "))))
            }
        }
    }
}

/// The shard file names a safetensors index's `weight_map` refers to.
pub fn read_shard_list(index_path: &Path) -> Result<BTreeSet<String>, String> {
    let text = std::fs::read_to_string(index_path)
        .map_err(|e| format!("cannot read {}: {e}", index_path.display()))?;
    shard_list_from_json(&text).map_err(|e| format!("{}: {e}", index_path.display()))
}

/// Parses a safetensors index (`{"weight_map": {"tensor": "shard file"}}`).
pub fn shard_list_from_json(text: &str) -> Result<BTreeSet<String>, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not valid JSON ({e})"))?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| "has no \"weight_map\" object".to_string())?;
    let mut shards = BTreeSet::new();
    for file in map.values() {
        let file = file.as_str().ok_or_else(|| "weight_map has a non-string value".to_string())?;
        // A shard name escaping the folder would be a malformed (or hostile) index.
        if file.contains("..") || file.starts_with('/') || file.contains('\\') {
            return Err(format!("weight_map names an invalid shard path '{file}'"));
        }
        shards.insert(file.to_string());
    }
    Ok(shards)
}

/// What to tell a user whose model is missing.
pub(crate) fn fix_hint(role: Role, checkpoints: &Path, memory_dir: &Path, memory_id: &str) -> String {
    let spec = role.spec();
    let to = if checkpoints == Path::new(crate::DEFAULT_CHECKPOINTS_DIR) {
        String::new()
    } else {
        format!(" --to {}", checkpoints.display())
    };
    match spec.layout {
        Layout::HubFolder => format!(
            "run `meacap-wgpu models fetch --only {key}{to}` (needs network), or copy a Hugging Face \
             snapshot of {repo} into {dir}/, or pass {flag} DIR",
            key = spec.key,
            repo = spec.hub_repo.unwrap_or("?"),
            dir = checkpoints.join(spec.local_name).display(),
            flag = spec.cli_flag,
        ),
        Layout::SingleFile => format!(
            "the ViECap checkpoint is not on the Hugging Face hub: download checkpoints.zip from the \
             `checkpoints` release of https://github.com/FeiElysia/ViECap ({url}), unzip it and copy \
             train_coco/coco_prefix-0014.pt to {dest}, or pass {flag} FILE",
            url = VIECAP_RELEASE_URL,
            dest = checkpoints.join(spec.local_name).display(),
            flag = spec.cli_flag,
        ),
        Layout::MemoryBank => format!(
            "run `meacap-wgpu models fetch --only memory --memory-id {memory_id}` (needs network), or \
             download the folder memory/{memory_id}/ of https://huggingface.co/{repo} and copy its files \
             to {dir}/, or pass --memory-dir DIR",
            repo = spec.hub_repo.unwrap_or("?"),
            dir = memory_dir.join(memory_id).display(),
        ),
    }
}

/// The folder a hub role is fetched into and read from under the checkpoints dir.
pub fn default_local_path(role: Role, checkpoints: &Path, memory_dir: &Path, memory_id: &str) -> PathBuf {
    match role.spec().layout {
        Layout::HubFolder | Layout::SingleFile => checkpoints.join(role.spec().local_name),
        Layout::MemoryBank => memory_dir.join(memory_id),
    }
}
