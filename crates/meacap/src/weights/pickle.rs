//! PyTorch `.pt`/`.bin` reader (the zip + pickle format `torch.save` writes since torch 1.6).
//!
//! No burn-store and no file paths: it works on [`FileBytes`], so the same code runs in wasm.
//! The archive holds `<top>/data.pkl` (a pickle describing the object) and `<top>/data/<key>`
//! (raw little-endian storages); `<top>` is arbitrary. Tensors become zero-copy [`TensorView`]s
//! into the storage entries, which must be *stored* (uncompressed), as torch.save writes them.
//!
//! The pickle VM is deliberately minimal: the opcodes torch.save emits and a short allow-list of
//! globals (OrderedDict, tensor/parameter rebuild functions, storage types). Anything else is a
//! typed [`Error::WeightFile`] naming the file, the opcode or global and its byte position. Nothing
//! is executed. Containers live in an arena (values refer to them by index), so memoised values are
//! shared without copying, cycles cannot recurse, and dropping a deep structure cannot overflow the
//! stack. Lengths read from the file are checked against the bytes that remain before anything is
//! allocated.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::rc::Rc;

use super::{DType, TensorSource, TensorView};
use crate::error::{Error, Result};
use crate::files::FileBytes;

/// A PyTorch checkpoint holding a (possibly nested or wrapped) state_dict.
pub struct PickleCheckpoint {
    file: String,
    tensors: BTreeMap<String, TensorView>,
}

impl PickleCheckpoint {
    /// Parses `bytes` (the whole `.pt`/`.bin` file). Accepts a bare state_dict, the wrappers
    /// `{"state_dict": {...}}` and `{"model": {...}}`, and nested dicts (keys joined with dots).
    pub fn parse(file: String, bytes: FileBytes) -> Result<Self> {
        let tensors = parse_state_dict(&file, bytes)?;
        Ok(Self { file, tensors })
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
}

fn parse_state_dict(file: &str, bytes: FileBytes) -> Result<BTreeMap<String, TensorView>> {
    {
        let archive = Archive::open(file, bytes)?;
        let (root, vm) = archive.unpickle()?;
        let mut root = root;
        if let Value::Dict(id) = root {
            for wrapper in ["state_dict", "model"] {
                if let Some(Value::Dict(inner)) = vm.dict_get(id, wrapper) {
                    root = Value::Dict(inner);
                    break;
                }
            }
        }
        if !matches!(root, Value::Dict(_)) {
            return Err(Error::weight_file(
                file,
                format!("expected a state_dict (a dict of tensors) at the top of the pickle, found {}", vm.kind(&root)),
            ));
        }
        let mut found = Vec::new();
        vm.flatten(&root, String::new(), 0, &mut found);
        let mut tensors = BTreeMap::new();
        for (name, tensor) in found {
            let view = archive.view(&tensor, &name)?;
            tensors.insert(name, view);
        }
        Ok(tensors)
    }
}

impl TensorSource for PickleCheckpoint {
    fn file(&self) -> &str {
        &self.file
    }
    fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }
    fn view(&self, name: &str) -> Option<TensorView> {
        self.tensors.get(name).cloned()
    }
}

