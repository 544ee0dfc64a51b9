#!/usr/bin/env bash
# Coverage-guided fuzzing of postgate's parsers with libFuzzer, on the
# STABLE toolchain (no cargo-fuzz, no nightly): libfuzzer-sys is ordinary
# stable Rust (it compiles libFuzzer's C++ with the system compiler), and
# the coverage instrumentation libFuzzer needs is LLVM's SanitizerCoverage
# pass, which stable rustc runs with `-C passes=sancov-module` plus LLVM
# options. What stable cannot do is `-Z sanitizer=address`; for safe Rust
# the crashes that matter (panics, overflow checks, debug assertions,
# aborts, timeouts, memory blow-up) are caught without it.
#
#   fuzz/run.sh                 build, then run every target 30 s
#   fuzz/run.sh data 600        run one target for 10 minutes
#   FUZZ_SECONDS=300 fuzz/run.sh
#   fuzz/run.sh --build-only
#
# New interesting inputs go to a scratch corpus (the seed corpus in
# fuzz/corpus/<target>/ is read, not written); a crash leaves its input in
# fuzz/artifacts/<target>/ and makes this script fail. Add a crashing input
# to fuzz/corpus/<target>/ once fixed, so every run replays it.
set -euo pipefail
cd "$(dirname "$0")"

TARGETS=(command data sasl proxy headers upstream_reply api_request)
SECONDS_PER_TARGET=${FUZZ_SECONDS:-30}
build_only=false
selected=()
if [ "${1:-}" = "--build-only" ]; then
  build_only=true
elif [ -n "${1:-}" ]; then
  selected=("$1")
  SECONDS_PER_TARGET=${2:-$SECONDS_PER_TARGET}
fi
[ ${#selected[@]} -gt 0 ] || selected=("${TARGETS[@]}")

# A target dir of its own: instrumented builds must not replace the
# ordinary ones (RUSTFLAGS differ for every crate).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}/fuzz"
export RUSTFLAGS="--cfg fuzzing -C debug-assertions -C overflow-checks \
 -C passes=sancov-module \
 -C llvm-args=-sanitizer-coverage-level=4 \
 -C llvm-args=-sanitizer-coverage-inline-8bit-counters \
 -C llvm-args=-sanitizer-coverage-pc-table \
 -C llvm-args=-sanitizer-coverage-trace-compares"
# With an explicit --target, RUSTFLAGS reach only the target's crates, not
# build scripts and proc macros (which must not be instrumented).
HOST=$(rustc -vV | sed -n 's/^host: //p')
echo "== building fuzz targets (release, SanitizerCoverage, $HOST)" >&2
# postgate's own lock file pins every shared dependency (mail-auth, the
# MSRV picks, ...): start from it, so fuzzing builds the versions the suite
# tests and a dependency added to postgate needs no second lock file.
# Cargo adds only libfuzzer-sys and its few crates to the copy.
cp ../Cargo.lock Cargo.lock
cargo build --release --bins --target "$HOST" 2>&1 | grep -v '^\s*Compiling' >&2 || { echo "fuzz build failed" >&2; exit 1; }
$build_only && exit 0

scratch=$(mktemp -d /tmp/postgate-fuzz.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
failed=()
for t in "${selected[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t" "$scratch/$t"
  echo "== fuzzing $t for ${SECONDS_PER_TARGET}s" >&2
  if ! "$CARGO_TARGET_DIR/$HOST/release/$t" "$scratch/$t" "corpus/$t" \
      -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 \
      -max_len=65536 -print_final_stats=1 -artifact_prefix="artifacts/$t/" \
      >"$scratch/$t.log" 2>&1; then
    tail -n 40 "$scratch/$t.log" >&2
    failed+=("$t")
  else
    grep -E '^(#[0-9]+.*DONE|stat::number_of_executed_units|stat::new_units_added)' "$scratch/$t.log" >&2 || true
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzzing found crashes in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
