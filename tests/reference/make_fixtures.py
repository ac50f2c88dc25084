"""Regenerate every fixture under tests/fixtures (except images/ and preprocess/).

Run from the repository root:
    ~/.cache/meacap-wgpu/pyref/bin/python tests/reference/make_fixtures.py [stage ...]
Stages (default: all, in this order): clip gpt2 bert t5 memory pt pipeline
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import refcommon  # noqa: E402  (sets threads before torch work)
from refcommon import EXPECTED, FIX, FLOORS, MARGINS, save_json  # noqa: E402

ALL = ["clip", "gpt2", "bert", "t5", "memory", "pt", "pipeline"]


def main(stages):
    import build_clip

    img_paths = build_clip.make_pipeline_images()
    if "clip" in stages:
        model, proc, tok, checked = build_clip.build()
        build_clip.expected(model, proc, tok, img_paths, checked)
        print("clip: done")
    if "gpt2" in stages:
        import build_gpt2

        tok, vc = build_gpt2.build()
        build_gpt2.expected(tok, vc)
        print("gpt2/viecap: done")
    if "bert" in stages:
        import build_bert

        build_bert.build()
        print("bert: done")
    if "t5" in stages:
        import build_t5

        build_t5.build()
        print("t5: done")
    if "memory" in stages:
        import build_memory

        build_memory.build()
        print("memory: done")
    if "pt" in stages:
        import build_pt

        build_pt.build()
        print("pt: done")
    if "pipeline" in stages:
        import meacap_reference

        meacap_reference.build(img_paths)
        print("pipeline: done")

    print("minimum margins:")
    for k, v in MARGINS.report().items():
        print(f"  {k}: {v['min']:.4g}  ({v['where']})")
    if set(stages) == set(ALL):
        save_json(os.path.join(EXPECTED, "margins.json"), {"floors": FLOORS, "found": MARGINS.report()})
    bad = MARGINS.check(FLOORS)
    if bad:
        print("MARGIN CHECK FAILED:\n  " + "\n  ".join(bad))
        sys.exit(1)


if __name__ == "__main__":
    args = sys.argv[1:] or ALL
    unknown = [a for a in args if a not in ALL]
    if unknown:
        sys.exit(f"unknown stage(s) {unknown}; choose from {ALL}")
    main([s for s in ALL if s in args])
