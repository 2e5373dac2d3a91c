#!/usr/bin/env bash
# The crash-safety proofs `npm test` runs after the unit, integration and JS tests:
#   1. the seeded crash simulator, CRASH_SIM_CASES cases (default 10,000; the long mode is
#      `npm run crash-sim -- --cases 1000000`);
#   2. a short smoke of each fuzz target (docs/FUZZING.md), SMOKE_SECONDS each.
# The FUSE runs are part of `cargo test` (they print SKIPPED with the reason when FUSE
# is not available).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cases="${CRASH_SIM_CASES:-10000}"
echo "proofs: crash simulator, $cases cases"
cargo run --profile sim -q -p doublewrite-crash-sim -- --cases "$cases"

if [ "${SKIP_FUZZ_SMOKE:-}" = "1" ]; then
  echo "proofs: fuzz smoke SKIPPED (SKIP_FUZZ_SMOKE=1)"
  exit 0
fi
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "proofs: fuzz smoke SKIPPED: no nightly toolchain (cargo-fuzz needs one)"
  exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "proofs: installing cargo-fuzz"
  cargo install cargo-fuzz --locked -q
fi
SMOKE_SECONDS="${SMOKE_SECONDS:-10}" bash crates/doublewrite/fuzz/smoke.sh
