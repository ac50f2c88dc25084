//! JPEG decoding bit-exact with Pillow, i.e. with libjpeg-turbo 3 at its defaults: Huffman
//! baseline/extended/progressive 8-bit frames, the `islow` integer IDCT (`jidctint.c`), "fancy"
//! triangle-filter chroma upsampling (`jdsample.c`, with the context rows `jdmainct.c` supplies at
//! the image edges) and `jdcolor.c`'s fixed-point YCbCr→RGB and YCCK→CMYK tables. The colour space
//! of the file is guessed as `jdapimin.c` does (JFIF, Adobe transform flag, component ids), and
//! the output is what Pillow makes of it: `L`, `RGB`, or `CMYK` with Adobe polarity undone.
//!
//! Where libjpeg only warns and carries on with made-up data (a bad Huffman code, entropy data
//! that runs into a marker or the end of the file, a missing or misnumbered restart marker), this
//! decoder refuses the file: a corrupt or truncated image is an error, never a silently grey one.
//! Pillow refuses a file that ends before EOI too. Arithmetic coding, lossless and hierarchical
//! JPEG and 12-bit samples are refused with an explicit error.
//!
//! Self-contained (no dependencies, no unsafe) so that it can be fuzzed on its own.

use std::fmt;

/// Why a JPEG could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JpegError {
    message: String,
    truncated: bool,
}

impl JpegError {
    fn new(message: impl Into<String>) -> Self {
        JpegError { message: message.into(), truncated: false }
    }

    fn truncated(message: impl Into<String>) -> Self {
        JpegError { message: message.into(), truncated: true }
    }

    /// Whether the data ended too early (as opposed to being malformed or unsupported).
    pub fn is_truncated(&self) -> bool {
        self.truncated
    }
}

impl fmt::Display for JpegError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for JpegError {}

pub type Result<T> = std::result::Result<T, JpegError>;

fn fail<T>(message: impl Into<String>) -> Result<T> {
    Err(JpegError::new(message))
}

/// Pillow's mode for the decoded samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    /// 1 band (`L`).
    Gray,
    /// 3 bands (`RGB`).
    Rgb,
    /// 4 bands (`CMYK`), already inverted as Pillow's `CMYK;I` raw mode does.
    Cmyk,
}

impl PixelFormat {
    pub fn bands(self) -> usize {
        match self {
            PixelFormat::Gray => 1,
            PixelFormat::Rgb => 3,
            PixelFormat::Cmyk => 4,
        }
    }
}

/// A decoded image: interleaved 8-bit samples, row-major.
#[derive(Debug, Clone)]
pub struct Image {
    pub width: u32,
    pub height: u32,
    pub format: PixelFormat,
    pub data: Vec<u8>,
}

/// libjpeg's `JPEG_MAX_DIMENSION`.
const MAX_DIMENSION: u32 = 65_500;
/// libjpeg's `D_MAX_BLOCKS_IN_MCU`.
const MAX_BLOCKS_IN_MCU: usize = 10;
/// Not a libjpeg limit: bounds the work a small file can cause (every progressive scan walks
/// all blocks of its components). Real encoders write a few dozen scans at most.
const MAX_SCANS: usize = 1000;

/// Zigzag index → natural (row-major) index, with libjpeg's 16 extra entries so that a corrupt
/// run past coefficient 63 lands on 63 as it does there.
const NATURAL_ORDER: [usize; 80] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21,
    28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54,
    47, 55, 62, 63, //
    63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63,
];

// ------------------------------------------------------------------------------------------------
// Huffman tables (jdhuff.c jpeg_make_d_derived_tbl / jpeg_huff_decode)
// ------------------------------------------------------------------------------------------------

/// A DHT table as stored in the file.
#[derive(Clone)]
struct HuffSpec {
    /// `bits[l]`: number of codes of length l (1..=16); `bits[0]` unused.
    bits: [u8; 17],
    values: [u8; 256],
}

const FAST_BITS: u32 = 9;

/// Derived decoding table.
struct Huffman {
    /// Codes of at most FAST_BITS bits: `length << 8 | symbol`, 0 where no short code matches.
    fast: Vec<u16>,
    /// Largest code of each length, -1 where there is none.
    maxcode: [i32; 17],
    /// Index into `values` of a code of each length, minus that length's first code.
    valoffset: [i32; 17],
    values: [u8; 256],
}

impl Huffman {
    fn new(spec: &HuffSpec, is_dc: bool) -> Result<Huffman> {
        let mut maxcode = [-1i32; 17];
        let mut valoffset = [0i32; 17];
        let mut code: i32 = 0;
        let mut index: usize = 0;
        for len in 1..=16usize {
            let n = spec.bits[len] as usize;
            if index + n > 256 {
                return fail("bad Huffman table (more than 256 codes)");
            }
            if n > 0 {
                valoffset[len] = index as i32 - code;
                code += n as i32;
                index += n;
                maxcode[len] = code - 1;
            }
            // No code may be all ones (libjpeg's check).
            if code >= 1 << len {
                return fail("bad Huffman table (code lengths overflow)");
            }
            code <<= 1;
        }
        // Short codes, now known to fit in their lengths, also go into the lookup table.
        let mut fast = vec![0u16; 1 << FAST_BITS];
        for len in 1..=FAST_BITS as usize {
            if maxcode[len] < 0 {
                continue;
            }
            let shift = FAST_BITS - len as u32;
            let first_code = maxcode[len] + 1 - spec.bits[len] as i32;
            for code in first_code..=maxcode[len] {
                let entry = (len as u16) << 8 | spec.values[(code + valoffset[len]) as usize] as u16;
                let first = (code as usize) << shift;
                fast[first..first + (1 << shift)].fill(entry);
            }
        }
        if is_dc && spec.values[..index].iter().any(|&s| s > 15) {
            return fail("bad Huffman table (DC symbol above 15)");
        }
        Ok(Huffman { fast, maxcode, valoffset, values: spec.values })
    }
}

/// Annex K.3 tables, which libjpeg-turbo installs in empty slots 0 and 1 of sequential files
/// (Motion-JPEG frames omit them).
fn standard_tables() -> [(HuffSpec, HuffSpec); 2] {
    fn spec(counts: [u8; 16], values: &[u8]) -> HuffSpec {
        let mut bits = [0u8; 17];
        bits[1..].copy_from_slice(&counts);
        let mut v = [0u8; 256];
        v[..values.len()].copy_from_slice(values);
        HuffSpec { bits, values: v }
    }
    const AC_LUMA: [u8; 162] = [
        0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61, 0x07, 0x22, 0x71,
        0x14, 0x32, 0x81, 0x91, 0xa1, 0x08, 0x23, 0x42, 0xb1, 0xc1, 0x15, 0x52, 0xd1, 0xf0, 0x24, 0x33, 0x62, 0x72,
        0x82, 0x09, 0x0a, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x34, 0x35, 0x36, 0x37,
        0x38, 0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59,
        0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x83,
        0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3,
        0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3,
        0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe1, 0xe2,
        0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa,
    ];
    const AC_CHROMA: [u8; 162] = [
        0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61, 0x71, 0x13, 0x22,
        0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xa1, 0xb1, 0xc1, 0x09, 0x23, 0x33, 0x52, 0xf0, 0x15, 0x62, 0x72, 0xd1,
        0x0a, 0x16, 0x24, 0x34, 0xe1, 0x25, 0xf1, 0x17, 0x18, 0x19, 0x1a, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x35, 0x36,
        0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58,
        0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a,
        0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a,
        0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba,
        0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda,
        0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa,
    ];
    const DC_VALUES: [u8; 12] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
    [
        (
            spec([0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0], &DC_VALUES),
            spec([0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7d], &AC_LUMA),
        ),
        (
            spec([0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0], &DC_VALUES),
            spec([0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77], &AC_CHROMA),
        ),
    ]
}

// ------------------------------------------------------------------------------------------------
// Entropy-coded data
// ------------------------------------------------------------------------------------------------

