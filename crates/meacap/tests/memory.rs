//! Memory bank: loading both layouts, checks, writing our format, resumable parts, and cosine
//! top-k on flex (CPU) and wgpu (lavapipe in CI; set MEACAP_SKIP_WGPU=1 to skip).

use std::path::PathBuf;

use burn::prelude::*;
use meacap::memory::*;
use meacap::{Error, MemFiles, ModelFiles};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/weights/memory")
}

fn meacap_files() -> MemFiles {
    let dir = fixture_dir();
    let mut files = MemFiles::new("tiny");
    for name in ["memory_captions.json", "memory_clip_embeddings.pt", "memory_wte_embeddings.pt"] {
        files.insert(name, std::fs::read(dir.join(name)).unwrap());
    }
    files
}

fn expected() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixture_dir().join("expected.json")).unwrap()).unwrap()
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn indices(hits: &[Hit]) -> Vec<usize> {
    hits.iter().map(|h| h.index).collect()
}

/// Deterministic pseudo-random embeddings.
fn random_rows(n: usize, d: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n * d)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

/// Reference: cosine in f64, sorted by (score desc, index asc).
fn brute_force(rows: &[f32], d: usize, q: &[f32], k: usize) -> Vec<(usize, f64)> {
    let qn = q.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let mut s: Vec<(usize, f64)> = rows
        .chunks_exact(d)
        .enumerate()
        .map(|(i, r)| {
            let rn = r.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
            (i, r.iter().zip(q).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() / rn / qn)
        })
        .collect();
    s.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    s.truncate(k);
    s
}

fn captions(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("c{i}")).collect()
}

