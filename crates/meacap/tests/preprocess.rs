//! Preprocessing parity with the original's two front-ends (fixtures from
//! tests/reference/make_images.py: Pillow 13, transformers 4.26.1, torchvision 0.16.2).

use std::path::PathBuf;

use meacap::preprocess::{self, ClipImageConfig, FrontEnd, PilMode};
use meacap::Error;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn read(p: &PathBuf) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn index() -> serde_json::Value {
    serde_json::from_slice(&read(&fixtures().join("preprocess/index.json"))).expect("index.json")
}

fn expected_crop(front: &str, name: &str) -> Vec<u8> {
    let p = fixtures().join("preprocess").join(front).join(format!("{name}.png"));
    image::load_from_memory(&read(&p)).expect("expected png").into_rgb8().into_raw()
}

/// Largest per-sample difference and how many samples differ.
fn diff(a: &[u8], b: &[u8]) -> (u8, usize) {
    assert_eq!(a.len(), b.len());
    let mut max = 0u8;
    let mut n = 0;
    for (x, y) in a.iter().zip(b) {
        let d = x.abs_diff(*y);
        max = max.max(d);
        n += (d != 0) as usize;
    }
    (max, n)
}

/// Lossy WebP, whose decoder (libwebp vs image-webp) may differ by more than the resampling can
/// hide; reported, bounded loosely. JPEG is decoded exactly as libjpeg-turbo does (crate::jpeg),
/// so it is held to the lossless bound.
fn lossy(name: &str) -> bool {
    name.contains("lossy")
}

#[test]
fn matches_reference_crops() {
    let idx = index();
    let cfg = ClipImageConfig::default();
    let images = idx["images"].as_object().expect("images");
    let mut failures = Vec::new();
    println!("{:34} {:6} {:>14} {:>14}", "image", "mode", "hf max(n)", "openai max(n)");
    for (name, meta) in images {
        let bytes = read(&fixtures().join("images").join(name));
        let img = preprocess::decode(&bytes, name).unwrap_or_else(|e| panic!("{name}: {e}"));
        let pil = meta["pil_mode"].as_str().expect("pil_mode");
        let mode = match img.mode() {
            PilMode::Bilevel => "1",
            PilMode::L => "L",
            PilMode::La => "LA",
            PilMode::P => "P",
            PilMode::Rgb => "RGB",
            PilMode::Rgba => "RGBA",
            PilMode::Cmyk => "CMYK",
            PilMode::I16 => "I;16",
        };
        assert_eq!(mode, pil, "{name}: mode");
        assert_eq!(img.width() as u64, meta["width"].as_u64().expect("w"), "{name}");
        assert_eq!(img.height() as u64, meta["height"].as_u64().expect("h"), "{name}");
        let mut row = format!("{name:34} {pil:6}");
        for (front, key) in [(FrontEnd::HuggingFace, "hf"), (FrontEnd::OpenAi, "openai")] {
            let got = preprocess::resize_crop_u8(&img, front, &cfg).expect("crop");
            let (max, n) = diff(&got, &expected_crop(key, name));
            row += &format!(" {:>14}", format!("{max}({n})"));
            let bound = if lossy(name) { 4 } else { 1 };
            if max > bound {
                failures.push(format!("{name} {key}: max diff {max} > {bound}"));
            }
        }
        println!("{row}");
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn normalisation_matches_reference_tables() {
    let bytes = read(&fixtures().join("preprocess/norm.safetensors"));
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let cfg = ClipImageConfig::default();
    // A 1x256 image holding every level in every channel.
    let hwc: Vec<u8> = (0..=255u8).flat_map(|v| [v, v, v]).collect();
    let got = preprocess::normalize(&hwc, 1, 256, &cfg).expect("normalize");
    for key in ["hf_norm", "openai_norm"] {
        let t = st.tensor(key).expect("table");
        assert_eq!(t.shape(), &[3, 256]);
        let want: Vec<f32> = t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "{key}[{}][{}]: {g} vs {w}", i / 256, i % 256);
        }
    }
}

#[test]
fn preprocess_shapes_and_same_input() {
    let bytes = read(&fixtures().join("images/exact_224x224.png"));
    let img = preprocess::decode(&bytes, "exact").expect("decode");
    let cfg = ClipImageConfig::default();
    let a = preprocess::preprocess(&img, FrontEnd::HuggingFace, &cfg).expect("hf");
    let b = preprocess::preprocess(&img, FrontEnd::OpenAi, &cfg).expect("openai");
    assert_eq!(a.len(), 3 * 224 * 224);
    // RGB 224x224: no resize, no crop offset: the two front-ends agree exactly.
    assert!(preprocess::same_input(&a, &b));
    let bytes = read(&fixtures().join("images/rgba_301x231.png"));
    let img = preprocess::decode(&bytes, "rgba").expect("decode");
    let a = preprocess::preprocess(&img, FrontEnd::HuggingFace, &cfg).expect("hf");
    let b = preprocess::preprocess(&img, FrontEnd::OpenAi, &cfg).expect("openai");
    assert!(!preprocess::same_input(&a, &b));
}

