//! The environment as this crate sees it: a snapshot of variables, injectable so tests never
//! mutate the process environment (which races between test threads).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

/// Environment variables that change where models are looked for or how they are fetched.
/// `doctor` reports each of them.
pub const RELEVANT_VARS: &[&str] = &[
    "MEACAP_CHECKPOINTS",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "HF_HOME",
    "TRANSFORMERS_CACHE",
    "XDG_CACHE_HOME",
    "HF_ENDPOINT",
    "HF_TOKEN",
];

/// Variables whose values are secrets: reported as set/unset only.
const SECRET_VARS: &[&str] = &["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"];

/// Default hub endpoint, as in huggingface_hub's `constants.ENDPOINT`.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// A snapshot of environment variables. Empty values count as unset (a blank `HF_HOME=` in a
/// shell script should not put the cache in the current directory).
#[derive(Clone, Debug, Default)]
pub struct Env {
    vars: BTreeMap<String, String>,
}

/// Which variable (if any) chose the Hugging Face cache root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CacheRoot {
    pub path: PathBuf,
    /// `HF_HUB_CACHE`, `HUGGINGFACE_HUB_CACHE`, `HF_HOME`, `TRANSFORMERS_CACHE`,
    /// `XDG_CACHE_HOME` or `HOME` (the `~/.cache/huggingface/hub` default).
    pub from: String,
}

impl Env {
    /// Captures the whole process environment (only unicode values).
    pub fn from_process() -> Self {
        Self::from_pairs(std::env::vars())
    }