/// Reads a `.pt` that holds one bare tensor (`torch.save(tensor)`, e.g. MeaCap's
/// `memory_clip_embeddings.pt`), honouring the storage's dtype, offset and strides.
pub fn read_bare_tensor(file: String, bytes: FileBytes) -> Result<TensorView> {
    let archive = Archive::open(&file, bytes)?;
    let (root, vm) = archive.unpickle()?;
    match root {
        Value::Tensor(t) => archive.view(&t, "<root>"),
        other => Err(Error::weight_file(
            &file,
            format!("expected a single tensor saved with torch.save(tensor), found {}", vm.kind(&other)),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Zip layer

struct Entry {
    /// Absolute byte range of the entry's data in the file.
    range: Range<usize>,
    compressed: Option<String>,
}

struct Archive<'f> {
    file: &'f str,
    bytes: FileBytes,
    /// Entry names with the top folder stripped (`data.pkl`, `data/0`, `byteorder`, ...).
    entries: HashMap<String, Entry>,
}

impl<'f> Archive<'f> {
    fn open(file: &'f str, bytes: FileBytes) -> Result<Self> {
        let bad = |m: String| Error::weight_file(file, m);
        let buf: &[u8] = bytes.as_ref().as_ref();
        if !buf.starts_with(b"PK") {
            let hint = if buf.first() == Some(&0x80) {
                " (it looks like the legacy pre-1.6 torch format: re-save it with a recent torch, or convert to safetensors)"
            } else {
                ""
            };
            return Err(bad(format!("not a PyTorch zip archive{hint}")));
        }
        let raw = read_zip_entries(file, buf)?;
        // The top folder's name is arbitrary (torch uses the file stem): locate `data.pkl` at the
        // shallowest depth and strip its folder from every name.
        let pkl = raw
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
            .min_by_key(|n| (n.matches('/').count(), n.len()))
            .ok_or_else(|| bad("zip archive has no `data.pkl`: not a torch.save checkpoint".into()))?;
        let prefix = pkl[..pkl.len() - "data.pkl".len()].to_string();
        let mut entries = HashMap::new();
        for (name, entry) in raw {
            if let Some(rest) = name.strip_prefix(&prefix) {
                entries.insert(rest.to_string(), entry);
            }
        }
        let archive = Self { file, bytes, entries };
        if let Some(order) = archive.entries.get("byteorder") {
            let data = archive.entry_bytes("byteorder", order)?;
            if data != b"little" {
                return Err(bad(format!(
                    "byteorder is `{}`; only little-endian checkpoints are supported",
                    String::from_utf8_lossy(data)
                )));
            }
        }
        Ok(archive)
    }

    fn entry_bytes(&self, name: &str, entry: &Entry) -> Result<&[u8]> {
        if let Some(method) = &entry.compressed {
            return Err(Error::weight_file(
                self.file,
                format!(
                    "zip entry `{name}` is compressed ({method}); torch.save writes stored entries. \
                     Re-save with torch.save or convert the checkpoint to safetensors"
                ),
            ));
        }
        let buf: &[u8] = self.bytes.as_ref().as_ref();
        buf.get(entry.range.clone())
            .ok_or_else(|| Error::weight_file(self.file, format!("zip entry `{name}` lies past the end of the file")))
    }

    fn unpickle(&self) -> Result<(Value, Vm<'f>)> {
        let entry = self
            .entries
            .get("data.pkl")
            .ok_or_else(|| Error::weight_file(self.file, "zip archive has no `data.pkl`"))?;
        let data = self.entry_bytes("data.pkl", entry)?;
        let mut vm = Vm::new(self.file);
        let root = vm.run(data)?;
        Ok((root, vm))
    }

    fn view(&self, t: &TensorRef, name: &str) -> Result<TensorView> {
        let key = format!("data/{}", t.storage.key);
        let entry = self.entries.get(&key).ok_or_else(|| {
            Error::tensor(self.file, name, format!("storage `{}` is missing from the archive", t.storage.key))
        })?;
        if entry.compressed.is_some() {
            self.entry_bytes(&key, entry)?;
        }
        let dtype = t.storage.dtype;
        let needed = t
            .storage
            .numel
            .checked_mul(dtype.size())
            .ok_or_else(|| Error::tensor(self.file, name, "storage size overflows"))?;
        if entry.range.len() < needed {
            return Err(Error::tensor(
                self.file,
                name,
                format!(
                    "storage `{}` holds {} bytes, its header says {} elements of {:?} ({needed} bytes): truncated file?",
                    t.storage.key,
                    entry.range.len(),
                    t.storage.numel,
                    dtype
                ),
            ));
        }
        let view = TensorView {
            dtype,
            shape: t.shape.clone(),
            strides: t.strides.clone(),
            offset: t.offset,
            bytes: self.bytes.clone(),
            range: entry.range.start..entry.range.start + needed,
        };
        view.validate(self.file, name)?;
        Ok(view)
    }
}

/// Lists a zip archive's entries straight from its central directory (zip64 included), with the
/// absolute byte range of each entry's data. Written here rather than taken from the `zip` crate:
/// zip 9.8 refuses some archives that torch 2.1 writes ("Invalid Central Directory header"), and
/// torch archives need nothing beyond this (stored entries, one disk). Every offset is checked.
fn read_zip_entries(file: &str, buf: &[u8]) -> Result<Vec<(String, Entry)>> {
    let bad = |m: String| Error::weight_file(file, format!("zip archive: {m}"));
    let u16_at = |p: usize| buf.get(p..p + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as u64);
    let u32_at = |p: usize| buf.get(p..p + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64);
    let u64_at = |p: usize| {
        buf.get(p..p + 8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a)
        })
    };
    let truncated = || bad("truncated central directory".into());

    // End of central directory: the last signature whose comment reaches the end of the file.
    let lowest = buf.len().saturating_sub(22 + 0xffff);
    let eocd = (lowest..buf.len().saturating_sub(21))
        .rev()
        .filter(|&p| buf[p..].starts_with(b"PK\x05\x06"))
        .find(|&p| u16_at(p + 20).is_some_and(|c| p + 22 + c as usize == buf.len()))
        .ok_or_else(|| bad("no end-of-central-directory record (truncated file?)".into()))?;
    let mut count = u16_at(eocd + 10).ok_or_else(truncated)?;
    let mut cd_size = u32_at(eocd + 12).ok_or_else(truncated)?;
    let mut cd_offset = u32_at(eocd + 16).ok_or_else(truncated)?;
    // Zip64: a locator just before the EOCD points at the zip64 record with the real numbers.
    if eocd >= 20 && buf[eocd - 20..].starts_with(b"PK\x06\x07") {
        let rec = u64_at(eocd - 20 + 8).ok_or_else(truncated)?;
        let rec = usize::try_from(rec).ok().filter(|&r| buf.get(r..).is_some_and(|b| b.starts_with(b"PK\x06\x06")));
        let rec = rec.ok_or_else(|| bad("zip64 end-of-central-directory record missing".into()))?;
        count = u64_at(rec + 32).ok_or_else(truncated)?;
        cd_size = u64_at(rec + 40).ok_or_else(truncated)?;
        cd_offset = u64_at(rec + 48).ok_or_else(truncated)?;
    }
    let cd_start = usize::try_from(cd_offset).map_err(|_| truncated())?;
    let cd_end = usize::try_from(cd_size).ok().and_then(|s| cd_start.checked_add(s)).filter(|&e| e <= buf.len());
    let cd_end = cd_end.ok_or_else(|| bad("central directory lies past the end of the file (truncated?)".into()))?;
    // Each central record takes at least 46 bytes: a lying count cannot make us allocate more.
    if count > ((cd_end - cd_start) / 46) as u64 {
        return Err(bad(format!("{count} entries do not fit in a {}-byte central directory", cd_end - cd_start)));
    }

    let mut entries = Vec::with_capacity(count as usize);
    let mut p = cd_start;
    for i in 0..count {
        if !buf.get(p..cd_end).is_some_and(|b| b.starts_with(b"PK\x01\x02")) {
            return Err(bad(format!("central directory entry {i} is corrupt")));
        }
        let flags = u16_at(p + 8).ok_or_else(truncated)?;
        let method = u16_at(p + 10).ok_or_else(truncated)?;
        let mut comp = u32_at(p + 20).ok_or_else(truncated)?;
        let mut size = u32_at(p + 24).ok_or_else(truncated)?;
        let name_len = u16_at(p + 28).ok_or_else(truncated)? as usize;
        let extra_len = u16_at(p + 30).ok_or_else(truncated)? as usize;
        let comment_len = u16_at(p + 32).ok_or_else(truncated)? as usize;
        let mut local = u32_at(p + 42).ok_or_else(truncated)?;
        let name_start = p + 46;
        let extra_start = name_start + name_len;
        let next = extra_start + extra_len + comment_len;
        if next > cd_end {
            return Err(truncated());
        }
        let name = String::from_utf8_lossy(&buf[name_start..extra_start]).into_owned();
        // Zip64 extended information (id 1): the 64-bit values of the fields set to 0xffffffff.
        let mut e = extra_start;
        while e + 4 <= extra_start + extra_len {
            let id = u16_at(e).ok_or_else(truncated)?;
            let len = u16_at(e + 2).ok_or_else(truncated)? as usize;
            let body = e + 4;
            if body + len > extra_start + extra_len {
                break;
            }
            if id == 1 {
                let mut q = body;
                for field in [&mut size, &mut comp, &mut local] {
                    if *field == 0xffff_ffff && q + 8 <= body + len {
                        *field = u64_at(q).ok_or_else(truncated)?;
                        q += 8;
                    }
                }
            }
            e = body + len;
        }
        p = next;
        if name.ends_with('/') {
            continue;
        }
        // The data follows the entry's local header, whose name and extra lengths may differ.
        let local = usize::try_from(local).ok().filter(|&l| buf.get(l..).is_some_and(|b| b.starts_with(b"PK\x03\x04")));
        let local = local.ok_or_else(|| bad(format!("entry `{name}` has no local header (truncated?)")))?;
        let lname = u16_at(local + 26).ok_or_else(truncated)? as usize;
        let lextra = u16_at(local + 28).ok_or_else(truncated)? as usize;
        let start = local + 30 + lname + lextra;
        let range = usize::try_from(comp)
            .ok()
            .and_then(|c| start.checked_add(c))
            .filter(|&end| end <= buf.len())
            .map(|end| start..end)
            .ok_or_else(|| bad(format!("entry `{name}` lies past the end of the file (truncated?)")))?;
        let compressed = if flags & 1 != 0 {
            Some("encrypted".to_string())
        } else if method != 0 || comp != size {
            Some(match method {
                8 => "deflate".to_string(),
                12 => "bzip2".to_string(),
                93 => "zstd".to_string(),
                m => format!("method {m}"),
            })
        } else {
            None
        };
        entries.push((name, Entry { range, compressed }));
    }
    Ok(entries)
}

// ---------------------------------------------------------------------------------------------
// Pickle VM

#[derive(Debug)]
struct StorageRef {
    dtype: DType,
    key: Rc<str>,
    numel: usize,
}

#[derive(Debug)]
struct TensorRef {
    storage: Rc<StorageRef>,
    offset: usize,
    shape: Vec<usize>,
    strides: Vec<usize>,
}

/// The callables and classes a torch checkpoint may name.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildTensor,
    RebuildParameter,
    RebuildParameterWithState,
    RebuildFromTypeV2,
    StorageType(DType),
    TorchDevice,
    TorchSize,
    /// `torch.float32` and friends (appear in metadata): kept as their names.
    TorchDtype,
    /// `torch.Tensor` / `torch.nn.parameter.Parameter` as a type argument.
    TensorType,
}

