"""JPEG decoder fixtures: small deterministic JPEGs and Pillow's decode of each.

The Rust decoder (crates/meacap/src/jpeg.rs) must reproduce Pillow 13 (libjpeg-turbo 3.x, islow
IDCT, fancy upsampling) sample for sample; crates/meacap/tests/jpeg.rs checks every file here.

Two encoders make the files:
  * Pillow itself: baseline 4:4:4 / 4:2:2 / 4:2:0, progressive, restart markers, optimized Huffman
    tables, grayscale, CMYK (Adobe), quality 5 and 100, odd sizes.
  * `encode()` below, a small baseline encoder (numpy DCT, the standard Huffman tables of Annex K)
    for what Pillow cannot write: any sampling factors (4:4:0, 4:1:1, 1x4, 3x1, luma-only 2x1 ...),
    one scan per component, Adobe RGB (no colour transform), YCCK, 16-bit quantisation tables,
    fill bytes and stray bytes between markers, and no DHT at all (libjpeg's default tables).
Only Pillow's decode is the reference; the encoder just has to write valid files.

Writes tests/fixtures/jpeg/<name>.jpg, the decoded samples as lossless PNG <name>.png (mode L as
L, RGB as RGB, CMYK as the four bands stored in an RGBA PNG), Pillow's decode of the repository's
other JPEG fixtures as `ext__<dir>__<file>.png`, and index.json.

Run: ~/.cache/meacap-wgpu/pyref/bin/python tests/reference/make_jpegs.py

`--mutants DIR [PER_FILE] [SEED]` instead writes mutated copies of the small fixtures to DIR
(`NNNNNN.jpg`, and `NNNNNN.raw` with Pillow's samples where Pillow decodes it) for the
differential test: MEACAP_JPEG_MUTANTS=DIR cargo test --release -p meacap --test jpeg -- --ignored
"""
import io
import json
import os
import random
import struct
import sys
import warnings

import numpy as np
import PIL
from PIL import Image, features

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
OUT = os.path.join(ROOT, "tests", "fixtures", "jpeg")

# ------------------------------------------------------------------------------------------------
# Test pictures: gradients, hard colour edges and a little noise, so chroma upsampling, IDCT
# ringing and clamping all matter, while the PNGs stay small.
# ------------------------------------------------------------------------------------------------


def picture(w, h, seed, bands=3):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    out = []
    for b in range(bands):
        fx, fy = rng.uniform(0.02, 0.3, 2)
        base = 128 + 90 * np.sin(x * fx + b) * np.cos(y * fy - b)
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(2, max(3, min(w, h) / 2))
        disc = ((x - cx) ** 2 + (y - cy) ** 2) < r * r
        base = np.where(disc, 255 - base * 0.3 if b % 2 else base * 0.2, base)
        stripes = ((x.astype(int) // 3 + y.astype(int) // 5 + b) % 4 == 0) & (x > w / 2)
        base = np.where(stripes, 255 * (b % 2), base)
        base = base + rng.normal(0, 6, (h, w))
        out.append(np.clip(base, 0, 255).round().astype(np.uint8))
    return np.stack(out, axis=-1)


# ------------------------------------------------------------------------------------------------
# A small baseline encoder
# ------------------------------------------------------------------------------------------------

ZIGZAG = np.array([
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27,
    20, 13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58,
    59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
])

STD_LUMA_Q = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113,
    92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
])
STD_CHROMA_Q = np.array([
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99] + [99] * 32)

# Annex K.3 tables: (bits[1..16], values).
DC_LUMA = ([0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0], list(range(12)))
DC_CHROMA = ([0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0], list(range(12)))
AC_LUMA = ([0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7D], bytes.fromhex(
    "01020300041105122131410613516107227114328191a1082342b1c11552d1f02433627282090a161718191a25262728"
    "292a3435363738393a434445464748494a535455565758595a636465666768696a737475767778797a838485868788"
    "898a92939495969798999aa2a3a4a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3c4c5c6c7c8c9cad2d3d4d5d6d7d8d9da"
    "e1e2e3e4e5e6e7e8e9eaf1f2f3f4f5f6f7f8f9fa"))
