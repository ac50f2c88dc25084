#!/usr/bin/env bash
# A short check of the wgpu path on a real GPU: the tiny-model pipeline in four modes against the
# reference captions, then the full-size benchmark on the GPU and the CPU.
# Usage: scripts/gpu-check.sh BIN OUTDIR   (BIN: a meacap-wgpu binary built on this commit)
# Environment: DEVICE (captions; default wgpu), BENCH_DEVICE (default all; "none" skips the bench).
set -u
bin=$(realpath "$1"); out=$(realpath "$2")
device=${DEVICE:-wgpu}; bench_device=${BENCH_DEVICE:-all}
here=$(cd "$(dirname "$0")" && pwd)
fx=$(pwd)/tests/fixtures
work=$(mktemp -d)
mkdir -p "$work/checkpoints/train_coco" "$work/data/memory" "$work/images"
ln -s "$fx/clip" "$work/checkpoints/clip-vit-base-patch32"
ln -s "$fx/gpt2" "$work/checkpoints/gpt2"
ln -s "$fx/t5" "$work/checkpoints/flan-t5-base-VG-factual-sg"
ln -s "$fx/bert" "$work/checkpoints/all-MiniLM-L6-v2"
ln -s "$fx/viecap/coco_prefix-tiny.pt" "$work/checkpoints/train_coco/coco_prefix-0014.pt"
ln -s "$fx/memory/tiny" "$work/data/memory/coco"
# JPEGs as Pillow's decode, as in the parity test.
cp "$fx"/pipeline/images/*.png "$fx"/pipeline/decoded/*.png "$work/images/"
cd "$work"
for mode in default soft_prompt_first greedy only_hard_prompt; do
  case $mode in
    default) flags=();;
    soft_prompt_first) flags=(--soft-prompt-first);;
    greedy) flags=(--using-greedy-search);;
    only_hard_prompt) flags=(--only-hard-prompt);;
  esac
  "$bin" caption --offline --device "$device" --image-path images --json "${flags[@]}" > "$out/caption-$mode.jsonl" 2> "$out/caption-$mode.err"
  echo "caption $mode: exit $? ($(wc -l < "$out/caption-$mode.jsonl") images)"; tail -2 "$out/caption-$mode.err"
done
cd - >/dev/null
python3 "$here/compare-captions.py" "$out"
[ "$bench_device" = none ] && exit 0
"$bin" bench --device "$bench_device" --repeat 3 --json > "$out/bench.json" 2> "$out/bench.err"
echo "bench: exit $?"; grep -E '^  [A-Za-z]' "$out/bench.err"
