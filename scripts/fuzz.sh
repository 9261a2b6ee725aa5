#!/usr/bin/env bash
# make fuzz: builds the libFuzzer targets of fuzz/ (cargo-fuzz on the stable
# toolchain: RUSTC_BOOTSTRAP=1, no sanitizer) and runs each for
# FUZZ_SECONDS (default 60), starting from the seeds in fuzz/corpus/TARGET
# and keeping what it finds in target/fuzz-corpus/TARGET. Prints a table of
# runs and crashes per target; a crash leaves its input in
# fuzz/artifacts/TARGET/ and fails the run (add the input to
# fuzz/corpus/TARGET/ as a regression seed once fixed: `make unit` replays
# every seed).
#   scripts/fuzz.sh [TARGET...]
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
seconds="${FUZZ_SECONDS:-60}"
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked --quiet cargo-fuzz --version 0.13.2

cd "$here/fuzz"
mapfile -t all < <(cargo fuzz list)
targets=("${@:-${all[@]}}")
cargo fuzz build --sanitizer none -O >&2

failed=0
report="| target | seconds | runs | runs/s | corpus | crashes |"$'\n'"|---|---|---|---|---|---|"
for t in "${targets[@]}"; do
    corpus="$here/target/fuzz-corpus/$t"
    mkdir -p "$corpus"
    cp -n "$here/fuzz/corpus/$t/"* "$corpus/" 2>/dev/null || true
    log="$here/target/fuzz-corpus/$t.log"
    status=0
    cargo fuzz run --sanitizer none -O "$t" "$corpus" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 >"$log" 2>&1 || status=$?
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    runs=${runs:-0}
    files=$(find "$corpus" -type f | wc -l)
    crashes=0
    if [ "$status" -ne 0 ]; then
        crashes=1
        failed=1
        printf 'fuzz: %s crashed; see %s and fuzz/artifacts/%s/\n' "$t" "$log" "$t" >&2
    fi
    report+=$'\n'"| $t | $seconds | $runs | $((runs / seconds)) | $files | $crashes |"
done
printf '%s\n' "$report"
exit "$failed"