AC_CHROMA = ([0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77], bytes.fromhex(
    "000102031104052131061241510761711322328108144291a1b1c109233352f0156272d10a162434e125f11718191a"
    "262728292a35363738393a434445464748494a535455565758595a636465666768696a737475767778797a82838485"
    "868788898a92939495969798999aa2a3a4a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3c4c5c6c7c8c9cad2d3d4d5d6d7"
    "d8d9dae2e3e4e5e6e7e8e9eaf2f3f4f5f6f7f8f9fa"))


def scaled_qtable(base, quality):
    # libjpeg's jpeg_quality_scaling, baseline-clamped.
    s = 5000 // quality if quality < 50 else 200 - quality * 2
    return np.clip((base * s + 50) // 100, 1, 255)


def huff_codes(spec):
    bits, vals = spec
    codes, code, k = {}, 0, 0
    for length in range(1, 17):
        for _ in range(bits[length - 1]):
            codes[vals[k]] = (code, length)
            code += 1
            k += 1
        code <<= 1
    return codes


def dct_matrix():
    c = np.zeros((8, 8))
    for u in range(8):
        a = np.sqrt(1 / 8) if u == 0 else 0.5
        for x in range(8):
            c[u, x] = a * np.cos((2 * x + 1) * u * np.pi / 16)
    return c


DCT = dct_matrix()


class BitWriter:
    def __init__(self):
        self.out = bytearray()
        self.acc = 0
        self.n = 0

    def put(self, code, length):
        for i in range(length - 1, -1, -1):
            self.acc = (self.acc << 1) | ((code >> i) & 1)
            self.n += 1
            if self.n == 8:
                self.out.append(self.acc)
                if self.acc == 0xFF:
                    self.out.append(0)
                self.acc, self.n = 0, 0

    def flush(self):
        if self.n:
            self.put((1 << (8 - self.n)) - 1, 8 - self.n)


def magnitude(v):
    v = int(v)
    size = abs(v).bit_length()
    bits = v if v >= 0 else v + (1 << size) - 1
    return size, bits


def segment(marker, payload):
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def encode(planes, factors, *, quality=75, ids=None, scans=None, restart=0, jfif=True, adobe=None,
           qtable_of=None, q16=False, define_dht=True, fill_bytes=False, stray_bytes=False,
           dht_per_scan=False):
    """Baseline JPEG of full-resolution component planes (list of HxW uint8) with the given
    (h, v) sampling factors. `scans` lists the component indices of each scan (default: one
    interleaved scan); `restart` is the restart interval in MCUs."""
    n = len(planes)
    h_img, w_img = planes[0].shape
    ids = ids or list(range(1, n + 1))
    scans = scans or [list(range(n))]
    qtable_of = qtable_of or [0] + [1] * (n - 1)
    hmax = max(f[0] for f in factors)
    vmax = max(f[1] for f in factors)
    qtabs = [scaled_qtable(STD_LUMA_Q, quality), scaled_qtable(STD_CHROMA_Q, quality)]
    specs = [(DC_LUMA, AC_LUMA), (DC_CHROMA, AC_CHROMA)]
    tables = [(huff_codes(dc), huff_codes(ac)) for dc, ac in specs]
    mcux = -(-w_img // (8 * hmax))
    mcuy = -(-h_img // (8 * vmax))

    # Downsample (box average) and pad each component to whole MCUs by edge replication.
    coefs = []
    for ci, (p, (hf, vf)) in enumerate(zip(planes, factors)):
        sx, sy = hmax // hf, vmax // vf
        ph, pw = mcuy * 8 * vmax, mcux * 8 * hmax
        full = np.pad(p.astype(np.float64), ((0, ph - h_img), (0, pw - w_img)), mode="edge")
        small = full.reshape(ph // sy, sy, pw // sx, sx).mean(axis=(1, 3))
        by, bx = small.shape[0] // 8, small.shape[1] // 8
        blocks = small.reshape(by, 8, bx, 8).transpose(0, 2, 1, 3) - 128.0
        d = np.einsum("ux,abxy,vy->abuv", DCT, blocks, DCT)
        q = qtabs[qtable_of[ci]].reshape(8, 8)
        coefs.append(np.round(d / q).astype(np.int64).reshape(by, bx, 64)[:, :, ZIGZAG])

    out = bytearray(b"\xff\xd8")
    if jfif:
        out += segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
    if adobe is not None:
        out += segment(0xEE, b"Adobe\x00\x64\x00\x00\x00\x00" + bytes([adobe]))
    for t, q in enumerate(qtabs[: max(qtable_of) + 1]):
        zz = q[ZIGZAG]
        if q16:
            out += segment(0xDB, bytes([0x10 | t]) + b"".join(struct.pack(">H", int(v)) for v in zz))
        else:
            out += segment(0xDB, bytes([t]) + bytes(int(v) for v in zz))
    sof = struct.pack(">BHHB", 8, h_img, w_img, n)
    for ci in range(n):
        sof += bytes([ids[ci], factors[ci][0] << 4 | factors[ci][1], qtable_of[ci]])
    out += segment(0xC0, sof)

    def dht():
        seg = b""
        for t, (dc, ac) in enumerate(specs):
            seg += bytes([t]) + bytes(dc[0]) + bytes(dc[1])
            seg += bytes([0x10 | t]) + bytes(ac[0]) + bytes(ac[1])
        return segment(0xC4, seg)

    if define_dht and not dht_per_scan:
        out += dht()
    if restart:
        out += segment(0xDD, struct.pack(">H", restart))
    for scan in scans:
        if fill_bytes:
            out += b"\xff\xff\xff"
        if dht_per_scan:
            out += dht()
        tab = [0 if qtable_of[ci] == 0 else 1 for ci in range(n)]
        sos = bytes([len(scan)])
        for ci in scan:
            sos += bytes([ids[ci], tab[ci] << 4 | tab[ci]])
        out += segment(0xDA, sos + b"\x00\x3f\x00")
        bw = BitWriter()
        pred = {ci: 0 for ci in scan}
        if len(scan) == 1:
            ci = scan[0]
            hf, vf = factors[ci]
            bw_blocks = -(-(-(-w_img * hf // hmax)) // 8)
            bh_blocks = -(-(-(-h_img * vf // vmax)) // 8)
            units = [[(ci, by, bx)] for by in range(bh_blocks) for bx in range(bw_blocks)]
        else:
            units = []
            for my in range(mcuy):
                for mx in range(mcux):
                    unit = []
                    for ci in scan:
                        hf, vf = factors[ci]
                        unit += [(ci, my * vf + y, mx * hf + x) for y in range(vf) for x in range(hf)]
                    units.append(unit)
        rst = 0
        for i, unit in enumerate(units):
            if restart and i and i % restart == 0:
                bw.flush()
                bw.out += bytes([0xFF, 0xD0 + rst])
                rst = (rst + 1) % 8
                pred = {ci: 0 for ci in scan}
            for ci, by, bx in unit:
                dcc, acc = tables[tab[ci]]
                blk = coefs[ci][by, bx]
                diff = blk[0] - pred[ci]
                pred[ci] = blk[0]
                size, bits = magnitude(diff)
                bw.put(*dcc[size])
                bw.put(bits, size)
                run = 0
                last = max([k for k in range(1, 64) if blk[k] != 0], default=0)
                for k in range(1, last + 1):
                    if blk[k] == 0:
                        run += 1
                        continue
                    while run > 15:
                        bw.put(*acc[0xF0])
                        run -= 16
                    size, bits = magnitude(blk[k])
                    bw.put(*acc[(run << 4) | size])
                    bw.put(bits, size)
                    run = 0
                if last < 63:
                    bw.put(*acc[0x00])
        bw.flush()
        out += bw.out
        if stray_bytes:
            out += b"\x12\x34\xff\x00"  # junk that libjpeg skips (with a warning) before a marker
    out += b"\xff\xd9"
    return bytes(out)


def keep_scans(data, keep):
    """The same JPEG with only the scans numbered in `keep` (tables and headers all kept): an
    incomplete progressive file, which libjpeg decodes with block smoothing."""
    out, i, scan = bytearray(data[:2]), 2, -1
    while data[i + 1] != 0xD9:
        assert data[i] == 0xFF
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        end = i + 2 + length
        if data[i + 1] == 0xDA:
            while not (data[end] == 0xFF and data[end + 1] not in (0, *range(0xD0, 0xD8))):
                end += 1
            scan += 1
            if scan in keep:
                out += data[i:end]
        else:
            out += data[i:end]
        i = end
    return bytes(out + b"\xff\xd9")


def rgb_to_ycc(rgb):
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 128
    return [np.clip(np.round(c), 0, 255).astype(np.uint8) for c in (y, cb, cr)]


# ------------------------------------------------------------------------------------------------
# The fixture set
# ------------------------------------------------------------------------------------------------


def pillow_jpeg(img, **kw):
    b = io.BytesIO()
    img.save(b, "JPEG", **kw)
    return b.getvalue()


def cases():
    out = []

    def add(name, data, what):
        out.append((name, data, what))

    rgb = lambda w, h, s: Image.fromarray(picture(w, h, s))  # noqa: E731
    # Pillow-written files.
    for sub, tag in [(0, "444"), (1, "422"), (2, "420")]:
        for w, h in [(1, 1), (2, 2), (3, 5), (17, 9), (33, 65), (301, 231) if sub == 2 else (151, 117)]:
            add(f"pil_{tag}_{w}x{h}", pillow_jpeg(rgb(w, h, w * 7 + h), subsampling=sub, quality=85),
                f"Pillow baseline {tag}")
    add("pil_420_q5_64x48", pillow_jpeg(rgb(64, 48, 1), subsampling=2, quality=5), "quality 5")
    add("pil_444_q100_40x30", pillow_jpeg(rgb(40, 30, 2), subsampling=0, quality=100), "quality 100")
    add("pil_420_q100_41x29", pillow_jpeg(rgb(41, 29, 3), subsampling=2, quality=100), "quality 100 4:2:0")
    add("pil_420_optimize_77x51", pillow_jpeg(rgb(77, 51, 4), subsampling=2, optimize=True), "optimized Huffman")
    for sub, tag in [(0, "444"), (1, "422"), (2, "420")]:
        add(f"pil_prog_{tag}_67x45", pillow_jpeg(rgb(67, 45, 5 + sub), subsampling=sub, progressive=True),
            f"progressive {tag}")
    add("pil_prog_420_301x231", pillow_jpeg(rgb(301, 231, 8), progressive=True, quality=90), "progressive big")
    add("pil_prog_q5_50x50", pillow_jpeg(rgb(50, 50, 9), progressive=True, quality=5), "progressive quality 5")
    add("pil_prog_restart_60x40", pillow_jpeg(rgb(60, 40, 10), progressive=True, restart_marker_blocks=5),
        "progressive + restart markers")
    add("pil_restart_blocks_70x33", pillow_jpeg(rgb(70, 33, 11), subsampling=2, restart_marker_blocks=3),
        "restart every 3 MCUs")
    add("pil_restart_rows_70x33", pillow_jpeg(rgb(70, 33, 12), subsampling=1, restart_marker_rows=1),
        "restart every MCU row")
    gray = lambda w, h, s: Image.fromarray(picture(w, h, s, 1)[..., 0])  # noqa: E731
    add("pil_gray_37x23", pillow_jpeg(gray(37, 23, 13), quality=80), "grayscale")
    add("pil_gray_1x1", pillow_jpeg(gray(1, 1, 14)), "grayscale 1x1")
    add("pil_gray_prog_45x31", pillow_jpeg(gray(45, 31, 15), progressive=True), "grayscale progressive")
    cmyk = lambda w, h, s: Image.fromarray(picture(w, h, s, 4), "CMYK")  # noqa: E731
    add("pil_cmyk_43x27", pillow_jpeg(cmyk(43, 27, 16), quality=90), "CMYK (Adobe, transform 0)")
    add("pil_cmyk_prog_31x17", pillow_jpeg(cmyk(31, 17, 17), progressive=True), "CMYK progressive")

    # Incomplete progressive files (scans dropped): libjpeg's block smoothing.
    prog = pillow_jpeg(rgb(83, 61, 44), progressive=True, quality=70)
    for keep, what in [([0], "DC only (DC interpolation)"), ([0, 1, 2, 3], "first AC scans"),
                       ([0, 1, 2, 3, 4, 5], "Y refined once"), (list(range(9)), "all but the last"),
                       ([1, 2, 3], "AC without DC (no smoothing)"), ([0, 6], "DC refined only")]:
        add("smooth_" + "".join(map(str, keep)) + "_83x61", keep_scans(prog, keep), "progressive, " + what)
    # 4:2:0 with an odd number of luma block rows: libjpeg's row arithmetic in the last iMCU row.
    prog420 = pillow_jpeg(rgb(61, 83, 47), progressive=True, subsampling=2)
    for keep in [[0], [0, 1, 2, 3]]:
        add("smooth_420_" + "".join(map(str, keep)) + "_61x83", keep_scans(prog420, keep), "4:2:0 progressive, odd rows")
    gprog = pillow_jpeg(gray(40, 56, 45), progressive=True, quality=60)
    add("smooth_gray_013_40x56", keep_scans(gprog, [0, 1, 3]), "grayscale progressive, scans 0,1,3")
    prog422 = pillow_jpeg(rgb(50, 34, 46), progressive=True, subsampling=1, restart_marker_blocks=2)
    add("smooth_422_restart_012_50x34", keep_scans(prog422, [0, 1, 2]), "4:2:2 progressive + restarts, 3 scans")

    # Hand-encoded files: sampling factors and markers Pillow does not write.
    def ycc(w, h, s):
        return rgb_to_ycc(picture(w, h, s))

    sampling = {
        "440": [(1, 2), (1, 1), (1, 1)],
        "411": [(4, 1), (1, 1), (1, 1)],
        "410": [(4, 2), (1, 1), (1, 1)],
        "1x4": [(1, 4), (1, 1), (1, 1)],
        "3x1": [(3, 1), (1, 1), (1, 1)],
        "2x4_1x2": [(2, 4), (1, 2), (1, 2)],  # h2v2 fancy with 2 rows per group
        "2x4": [(2, 4), (1, 1), (1, 1)],  # h2v4: generic integral upsampling
        "4x2_2x1": [(4, 2), (2, 1), (2, 1)],
        "2x2_1x2": [(2, 2), (1, 2), (1, 2)],  # h2v1 fancy on 2-row groups
        "2x2_2x1": [(2, 2), (2, 1), (2, 1)],  # h1v2 fancy
        "luma2x1": [(2, 1), (2, 1), (1, 1)],  # Cb full, Cr h2v1
        "mixed": [(2, 2), (1, 2), (2, 1)],
        "chroma_max": [(1, 1), (2, 2), (1, 1)],  # the largest factors on a chroma component
        "222": [(2, 2), (2, 2), (2, 2)],  # all 2x2: no upsampling, bigger MCUs
    }
    # More than 10 blocks per MCU is only legal in single-component scans.
    scans_of = {"2x4_1x2": [[0], [1], [2]], "4x2_2x1": [[0], [1, 2]], "222": [[0], [1], [2]]}
    sizes = [(1, 1), (5, 3), (17, 9), (33, 65), (61, 45)]
    for tag, fac in sampling.items():
        for w, h in sizes:
            add(f"enc_{tag}_{w}x{h}", encode(ycc(w, h, w + 3 * h), fac, scans=scans_of.get(tag)),
                f"sampling {fac}")
    add("enc_440_q100_24x40", encode(ycc(24, 40, 31), sampling["440"], quality=100), "4:4:0 quality 100")
    add("enc_440_q5_24x40", encode(ycc(24, 40, 32), sampling["440"], quality=5), "4:4:0 quality 5")
    add("enc_420_noninterleaved_41x27", encode(ycc(41, 27, 33), [(2, 2), (1, 1), (1, 1)], scans=[[0], [1], [2]]),
        "one scan per component (multi-scan sequential)")
    add("enc_420_two_scans_41x27", encode(ycc(41, 27, 34), [(2, 2), (1, 1), (1, 1)], scans=[[2], [0, 1]],
        dht_per_scan=True), "Cr alone, then Y+Cb; DHT before each scan")
    add("enc_420_restart_1_35x19", encode(ycc(35, 19, 35), [(2, 2), (1, 1), (1, 1)], restart=1), "restart every MCU")
    add("enc_440_restart_7_35x50", encode(ycc(35, 50, 36), sampling["440"], restart=7), "4:4:0 + restart")
    add("enc_noninterleaved_restart_41x27", encode(ycc(41, 27, 37), [(2, 1), (1, 1), (1, 1)], scans=[[0], [1], [2]],
        restart=4), "per-component scans + restart")
    pic = picture(29, 21, 38)
    add("enc_rgb_adobe0_29x21", encode([pic[..., i] for i in range(3)], [(1, 1)] * 3, jfif=False, adobe=0),
        "3 components, Adobe transform 0: RGB, no conversion")
    add("enc_rgb_ids_29x21", encode([pic[..., i] for i in range(3)], [(1, 1)] * 3, jfif=False, ids=[82, 71, 66]),
        "component ids R,G,B and no JFIF: RGB")
    add("enc_ycc_odd_ids_29x21", encode(rgb_to_ycc(pic), [(2, 1), (1, 1), (1, 1)], jfif=False, ids=[7, 8, 9]),
        "unknown ids and no markers: YCbCr")
    add("enc_ycc_jfif_adobe0_29x21", encode(rgb_to_ycc(pic), [(1, 1)] * 3, jfif=True, adobe=0),
        "JFIF wins over Adobe transform 0: YCbCr")
    cm = picture(30, 22, 39, 4)
    ycck = rgb_to_ycc(255 - cm[..., :3]) + [cm[..., 3]]
    add("enc_ycck_30x22", encode(ycck, [(2, 2), (1, 1), (1, 1), (2, 2)], jfif=False, adobe=2,
        qtable_of=[0, 1, 1, 0]), "YCCK (Adobe transform 2)")
    add("enc_cmyk_noadobe_30x22", encode([cm[..., i] for i in range(4)], [(1, 1)] * 4, jfif=False,
        qtable_of=[0, 0, 0, 0]), "4 components without Adobe marker: CMYK")
    add("enc_gray_2x2_35x21", encode([picture(35, 21, 40, 1)[..., 0]], [(2, 2)], qtable_of=[0]),
        "grayscale with sampling factors 2x2")
    add("enc_q16_420_33x17", encode(ycc(33, 17, 41), [(2, 2), (1, 1), (1, 1)], q16=True), "16-bit DQT")
    add("enc_fill_stray_420_33x17", encode(ycc(33, 17, 42), [(2, 2), (1, 1), (1, 1)], fill_bytes=True,
        stray_bytes=True, scans=[[0], [1, 2]]), "fill bytes before markers, junk after scans")
    add("enc_no_dht_420_33x17", encode(ycc(33, 17, 43), [(2, 2), (1, 1), (1, 1)], define_dht=False),
        "no DHT: libjpeg's default tables")
    return out


def to_png(img):
    if img.mode == "CMYK":
        img = Image.frombytes("RGBA", img.size, img.tobytes())
    b = io.BytesIO()
    img.save(b, "PNG", optimize=True)
    return b.getvalue()


def main():
    assert features.check_feature("libjpeg_turbo"), "Pillow without libjpeg-turbo"
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        if f.endswith((".jpg", ".png")):
            os.remove(os.path.join(OUT, f))
    index = {"pillow": PIL.__version__, "libjpeg_turbo": features.version("libjpeg_turbo"), "files": {}}
    for name, data, what in cases():
        img = Image.open(io.BytesIO(data))
        img.load()
        with open(os.path.join(OUT, name + ".jpg"), "wb") as f:
            f.write(data)
        with open(os.path.join(OUT, name + ".png"), "wb") as f:
            f.write(to_png(img))
        index["files"][name + ".jpg"] = {"expected": name + ".png", "mode": img.mode,
                                         "width": img.width, "height": img.height, "what": what}
    # The repository's other JPEG fixtures.
    for sub in ["images", "pipeline/images"]:
        d = os.path.join(ROOT, "tests", "fixtures", sub)
        for f in sorted(os.listdir(d)):
            if not f.endswith(".jpg"):
                continue
            img = Image.open(os.path.join(d, f))
            img.load()
            # The pipeline fixtures already hold Pillow's decode (make_decoded_jpegs.py): reuse it.
            known = os.path.join(ROOT, "tests", "fixtures", "pipeline", "decoded", f + ".png")
            if os.path.exists(known) and Image.open(known).tobytes() == img.tobytes():
                png = "../pipeline/decoded/" + f + ".png"
            else:
                png = "ext__" + sub.replace("/", "__") + "__" + f + ".png"
                with open(os.path.join(OUT, png), "wb") as fh:
                    fh.write(to_png(img))
            index["files"]["../" + sub + "/" + f] = {"expected": png, "mode": img.mode, "width": img.width,
                                                     "height": img.height, "what": "existing fixture"}
    with open(os.path.join(OUT, "index.json"), "w") as f:
        json.dump(index, f, indent=1, sort_keys=True)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    assert total < 1_500_000, "keep the fixtures small"
    print(f"{len(index['files'])} files, {total / 1e6:.2f} MB in {OUT}")


def mutants(out_dir, per_file=100, seed=1):
    """Bit flips, changed, inserted (marker-like) and deleted bytes, truncations."""
    rng = random.Random(seed)
    os.makedirs(out_dir, exist_ok=True)
    warnings.simplefilter("ignore")
    n = decoded = 0
    for name in sorted(f for f in os.listdir(OUT) if f.endswith(".jpg")):
        src = open(os.path.join(OUT, name), "rb").read()
        if len(src) > 20000:
            continue
        for _ in range(per_file):
            m = bytearray(src)
            for _ in range(rng.randint(1, 3)):
                i = rng.randrange(len(m))
                op = rng.randrange(6)
                if op == 0:
                    m[i] ^= 1 << rng.randrange(8)
                elif op == 1:
                    m[i] = rng.randrange(256)
                elif op == 2:
                    m[i] = (m[i] + 1) & 255
                elif op == 3:
                    del m[max(i, 3):]
                    break
                elif op == 4:
                    del m[i]
                else:
                    m.insert(i, rng.choice([0xFF, 0x00, 0xD9, 0xD0, 0xDA, 0xC4]))
                if len(m) < 4:
                    break
            path = os.path.join(out_dir, f"{n:06}")
            with open(path + ".jpg", "wb") as f:
                f.write(m)
            try:
                img = Image.open(io.BytesIO(bytes(m)))
                img.load()
                if img.mode in ("L", "RGB", "CMYK"):
                    with open(path + ".raw", "wb") as f:
                        f.write(img.tobytes())
                    decoded += 1
            except Exception:
                pass
            n += 1
    print(f"{n} mutants, {decoded} decoded by Pillow, in {out_dir}")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--mutants":
        mutants(sys.argv[2], *(int(a) for a in sys.argv[3:5]))
    else:
        main()
