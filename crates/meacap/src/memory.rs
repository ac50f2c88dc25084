//! The memory bank: captions + their CLIP text embeddings, and cosine top-k retrieval.
//!
//! Two on-disk layouts are read, both through [`ModelFiles`] (never a path):
//! * MeaCap's own folder: `memory_captions.json` (JSON array of strings), `memory_clip_embeddings.pt`
//!   (`torch.save` of one `[N, D]` float tensor, **not** normalised) and optionally
//!   `memory_wte_embeddings.pt` (`[N, 384]`, SBERT, used only by MeaCap-TF).
//! * Ours: `memory_captions.json` + `memory.safetensors` with `clip` `[N, D]` (pre-normalised, f32
//!   or f16), optional `wte` `[N, E]`, and `__metadata__` `{"format": "meacap-wgpu-memory-v1",
//!   "normalized": "true"}`. [`NativeMemoryWriter`] / [`write_native`] produce it, and
//!   [`EmbeddingPart`] is a resumable scratch format for `memory build`.
//!
//! Retrieval follows `CLIP.compute_image_text_similarity_via_embeddings`: both sides divided by
//! their L2 norm in f32, then dot products; the order is by descending cosine, ties to the lower
//! index. Where the rows live depends on the device:
//! * a GPU: the normalised rows are uploaded once, in chunks (so a 3.3 M-row bank never needs one
//!   giant buffer: WebGPU caps a storage binding at 128 MiB by default); every query computes all
//!   scores on the device, reads them back once (4 bytes per row) and selects the top k exactly on
//!   the host. The device part and the read-back are separate steps ([`MemoryBank::scores`],
//!   [`MemoryBank::select`]) so the browser can await the read-back ([`MemoryBank::top_k_async`]).
//! * the CPU: the rows stay in the file's bytes (a memory map costs no RAM of its own) when they
//!   are pre-normalised f32 or f16, and every query streams them through [`crate::rowmatmul`] on
//!   all cores; other layouts get one normalised f32 copy. An f16 bank halves what a query reads.

use std::io::Write;

use burn::prelude::*;
use burn::tensor::TensorData;

use crate::device::block_on;
use crate::error::{Error, Result};
use crate::files::{FileBytes, ModelFiles};
use crate::rowmatmul;
use crate::weights::safetensors::SafetensorsFile;
use crate::weights::{contiguous_strides, pickle, DType, TensorSource, TensorView};

pub const CAPTIONS_FILE: &str = "memory_captions.json";
pub const CLIP_PT_FILE: &str = "memory_clip_embeddings.pt";
pub const WTE_PT_FILE: &str = "memory_wte_embeddings.pt";
pub const NATIVE_FILE: &str = "memory.safetensors";
pub const NATIVE_FORMAT: &str = "meacap-wgpu-memory-v1";
/// Device chunks are at most this many bytes of f32 (WebGPU's default `maxStorageBufferBindingSize`).
pub const DEFAULT_CHUNK_BYTES: usize = 128 << 20;

/// How to load a bank.
#[derive(Debug, Clone, Default)]
pub struct MemoryOptions {
    /// The CLIP projection size the bank must have (512 for ViT-B/32), checked when given.
    pub expected_dim: Option<usize>,
    /// Rows per device chunk; `None`: as many as fit in [`DEFAULT_CHUNK_BYTES`].
    pub chunk_rows: Option<usize>,
    /// Also open the SBERT (`wte`) embeddings, when the bank has them.
    pub load_wte: bool,
}

impl MemoryOptions {
    fn chunk_rows(&self, dim: usize) -> usize {
        self.chunk_rows.unwrap_or(DEFAULT_CHUNK_BYTES / (dim.max(1) * 4)).max(1)
    }
}

/// One retrieved memory.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Hit {
    pub index: usize,
    /// Cosine similarity between the image embedding and the caption's CLIP text embedding.
    pub score: f32,
    pub caption: String,
}

/// Which layout a bank came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryFormat {
    MeaCap,
    Native,
}

/// A loaded memory bank: captions on the host, CLIP embeddings where the device reads them best.
pub struct MemoryBank {
    name: String,
    format: MemoryFormat,
    captions: Vec<String>,
    dim: usize,
    chunk_rows: usize,
    store: Store,
    device: Device,
    wte: Option<(String, TensorView)>,
}

/// Where the embeddings live.
enum Store {
    /// A GPU: normalised f32 rows uploaded once, in chunks of `chunk_rows`.
    Device(Vec<Tensor<2>>),
    /// The CPU: rows stay where their bytes are and every query streams them through
    /// [`rowmatmul`] on all cores.
    Host(HostRows),
}

/// Host rows `[n, dim]`: the file's own bytes when they can be used as stored (pre-normalised
/// f32, or f16 with a norm per row), so a memory-mapped bank costs no RAM of its own and f16
/// halves the bytes each query reads; otherwise one normalised f32 copy.
struct HostRows {
    bytes: FileBytes,
    range: std::ops::Range<usize>,
    f16: bool,
    /// Each row's L2 norm, when the stored rows are not normalised (f16 as stored): scores are
    /// divided by it, as the original divides the rows.
    norms: Option<Vec<f32>>,
}

/// An owned f32 buffer seen as bytes (f32 alignment, so it casts back without copying).
struct F32Bytes(Vec<f32>);

impl AsRef<[u8]> for F32Bytes {
    fn as_ref(&self) -> &[u8] {
        bytemuck::cast_slice(&self.0)
    }
}

