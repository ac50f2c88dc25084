#!/usr/bin/env python3
"""Compares `meacap-wgpu caption --json` output (scripts/gpu-check.sh's caption-MODE.jsonl) with the
PyTorch reference in tests/fixtures/expected/pipeline.json: caption, concepts and memory ids per
image and mode. Prints one line per mode; exit status 1 on any difference.

Usage: compare-captions.py DIR   (holding caption-default.jsonl, caption-greedy.jsonl, ...)
"""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(out_dir):
    with open(os.path.join(ROOT, "tests/fixtures/expected/pipeline.json"), encoding="utf-8") as f:
        expected = json.load(f)
    failed = False
    for mode in expected["modes"]:
        path = os.path.join(out_dir, f"caption-{mode}.jsonl")
        if not os.path.exists(path):
            print(f"{mode}: missing {path}")
            failed = True
            continue
        with open(path, encoding="utf-8") as f:
            # JPEGs are captioned from Pillow's decode, saved as NAME.jpg.png (see gpu-check.sh).
            got = {os.path.basename(r["image"]).removesuffix(".png"): r for r in map(json.loads, filter(str.strip, f))}
        diffs = []
        for image in expected["images"]:
            name = os.path.basename(image["image"])
            row = got.get(name.removesuffix(".png"))
            if row is None:
                diffs.append(f"{name}: not captioned")
                continue
            want = image["modes"][mode]["caption"]
            if row["caption"] != want:
                diffs.append(f"{name}: caption {row['caption']!r} != {want!r}")
            if row["concepts"] != image["concepts"]:
                diffs.append(f"{name}: concepts {row['concepts']} != {image['concepts']}")
            ids = [hit["index"] for hit in row["memory"]]
            if ids != image["memory_ids"]:
                diffs.append(f"{name}: memory ids {ids} != {image['memory_ids']}")
        print(f"{mode}: {len(expected['images']) - len({d.split(':')[0] for d in diffs})}/{len(expected['images'])} images equal")
        for d in diffs:
            print(f"  {d}")
        failed |= bool(diffs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
