//! Image bytes → CLIP input, bit-exact with the two front-ends of the original:
//!
//! * [`FrontEnd::HuggingFace`]: transformers 4.26.1 `CLIPImageProcessor` (retrieval embedding):
//!   `convert("RGB")` first, Pillow BICUBIC so the short side is 224, centre crop with floor.
//! * [`FrontEnd::OpenAi`]: `clip.clip._transform` (ViECap input): torchvision `Resize(224, BICUBIC)`
//!   on the image *in its own mode* (Pillow resizes `P`/`1` with NEAREST and `RGBA`/`LA`
//!   premultiplied), `CenterCrop` with round-half-even, RGB conversion after the crop.
//!
//! Both then divide by 255 and normalise in f32. Pillow's resampler (fixed point, 22 fractional
//! bits, antialiased support) and its mode conversions are replicated exactly, so for losslessly
//! stored images and for JPEG (decoded by [`crate::jpeg`] as libjpeg-turbo does) the uint8 crop
//! is identical to the reference; only lossy-WebP decoder differences remain. Decoding keeps
//! Pillow's view of the *source mode* (palette, CMYK with Adobe polarity, 16-bit grey,
//! transparency chunks that Pillow does not turn into alpha), because the OpenAI path resizes in
//! that mode. EXIF orientation is not applied (Pillow's default).

use std::io::Cursor;

use crate::error::{Error, Result};

/// Pillow's `Image.MAX_IMAGE_PIXELS`: larger images are refused instead of exhausting memory.
pub const DEFAULT_MAX_PIXELS: u64 = 89_478_485;

/// Which preprocessing of the original to reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontEnd {
    /// transformers `CLIPImageProcessor` (memory retrieval).
    HuggingFace,
    /// OpenAI `clip` `_transform` (ViECap image feature).
    OpenAi,
}

/// Resize/crop sizes and normalisation; defaults are `openai/clip-vit-base-patch32`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipImageConfig {
    /// Target of the shortest edge before cropping.
    pub shortest_edge: usize,
    /// Side of the square centre crop (CLIP's input resolution).
    pub crop_size: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Default for ClipImageConfig {
    fn default() -> Self {
        ClipImageConfig {
            shortest_edge: 224,
            crop_size: 224,
            mean: [0.48145466, 0.4578275, 0.40821073],
            std: [0.26862954, 0.26130258, 0.27577711],
        }
    }
}

impl ClipImageConfig {
    /// Reads `preprocessor_config.json` (`size` as int or `{shortest_edge}`, `crop_size` as int
    /// or `{height,width}` (square only), `image_mean`, `image_std`); absent fields keep the
    /// defaults. The error is a message for the caller to wrap with the model's name.
    pub fn from_json(bytes: &[u8]) -> std::result::Result<Self, String> {
        use serde_json::Value;
        let v: Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let mut cfg = ClipImageConfig::default();
        let size = |x: &Value, what: &str| -> std::result::Result<usize, String> {
            x.as_u64()
                .filter(|&n| n > 0 && n <= 65_535)
                .map(|n| n as usize)
                .ok_or_else(|| format!("`{what}` must be a positive integer"))
        };
        match v.get("size") {
            None | Some(Value::Null) => {}
            Some(s) if s.is_u64() => cfg.shortest_edge = size(s, "size")?,
            Some(s) => match s.get("shortest_edge") {
                Some(e) => cfg.shortest_edge = size(e, "size.shortest_edge")?,
                None => return Err("`size` has no `shortest_edge` (only shortest-edge resizing is supported)".into()),
            },
        }
        match v.get("crop_size") {
            None | Some(Value::Null) => {}
            Some(c) if c.is_u64() => cfg.crop_size = size(c, "crop_size")?,
            Some(c) => {
                let h = size(c.get("height").ok_or("`crop_size` lacks `height`")?, "crop_size.height")?;
                let w = size(c.get("width").ok_or("`crop_size` lacks `width`")?, "crop_size.width")?;
                if h != w {
                    return Err(format!("non-square crop {h}x{w} is not supported"));
                }
                cfg.crop_size = h;
            }
        }
        let triple = |key: &str| -> std::result::Result<Option<[f32; 3]>, String> {
            match v.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(a) => {
                    let arr =
                        a.as_array().filter(|a| a.len() == 3).ok_or_else(|| format!("`{key}` must be 3 numbers"))?;
                    let mut out = [0f32; 3];
                    for (o, x) in out.iter_mut().zip(arr) {
                        *o = x.as_f64().ok_or_else(|| format!("`{key}` must be 3 numbers"))? as f32;
                    }
                    Ok(Some(out))
                }
            }
        };
        if let Some(m) = triple("image_mean")? {
            cfg.mean = m;
        }
        if let Some(s) = triple("image_std")? {
            if s.iter().any(|&x| x == 0.0 || !x.is_finite()) {
                return Err("`image_std` must be finite and non-zero".into());
            }
            cfg.std = s;
        }
        if cfg.crop_size > cfg.shortest_edge {
            return Err("a crop larger than the resized shortest edge is not supported".into());
        }
        Ok(cfg)
    }
}