/// Reads the bits of one scan, undoing 0xFF00 stuffing. It stops at the first marker (or the end
/// of the data) and from then on only supplies zero bits for look-ahead: consuming any of them
/// means the scan ran out of data, which is an error.
struct BitReader<'a> {
    data: &'a [u8],
    /// Next byte to load; at a marker, the 0xFF before its code.
    pos: usize,
    /// Loaded bits, most significant first; the bits below `nbits` are zero.
    buf: u64,
    nbits: u32,
    stopped: bool,
    /// Stopped at 0xFF 0xFF .. 0x00: a stuffed 0xFF after fill bytes. libjpeg-turbo's slow
    /// path reads it as 0xFF, its fast path as a marker (and then keeps part of what it decoded
    /// with zeros), so Pillow's result depends on its read-ahead: refused if it is needed.
    stopped_at_fill: bool,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8], pos: usize) -> Self {
        BitReader { data, pos, buf: 0, nbits: 0, stopped: false, stopped_at_fill: false }
    }

    fn fill(&mut self) {
        while self.nbits <= 56 && !self.stopped {
            let Some(&byte) = self.data.get(self.pos) else {
                self.stopped = true;
                break;
            };
            let value = if byte == 0xFF {
                // 0xFF 0x00 is a data byte 0xFF; 0xFF (0xFF)* XX is marker XX.
                let mut p = self.pos + 1;
                while self.data.get(p) == Some(&0xFF) {
                    p += 1;
                }
                match self.data.get(p) {
                    Some(0) if p == self.pos + 1 => {
                        self.pos = p + 1;
                        0xFF
                    }
                    Some(0) => {
                        self.stopped = true;
                        self.stopped_at_fill = true;
                        break;
                    }
                    Some(_) => {
                        self.pos = p - 1;
                        self.stopped = true;
                        break;
                    }
                    None => {
                        self.pos = p;
                        self.stopped = true;
                        break;
                    }
                }
            } else {
                self.pos += 1;
                byte
            };
            self.buf |= (value as u64) << (56 - self.nbits);
            self.nbits += 8;
        }
    }

    fn out_of_data(&self) -> JpegError {
        if self.stopped_at_fill {
            return JpegError::new(format!(
                "corrupt JPEG data: 0xFF fill bytes inside entropy-coded data at byte {}",
                self.pos
            ));
        }
        match self.data.get(self.pos + 1) {
            Some(&m) if self.pos < self.data.len() => JpegError::new(format!(
                "corrupt JPEG data: entropy-coded data ends early (marker 0x{m:02X} at byte {})",
                self.pos
            )),
            _ => JpegError::truncated("truncated JPEG: the file ends inside entropy-coded data"),
        }
    }

    #[inline]
    fn bits(&mut self, n: u32) -> Result<i32> {
        if n == 0 {
            return Ok(0);
        }
        if self.nbits < n {
            self.fill();
            if self.nbits < n {
                return Err(self.out_of_data());
            }
        }
        let v = (self.buf >> (64 - n)) as i32;
        self.buf <<= n;
        self.nbits -= n;
        Ok(v)
    }

    #[inline]
    fn bit(&mut self) -> Result<bool> {
        Ok(self.bits(1)? != 0)
    }

    #[inline]
    fn decode(&mut self, table: &Huffman) -> Result<u8> {
        if self.nbits < 16 {
            self.fill();
        }
        let peek = (self.buf >> 48) as u32;
        let entry = table.fast[(peek >> (16 - FAST_BITS)) as usize];
        let (len, symbol) = if entry != 0 {
            ((entry >> 8) as u32, entry as u8)
        } else {
            let mut len = 1usize;
            let mut code = (peek >> 15) as i32;
            while code > table.maxcode[len] {
                len += 1;
                if len > 16 {
                    return fail("corrupt JPEG data: bad Huffman code");
                }
                code = (peek >> (16 - len)) as i32;
            }
            match table.values.get((code + table.valoffset[len]) as usize) {
                Some(&s) => (len as u32, s),
                None => return fail("corrupt JPEG data: bad Huffman code"),
            }
        };
        if len > self.nbits {
            return Err(self.out_of_data());
        }
        self.buf <<= len;
        self.nbits -= len;
        Ok(symbol)
    }

    /// Discards the buffered bits and reads the expected RSTn marker.
    fn restart(&mut self, expected: u8) -> Result<()> {
        self.buf = 0;
        self.nbits = 0;
        let mut pos = self.pos;
        let marker = next_marker(self.data, &mut pos)?;
        if marker != 0xD0 + expected {
            return fail(format!(
                "corrupt JPEG data: expected restart marker RST{expected}, found marker 0x{marker:02X}"
            ));
        }
        self.pos = pos;
        self.stopped = false;
        Ok(())
    }
}

/// `HUFF_EXTEND`: the signed value of an s-bit magnitude category.
#[inline]
fn extend(r: i32, s: u32) -> i32 {
    if s == 0 {
        0
    } else if r < 1 << (s - 1) {
        r + (-1i32 << s) + 1
    } else {
        r
    }
}

// ------------------------------------------------------------------------------------------------
// Markers (jdmarker.c)
// ------------------------------------------------------------------------------------------------

/// `next_marker`: skips anything up to 0xFF, fill bytes, and stuffed 0xFF00 pairs.
fn next_marker(data: &[u8], pos: &mut usize) -> Result<u8> {
    let mut byte = || -> Result<u8> {
        let b = *data
            .get(*pos)
            .ok_or_else(|| JpegError::truncated("truncated JPEG: the file ends before its EOI marker"))?;
        *pos += 1;
        Ok(b)
    };
    loop {
        let mut c = byte()?;
        while c != 0xFF {
            c = byte()?;
        }
        while c == 0xFF {
            c = byte()?;
        }
        if c != 0 {
            return Ok(c);
        }
    }
}

/// The payload of a marker segment at `pos` (which points at its length field).
fn segment<'a>(data: &'a [u8], pos: &mut usize, name: &str) -> Result<&'a [u8]> {
    let len = match data.get(*pos..*pos + 2) {
        Some(b) => u16::from_be_bytes([b[0], b[1]]) as usize,
        None => return Err(JpegError::truncated(format!("truncated JPEG: {name} marker"))),
    };
    // A length below 2 (which counts itself) is an error for the tables, as in libjpeg; the
    // segments libjpeg skips it treats as empty.
    if len < 2 && matches!(name, "DQT" | "DHT" | "DAC") {
        return fail(format!("corrupt JPEG data: bad {name} length"));
    }
    let end = *pos + len.max(2);
    let payload =
        data.get(*pos + 2..end).ok_or_else(|| JpegError::truncated(format!("truncated JPEG: {name} segment")))?;
    *pos = end;
    Ok(payload)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ColorTransform {
    Gray,
    YCbCr,
    Rgb,
    Cmyk,
    Ycck,
}

#[derive(Clone)]
struct Component {
    id: u8,
    h: usize,
    v: usize,
    quant_index: usize,
    /// The quantisation table as libjpeg latches it when the component is first scanned,
    /// in natural order, stored as 16-bit multipliers (libjpeg-turbo's `ISLOW_MULT_TYPE`
    /// with SIMD, which is how Pillow's wheels are built).
    quant: Option<[i16; 64]>,
    /// The same table as stored (block smoothing uses the unwrapped values).
    quant_raw: [u16; 64],
    /// Progressive files: `coef_bits` of jdphuff.c, the successive-approximation bit position
    /// of each coefficient's last scan, -1 before any.
    coef_bits: [i32; 64],
    width_in_blocks: usize,
    height_in_blocks: usize,
    /// Blocks per row/column rounded up to whole MCUs (the coefficient buffer's size).
    padded_w: usize,
    padded_h: usize,
    /// Samples per row/column of the component (`downsampled_width`/`height`).
    sample_w: usize,
    sample_h: usize,
}

#[derive(Clone, Copy)]
struct ScanComponent {
    index: usize,
    dc_table: usize,
    ac_table: usize,
}

struct Scan {
    comps: Vec<ScanComponent>,
    ss: u8,
    se: u8,
    ah: u8,
    al: u8,
}

/// A JPEG whose headers have been read up to the first scan.
pub struct Decoder<'a> {
    data: &'a [u8],
    /// Just after the first SOS header.
    pos: usize,
    progressive: bool,
    width: usize,
    height: usize,
    comps: Vec<Component>,
    hmax: usize,
    vmax: usize,
    mcus_x: usize,
    mcus_y: usize,
    transform: ColorTransform,
    quant_tables: [Option<[u16; 64]>; 4],
    dc_specs: [Option<HuffSpec>; 4],
    ac_specs: [Option<HuffSpec>; 4],
    restart_interval: usize,
    first_scan: Scan,
}

