//! Weight files → burn tensors.
//!
//! Readers ([`safetensors`], [`pickle`]) only parse headers and hand out [`TensorView`]s that point
//! into the file's bytes (a memory map natively), so nothing is copied until a tensor is built on
//! the device. [`Weights`] is the model-facing side: a prefix-scoped, shape-checked lookup in the
//! spirit of candle's `VarBuilder`, so model code mirrors the checkpoint's key names and loading is
//! a plain mapping. It records which keys were used, so strict loaders can report the rest.

pub mod pickle;
pub mod safetensors;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use burn::prelude::*;
use burn::tensor::TensorData;

use crate::error::{Error, Result};
use crate::files::{FileBytes, ModelFiles};

/// Element types found in checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }
    pub fn is_float(self) -> bool {
        matches!(self, DType::F64 | DType::F32 | DType::F16 | DType::BF16)
    }
}

/// One tensor inside a file's bytes: dtype, shape, and where its elements are.
/// `offset` and `strides` are in elements (PyTorch storages may be views with offsets and strides;
/// safetensors tensors are always contiguous at offset 0 of their `bytes` range).
#[derive(Clone)]
pub struct TensorView {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub strides: Vec<usize>,
    pub offset: usize,
    /// The storage's bytes: the whole file plus the byte range of this storage within it.
    pub bytes: FileBytes,
    pub range: std::ops::Range<usize>,
}

impl std::fmt::Debug for TensorView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorView")
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .field("strides", &self.strides)
            .field("offset", &self.offset)
            .field("range", &self.range)
            .finish()
    }
}

pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

impl TensorView {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Checks that every element the view addresses lies inside its storage. All arithmetic is
    /// overflow-checked: the numbers come from files and may lie.
    pub fn validate(&self, file: &str, name: &str) -> Result<()> {
        let file_len = self.bytes.as_ref().as_ref().len();
        if self.range.start > self.range.end || self.range.end > file_len {
            return Err(Error::tensor(file, name, format!(
                "data range {:?} lies past the end of the file ({} bytes): truncated file?",
                self.range, file_len
            )));
        }
        let storage_len = self.range.len();
        if self.shape.len() != self.strides.len() {
            return Err(Error::tensor(file, name, format!(
                "shape {:?} and strides {:?} differ in rank", self.shape, self.strides
            )));
        }
        let numel = self.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let Some(numel) = numel else {
            return Err(Error::tensor(file, name, format!("shape {:?} overflows", self.shape)));
        };
        if numel == 0 {
            return Ok(());
        }
        let last = self.shape.iter().zip(&self.strides).try_fold(self.offset, |acc, (d, s)| {
            (d - 1).checked_mul(*s).and_then(|x| acc.checked_add(x))
        });
        let needed = last.and_then(|l| l.checked_add(1)).and_then(|l| l.checked_mul(self.dtype.size()));
        match needed {
            Some(needed) if needed <= storage_len => {}
            _ => {
                return Err(Error::tensor(file, name, format!(
                    "shape {:?} with strides {:?} and offset {} reaches past its storage of {} bytes",
                    self.shape, self.strides, self.offset, storage_len
                )))
            }
        }
        // Overlapping or broadcast views (stride 0) may address more elements than the storage
        // holds; bound them so a lying header cannot make `to_f32` allocate without limit.
        const MAX_VIEW_ELEMENTS: usize = 1 << 28;
        if numel.saturating_mul(self.dtype.size()) > storage_len && numel > MAX_VIEW_ELEMENTS {
            return Err(Error::tensor(file, name, format!(
                "view of {numel} elements over a storage of {storage_len} bytes is too large"
            )));
        }
        Ok(())
    }

    /// The elements in logical (row-major) order, converted to f32.
    pub fn to_f32(&self, file: &str, name: &str) -> Result<Vec<f32>> {
        self.validate(file, name)?;
        let data = &self.bytes.as_ref().as_ref()[self.range.clone()];
        let size = self.dtype.size();
        let read = |i: usize| -> f32 {
            let b = &data[i * size..(i + 1) * size];
            match self.dtype {
                DType::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                DType::F64 => f64::from_le_bytes(b.try_into().unwrap()) as f32,
                DType::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
                DType::BF16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
                DType::I64 => i64::from_le_bytes(b.try_into().unwrap()) as f32,
                DType::I32 => i32::from_le_bytes(b.try_into().unwrap()) as f32,
                DType::I16 => i16::from_le_bytes([b[0], b[1]]) as f32,
                DType::I8 => b[0] as i8 as f32,
                DType::U8 | DType::Bool => b[0] as f32,
            }
        };
        let n = self.numel();
        let mut out = Vec::with_capacity(n);
        if self.strides == contiguous_strides(&self.shape) {
            if self.dtype == DType::F32 {
                let bytes = &data[self.offset * 4..(self.offset + n) * 4];
                out.extend(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])));
            } else {
                out.extend((self.offset..self.offset + n).map(read));
            }
            return Ok(out);
        }
        // Strided view: walk the logical index space.
        let mut index = vec![0usize; self.shape.len()];
        for _ in 0..n {
            let pos = self.offset + index.iter().zip(&self.strides).map(|(i, s)| i * s).sum::<usize>();
            out.push(read(pos));
            for d in (0..index.len()).rev() {
                index[d] += 1;
                if index[d] < self.shape[d] {
                    break;
                }
                index[d] = 0;
            }
        }
        Ok(out)
    }
}