/// The Pillow mode an image opens in; it decides how the OpenAI path resizes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PilMode {
    /// `1`: bilevel, stored as 0/255.
    Bilevel,
    L,
    La,
    /// `P`: palette; stored already looked up as RGB (NEAREST commutes with the lookup).
    P,
    Rgb,
    Rgba,
    /// Pillow's CMYK (Adobe polarity already undone).
    Cmyk,
    /// `I;16`: 16-bit grey.
    I16,
}

impl PilMode {
    fn bands(self) -> usize {
        match self {
            PilMode::Bilevel | PilMode::L | PilMode::I16 => 1,
            PilMode::La => 2,
            PilMode::P | PilMode::Rgb => 3,
            PilMode::Rgba | PilMode::Cmyk => 4,
        }
    }
}

#[derive(Debug, Clone)]
enum Pixels {
    U8(Vec<u8>),
    U16(Vec<u16>),
}

/// A decoded image in Pillow's terms: size, mode and interleaved samples.
#[derive(Debug, Clone)]
pub struct DecodedImage {
    name: String,
    width: u32,
    height: u32,
    mode: PilMode,
    pixels: Pixels,
}

impl DecodedImage {
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn width(&self) -> u32 {
        self.width
    }
    pub fn height(&self) -> u32 {
        self.height
    }
    pub fn mode(&self) -> PilMode {
        self.mode
    }

    /// Builds an image from interleaved 8-bit samples (`mode` must not be `I16`).
    pub fn from_u8(name: &str, width: u32, height: u32, mode: PilMode, data: Vec<u8>) -> Result<Self> {
        let need = width as usize * height as usize * mode.bands();
        if mode == PilMode::I16 || data.len() != need || width == 0 || height == 0 {
            return Err(img_err(name, format!("{} samples do not make a {width}x{height} {mode:?} image", data.len())));
        }
        Ok(DecodedImage { name: name.to_string(), width, height, mode, pixels: Pixels::U8(data) })
    }
}

fn img_err(name: &str, message: impl Into<String>) -> Error {
    Error::Image { image: name.to_string(), message: message.into() }
}

// ------------------------------------------------------------------------------------------------
// Decoding
// ------------------------------------------------------------------------------------------------

/// Decodes JPEG/PNG/WebP/GIF/BMP (and TIFF) bytes, refusing more than [`DEFAULT_MAX_PIXELS`].
pub fn decode(bytes: &[u8], name: &str) -> Result<DecodedImage> {
    decode_with_limit(bytes, name, DEFAULT_MAX_PIXELS)
}

/// [`decode`] with an explicit pixel limit (checked from the header, before any allocation).
pub fn decode_with_limit(bytes: &[u8], name: &str, max_pixels: u64) -> Result<DecodedImage> {
    if bytes.is_empty() {
        return Err(img_err(name, "empty file"));
    }
    let format = image::guess_format(bytes).map_err(|e| img_err(name, format!("unrecognised image format: {e}")))?;
    let img = match format {
        image::ImageFormat::Jpeg => decode_jpeg(bytes, name, max_pixels)?,
        image::ImageFormat::Gif => decode_gif(bytes, name, max_pixels)?,
        image::ImageFormat::Png => {
            let kind = png_source_kind(bytes);
            let dynimg = decode_generic(bytes, name, format, max_pixels)?;
            from_dynamic(dynimg, name, kind)?
        }
        image::ImageFormat::Bmp => {
            let kind = bmp_source_kind(bytes);
            let dynimg = decode_generic(bytes, name, format, max_pixels)?;
            from_dynamic(dynimg, name, kind)?
        }
        _ => {
            let dynimg = decode_generic(bytes, name, format, max_pixels)?;
            from_dynamic(dynimg, name, SourceKind::Native)?
        }
    };
    if img.width == 0 || img.height == 0 {
        return Err(img_err(name, "image has zero width or height"));
    }
    Ok(img)
}

