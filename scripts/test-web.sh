#!/usr/bin/env bash
# The browser tests (issue 5): builds the page with Trunk, runs the wasm-bindgen tests in headless
# Chromium (WebGPU through SwiftShader, and the CPU backend), then the end-to-end test of the
# built page (download, verify, store, caption, offline relaunch, corrupt store).
# Needs the native CLI built (scripts/test.sh builds it first); installs its tools once.
set -euo pipefail
cd "$(dirname "$0")/.."
export MEACAP_CACHE="${MEACAP_CACHE:-$HOME/.cache/meacap-wgpu}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$MEACAP_CACHE/target}"
eval "$(scripts/web-tools.sh)"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
status=0

echo "== building the page into dist/ (scripts/build-web.sh)"
scripts/build-web.sh dist

# Trunk is not installed by default (a ~10-minute build on a cold machine); where it is
# (MEACAP_WITH_TRUNK=1 scripts/web-tools.sh), check that `trunk build` gives the same page.
if [ "$(trunk --version 2>/dev/null | awk '{print $2}')" = "0.21.14" ]; then
  echo "== trunk build --release gives the same dist/"
  trunk_dist="$(mktemp -d)"
  trunk build --release --dist "$trunk_dist" >/dev/null
  diff <(ls dist) <(ls "$trunk_dist") || { echo "trunk's dist/ has other files"; status=1; }
  for f in $(ls dist | grep -v '^index.html$'); do
    cmp "dist/$f" "$trunk_dist/$f" || { echo "trunk's $f differs from scripts/build-web.sh's"; status=1; }
  done
  # Trunk leaves blank lines where its <link data-trunk> tags were.
  diff <(grep -v '^\s*$' dist/index.html) <(grep -v '^\s*$' "$trunk_dist/index.html") \
    || { echo "trunk's index.html differs"; status=1; }
  rm -rf "$trunk_dist"
else
  echo "== trunk 0.21.14 not installed: skipping the Trunk build check"
fi

echo "== wasm-bindgen tests in headless Chromium"
export CHROMEDRIVER="${CHROMEDRIVER:-$(command -v chromedriver)}"
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner
export WASM_BINDGEN_TEST_TIMEOUT="${WASM_BINDGEN_TEST_TIMEOUT:-3000}"
(cd crates/meacap-web && cargo test --release --target wasm32-unknown-unknown --test browser) || status=1

echo "== end-to-end test of dist/ (playwright-core + Debian chromium)"
cli="$CARGO_TARGET_DIR/release/meacap-wgpu"
[ -x "$cli" ] || cargo build --release -p meacap-cli
node web/tests/e2e.mjs --dist dist --cli "$cli" --fixtures tests/fixtures --out "$MEACAP_CACHE/e2e" \
  --backend "${MEACAP_E2E_BACKEND:-webgpu}" || status=1
exit $status
