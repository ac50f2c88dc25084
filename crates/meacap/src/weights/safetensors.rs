//! safetensors reader: parses the JSON header and hands out zero-copy [`TensorView`]s into the
//! file's bytes (a memory map natively, a buffer in the browser).
//!
//! The header is parsed with `serde_json` into a loose map rather than through
//! `safetensors::SafeTensors::read_metadata`, because that function rejects some valid-enough files
//! (gaps, trailing padding) and reports unknown dtypes as a bare JSON error without the tensor's
//! name. Every check is done here instead: header length against the file, offsets inside the data
//! section, byte length == numel × dtype size (overflow-checked), no overlaps, supported dtypes.
//! Nothing here panics on malformed input; every failure is an [`Error::WeightFile`] or
//! [`Error::Tensor`] naming the file (and the tensor).

use std::collections::BTreeMap;
use std::ops::Range;

use super::{contiguous_strides, DType, TensorSource, TensorView};
use crate::error::{Error, Result};
use crate::files::FileBytes;

/// Headers larger than this are refused (the safetensors crate uses the same bound): a lying
/// length must not make us parse or allocate gigabytes of JSON.
pub const MAX_HEADER_LEN: usize = 100_000_000;

/// One tensor's entry in the header.
#[derive(Debug, Clone)]
pub struct SafetensorsEntry {
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Absolute byte range within the file.
    pub range: Range<usize>,
}

/// A parsed safetensors file.
pub struct SafetensorsFile {
    file: String,
    bytes: FileBytes,
    tensors: BTreeMap<String, SafetensorsEntry>,
    metadata: BTreeMap<String, String>,
}

/// The dtype names of the safetensors format that this crate can use.
pub fn parse_dtype(name: &str) -> Option<DType> {
    Some(match name {
        "F64" => DType::F64,
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "I64" => DType::I64,
        "I32" => DType::I32,
        "I16" => DType::I16,
        "I8" => DType::I8,
        "U8" => DType::U8,
        "BOOL" => DType::Bool,
        _ => return None,
    })
}

/// The safetensors spelling of a dtype.
pub fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F64 => "F64",
        DType::F32 => "F32",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        DType::I64 => "I64",
        DType::I32 => "I32",
        DType::I16 => "I16",
        DType::I8 => "I8",
        DType::U8 => "U8",
        DType::Bool => "BOOL",
    }
}

impl SafetensorsFile {
    /// Parses and validates the header of `bytes`. `file` names the file in errors.
    pub fn parse(file: String, bytes: FileBytes) -> Result<Self> {
        let (tensors, metadata) = {
            let buf: &[u8] = bytes.as_ref().as_ref();
            parse_header(&file, buf)?
        };
        Ok(Self { file, bytes, tensors, metadata })
    }

    /// The `__metadata__` map (string → string); empty when absent.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The header entry of `name`.
    pub fn entry(&self, name: &str) -> Option<&SafetensorsEntry> {
        self.tensors.get(name)
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
}

impl TensorSource for SafetensorsFile {
    fn file(&self) -> &str {
        &self.file
    }

    fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }

    fn view(&self, name: &str) -> Option<TensorView> {
        let entry = self.tensors.get(name)?;
        Some(TensorView {
            dtype: entry.dtype,
            strides: contiguous_strides(&entry.shape),
            shape: entry.shape.clone(),
            offset: 0,
            bytes: self.bytes.clone(),
            range: entry.range.clone(),
        })
    }
}

type Parsed = (BTreeMap<String, SafetensorsEntry>, BTreeMap<String, String>);