impl std::fmt::Debug for MemoryBank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBank")
            .field("name", &self.name)
            .field("format", &self.format)
            .field("len", &self.captions.len())
            .field("dim", &self.dim)
            .field("on_host", &matches!(self.store, Store::Host(_)))
            .finish()
    }
}

fn mem_err(name: &str, message: impl Into<String>) -> Error {
    Error::Memory { memory: name.to_string(), message: message.into() }
}

/// A `[N, D]` float view read as f32 rows `start..end`, without converting the rest of the file.
fn rows_f32(view: &TensorView, file: &str, start: usize, end: usize) -> Result<Vec<f32>> {
    let mut sub = view.clone();
    sub.shape = vec![end - start, view.shape[1]];
    sub.offset = view.offset + start * view.strides[0];
    sub.to_f32(file, "embeddings")
}

/// Rows `start..end` as checked f32, normalised unless `normalized` (a device chunk or a host copy).
fn prepared_rows(view: &TensorView, file: &str, start: usize, end: usize, normalized: bool, name: &str) -> Result<Vec<f32>> {
    let mut rows = rows_f32(view, file, start, end).map_err(|e| mem_err(name, e.to_string()))?;
    prepare_rows(&mut rows, view.shape[1], start, normalized, name, file)?;
    Ok(rows)
}

/// The L2 norm, accumulated in f64 and rounded to f32.
fn row_norm(row: &[f32]) -> f32 {
    let sq: f64 = row.iter().map(|&x| (x as f64) * (x as f64)).sum();
    sq.sqrt() as f32
}

/// L2-normalises `row` in place in f32, as `x / x.norm()` does; `Err(norm)` when it cannot.
fn normalize_row(row: &mut [f32]) -> std::result::Result<(), f32> {
    let norm = row_norm(row);
    if !norm.is_finite() || norm == 0.0 {
        return Err(norm);
    }
    for x in row.iter_mut() {
        *x /= norm;
    }
    Ok(())
}

/// Checks a block of rows (finite, non-zero) and normalises them unless `normalized`.
fn prepare_rows(data: &mut [f32], dim: usize, first_row: usize, normalized: bool, name: &str, file: &str) -> Result<()> {
    for (i, row) in data.chunks_exact_mut(dim).enumerate() {
        check_row(row, first_row + i, normalized, name, file)?;
        if !normalized {
            if let Err(norm) = normalize_row(row) {
                return Err(mem_err(name, format!("{file}: row {} has norm {norm} and cannot be normalised", first_row + i)));
            }
        }
    }
    Ok(())
}

/// Row `r` is finite and, when it is used as stored (`normalized`), not all zeros (a row to be
/// normalised reports a zero norm there instead).
fn check_row(row: &[f32], r: usize, normalized: bool, name: &str, file: &str) -> Result<()> {
    if let Some(x) = row.iter().find(|x| !x.is_finite()) {
        return Err(mem_err(name, format!("{file}: row {r} contains a non-finite value ({x})")));
    }
    if normalized && row.iter().all(|&x| x == 0.0) {
        return Err(mem_err(name, format!("{file}: row {r} is all zeros (cannot be normalised)")));
    }
    Ok(())
}

impl MemoryBank {
    /// Opens a bank folder: `memory.safetensors` if present (ours), else MeaCap's
    /// `memory_clip_embeddings.pt`; `memory_captions.json` in both cases.
    pub fn load(files: &dyn ModelFiles, options: &MemoryOptions, device: &Device) -> Result<Self> {
        let name = files.describe();
        let captions = read_captions(files, &name)?;
        if let Some(bytes) = files.open(NATIVE_FILE)? {
            let file = files.location(NATIVE_FILE);
            let st = SafetensorsFile::parse(file.clone(), bytes).map_err(|e| mem_err(&name, e.to_string()))?;
            let meta = st.metadata();
            if let Some(format) = meta.get("format") {
                if format != NATIVE_FORMAT {
                    return Err(mem_err(&name, format!("{file}: format `{format}`, expected `{NATIVE_FORMAT}`")));
                }
            }
            let normalized = meta.get("normalized").map(String::as_str) == Some("true");
            let clip = st
                .view("clip")
                .ok_or_else(|| mem_err(&name, format!("{file}: no `clip` tensor")))?;
            let wte = if options.load_wte { st.view("wte").map(|v| (file.clone(), v)) } else { None };
            let mut bank = Self::from_view(&name, MemoryFormat::Native, captions, &file, &clip, normalized, options, device)?;
            bank.set_wte(wte)?;
            return Ok(bank);
        }
        let Some(bytes) = files.open(CLIP_PT_FILE)? else {
            return Err(mem_err(
                &name,
                format!("no embeddings: expected `{NATIVE_FILE}` or `{CLIP_PT_FILE}` next to `{CAPTIONS_FILE}`"),
            ));
        };
        let file = files.location(CLIP_PT_FILE);
        let clip = pickle::read_bare_tensor(file.clone(), bytes).map_err(|e| mem_err(&name, e.to_string()))?;
        let wte = if options.load_wte {
            match files.open(WTE_PT_FILE)? {
                Some(bytes) => {
                    let wfile = files.location(WTE_PT_FILE);
                    let v = pickle::read_bare_tensor(wfile.clone(), bytes).map_err(|e| mem_err(&name, e.to_string()))?;
                    Some((wfile, v))
                }
                None => None,
            }
        } else {
            None
        };
        let mut bank = Self::from_view(&name, MemoryFormat::MeaCap, captions, &file, &clip, false, options, device)?;
        bank.set_wte(wte)?;
        Ok(bank)
    }

