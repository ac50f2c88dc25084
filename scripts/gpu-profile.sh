#!/usr/bin/env bash
# Where GPU time goes in the decoding loops: the wgpu bench of the decoders (timed as usual), then
# the same groups again with CubeCL's kernel profiler on (every launch timed on the GPU, which
# serialises them, so only the per-kernel split of this run means anything, not its wall time).
# Writes OUTDIR/bench-decoders.json and, per group, OUTDIR/kernels-GROUP.txt: launches and GPU
# time per kernel name, biggest first.
# Usage: scripts/gpu-profile.sh BIN OUTDIR [GROUPS...]   (default groups: viecap t5)
set -u
bin=$(realpath "$1"); out=$(realpath "$2"); shift 2
groups=("$@"); [ ${#groups[@]} -gt 0 ] || groups=(viecap t5)
summarise=$(realpath "$(dirname "$0")/profile-summary.py")
only=$(IFS=,; echo "${groups[*]}")
# TIMED=0 skips the timed bench (when scripts/gpu-check.sh ran the whole one just before).
if [ "${TIMED:-1}" != 0 ]; then
  "$bin" bench --device wgpu --only "$only" --repeat 3 --json > "$out/bench-decoders.json" 2> "$out/bench-decoders.err"
  echo "bench $only: exit $?"; grep -E '^  [A-Za-z]' "$out/bench-decoders.err"
fi
for g in "${groups[@]}"; do
  work=$(mktemp -d)
  # CubeCL reads cubecl.toml from the working directory (or a parent).
  printf '[profiling.logger]\nlevel = "basic"\nfile = "%s/profile.log"\nappend = false\n' "$work" > "$work/cubecl.toml"
  (cd "$work" && "$bin" bench --device wgpu --only "$g" --repeat 1 > /dev/null 2> "$work/bench.err")
  echo "profiled $g: exit $?, $(wc -l < "$work/profile.log") kernel lines"
  python3 "$summarise" "$work/profile.log" > "$out/kernels-$g.txt"
  xz -T0 -c "$work/profile.log" > "$out/profile-$g.log.xz"
  head -30 "$out/kernels-$g.txt"
done