    /// Builds an environment from explicit pairs (tests, or a caller that filters variables).
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let vars = pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .filter(|(_, v)| !v.is_empty())
            .collect();
        Env { vars }
    }

    /// Returns a copy with one more variable set (builder style, for tests).
    pub fn with(mut self, key: &str, value: impl Into<String>) -> Self {
        let value = value.into();
        if value.is_empty() {
            self.vars.remove(key);
        } else {
            self.vars.insert(key.to_string(), value);
        }
        self
    }

    /// The value of a variable, `None` when unset or empty.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str)
    }

    fn home(&self) -> Option<PathBuf> {
        self.get("HOME").or_else(|| self.get("USERPROFILE")).map(PathBuf::from)
    }

    /// `os.path.expanduser` + `os.path.expandvars`, as huggingface_hub applies to its paths.
    /// Unknown `$VAR`s are left as written, like Python does.
    pub fn expand_path(&self, raw: &str) -> PathBuf {
        let vars_expanded = self.expand_vars(raw);
        if vars_expanded == "~" {
            if let Some(home) = self.home() {
                return home;
            }
        }
        if let Some(rest) = vars_expanded.strip_prefix("~/") {
            if let Some(home) = self.home() {
                return home.join(rest);
            }
        }
        PathBuf::from(vars_expanded)
    }

    fn expand_vars(&self, raw: &str) -> String {
        let mut out = String::with_capacity(raw.len());
        let mut rest = raw;
        while let Some(dollar) = rest.find('$') {
            out.push_str(&rest[..dollar]);
            let after = &rest[dollar + 1..];
            let (name, consumed) = if let Some(braced) = after.strip_prefix('{') {
                match braced.find('}') {
                    Some(end) => (&braced[..end], end + 2),
                    None => ("", 0),
                }
            } else {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], end)
            };
            match (name.is_empty(), self.get(name)) {
                (false, Some(value)) => out.push_str(value),
                _ => out.push_str(&rest[dollar..dollar + 1 + consumed]),
            }
            rest = &after[consumed..];
        }
        out.push_str(rest);
        out
    }

    /// The Hugging Face hub cache root, in huggingface_hub's order of precedence: `HF_HUB_CACHE`,
    /// `HUGGINGFACE_HUB_CACHE`, `$HF_HOME/hub`, legacy `TRANSFORMERS_CACHE`,
    /// `$XDG_CACHE_HOME/huggingface/hub`, `~/.cache/huggingface/hub`.
    pub fn hf_cache_root(&self) -> CacheRoot {
        let found = |from: &str, path: PathBuf| CacheRoot { path, from: from.to_string() };
        if let Some(v) = self.get("HF_HUB_CACHE") {
            return found("HF_HUB_CACHE", self.expand_path(v));
        }
        if let Some(v) = self.get("HUGGINGFACE_HUB_CACHE") {
            return found("HUGGINGFACE_HUB_CACHE", self.expand_path(v));
        }
        if let Some(v) = self.get("HF_HOME") {
            return found("HF_HOME", self.expand_path(v).join("hub"));
        }
        if let Some(v) = self.get("TRANSFORMERS_CACHE") {
            return found("TRANSFORMERS_CACHE", self.expand_path(v));
        }
        if let Some(v) = self.get("XDG_CACHE_HOME") {
            return found("XDG_CACHE_HOME", self.expand_path(v).join("huggingface").join("hub"));
        }
        found("HOME", self.expand_path("~/.cache/huggingface/hub"))
    }

    /// The variable that turns offline mode on, if any: `HF_HUB_OFFLINE` or `TRANSFORMERS_OFFLINE`
    /// set to 1/ON/YES/TRUE (any case), as huggingface_hub's `_is_true`.
    pub fn offline_var(&self) -> Option<&'static str> {
        ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"]
            .into_iter()
            .find(|name| self.get(name).is_some_and(is_true))
    }

    /// Whether the environment asks for offline mode.
    pub fn is_offline(&self) -> bool {
        self.offline_var().is_some()
    }

    /// Hub endpoint without a trailing slash (`HF_ENDPOINT`, default https://huggingface.co).
    pub fn endpoint(&self) -> String {
        self.get("HF_ENDPOINT").unwrap_or(DEFAULT_ENDPOINT).trim_end_matches('/').to_string()
    }

    /// Access token: `HF_TOKEN`, then the deprecated `HUGGING_FACE_HUB_TOKEN`.
    pub fn token(&self) -> Option<&str> {
        self.get("HF_TOKEN").or_else(|| self.get("HUGGING_FACE_HUB_TOKEN"))
    }

    /// The checkpoints folder: `MEACAP_CHECKPOINTS` or `./checkpoints`.
    pub fn checkpoints_dir(&self) -> PathBuf {
        self.get("MEACAP_CHECKPOINTS")
            .map(|v| self.expand_path(v))
            .unwrap_or_else(|| PathBuf::from(crate::DEFAULT_CHECKPOINTS_DIR))
    }

    /// Every relevant variable with its value (secrets masked), for `doctor`.
    pub fn report(&self) -> Vec<EnvVarReport> {
        RELEVANT_VARS
            .iter()
            .map(|name| EnvVarReport {
                name: name.to_string(),
                value: self.get(name).map(|v| {
                    if SECRET_VARS.contains(name) {
                        "(set, hidden)".to_string()
                    } else {
                        v.to_string()
                    }
                }),
            })
            .collect()
    }
}

/// One environment variable as `doctor` shows it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct EnvVarReport {
    pub name: String,
    pub value: Option<String>,
}

/// huggingface_hub's `_is_true`: 1/ON/YES/TRUE, any case.
pub fn is_true(value: &str) -> bool {
    matches!(value.trim().to_ascii_uppercase().as_str(), "1" | "ON" | "YES" | "TRUE")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_vars_and_tilde() {
        let env = Env::from_pairs([("HOME", "/home/u"), ("BASE", "/data")]);
        assert_eq!(env.expand_path("~/x"), PathBuf::from("/home/u/x"));
        assert_eq!(env.expand_path("$BASE/hf"), PathBuf::from("/data/hf"));
        assert_eq!(env.expand_path("${BASE}/hf"), PathBuf::from("/data/hf"));
        assert_eq!(env.expand_path("$NOPE/hf"), PathBuf::from("$NOPE/hf"));
        assert_eq!(env.expand_path("a$"), PathBuf::from("a$"));
        assert_eq!(env.expand_path("${oops"), PathBuf::from("${oops"));
    }

    #[test]
    fn truthy_values() {
        for v in ["1", "on", "ON", "Yes", "true", "TRUE"] {
            assert!(is_true(v), "{v}");
        }
        for v in ["0", "off", "no", "false", "2", ""] {
            assert!(!is_true(v), "{v}");
        }
    }
}