fn assert_image_error(r: meacap::Result<preprocess::DecodedImage>, what: &str) {
    match r {
        Err(Error::Image { message, .. }) => println!("{what}: {message}"),
        Err(e) => panic!("{what}: wrong error kind {e:?}"),
        Ok(i) => panic!("{what}: decoded {}x{}", i.width(), i.height()),
    }
}

#[test]
fn bad_bytes_are_errors_not_panics() {
    let jpg = read(&fixtures().join("images/rgb_301x231.jpg"));
    let png = read(&fixtures().join("images/rgba_301x231.png"));
    let gif = read(&fixtures().join("images/p_227x299.gif"));
    let webp = read(&fixtures().join("images/rgb_lossless_301x231.webp"));
    let bmp = read(&fixtures().join("images/rgb_100x61.bmp"));
    assert_image_error(preprocess::decode(&[], "empty"), "empty");
    assert_image_error(preprocess::decode(b"definitely not an image", "text"), "text");
    let mut noise = vec![0u8; 4096];
    let mut s = 0x2545_f491_4f6c_dd1du64;
    for b in noise.iter_mut() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        *b = s as u8;
    }
    assert_image_error(preprocess::decode(&noise, "noise"), "noise");
    for (what, data) in [("jpg", &jpg), ("png", &png), ("gif", &gif), ("webp", &webp), ("bmp", &bmp)] {
        // Truncations at several points, including just after the header.
        for cut in [8, 30, 100, data.len() / 3, data.len() / 2] {
            let r = std::panic::catch_unwind(|| preprocess::decode(&data[..cut], what));
            match r {
                Ok(Err(Error::Image { .. })) => {}
                Ok(other) => panic!("{what} cut at {cut}: {:?}", other.map(|i| (i.width(), i.height()))),
                Err(_) => panic!("{what} cut at {cut}: panicked"),
            }
        }
        // Random bytes after a valid signature.
        let mut corrupt = data[..data.len().min(64)].to_vec();
        corrupt.extend_from_slice(&noise);
        let r = std::panic::catch_unwind(|| preprocess::decode(&corrupt, what));
        assert!(r.is_ok(), "{what}: panicked on corrupt body");
    }
}

/// A PNG whose header claims a huge size; must be refused from the header, before allocating.
fn png_header(w: u32, h: u32) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    v.extend_from_slice(&13u32.to_be_bytes());
    v.extend_from_slice(&ihdr);
    v.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    v
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}

#[test]
fn huge_and_zero_dimensions_are_refused() {
    assert_image_error(preprocess::decode(&png_header(100_000, 100_000), "huge.png"), "huge png");
    assert_image_error(preprocess::decode(&png_header(0, 10), "zero.png"), "zero png");
    // JPEG SOF0 claiming 65535x65535.
    let mut jpg = vec![0xFF, 0xD8];
    jpg.extend_from_slice(&[0xFF, 0xC0, 0, 11, 8, 0xFF, 0xFF, 0xFF, 0xFF, 1, 1, 0x11, 0]);
    jpg.extend_from_slice(&[0xFF, 0xD9]);
    assert_image_error(preprocess::decode(&jpg, "huge.jpg"), "huge jpg");
    // GIF logical screen 65535x65535 with one tiny frame.
    let mut gif = b"GIF89a".to_vec();
    gif.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0]);
    gif.extend_from_slice(&[0x2C, 0, 0, 0, 0, 1, 0, 1, 0, 0, 2, 2, 0x44, 1, 0, 0x3B]);
    assert_image_error(preprocess::decode(&gif, "huge.gif"), "huge gif");
    // A real image under a tight limit.
    let png = read(&fixtures().join("images/rgba_301x231.png"));
    assert_image_error(preprocess::decode_with_limit(&png, "limited", 1000), "limit");
}

#[test]
fn config_crop_size_is_honoured() {
    let bytes = read(&fixtures().join("images/rgb_516x483.png"));
    let img = preprocess::decode(&bytes, "big").expect("decode");
    let j = br#"{"size": {"shortest_edge": 256}, "crop_size": {"height": 240, "width": 240}}"#;
    let cfg = ClipImageConfig::from_json(j).expect("cfg");
    let v = preprocess::preprocess(&img, FrontEnd::HuggingFace, &cfg).expect("pp");
    assert_eq!(v.len(), 3 * 240 * 240);
}