    /// A bank from embeddings already in memory (`[N, dim]` row-major, not necessarily normalised).
    pub fn from_embeddings(
        name: &str,
        captions: Vec<String>,
        embeddings: Vec<f32>,
        dim: usize,
        options: &MemoryOptions,
        device: &Device,
    ) -> Result<Self> {
        if dim == 0 || embeddings.len() % dim != 0 {
            return Err(mem_err(name, format!("{} values do not form rows of {dim}", embeddings.len())));
        }
        let n = embeddings.len() / dim;
        // Normalised here, in place, so the bank can use the buffer as it is (no second copy).
        let mut embeddings = embeddings;
        prepare_rows(&mut embeddings, dim, 0, false, name, "embeddings")?;
        let len = embeddings.len() * 4;
        let bytes: FileBytes = std::sync::Arc::new(F32Bytes(embeddings));
        let view = TensorView {
            dtype: DType::F32,
            shape: vec![n, dim],
            strides: contiguous_strides(&[n, dim]),
            offset: 0,
            bytes,
            range: 0..len,
        };
        Self::from_view(name, MemoryFormat::Native, captions, "embeddings", &view, true, options, device)
    }

    #[allow(clippy::too_many_arguments)]
    fn from_view(
        name: &str,
        format: MemoryFormat,
        captions: Vec<String>,
        file: &str,
        view: &TensorView,
        normalized: bool,
        options: &MemoryOptions,
        device: &Device,
    ) -> Result<Self> {
        if !view.dtype.is_float() {
            return Err(mem_err(name, format!("{file}: embeddings have dtype {:?}, expected a float type", view.dtype)));
        }
        if view.shape.len() != 2 {
            return Err(mem_err(name, format!("{file}: embeddings have shape {:?}, expected [N, D]", view.shape)));
        }
        view.validate(file, "embeddings").map_err(|e| mem_err(name, e.to_string()))?;
        let (n, dim) = (view.shape[0], view.shape[1]);
        if n == 0 || captions.is_empty() {
            return Err(mem_err(name, format!("empty bank: {} captions, {n} embeddings in {file}", captions.len())));
        }
        if n != captions.len() {
            return Err(mem_err(
                name,
                format!("{CAPTIONS_FILE} has {} captions but {file} has {n} rows", captions.len()),
            ));
        }
        if let Some(expected) = options.expected_dim {
            if dim != expected {
                return Err(mem_err(
                    name,
                    format!("{file}: embedding size {dim}, but the CLIP model projects to {expected}"),
                ));
            }
        }
        if dim == 0 {
            return Err(mem_err(name, format!("{file}: embeddings have size 0")));
        }
        // Pre-normalised f32 is used as stored; anything else (f16, MeaCap's raw rows) is
        // normalised here in f32, as the original does on every query.
        let normalized = normalized && view.dtype == DType::F32;
        let chunk_rows = options.chunk_rows(dim);
        let store = if crate::device::is_cpu(device) {
            Store::Host(HostRows::new(view, file, normalized, name)?)
        } else {
            let mut chunks = Vec::with_capacity(n.div_ceil(chunk_rows));
            let mut start = 0;
            while start < n {
                let end = (start + chunk_rows).min(n);
                let rows = prepared_rows(view, file, start, end, normalized, name)?;
                chunks.push(Tensor::<2>::from_data(TensorData::new(rows, [end - start, dim]), device));
                start = end;
            }
            Store::Device(chunks)
        };
        Ok(Self {
            name: name.to_string(),
            format,
            captions,
            dim,
            chunk_rows,
            store,
            device: device.clone(),
            wte: None,
        })
    }