impl<'a> Decoder<'a> {
    /// Reads the markers up to the first SOS; no image-sized allocation happens here.
    pub fn new(data: &'a [u8]) -> Result<Self> {
        // Pillow only recognises a JPEG by these three bytes (libjpeg needs two).
        if !data.starts_with(&[0xFF, 0xD8, 0xFF]) {
            return fail("not a JPEG file (no SOI marker)");
        }
        let mut pos = 2usize;
        let mut frame: Option<(bool, usize, usize, Vec<Component>)> = None;
        let mut quant_tables: [Option<[u16; 64]>; 4] = [None; 4];
        let mut dc_specs: [Option<HuffSpec>; 4] = Default::default();
        let mut ac_specs: [Option<HuffSpec>; 4] = Default::default();
        let mut restart_interval = 0usize;
        let mut jfif = false;
        let mut adobe: Option<u8> = None;
        loop {
            let marker = next_marker(data, &mut pos)?;
            match marker {
                0xD8 => return fail("corrupt JPEG data: second SOI marker"),
                0xC0..=0xC2 => {
                    if frame.is_some() {
                        return fail("corrupt JPEG data: more than one SOF marker");
                    }
                    frame = Some(read_sof(segment(data, &mut pos, "SOF")?, marker == 0xC2)?);
                }
                0xC3 => return fail("lossless JPEG (SOF3) is not supported"),
                0xC9..=0xCB => return fail("arithmetic-coded JPEG is not supported"),
                0xC5 | 0xC6 | 0xC7 | 0xCD | 0xCE | 0xCF => {
                    return fail("hierarchical (differential) JPEG is not supported")
                }
                0xC8 => return fail(format!("unsupported JPEG marker 0x{marker:02X}")),
                0xDA => {
                    let Some((progressive, width, height, comps)) = frame.take() else {
                        return fail("corrupt JPEG data: SOS before SOF");
                    };
                    let scan = read_sos(segment(data, &mut pos, "SOS")?, &comps)?;
                    let transform = color_transform(&comps, jfif, adobe);
                    let mut dec = Decoder {
                        data,
                        pos,
                        progressive,
                        width,
                        height,
                        comps,
                        hmax: 1,
                        vmax: 1,
                        mcus_x: 0,
                        mcus_y: 0,
                        transform,
                        quant_tables,
                        dc_specs,
                        ac_specs,
                        restart_interval,
                        first_scan: scan,
                    };
                    dec.setup()?;
                    return Ok(dec);
                }
                0xD9 => return fail("corrupt JPEG data: EOI before any scan"),
                // Pillow's header parser knows no marker below SOF0.
                0x01..=0xBF => return fail(format!("not a JPEG Pillow reads (marker 0x{marker:02X} in the header)")),
                _ => {
                    read_table_or_skip(
                        data,
                        &mut pos,
                        marker,
                        &mut quant_tables,
                        &mut dc_specs,
                        &mut ac_specs,
                        &mut restart_interval,
                        Some((&mut jfif, &mut adobe)),
                    )?;
                }
            }
        }
    }

    pub fn width(&self) -> u32 {
        self.width as u32
    }

    pub fn height(&self) -> u32 {
        self.height as u32
    }

    pub fn format(&self) -> PixelFormat {
        match self.comps.len() {
            1 => PixelFormat::Gray,
            3 => PixelFormat::Rgb,
            _ => PixelFormat::Cmyk,
        }
    }

    /// `initial_setup` (jdinput.c) and the upsampler's method checks (jdsample.c).
    fn setup(&mut self) -> Result<()> {
        self.hmax = self.comps.iter().map(|c| c.h).max().unwrap_or(1);
        self.vmax = self.comps.iter().map(|c| c.v).max().unwrap_or(1);
        let (hmax, vmax) = (self.hmax, self.vmax);
        self.mcus_x = self.width.div_ceil(hmax * 8);
        self.mcus_y = self.height.div_ceil(vmax * 8);
        for c in &mut self.comps {
            c.width_in_blocks = (self.width * c.h).div_ceil(hmax * 8);
            c.height_in_blocks = (self.height * c.v).div_ceil(vmax * 8);
            c.padded_w = self.mcus_x * c.h;
            c.padded_h = self.mcus_y * c.v;
            c.sample_w = (self.width * c.h).div_ceil(hmax);
            c.sample_h = (self.height * c.v).div_ceil(vmax);
            if hmax % c.h != 0 || vmax % c.v != 0 {
                return fail("JPEG sampling factors with a fractional ratio are not supported");
            }
        }
        Ok(())
    }

    /// Decodes every scan and returns Pillow's view of the image. Memory grows with the data
    /// actually decoded, up to a few bytes per pixel of the size in the header: check
    /// [`width`](Self::width) and [`height`](Self::height) against a limit first.
    pub fn decode(mut self) -> Result<Image> {
        let ncomp = self.comps.len();
        // Progressive or split into several scans: libjpeg buffers all coefficients and
        // outputs after EOI. Otherwise it decodes and outputs one MCU row at a time and a
        // second scan is an error.
        let multi_scan = self.progressive || self.first_scan.comps.len() < ncomp;
        if !self.progressive {
            // jinit_huff_decoder: default tables for slots 0 and 1 left empty by the headers.
            let [(dc0, ac0), (dc1, ac1)] = standard_tables();
            for (slot, spec) in [(0, dc0), (1, dc1)] {
                self.dc_specs[slot].get_or_insert(spec);
            }
            for (slot, spec) in [(0, ac0), (1, ac1)] {
                self.ac_specs[slot].get_or_insert(spec);
            }
        }
        // Coefficients and samples are allocated as the data reaches them, so a short corrupt
        // file cannot make the decoder allocate for the whole image it claims.
        let mut planes: Vec<Vec<u8>> = vec![Vec::new(); ncomp];
        let mut coefs: Vec<Coefs> = Vec::with_capacity(ncomp);
        for c in &self.comps {
            checked_len(&[c.padded_w, c.padded_h, 64])?;
            coefs.push(Coefs { blocks_w: c.padded_w, first_row: 0, data: Vec::new() });
        }

        let mut scan = std::mem::replace(&mut self.first_scan, Scan { comps: Vec::new(), ss: 0, se: 0, ah: 0, al: 0 });
        let mut scans = 0usize;
        loop {
            scans += 1;
            if scans > MAX_SCANS {
                return fail(format!("JPEG with more than {MAX_SCANS} scans refused"));
            }
            self.decode_scan(&scan, &mut coefs, if multi_scan { None } else { Some(&mut planes) })?;
            // Markers up to the next scan or EOI. A single-scan image is complete at this point:
            // libjpeg then only looks for EOI, and Pillow keeps the image when the file ends
            // before it.
            let next = loop {
                let marker = match next_marker(self.data, &mut self.pos) {
                    Err(e) if e.is_truncated() && !multi_scan => break None,
                    other => other?,
                };
                match marker {
                    0xD9 => break None,
                    0xDA => {
                        let payload = match segment(self.data, &mut self.pos, "SOS") {
                            Err(e) if e.is_truncated() && !multi_scan => break None,
                            other => other?,
                        };
                        if !multi_scan {
                            return fail("corrupt JPEG data: a second scan in a single-scan JPEG");
                        }
                        break Some(read_sos(payload, &self.comps)?);
                    }
                    0xD8 => return fail("corrupt JPEG data: second SOI marker"),
                    0xC0..=0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => {
                        return fail("corrupt JPEG data: more than one SOF marker")
                    }
                    0xC8 => return fail(format!("unsupported JPEG marker 0x{marker:02X}")),
                    _ => match read_table_or_skip(
                        self.data,
                        &mut self.pos,
                        marker,
                        &mut self.quant_tables,
                        &mut self.dc_specs,
                        &mut self.ac_specs,
                        &mut self.restart_interval,
                        None,
                    ) {
                        Err(e) if e.is_truncated() && !multi_scan => break None,
                        other => other?,
                    },
                }
            };
            match next {
                Some(s) => scan = s,
                None => break,
            }
        }
        if multi_scan {
            let smoothing = self.smoothing_ok();
            for (ci, c) in self.comps.iter().enumerate() {
                planes[ci] = vec![0u8; c.width_in_blocks * c.height_in_blocks * 64];
                if smoothing {
                    self.idct_smoothed(c, &coefs[ci], &mut planes[ci]);
                    continue;
                }
                let quant = c.quant.unwrap_or([0; 64]);
                for by in 0..c.height_in_blocks {
                    for bx in 0..c.width_in_blocks {
                        let block = coefs[ci].block(by, bx);
                        idct_block(block, &quant, &mut planes[ci], c.width_in_blocks * 8, by, bx);
                    }
                }
            }
        }
        drop(coefs);
        self.output(&mut planes)
    }

    /// `smoothing_ok` (jdcoefct.c): libjpeg smooths the blocks of a progressive image whose
    /// first nine AC coefficients are not all fully known, if every component has its DC and
    /// usable quantisation tables.
    fn smoothing_ok(&self) -> bool {
        if !self.progressive {
            return false;
        }
        let mut useful = false;
        for c in &self.comps {
            let q = &c.quant_raw;
            if c.quant.is_none() || SMOOTHING_QUANT_POS.iter().any(|&i| q[i] == 0) || c.coef_bits[0] < 0 {
                return false;
            }
            useful |= c.coef_bits[1..10].iter().any(|&b| b != 0);
        }
        useful
    }

