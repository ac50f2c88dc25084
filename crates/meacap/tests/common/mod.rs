//! Shared test helpers: fixture paths, a folder-backed `ModelFiles`, expected tensors, devices.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::prelude::*;
use meacap::files::{FileBytes, ModelFiles};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// A model folder read from disk (tests only; the library never opens paths itself).
pub struct Dir(pub PathBuf);

impl ModelFiles for Dir {
    fn describe(&self) -> String {
        self.0.display().to_string()
    }
    fn open(&self, name: &str) -> meacap::Result<Option<FileBytes>> {
        match std::fs::read(self.0.join(name)) {
            Ok(bytes) => Ok(Some(Arc::new(bytes))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => panic!("{}: {e}", self.0.join(name).display()),
        }
    }
}

pub fn dir(name: &str) -> Dir {
    Dir(fixtures().join(name))
}

/// Tensors of an expected-output safetensors file: name → (shape, f32 values).
pub fn expected(name: &str) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let path = fixtures().join("expected").join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("expected file parses");
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
            let values = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            (name, (view.shape().to_vec(), values))
        })
        .collect()
}

pub fn json(name: &str) -> serde_json::Value {
    let path = fixtures().join("expected").join(name);
    serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// The devices every parity test runs on: flex (CPU) always, wgpu unless MEACAP_SKIP_WGPU=1.
pub fn devices() -> Vec<(&'static str, Device)> {
    let mut list = vec![("flex", Device::flex())];
    if std::env::var("MEACAP_SKIP_WGPU").as_deref() == Ok("1") {
        eprintln!("MEACAP_SKIP_WGPU=1: skipping the wgpu device");
    } else {
        let (device, info) = meacap::device::wgpu_device().expect("a wgpu adapter (install mesa-vulkan-drivers for lavapipe, or set MEACAP_SKIP_WGPU=1)");
        eprintln!("wgpu adapter: {info:?}");
        list.push(("wgpu", device));
    }
    list
}

pub fn tensor<const D: usize>(values: &(Vec<usize>, Vec<f32>), device: &Device) -> Tensor<D> {
    let shape: [usize; D] = values.0.clone().try_into().expect("rank");
    Tensor::<1>::from_floats(values.1.as_slice(), device).reshape(shape)
}

/// Max absolute difference, asserted ≤ `atol`.
pub fn assert_close(what: &str, actual: &[f32], expected: &[f32], atol: f32) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    let (mut worst, mut at) = (0f32, 0);
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        let d = (a - e).abs();
        if !(d <= worst) {
            worst = d;
            at = i;
        }
    }
    eprintln!("{what}: max abs diff {worst:.3e} (at {at})");
    assert!(worst <= atol, "{what}: max abs diff {worst} > {atol} at {at}: got {} expected {}", actual[at], expected[at]);
}

pub fn ids(v: &serde_json::Value) -> Vec<Vec<u32>> {
    v.as_array().unwrap().iter().map(|r| r.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()).collect()
}