fn check_size(name: &str, w: u64, h: u64, max_pixels: u64) -> Result<()> {
    if w == 0 || h == 0 {
        return Err(img_err(name, "image has zero width or height"));
    }
    if w.saturating_mul(h) > max_pixels {
        return Err(img_err(name, format!("{w}x{h} exceeds the limit of {max_pixels} pixels")));
    }
    Ok(())
}

fn image_limits(max_pixels: u64) -> image::Limits {
    let mut l = image::Limits::default();
    // 16-bit RGBA is the widest buffer a decoder makes; leave room for its scratch.
    l.max_alloc = Some(max_pixels.saturating_mul(8).saturating_add(64 << 20));
    l
}

fn decode_generic(
    bytes: &[u8],
    name: &str,
    format: image::ImageFormat,
    max_pixels: u64,
) -> Result<image::DynamicImage> {
    use image::ImageDecoder;
    let mut reader = image::ImageReader::new(Cursor::new(bytes));
    reader.set_format(format);
    reader.limits(image_limits(max_pixels));
    let decoder = reader.into_decoder().map_err(|e| img_err(name, e.to_string()))?;
    let (w, h) = decoder.dimensions();
    check_size(name, w as u64, h as u64, max_pixels)?;
    image::DynamicImage::from_decoder(decoder).map_err(|e| img_err(name, e.to_string()))
}

/// What Pillow would make of the source, where the `image` crate's output hides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SourceKind {
    /// Trust the decoded colour type.
    Native,
    /// Palette image: Pillow `P` (alpha from tRNS is not part of the mode).
    Palette,
    /// Palette that Pillow recognises as a grey ramp: `L` (value = index).
    PaletteGray,
    /// 1-bit grey: Pillow `1`.
    Bilevel,
    /// Grey/RGB with a tRNS chunk or a padding byte: Pillow keeps `L`/`I;16`/`RGB`, no alpha.
    NoAlpha,
}

fn png_source_kind(b: &[u8]) -> SourceKind {
    // IHDR is the first chunk: 8-byte signature, 4 length, "IHDR", w, h, depth, colour type.
    if b.len() < 26 || &b[12..16] != b"IHDR" {
        return SourceKind::Native;
    }
    let (depth, ct) = (b[24], b[25]);
    match (ct, depth) {
        (3, _) => SourceKind::Palette,
        (0, 1) => SourceKind::Bilevel,
        (0, _) | (2, _) => SourceKind::NoAlpha,
        _ => SourceKind::Native,
    }
}

fn bmp_source_kind(b: &[u8]) -> SourceKind {
    let u16_at = |o: usize| b.get(o..o + 2).map(|s| u16::from_le_bytes([s[0], s[1]]) as u32);
    let u32_at = |o: usize| b.get(o..o + 4).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]));
    let Some(hsize) = u32_at(14) else { return SourceKind::Native };
    let (bits, colors, entry) = if hsize == 12 {
        // OS/2 BITMAPCOREHEADER: 3-byte palette entries.
        match u16_at(24) {
            Some(bits) => (bits, 0, 3usize),
            None => return SourceKind::Native,
        }
    } else {
        match (u16_at(28), u32_at(46), u32_at(30)) {
            (Some(bits), Some(colors), Some(compression)) => {
                // 32-bit BI_RGB: Pillow reads BGRX, i.e. no alpha.
                if bits == 32 && compression == 0 {
                    return SourceKind::NoAlpha;
                }
                (bits, colors, 4usize)
            }
            _ => return SourceKind::Native,
        }
    };
    if bits > 8 {
        return SourceKind::Native;
    }
    let colors = if colors > 0 { colors } else { 1u32 << bits } as usize;
    let start = 14 + hsize as usize;
    // Pillow ditches the palette when it is the grey ramp (or black/white for 2 colours).
    let gray = (0..colors).all(|i| {
        let v = if colors == 2 { [0u8, 255][i] } else { i.min(255) as u8 };
        match b.get(start + i * entry..start + i * entry + 3) {
            Some(bgr) => bgr == [v, v, v] && i < 256,
            None => false,
        }
    });
    match (gray, colors <= 2) {
        (true, true) => SourceKind::Bilevel,
        (true, false) => SourceKind::PaletteGray,
        (false, _) => SourceKind::Palette,
    }
}