fn parse_header(file: &str, buf: &[u8]) -> Result<Parsed> {
    let bad = |message: String| Error::weight_file(file, message);
    let Some(len_bytes) = buf.get(..8) else {
        return Err(bad(format!(
            "{} bytes is too short for a safetensors file (needs an 8-byte header length)",
            buf.len()
        )));
    };
    let mut arr = [0u8; 8];
    arr.copy_from_slice(len_bytes);
    let header_len = u64::from_le_bytes(arr);
    let available = (buf.len() - 8) as u64;
    if header_len > available {
        return Err(bad(format!(
            "header length {header_len} is larger than the {available} bytes that follow it: \
             truncated file, or not a safetensors file"
        )));
    }
    let header_len = header_len as usize;
    if header_len > MAX_HEADER_LEN {
        return Err(bad(format!("header length {header_len} exceeds the {MAX_HEADER_LEN}-byte limit")));
    }
    let header = &buf[8..8 + header_len];
    let data_start = 8 + header_len;
    let data_len = buf.len() - data_start;

    let text = std::str::from_utf8(header).map_err(|e| bad(format!("header is not UTF-8: {e}")))?;
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| bad(format!("header is not valid JSON: {e}")))?;
    let serde_json::Value::Object(map) = json else {
        return Err(bad("header is not a JSON object".into()));
    };

    let mut tensors = BTreeMap::new();
    let mut metadata = BTreeMap::new();
    for (name, value) in map {
        if name == "__metadata__" {
            let serde_json::Value::Object(meta) = value else {
                return Err(bad("`__metadata__` is not an object".into()));
            };
            for (k, v) in meta {
                let v = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                metadata.insert(k, v);
            }
            continue;
        }
        let entry = parse_entry(file, &name, &value, data_start, data_len)?;
        tensors.insert(name, entry);
    }

    // Tensors must not share bytes: a lying header could otherwise alias one tensor's data into
    // another's. Empty tensors occupy nothing and are exempt.
    let mut ranges: Vec<(&String, &Range<usize>)> =
        tensors.iter().filter(|(_, e)| !e.range.is_empty()).map(|(n, e)| (n, &e.range)).collect();
    ranges.sort_by_key(|(_, r)| (r.start, r.end));
    for pair in ranges.windows(2) {
        let (a, ra) = pair[0];
        let (b, rb) = pair[1];
        if rb.start < ra.end {
            return Err(Error::tensor(
                file,
                b.as_str(),
                format!(
                    "data bytes {}..{} overlap those of `{a}` ({}..{})",
                    rb.start - data_start,
                    rb.end - data_start,
                    ra.start - data_start,
                    ra.end - data_start
                ),
            ));
        }
    }
    Ok((tensors, metadata))
}

fn parse_entry(
    file: &str,
    name: &str,
    value: &serde_json::Value,
    data_start: usize,
    data_len: usize,
) -> Result<SafetensorsEntry> {
    let bad = |message: String| Error::tensor(file, name, message);
    let obj = value.as_object().ok_or_else(|| bad("header entry is not an object".into()))?;
    let dtype_str = obj
        .get("dtype")
        .and_then(|d| d.as_str())
        .ok_or_else(|| bad("header entry has no string `dtype`".into()))?;
    let dtype = parse_dtype(dtype_str).ok_or_else(|| {
        bad(format!(
            "unsupported dtype `{dtype_str}` (supported: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL)"
        ))
    })?;
    let shape_json = obj
        .get("shape")
        .and_then(|s| s.as_array())
        .ok_or_else(|| bad("header entry has no `shape` array".into()))?;
    let mut shape = Vec::with_capacity(shape_json.len().min(64));
    for d in shape_json {
        let d = d
            .as_u64()
            .and_then(|d| usize::try_from(d).ok())
            .ok_or_else(|| bad(format!("shape entry {d} is not a non-negative integer")))?;
        shape.push(d);
    }
    let offsets = obj
        .get("data_offsets")
        .and_then(|o| o.as_array())
        .filter(|o| o.len() == 2)
        .ok_or_else(|| bad("header entry has no `data_offsets` pair".into()))?;
    let begin = offsets[0].as_u64().and_then(|v| usize::try_from(v).ok());
    let end = offsets[1].as_u64().and_then(|v| usize::try_from(v).ok());
    let (Some(begin), Some(end)) = (begin, end) else {
        return Err(bad("`data_offsets` are not non-negative integers".into()));
    };
    if begin > end || end > data_len {
        return Err(bad(format!(
            "data_offsets [{begin}, {end}] lie outside the data section of {data_len} bytes: truncated file?"
        )));
    }
    let numel = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    let nbytes = numel.and_then(|n| n.checked_mul(dtype.size()));
    let Some(nbytes) = nbytes else {
        return Err(bad(format!("shape {shape:?} overflows")));
    };
    if end - begin != nbytes {
        return Err(bad(format!(
            "holds {} bytes but shape {shape:?} of {dtype_str} needs {nbytes}",
            end - begin
        )));
    }
    Ok(SafetensorsEntry { dtype, shape, range: data_start + begin..data_start + end })
}
