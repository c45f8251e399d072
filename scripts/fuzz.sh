#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS (default 60) each, under
# AddressSanitizer (leaks included), on a temporary copy of its committed seed corpus,
# so fuzz/corpus keeps only the curated seeds. Targets run side by side, one per core
# (each fuzzer is single-threaded), so the whole run takes SECONDS per `nproc` targets. Prints the executions per target and
# fails on any crash, leak, out-of-memory or timeout, showing the input that caused it
# (kept in fuzz/artifacts/TARGET/). Installs cargo-fuzz if it is missing; needs nightly.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"
seconds=${1:-60}
export CARGO_TERM_COLOR=never

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
rustup toolchain list | grep -q '^nightly' || { echo "nightly toolchain missing (cargo fuzz needs it)"; exit 1; }

cargo +nightly fuzz build
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# fuzz TARGET: one target's run; its log in $work/TARGET.log, "ok" or "FAILED" in
# $work/TARGET.status.
fuzz() {
  local target=$1 corpus="$work/$1" status=ok
  mkdir -p "$corpus" "artifacts/$target"
  cp "corpus/$target"/seed-* "$corpus/"
  cargo +nightly fuzz run "$target" "$corpus" -- \
    -max_total_time="$seconds" -timeout=10 -print_final_stats=1 \
    -artifact_prefix="artifacts/$target/" >"$work/$target.log" 2>&1 || status=FAILED
  echo "$status" >"$work/$target.status"
}

targets=$(cargo +nightly fuzz list)
cores=$(nproc)
running=0
for target in $targets; do
  if [ "$running" -ge "$cores" ]; then wait -n || true; running=$((running - 1)); fi
  fuzz "$target" &
  running=$((running + 1))
done
wait

failed=0
for target in $targets; do
  log="$work/$target.log"
  status=$(cat "$work/$target.status" 2>/dev/null || echo FAILED)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  [ -n "$execs" ] || execs=$(sed -n 's/^#\([0-9]*\)[[:space:]]*DONE.*/\1/p' "$log" | tail -n 1)
  printf '%-16s %-6s %s executions in %ss\n' "$target" "$status" "${execs:-?}" "$seconds"
  if [ "$status" != ok ]; then
    failed=1
    grep -E 'ERROR: |panicked at|SUMMARY: ' "$log" | head -n 20 || tail -n 40 "$log"
    input=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
    if [ -n "$input" ] && [ -f "$input" ]; then
      echo "input: fuzz/$input (replay: cargo +nightly fuzz run $target $input)"
      od -A x -t x1z -v "$input" | head -n 64
    else
      tail -n 40 "$log"
    fi
  fi
done
exit "$failed"
