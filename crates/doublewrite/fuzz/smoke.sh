#!/usr/bin/env bash
# CI smoke of the fuzz targets (docs/FUZZING.md): builds them, runs each for
# SMOKE_SECONDS (default 10) from the committed seeds in a throw-away corpus, and exits
# non-zero if any target crashes (a panic, a failed check, an allocation above the bound).
#
#   crates/doublewrite/fuzz/smoke.sh                      # nightly toolchain
#   FUZZ_TOOLCHAIN=stable RUSTC_BOOTSTRAP=1 crates/doublewrite/fuzz/smoke.sh
#   DOUBLEWRITE_FUZZ_STRICT=1 crates/doublewrite/fuzz/smoke.sh   # known findings fail too
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). Total: the build (86 s from scratch on a
# busy 2-core machine, about 55 s of CPU; seconds when fuzz/target is cached) plus
# 3 × SMOKE_SECONDS: 120 s in all from scratch.
set -uo pipefail
cd "$(dirname "$0")"

seconds="${SMOKE_SECONDS:-10}"
toolchain="+${FUZZ_TOOLCHAIN:-nightly}"
targets=(record dwb_file wal_segment)
flags=(--sanitizer none --debug-assertions)

started=$(date +%s)
if ! cargo "$toolchain" fuzz build "${flags[@]}"; then
    echo "smoke: build failed" >&2
    exit 2
fi
echo "smoke: build took $(( $(date +%s) - started )) s"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=()
for target in "${targets[@]}"; do
    mkdir -p "$work/$target"
    log="$work/$target.log"
    cargo "$toolchain" fuzz run "${flags[@]}" "$target" "$work/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -max_len=65536 -print_final_stats=1 >"$log" 2>&1
    status=$?
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$')
    cov=$(grep -oE '(DONE|INITED) +cov: [0-9]+ ft: [0-9]+' "$log" | tail -n 1)
    echo "smoke: $target: exit $status, ${runs:-?} executions, ${cov:-no coverage line}"
    if [ "$status" -ne 0 ]; then
        failed+=("$target")
        grep -E "panicked at|^(assertion|thread)|ERROR: libFuzzer|Failing input|artifacts/" "$log" \
            | head -n 20 >&2
    fi
done
echo "smoke: total $(( $(date +%s) - started )) s"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "smoke: FAILED: ${failed[*]} (crash inputs are in crates/doublewrite/fuzz/artifacts/)" >&2
    exit 1
fi
echo "smoke: ok"
