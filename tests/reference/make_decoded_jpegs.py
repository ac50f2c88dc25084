"""Pillow's decode of each pipeline JPEG, saved losslessly as PNG.

Written when the Rust side decoded JPEGs with zune-jpeg (up to 4/255 per sample away from
Pillow). meacap's own decoder (crates/meacap/src/jpeg.rs) is now bit-exact with Pillow on the
JPEG fixtures (crates/meacap/tests/jpeg.rs); the end-to-end parity tests still feed these PNGs,
which keeps them independent of the decoder.

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