    fn set_wte(&mut self, wte: Option<(String, TensorView)>) -> Result<()> {
        if let Some((file, view)) = &wte {
            let ok = view.dtype.is_float() && view.shape.len() == 2 && view.shape[0] == self.len() && view.shape[1] > 0;
            if !ok {
                return Err(mem_err(
                    &self.name,
                    format!("{file}: wte embeddings have shape {:?} ({:?}), expected [{}, E] floats", view.shape, view.dtype, self.len()),
                ));
            }
            view.validate(file, "wte").map_err(|e| mem_err(&self.name, e.to_string()))?;
        }
        self.wte = wte;
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn format(&self) -> MemoryFormat {
        self.format
    }
    pub fn len(&self) -> usize {
        self.captions.len()
    }
    pub fn is_empty(&self) -> bool {
        self.captions.is_empty()
    }
    /// The CLIP embedding size D.
    pub fn dim(&self) -> usize {
        self.dim
    }
    pub fn chunk_rows(&self) -> usize {
        self.chunk_rows
    }
    pub fn captions(&self) -> &[String] {
        &self.captions
    }
    pub fn caption(&self, index: usize) -> Option<&str> {
        self.captions.get(index).map(String::as_str)
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    /// The SBERT embedding size, when the bank was loaded with `load_wte` and has them.
    pub fn wte_dim(&self) -> Option<usize> {
        self.wte.as_ref().map(|(_, v)| v.shape[1])
    }

    /// The SBERT (`wte`) embeddings of the given rows, as stored (MeaCap stores them normalised).
    pub fn wte_rows(&self, indices: &[usize]) -> Result<Vec<Vec<f32>>> {
        let Some((file, view)) = &self.wte else {
            return Err(mem_err(&self.name, "no wte embeddings loaded (load with `load_wte`)"));
        };
        let mut out = Vec::with_capacity(indices.len());
        for &i in indices {
            if i >= self.len() {
                return Err(mem_err(&self.name, format!("wte row {i} out of range (N = {})", self.len())));
            }
            let row = rows_f32(view, file, i, i + 1).map_err(|e| mem_err(&self.name, e.to_string()))?;
            if row.iter().any(|x| !x.is_finite()) {
                return Err(mem_err(&self.name, format!("{file}: wte row {i} contains a non-finite value")));
            }
            out.push(row);
        }
        Ok(out)
    }

    /// The query normalised as the original does (`image / image.norm()` in f32).
    fn query(&self, query: &[f32]) -> Result<Vec<f32>> {
        if query.len() != self.dim {
            return Err(Error::InvalidInput(format!(
                "memory bank {}: query has {} values, the bank's embeddings have {}",
                self.name,
                query.len(),
                self.dim
            )));
        }
        let mut q = query.to_vec();
        if q.iter().any(|x| !x.is_finite()) {
            return Err(Error::InvalidInput("image embedding contains a non-finite value".into()));
        }
        normalize_row(&mut q).map_err(|n| Error::InvalidInput(format!("image embedding has norm {n}")))?;
        Ok(q)
    }

    /// Step 1 (device): the cosine of every memory row with `query`, as one `[N]` tensor on the
    /// device. `device` should be the one the bank was loaded on; another works but copies the bank.
    pub fn scores(&self, query: &[f32], device: &Device) -> Result<Tensor<1>> {
        let chunks = match &self.store {
            Store::Device(chunks) => chunks,
            Store::Host(rows) => {
                let scores = rows.scores(&self.query(query)?, 1, self.dim, self.len());
                return Ok(Tensor::<1>::from_data(TensorData::new(scores, [self.len()]), device));
            }
        };
        Ok(self.device_scores(chunks, &[query.to_vec()], device)?.reshape([self.len()]))
    }

    /// Device banks: `[N, queries]`, query `j`'s cosines in column `j` (one matmul per chunk).
    fn device_scores(&self, chunks: &[Tensor<2>], queries: &[Vec<f32>], device: &Device) -> Result<Tensor<2>> {
        let normalized = queries.iter().map(|q| self.query(q)).collect::<Result<Vec<_>>>()?;
        let m = normalized.len();
        let columns: Vec<f32> = (0..self.dim).flat_map(|d| normalized.iter().map(move |q| q[d])).collect();
        let q = Tensor::<2>::from_data(TensorData::new(columns, [self.dim, m]), device);
        let parts: Vec<Tensor<2>> = chunks
            .iter()
            .map(|c| if device == &self.device { c.clone() } else { c.clone().to_device(device) }.matmul(q.clone()))
            .collect();
        Ok(Tensor::cat(parts, 0))
    }

    /// Step 2 (host): the exact top `k` of read-back scores, by descending score, ties to the
    /// lower index.
    pub fn select(&self, scores: &[f32], k: usize) -> Result<Vec<Hit>> {
        if scores.len() != self.len() {
            return Err(Error::Device(format!(
                "memory bank {}: read back {} scores for {} rows",
                self.name,
                scores.len(),
                self.len()
            )));
        }
        Ok(top_k_indices(scores, k)
            .into_iter()
            .map(|i| Hit { index: i, score: scores[i], caption: self.captions[i].clone() })
            .collect())
    }

    /// The `k` memories most similar to the (unnormalised) image embedding `query`.
    pub fn top_k(&self, query: &[f32], k: usize, device: &Device) -> Result<Vec<Hit>> {
        Ok(self.top_k_many(&[query.to_vec()], k, device)?.pop().unwrap_or_default())
    }

    /// [`Self::top_k`] with an asynchronous read-back, for WebGPU in the browser.
    pub async fn top_k_async(&self, query: &[f32], k: usize, device: &Device) -> Result<Vec<Hit>> {
        Ok(self.top_k_many_async(&[query.to_vec()], k, device).await?.pop().unwrap_or_default())
    }

    /// [`Self::top_k`] for several queries (one per image). A CPU bank is read once for up to
    /// eight queries (the scan is bound by reading the bank); each query's scores are summed
    /// exactly as they are for one query alone, so the hits are the same. A device bank scores
    /// all queries in one matmul per chunk (the same hits up to the device's float rounding).
    pub fn top_k_many(&self, queries: &[Vec<f32>], k: usize, device: &Device) -> Result<Vec<Vec<Hit>>> {
        let Store::Host(rows) = &self.store else {
            return block_on(self.top_k_many_async(queries, k, device));
        };
        let n = self.len();
        let mut hits = Vec::with_capacity(queries.len());
        for group in queries.chunks(rowmatmul::MAX_ROWS) {
            let normalized = group.iter().map(|q| self.query(q)).collect::<Result<Vec<_>>>()?;
            let scores = rows.scores(&normalized.concat(), group.len(), self.dim, n);
            for i in 0..group.len() {
                hits.push(self.select(&scores[i * n..(i + 1) * n], k)?);
            }
        }
        Ok(hits)
    }

    /// [`Self::top_k_many`] with asynchronous read-backs, for WebGPU in the browser: a device bank
    /// scores every query at once and reads them back together.
    pub async fn top_k_many_async(&self, queries: &[Vec<f32>], k: usize, device: &Device) -> Result<Vec<Vec<Hit>>> {
        let Store::Device(chunks) = &self.store else {
            return self.top_k_many(queries, k, device);
        };
        if queries.is_empty() {
            return Ok(Vec::new());
        }
        let data = self
            .device_scores(chunks, queries, device)?
            .into_data_async()
            .await
            .map_err(|e| Error::Device(format!("reading memory scores back: {e:?}")))?;
        // `[N, m]` row-major: query j's scores are column j.
        let all = data.try_into_vec_as::<f32>().map_err(|e| Error::Device(format!("memory scores: {e:?}")))?;
        let m = queries.len();
        (0..m).map(|j| self.select(&all.iter().skip(j).step_by(m).copied().collect::<Vec<_>>(), k)).collect()
    }
}

impl HostRows {
    /// Checks every row (finite, non-zero) and keeps the stored bytes when they can be read as
    /// they are (computing f16 rows' norms); else builds the normalised f32 copy. Blocks of rows
    /// run on all cores; a copy grows by a few blocks at a time, so it never exists twice.
    fn new(view: &TensorView, file: &str, normalized: bool, name: &str) -> Result<Self> {
        const BLOCK_ROWS: usize = 1 << 14;
        let (n, dim) = (view.shape[0], view.shape[1]);
        let size = view.dtype.size();
        let start = view.range.start + view.offset * size;
        let range = start..start + n * dim * size;
        let bytes = &view.bytes.as_ref().as_ref()[range.clone()];
        let row_major = view.strides[1] == 1 && (view.strides[0] == dim || n == 1);
        let direct = row_major && bytes.as_ptr() as usize % size == 0 && cfg!(target_endian = "little");
        let f16 = direct && view.dtype == DType::F16;
        let keep = f16 || (direct && view.dtype == DType::F32 && normalized);

        // One block: its rows' norms (f16 kept as stored) or its normalised copy (not kept).
        let block = |first: usize| -> Result<Vec<f32>> {
            let end = (first + BLOCK_ROWS).min(n);
            if f16 {
                let rows: &[half::f16] = bytemuck::cast_slice(&bytes[first * dim * 2..end * dim * 2]);
                let mut widened = vec![0f32; dim];
                let mut norms = Vec::with_capacity(end - first);
                for (i, row) in rows.chunks_exact(dim).enumerate() {
                    half::slice::HalfFloatSliceExt::convert_to_f32_slice(row, &mut widened);
                    check_row(&widened, first + i, true, name, file)?;
                    norms.push(row_norm(&widened));
                }
                Ok(norms)
            } else if keep {
                let rows: &[f32] = bytemuck::cast_slice(&bytes[first * dim * 4..end * dim * 4]);
                for (i, row) in rows.chunks_exact(dim).enumerate() {
                    check_row(row, first + i, true, name, file)?;
                }
                Ok(Vec::new())
            } else {
                prepared_rows(view, file, first, end, normalized, name)
            }
        };
        let firsts: Vec<usize> = (0..n).step_by(BLOCK_ROWS).collect();
        let mut out = Vec::with_capacity(if f16 { n } else if keep { 0 } else { n * dim });
        for group in firsts.chunks(8) {
            #[cfg(not(target_family = "wasm"))]
            let done: Vec<Result<Vec<f32>>> = {
                use rayon::prelude::*;
                group.par_iter().map(|&first| block(first)).collect()
            };
            #[cfg(target_family = "wasm")]
            let done: Vec<Result<Vec<f32>>> = group.iter().map(|&first| block(first)).collect();
            for part in done {
                out.extend_from_slice(&part?);
            }
        }
        Ok(if f16 {
            Self { bytes: view.bytes.clone(), range, f16, norms: Some(out) }
        } else if keep {
            Self { bytes: view.bytes.clone(), range, f16, norms: None }
        } else {
            let len = out.len() * 4;
            Self { bytes: std::sync::Arc::new(F32Bytes(out)), range: 0..len, f16: false, norms: None }
        })
    }

    /// Cosines of every row with each of the `queries` normalised queries: `[queries, n]`.
    fn scores(&self, query: &[f32], queries: usize, dim: usize, n: usize) -> Vec<f32> {
        let bytes = &self.bytes.as_ref().as_ref()[self.range.clone()];
        // The casts cannot fail: `new` checked the alignment and the length is n * dim elements.
        let mut scores = if self.f16 {
            rowmatmul::matmul_rows::<half::f16>(query, queries, dim, bytemuck::cast_slice(bytes), dim, n, None)
        } else {
            rowmatmul::matmul_rows::<f32>(query, queries, dim, bytemuck::cast_slice(bytes), dim, n, None)
        };
        if let Some(norms) = &self.norms {
            for row in scores.chunks_exact_mut(n.max(1)) {
                for (s, norm) in row.iter_mut().zip(norms) {
                    *s /= norm;
                }
            }
        }
        scores
    }
}

/// Indices of the `k` largest scores, by descending score, ties to the lower index. NaN sorts last.
pub fn top_k_indices(scores: &[f32], k: usize) -> Vec<usize> {
    let k = k.min(scores.len());
    if k == 0 {
        return Vec::new();
    }
    let key = |i: usize| {
        let s = scores[i];
        (if s.is_nan() { f32::NEG_INFINITY } else { s }, i)
    };
    // Rank order: higher score first, then lower index.
    let order = |a: usize, b: usize| {
        let (sa, ia) = key(a);
        let (sb, ib) = key(b);
        sb.total_cmp(&sa).then(ia.cmp(&ib))
    };
    let before = |a: usize, b: usize| order(a, b).is_lt();
    if k > 64 {
        // Large k: select, then sort the selection.
        let cmp = |a: &usize, b: &usize| order(*a, *b);
        let mut idx: Vec<usize> = (0..scores.len()).collect();
        if k < idx.len() {
            idx.select_nth_unstable_by(k - 1, cmp);
            idx.truncate(k);
        }
        idx.sort_unstable_by(cmp);
        return idx;
    }
    // Small k (the pipeline's 5): one pass keeping the best k in order. Most rows lose one
    // comparison with the current k-th, so a 3.3 M-row bank needs no index array and no sort.
    let mut best: Vec<usize> = Vec::with_capacity(k + 1);
    for i in 0..scores.len() {
        if best.len() == k && !before(i, best[k - 1]) {
            continue;
        }
        let at = best.partition_point(|&b| before(b, i));
        best.insert(at, i);
        best.truncate(k);
    }
    best
}

fn read_captions(files: &dyn ModelFiles, name: &str) -> Result<Vec<String>> {
    let Some(bytes) = files.open(CAPTIONS_FILE)? else {
        return Err(mem_err(name, format!("`{CAPTIONS_FILE}` is missing")));
    };
    let captions: Vec<String> = serde_json::from_slice(bytes.as_ref().as_ref())
        .map_err(|e| mem_err(name, format!("{CAPTIONS_FILE} is not a JSON array of strings: {e}")))?;
    if captions.is_empty() {
        return Err(mem_err(name, format!("{CAPTIONS_FILE} is empty")));
    }
    Ok(captions)
}

// ---------------------------------------------------------------------------------------------
// Writing our format

/// Element type of the stored `clip`/`wte` tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StoreDtype {
    #[default]
    F32,
    F16,
}

impl StoreDtype {
    fn size(self) -> usize {
        match self {
            StoreDtype::F32 => 4,
            StoreDtype::F16 => 2,
        }
    }
    fn name(self) -> &'static str {
        match self {
            StoreDtype::F32 => "F32",
            StoreDtype::F16 => "F16",
        }
    }
    fn put(self, out: &mut Vec<u8>, x: f32) {
        match self {
            StoreDtype::F32 => out.extend_from_slice(&x.to_le_bytes()),
            StoreDtype::F16 => out.extend_from_slice(&half::f16::from_f32(x).to_le_bytes()),
        }
    }
}

