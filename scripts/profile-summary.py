#!/usr/bin/env python3
"""Sums a CubeCL profiling log (`| 1.234ms | kernel name` per launch) by kernel name.

Usage: profile-summary.py profile.log   -> table on stdout, biggest total GPU time first.
"""
import re
import sys
from collections import defaultdict

UNITS = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1e3}
LINE = re.compile(r"^\|\s*([0-9.]+)(ns|µs|us|ms|s)\s*\|\s*(.+?)\s*$")


def main(path):
    total = defaultdict(float)
    count = defaultdict(int)
    unmeasured = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = LINE.match(line)
            if not m:
                unmeasured += "not measured" in line
                continue
            ms = float(m.group(1)) * UNITS[m.group(2)]
            # Kernel names carry generics and ids; the part before the first '<' or '(' groups them.
            name = re.split(r"[<(]", m.group(3), maxsplit=1)[0].strip()[:90]
            total[name] += ms
            count[name] += 1
    launches = sum(count.values())
    gpu_ms = sum(total.values())
    print(f"{launches} launches, {gpu_ms:.1f} ms GPU time, {unmeasured} not measured")
    print(f"{'GPU ms':>10} {'launches':>9} {'mean us':>9}  kernel")
    for name, ms in sorted(total.items(), key=lambda kv: -kv[1]):
        print(f"{ms:10.2f} {count[name]:9d} {1e3 * ms / count[name]:9.1f}  {name}")


if __name__ == "__main__":
    main(sys.argv[1])
