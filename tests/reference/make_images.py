"""Preprocessing fixtures: small deterministic test images in every mode the port must read, and
what the two CLIP front-ends of the original make of them (224x224x3 uint8 before rescale).

  HF:     transformers 4.26.1 CLIPImageProcessor (openai/clip-vit-base-patch32 defaults, written out)
  OpenAI: clip.clip._transform(224) (torchvision Resize(224, BICUBIC) -> CenterCrop -> RGB -> ToTensor)

Writes tests/fixtures/images/*, the expected crops as lossless RGB PNGs
tests/fixtures/preprocess/{hf,openai}/<file>.png (PNG rather than raw arrays: 10x smaller),
tests/fixtures/preprocess/norm.safetensors (F32 `hf_norm`, `openai_norm` [3,256]: the normalised
value of every uint8 level as each front-end computes it) and tests/fixtures/preprocess/index.json. Run with the pyref venv (Pillow, torch, torchvision,
transformers==4.26.1, clip-anytorch).
"""
import io
import json
import os

import numpy as np
import PIL
from PIL import Image, ImageDraw
from safetensors.numpy import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
IMG_DIR = os.path.join(ROOT, "tests", "fixtures", "images")
OUT_DIR = os.path.join(ROOT, "tests", "fixtures", "preprocess")

MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]


def hf_processor():
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        do_resize=True,
        size={"shortest_edge": 224},
        resample=3,  # PIL BICUBIC
        do_center_crop=True,
        crop_size={"height": 224, "width": 224},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=MEAN,
        image_std=STD,
        do_convert_rgb=True,
    )


def openai_transform():
    import clip

    return clip.clip._transform(224)