fn check_retrieval(device: &Device, label: &str) {
    // MeaCap layout: matches torch's cosines and order (rows 2 and 7 are parallel: a near tie
    // that torch and we may round either way, so only their pair is compared).
    let exp = expected();
    let bank = MemoryBank::load(&meacap_files(), &MemoryOptions { expected_dim: Some(8), ..Default::default() }, device).unwrap();
    assert_eq!((bank.len(), bank.dim(), bank.format()), (12, 8, MemoryFormat::MeaCap));
    let q = floats(&exp["query"]);
    let hits = bank.top_k(&q, 12, device).unwrap();
    let cos = floats(&exp["cosines"]);
    for h in &hits {
        assert!((h.score - cos[h.index]).abs() < 1e-6, "{label}: row {} score {} vs torch {}", h.index, h.score, cos[h.index]);
        assert_eq!(h.caption, format!("caption number {}", h.index));
    }
    let top5: Vec<usize> = exp["top5_cos"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
    let mut first_two = indices(&hits[..2]);
    first_two.sort();
    assert_eq!(first_two, vec![2, 7], "{label}");
    assert_eq!(indices(&hits[2..5]), top5[2..5].to_vec(), "{label}");

    // Random bank: chunked == unchunked == brute force.
    let (n, d) = (1000, 16);
    let rows = random_rows(n, d, 7);
    let q = random_rows(1, d, 99);
    let whole = MemoryBank::from_embeddings("r", captions(n), rows.clone(), d, &MemoryOptions::default(), device).unwrap();
    assert_eq!(whole.chunk_rows(), DEFAULT_CHUNK_BYTES / (d * 4));
    let chunked = MemoryBank::from_embeddings(
        "r",
        captions(n),
        rows.clone(),
        d,
        &MemoryOptions { chunk_rows: Some(37), ..Default::default() },
        device,
    )
    .unwrap();
    let reference = brute_force(&rows, d, &q, 10);
    let a = whole.top_k(&q, 10, device).unwrap();
    let b = chunked.top_k(&q, 10, device).unwrap();
    assert_eq!(indices(&a), reference.iter().map(|r| r.0).collect::<Vec<_>>(), "{label}");
    assert_eq!(indices(&a), indices(&b), "{label}: chunked differs");
    for (h, r) in a.iter().zip(&reference) {
        assert!((h.score as f64 - r.1).abs() < 1e-6, "{label}: {} vs {}", h.score, r.1);
    }
    // Many queries at once (more than one group of eight): each gets what it gets alone.
    let queries: Vec<Vec<f32>> = (0..11).map(|i| random_rows(1, d, 200 + i)).collect();
    for bank in [&whole, &chunked] {
        let many = bank.top_k_many(&queries, 10, device).unwrap();
        assert_eq!(many.len(), queries.len(), "{label}");
        for (q, hits) in queries.iter().zip(&many) {
            let alone = bank.top_k(q, 10, device).unwrap();
            if label == "flex" {
                // The CPU sums each query's scores exactly as alone.
                assert_eq!(hits, &alone, "{label}: top_k_many differs from top_k");
            } else {
                assert_eq!(indices(hits), indices(&alone), "{label}: top_k_many differs from top_k");
                for (a, b) in hits.iter().zip(&alone) {
                    assert!((a.score - b.score).abs() <= 1e-6, "{label}: {} vs {}", a.score, b.score);
                }
            }
        }
        assert_eq!(block_on(bank.top_k_many_async(&queries, 10, device)).unwrap(), many, "{label}: async");
        assert!(bank.top_k_many(&[], 10, device).unwrap().is_empty());
        let mut bad = queries.clone();
        bad[9] = vec![0.0; d];
        assert!(matches!(bank.top_k_many(&bad, 3, device), Err(Error::InvalidInput(_))), "{label}: a zero query among many");
    }
    // k larger than the bank, and k = 0.
    assert_eq!(chunked.top_k(&q, 5000, device).unwrap().len(), n);
    assert!(chunked.top_k(&q, 0, device).unwrap().is_empty());

    // Exact ties go to the lower index, across chunk boundaries too.
    let mut rows = random_rows(10, 4, 3);
    let dup: Vec<f32> = rows[4 * 4..5 * 4].to_vec();
    for i in [1, 9, 6] {
        rows[i * 4..(i + 1) * 4].copy_from_slice(&dup);
    }
    let bank = MemoryBank::from_embeddings("t", captions(10), rows, 4, &MemoryOptions { chunk_rows: Some(3), ..Default::default() }, device).unwrap();
    let hits = bank.top_k(&dup, 4, device).unwrap();
    assert_eq!(indices(&hits), vec![1, 4, 6, 9], "{label}");

    // Query checks.
    assert!(matches!(bank.top_k(&[1.0; 3], 1, device), Err(Error::InvalidInput(_))));
    assert!(matches!(bank.top_k(&[0.0; 4], 1, device), Err(Error::InvalidInput(_))));
    assert!(matches!(bank.top_k(&[f32::NAN, 1.0, 1.0, 1.0], 1, device), Err(Error::InvalidInput(_))));
}

#[test]
fn retrieval_flex() {
    check_retrieval(&Device::flex(), "flex");
}

#[test]
fn retrieval_wgpu() {
    if std::env::var("MEACAP_SKIP_WGPU").as_deref() == Ok("1") {
        println!("MEACAP_SKIP_WGPU=1: wgpu retrieval test skipped");
        return;
    }
    let device = Device::wgpu(DeviceKind::DefaultDevice);
    check_retrieval(&device, "wgpu");
    // The async path gives the same answer.
    let rows = random_rows(300, 8, 5);
    let q = random_rows(1, 8, 6);
    let bank = MemoryBank::from_embeddings("a", captions(300), rows, 8, &MemoryOptions { chunk_rows: Some(64), ..Default::default() }, &device).unwrap();
    let sync = bank.top_k(&q, 7, &device).unwrap();
    let asynchronous = block_on(bank.top_k_async(&q, 7, &device)).unwrap();
    assert_eq!(sync, asynchronous);
}

/// A minimal executor for the async read-back (no runtime dependency).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::yield_now();
    }
}