fn resolve_global(module: &str, name: &str) -> Option<Global> {
    use Global::*;
    Some(match (module, name) {
        ("collections", "OrderedDict") => OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2") => RebuildTensorV2,
        ("torch._utils", "_rebuild_tensor") => RebuildTensor,
        ("torch._utils", "_rebuild_parameter") => RebuildParameter,
        ("torch._utils", "_rebuild_parameter_with_state") => RebuildParameterWithState,
        ("torch._tensor", "_rebuild_from_type_v2") => RebuildFromTypeV2,
        ("torch", "device") => TorchDevice,
        ("torch", "Size") => TorchSize,
        ("torch", "Tensor") | ("torch.nn.parameter", "Parameter") => TensorType,
        ("torch", "DoubleStorage") => StorageType(DType::F64),
        ("torch", "FloatStorage") => StorageType(DType::F32),
        ("torch", "HalfStorage") => StorageType(DType::F16),
        ("torch", "BFloat16Storage") => StorageType(DType::BF16),
        ("torch", "LongStorage") => StorageType(DType::I64),
        ("torch", "IntStorage") => StorageType(DType::I32),
        ("torch", "ShortStorage") => StorageType(DType::I16),
        ("torch", "CharStorage") => StorageType(DType::I8),
        ("torch", "ByteStorage") => StorageType(DType::U8),
        ("torch", "BoolStorage") => StorageType(DType::Bool),
        // torch 2.x may write untyped storages; their element is a byte.
        ("torch", "UntypedStorage") | ("torch.storage", "UntypedStorage") => StorageType(DType::U8),
        (
            "torch",
            "float64" | "float32" | "float16" | "bfloat16" | "int64" | "int32" | "int16" | "int8" | "uint8" | "bool"
            | "float" | "half" | "double" | "long" | "int",
        ) => TorchDtype,
        _ => return None,
    })
}

