//! Weight readers: torch.save fixtures (tests/fixtures/weights, made by make.py there), hand-built
//! malformed files, and a deterministic mutation run asserting that no input makes a reader panic.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use meacap::weights::pickle::{read_bare_tensor, PickleCheckpoint};
use meacap::weights::safetensors::SafetensorsFile;
use meacap::weights::{DType, TensorSource};
use meacap::{Error, FileBytes};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/weights")
}

fn bytes(v: Vec<u8>) -> FileBytes {
    Arc::new(v)
}

fn fixture(name: &str) -> FileBytes {
    let path = fixtures().join(name);
    bytes(std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

fn expected() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixtures().join("expected.json")).unwrap()).unwrap()
}

fn values(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn shape(v: &serde_json::Value) -> Vec<usize> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect()
}

// ------------------------------------------------------------------ torch.save fixtures

#[test]
fn bare_tensors_match_torch() {
    let exp = expected();
    for (name, dtype) in [
        ("f32.pt", DType::F32),
        ("f16.pt", DType::F16),
        ("bf16.pt", DType::BF16),
        ("offset_view.pt", DType::F32),
        ("transposed.pt", DType::F32),
        ("one_d.pt", DType::F32),
        ("parameter.pt", DType::F32),
        ("renamed_top.pt", DType::F32),
    ] {
        let key = if name == "renamed_top.pt" { "f32.pt" } else { name };
        let view = read_bare_tensor(name.into(), fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(view.dtype, dtype, "{name}");
        assert_eq!(view.shape, shape(&exp[key]["shape"]), "{name}");
        assert_eq!(view.to_f32(name, "t").unwrap(), values(&exp[key]["values"]), "{name}");
    }
    let view = read_bare_tensor("offset_view.pt".into(), fixture("offset_view.pt")).unwrap();
    assert_eq!(view.offset, 15);
    let view = read_bare_tensor("transposed.pt".into(), fixture("transposed.pt")).unwrap();
    assert_eq!((view.strides.clone(), view.offset), (vec![1, 5], 1));
}

#[test]
fn int64_tensor_keeps_its_dtype() {
    let view = read_bare_tensor("int64.pt".into(), fixture("int64.pt")).unwrap();
    assert_eq!(view.dtype, DType::I64);
    assert_eq!(view.shape, vec![2, 2]);
    let data = &view.bytes.as_ref().as_ref()[view.range.clone()];
    let ints: Vec<i64> = data.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect();
    assert_eq!(ints, vec![1, -2, 3, 1 << 40]);
}

#[test]
fn state_dicts_and_wrappers() {
    let exp = expected();
    let sd = &exp["state_dict.pt"];
    for name in ["state_dict.pt", "wrapped_state_dict.pt", "wrapped_model.pt"] {
        let ck = PickleCheckpoint::parse(name.into(), fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut names = ck.names();
        names.sort();
        assert_eq!(names, vec!["count", "lin.bias", "lin.weight", "norm.bias", "norm.weight"], "{name}");
        for key in ["lin.weight", "lin.bias", "norm.weight", "count"] {
            let v = ck.view(key).unwrap();
            assert_eq!(v.shape, shape(&sd[key]["shape"]), "{name} {key}");
            assert_eq!(v.to_f32(name, key).unwrap(), values(&sd[key]["values"]), "{name} {key}");
        }
        assert_eq!(ck.view("count").unwrap().dtype, DType::I64);
    }
}

#[test]
fn nested_dicts_flatten_with_dots_and_shared_storages() {
    let ck = PickleCheckpoint::parse("nested.pt".into(), fixture("nested.pt")).unwrap();
    let mut names = ck.names();
    names.sort();
    assert_eq!(names, vec!["dec.b", "enc.w"]);
    assert_eq!(ck.view("dec.b").unwrap().to_f32("", "").unwrap(), vec![0.5, 0.75, 1.0]);

    let ck = PickleCheckpoint::parse("shared_storage.pt".into(), fixture("shared_storage.pt")).unwrap();
    assert_eq!(ck.view("a").unwrap().to_f32("", "").unwrap(), vec![0., 1., 2., 3., 4.]);
    assert_eq!(ck.view("b").unwrap().to_f32("", "").unwrap(), (5..15).map(|x| x as f32).collect::<Vec<_>>());
}

#[test]
fn weights_facade_reads_pickle_checkpoints() {
    let files = meacap::MemFiles::new("tiny").with("pytorch_model.bin", std::fs::read(fixtures().join("state_dict.pt")).unwrap());
    let device = burn::prelude::Device::flex();
    let w = meacap::weights::Weights::from_model_files(&files, &device).unwrap();
    let (data, shape) = w.pp("lin").get_f32("weight", &[2, 3]).unwrap();
    assert_eq!(shape, vec![2, 3]);
    assert_eq!(data, vec![1.0, 2.0, 3.0, -1.0, 0.5, 0.25]);
}

#[test]
fn compressed_legacy_and_non_zip_files_are_typed_errors() {
    let err = read_bare_tensor("compressed.pt".into(), fixture("compressed.pt")).unwrap_err();
    match &err {
        Error::WeightFile { file, message } => {
            assert_eq!(file, "compressed.pt");
            assert!(message.contains("compressed"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let err = read_bare_tensor("legacy.pt".into(), fixture("legacy.pt")).unwrap_err();
    assert!(matches!(&err, Error::WeightFile { message, .. } if message.contains("legacy")), "{err}");
    for junk in [vec![], b"hello world".to_vec(), b"PK\x03\x04 not really".to_vec()] {
        let err = read_bare_tensor("junk.pt".into(), bytes(junk.clone())).unwrap_err();
        assert!(matches!(err, Error::WeightFile { .. }), "{err}");
        let err = PickleCheckpoint::parse("junk.pt".into(), bytes(junk)).err().unwrap();
        assert!(matches!(err, Error::WeightFile { .. }), "{err}");
    }
    // A state_dict is not a bare tensor and vice versa.
    let err = read_bare_tensor("state_dict.pt".into(), fixture("state_dict.pt")).unwrap_err();
    assert!(matches!(&err, Error::WeightFile { message, .. } if message.contains("a dict")), "{err}");
    let err = PickleCheckpoint::parse("f32.pt".into(), fixture("f32.pt")).err().unwrap();
    assert!(matches!(&err, Error::WeightFile { message, .. } if message.contains("a tensor")), "{err}");
}

/// Optional: the fixtures another script writes to tests/fixtures/pt (bare tensors and a
/// state_dict with an expected.json); checked when present.
#[test]
fn shared_pt_fixtures_when_present() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/pt");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        println!("tests/fixtures/pt not present: skipped");
        return;
    };
    let mut read = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("pt") {
            continue;
        }
        let name = path.display().to_string();
        let data = bytes(std::fs::read(&path).unwrap());
        // Each file is either a bare tensor or a state_dict: one of the two readers must take it.
        let ok = match read_bare_tensor(name.clone(), data.clone()) {
            Ok(v) => v.dtype != DType::F32 || v.to_f32(&name, "t").is_ok(),
            Err(_) => PickleCheckpoint::parse(name.clone(), data).is_ok(),
        };
        assert!(ok, "{name}: neither a bare tensor nor a state_dict");
        read += 1;
    }
    println!("read {read} files from tests/fixtures/pt");
}

// ------------------------------------------------------------------ safetensors

fn st_file(header: &str, data: &[u8]) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    v.extend_from_slice(data);
    v
}

fn st_err(v: Vec<u8>) -> Error {
    SafetensorsFile::parse("bad.safetensors".into(), bytes(v)).err().expect("should fail")
}

#[test]
fn safetensors_fixture_reads() {
    let st = SafetensorsFile::parse("small.safetensors".into(), fixture("small.safetensors")).unwrap();
    assert_eq!(st.metadata().get("k").map(String::as_str), Some("v"));
    let w = st.view("w").unwrap();
    assert_eq!((w.dtype, w.shape.clone()), (DType::F32, vec![5, 3]));
    let h = st.view("h").unwrap();
    assert_eq!(h.dtype, DType::F16);
    assert_eq!(w.to_f32("", "").unwrap(), h.to_f32("", "").unwrap());
    assert_eq!(st.view("i").unwrap().to_f32("", "").unwrap(), vec![1.0, 2.0]);
    // The repo's model fixtures read too.
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/clip/model.safetensors");
    if let Ok(data) = std::fs::read(&path) {
        let st = SafetensorsFile::parse(path.display().to_string(), bytes(data)).unwrap();
        assert!(!st.is_empty());
        for name in st.names() {
            st.view(&name).unwrap().validate("clip", &name).unwrap();
        }
    }
}

#[test]
fn safetensors_malformed_inputs_are_typed_errors() {
    let good = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    assert!(SafetensorsFile::parse("ok".into(), bytes(st_file(good, &[0; 8]))).is_ok());

    // Too short for the length prefix.
    assert!(matches!(st_err(vec![1, 2, 3]), Error::WeightFile { .. }));
    // Header length lies (past the end of the file; absurdly large).
    let mut v = st_file(good, &[0; 8]);
    v[..8].copy_from_slice(&1000u64.to_le_bytes());
    assert!(matches!(st_err(v), Error::WeightFile { message, .. } if message.contains("header length")));
    let mut v = st_file(good, &[0; 8]);
    v[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(st_err(v), Error::WeightFile { .. }));
    // Truncated data.
    assert!(matches!(st_err(st_file(good, &[0; 7])), Error::Tensor { tensor, .. } if tensor == "a"));
    // Offsets out of range, reversed, or not matching the shape.
    for header in [
        r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,800]}}"#,
        r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#,
        r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
        r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}}"#,
        r#"{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,8]}}"#,
        r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0]}}"#,
        r#"{"a":{"dtype":"F32","shape":[2]}}"#,
        r#"{"a":{"shape":[2],"data_offsets":[0,8]}}"#,
        r#"{"a":7}"#,
    ] {
        let err = st_err(st_file(header, &[0; 8]));
        assert!(matches!(&err, Error::Tensor { file, tensor, .. } if file == "bad.safetensors" && tensor == "a"), "{header}: {err:?}");
    }
    // Overlapping tensors.
    let overlap = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
    assert!(matches!(st_err(st_file(overlap, &[0; 8])), Error::Tensor { .. }));
    // Bad JSON, not an object, not UTF-8, bad metadata.
    for header in ["{\"a\":", "[1,2]", "{\"__metadata__\": 3}"] {
        assert!(matches!(st_err(st_file(header, &[])), Error::WeightFile { .. }), "{header}");
    }
    let mut v = st_file("{\"\u{e9}\":1}", &[]);
    v[10] = 0xff;
    assert!(matches!(st_err(v), Error::WeightFile { .. }));
    // Unsupported dtypes name the file and the tensor.
    for dtype in ["U16", "F8_E4M3", "C64", "NOPE"] {
        let header = format!(r#"{{"w":{{"dtype":"{dtype}","shape":[4],"data_offsets":[0,8]}}}}"#);
        match st_err(st_file(&header, &[0; 8])) {
            Error::Tensor { file, tensor, message } => {
                assert_eq!((file.as_str(), tensor.as_str()), ("bad.safetensors", "w"));
                assert!(message.contains(dtype), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
}

// ------------------------------------------------------------------ hand-built pickles

/// A torch-style zip archive (stored entries) with the given pickle and storages.
fn torch_zip(top: &str, pickle: &[u8], storages: &[(&str, &[u8])]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file(format!("{top}/data.pkl"), opts).unwrap();
    zip.write_all(pickle).unwrap();
    zip.start_file(format!("{top}/byteorder"), opts).unwrap();
    zip.write_all(b"little").unwrap();
    for (key, data) in storages {
        zip.start_file(format!("{top}/data/{key}"), opts).unwrap();
        zip.write_all(data).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

fn unicode(s: &str) -> Vec<u8> {
    let mut v = vec![0x8c, s.len() as u8];
    v.extend_from_slice(s.as_bytes());
    v
}

/// The pickle torch.save writes for a bare 1-D float tensor of `n` elements, offset 0.
fn tensor_pickle(storage: &str, n: u8) -> Vec<u8> {
    let mut p = vec![0x80, 2];
    p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n");
    p.push(b'(');
    p.push(b'(');
    p.extend(unicode("storage"));
    p.extend(format!("ctorch\n{storage}\n").as_bytes());
    p.extend(unicode("0"));
    p.extend(unicode("cpu"));
    p.extend([b'K', n, b't', b'Q']);
    p.extend([b'K', 0, b'K', n, 0x85, b'K', 1, 0x85, 0x89]);
    p.extend(b"ccollections\nOrderedDict\n)R");
    p.extend([b't', b'R', b'.']);
    p
}

fn pk_err(pickle: &[u8], storages: &[(&str, &[u8])]) -> Error {
    let z = torch_zip("archive", pickle, storages);
    read_bare_tensor("hand.pt".into(), bytes(z)).err().expect("should fail")
}

#[test]
fn hand_built_pickle_reads() {
    let data: Vec<u8> = [1.0f32, 2.0, 3.0].iter().flat_map(|x| x.to_le_bytes()).collect();
    let z = torch_zip("whatever-name", &tensor_pickle("FloatStorage", 3), &[("0", &data)]);
    let v = read_bare_tensor("hand.pt".into(), bytes(z)).unwrap();
    assert_eq!(v.to_f32("", "").unwrap(), vec![1.0, 2.0, 3.0]);
}

#[test]
fn pickle_malformed_inputs_are_typed_errors() {
    let data: Vec<u8> = [1.0f32, 2.0, 3.0].iter().flat_map(|x| x.to_le_bytes()).collect();
    let good = tensor_pickle("FloatStorage", 3);
    let msg = |e: Error| match e {
        Error::WeightFile { file, message } => {
            assert_eq!(file, "hand.pt");
            message
        }
        other => panic!("expected WeightFile, got {other:?}"),
    };

    // Truncated at every length: always an error, never a panic.
    for cut in 0..good.len() {
        let e = pk_err(&good[..cut], &[("0", &data)]);
        assert!(matches!(e, Error::WeightFile { .. }), "cut {cut}: {e:?}");
    }
    // Unknown opcodes name the opcode and its position.
    let mut p = good.clone();
    p.insert(2, b'I'); // INT (text protocol 0)
    let m = msg(pk_err(&p, &[("0", &data)]));
    assert!(m.contains("INT") && m.contains("byte 2"), "{m}");
    let m = msg(pk_err(&[0x80, 2, 0xfe], &[]));
    assert!(m.contains("0xfe"), "{m}");
    // Unknown globals (e.g. the classic os.system exploit) are refused, never resolved.
    let m = msg(pk_err(b"\x80\x02cos\nsystem\nq\x00.", &[]));
    assert!(m.contains("os.system"), "{m}");
    let mut p = vec![0x80, 4];
    p.extend(unicode("builtins"));
    p.extend(unicode("eval"));
    p.push(0x93);
    let m = msg(pk_err(&p, &[]));
    assert!(m.contains("builtins.eval"), "{m}");
    // A length that runs past the end must not allocate it.
    let m = msg(pk_err(&[0x80, 2, 0x8d, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f], &[]));
    assert!(m.contains("exceeds"), "{m}");
    let m = msg(pk_err(&[0x80, 2, b'X', 0xff, 0xff, 0xff, 0x7f, b'a'], &[]));
    assert!(m.contains("exceeds"), "{m}");
    // Stack misuse.
    assert!(matches!(pk_err(b"\x80\x02.", &[]), Error::WeightFile { .. }));
    assert!(matches!(pk_err(b"\x80\x02s.", &[]), Error::WeightFile { .. }));
    assert!(matches!(pk_err(b"\x80\x02t.", &[]), Error::WeightFile { .. }));
    assert!(matches!(pk_err(b"\x80\x02h\x05.", &[]), Error::WeightFile { .. }));
    assert!(matches!(pk_err(b"\x80\x02K\x01K\x02R.", &[]), Error::WeightFile { .. }));
    // Storage missing, too small for its declared size, or a view past its end.
    assert!(matches!(pk_err(&good, &[]), Error::Tensor { .. }));
    assert!(matches!(pk_err(&good, &[("0", &data[..8])]), Error::Tensor { .. }));
    let mut p = good.clone();
    let at = p.windows(4).position(|w| w == [b'K', 0, b'K', 3]).unwrap();
    p[at + 1] = 2; // storage offset 2 with 3 elements: past the end
    assert!(matches!(pk_err(&p, &[("0", &data)]), Error::Tensor { .. }));
    // A storage type that is not a storage.
    let bad_type = tensor_pickle("Tensor", 3);
    assert!(matches!(pk_err(&bad_type, &[("0", &data)]), Error::WeightFile { .. }));
    // Deep nesting and self-referencing lists neither overflow the stack nor loop.
    let mut p = vec![0x80, 2, b']', b'q', 0];
    for _ in 0..100_000 {
        p.extend([b'h', 0, b'a']);
    }
    p.push(b'.');
    assert!(matches!(pk_err(&p, &[]), Error::WeightFile { .. }));
    let mut p = vec![0x80, 2, b'K', 1];
    p.extend(std::iter::repeat_n(0x85u8, 200_000));
    p.push(b'.');
    assert!(matches!(pk_err(&p, &[]), Error::WeightFile { .. }));
    // {"a": <itself>}
    let mut p = vec![0x80, 2, b'}', b'q', 0];
    p.extend(unicode("a"));
    p.extend([b'h', 0, b's', b'.']);
    let z = torch_zip("archive", &p, &[]);
    let ck = PickleCheckpoint::parse("cyclic.pt".into(), bytes(z)).unwrap();
    assert!(ck.is_empty());
}

// ------------------------------------------------------------------ mutation run

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, src: &[u8]) -> Vec<u8> {
    let mut v = src.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(6) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = [0, 0xff, 0x7f, 0x80, b'.', b'(', b'K'][rng.below(7)];
            }
            2 => v.truncate(rng.below(v.len() + 1)),
            3 if !v.is_empty() => {
                let i = rng.below(v.len());
                let n = rng.below(8).min(v.len() - i);
                v.drain(i..i + n);
            }
            4 => {
                let i = rng.below(v.len() + 1);
                v.insert(i, rng.next() as u8);
            }
            _ if v.len() >= 8 => {
                // Overwrite a little-endian word: lengths and offsets live there.
                let i = rng.below(v.len() - 7);
                let w = [0u64, 1, 0xff, 0xffff_ffff, u64::MAX, rng.next()][rng.below(6)];
                v[i..i + 8].copy_from_slice(&w.to_le_bytes());
            }
            _ => {}
        }
    }
    v
}

/// Exercise every view a reader hands out (bounded, so a legal huge view is not materialised).
fn touch(source: &dyn TensorSource) {
    for name in source.names() {
        if let Some(v) = source.view(&name) {
            if v.validate("m", &name).is_ok() && v.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).is_some_and(|n| n < 1 << 20) {
                let _ = v.to_f32("m", &name);
            }
        }
    }
}

#[test]
fn mutated_files_never_panic() {
    let iterations: usize = std::env::var("MEACAP_MUTATIONS").ok().and_then(|s| s.parse().ok()).unwrap_or(1500);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let pt = ["f32.pt", "f16.pt", "transposed.pt", "state_dict.pt", "nested.pt", "int64.pt"];
    for name in pt {
        let src = std::fs::read(fixtures().join(name)).unwrap();
        // Mutate the pickle inside the archive too: zip CRCs are not checked on raw reads, so
        // these reach the VM rather than stopping at the zip layer.
        for _ in 0..iterations {
            let m = mutate(&mut rng, &src);
            let r = std::panic::catch_unwind(|| {
                if let Ok(v) = read_bare_tensor("m.pt".into(), bytes(m.clone())) {
                    if v.numel() < 1 << 20 {
                        let _ = v.to_f32("m", "t");
                    }
                }
                if let Ok(ck) = PickleCheckpoint::parse("m.pt".into(), bytes(m.clone())) {
                    touch(&ck);
                }
            });
            assert!(r.is_ok(), "{name}: panic on mutated input {:?}", m);
        }
    }
    let st = std::fs::read(fixtures().join("small.safetensors")).unwrap();
    for _ in 0..iterations * 4 {
        let m = mutate(&mut rng, &st);
        let r = std::panic::catch_unwind(|| {
            if let Ok(f) = SafetensorsFile::parse("m".into(), bytes(m.clone())) {
                touch(&f);
            }
        });
        assert!(r.is_ok(), "safetensors: panic on mutated input {:?}", m);
    }
}

/// Mutating only the pickle bytes (rebuilding a valid zip around them) reaches deeper VM paths.
#[test]
fn mutated_pickles_never_panic() {
    let mut rng = Rng(42);
    let data: Vec<u8> = (0..64u8).collect();
    let zipped = std::fs::read(fixtures().join("state_dict.pt")).unwrap();
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(&zipped[..])).unwrap();
    let mut pkl = Vec::new();
    std::io::Read::read_to_end(&mut archive.by_name("state_dict/data.pkl").unwrap(), &mut pkl).unwrap();
    let sources = [pkl, tensor_pickle("FloatStorage", 3), tensor_pickle("HalfStorage", 5)];
    for src in &sources {
        for _ in 0..2000 {
            let m = mutate(&mut rng, src);
            let z = torch_zip("archive", &m, &[("0", &data), ("1", &data), ("2", &data), ("3", &data), ("4", &data)]);
            let r = std::panic::catch_unwind(|| {
                if let Ok(v) = read_bare_tensor("m.pt".into(), bytes(z.clone())) {
                    let _ = v.to_f32("m", "t");
                }
                if let Ok(ck) = PickleCheckpoint::parse("m.pt".into(), bytes(z.clone())) {
                    touch(&ck);
                }
            });
            assert!(r.is_ok(), "panic on mutated pickle {:?}", m);
        }
    }
}

/// torch 2.1 wrote this valid archive (zip64 end records, as always); zip 9.8's reader refused it
/// ("Invalid Central Directory header"), hence the reader's own central-directory parser.
#[test]
fn archive_refused_by_the_zip_crate_reads() {
    let path = fixtures().join("memory/memory_wte_embeddings.pt");
    let v = read_bare_tensor("wte.pt".into(), bytes(std::fs::read(path).unwrap())).unwrap();
    assert_eq!((v.dtype, v.shape.clone()), (DType::F32, vec![12, 4]));
    let rows = v.to_f32("wte.pt", "t").unwrap();
    for row in rows.chunks(4) {
        let norm: f32 = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
    }
}