#[test]
fn native_format_roundtrip_and_conversion() {
    let device = Device::flex();
    let exp = expected();
    let q = floats(&exp["query"]);
    let original = MemoryBank::load(&meacap_files(), &MemoryOptions::default(), &device).unwrap();
    let want = original.top_k(&q, 12, &device).unwrap();

    for dtype in [StoreDtype::F32, StoreDtype::F16] {
        let (captions_json, st) = convert_to_native(&meacap_files(), Vec::new(), dtype, true).unwrap();
        // The safetensors crate accepts what we write.
        let parsed = safetensors::SafeTensors::deserialize(&st).unwrap();
        assert_eq!(parsed.tensor("clip").unwrap().shape(), &[12, 8]);
        assert_eq!(parsed.tensor("wte").unwrap().shape(), &[12, 4]);
        let files = MemFiles::new("native").with("memory_captions.json", captions_json).with("memory.safetensors", st);
        let bank = MemoryBank::load(&files, &MemoryOptions { load_wte: true, ..Default::default() }, &device).unwrap();
        assert_eq!(bank.format(), MemoryFormat::Native);
        assert_eq!(bank.wte_dim(), Some(4));
        let got = bank.top_k(&q, 12, &device).unwrap();
        let tol = if dtype == StoreDtype::F32 { 1e-6 } else { 2e-3 };
        for (a, b) in got.iter().zip(&want).skip(2) {
            assert_eq!(a.index, b.index, "{dtype:?}");
            assert!((a.score - b.score).abs() < tol, "{dtype:?}: {} vs {}", a.score, b.score);
        }
        let w = bank.wte_rows(&[0, 11]).unwrap();
        let norm: f32 = w[0].iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 2e-3);
    }

    // write_native from raw rows gives the same file as the streaming writer.
    let rows = random_rows(5, 3, 1);
    let a = write_native(&captions(5), &rows, 3, None, StoreDtype::F32).unwrap();
    let mut w = NativeMemoryWriter::new(Vec::new(), 5, 3, None, StoreDtype::F32).unwrap();
    w.push_clip(&rows[..6]).unwrap();
    w.push_clip(&rows[6..]).unwrap();
    assert_eq!(a.safetensors, w.finish().unwrap());
    let files = MemFiles::new("w").with("memory_captions.json", a.captions_json).with("memory.safetensors", a.safetensors);
    let bank = MemoryBank::load(&files, &MemoryOptions::default(), &device).unwrap();
    assert_eq!(bank.top_k(&rows[3..6], 1, &device).unwrap()[0].index, 1);

    // An incomplete writer is an error.
    let mut w = NativeMemoryWriter::new(Vec::new(), 5, 3, None, StoreDtype::F32).unwrap();
    w.push_clip(&rows[..6]).unwrap();
    assert!(w.finish().is_err());
}

#[test]
fn resumable_part_file() {
    let (n, d) = (7, 4);
    let caps = captions(n);
    let fp = captions_fingerprint(&caps);
    assert_ne!(fp, captions_fingerprint(&captions(6)));
    let rows = random_rows(n, d, 11);
    let mut part = EmbeddingPart::header(d, n, &fp).unwrap();
    part.extend(EmbeddingPart::encode_rows(&rows[..3 * d], d).unwrap());
    // Interrupted mid-row: 3 complete rows, the torn bytes are cut.
    let torn = EmbeddingPart::encode_rows(&rows[3 * d..4 * d], d).unwrap();
    part.extend(&torn[..5]);
    let state = EmbeddingPart::inspect(&part, d, n, &fp).unwrap();
    assert_eq!(state, PartState { rows_done: 3, valid_len: EmbeddingPart::HEADER_LEN + 3 * d * 4 });
    part.truncate(state.valid_len);
    part.extend(EmbeddingPart::encode_rows(&rows[3 * d..], d).unwrap());
    assert_eq!(EmbeddingPart::inspect(&part, d, n, &fp).unwrap().rows_done, n);
    // A part from another build is refused.
    assert!(EmbeddingPart::inspect(&part, d, n, "other").is_err());
    assert!(EmbeddingPart::inspect(&part, d + 1, n, &fp).is_err());
    // Finishing gives the same bytes as writing the rows directly.
    let st = EmbeddingPart::finish_native(&part, d, n, &fp, Vec::new(), StoreDtype::F16).unwrap();
    assert_eq!(st, write_native(&caps, &rows, d, None, StoreDtype::F16).unwrap().safetensors);
    assert!(EmbeddingPart::finish_native(&part[..part.len() - 4], d, n, &fp, Vec::new(), StoreDtype::F16).is_err());
}