    /// `decompress_smooth_data` (jdcoefct.c): each block's missing low-frequency AC
    /// coefficients (and, with no AC data at all, its DC) are estimated from the DC values of the
    /// 5x5 neighbouring blocks before the IDCT. The neighbour rows are chosen exactly as
    /// libjpeg-turbo 3 does, including its row arithmetic in the last iMCU row.
    fn idct_smoothed(&self, c: &Component, coefs: &Coefs, plane: &mut [u8]) {
        let quant = c.quant.unwrap_or([0; 64]);
        let q = |i: usize| c.quant_raw[i] as i64;
        let bits = &c.coef_bits;
        let change_dc = bits[1..10].iter().all(|&b| b == -1);
        let total_rows = self.mcus_y;
        let last_col = c.width_in_blocks.saturating_sub(1);
        let stride = c.width_in_blocks * 8;
        for imcu_row in 0..total_rows {
            let block_rows = match c.height_in_blocks % c.v {
                rem if imcu_row + 1 == total_rows && rem != 0 => rem,
                _ => c.v,
            };
            let image_block_rows = block_rows * total_rows;
            for block_row in 0..block_rows {
                let image_block_row = imcu_row * block_rows + block_row;
                let r = imcu_row * c.v + block_row;
                let prev = if image_block_row > 0 { r - 1 } else { r };
                let prev_prev = if image_block_row > 1 { r - 2 } else { prev };
                let next = if image_block_row + 1 < image_block_rows { r + 1 } else { r };
                let next_next = if image_block_row + 2 < image_block_rows { r + 2 } else { next };
                let rows = [prev_prev, prev, r, next, next_next];
                for bx in 0..c.width_in_blocks {
                    // dc[i][j]: DC of the block i-2 rows down and j-2 columns right (libjpeg's
                    // DC01..DC25 row by row), columns clamped to the image.
                    let mut dc = [[0i64; 5]; 5];
                    for (i, &row) in rows.iter().enumerate() {
                        for (j, d) in dc[i].iter_mut().enumerate() {
                            let col = (bx + j).saturating_sub(2).min(last_col);
                            *d = coefs.block(row, col)[0] as i64;
                        }
                    }
                    let weigh = |kernel: &Kernel| -> i64 {
                        let mut sum = 0i64;
                        for (drow, krow) in dc.iter().zip(kernel) {
                            for (&d, &k) in drow.iter().zip(krow) {
                                sum += d * k as i64;
                            }
                        }
                        q(0) * sum
                    };
                    let mut ws = *coefs.block(r, bx);
                    for (k, (with_dc, without_dc)) in SMOOTH_AC_KERNELS.iter().enumerate() {
                        let zz = k + 1;
                        let kernel = if change_dc { Some(with_dc) } else { without_dc.as_ref() };
                        let pos = NATURAL_ORDER[zz];
                        // Only coefficients still zero and not known to full precision.
                        if let Some(kernel) = kernel {
                            if bits[zz] != 0 && ws[pos] == 0 {
                                ws[pos] = smoothed(weigh(kernel), q(pos), bits[zz]);
                            }
                        }
                    }
                    if change_dc {
                        // The DC estimate is not limited by a bit position.
                        ws[0] = smoothed(weigh(&SMOOTH_DC_KERNEL), q(0), 0);
                    }
                    idct_block(&ws, &quant, plane, stride, r, bx);
                }
            }
        }
    }

    /// Latches quantisation tables, derives Huffman tables, then decodes the scan's MCUs.
    /// With `planes`, each MCU row is inverse-transformed as soon as it is complete.
    fn decode_scan(&mut self, scan: &Scan, coefs: &mut [Coefs], mut planes: Option<&mut Vec<Vec<u8>>>) -> Result<()> {
        for sc in &scan.comps {
            let c = &mut self.comps[sc.index];
            if c.quant.is_none() {
                let Some(table) = self.quant_tables.get(c.quant_index).copied().flatten() else {
                    return fail(format!("corrupt JPEG data: quantization table {} is not defined", c.quant_index));
                };
                // Stored as 16-bit multipliers: values above 32767 wrap, as in libjpeg-turbo.
                c.quant = Some(table.map(|q| q as i16));
                c.quant_raw = table;
            }
        }
        let interleaved = scan.comps.len() > 1;
        if interleaved {
            let blocks: usize = scan.comps.iter().map(|sc| self.comps[sc.index].h * self.comps[sc.index].v).sum();
            if blocks > MAX_BLOCKS_IN_MCU {
                return fail("corrupt JPEG data: too many blocks in an MCU");
            }
        }
        let kind = if !self.progressive {
            ScanKind::Sequential
        } else {
            // start_pass_phuff_decoder's checks.
            let dc = scan.ss == 0;
            let bad = if dc { scan.se != 0 } else { scan.ss > scan.se || scan.se > 63 || interleaved }
                || (scan.ah != 0 && scan.al != scan.ah - 1)
                || scan.al > 13;
            if bad {
                return fail(format!(
                    "corrupt JPEG data: invalid progressive scan (Ss={} Se={} Ah={} Al={})",
                    scan.ss, scan.se, scan.ah, scan.al
                ));
            }
            for sc in &scan.comps {
                let bits = &mut self.comps[sc.index].coef_bits;
                bits[scan.ss as usize..=scan.se as usize].fill(scan.al as i32);
            }
            match (dc, scan.ah == 0) {
                (true, true) => ScanKind::DcFirst,
                (true, false) => ScanKind::DcRefine,
                (false, true) => ScanKind::AcFirst,
                (false, false) => ScanKind::AcRefine,
            }
        };
        let table = |specs: &[Option<HuffSpec>; 4], index: usize, is_dc: bool| -> Result<Huffman> {
            match specs.get(index) {
                Some(Some(spec)) => Huffman::new(spec, is_dc),
                _ => fail(format!("corrupt JPEG data: Huffman table {index} is not defined")),
            }
        };
        let mut dc_tables: Vec<Option<Huffman>> = Vec::new();
        let mut ac_tables: Vec<Option<Huffman>> = Vec::new();
        for sc in &scan.comps {
            let need_dc = matches!(kind, ScanKind::Sequential | ScanKind::DcFirst);
            let need_ac = matches!(kind, ScanKind::Sequential | ScanKind::AcFirst | ScanKind::AcRefine);
            dc_tables.push(if need_dc { Some(table(&self.dc_specs, sc.dc_table, true)?) } else { None });
            ac_tables.push(if need_ac { Some(table(&self.ac_specs, sc.ac_table, false)?) } else { None });
        }

        let mut reader = BitReader::new(self.data, self.pos);
        let mut preds = [0i32; 4];
        let mut eobrun: u32 = 0;
        let restart_interval = self.restart_interval;
        let mut restarts_to_go = restart_interval;
        let mut next_restart = 0u8;
        let (units_x, units_y) = if interleaved {
            (self.mcus_x, self.mcus_y)
        } else {
            let c = &self.comps[scan.comps[0].index];
            (c.width_in_blocks, c.height_in_blocks)
        };
        let (ss, se, al) = (scan.ss as usize, scan.se as usize, scan.al as u32);
        for uy in 0..units_y {
            for ux in 0..units_x {
                if restart_interval > 0 {
                    if restarts_to_go == 0 {
                        reader.restart(next_restart)?;
                        next_restart = (next_restart + 1) & 7;
                        preds = [0; 4];
                        eobrun = 0;
                        restarts_to_go = restart_interval;
                    }
                    restarts_to_go -= 1;
                }
                for (k, sc) in scan.comps.iter().enumerate() {
                    let c = &self.comps[sc.index];
                    let (bh, bv) = if interleaved { (c.h, c.v) } else { (1, 1) };
                    for y in 0..bv {
                        for x in 0..bh {
                            let (by, bx) = (uy * bv + y, ux * bh + x);
                            // Blocks inside an end-of-band run need no data; unwritten blocks
                            // are zero, so refining them reads nothing either.
                            let skip = eobrun > 0
                                && (kind == ScanKind::AcFirst
                                    || (kind == ScanKind::AcRefine && !coefs[sc.index].has_row(by)));
                            if skip {
                                eobrun -= 1;
                                continue;
                            }
                            let block = coefs[sc.index].block_mut(by, bx);
                            match kind {
                                ScanKind::Sequential => decode_block_sequential(
                                    &mut reader,
                                    dc_tables[k].as_ref(),
                                    ac_tables[k].as_ref(),
                                    &mut preds[k],
                                    block,
                                )?,
                                ScanKind::DcFirst => {
                                    decode_dc_first(&mut reader, dc_tables[k].as_ref(), &mut preds[k], block, al)?
                                }
                                ScanKind::DcRefine => {
                                    if reader.bit()? {
                                        block[0] |= (1i32 << al) as i16;
                                    }
                                }
                                ScanKind::AcFirst => {
                                    decode_ac_first(&mut reader, ac_tables[k].as_ref(), &mut eobrun, block, ss, se, al)?
                                }
                                ScanKind::AcRefine => decode_ac_refine(
                                    &mut reader,
                                    ac_tables[k].as_ref(),
                                    &mut eobrun,
                                    block,
                                    ss,
                                    se,
                                    al,
                                )?,
                            }
                        }
                    }
                }
            }
            if let Some(planes) = planes.as_deref_mut() {
                // Single-scan file: this MCU row is final.
                for sc in &scan.comps {
                    let c = &self.comps[sc.index];
                    let quant = c.quant.unwrap_or([0; 64]);
                    let rows = if interleaved { c.v } else { 1 };
                    let store = &mut coefs[sc.index];
                    let stride = c.width_in_blocks * 8;
                    let plane = &mut planes[sc.index];
                    let end = ((uy + 1) * rows).min(c.height_in_blocks);
                    if plane.len() < end * 8 * stride {
                        plane.resize(end * 8 * stride, 0);
                    }
                    for by in uy * rows..end {
                        for bx in 0..c.width_in_blocks {
                            idct_block(store.block(by, bx), &quant, plane, stride, by, bx);
                        }
                    }
                    store.data.clear();
                    store.first_row = (uy + 1) * rows;
                }
            }
        }
        self.pos = reader.pos;
        Ok(())
    }

