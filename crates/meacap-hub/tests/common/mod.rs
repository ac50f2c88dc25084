//! Shared test helpers. Each test binary uses a subset, hence the allow.
#![allow(dead_code)]

pub mod fake_hub;
pub mod hf_cache;