fn memory_err(files: &MemFiles, options: &MemoryOptions) -> String {
    match MemoryBank::load(files, options, &Device::flex()) {
        Err(Error::Memory { memory, message }) => {
            assert_eq!(memory, files.describe());
            message
        }
        Err(other) => panic!("expected Error::Memory, got {other:?}"),
        Ok(bank) => panic!("expected an error, loaded {bank:?}"),
    }
}

#[test]
fn bad_banks_are_memory_errors() {
    let opts = MemoryOptions::default();
    let base = meacap_files();
    let clip = std::fs::read(fixture_dir().join("memory_clip_embeddings.pt")).unwrap();

    // Caption count mismatch.
    let files = base.clone().with("memory_captions.json", serde_json::to_vec(&captions(11)).unwrap());
    let m = memory_err(&files, &opts);
    assert!(m.contains("11 captions") && m.contains("12 rows"), "{m}");
    // Wrong CLIP size.
    let m = memory_err(&base, &MemoryOptions { expected_dim: Some(512), ..Default::default() });
    assert!(m.contains("512") && m.contains("memory_clip_embeddings.pt"), "{m}");
    // Captions: empty, not JSON strings, missing.
    assert!(memory_err(&base.clone().with("memory_captions.json", "[]"), &opts).contains("empty"));
    assert!(memory_err(&base.clone().with("memory_captions.json", "[1,2]"), &opts).contains("JSON"));
    let files = MemFiles::new("tiny").with("memory_clip_embeddings.pt", clip.clone());
    assert!(memory_err(&files, &opts).contains("missing"));
    // No embeddings at all.
    let files = MemFiles::new("tiny").with("memory_captions.json", "[\"a\"]");
    assert!(memory_err(&files, &opts).contains("no embeddings"));
    // Corrupt .pt.
    let files = base.clone().with("memory_clip_embeddings.pt", clip[..clip.len() / 2].to_vec());
    memory_err(&files, &opts);

    // NaN / Inf / zero rows in our format.
    for (bad, what) in [(f32::NAN, "non-finite"), (f32::INFINITY, "non-finite"), (0.0, "zeros")] {
        let mut rows = random_rows(4, 3, 2);
        if bad == 0.0 {
            rows[6..9].fill(0.0);
        } else {
            rows[7] = bad;
        }
        // Write it by hand (the writer refuses such rows): a pre-normalised f32 tensor.
        let mut data = Vec::new();
        for x in &rows {
            data.extend_from_slice(&x.to_le_bytes());
        }
        let header = format!(
            r#"{{"__metadata__":{{"format":"meacap-wgpu-memory-v1","normalized":"true"}},"clip":{{"dtype":"F32","shape":[4,3],"data_offsets":[0,{}]}}}}"#,
            data.len()
        );
        let mut st = (header.len() as u64).to_le_bytes().to_vec();
        st.extend(header.as_bytes());
        st.extend(data);
        let files = MemFiles::new("tiny").with("memory_captions.json", serde_json::to_vec(&captions(4)).unwrap()).with("memory.safetensors", st);
        let m = memory_err(&files, &opts);
        assert!(m.contains(what) && m.contains("row 2") && m.contains("memory.safetensors"), "{m}");
        // The writer refuses them too.
        assert!(write_native(&captions(4), &rows, 3, None, StoreDtype::F32).is_err());
    }
    // A foreign format tag.
    let st = write_native(&captions(2), &[1.0, 0.0, 0.0, 1.0], 2, None, StoreDtype::F32).unwrap().safetensors;
    let mut st = st;
    let at = st.windows(21).position(|w| w == b"meacap-wgpu-memory-v1").unwrap();
    st[at + 20] = b'9';
    let files = MemFiles::new("tiny").with("memory_captions.json", serde_json::to_vec(&captions(2)).unwrap()).with("memory.safetensors", st);
    assert!(memory_err(&files, &opts).contains("v9"));
}

#[test]
fn top_k_indices_orders_and_breaks_ties() {
    assert_eq!(top_k_indices(&[0.5, 0.9, 0.9, -1.0, 0.9], 3), vec![1, 2, 4]);
    assert_eq!(top_k_indices(&[0.5, f32::NAN, 0.7], 3), vec![2, 0, 1]);
    assert!(top_k_indices(&[], 3).is_empty());
}