    /// Upsampling (jdsample.c) and colour conversion (jdcolor.c), one output row at a time.
    fn output(&self, planes: &mut [Vec<u8>]) -> Result<Image> {
        for (plane, c) in planes.iter_mut().zip(&self.comps) {
            // Every block row has been transformed by now; this only guards the indexing below.
            plane.resize(c.width_in_blocks * c.height_in_blocks * 64, 0);
        }
        let (w, h) = (self.width, self.height);
        let format = self.format();
        let bands = format.bands();
        let mut data = vec![0u8; checked_len(&[w, h, bands])?];
        let methods: Vec<Upsample> = self.comps.iter().map(|c| self.upsample_method(c)).collect();
        let row_len = w.max(1) + 2 * self.hmax * 8 + self.comps.iter().map(|c| 2 * c.sample_w).max().unwrap_or(0);
        let mut rows: Vec<Vec<u8>> = self.comps.iter().map(|_| vec![0u8; row_len]).collect();
        let mut colsum = vec![0i32; row_len];
        let tables = YccTables::new();
        for y in 0..h {
            for (ci, c) in self.comps.iter().enumerate() {
                upsample_row(c, methods[ci], &planes[ci], y, w, &mut rows[ci], &mut colsum);
            }
            let out = &mut data[y * w * bands..(y + 1) * w * bands];
            match self.transform {
                ColorTransform::Gray => out.copy_from_slice(&rows[0][..w]),
                ColorTransform::Rgb => {
                    for (x, px) in out.chunks_exact_mut(3).enumerate() {
                        px.copy_from_slice(&[rows[0][x], rows[1][x], rows[2][x]]);
                    }
                }
                ColorTransform::YCbCr => {
                    for (x, px) in out.chunks_exact_mut(3).enumerate() {
                        let [r, g, b] = tables.rgb(rows[0][x], rows[1][x], rows[2][x]);
                        px.copy_from_slice(&[r, g, b]);
                    }
                }
                ColorTransform::Cmyk => {
                    for (x, px) in out.chunks_exact_mut(4).enumerate() {
                        // Pillow's "CMYK;I": Adobe files store inverted samples.
                        px.copy_from_slice(&[255 - rows[0][x], 255 - rows[1][x], 255 - rows[2][x], 255 - rows[3][x]]);
                    }
                }
                ColorTransform::Ycck => {
                    for (x, px) in out.chunks_exact_mut(4).enumerate() {
                        // ycck_cmyk_convert gives 255 - RGB; Pillow then inverts everything.
                        let [r, g, b] = tables.rgb(rows[0][x], rows[1][x], rows[2][x]);
                        px.copy_from_slice(&[r, g, b, 255 - rows[3][x]]);
                    }
                }
            }
        }
        Ok(Image { width: w as u32, height: h as u32, format, data })
    }