/// A parsed weight file: names → views.
pub trait TensorSource: Send + Sync {
    /// The file name, for messages.
    fn file(&self) -> &str;
    fn names(&self) -> Vec<String>;
    fn view(&self, name: &str) -> Option<TensorView>;
}

/// Several sources searched in order (shards of one checkpoint).
struct Sources {
    list: Vec<Box<dyn TensorSource>>,
    index: BTreeMap<String, usize>,
}

/// Prefix-scoped, shape-checked access to a checkpoint's tensors, creating them on `device`.
#[derive(Clone)]
pub struct Weights {
    sources: Arc<Sources>,
    prefix: String,
    device: Device,
    used: Arc<Mutex<BTreeSet<String>>>,
    /// In strict-collect mode, problems are recorded here instead of failing the first `get`,
    /// so a strict loader can list every missing or misshapen key at once.
    problems: Option<Arc<Mutex<Vec<String>>>>,
}

impl Weights {
    pub fn new(sources: Vec<Box<dyn TensorSource>>, device: &Device) -> Self {
        let mut index = BTreeMap::new();
        for (i, source) in sources.iter().enumerate() {
            for name in source.names() {
                index.entry(name).or_insert(i);
            }
        }
        Self {
            sources: Arc::new(Sources { list: sources, index }),
            prefix: String::new(),
            device: device.clone(),
            used: Arc::new(Mutex::new(BTreeSet::new())),
            problems: None,
        }
    }

    /// The same weights in collect mode: a missing or misshapen tensor is recorded (see
    /// [`Self::problems`]) and stands in as zeros, so loading goes on and reports everything.
    pub fn collecting(&self) -> Self {
        let mut w = self.clone();
        w.problems = Some(Arc::new(Mutex::new(Vec::new())));
        w
    }

    /// Problems recorded in collect mode, in load order.
    pub fn problems(&self) -> Vec<String> {
        self.problems.as_ref().map(|p| p.lock().unwrap().clone()).unwrap_or_default()
    }

