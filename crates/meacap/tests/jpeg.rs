//! The JPEG decoder against Pillow 13 / libjpeg-turbo 3: every file of tests/fixtures/jpeg (made
//! by tests/reference/make_jpegs.py, with Pillow's decode of each) must decode to identical
//! samples; corrupt, truncated and unsupported files must be errors, never panics.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use meacap::jpeg::{self, JpegError, PixelFormat};
use meacap::preprocess::{self, PilMode};
use meacap::Error;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/jpeg")
}

fn read(name: &str) -> Vec<u8> {
    let p = fixtures().join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn index() -> serde_json::Value {
    serde_json::from_slice(&read("index.json")).expect("index.json")
}

/// Pillow's samples, stored as PNG (CMYK as the four bands of an RGBA PNG).
fn expected(png: &str, format: PixelFormat) -> Vec<u8> {
    let img = image::load_from_memory(&read(png)).expect("expected png");
    match format {
        PixelFormat::Gray => img.into_luma8().into_raw(),
        PixelFormat::Rgb => img.into_rgb8().into_raw(),
        PixelFormat::Cmyk => img.into_rgba8().into_raw(),
    }
}

fn mode_name(f: PixelFormat) -> &'static str {
    match f {
        PixelFormat::Gray => "L",
        PixelFormat::Rgb => "RGB",
        PixelFormat::Cmyk => "CMYK",
    }
}

