"""Runs `meacap-wgpu bench --device cpu` and the PyTorch original (bench_original.py) back to back
on this machine and writes the side-by-side table, with ratios and a per-image total, into
docs/benchmarks.md (between the `side-by-side` markers).

    export CARGO_TARGET_DIR=$HOME/.cache/meacap-wgpu/target
    cargo build --release -p meacap-cli
    ~/.cache/meacap-wgpu/pyref/bin/python tests/reference/side_by_side.py [--repeat 3] [--no-write]

Needs the interpreter of the reference venv (torch, transformers 4.26.1). Both sides run the same
stages, shapes and forced lengths (T5: 40 decoder steps, beam search: 20 new tokens).
"""

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOC = os.path.join(ROOT, "docs", "benchmarks.md")
BEGIN, END = "<!-- side-by-side:begin -->", "<!-- side-by-side:end -->"

# (label, our stage, their stage, shape prefix to match on either side or None)
PAIRS = [
    ("CLIP image, 1 image", "CLIP image", "CLIP image", "[1,"),
    ("CLIP image, 2 images (both front-ends)", "CLIP image", "CLIP image", "[2,"),
    ("CLIP text (memory build, 128 captions)", "CLIP text (memory build)", "CLIP text (memory build)", None),
    ("retrieval top-5, 566k x 512 (ours f32)", "retrieval top-5 (f32)", "retrieval top-5", "566000"),
    ("retrieval top-5, 566k x 512 (ours f16)", "retrieval top-5 (f16)", "retrieval top-5", "566000"),
    ("T5 encode, 5 x 20 tokens", "T5 encode", "T5 encode", None),
    ("T5 parse, 5 captions, 40 steps", "T5 parse (encode + greedy)", "T5 parse (encode + greedy)", None),
    ("MiniLM, 10 entities", "MiniLM encode (entities)", "MiniLM encode (entities)", None),
    ("mapping network", "mapping network", "mapping network", None),
    ("GPT-2 beam search, width 5, 20 tokens", "GPT-2 beam search (width 5)", "GPT-2 beam search (width 5)", None),
    ("GPT-2 step, 5 beams, length 40", "GPT-2 step (KV cache)", "GPT-2 step (original way)", "batch 5, cache 40|batch 5, length 40"),
    ("GPT-2 step, 5 beams, length 80", "GPT-2 step (KV cache)", "GPT-2 step (original way)", "batch 5, cache 80|batch 5, length 80"),
]


def find(rows, stage, shape):
    for r in rows:
        if r["stage"] != stage:
            continue
        if shape is None or any(r["shape"].startswith(s) for s in shape.split("|")):
            return r
    return None


def per_image(rows, ours):
    """One image through the pipeline: the original embeds the image twice (two batch-1 passes);
    the port does one batch-2 pass (one batch-1 pass when both front-ends agree)."""
    clip = find(rows, "CLIP image", "[2,")["median_ms"] if ours else 2 * find(rows, "CLIP image", "[1,")["median_ms"]
    retrieval = find(rows, "retrieval top-5 (f32)" if ours else "retrieval top-5", None)["median_ms"]
    rest = sum(find(rows, s, None)["median_ms"] for s in
               ["T5 parse (encode + greedy)", "MiniLM encode (entities)", "mapping network", "GPT-2 beam search (width 5)"])
    return clip + retrieval + rest


BATCHED = ["CLIP image", "retrieval top-5 (f32)", "T5 parse (encode + greedy)", "MiniLM encode (entities)", "mapping network",
           "GPT-2 beam search (width 5)"]