// Some payloads are only kept to describe values in messages and for future use.
#[allow(dead_code)]
#[derive(Debug, Clone)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Tuple(usize),
    List(usize),
    Dict(usize),
    Global(Global),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
}

enum Node {
    Seq(Vec<Value>),
    Dict(Vec<(Value, Value)>),
}

/// Nesting deeper than this in a state_dict is refused when flattening (guards cyclic pickles).
const MAX_DEPTH: usize = 64;

struct Vm<'f> {
    file: &'f str,
    arena: Vec<Node>,
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.data.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a)
        })
    }
    fn line(&mut self) -> Option<&'a [u8]> {
        let rest = self.data.get(self.pos..)?;
        let n = rest.iter().position(|&b| b == b'\n')?;
        let line = &rest[..n];
        self.pos += n + 1;
        Some(line)
    }
    fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }
}

fn opcode_name(op: u8) -> String {
    let name = match op {
        b'I' => "INT",
        b'L' => "LONG",
        b'F' => "FLOAT",
        b'S' => "STRING",
        b'V' => "UNICODE",
        b'P' => "PERSID",
        b'g' => "GET",
        b'p' => "PUT",
        b'i' => "INST",
        b'o' => "OBJ",
        0x8b => "LONG4",
        0x8e => "BINBYTES8",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x92 => "NEWOBJ_EX",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        _ => "",
    };
    if name.is_empty() {
        format!("0x{op:02x}")
    } else {
        format!("{name} (0x{op:02x})")
    }
}

impl<'f> Vm<'f> {
    fn new(file: &'f str) -> Self {
        Self { file, arena: Vec::new() }
    }

    fn err(&self, pos: usize, message: impl std::fmt::Display) -> Error {
        Error::weight_file(self.file, format!("pickle (data.pkl) at byte {pos}: {message}"))
    }

    fn alloc(&mut self, node: Node) -> usize {
        self.arena.push(node);
        self.arena.len() - 1
    }