fn from_dynamic(img: image::DynamicImage, name: &str, kind: SourceKind) -> Result<DecodedImage> {
    use image::DynamicImage as D;
    let (w, h) = (img.width(), img.height());
    let hi = |v: Vec<u16>| -> Vec<u8> { v.into_iter().map(|x| (x >> 8) as u8).collect() };
    let pick = |v: &[u8], bands: usize, keep: usize| -> Vec<u8> {
        v.chunks_exact(bands).flat_map(|p| p[..keep].iter().copied()).collect()
    };
    let (mode, pixels) = match kind {
        SourceKind::Palette => (PilMode::P, Pixels::U8(img.into_rgb8().into_raw())),
        SourceKind::PaletteGray | SourceKind::Bilevel => {
            let rgb = img.into_rgb8().into_raw();
            let mode = if kind == SourceKind::Bilevel { PilMode::Bilevel } else { PilMode::L };
            (mode, Pixels::U8(pick(&rgb, 3, 1)))
        }
        SourceKind::NoAlpha | SourceKind::Native => {
            let drop = kind == SourceKind::NoAlpha;
            match img {
                D::ImageLuma8(b) => (PilMode::L, Pixels::U8(b.into_raw())),
                D::ImageLumaA8(b) if drop => (PilMode::L, Pixels::U8(pick(b.as_raw(), 2, 1))),
                D::ImageLumaA8(b) => (PilMode::La, Pixels::U8(b.into_raw())),
                D::ImageRgb8(b) => (PilMode::Rgb, Pixels::U8(b.into_raw())),
                D::ImageRgba8(b) if drop => (PilMode::Rgb, Pixels::U8(pick(b.as_raw(), 4, 3))),
                D::ImageRgba8(b) => (PilMode::Rgba, Pixels::U8(b.into_raw())),
                D::ImageLuma16(b) => (PilMode::I16, Pixels::U16(b.into_raw())),
                D::ImageLumaA16(b) if drop => {
                    let v = b.into_raw();
                    (PilMode::I16, Pixels::U16(v.chunks_exact(2).map(|p| p[0]).collect()))
                }
                // Pillow reads 16-bit colour PNGs through the high byte ("RGB;16B", "LA;16B").
                D::ImageLumaA16(b) => (PilMode::La, Pixels::U8(hi(b.into_raw()))),
                D::ImageRgb16(b) => (PilMode::Rgb, Pixels::U8(hi(b.into_raw()))),
                D::ImageRgba16(b) if drop => (PilMode::Rgb, Pixels::U8(pick(&hi(b.into_raw()), 4, 3))),
                D::ImageRgba16(b) => (PilMode::Rgba, Pixels::U8(hi(b.into_raw()))),
                // Float images (TIFF/EXR): no Pillow counterpart worth emulating.
                other if other.color().has_alpha() && !drop => {
                    (PilMode::Rgba, Pixels::U8(other.into_rgba8().into_raw()))
                }
                other => (PilMode::Rgb, Pixels::U8(other.into_rgb8().into_raw())),
            }
        }
    };
    Ok(DecodedImage { name: name.to_string(), width: w, height: h, mode, pixels })
}

fn decode_jpeg(bytes: &[u8], name: &str, max_pixels: u64) -> Result<DecodedImage> {
    // libjpeg-turbo-exact (crate::jpeg): the same samples as Pillow, and, as in Pillow, a
    // truncated or corrupt scan is an error rather than a silently grey-filled image.
    let jpeg_err = |e: crate::jpeg::JpegError| img_err(name, format!("JPEG: {e}"));
    let dec = crate::jpeg::Decoder::new(bytes).map_err(jpeg_err)?;
    check_size(name, dec.width() as u64, dec.height() as u64, max_pixels)?;
    let img = dec.decode().map_err(jpeg_err)?;
    let mode = match img.format {
        crate::jpeg::PixelFormat::Gray => PilMode::L,
        crate::jpeg::PixelFormat::Rgb => PilMode::Rgb,
        // Already in Pillow's polarity (Adobe "CMYK;I" undone; YCCK converted first).
        crate::jpeg::PixelFormat::Cmyk => PilMode::Cmyk,
    };
    DecodedImage::from_u8(name, img.width, img.height, mode, img.data)
}