/// The two files of a bank in our format.
pub struct NativeMemory {
    /// `memory_captions.json`
    pub captions_json: Vec<u8>,
    /// `memory.safetensors`
    pub safetensors: Vec<u8>,
}

/// `memory_captions.json` for `captions` (what MeaCap writes: a JSON array of strings).
pub fn captions_json(captions: &[String]) -> Result<Vec<u8>> {
    serde_json::to_vec(captions).map_err(|e| Error::InvalidInput(format!("captions: {e}")))
}

/// Streams `memory.safetensors` to `out`: header first, then `clip` rows (normalised here), then
/// the `wte` rows (stored as given). Rows may come in any batches; [`Self::finish`] checks counts.
pub struct NativeMemoryWriter<W: Write> {
    out: W,
    rows: usize,
    dim: usize,
    wte_dim: Option<usize>,
    dtype: StoreDtype,
    clip_done: usize,
    wte_done: usize,
}

impl<W: Write> NativeMemoryWriter<W> {
    /// Writes the header for `rows` × `dim` CLIP rows (and `rows` × `wte_dim` SBERT rows).
    pub fn new(mut out: W, rows: usize, dim: usize, wte_dim: Option<usize>, dtype: StoreDtype) -> Result<Self> {
        if rows == 0 || dim == 0 || wte_dim == Some(0) {
            return Err(Error::InvalidInput(format!("memory of {rows} rows × {dim} (wte {wte_dim:?}) is empty")));
        }
        let clip_bytes = rows * dim * dtype.size();
        let mut header = serde_json::Map::new();
        header.insert(
            "__metadata__".into(),
            serde_json::json!({ "format": NATIVE_FORMAT, "normalized": "true" }),
        );
        header.insert(
            "clip".into(),
            serde_json::json!({ "dtype": dtype.name(), "shape": [rows, dim], "data_offsets": [0, clip_bytes] }),
        );
        if let Some(e) = wte_dim {
            let wte_bytes = rows * e * dtype.size();
            header.insert(
                "wte".into(),
                serde_json::json!({ "dtype": dtype.name(), "shape": [rows, e], "data_offsets": [clip_bytes, clip_bytes + wte_bytes] }),
            );
        }
        let mut json = serde_json::to_vec(&serde_json::Value::Object(header))
            .map_err(|e| Error::InvalidInput(format!("memory header: {e}")))?;
        // Pad so the data section starts 8-byte aligned, as safetensors writers do.
        while (json.len() + 8) % 8 != 0 {
            json.push(b' ');
        }
        out.write_all(&(json.len() as u64).to_le_bytes()).map_err(io_err)?;
        out.write_all(&json).map_err(io_err)?;
        Ok(Self { out, rows, dim, wte_dim, dtype, clip_done: 0, wte_done: 0 })
    }