    fn seq(&self, id: usize) -> &[Value] {
        match &self.arena[id] {
            Node::Seq(v) => v,
            Node::Dict(_) => &[],
        }
    }

    fn kind(&self, v: &Value) -> &'static str {
        match v {
            Value::None => "None",
            Value::Bool(_) => "a bool",
            Value::Int(_) => "an int",
            Value::Float(_) => "a float",
            Value::Str(_) => "a string",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "a tuple",
            Value::List(_) => "a list",
            Value::Dict(_) => "a dict",
            Value::Global(_) => "a class",
            Value::Storage(_) => "a storage",
            Value::Tensor(_) => "a tensor",
        }
    }

    fn dict_get(&self, id: usize, key: &str) -> Option<Value> {
        match &self.arena[id] {
            Node::Dict(items) => items.iter().rev().find_map(|(k, v)| match k {
                Value::Str(s) if &**s == key => Some(v.clone()),
                _ => None,
            }),
            Node::Seq(_) => None,
        }
    }

    /// Collects every tensor under `v`, naming it by its path of keys joined with dots.
    fn flatten(&self, v: &Value, prefix: String, depth: usize, out: &mut Vec<(String, Rc<TensorRef>)>) {
        if depth > MAX_DEPTH {
            return;
        }
        let join = |k: &str| if prefix.is_empty() { k.to_string() } else { format!("{prefix}.{k}") };
        match v {
            Value::Tensor(t) => out.push((prefix.clone(), t.clone())),
            Value::Dict(id) => {
                if let Node::Dict(items) = &self.arena[*id] {
                    for (k, v) in items {
                        let key = match k {
                            Value::Str(s) => s.to_string(),
                            Value::Int(i) => i.to_string(),
                            _ => continue,
                        };
                        self.flatten(v, join(&key), depth + 1, out);
                    }
                }
            }
            Value::List(id) => {
                for (i, v) in self.seq(*id).iter().enumerate() {
                    self.flatten(v, join(&i.to_string()), depth + 1, out);
                }
            }
            _ => {}
        }
    }

    fn run(&mut self, data: &[u8]) -> Result<Value> {
        let mut r = Reader { data, pos: 0 };
        let mut stack: Vec<Value> = Vec::new();
        let mut marks: Vec<usize> = Vec::new();
        let mut memo: HashMap<u32, Value> = HashMap::new();

        macro_rules! pop {
            ($pos:expr, $op:expr) => {
                stack.pop().ok_or_else(|| self.err($pos, format!("{} on an empty stack", $op)))?
            };
        }
        macro_rules! need {
            ($e:expr, $pos:expr, $what:expr) => {
                $e.ok_or_else(|| self.err($pos, format!("truncated pickle: {} runs past the end", $what)))?
            };
        }

        loop {
            let pos = r.pos;
            let op = need!(r.u8(), pos, "opcode");
            match op {
                0x80 => {
                    // PROTO
                    let v = need!(r.u8(), pos, "PROTO");
                    if v > 5 {
                        return Err(self.err(pos, format!("unsupported pickle protocol {v}")));
                    }
                }
                0x95 => {
                    // FRAME: a length hint only.
                    need!(r.u64(), pos, "FRAME");
                }
                b'.' => {
                    // STOP
                    return stack.pop().ok_or_else(|| self.err(pos, "STOP with an empty stack"));
                }
                b'(' => marks.push(stack.len()),
                b'N' => stack.push(Value::None),
                0x88 => stack.push(Value::Bool(true)),
                0x89 => stack.push(Value::Bool(false)),
                b'J' => {
                    let v = need!(r.u32(), pos, "BININT") as i32;
                    stack.push(Value::Int(v as i64));
                }
                b'K' => stack.push(Value::Int(need!(r.u8(), pos, "BININT1") as i64)),
                b'M' => stack.push(Value::Int(need!(r.u16(), pos, "BININT2") as i64)),
                0x8a => {
                    // LONG1: little-endian two's complement of n bytes.
                    let n = need!(r.u8(), pos, "LONG1") as usize;
                    let b = need!(r.take(n), pos, "LONG1");
                    if n > 8 {
                        return Err(self.err(pos, format!("LONG1 of {n} bytes does not fit in 64 bits")));
                    }
                    let mut a = if b.last().is_some_and(|&x| x & 0x80 != 0) { [0xffu8; 8] } else { [0u8; 8] };
                    a[..n].copy_from_slice(b);
                    stack.push(Value::Int(i64::from_le_bytes(a)));
                }
                b'G' => {
                    let b = need!(r.take(8), pos, "BINFLOAT");
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    stack.push(Value::Float(f64::from_be_bytes(a)));
                }
                0x8c | b'X' | 0x8d => {
                    let n = match op {
                        0x8c => need!(r.u8(), pos, "SHORT_BINUNICODE") as u64,
                        b'X' => need!(r.u32(), pos, "BINUNICODE") as u64,
                        _ => need!(r.u64(), pos, "BINUNICODE8"),
                    };
                    let n = self.check_len(&r, n, pos)?;
                    let b = need!(r.take(n), pos, "string");
                    let s = std::str::from_utf8(b).map_err(|e| self.err(pos, format!("string is not UTF-8: {e}")))?;
                    stack.push(Value::Str(Rc::from(s)));
                }
                b'U' | b'T' => {
                    let n = if op == b'U' {
                        need!(r.u8(), pos, "SHORT_BINSTRING") as u64
                    } else {
                        let n = need!(r.u32(), pos, "BINSTRING") as i32;
                        u64::try_from(n).map_err(|_| self.err(pos, "BINSTRING with a negative length"))?
                    };
                    let n = self.check_len(&r, n, pos)?;
                    let b = need!(r.take(n), pos, "string");
                    // Python 2 str: bytes; torch never relies on these, keep them readable.
                    stack.push(Value::Str(Rc::from(String::from_utf8_lossy(b).as_ref())));
                }
                b'C' | b'B' => {
                    let n = if op == b'C' {
                        need!(r.u8(), pos, "SHORT_BINBYTES") as u64
                    } else {
                        need!(r.u32(), pos, "BINBYTES") as u64
                    };
                    let n = self.check_len(&r, n, pos)?;
                    let b = need!(r.take(n), pos, "bytes");
                    stack.push(Value::Bytes(Rc::from(b)));
                }
                b'}' => {
                    let id = self.alloc(Node::Dict(Vec::new()));
                    stack.push(Value::Dict(id));
                }
                b']' => {
                    let id = self.alloc(Node::Seq(Vec::new()));
                    stack.push(Value::List(id));
                }
                b')' => {
                    let id = self.alloc(Node::Seq(Vec::new()));
                    stack.push(Value::Tuple(id));
                }
                b'd' | b'l' | b't' => {
                    let mark = marks.pop().ok_or_else(|| self.err(pos, "DICT/LIST/TUPLE without a MARK"))?;
                    let items = stack.split_off(mark.min(stack.len()));
                    let v = match op {
                        b'd' => {
                            if items.len() % 2 != 0 {
                                return Err(self.err(pos, "DICT with an odd number of items"));
                            }
                            let mut pairs = Vec::with_capacity(items.len() / 2);
                            let mut it = items.into_iter();
                            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                                pairs.push((k, v));
                            }
                            Value::Dict(self.alloc(Node::Dict(pairs)))
                        }
                        b'l' => Value::List(self.alloc(Node::Seq(items))),
                        _ => Value::Tuple(self.alloc(Node::Seq(items))),
                    };
                    stack.push(v);
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if stack.len() < n {
                        return Err(self.err(pos, format!("TUPLE{n} with {} items on the stack", stack.len())));
                    }
                    let items = stack.split_off(stack.len() - n);
                    let id = self.alloc(Node::Seq(items));
                    stack.push(Value::Tuple(id));
                }
                b'q' | b'r' | 0x94 => {
                    let idx = match op {
                        b'q' => need!(r.u8(), pos, "BINPUT") as u32,
                        b'r' => need!(r.u32(), pos, "LONG_BINPUT"),
                        _ => u32::try_from(memo.len()).map_err(|_| self.err(pos, "memo overflow"))?,
                    };
                    let top = stack.last().cloned().ok_or_else(|| self.err(pos, "memo PUT on an empty stack"))?;
                    memo.insert(idx, top);
                }
                b'h' | b'j' => {
                    let idx = if op == b'h' {
                        need!(r.u8(), pos, "BINGET") as u32
                    } else {
                        need!(r.u32(), pos, "LONG_BINGET")
                    };
                    let v = memo.get(&idx).cloned().ok_or_else(|| self.err(pos, format!("memo key {idx} is not defined")))?;
                    stack.push(v);
                }
                b'0' => {
                    pop!(pos, "POP");
                }
                b'1' => {
                    let mark = marks.pop().ok_or_else(|| self.err(pos, "POP_MARK without a MARK"))?;
                    stack.truncate(mark);
                }
                b'2' => {
                    let top = stack.last().cloned().ok_or_else(|| self.err(pos, "DUP on an empty stack"))?;
                    stack.push(top);
                }
                b'a' => {
                    let v = pop!(pos, "APPEND");
                    let list = stack.last().cloned().ok_or_else(|| self.err(pos, "APPEND without a list"))?;
                    self.extend_list(&list, vec![v], pos)?;
                }
                b'e' => {
                    let mark = marks.pop().ok_or_else(|| self.err(pos, "APPENDS without a MARK"))?;
                    let items = stack.split_off(mark.min(stack.len()));
                    let list = stack.last().cloned().ok_or_else(|| self.err(pos, "APPENDS without a list"))?;
                    self.extend_list(&list, items, pos)?;
                }
                b's' => {
                    let v = pop!(pos, "SETITEM");
                    let k = pop!(pos, "SETITEM");
                    let dict = stack.last().cloned().ok_or_else(|| self.err(pos, "SETITEM without a dict"))?;
                    self.set_items(&dict, vec![k, v], pos)?;
                }
                b'u' => {
                    let mark = marks.pop().ok_or_else(|| self.err(pos, "SETITEMS without a MARK"))?;
                    let items = stack.split_off(mark.min(stack.len()));
                    if items.len() % 2 != 0 {
                        return Err(self.err(pos, "SETITEMS with an odd number of items"));
                    }
                    let dict = stack.last().cloned().ok_or_else(|| self.err(pos, "SETITEMS without a dict"))?;
                    self.set_items(&dict, items, pos)?;
                }
                b'c' => {
                    let module = need!(r.line(), pos, "GLOBAL");
                    let name = need!(r.line(), pos, "GLOBAL");
                    let module = String::from_utf8_lossy(module);
                    let name = String::from_utf8_lossy(name);
                    stack.push(Value::Global(self.global(&module, &name, pos)?));
                }
                0x93 => {
                    let name = pop!(pos, "STACK_GLOBAL");
                    let module = pop!(pos, "STACK_GLOBAL");
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return Err(self.err(pos, "STACK_GLOBAL needs two strings"));
                    };
                    stack.push(Value::Global(self.global(&module, &name, pos)?));
                }
                b'Q' => {
                    let pid = pop!(pos, "BINPERSID");
                    let storage = self.persistent_load(&pid, pos)?;
                    stack.push(storage);
                }
                b'R' => {
                    let args = pop!(pos, "REDUCE");
                    let func = pop!(pos, "REDUCE");
                    let v = self.call(&func, &args, pos, 0)?;
                    stack.push(v);
                }
                0x81 => {
                    // NEWOBJ: cls.__new__(cls, *args); only OrderedDict is expected.
                    let args = pop!(pos, "NEWOBJ");
                    let cls = pop!(pos, "NEWOBJ");
                    let v = self.call(&cls, &args, pos, 0)?;
                    stack.push(v);
                }
                b'b' => {
                    // BUILD: sets an object's state (OrderedDict `_metadata`, tensor hooks): not
                    // needed for the weights, so the state is dropped.
                    pop!(pos, "BUILD");
                    if stack.is_empty() {
                        return Err(self.err(pos, "BUILD without an object"));
                    }
                }
                other => {
                    return Err(self.err(pos, format!("unsupported pickle opcode {}", opcode_name(other))));
                }
            }
        }
    }

    /// A length read from the file, checked against what remains, so no allocation exceeds the input.
    fn check_len(&self, r: &Reader, n: u64, pos: usize) -> Result<usize> {
        match usize::try_from(n) {
            Ok(n) if n <= r.remaining() => Ok(n),
            _ => Err(self.err(pos, format!("truncated pickle: length {n} exceeds the {} bytes left", r.remaining()))),
        }
    }

    fn global(&self, module: &str, name: &str, pos: usize) -> Result<Global> {
        resolve_global(module, name)
            .ok_or_else(|| self.err(pos, format!("unsupported global `{module}.{name}` (not a plain torch state_dict or tensor)")))
    }

    fn extend_list(&mut self, list: &Value, items: Vec<Value>, pos: usize) -> Result<()> {
        if let Value::List(id) = list {
            if let Node::Seq(v) = &mut self.arena[*id] {
                v.extend(items);
                return Ok(());
            }
        }
        Err(self.err(pos, format!("APPEND(S) to {}", self.kind(list))))
    }

    fn set_items(&mut self, dict: &Value, items: Vec<Value>, pos: usize) -> Result<()> {
        if let Value::Dict(id) = dict {
            if let Node::Dict(v) = &mut self.arena[*id] {
                let mut it = items.into_iter();
                while let (Some(k), Some(val)) = (it.next(), it.next()) {
                    v.push((k, val));
                }
                return Ok(());
            }
        }
        Err(self.err(pos, format!("SETITEM(S) on {}", self.kind(dict))))
    }

    fn usize_of(&self, v: &Value, what: &str, pos: usize) -> Result<usize> {
        match v {
            Value::Int(i) => usize::try_from(*i).map_err(|_| self.err(pos, format!("{what} is negative: {i}"))),
            other => Err(self.err(pos, format!("{what} is {}, expected an int", self.kind(other)))),
        }
    }

    fn usize_tuple(&self, v: &Value, what: &str, pos: usize) -> Result<Vec<usize>> {
        match v {
            Value::Tuple(id) | Value::List(id) => {
                self.seq(*id).iter().map(|x| self.usize_of(x, what, pos)).collect()
            }
            other => Err(self.err(pos, format!("{what} is {}, expected a tuple", self.kind(other)))),
        }
    }

    fn args<'s>(&'s self, args: &Value, pos: usize) -> Result<&'s [Value]> {
        match args {
            Value::Tuple(id) => Ok(self.seq(*id)),
            other => Err(self.err(pos, format!("call arguments are {}, expected a tuple", self.kind(other)))),
        }
    }

    /// `('storage', storage_type, key, location, numel)` → a storage reference.
    fn persistent_load(&self, pid: &Value, pos: usize) -> Result<Value> {
        let items = match pid {
            Value::Tuple(id) => self.seq(*id),
            other => return Err(self.err(pos, format!("persistent id is {}, expected a tuple", self.kind(other)))),
        };
        let [Value::Str(tag), ty, key, _location, numel] = items else {
            return Err(self.err(pos, "persistent id is not ('storage', type, key, location, numel)"));
        };
        if &**tag != "storage" {
            return Err(self.err(pos, format!("persistent id tag `{tag}` is not `storage`")));
        }
        let Value::Global(Global::StorageType(dtype)) = ty else {
            return Err(self.err(pos, format!("persistent id storage type is {}", self.kind(ty))));
        };
        let key: Rc<str> = match key {
            Value::Str(s) => s.clone(),
            Value::Int(i) => Rc::from(i.to_string().as_str()),
            other => return Err(self.err(pos, format!("storage key is {}", self.kind(other)))),
        };
        let numel = self.usize_of(numel, "storage size", pos)?;
        Ok(Value::Storage(Rc::new(StorageRef { dtype: *dtype, key, numel })))
    }

    fn call(&mut self, func: &Value, args: &Value, pos: usize, depth: usize) -> Result<Value> {
        if depth > 8 {
            return Err(self.err(pos, "nested _rebuild_from_type_v2 calls"));
        }
        let Value::Global(g) = func else {
            return Err(self.err(pos, format!("REDUCE/NEWOBJ on {}, expected a class or function", self.kind(func))));
        };
        let a = self.args(args, pos)?.to_vec();
        match g {
            Global::OrderedDict => {
                // OrderedDict() or OrderedDict([(k, v), ...]).
                let mut pairs = Vec::new();
                if let Some(Value::List(id) | Value::Tuple(id)) = a.first() {
                    for item in self.seq(*id) {
                        if let Value::Tuple(t) = item {
                            if let [k, v] = self.seq(*t) {
                                pairs.push((k.clone(), v.clone()));
                            }
                        }
                    }
                }
                Ok(Value::Dict(self.alloc(Node::Dict(pairs))))
            }
            Global::RebuildTensorV2 | Global::RebuildTensor => {
                if a.len() < 4 {
                    return Err(self.err(pos, format!("_rebuild_tensor with {} arguments", a.len())));
                }
                let Value::Storage(storage) = &a[0] else {
                    return Err(self.err(pos, format!("_rebuild_tensor storage is {}", self.kind(&a[0]))));
                };
                let offset = self.usize_of(&a[1], "storage offset", pos)?;
                let shape = self.usize_tuple(&a[2], "tensor size", pos)?;
                let strides = self.usize_tuple(&a[3], "tensor stride", pos)?;
                if shape.len() != strides.len() {
                    return Err(self.err(pos, format!("tensor size {shape:?} and stride {strides:?} differ in rank")));
                }
                Ok(Value::Tensor(Rc::new(TensorRef { storage: storage.clone(), offset, shape, strides })))
            }
            Global::RebuildParameter | Global::RebuildParameterWithState => match a.first() {
                Some(t @ Value::Tensor(_)) => Ok(t.clone()),
                _ => Err(self.err(pos, "_rebuild_parameter without a tensor")),
            },
            Global::RebuildFromTypeV2 => {
                // (func, type, args, state): rebuild with func(*args), ignore the Python subclass.
                if a.len() < 3 {
                    return Err(self.err(pos, "_rebuild_from_type_v2 with too few arguments"));
                }
                let (f, inner) = (a[0].clone(), a[2].clone());
                self.call(&f, &inner, pos, depth + 1)
            }
            Global::TorchDevice => Ok(a.first().cloned().unwrap_or(Value::None)),
            Global::TorchSize => Ok(a.first().cloned().unwrap_or(Value::None)),
            other => Err(self.err(pos, format!("cannot call {other:?}"))),
        }
    }
}
