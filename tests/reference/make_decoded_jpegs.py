"""Pillow's decode of each pipeline JPEG, saved losslessly as PNG.

The Rust JPEG decoders (zune-jpeg, jpeg-decoder) differ from Pillow's libjpeg-turbo by up to
4/255 per sample (chroma upsampling and IDCT rounding). The end-to-end parity test feeds these
PNGs for the JPEG images so that every stage after decoding is checked exactly; the decoder itself
is checked, with its own tolerance, by the preprocessing tests.

Run: ~/.cache/meacap-wgpu/pyref/bin/python tests/reference/make_decoded_jpegs.py
"""
import pathlib

from PIL import Image

root = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "pipeline"
out = root / "decoded"
out.mkdir(exist_ok=True)
for jpeg in sorted((root / "images").glob("*.jpg")):
    image = Image.open(jpeg)
    image.load()
    image.save(out / (jpeg.name + ".png"), optimize=True)
    print(jpeg.name, image.mode, image.size)
