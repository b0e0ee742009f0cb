#!/usr/bin/env bash
# A short fuzzing run without nightly or cargo-fuzz: `bash fuzz/stable-smoke.sh [SECONDS]` builds
# both targets on the stable toolchain with libFuzzer's coverage instrumentation (the same
# SanitizerCoverage flags cargo-fuzz passes, all stable `-C` options) and runs each for SECONDS
# (default 60) from the seeds in fuzz/seeds/. No AddressSanitizer (that needs nightly's
# `-Zsanitizer`), which matters little here: the fuzzed code is safe Rust. Exits non-zero on the
# first crash, leaving the input in fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")"
SECS=${1:-60}
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
# --target keeps RUSTFLAGS off build scripts; a target dir of its own keeps these flags from
# invalidating a plain `cargo build`.
cargo build --release --target "$TRIPLE" --target-dir target/stable-sancov
for t in credentials token_response; do
    mkdir -p "corpus/$t" "artifacts/$t"
    echo "== $t: ${SECS}s" >&2
    "target/stable-sancov/$TRIPLE/release/$t" -max_total_time="$SECS" -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/" "corpus/$t" "seeds/$t"
done
