#!/usr/bin/env bash
# Builds the page into dist/ without Trunk: what `trunk build --release` does for this page (the
# wasm crate built as a worker module with wasm-bindgen --target web, named meacap-web, plus the
# page files copied as they are). CI uses it to save Trunk's ~10-minute install on a cold machine;
# `trunk build --release` (Trunk.toml) gives the same dist/.
# Usage: scripts/build-web.sh [DIST]   (needs wasm-bindgen on PATH: eval "$(scripts/web-tools.sh)")
set -euo pipefail
cd "$(dirname "$0")/.."
dist="${1:-dist}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${MEACAP_CACHE:-$HOME/.cache/meacap-wgpu}/target}"
cargo build --release --target wasm32-unknown-unknown -p meacap-web
rm -rf "$dist.tmp" && mkdir -p "$dist.tmp"
wasm-bindgen --target web --no-typescript --out-name meacap-web --out-dir "$dist.tmp" \
  "$CARGO_TARGET_DIR/wasm32-unknown-unknown/release/meacap_web.wasm"
cp web/index.html web/app.js web/worker.js web/sw.js web/style.css "$dist.tmp/"
# Trunk removes its own <link data-trunk> tags; do the same so the page does not ask for them.
sed -i '/<link data-trunk /d' "$dist.tmp/index.html"
rm -rf "$dist" && mv "$dist.tmp" "$dist"
echo "built $dist/ ($(du -sh "$dist" | cut -f1))"