    /// Appends CLIP rows (`[n, dim]` row-major, unnormalised), normalising them.
    pub fn push_clip(&mut self, rows: &[f32]) -> Result<()> {
        if rows.len() % self.dim != 0 {
            return Err(Error::InvalidInput(format!("{} values are not rows of {}", rows.len(), self.dim)));
        }
        let n = rows.len() / self.dim;
        if self.clip_done + n > self.rows {
            return Err(Error::InvalidInput(format!("more than the declared {} CLIP rows", self.rows)));
        }
        let mut data = rows.to_vec();
        prepare_rows(&mut data, self.dim, self.clip_done, false, "new memory", "clip")?;
        let mut bytes = Vec::with_capacity(data.len() * self.dtype.size());
        for x in data {
            self.dtype.put(&mut bytes, x);
        }
        self.out.write_all(&bytes).map_err(io_err)?;
        self.clip_done += n;
        Ok(())
    }

    /// Appends SBERT rows (`[n, wte_dim]`), after all CLIP rows.
    pub fn push_wte(&mut self, rows: &[f32]) -> Result<()> {
        let Some(e) = self.wte_dim else {
            return Err(Error::InvalidInput("this memory was declared without wte embeddings".into()));
        };
        if self.clip_done != self.rows {
            return Err(Error::InvalidInput("write all CLIP rows before the wte rows".into()));
        }
        if rows.len() % e != 0 || self.wte_done + rows.len() / e > self.rows {
            return Err(Error::InvalidInput(format!("wte rows: {} values do not fit [{}, {e}]", rows.len(), self.rows)));
        }
        if rows.iter().any(|x| !x.is_finite()) {
            return Err(Error::InvalidInput("wte rows contain a non-finite value".into()));
        }
        let mut bytes = Vec::with_capacity(rows.len() * self.dtype.size());
        for &x in rows {
            self.dtype.put(&mut bytes, x);
        }
        self.out.write_all(&bytes).map_err(io_err)?;
        self.wte_done += rows.len() / e;
        Ok(())
    }