#[test]
fn decodes_exactly_like_pillow() {
    let idx = index();
    let files = idx["files"].as_object().expect("files");
    assert!(files.len() > 100, "fixture index looks incomplete");
    let mut failures = Vec::new();
    println!("{:44} {:5} {:>9} {:>14}  what", "file", "mode", "size", "max diff (n)");
    for (file, meta) in files {
        let data = read(file);
        let img = match jpeg::decode(&data, u64::MAX) {
            Ok(img) => img,
            Err(e) => {
                failures.push(format!("{file}: {e}"));
                continue;
            }
        };
        let (w, h) = (meta["width"].as_u64().expect("width"), meta["height"].as_u64().expect("height"));
        let mode = meta["mode"].as_str().expect("mode");
        if (img.width as u64, img.height as u64, mode_name(img.format)) != (w, h, mode) {
            failures.push(format!("{file}: {}x{} {:?}, Pillow {w}x{h} {mode}", img.width, img.height, img.format));
            continue;
        }
        let want = expected(meta["expected"].as_str().expect("expected"), img.format);
        assert_eq!(want.len(), img.data.len(), "{file}");
        let (mut max, mut n) = (0u8, 0usize);
        for (a, b) in img.data.iter().zip(&want) {
            max = max.max(a.abs_diff(*b));
            n += (a != b) as usize;
        }
        println!(
            "{file:44} {mode:5} {:>9} {:>14}  {}",
            format!("{w}x{h}"),
            format!("{max}({n})"),
            meta["what"].as_str().unwrap_or("")
        );
        if n != 0 {
            failures.push(format!("{file}: {n} samples differ from Pillow, by up to {max}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn preprocess_decode_uses_it() {
    for (file, mode) in [("pil_420_301x231.jpg", PilMode::Rgb), ("pil_gray_37x23.jpg", PilMode::L)] {
        let img = preprocess::decode(&read(file), file).expect("decode");
        assert_eq!(img.mode(), mode, "{file}");
    }
    // CMYK keeps Pillow's polarity through preprocess too (its RGB conversion is checked by
    // tests/preprocess.rs on images/cmyk_301x231.jpg).
    let img = preprocess::decode(&read("pil_cmyk_43x27.jpg"), "cmyk").expect("decode");
    assert_eq!((img.mode(), img.width(), img.height()), (PilMode::Cmyk, 43, 27));
}

// ------------------------------------------------------------------------------------------------
// Corrupt, truncated and unsupported input
// ------------------------------------------------------------------------------------------------

/// Decodes with a panic guard and returns the error (failing if the file decodes).
fn jpeg_error(data: &[u8], what: &str) -> JpegError {
    let r = std::panic::catch_unwind(|| jpeg::decode(data, u64::MAX));
    match r {
        Err(_) => panic!("{what}: panicked"),
        Ok(Ok(img)) => panic!("{what}: decoded {}x{}", img.width, img.height),
        Ok(Err(e)) => {
            println!("{what}: {e}");
            // The same file through preprocess is the crate's typed image error.
            match preprocess::decode(data, what) {
                Err(Error::Image { .. }) => {}
                other => panic!("{what}: preprocess gave {:?}", other.map(|i| (i.width(), i.height()))),
            }
            e
        }
    }
}

/// Offset of the first `FF marker` pair (the fixtures used have no 0xFF in their headers' data).
fn find(data: &[u8], marker: u8) -> usize {
    data.windows(2).position(|w| w == [0xFF, marker]).unwrap_or_else(|| panic!("no marker {marker:02X}"))
}

/// Offset of the first byte of entropy-coded data of the first scan.
fn scan_data(data: &[u8]) -> usize {
    let sos = find(data, 0xDA);
    sos + 2 + u16::from_be_bytes([data[sos + 2], data[sos + 3]]) as usize
}

#[test]
fn bad_huffman_code() {
    let mut data = read("pil_420_33x65.jpg");
    let at = scan_data(&data);
    // Sixteen one bits: no code of the standard DC table starts like that.
    data[at..at + 8].copy_from_slice(&[0xFF, 0x00, 0xFF, 0x00, 0xFF, 0x00, 0xFF, 0x00]);
    let e = jpeg_error(&data, "bad Huffman code");
    assert!(e.to_string().contains("bad Huffman code"), "{e}");
    assert!(!e.is_truncated());
}

#[test]
fn bad_markers() {
    let good = read("pil_420_33x65.jpg");
    // A reserved marker in the header.
    let mut data = good[..2].to_vec();
    data.extend_from_slice(&[0xFF, 0x02, 0x00, 0x04, 0x00, 0x00]);
    data.extend_from_slice(&good[2..]);
    jpeg_error(&data, "reserved marker in the header");
    // A JPGn marker between the scans of a progressive file.
    let prog = read("pil_prog_444_67x45.jpg");
    let second_sos = find(&prog[scan_data(&prog)..], 0xDA) + scan_data(&prog);
    let mut data = prog[..second_sos].to_vec();
    data.extend_from_slice(&[0xFF, 0xF0, 0x00, 0x02]);
    data.extend_from_slice(&prog[second_sos..]);
    let e = jpeg_error(&data, "JPG0 between scans");
    assert!(e.to_string().contains("unknown marker"), "{e}");
    // No SOI, a second SOI, a second SOF.
    jpeg_error(&good[2..], "no SOI");
    let mut data = good.clone();
    let sof = find(&data, 0xC0);
    data.splice(sof..sof, [0xFF, 0xD8]);
    jpeg_error(&data, "second SOI");
    let sof_len = u16::from_be_bytes([good[sof + 2], good[sof + 3]]) as usize + 2;
    let mut data = good.clone();
    data.splice(sof..sof, good[sof..sof + sof_len].to_vec());
    jpeg_error(&data, "second SOF");
    // A scan naming a component the frame does not have.
    let mut data = good.clone();
    let sos = find(&data, 0xDA);
    data[sos + 5] = 99;
    jpeg_error(&data, "unknown component id");
}

#[test]
fn malformed_segments_and_stuffing() {
    let good = read("pil_420_33x65.jpg");
    // A table segment whose length field does not even count itself.
    let dht = find(&good, 0xC4);
    let mut data = good.clone();
    data[dht + 2..dht + 4].copy_from_slice(&[0, 1]);
    let e = jpeg_error(&data, "DHT length 1");
    assert!(e.to_string().contains("bad DHT length"), "{e}");
    // 0xFF 0xFF 0x00 inside entropy data: libjpeg-turbo reads it one way or the other depending
    // on its read-ahead, so it is refused.
    let mut data = good.clone();
    let at = scan_data(&data) + 10;
    data.splice(at..at, [0xFF, 0xFF, 0x00]);
    let e = jpeg_error(&data, "0xFF 0xFF 0x00 in a scan");
    assert!(e.to_string().contains("fill bytes"), "{e}");
}

#[test]
fn missing_huffman_table() {
    // The scan asks for table 3, which no DHT defines.
    let mut data = read("pil_420_33x65.jpg");
    let sos = find(&data, 0xDA);
    data[sos + 6] = 0x33;
    let e = jpeg_error(&data, "Huffman table 3");
    assert!(e.to_string().contains("Huffman table 3"), "{e}");
    // Every DHT turned into a comment: a progressive file then has no tables at all...
    let no_dht = |mut d: Vec<u8>| {
        while let Some(i) = d.windows(2).position(|w| w == [0xFF, 0xC4]) {
            d[i + 1] = 0xFE;
        }
        d
    };
    let e = jpeg_error(&no_dht(read("pil_prog_420_67x45.jpg")), "progressive without DHT");
    assert!(e.to_string().contains("not defined"), "{e}");
    // ...while a sequential one gets libjpeg's default tables, which Pillow wrote anyway.
    let img = jpeg::decode(&no_dht(read("pil_420_33x65.jpg")), u64::MAX).expect("default tables");
    assert_eq!(img.data, jpeg::decode(&read("pil_420_33x65.jpg"), u64::MAX).expect("decode").data);
}

#[test]
fn truncated_files() {
    for file in ["pil_420_301x231.jpg", "pil_prog_420_301x231.jpg", "pil_restart_blocks_70x33.jpg"] {
        let data = read(file);
        let start = scan_data(&data);
        for cut in [3, 20, start - 1, start + 1, start + (data.len() - start) / 2, data.len() - 40] {
            let e = jpeg_error(&data[..cut], &format!("{file} cut at {cut}"));
            assert!(e.is_truncated(), "{file} cut at {cut}: {e}");
        }
        // The entropy data running into EOI is corrupt rather than truncated (libjpeg would
        // fill in zeros with a warning; Pillow would show grey).
        let mut data = data[..start + (data.len() - start) / 2].to_vec();
        data.extend_from_slice(&[0xFF, 0xD9]);
        let e = jpeg_error(&data, &format!("{file} EOI mid-scan"));
        assert!(e.to_string().contains("ends early"), "{e}");
    }
    // A restart marker out of sequence.
    let mut data = read("pil_restart_blocks_70x33.jpg");
    let rst = find(&data[scan_data(&data)..], 0xD0) + scan_data(&data);
    data[rst + 1] = 0xD3;
    let e = jpeg_error(&data, "RST3 instead of RST0");
    assert!(e.to_string().contains("restart marker"), "{e}");
}

#[test]
fn zero_and_absurd_sizes() {
    let good = read("pil_420_33x65.jpg");
    let sof = find(&good, 0xC0);
    let with_size = |h: u16, w: u16| {
        let mut d = good.clone();
        d[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
        d[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
        d
    };
    jpeg_error(&with_size(0, 33), "zero height");
    jpeg_error(&with_size(65, 0), "zero width");
    let e = jpeg_error(&with_size(65535, 65535), "65535x65535");
    assert!(e.to_string().contains("too big"), "{e}");
    // Within libjpeg's limit but far larger than the data: refused by the pixel limit from
    // the header, and without it the decoder runs out of data before allocating for it all.
    let huge = with_size(60000, 60000);
    match preprocess::decode(&huge, "huge") {
        Err(Error::Image { message, .. }) => assert!(message.contains("exceeds the limit"), "{message}"),
        other => panic!("huge: {:?}", other.map(|i| i.width())),
    }
    let t = Instant::now();
    let e = jpeg::decode(&huge, 1 << 20).expect_err("60000x60000 under a limit");
    assert!(e.to_string().contains("exceeds the limit"), "{e}");
    let e = jpeg::decode(&huge, u64::MAX).expect_err("60000x60000 from 6 KB");
    assert!(t.elapsed() < Duration::from_secs(5), "took {:?}", t.elapsed());
    assert!(e.to_string().contains("ends early"), "{e}");
    // Empty input and a bare SOI.
    jpeg_error(&[], "empty");
    jpeg_error(&[0xFF, 0xD8, 0xFF], "bare SOI");
}

#[test]
fn unsupported_processes() {
    let good = read("pil_420_33x65.jpg");
    let sof = find(&good, 0xC0);
    for (marker, what) in [(0xC9, "arithmetic"), (0xC3, "lossless"), (0xC5, "hierarchical")] {
        let mut d = good.clone();
        d[sof + 1] = marker;
        let e = jpeg_error(&d, what);
        assert!(e.to_string().contains("not supported"), "{what}: {e}");
    }
    let mut d = good.clone();
    d[sof + 4] = 12;
    let e = jpeg_error(&d, "12-bit");
    assert!(e.to_string().contains("12-bit"), "{e}");
    // Two components: no Pillow mode.
    let gray = read("pil_gray_37x23.jpg");
    let gray_sof = find(&gray, 0xC0);
    let mut d = gray[..gray_sof + 2].to_vec();
    d.extend_from_slice(&[0, 14, 8, 0, 23, 0, 37, 2, 1, 0x11, 0, 2, 0x11, 0]);
    d.extend_from_slice(&gray[gray_sof + 13..]);
    jpeg_error(&d, "two components");
    // More than 10 blocks in an MCU, and sampling factors with a fractional ratio.
    let mut d = good.clone();
    d[sof + 11] = 0x22;
    d[sof + 14] = 0x22;
    d[sof + 17] = 0x22;
    let e = jpeg_error(&d, "12 blocks per MCU");
    assert!(e.to_string().contains("blocks in an MCU"), "{e}");
    let mut d = good.clone();
    d[sof + 11] = 0x32;
    d[sof + 14] = 0x21;
    let e = jpeg_error(&d, "3 vs 2");
    assert!(e.to_string().contains("fractional"), "{e}");
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, src: &[u8]) -> Vec<u8> {
    let mut m = src.to_vec();
    for _ in 0..1 + rng.below(4) {
        if m.len() < 4 {
            break;
        }
        let i = rng.below(m.len());
        match rng.below(7) {
            0 => m[i] ^= 1 << rng.below(8),
            1 => m[i] = rng.next() as u8,
            2 => m[i] = m[i].wrapping_add(1),
            3 => m.truncate(i.max(3)),
            4 => {
                m.remove(i);
            }
            5 => m.insert(i, [0xFF, 0x00, 0xD9, 0xD0, 0xDA, 0xC4, 0xC0][rng.below(7)]),
            _ => {
                let j = rng.below(m.len());
                let len = rng.below(16).min(m.len() - i.max(j));
                let chunk = m[j..j + len].to_vec();
                m[i..i + len].copy_from_slice(&chunk);
            }
        }
    }
    m
}

/// Deterministic mutations (bit flips, byte changes, truncations, deletions, inserted marker
/// bytes, copied runs) of every small fixture: `Ok` or `Err`, never a panic or a long stall.
/// `MEACAP_MUTATIONS=N` sets the number per file.
#[test]
fn mutated_files_never_panic() {
    let per_file: usize = std::env::var("MEACAP_MUTATIONS").ok().and_then(|s| s.parse().ok()).unwrap_or(150);
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let idx = index();
    let (mut ok, mut err) = (0usize, 0usize);
    let mut slowest = Duration::ZERO;
    for file in idx["files"].as_object().expect("files").keys() {
        let src = read(file);
        if src.len() > 30_000 {
            continue;
        }
        for _ in 0..per_file {
            let m = mutate(&mut rng, &src);
            let t = Instant::now();
            match std::panic::catch_unwind(|| jpeg::decode(&m, 1 << 24)) {
                Ok(Ok(_)) => ok += 1,
                Ok(Err(_)) => err += 1,
                Err(_) => panic!("{file}: panic on mutated input {m:?}"),
            }
            slowest = slowest.max(t.elapsed());
        }
    }
    println!("{ok} decoded, {err} refused, slowest {slowest:?}");
    assert!(slowest < Duration::from_secs(2), "a mutated file took {slowest:?}");
}

/// Against Pillow on mutated files (`tests/reference/make_jpegs.py --mutants DIR`, then
/// `MEACAP_JPEG_MUTANTS=DIR cargo test --release -p meacap --test jpeg -- --ignored`): wherever
/// both decode, the samples must be identical. Files only one side decodes are counted.
#[test]
#[ignore = "needs MEACAP_JPEG_MUTANTS from make_jpegs.py --mutants"]
fn differential_against_pillow() {
    let dir = PathBuf::from(std::env::var("MEACAP_JPEG_MUTANTS").expect("MEACAP_JPEG_MUTANTS"));
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("mutants dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    names.sort();
    let (mut same, mut both_refuse, mut only_pillow, mut only_ours) = (0, 0, 0, 0);
    let mut refusals = std::collections::BTreeMap::<String, usize>::new();
    let mut differ = Vec::new();
    for p in &names {
        let data = std::fs::read(p).expect("mutant");
        let pillow = std::fs::read(p.with_extension("raw")).ok();
        match (jpeg::decode(&data, 1 << 26), pillow) {
            (Ok(img), Some(want)) if img.data == want => same += 1,
            (Ok(_), Some(_)) => differ.push(p.display().to_string()),
            (Ok(_), None) => only_ours += 1,
            (Err(e), Some(_)) => {
                only_pillow += 1;
                let kind: String = e.to_string().chars().take_while(|c| *c != '(').take(48).collect();
                *refusals.entry(kind).or_default() += 1;
            }
            (Err(_), None) => both_refuse += 1,
        }
    }
    println!("{} mutants: {same} identical, {both_refuse} refused by both, {only_pillow} decoded only by Pillow, {only_ours} only by this decoder, {} differing", names.len(), differ.len());
    for (kind, n) in refusals {
        println!("  refused here, decoded by Pillow: {n:5} {kind}");
    }
    assert!(differ.is_empty(), "decoded differently from Pillow: {differ:#?}");
}