fn decode_gif(bytes: &[u8], name: &str, max_pixels: u64) -> Result<DecodedImage> {
    let gif_err = |e: gif::DecodingError| img_err(name, format!("GIF: {e}"));
    let mut opts = gif::DecodeOptions::new();
    opts.set_color_output(gif::ColorOutput::Indexed);
    if let Some(n) = std::num::NonZeroU64::new(max_pixels) {
        opts.set_memory_limit(gif::MemoryLimit::Bytes(n));
    }
    let mut dec = opts.read_info(Cursor::new(bytes)).map_err(gif_err)?;
    let (sw, sh) = (dec.width() as usize, dec.height() as usize);
    check_size(name, sw as u64, sh as u64, max_pixels)?;
    let global = dec.global_palette().map(|p| p.to_vec());
    let frame = dec.read_next_frame().map_err(gif_err)?.ok_or_else(|| img_err(name, "GIF: no frame"))?;
    // Pillow's first frame: the logical screen, prefilled with the transparent index (else 0).
    let mut idx = vec![frame.transparent.unwrap_or(0); sw * sh];
    let (fl, ft, fw, fh) = (frame.left as usize, frame.top as usize, frame.width as usize, frame.height as usize);
    if frame.buffer.len() < fw * fh {
        return Err(img_err(name, "GIF: truncated frame"));
    }
    for y in 0..fh {
        let yy = ft + y;
        if yy >= sh {
            break;
        }
        for x in 0..fw.min(sw.saturating_sub(fl)) {
            idx[yy * sw + fl + x] = frame.buffer[y * fw + x];
        }
    }
    let palette = frame.palette.clone().or(global);
    // Pillow drops a palette that is the identity grey ramp and opens the image as `L`.
    let needed = |p: &[u8]| p.chunks(3).enumerate().any(|(i, c)| c.len() < 3 || c.iter().any(|&v| v as usize != i));
    let (mode, pixels) = match palette.filter(|p| needed(p)) {
        None => (PilMode::L, idx),
        Some(p) => {
            let mut rgb = Vec::with_capacity(sw * sh * 3);
            for &i in &idx {
                let o = i as usize * 3;
                // Entries past the palette's end are black in Pillow's padded palette.
                let c = p.get(o..o + 3).unwrap_or(&[0, 0, 0]);
                rgb.extend_from_slice(c);
            }
            (PilMode::P, rgb)
        }
    };
    Ok(DecodedImage { name: name.to_string(), width: sw as u32, height: sh as u32, mode, pixels: Pixels::U8(pixels) })
}

// ------------------------------------------------------------------------------------------------
// Pillow's resampling (libImaging/Resample.c) and NEAREST scaling (Geometry.c)
// ------------------------------------------------------------------------------------------------

const PRECISION_BITS: u32 = 32 - 8 - 2;

fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// `precompute_coeffs` for the whole source (box = 0..in_size), BICUBIC (support 2).
struct Coeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>, // (first source index, count)
    k: Vec<f64>,
}

fn precompute_coeffs(in_size: usize, out_size: usize) -> Coeffs {
    let (in0, in1) = (0.0f32, in_size as f32);
    let scale = (in1 - in0) as f64 / out_size as f64;
    let filterscale = if scale < 1.0 { 1.0 } else { scale };
    let support = 2.0 * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let inv = 1.0 / filterscale;
    let mut k = vec![0.0f64; out_size * ksize];
    let mut bounds = Vec::with_capacity(out_size);
    for xx in 0..out_size {
        let center = in0 as f64 + (xx as f64 + 0.5) * scale;
        let mut ww = 0.0;
        // C's (int) cast truncates toward zero, as `as i64` does.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) - xmin;
        let xmax = xmax.max(0) as usize;
        let row = &mut k[xx * ksize..(xx + 1) * ksize];
        for x in 0..xmax {
            let w = bicubic(((x as i64 + xmin) as f64 - center + 0.5) * inv);
            row[x] = w;
            ww += w;
        }
        if ww != 0.0 {
            row[..xmax].iter_mut().for_each(|v| *v /= ww);
        }
        bounds.push((xmin as usize, xmax));
    }
    Coeffs { ksize, bounds, k }
}

fn fixed_coeffs(c: &Coeffs) -> Vec<i32> {
    let one = (1i64 << PRECISION_BITS) as f64;
    c.k.iter().map(|&v| if v < 0.0 { (-0.5 + v * one) as i32 } else { (0.5 + v * one) as i32 }).collect()
}