    /// Opens a Hugging Face model folder's weights: `model.safetensors`, else the shards listed in
    /// `model.safetensors.index.json`, else `pytorch_model.bin`.
    pub fn from_model_files(files: &dyn ModelFiles, device: &Device) -> Result<Self> {
        if let Some(bytes) = files.open("model.safetensors")? {
            let source = safetensors::SafetensorsFile::parse(files.location("model.safetensors"), bytes)?;
            return Ok(Self::new(vec![Box::new(source)], device));
        }
        if let Some(index) = files.open("model.safetensors.index.json")? {
            let index: serde_json::Value = serde_json::from_slice(index.as_ref().as_ref()).map_err(|e| Error::Config {
                model: files.describe(),
                file: "model.safetensors.index.json".into(),
                message: e.to_string(),
            })?;
            let map = index.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| Error::Config {
                model: files.describe(),
                file: "model.safetensors.index.json".into(),
                message: "no `weight_map` object".into(),
            })?;
            let shards: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
            let mut sources: Vec<Box<dyn TensorSource>> = Vec::new();
            for shard in shards {
                let bytes = files.require(shard)?;
                sources.push(Box::new(safetensors::SafetensorsFile::parse(files.location(shard), bytes)?));
            }
            return Ok(Self::new(sources, device));
        }
        if let Some(bytes) = files.open("pytorch_model.bin")? {
            let source = pickle::PickleCheckpoint::parse(files.location("pytorch_model.bin"), bytes)?;
            return Ok(Self::new(vec![Box::new(source)], device));
        }
        Err(Error::MissingFile {
            model: files.describe(),
            file: "model.safetensors (or model.safetensors.index.json with shards, or pytorch_model.bin)".into(),
        })
    }

    /// A view scoped under `name.` (like `vb.pp(name)`).
    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        let mut w = self.clone();
        w.prefix = self.key(&name.to_string());
        w
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        }
    }

    fn lookup(&self, name: &str) -> Option<(&dyn TensorSource, TensorView)> {
        let key = self.key(name);
        let i = *self.sources.index.get(&key)?;
        let source = self.sources.list[i].as_ref();
        source.view(&key).map(|v| (source, v))
    }

    /// The files behind these weights, for messages.
    pub fn file_names(&self) -> String {
        self.sources.list.iter().map(|s| s.file().to_string()).collect::<Vec<_>>().join(", ")
    }

    pub fn contains(&self, name: &str) -> bool {
        self.sources.index.contains_key(&self.key(name))
    }

    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.lookup(name).map(|(_, v)| v.shape)
    }

    /// Every key in the checkpoint (not only under this prefix).
    pub fn all_names(&self) -> Vec<String> {
        self.sources.index.keys().cloned().collect()
    }

    /// Keys under this prefix that no `get` has touched yet.
    pub fn unused(&self) -> Vec<String> {
        let used = self.used.lock().unwrap();
        self.sources
            .index
            .keys()
            .filter(|k| self.prefix.is_empty() || k.starts_with(&format!("{}.", self.prefix)))
            .filter(|k| !used.contains(*k))
            .cloned()
            .collect()
    }

    /// The tensor's elements as f32 on the host, shape-checked. `shape` entries of 0 mean "any".
    pub fn get_f32(&self, name: &str, shape: &[usize]) -> Result<(Vec<f32>, Vec<usize>)> {
        let key = self.key(name);
        let (source, view) = self.lookup(name).ok_or_else(|| {
            Error::tensor(self.file_names(), &key, "missing from the checkpoint")
        })?;
        if !view.dtype.is_float() {
            return Err(Error::tensor(source.file(), &key, format!("dtype {:?} is not a float type", view.dtype)));
        }
        let ok = view.shape.len() == shape.len() && view.shape.iter().zip(shape).all(|(a, b)| *b == 0 || a == b);
        if !ok {
            return Err(Error::tensor(
                source.file(),
                &key,
                format!("has shape {:?}, the model expects {:?}", view.shape, shape),
            ));
        }
        let data = view.to_f32(source.file(), &key)?;
        self.used.lock().unwrap().insert(key);
        Ok((data, view.shape))
    }

    /// The tensor on the device, shape-checked (0 in `shape` means "any size").
    pub fn get<const D: usize>(&self, name: &str, shape: [usize; D]) -> Result<Tensor<D>> {
        self.get_with(name, shape, shape, |data, shape| TensorData::new(data, shape))
    }

    /// A 2-D tensor `[r, c]` from the checkpoint, transposed on the host into a contiguous
    /// `[c, r]` device tensor (a one-off at load time, so forward passes see one weight layout).
    pub fn get_transposed(&self, name: &str, shape: [usize; 2]) -> Result<Tensor<2>> {
        self.get_with(name, shape, [shape[1], shape[0]], |data, shape| {
            let (r, c) = (shape[0], shape[1]);
            let mut t = vec![0.0f32; data.len()];
            // Blocks of rows keep both sides' cache lines in use.
            for i0 in (0..r).step_by(64) {
                for (j, out) in t.chunks_exact_mut(r.max(1)).enumerate() {
                    for i in i0..(i0 + 64).min(r) {
                        out[i] = data[i * c + j];
                    }
                }
            }
            TensorData::new(t, [c, r])
        })
    }

    /// The tensor's elements on the host and its shape, for a loader that lays them out itself
    /// (the CPU backend's packed dense layers); 0 in `shape` means "any size". In collect mode a
    /// problem is recorded and zeros of `shape` stand in, as for [`Self::get`].
    pub fn get_host(&self, name: &str, shape: &[usize]) -> Result<(Vec<f32>, Vec<usize>)> {
        Ok(self.get_or_problem(name, shape)?.unwrap_or_else(|| (vec![0.0; shape.iter().product()], shape.to_vec())))
    }

    /// Shared by the getters: `build` turns the checked host data into the tensor's data; while
    /// collecting problems, a failure is recorded and zeros of `out_shape` stand in.
    fn get_with<const D: usize, const O: usize>(
        &self,
        name: &str,
        shape: [usize; D],
        out_shape: [usize; O],
        build: impl FnOnce(Vec<f32>, Vec<usize>) -> TensorData,
    ) -> Result<Tensor<O>> {
        Ok(match self.get_or_problem(name, &shape)? {
            Some((data, shape)) => Tensor::from_data(build(data, shape), &self.device),
            None => Tensor::zeros(out_shape.map(|d| d.max(1)), &self.device),
        })
    }

    /// [`Self::get_f32`], or `None` once a problem is recorded in collect mode.
    fn get_or_problem(&self, name: &str, shape: &[usize]) -> Result<Option<(Vec<f32>, Vec<usize>)>> {
        match (self.get_f32(name, shape), &self.problems) {
            (Ok(found), _) => Ok(Some(found)),
            (Err(Error::Tensor { tensor, message, .. }), Some(problems)) => {
                problems.lock().unwrap().push(format!("`{tensor}` {message}"));
                Ok(None)
            }
            (Err(e), _) => Err(e),
        }
    }

    /// Marks a key as deliberately ignored (e.g. GPT-2's causal-mask buffers).
    pub fn ignore(&self, name: &str) {
        let key = self.key(name);
        self.used.lock().unwrap().insert(key);
    }
}
