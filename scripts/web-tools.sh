#!/usr/bin/env bash
# Installs (once) what the browser build and tests need, into $MEACAP_CACHE/tools (outside the
# clone, so CI and later runs reuse them), and prints the PATH line to use them:
#   - the wasm32 Rust target;
#   - wasm-bindgen-cli at exactly the wasm-bindgen version in Cargo.lock (also the test runner);
#   - Trunk 0.21.14 when MEACAP_WITH_TRUNK=1 (0.22 needs a newer rustc), without TLS or update
#     checks: it never downloads;
#   - Debian chromium + chromium-driver (headless WebGPU through SwiftShader);
#   - playwright-core (drives Chromium for the end-to-end test; it downloads no browser).
# Usage: eval "$(scripts/web-tools.sh)"
set -euo pipefail
cd "$(dirname "$0")/.."
MEACAP_CACHE="${MEACAP_CACHE:-$HOME/.cache/meacap-wgpu}"
tools="$MEACAP_CACHE/tools"
mkdir -p "$tools"
log() { echo "== $*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown || {
  log "adding the wasm32-unknown-unknown target"
  rustup target add wasm32-unknown-unknown >&2
}

bindgen_version=$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/version = |"/, ""); print; exit}' Cargo.lock)
if [ "$("$tools/bin/wasm-bindgen" --version 2>/dev/null | awk '{print $2}')" != "$bindgen_version" ]; then
  log "installing wasm-bindgen-cli $bindgen_version (once; a few minutes)"
  # Not --locked: its lockfile pins a webpki-roots the registry may not have yet.
  cargo install -q wasm-bindgen-cli --version "$bindgen_version" --root "$tools" >&2
fi

# Trunk is for people building the page by hand; the tests use scripts/build-web.sh (the same
# output) unless MEACAP_WITH_TRUNK=1.
if [ "${MEACAP_WITH_TRUNK:-0}" = 1 ] && [ "$("$tools/bin/trunk" --version 2>/dev/null | awk '{print $2}')" != "0.21.14" ]; then
  log "installing trunk 0.21.14 (once; ~10 minutes)"
  cargo install -q trunk --version 0.21.14 --locked --no-default-features --root "$tools" >&2
fi

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  log "installing Debian chromium and chromium-driver"
  as_root apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
fi

if [ ! -f "$tools/node/node_modules/playwright-core/package.json" ]; then
  log "installing playwright-core"
  mkdir -p "$tools/node"
  (cd "$tools/node" && npm install --silent --no-audit --no-fund playwright-core@1 >&2)
fi

echo "export PATH=\"$tools/bin:\$PATH\"; export NODE_PATH=\"$tools/node/node_modules\""