#[inline]
fn clip8(ss: i32) -> u8 {
    (ss >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Separable BICUBIC on interleaved 8-bit samples, horizontal pass first (Pillow's order and
/// rounding: both passes round to uint8).
fn resample_u8(src: &[u8], w: usize, h: usize, bands: usize, ow: usize, oh: usize) -> Vec<u8> {
    let cv = precompute_coeffs(h, oh);
    let kv = fixed_coeffs(&cv);
    // Only the source rows the vertical pass reads.
    let y_first = cv.bounds.first().map_or(0, |b| b.0);
    let y_last = cv.bounds.last().map_or(0, |b| b.0 + b.1);
    let (tmp, tmp_first) = if ow != w {
        let ch = precompute_coeffs(w, ow);
        let kh = fixed_coeffs(&ch);
        let rows = y_last - y_first;
        let mut out = vec![0u8; ow * rows * bands];
        for (r, orow) in out.chunks_exact_mut(ow * bands).enumerate() {
            let line = &src[(y_first + r) * w * bands..(y_first + r + 1) * w * bands];
            for xx in 0..ow {
                let (xmin, n) = ch.bounds[xx];
                let k = &kh[xx * ch.ksize..xx * ch.ksize + n];
                for b in 0..bands {
                    let mut ss: i32 = 1 << (PRECISION_BITS - 1);
                    for (x, &kx) in k.iter().enumerate() {
                        ss = ss.wrapping_add(line[(xmin + x) * bands + b] as i32 * kx);
                    }
                    orow[xx * bands + b] = clip8(ss);
                }
            }
        }
        (std::borrow::Cow::Owned(out), y_first)
    } else {
        (std::borrow::Cow::Borrowed(src), 0)
    };
    if oh == h {
        return tmp.into_owned();
    }
    let stride = ow * bands;
    let mut out = vec![0u8; stride * oh];
    for (yy, orow) in out.chunks_exact_mut(stride).enumerate() {
        let (ymin, n) = cv.bounds[yy];
        let k = &kv[yy * cv.ksize..yy * cv.ksize + n];
        for (i, o) in orow.iter_mut().enumerate() {
            let mut ss: i32 = 1 << (PRECISION_BITS - 1);
            for (y, &ky) in k.iter().enumerate() {
                ss = ss.wrapping_add(tmp[(ymin + y - tmp_first) * stride + i] as i32 * ky);
            }
            *o = clip8(ss);
        }
    }
    out
}

/// `ROUND_UP` then `CLIP16`, as the 16-bit passes do.
#[inline]
fn round_clip16(ss: f64) -> u16 {
    let v = if ss >= 0.0 { (ss + 0.5) as i64 } else { (ss - 0.5) as i64 };
    v.clamp(0, 65_535) as u16
}

/// Pillow's `I;16` resampling: float coefficients, each pass rounds to 16 bits.
fn resample_u16(src: &[u16], w: usize, h: usize, ow: usize, oh: usize) -> Vec<u16> {
    let cv = precompute_coeffs(h, oh);
    let y_first = cv.bounds.first().map_or(0, |b| b.0);
    let y_last = cv.bounds.last().map_or(0, |b| b.0 + b.1);
    let (tmp, tmp_first) = if ow != w {
        let ch = precompute_coeffs(w, ow);
        let rows = y_last - y_first;
        let mut out = vec![0u16; ow * rows];
        for (r, orow) in out.chunks_exact_mut(ow).enumerate() {
            let line = &src[(y_first + r) * w..(y_first + r + 1) * w];
            for (xx, o) in orow.iter_mut().enumerate() {
                let (xmin, n) = ch.bounds[xx];
                let k = &ch.k[xx * ch.ksize..xx * ch.ksize + n];
                let mut ss = 0.0f64;
                for (x, &kx) in k.iter().enumerate() {
                    ss += line[xmin + x] as i32 as f64 * kx;
                }
                *o = round_clip16(ss);
            }
        }
        (std::borrow::Cow::Owned(out), y_first)
    } else {
        (std::borrow::Cow::Borrowed(src), 0)
    };
    if oh == h {
        return tmp.into_owned();
    }
    let mut out = vec![0u16; ow * oh];
    for (yy, orow) in out.chunks_exact_mut(ow).enumerate() {
        let (ymin, n) = cv.bounds[yy];
        let k = &cv.k[yy * cv.ksize..yy * cv.ksize + n];
        for (xx, o) in orow.iter_mut().enumerate() {
            let mut ss = 0.0f64;
            for (y, &ky) in k.iter().enumerate() {
                ss += tmp[(ymin + y - tmp_first) * ow + xx] as i32 as f64 * ky;
            }
            *o = round_clip16(ss);
        }
    }
    out
}

/// `ImagingScaleAffine`: NEAREST with Pillow's accumulated f64 source positions; positions that
/// fall outside the source stay 0 (the output is zero-filled).
fn nearest_u8(src: &[u8], w: usize, h: usize, bands: usize, ow: usize, oh: usize) -> Vec<u8> {
    let table = |in_size: usize, out_size: usize| -> Vec<Option<usize>> {
        let a = (in_size as f32 - 0.0f32) as f64 / out_size as f64;
        let mut o = 0.0 + a * 0.5;
        (0..out_size)
            .map(|_| {
                let i = if o < 0.0 { -1 } else { o as i64 };
                o += a;
                (i >= 0 && (i as usize) < in_size).then_some(i as usize)
            })
            .collect()
    };
    let (xt, yt) = (table(w, ow), table(h, oh));
    let mut out = vec![0u8; ow * oh * bands];
    for (yy, yi) in yt.iter().enumerate() {
        let Some(yi) = *yi else { continue };
        for (xx, xi) in xt.iter().enumerate() {
            if let Some(xi) = *xi {
                let s = (yi * w + xi) * bands;
                out[(yy * ow + xx) * bands..(yy * ow + xx + 1) * bands].copy_from_slice(&src[s..s + bands]);
            }
        }
    }
    out
}

// ------------------------------------------------------------------------------------------------
// Pillow's mode conversions (libImaging/Convert.c)
// ------------------------------------------------------------------------------------------------

#[inline]
fn muldiv255(a: u32, b: u32) -> u32 {
    let t = a * b + 128;
    ((t >> 8) + t) >> 8
}

/// `RGBA`→`RGBa` / `LA`→`La`: premultiply every colour band by alpha (the last band).
fn premultiply(px: &mut [u8], bands: usize) {
    for p in px.chunks_exact_mut(bands) {
        let a = p[bands - 1] as u32;
        for c in &mut p[..bands - 1] {
            *c = muldiv255(*c as u32, a) as u8;
        }
    }
}

/// `RGBa`→`RGBA` / `La`→`LA`.
fn unpremultiply(px: &mut [u8], bands: usize) {
    for p in px.chunks_exact_mut(bands) {
        let a = p[bands - 1] as u32;
        if a != 0 && a != 255 {
            for c in &mut p[..bands - 1] {
                *c = ((255 * *c as u32) / a).min(255) as u8;
            }
        }
    }
}

/// `convert("RGB")` of interleaved 8-bit samples in `mode`.
fn to_rgb_u8(px: &[u8], mode: PilMode) -> Vec<u8> {
    match mode {
        PilMode::Rgb | PilMode::P => px.to_vec(),
        PilMode::Bilevel | PilMode::L => px.iter().flat_map(|&v| [v, v, v]).collect(),
        PilMode::La => px.chunks_exact(2).flat_map(|p| [p[0], p[0], p[0]]).collect(),
        PilMode::Rgba => px.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect(),
        PilMode::Cmyk => px
            .chunks_exact(4)
            .flat_map(|p| {
                let nk = 255 - p[3] as i32;
                let f = |c: u8| (nk - muldiv255(c as u32, nk as u32) as i32).clamp(0, 255) as u8;
                [f(p[0]), f(p[1]), f(p[2])]
            })
            .collect(),
        PilMode::I16 => unreachable!("I;16 samples are u16"),
    }
}

/// `I;16`→`RGB`: Pillow clips (it does not scale) values above 255.
fn i16_to_rgb(px: &[u16]) -> Vec<u8> {
    px.iter()
        .flat_map(|&v| {
            let v = v.min(255) as u8;
            [v, v, v]
        })
        .collect()
}

// ------------------------------------------------------------------------------------------------
// The two front-ends
// ------------------------------------------------------------------------------------------------

/// Short side → `short`, long side → `int(short * long / short_in)` (transformers and
/// torchvision agree); returns (width, height).
fn resized_size(w: usize, h: usize, short: usize) -> (usize, usize) {
    if w <= h {
        (short, short * h / w)
    } else {
        (short * w / h, short)
    }
}

fn crop_rgb(px: &[u8], w: usize, top: usize, left: usize, ch: usize, cw: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(ch * cw * 3);
    for y in top..top + ch {
        out.extend_from_slice(&px[(y * w + left) * 3..(y * w + left + cw) * 3]);
    }
    out
}

fn crop_bands<T: Copy>(px: &[T], w: usize, bands: usize, top: usize, left: usize, ch: usize, cw: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(ch * cw * bands);
    for y in top..top + ch {
        out.extend_from_slice(&px[(y * w + left) * bands..(y * w + left + cw) * bands]);
    }
    out
}

/// Python's `int(round(x / 2.0))` for a non-negative integer x: round half to even.
fn half_even_div2(x: usize) -> usize {
    let q = x / 2;
    if x % 2 == 1 && q % 2 == 1 {
        q + 1
    } else {
        q
    }
}

/// The `crop_size × crop_size × 3` uint8 crop each front-end feeds to `/255`, HWC.
pub fn resize_crop_u8(img: &DecodedImage, front: FrontEnd, cfg: &ClipImageConfig) -> Result<Vec<u8>> {
    let (w, h) = (img.width as usize, img.height as usize);
    let (ch, cw) = (cfg.crop_size, cfg.crop_size);
    let short = cfg.shortest_edge;
    if w == 0 || h == 0 || short == 0 || ch == 0 {
        return Err(img_err(&img.name, "empty image or zero-sized configuration"));
    }
    if ch > short {
        return Err(Error::InvalidInput(format!("crop {ch} larger than the resized short side {short}")));
    }
    let (ow, oh) = resized_size(w, h, short);
    match front {
        FrontEnd::HuggingFace => {
            let rgb = match &img.pixels {
                Pixels::U8(p) => std::borrow::Cow::Owned(to_rgb_u8(p, img.mode)),
                Pixels::U16(p) => std::borrow::Cow::Owned(i16_to_rgb(p)),
            };
            let r = resample_u8(&rgb, w, h, 3, ow, oh);
            Ok(crop_rgb(&r, ow, (oh - ch) / 2, (ow - cw) / 2, ch, cw))
        }
        FrontEnd::OpenAi => {
            let (top, left) = (half_even_div2(oh - ch), half_even_div2(ow - cw));
            let bands = img.mode.bands();
            match &img.pixels {
                Pixels::U16(p) => {
                    let r = resample_u16(p, w, h, ow, oh);
                    Ok(i16_to_rgb(&crop_bands(&r, ow, 1, top, left, ch, cw)))
                }
                Pixels::U8(p) => {
                    let r = match img.mode {
                        PilMode::P | PilMode::Bilevel => nearest_u8(p, w, h, bands, ow, oh),
                        PilMode::Rgba | PilMode::La => {
                            let mut pm = p.clone();
                            premultiply(&mut pm, bands);
                            let mut r = resample_u8(&pm, w, h, bands, ow, oh);
                            unpremultiply(&mut r, bands);
                            r
                        }
                        _ => resample_u8(p, w, h, bands, ow, oh),
                    };
                    Ok(to_rgb_u8(&crop_bands(&r, ow, bands, top, left, ch, cw), img.mode))
                }
            }
        }
    }
}

/// `x/255`, then `(x - mean) / std`, all in f32 (what both front-ends compute), HWC u8 → CHW.
pub fn normalize(hwc: &[u8], height: usize, width: usize, cfg: &ClipImageConfig) -> Result<Vec<f32>> {
    let n = height * width;
    if hwc.len() != n * 3 {
        return Err(Error::InvalidInput(format!("{} samples are not a {height}x{width}x3 image", hwc.len())));
    }
    let mut out = vec![0f32; n * 3];
    for c in 0..3 {
        let (m, s) = (cfg.mean[c], cfg.std[c]);
        // One table per channel: identical to computing per pixel.
        let lut: Vec<f32> = (0..256).map(|v| (v as f32 / 255.0f32 - m) / s).collect();
        for (o, p) in out[c * n..(c + 1) * n].iter_mut().zip(hwc.chunks_exact(3)) {
            *o = lut[p[c] as usize];
        }
    }
    Ok(out)
}

/// The CLIP input for `front`: `[3, crop_size, crop_size]` f32, normalised, row-major.
pub fn preprocess(img: &DecodedImage, front: FrontEnd, cfg: &ClipImageConfig) -> Result<Vec<f32>> {
    let u8s = resize_crop_u8(img, front, cfg)?;
    normalize(&u8s, cfg.crop_size, cfg.crop_size, cfg)
}

/// Whether two preprocessed inputs are bit-identical (then CLIP needs to run only once).
pub fn same_input(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_offsets() {
        assert_eq!(half_even_div2(69), 34); // round(34.5) = 34
        assert_eq!(half_even_div2(79), 40); // round(39.5) = 40
        assert_eq!(half_even_div2(0), 0);
        assert_eq!(resized_size(301, 231, 224), (291, 224));
        assert_eq!(resized_size(100, 61, 224), (367, 224));
    }

    #[test]
    fn config_from_json() {
        let j = br#"{"crop_size": 224, "size": {"shortest_edge": 256}, "image_mean": [0.5,0.5,0.5], "image_std": [0.5,0.5,0.5]}"#;
        let c = ClipImageConfig::from_json(j).expect("valid");
        assert_eq!((c.shortest_edge, c.crop_size), (256, 224));
        assert_eq!(c.mean, [0.5; 3]);
        let j = br#"{"crop_size": {"height": 224, "width": 224}, "size": 224}"#;
        assert_eq!(ClipImageConfig::from_json(j).expect("valid"), ClipImageConfig::default());
        assert!(ClipImageConfig::from_json(b"{\"size\": -1}").is_err());
        assert!(ClipImageConfig::from_json(br#"{"crop_size": {"height": 224, "width": 200}}"#).is_err());
        assert!(ClipImageConfig::from_json(b"not json").is_err());
    }
}