    /// Checks that every declared row was written and hands the writer back.
    pub fn finish(mut self) -> Result<W> {
        let wte_ok = self.wte_dim.is_none() || self.wte_done == self.rows;
        if self.clip_done != self.rows || !wte_ok {
            return Err(Error::InvalidInput(format!(
                "memory incomplete: {}/{} CLIP rows, {}/{} wte rows",
                self.clip_done,
                self.rows,
                self.wte_done,
                if self.wte_dim.is_some() { self.rows } else { 0 }
            )));
        }
        self.out.flush().map_err(io_err)?;
        Ok(self.out)
    }
}

fn io_err(e: std::io::Error) -> Error {
    Error::InvalidInput(format!("writing the memory: {e}"))
}

/// Our format's two files, in memory, from captions and unnormalised `[N, dim]` CLIP rows
/// (and optional `[N, E]` SBERT rows).
pub fn write_native(
    captions: &[String],
    clip: &[f32],
    dim: usize,
    wte: Option<(&[f32], usize)>,
    dtype: StoreDtype,
) -> Result<NativeMemory> {
    if dim == 0 || clip.len() % dim != 0 || clip.len() / dim != captions.len() {
        return Err(Error::InvalidInput(format!(
            "{} captions but {} CLIP values of dimension {dim}",
            captions.len(),
            clip.len()
        )));
    }
    let mut w = NativeMemoryWriter::new(Vec::new(), captions.len(), dim, wte.map(|(_, e)| e), dtype)?;
    w.push_clip(clip)?;
    if let Some((rows, _)) = wte {
        w.push_wte(rows)?;
    }
    Ok(NativeMemory { captions_json: captions_json(captions)?, safetensors: w.finish()? })
}

/// Converts a MeaCap bank (any [`ModelFiles`]) to our format's bytes, streaming its rows.
pub fn convert_to_native<W: Write>(files: &dyn ModelFiles, out: W, dtype: StoreDtype, with_wte: bool) -> Result<(Vec<u8>, W)> {
    let name = files.describe();
    let captions = read_captions(files, &name)?;
    let file = files.location(CLIP_PT_FILE);
    let clip = pickle::read_bare_tensor(file.clone(), files.require(CLIP_PT_FILE)?).map_err(|e| mem_err(&name, e.to_string()))?;
    if !clip.dtype.is_float() || clip.shape.len() != 2 || clip.shape[0] != captions.len() || clip.shape[1] == 0 {
        return Err(mem_err(&name, format!("{file}: shape {:?} ({:?}) does not match {} captions", clip.shape, clip.dtype, captions.len())));
    }
    clip.validate(&file, "embeddings").map_err(|e| mem_err(&name, e.to_string()))?;
    let wte = if with_wte {
        match files.open(WTE_PT_FILE)? {
            Some(bytes) => {
                let wfile = files.location(WTE_PT_FILE);
                let v = pickle::read_bare_tensor(wfile.clone(), bytes).map_err(|e| mem_err(&name, e.to_string()))?;
                if !v.dtype.is_float() || v.shape.len() != 2 || v.shape[0] != captions.len() || v.shape[1] == 0 {
                    return Err(mem_err(&name, format!("{wfile}: shape {:?} does not match {} captions", v.shape, captions.len())));
                }
                v.validate(&wfile, "wte").map_err(|e| mem_err(&name, e.to_string()))?;
                Some((wfile, v))
            }
            None => None,
        }
    } else {
        None
    };
    let (n, dim) = (clip.shape[0], clip.shape[1]);
    let mut w = NativeMemoryWriter::new(out, n, dim, wte.as_ref().map(|(_, v)| v.shape[1]), dtype)?;
    const BATCH: usize = 16384;
    let mut start = 0;
    while start < n {
        let end = (start + BATCH).min(n);
        let rows = rows_f32(&clip, &file, start, end).map_err(|e| mem_err(&name, e.to_string()))?;
        w.push_clip(&rows).map_err(|e| mem_err(&name, format!("{file}: {e}")))?;
        start = end;
    }
    if let Some((wfile, v)) = &wte {
        let mut start = 0;
        while start < n {
            let end = (start + BATCH).min(n);
            let rows = rows_f32(v, wfile, start, end).map_err(|e| mem_err(&name, e.to_string()))?;
            w.push_wte(&rows).map_err(|e| mem_err(&name, format!("{wfile}: {e}")))?;
            start = end;
        }
    }
    Ok((captions_json(&captions)?, w.finish()?))
}