    /// `jinit_upsampler`'s choice for one component (fancy upsampling on, no IDCT scaling).
    fn upsample_method(&self, c: &Component) -> Upsample {
        let (hx, vx) = (self.hmax / c.h, self.vmax / c.v);
        match (hx, vx) {
            (1, 1) => Upsample::Full,
            (2, 1) if c.sample_w > 2 => Upsample::H2V1Fancy,
            (1, 2) => Upsample::H1V2Fancy,
            (2, 2) if c.sample_w > 2 => Upsample::H2V2Fancy,
            _ => Upsample::Replicate { hx, vx },
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ScanKind {
    Sequential,
    DcFirst,
    DcRefine,
    AcFirst,
    AcRefine,
}

fn checked_len(factors: &[usize]) -> Result<usize> {
    factors
        .iter()
        .try_fold(1usize, |acc, &f| acc.checked_mul(f))
        .filter(|&n| n <= isize::MAX as usize / 2)
        .ok_or_else(|| JpegError::new("JPEG image too large to allocate"))
}

fn read_sof(p: &[u8], progressive: bool) -> Result<(bool, usize, usize, Vec<Component>)> {
    if p.len() < 6 {
        return fail("corrupt JPEG data: short SOF segment");
    }
    let precision = p[0];
    let height = u16::from_be_bytes([p[1], p[2]]) as usize;
    let width = u16::from_be_bytes([p[3], p[4]]) as usize;
    let n = p[5] as usize;
    if precision != 8 {
        return fail(format!("{precision}-bit JPEG is not supported (only 8-bit samples)"));
    }
    if width == 0 || height == 0 || n == 0 {
        return fail("corrupt JPEG data: empty image (zero width, height or components)");
    }
    // libjpeg checks this at the first SOS; refusing here already gives the clearer message.
    if width as u32 > MAX_DIMENSION || height as u32 > MAX_DIMENSION {
        return fail(format!("JPEG image too big ({width}x{height}; the maximum is {MAX_DIMENSION})"));
    }
    if p.len() != 6 + 3 * n {
        return fail("corrupt JPEG data: bad SOF length");
    }
    if !matches!(n, 1 | 3 | 4) {
        // Pillow's JpegImagePlugin knows no mode for them.
        return fail(format!("JPEG with {n} components is not supported"));
    }
    let mut comps = Vec::with_capacity(n);
    for i in 0..n {
        let (id, hv, tq) = (p[6 + 3 * i], p[7 + 3 * i], p[8 + 3 * i]);
        let (h, v) = ((hv >> 4) as usize, (hv & 15) as usize);
        if !(1..=4).contains(&h) || !(1..=4).contains(&v) {
            return fail("corrupt JPEG data: bad sampling factors");
        }
        comps.push(Component {
            id,
            h,
            v,
            quant_index: tq as usize,
            quant: None,
            quant_raw: [0; 64],
            coef_bits: [-1; 64],
            width_in_blocks: 0,
            height_in_blocks: 0,
            padded_w: 0,
            padded_h: 0,
            sample_w: 0,
            sample_h: 0,
        });
    }
    Ok((progressive, width, height, comps))
}

fn read_sos(p: &[u8], comps: &[Component]) -> Result<Scan> {
    let n = *p.first().unwrap_or(&0) as usize;
    if !(1..=4).contains(&n) || p.len() != 4 + 2 * n {
        return fail("corrupt JPEG data: bad SOS segment");
    }
    let mut scan_comps: Vec<ScanComponent> = Vec::with_capacity(n);
    for i in 0..n {
        let (id, tables) = (p[1 + 2 * i], p[2 + 2 * i]);
        // libjpeg-turbo matches scan slot i only against frame components i.. (of the first
        // four), so components must be listed in frame order.
        let Some(index) = (i..comps.len().min(4)).find(|&ci| comps[ci].id == id) else {
            return fail(format!("corrupt JPEG data: scan refers to unknown component id {id}"));
        };
        if scan_comps.iter().any(|sc| sc.index == index) {
            return fail(format!("corrupt JPEG data: component id {id} twice in a scan"));
        }
        scan_comps.push(ScanComponent { index, dc_table: (tables >> 4) as usize, ac_table: (tables & 15) as usize });
    }
    let (ss, se, ahal) = (p[1 + 2 * n], p[2 + 2 * n], p[3 + 2 * n]);
    Ok(Scan { comps: scan_comps, ss, se, ah: ahal >> 4, al: ahal & 15 })
}

/// DQT, DHT, DRI, APPn, COM and the other markers libjpeg accepts between frames and scans.
/// `app` collects the JFIF flag and Adobe transform (only headers before the first scan count).
#[allow(clippy::too_many_arguments)]
fn read_table_or_skip(
    data: &[u8],
    pos: &mut usize,
    marker: u8,
    quant_tables: &mut [Option<[u16; 64]>; 4],
    dc_specs: &mut [Option<HuffSpec>; 4],
    ac_specs: &mut [Option<HuffSpec>; 4],
    restart_interval: &mut usize,
    app: Option<(&mut bool, &mut Option<u8>)>,
) -> Result<()> {
    match marker {
        0xDB => {
            let mut p = segment(data, pos, "DQT")?;
            while !p.is_empty() {
                let (precision, index) = (p[0] >> 4, (p[0] & 15) as usize);
                if index >= 4 {
                    return fail(format!("corrupt JPEG data: quantization table index {index}"));
                }
                let size = if precision != 0 { 128 } else { 64 };
                let Some(values) = p.get(1..1 + size) else {
                    return fail("corrupt JPEG data: bad DQT length");
                };
                let mut table = [0u16; 64];
                for k in 0..64 {
                    table[NATURAL_ORDER[k]] = if precision != 0 {
                        u16::from_be_bytes([values[2 * k], values[2 * k + 1]])
                    } else {
                        values[k] as u16
                    };
                }
                quant_tables[index] = Some(table);
                p = &p[1 + size..];
            }
        }
        0xC4 => {
            let mut p = segment(data, pos, "DHT")?;
            while p.len() > 16 {
                let index = p[0] as usize;
                let mut bits = [0u8; 17];
                bits[1..].copy_from_slice(&p[1..17]);
                let count: usize = bits.iter().map(|&b| b as usize).sum();
                p = &p[17..];
                if count > 256 || count > p.len() {
                    return fail("corrupt JPEG data: bad Huffman table");
                }
                let mut values = [0u8; 256];
                values[..count].copy_from_slice(&p[..count]);
                p = &p[count..];
                let (slots, index) =
                    if index & 0x10 != 0 { (&mut *ac_specs, index - 0x10) } else { (&mut *dc_specs, index) };
                if index >= 4 {
                    return fail(format!("corrupt JPEG data: Huffman table index {index}"));
                }
                slots[index] = Some(HuffSpec { bits, values });
            }
            if !p.is_empty() {
                return fail("corrupt JPEG data: bad DHT length");
            }
        }
        0xDD => {
            let p = segment(data, pos, "DRI")?;
            if p.len() != 2 {
                return fail("corrupt JPEG data: bad DRI length");
            }
            *restart_interval = u16::from_be_bytes([p[0], p[1]]) as usize;
        }
        0xE0..=0xEF | 0xFE => {
            let p = segment(data, pos, "APP")?;
            if let Some((jfif, adobe)) = app {
                // Pillow reads a version word from these and fails on shorter segments.
                let short = p.len() < 7
                    && ((marker == 0xE0 && p.starts_with(b"JFIF")) || (marker == 0xEE && p.starts_with(b"Adobe")));
                if short {
                    return fail("not a JPEG Pillow reads (truncated JFIF or Adobe segment)");
                }
                if marker == 0xE0 && p.len() >= 14 && p.starts_with(b"JFIF\0") {
                    *jfif = true;
                }
                if marker == 0xEE && p.len() >= 12 && p.starts_with(b"Adobe") {
                    *adobe = Some(p[11]);
                }
            }
        }
        0xD0..=0xD7 | 0x01 => {}
        0xDC => {
            segment(data, pos, "DNL")?;
        }
        0xCC => {
            // DAC only matters to arithmetic decoding (refused at SOF), but libjpeg validates it.
            let p = segment(data, pos, "DAC")?;
            if p.len() % 2 != 0 {
                return fail("corrupt JPEG data: bad DAC length");
            }
            for pair in p.chunks_exact(2) {
                let (index, value) = (pair[0], pair[1]);
                if index >= 32 || (index < 16 && value & 15 > value >> 4) {
                    return fail("corrupt JPEG data: bad DAC segment");
                }
            }
        }
        _ => return fail(format!("corrupt JPEG data: unknown marker 0x{marker:02X}")),
    }
    Ok(())
}

/// `default_decompress_parms` (jdapimin.c).
fn color_transform(comps: &[Component], jfif: bool, adobe: Option<u8>) -> ColorTransform {
    match comps.len() {
        1 => ColorTransform::Gray,
        3 => {
            if jfif {
                ColorTransform::YCbCr
            } else if let Some(t) = adobe {
                if t == 0 {
                    ColorTransform::Rgb
                } else {
                    ColorTransform::YCbCr
                }
            } else if (comps[0].id, comps[1].id, comps[2].id) == (82, 71, 66) {
                ColorTransform::Rgb
            } else {
                ColorTransform::YCbCr
            }
        }
        _ => match adobe {
            None | Some(0) => ColorTransform::Cmyk,
            Some(_) => ColorTransform::Ycck,
        },
    }
}

/// Weights of the 5x5 neighbourhood of DC values (rows top to bottom, columns left to right).
type Kernel = [[i16; 5]; 5];

/// jdcoefct.c's estimates of zigzag coefficients 1..=9 from the neighbouring DC values: with DC
/// interpolation (no AC data at all) and without (only the first five are estimated then).
#[rustfmt::skip]
const SMOOTH_AC_KERNELS: [(Kernel, Option<Kernel>); 9] = [
    // AC01
    ([[-1, -1, 0, 1, 1], [-3, 13, 0, -13, 3], [-3, 38, 0, -38, 3], [-3, 13, 0, -13, 3], [-1, -1, 0, 1, 1]],
     Some([[0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [-7, 50, 0, -50, 7], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]])),
    // AC10
    ([[-1, -3, -3, -3, -1], [-1, 13, 38, 13, -1], [0, 0, 0, 0, 0], [1, -13, -38, -13, 1], [1, 3, 3, 3, 1]],
     Some([[0, 0, -7, 0, 0], [0, 0, 50, 0, 0], [0, 0, 0, 0, 0], [0, 0, -50, 0, 0], [0, 0, 7, 0, 0]])),
    // AC20
    ([[0, 0, 1, 0, 0], [0, 2, 7, 2, 0], [0, -5, -14, -5, 0], [0, 2, 7, 2, 0], [0, 0, 1, 0, 0]],
     Some([[0, 0, -1, 0, 0], [0, 0, 13, 0, 0], [0, 0, -24, 0, 0], [0, 0, 13, 0, 0], [0, 0, -1, 0, 0]])),
    // AC11
    ([[-1, 0, 0, 0, 1], [0, 9, 0, -9, 0], [0, 0, 0, 0, 0], [0, -9, 0, 9, 0], [1, 0, 0, 0, -1]],
     Some([[0, -1, 0, 1, 0], [-1, 10, 0, -10, 1], [0, 0, 0, 0, 0], [1, -10, 0, 10, -1], [0, 1, 0, -1, 0]])),
    // AC02
    ([[0, 0, 0, 0, 0], [0, 2, -5, 2, 0], [1, 7, -14, 7, 1], [0, 2, -5, 2, 0], [0, 0, 0, 0, 0]],
     Some([[0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [-1, 13, -24, 13, -1], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]])),
    // AC03
    ([[0, 0, 0, 0, 0], [0, 1, 0, -1, 0], [0, 2, 0, -2, 0], [0, 1, 0, -1, 0], [0, 0, 0, 0, 0]], None),
    // AC12
    ([[0, 0, 0, 0, 0], [0, 1, -3, 1, 0], [0, 0, 0, 0, 0], [0, -1, 3, -1, 0], [0, 0, 0, 0, 0]], None),
    // AC21
    ([[0, 0, 0, 0, 0], [0, 1, 0, -1, 0], [0, -3, 0, 3, 0], [0, 1, 0, -1, 0], [0, 0, 0, 0, 0]], None),
    // AC30
    ([[0, 0, 0, 0, 0], [0, 1, 2, 1, 0], [0, 0, 0, 0, 0], [0, -1, -2, -1, 0], [0, 0, 0, 0, 0]], None),
];

#[rustfmt::skip]
const SMOOTH_DC_KERNEL: Kernel =
    [[-2, -6, -8, -6, -2], [-6, 6, 42, 6, -6], [-8, 42, 152, 42, -8], [-6, 6, 42, 6, -6], [-2, -6, -8, -6, -2]];

/// Quantisation table positions (natural order) that block smoothing divides by.
const SMOOTHING_QUANT_POS: [usize; 10] = [0, 1, 8, 16, 9, 2, 3, 10, 17, 24];

/// One smoothed coefficient: `num / (q * 256)` rounded, its magnitude limited below
/// `1 << bit` when the coefficient is known to that bit position.
fn smoothed(num: i64, q: i64, bit: i32) -> i16 {
    let limit = |p: i64| if bit > 0 && p >= 1 << bit { (1 << bit) - 1 } else { p };
    let pred = if num >= 0 {
        limit((((q << 7) + num) / (q << 8)) as i32 as i64)
    } else {
        -limit((((q << 7) - num) / (q << 8)) as i32 as i64)
    };
    pred as i32 as i16
}

// ------------------------------------------------------------------------------------------------
// Coefficients and block decoding (jdhuff.c decode_mcu_slow, jdphuff.c)
// ------------------------------------------------------------------------------------------------

/// One component's coefficient blocks: the whole image, or one MCU row of a single-scan file.
struct Coefs {
    blocks_w: usize,
    first_row: usize,
    data: Vec<[i16; 64]>,
}

impl Coefs {
    /// Block (by, bx) for writing; its row (and any above it) is allocated, zeroed, on demand.
    fn block_mut(&mut self, by: usize, bx: usize) -> &mut [i16; 64] {
        let row = by - self.first_row;
        if (row + 1) * self.blocks_w > self.data.len() {
            self.data.resize((row + 1) * self.blocks_w, [0; 64]);
        }
        &mut self.data[row * self.blocks_w + bx]
    }

    /// Block (by, bx); all zero if nothing was written to its row.
    fn block(&self, by: usize, bx: usize) -> &[i16; 64] {
        const ZERO: [i16; 64] = [0; 64];
        self.data.get((by - self.first_row) * self.blocks_w + bx).unwrap_or(&ZERO)
    }

    fn has_row(&self, by: usize) -> bool {
        (by - self.first_row + 1) * self.blocks_w <= self.data.len()
    }
}

fn need(table: Option<&Huffman>) -> Result<&Huffman> {
    table.ok_or_else(|| JpegError::new("internal: Huffman table not prepared"))
}

fn decode_block_sequential(
    r: &mut BitReader,
    dc: Option<&Huffman>,
    ac: Option<&Huffman>,
    pred: &mut i32,
    block: &mut [i16; 64],
) -> Result<()> {
    let (dc, ac) = (need(dc)?, need(ac)?);
    let s = r.decode(dc)? as u32;
    let diff = extend(r.bits(s)?, s);
    // last_dc_val is an int that libjpeg lets wrap; the coefficient is its low 16 bits.
    *pred = pred.wrapping_add(diff);
    block[0] = *pred as i16;
    let mut k = 1usize;
    while k < 64 {
        let rs = r.decode(ac)?;
        let (run, s) = ((rs >> 4) as usize, (rs & 15) as u32);
        if s != 0 {
            k += run;
            block[NATURAL_ORDER[k]] = extend(r.bits(s)?, s) as i16;
        } else if run == 15 {
            k += 15;
        } else {
            break;
        }
        k += 1;
    }
    Ok(())
}

fn decode_dc_first(
    r: &mut BitReader,
    dc: Option<&Huffman>,
    pred: &mut i32,
    block: &mut [i16; 64],
    al: u32,
) -> Result<()> {
    let s = r.decode(need(dc)?)? as u32;
    let diff = extend(r.bits(s)?, s);
    *pred = pred.checked_add(diff).ok_or_else(|| JpegError::new("corrupt JPEG data: DC coefficient out of range"))?;
    block[0] = ((*pred as u32) << al) as i16;
    Ok(())
}

fn decode_ac_first(
    r: &mut BitReader,
    ac: Option<&Huffman>,
    eobrun: &mut u32,
    block: &mut [i16; 64],
    ss: usize,
    se: usize,
    al: u32,
) -> Result<()> {
    if *eobrun > 0 {
        *eobrun -= 1;
        return Ok(());
    }
    let ac = need(ac)?;
    let mut k = ss;
    while k <= se {
        let rs = r.decode(ac)?;
        let (run, s) = ((rs >> 4) as u32, (rs & 15) as u32);
        if s != 0 {
            k += run as usize;
            let v = extend(r.bits(s)?, s);
            block[NATURAL_ORDER[k]] = ((v as u32) << al) as i16;
        } else if run == 15 {
            k += 15;
        } else {
            let mut n = 1u32 << run;
            if run != 0 {
                n += r.bits(run)? as u32;
            }
            *eobrun = n - 1;
            break;
        }
        k += 1;
    }
    Ok(())
}

fn decode_ac_refine(
    r: &mut BitReader,
    ac: Option<&Huffman>,
    eobrun: &mut u32,
    block: &mut [i16; 64],
    ss: usize,
    se: usize,
    al: u32,
) -> Result<()> {
    let p1 = 1i32 << al;
    let m1 = -1i32 << al;
    let ac = need(ac)?;
    // Sharpens an already non-zero coefficient by one bit.
    let refine = |r: &mut BitReader, c: &mut i16| -> Result<()> {
        if r.bit()? && (*c as i32 & p1) == 0 {
            *c = if *c >= 0 { (*c as i32 + p1) as i16 } else { (*c as i32 + m1) as i16 };
        }
        Ok(())
    };
    let mut k = ss;
    if *eobrun == 0 {
        while k <= se {
            let rs = r.decode(ac)?;
            let mut run = (rs >> 4) as i32;
            let s = (rs & 15) as u32;
            let mut value = 0i32;
            if s != 0 {
                // libjpeg warns when s != 1 and goes on the same way.
                value = if r.bit()? { p1 } else { m1 };
            } else if run != 15 {
                let mut n = 1u32 << run;
                if run != 0 {
                    n += r.bits(run as u32)? as u32;
                }
                *eobrun = n;
                break;
            }
            // Skip `run` zero coefficients, refining the non-zero ones passed on the way.
            loop {
                let c = &mut block[NATURAL_ORDER[k]];
                if *c != 0 {
                    refine(r, c)?;
                } else {
                    run -= 1;
                    if run < 0 {
                        break;
                    }
                }
                k += 1;
                if k > se {
                    break;
                }
            }
            if value != 0 {
                block[NATURAL_ORDER[k]] = value as i16;
            }
            k += 1;
        }
    }
    if *eobrun > 0 {
        while k <= se {
            let c = &mut block[NATURAL_ORDER[k]];
            if *c != 0 {
                refine(r, c)?;
            }
            k += 1;
        }
        *eobrun -= 1;
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// Inverse DCT (jidctint.c jpeg_idct_islow, as libjpeg-turbo's AVX2 code computes it)
// ------------------------------------------------------------------------------------------------
//
// For coefficients of real images this is jidctint.c's result exactly. Pillow on x86-64 runs
// libjpeg-turbo's AVX2 version (jidctint-avx2.asm), which works on 16-bit lanes: dequantised
// values wrap to 16 bits, the intermediate rows saturate to 16 bits and the output saturates
// instead of going through the C range-limit table. Only corrupt files get values that large;
// following the SIMD arithmetic keeps even those identical to Pillow.

const FIX_0_298631336: i32 = 2446;
const FIX_0_390180644: i32 = 3196;
const FIX_0_541196100: i32 = 4433;
const FIX_0_765366865: i32 = 6270;
const FIX_0_899976223: i32 = 7373;
const FIX_1_175875602: i32 = 9633;
const FIX_1_501321110: i32 = 12299;
const FIX_1_847759065: i32 = 15137;
const FIX_1_961570560: i32 = 16069;
const FIX_2_053119869: i32 = 16819;
const FIX_2_562915447: i32 = 20995;
const FIX_3_072711026: i32 = 25172;
/// CONST_BITS - PASS1_BITS and CONST_BITS + PASS1_BITS + 3.
const PASS1_SHIFT: u32 = 13 - 2;
const PASS2_SHIFT: u32 = 13 + 2 + 3;

/// `pmaddwd`: a*ca + b*cb from 16-bit inputs, 32-bit wrapping sum.
#[inline]
fn madd(a: i16, ca: i32, b: i16, cb: i32) -> i32 {
    (a as i32 * ca).wrapping_add(b as i32 * cb)
}

/// One 8-point islow IDCT (the `DODCT` macro): 16-bit inputs, descaled by `shift`, saturated.
#[inline]
fn idct_1d(x: [i16; 8], shift: u32) -> [i16; 8] {
    // Even part.
    let tmp3 = madd(x[2], FIX_0_541196100 + FIX_0_765366865, x[6], FIX_0_541196100);
    let tmp2 = madd(x[2], FIX_0_541196100, x[6], FIX_0_541196100 - FIX_1_847759065);
    let tmp0 = (x[0].wrapping_add(x[4]) as i32) << 13;
    let tmp1 = (x[0].wrapping_sub(x[4]) as i32) << 13;
    let tmp10 = tmp0.wrapping_add(tmp3);
    let tmp13 = tmp0.wrapping_sub(tmp3);
    let tmp11 = tmp1.wrapping_add(tmp2);
    let tmp12 = tmp1.wrapping_sub(tmp2);
    // Odd part.
    let z3 = x[7].wrapping_add(x[3]);
    let z4 = x[5].wrapping_add(x[1]);
    let z3 = madd(z3, FIX_1_175875602 - FIX_1_961570560, z4, FIX_1_175875602);
    let z4 = madd(z4, FIX_1_175875602 - FIX_0_390180644, x[7].wrapping_add(x[3]), FIX_1_175875602);
    let t0 = madd(x[7], FIX_0_298631336 - FIX_0_899976223, x[1], -FIX_0_899976223).wrapping_add(z3);
    let t1 = madd(x[5], FIX_2_053119869 - FIX_2_562915447, x[3], -FIX_2_562915447).wrapping_add(z4);
    let t2 = madd(x[5], -FIX_2_562915447, x[3], FIX_3_072711026 - FIX_2_562915447).wrapping_add(z3);
    let t3 = madd(x[7], -FIX_0_899976223, x[1], FIX_1_501321110 - FIX_0_899976223).wrapping_add(z4);
    let out = |v: i32| (v.wrapping_add(1 << (shift - 1)) >> shift).clamp(i16::MIN as i32, i16::MAX as i32) as i16;
    [
        out(tmp10.wrapping_add(t3)),
        out(tmp11.wrapping_add(t2)),
        out(tmp12.wrapping_add(t1)),
        out(tmp13.wrapping_add(t0)),
        out(tmp13.wrapping_sub(t0)),
        out(tmp12.wrapping_sub(t1)),
        out(tmp11.wrapping_sub(t2)),
        out(tmp10.wrapping_sub(t3)),
    ]
}

/// One 8x8 block: dequantise, IDCT, level shift into `plane` at block (by, bx).
fn idct_block(coef: &[i16; 64], quant: &[i16; 64], plane: &mut [u8], stride: usize, by: usize, bx: usize) {
    let mut ws = [0i16; 64];
    if coef[8..].iter().all(|&c| c == 0) {
        // Only the first row is non-zero: every column is flat (checked per block by the SIMD
        // code, per column by the C code; the results agree).
        for col in 0..8 {
            let dc = coef[col].wrapping_mul(quant[col]).wrapping_shl(2);
            for row in 0..8 {
                ws[row * 8 + col] = dc;
            }
        }
    } else {
        for col in 0..8 {
            let column = std::array::from_fn(|row| coef[row * 8 + col].wrapping_mul(quant[row * 8 + col]));
            for (row, v) in idct_1d(column, PASS1_SHIFT).into_iter().enumerate() {
                ws[row * 8 + col] = v;
            }
        }
    }
    for row in 0..8 {
        let start = (by * 8 + row) * stride + bx * 8;
        let Some(out) = plane.get_mut(start..start + 8) else { return };
        let line = std::array::from_fn(|i| ws[row * 8 + i]);
        for (o, v) in out.iter_mut().zip(idct_1d(line, PASS2_SHIFT)) {
            *o = (v.clamp(-128, 127) + 128) as u8;
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Upsampling (jdsample.c) and colour conversion (jdcolor.c)
// ------------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Upsample {
    Full,
    H2V1Fancy,
    H1V2Fancy,
    H2V2Fancy,
    /// h2v1_upsample, h2v2_upsample and int_upsample: plain replication.
    Replicate {
        hx: usize,
        vx: usize,
    },
}

/// Output row `y` of component `c`, `w` samples, into `out`. Outside the component's samples
/// the fancy filters see the edge sample repeated: columns as jdsample.c does, rows as the
/// context rows of jdmainct.c (first row above the top, last real row below the bottom).
fn upsample_row(c: &Component, method: Upsample, plane: &[u8], y: usize, w: usize, out: &mut [u8], colsum: &mut [i32]) {
    let stride = c.width_in_blocks * 8;
    let row = |r: usize| &plane[r * stride..r * stride + c.sample_w];
    let sw = c.sample_w;
    match method {
        Upsample::Full => out[..w].copy_from_slice(&row(y)[..w]),
        Upsample::Replicate { hx, vx } => {
            let input = row(y / vx);
            for (x, o) in out[..w].iter_mut().enumerate() {
                *o = input[x / hx];
            }
        }
        Upsample::H2V1Fancy => {
            let input = row(y);
            out[0] = input[0];
            out[1] = ((input[0] as i32 * 3 + input[1] as i32 + 2) >> 2) as u8;
            for i in 1..sw - 1 {
                let v = input[i] as i32 * 3;
                out[2 * i] = ((v + input[i - 1] as i32 + 1) >> 2) as u8;
                out[2 * i + 1] = ((v + input[i + 1] as i32 + 2) >> 2) as u8;
            }
            let last = sw - 1;
            out[2 * last] = ((input[last] as i32 * 3 + input[last - 1] as i32 + 1) >> 2) as u8;
            out[2 * last + 1] = input[last];
        }
        Upsample::H1V2Fancy | Upsample::H2V2Fancy => {
            let r = y / 2;
            // The nearer row is r; the further one is above for even output rows.
            let (far, bias) =
                if y.is_multiple_of(2) { (r.saturating_sub(1), 1) } else { ((r + 1).min(c.sample_h - 1), 2) };
            let (near, far) = (row(r), row(far));
            if method == Upsample::H1V2Fancy {
                for x in 0..sw {
                    out[x] = ((near[x] as i32 * 3 + far[x] as i32 + bias) >> 2) as u8;
                }
                return;
            }
            for i in 0..sw {
                colsum[i] = near[i] as i32 * 3 + far[i] as i32;
            }
            out[0] = ((colsum[0] * 4 + 8) >> 4) as u8;
            out[1] = ((colsum[0] * 3 + colsum[1] + 7) >> 4) as u8;
            for i in 1..sw - 1 {
                out[2 * i] = ((colsum[i] * 3 + colsum[i - 1] + 8) >> 4) as u8;
                out[2 * i + 1] = ((colsum[i] * 3 + colsum[i + 1] + 7) >> 4) as u8;
            }
            let last = sw - 1;
            out[2 * last] = ((colsum[last] * 3 + colsum[last - 1] + 8) >> 4) as u8;
            out[2 * last + 1] = ((colsum[last] * 4 + 7) >> 4) as u8;
        }
    }
}

/// `build_ycc_rgb_table`: SCALEBITS 16, rounded with ONE_HALF.
struct YccTables {
    cr_r: [i32; 256],
    cb_b: [i32; 256],
    cr_g: [i64; 256],
    cb_g: [i64; 256],
}

impl YccTables {
    fn new() -> Self {
        const SCALEBITS: u32 = 16;
        const ONE_HALF: i64 = 1 << (SCALEBITS - 1);
        let fix = |x: f64| (x * (1i64 << SCALEBITS) as f64 + 0.5) as i64;
        let mut t = YccTables { cr_r: [0; 256], cb_b: [0; 256], cr_g: [0; 256], cb_g: [0; 256] };
        for i in 0..256 {
            let x = i as i64 - 128;
            t.cr_r[i] = ((fix(1.40200) * x + ONE_HALF) >> SCALEBITS) as i32;
            t.cb_b[i] = ((fix(1.77200) * x + ONE_HALF) >> SCALEBITS) as i32;
            t.cr_g[i] = -fix(0.71414) * x;
            t.cb_g[i] = -fix(0.34414) * x + ONE_HALF;
        }
        t
    }

    #[inline]
    fn rgb(&self, y: u8, cb: u8, cr: u8) -> [u8; 3] {
        let (y, cb, cr) = (y as i32, cb as usize, cr as usize);
        let clamp = |v: i32| v.clamp(0, 255) as u8;
        let g = ((self.cb_g[cb] + self.cr_g[cr]) >> 16) as i32;
        [clamp(y + self.cr_r[cr]), clamp(y + g), clamp(y + self.cb_b[cb])]
    }
}

/// Decodes a whole JPEG file, refusing more than `max_pixels` pixels before allocating for them.
pub fn decode(data: &[u8], max_pixels: u64) -> Result<Image> {
    let dec = Decoder::new(data)?;
    if dec.width as u64 * dec.height as u64 > max_pixels {
        return fail(format!("JPEG of {}x{} exceeds the limit of {max_pixels} pixels", dec.width, dec.height));
    }
    dec.decode()
}