def base_rgb(w, h, seed):
    """Gradients + shapes + a noisy patch: smooth enough to stay small, sharp enough to test filters."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 255 * x / max(w - 1, 1)
    g = 255 * y / max(h - 1, 1)
    b = 127.5 + 127.5 * np.sin((x + 2 * y) / 9.0)
    a = np.stack([r, g, b], -1)
    im = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(im)
    d.ellipse([w // 5, h // 6, w // 2, h // 2], fill=(250, 20, 30))
    d.rectangle([w // 2, h // 2, w - w // 6, h - h // 7], fill=(10, 200, 40))
    d.line([0, h - 1, w - 1, 0], fill=(255, 255, 255), width=3)
    arr = np.array(im)
    ph, pw = max(h // 6, 2), max(w // 6, 2)
    arr[h - ph - 2 : h - 2, 2 : 2 + pw] = rng.integers(0, 256, (ph, pw, 3), dtype=np.uint8)
    return Image.fromarray(arr, "RGB")


def alpha_plane(w, h):
    y, x = np.mgrid[0:h, 0:w]
    a = (x * 255 // max(w - 1, 1)).astype(np.uint8)
    a[: h // 5] = 0  # fully transparent band
    a[h - h // 5 :] = 255  # fully opaque band
    a[h // 3 : h // 2, w // 3 : w // 2] = 1  # nearly transparent: unpremultiply extremes
    return a


def make_images():
    """name -> (bytes, description). Deterministic: fixed seeds, Pillow encoders."""
    out = {}

    def save(name, im, **kw):
        buf = io.BytesIO()
        im.save(buf, **kw)
        out[name] = buf.getvalue()

    # RGB JPEG, landscape, (W-224)%4 == (H-224)%4 == 3; 4:2:0 (Pillow's default).
    save("rgb_301x231.jpg", base_rgb(301, 231, 1), format="JPEG", quality=90)
    # RGB JPEG, portrait, 4:4:4, with an EXIF orientation tag (must NOT be applied).
    ex = Image.Exif()
    ex[0x0112] = 6
    save("rgb444_exif6_227x299.jpg", base_rgb(227, 299, 2), format="JPEG", quality=92, subsampling=0, exif=ex)
    # Downscale by ~2.2 (antialiasing support), PNG so the decoder is exact.
    big = base_rgb(516, 483, 3)
    save("rgb_516x483.png", big.quantize(48).convert("RGB"), format="PNG", optimize=True)
    # RGBA PNG with transparent, opaque and nearly-transparent areas.
    rgba = base_rgb(301, 231, 4).convert("RGBA")
    rgba.putalpha(Image.fromarray(alpha_plane(301, 231), "L"))
    save("rgba_301x231.png", rgba, format="PNG")
    # L PNG, portrait.
    save("l_227x299.png", base_rgb(227, 299, 5).convert("L"), format="PNG")
    # LA PNG.
    la = base_rgb(231, 301, 6).convert("L").convert("LA")
    la.putalpha(Image.fromarray(alpha_plane(231, 301), "L"))
    save("la_231x301.png", la, format="PNG")
    # P PNG (adaptive palette) with a transparent index (tRNS).
    p = base_rgb(301, 231, 7).quantize(64)
    save("p_trns_301x231.png", p, format="PNG", transparency=3)
    # P GIF, portrait.
    save("p_227x299.gif", base_rgb(227, 299, 8).quantize(100), format="GIF")
    # CMYK JPEG (Pillow writes Adobe polarity).
    save("cmyk_301x231.jpg", base_rgb(301, 231, 9).convert("CMYK"), format="JPEG", quality=92)
    # 16-bit grayscale PNG ("I;16"): values straddle 255, where Pillow's I;16->RGB clips.
    h, w = 296, 231
    y, x = np.mgrid[0:h, 0:w]
    v = (x * 3 + y * 2 + (np.random.default_rng(10).integers(0, 40, (h, w)))).astype(np.uint16)
    v[: h // 4, : w // 4] = 40000
    save("i16_231x296.png", Image.fromarray(v), format="PNG")
    # WebP lossless and lossy.
    save("rgb_lossless_301x231.webp", base_rgb(301, 231, 11), format="WEBP", lossless=True)
    save("rgb_lossy_227x299.webp", base_rgb(227, 299, 12), format="WEBP", quality=85)
    # 24-bit BMP (small: BMP is uncompressed).
    save("rgb_100x61.bmp", base_rgb(100, 61, 13), format="BMP")
    # 8-bit palette BMP.
    save("p_61x98.bmp", base_rgb(61, 98, 14).quantize(32), format="BMP")
    # Smaller than 224: upscaled.
    save("small_100x61.png", base_rgb(100, 61, 15), format="PNG")
    # 1-bit PNG: Pillow mode "1" (resized with NEAREST by torchvision, like "P").
    save("bilevel_227x299.png", base_rgb(227, 299, 18).convert("1"), format="PNG")
    # Exactly 224x224 and 224 on the short side.
    save("exact_224x224.png", base_rgb(224, 224, 16), format="PNG")
    save("short224_224x303.png", base_rgb(224, 303, 17).quantize(64).convert("RGB"), format="PNG")
    return out


def expected(name, data, hf, oa):
    im = Image.open(io.BytesIO(data))
    mode = im.mode
    # HF with rescale/normalise off returns the uint8 crop, CHW.
    a = hf(im, do_rescale=False, do_normalize=False, return_tensors="np")["pixel_values"][0]
    a = np.ascontiguousarray(np.transpose(a, (1, 2, 0))).astype(np.uint8)
    # OpenAI: everything before ToTensor.
    im2 = Image.open(io.BytesIO(data))
    t = oa.transforms
    x = im2
    for step in t[:-2]:  # Resize, CenterCrop, _convert_image_to_rgb
        x = step(x)
    b = np.asarray(x, dtype=np.uint8)
    assert a.shape == (224, 224, 3) and b.shape == (224, 224, 3), (name, a.shape, b.shape)
    return mode, a, b


def norm_tables(hf, oa):
    """Normalised value of every uint8 level, per channel, as each front-end computes it."""
    lv = np.arange(256, dtype=np.uint8)
    arr = np.zeros((224, 224, 3), np.uint8)
    arr.reshape(-1, 3)[:256] = lv[:, None]
    im = Image.fromarray(arr, "RGB")
    ph = hf(im, return_tensors="np")["pixel_values"][0]  # C,H,W
    po = oa(im).numpy()
    hf_t = ph.reshape(3, -1)[:, :256].astype(np.float32)
    oa_t = po.reshape(3, -1)[:, :256].astype(np.float32)
    return np.ascontiguousarray(hf_t), np.ascontiguousarray(oa_t), str(ph.dtype)


def main():
    os.makedirs(IMG_DIR, exist_ok=True)
    os.makedirs(OUT_DIR, exist_ok=True)
    hf, oa = hf_processor(), openai_transform()
    imgs = make_images()
    tensors, index = {}, {}
    for name, data in sorted(imgs.items()):
        with open(os.path.join(IMG_DIR, name), "wb") as f:
            f.write(data)
        mode, a, b = expected(name, data, hf, oa)
        for front, arr in (("hf", a), ("openai", b)):
            os.makedirs(os.path.join(OUT_DIR, front), exist_ok=True)
            Image.fromarray(arr, "RGB").save(os.path.join(OUT_DIR, front, name + ".png"), optimize=True)
        size = Image.open(io.BytesIO(data)).size
        index[name] = {"pil_mode": mode, "width": size[0], "height": size[1], "bytes": len(data)}
        print(f"{name:32s} {mode:5s} {size} {len(data):7d} B  hf!=openai px: {(a != b).any(-1).sum()}")
    hf_t, oa_t, hf_dtype = norm_tables(hf, oa)
    tensors["hf_norm"] = hf_t
    tensors["openai_norm"] = oa_t
    save_file(tensors, os.path.join(OUT_DIR, "norm.safetensors"))
    meta = {
        "pillow": PIL.__version__,
        "hf_pixel_values_dtype": hf_dtype,
        "images": index,
    }
    import torch, torchvision, transformers

    meta.update(torch=torch.__version__, torchvision=torchvision.__version__, transformers=transformers.__version__)
    with open(os.path.join(OUT_DIR, "index.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
