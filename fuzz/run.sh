#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 60) each, from a copy of the
# seed corpus (the committed corpus is not modified). Uses `cargo +nightly
# fuzz` (with AddressSanitizer) when installed; otherwise builds the same
# targets with stable rustc and libFuzzer's coverage instrumentation (no
# sanitizer: Rust code needs none for memory safety). Exits non-zero on the
# first crash, leaving the crashing input in fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-60}"
targets=(decode decode_validate config)
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if cargo +nightly fuzz --version >/dev/null 2>&1; then
  for t in "${targets[@]}"; do
    mkdir -p "$work/$t" && cp corpus/"$t"/* "$work/$t/"
    (cd .. && cargo +nightly fuzz run "$t" "$work/$t" -- -max_total_time="$seconds")
  done
  exit 0
fi

echo "fuzz/run.sh: no nightly cargo-fuzz; building the targets with stable rustc + libFuzzer coverage"
host="$(rustc -vV | sed -n 's/^host: //p')"
RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks" \
  cargo build --release --bins --target "$host"
for t in "${targets[@]}"; do
  mkdir -p "$work/$t" "artifacts/$t" && cp corpus/"$t"/* "$work/$t/"
  "target/$host/release/$t" "$work/$t" -max_total_time="$seconds" -artifact_prefix="artifacts/$t/"
done