// ---------------------------------------------------------------------------------------------
// Resumable building

/// A scratch file for `memory build`: a fixed 256-byte text header, then raw f32 little-endian
/// rows (unnormalised CLIP embeddings, caption order). Appending whole batches and flushing makes
/// it resumable: after an interruption, [`EmbeddingPart::inspect`] says how many complete rows are
/// there and where to truncate a torn last write; the CLI continues from that caption.
pub struct EmbeddingPart;

/// What an existing part file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartState {
    /// Complete rows already embedded: resume at this caption.
    pub rows_done: usize,
    /// Truncate the file to this many bytes before appending (drops a torn row).
    pub valid_len: usize,
}

impl EmbeddingPart {
    pub const HEADER_LEN: usize = 256;

    /// The header for a bank of `rows` × `dim`; `fingerprint` ties the part to its captions and
    /// model (e.g. [`captions_fingerprint`] plus the model id).
    pub fn header(dim: usize, rows: usize, fingerprint: &str) -> Result<Vec<u8>> {
        let line = format!("MEACAP-PART v1 dim={dim} rows={rows} id={fingerprint}\n");
        if line.len() > Self::HEADER_LEN || fingerprint.contains(['\n', ' ']) {
            return Err(Error::InvalidInput(format!("part fingerprint `{fingerprint}` is too long or has spaces")));
        }
        let mut h = line.into_bytes();
        h.resize(Self::HEADER_LEN, b' ');
        Ok(h)
    }

    /// Checks an existing part against the bank being built and says where to resume.
    pub fn inspect(bytes: &[u8], dim: usize, rows: usize, fingerprint: &str) -> Result<PartState> {
        let expected = Self::header(dim, rows, fingerprint)?;
        if bytes.len() < Self::HEADER_LEN || bytes[..Self::HEADER_LEN] != expected[..] {
            return Err(Error::InvalidInput(
                "the part file belongs to another build (different captions, model or size): delete it to start over".into(),
            ));
        }
        let row_bytes = dim * 4;
        let rows_done = ((bytes.len() - Self::HEADER_LEN) / row_bytes).min(rows);
        Ok(PartState { rows_done, valid_len: Self::HEADER_LEN + rows_done * row_bytes })
    }

    /// Bytes to append for a batch of rows.
    pub fn encode_rows(rows: &[f32], dim: usize) -> Result<Vec<u8>> {
        if dim == 0 || rows.len() % dim != 0 {
            return Err(Error::InvalidInput(format!("{} values are not rows of {dim}", rows.len())));
        }
        if let Some(i) = rows.iter().position(|x| !x.is_finite()) {
            return Err(Error::InvalidInput(format!("embedding row {} has a non-finite value", i / dim)));
        }
        Ok(rows.iter().flat_map(|x| x.to_le_bytes()).collect())
    }

    /// Rows `start..end` of a complete part, as f32.
    pub fn rows(bytes: &[u8], dim: usize, start: usize, end: usize) -> Result<Vec<f32>> {
        let row_bytes = dim * 4;
        let range = (Self::HEADER_LEN + start * row_bytes)..(Self::HEADER_LEN + end * row_bytes);
        let data = bytes
            .get(range)
            .ok_or_else(|| Error::InvalidInput(format!("part file holds fewer than {end} rows")))?;
        Ok(data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    }

    /// Streams a finished part into our format (see [`NativeMemoryWriter`]).
    pub fn finish_native<W: Write>(bytes: &[u8], dim: usize, rows: usize, fingerprint: &str, out: W, dtype: StoreDtype) -> Result<W> {
        let state = Self::inspect(bytes, dim, rows, fingerprint)?;
        if state.rows_done != rows {
            return Err(Error::InvalidInput(format!("part file has {} of {rows} rows: resume the build", state.rows_done)));
        }
        let mut w = NativeMemoryWriter::new(out, rows, dim, None, dtype)?;
        const BATCH: usize = 16384;
        let mut start = 0;
        while start < rows {
            let end = (start + BATCH).min(rows);
            w.push_clip(&Self::rows(bytes, dim, start, end)?)?;
            start = end;
        }
        w.finish()
    }
}

/// A stable fingerprint of a caption list (FNV-1a 64 over the JSON), for part headers.
pub fn captions_fingerprint(captions: &[String]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for c in captions {
        for b in c.as_bytes().iter().chain(std::iter::once(&0u8)) {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{:016x}-{}", h, captions.len())
}