def per_image_batched(rows):
    """One image's share of a `caption --batch N` batch: every batched stage's time over N."""
    found = {}
    for r in rows:
        m = re.match(r"(.*), (\d+) images$", r["stage"])
        if m and m.group(1) in BATCHED:
            found[m.group(1)] = (int(m.group(2)), r["median_ms"])
    if len(found) != len(BATCHED):
        return None, None
    images = {n for n, _ in found.values()}
    if len(images) != 1:
        return None, None
    n = images.pop()
    return n, sum(ms for _, ms in found.values()) / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--binary", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")),
                                                     "release", "meacap-wgpu"))
    ap.add_argument("--no-write", action="store_true", help="print the section instead of writing it")
    args = ap.parse_args()

    load_before = open("/proc/loadavg").read().split()[:3]
    ours = json.loads(subprocess.run([args.binary, "bench", "--device", "cpu", "--json", "--repeat", str(args.repeat)],
                                     check=True, capture_output=True, text=True).stdout)
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "reference", "bench_original.py"),
                          "--json", "--repeat", str(args.repeat)], check=True, capture_output=True, text=True, env=env).stdout
    theirs = json.loads(out[out.index("\n{") + 1:])  # progress lines come first
    load_after = open("/proc/loadavg").read().split()[:3]
    our_rows = [r for r in ours["rows"] if r["device"] == "cpu"]
    their_rows = theirs["rows"]

    cpu = ours["machine"]["cpu"]
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = [
        BEGIN,
        f"Written by `tests/reference/side_by_side.py` on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%MZ}, "
        f"commit {commit}: {cpu}, {ours['machine']['cores']} cores, {ours['machine']['memory_gib']:.1f} GiB, "
        f"{platform.system()} {platform.machine()}. Load average (1/5/15 min) {' '.join(load_before)} before, "
        f"{' '.join(load_after)} after. PyTorch {theirs['info']['torch']} ({theirs['info']['threads']} threads, "
        f"OMP_WAIT_POLICY={theirs['info']['omp_wait_policy']}), median of {args.repeat} after one warm-up each.",
        "",
        "| stage | PyTorch original ms | meacap-wgpu (flex) ms | speed-up |",
        "|---|---:|---:|---:|",
    ]
    for label, our_stage, their_stage, shape in PAIRS:
        a, b = find(their_rows, their_stage, shape), find(our_rows, our_stage, shape)
        if a is None or b is None:
            continue
        lines.append(f"| {label} | {a['median_ms']:.1f} | {b['median_ms']:.1f} | {a['median_ms'] / b['median_ms']:.2f}x |")
    t, o = per_image(their_rows, False), per_image(our_rows, True)
    lines.append(f"| **per image** (CLIP + retrieval + T5 parse + MiniLM + mapping + beam search) | **{t:.0f}** | **{o:.0f}** | **{t / o:.2f}x** |")
    n, ob = per_image_batched(our_rows)
    if n:
        lines.append(f"| **per image, `caption --batch {n}`** (the same stages for {n} images at once, over {n}; "
                     f"the original captions one image at a time) | **{t:.0f}** | **{ob:.0f}** | **{t / ob:.2f}x** |")
    lines.append("")
    steps = [r for r in our_rows if r.get("gflops")]
    roof = ours["machine"].get("roofline")
    if roof:
        lines.append(f"This CPU's roofline, measured by the bench: {roof['peak_gflops']:.0f} GFLOP/s peak ({roof['simd']} FMA on "
                     f"{roof['threads']} threads), {roof['read_gbps']:.1f} GB/s read; a step's bound is min(peak, bandwidth x FLOPs "
                     "per weight byte).")
    if steps:
        def bound(r):
            return f" of a {r['bound_gflops']:.0f} GFLOP/s bound ({100 * r['gflops'] / r['bound_gflops']:.0f} %)" if r.get("bound_gflops") else ""
        lines.append("Achieved on the decoding steps (ours): " + "; ".join(
            f"{r['stage']} {r['shape']}: {r['per_step_ms']:.1f} ms/step, {r['gflops']:.1f} GFLOP/s{bound(r)}" for r in steps) + ".")
    peak = ours.get("peak_rss_mib")
    if peak:
        lines.append(f"Peak RSS of the whole bench process (ours): {peak:.0f} MiB.")
    lines.append(END)
    section = "\n".join(lines)

    if args.no_write:
        print(section)
        return
    doc = open(DOC).read()
    if BEGIN in doc:
        doc = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: section, doc, flags=re.S)
    else:
        doc = doc.rstrip() + "\n\n## Side by side, written by the script\n\n" + section + "\n"
    open(DOC, "w").write(doc)
    print(section)


if __name__ == "__main__":
    main()
