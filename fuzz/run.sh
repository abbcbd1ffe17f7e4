#!/usr/bin/env bash
# Runs kiln's cargo-fuzz targets, each for a bounded time, one after the other.
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]      (default: 120 s, every target)
#
# Installs what is missing (a nightly toolchain, cargo-fuzz), builds the targets with
# AddressSanitizer, debug assertions and overflow checks, and runs each one from its seeds
# (fuzz/seeds/<target>/) and its working corpus, with a dictionary of the tokens its format
# and kiln know (fuzz/dicts/<target>.dict). A panic, a sanitizer report, an allocation
# over -malloc_limit_mb, a resident set over -rss_limit_mb or an input slower than -timeout
# seconds is a failure: libFuzzer saves the input under the artifacts directory, and this
# script goes on with the next target and exits non-zero at the end.
#
# Environment: KILN_FUZZ_WORK (/var/tmp/kiln-fuzz) holds the working corpora, the artifacts and
# one log per target; KILN_FUZZ_TARGET_DIR (/var/tmp/kiln-fuzz-target) is the build directory.
# Reproduce a failure with `cargo +nightly fuzz run TARGET ARTIFACT`.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-120}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(predict infer dataset_csv dataset_json job_spec)
fi
work="${KILN_FUZZ_WORK:-/var/tmp/kiln-fuzz}"
# With RUST_BACKTRACE set, candle captures a backtrace in every error it returns (about a
# second each under AddressSanitizer), which starves the job_spec target; libFuzzer prints
# the stack of a crash itself.
export RUST_BACKTRACE=0
# The dataset and job_spec targets write their inputs to files (kiln reads datasets from
# disk): each fuzzer process gets a scratch directory under here, not under /tmp.
export TMPDIR="$work/tmp"
mkdir -p "$TMPDIR"
target_dir="${KILN_FUZZ_TARGET_DIR:-/var/tmp/kiln-fuzz-target}"

if ! rustup toolchain list | grep -q '^nightly'; then
  rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
cargo +nightly fuzz build --target-dir "$target_dir"

failed=()
for t in "${targets[@]}"; do
  mkdir -p "$work/corpus/$t" "$work/artifacts/$t"
  echo "== $t: $secs s =="
  # Inputs are at most 8 KiB (-max_len): an allocation of 512 MiB from one is an unbounded one.
  if cargo +nightly fuzz run --target-dir "$target_dir" "$t" "$work/corpus/$t" "fuzz/seeds/$t" -- \
      -max_total_time="$secs" -dict="fuzz/dicts/$t.dict" -max_len=8192 \
      -rss_limit_mb=2048 -malloc_limit_mb=512 -timeout=10 \
      -artifact_prefix="$work/artifacts/$t/" -print_final_stats=1 >"$work/$t.log" 2>&1; then
    status=ok
  else
    status=FAILED
    failed+=("$t")
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$work/$t.log" | grep -o '[0-9]*$' || echo "?")
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$work/$t.log" | grep -o '[0-9]*$' || echo "?")
  rss=$(grep -o 'stat::peak_rss_mb: *[0-9]*' "$work/$t.log" | grep -o '[0-9]*$' || echo "?")
  cov=$(grep -o 'cov: [0-9]* ft: [0-9]*' "$work/$t.log" | tail -1 || echo "?")
  corpus=$(find "$work/corpus/$t" -type f | wc -l)
  echo "$t: $status; $runs executions ($rate/s), $cov, corpus $corpus inputs, peak RSS $rss MiB; log $work/$t.log"
  if [ "$status" = FAILED ]; then
    grep -E 'panicked|ERROR: libFuzzer|ERROR: AddressSanitizer|SUMMARY|Test unit written' "$work/$t.log" | head -8 || true
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]}"
  exit 1
fi
echo "every target ran $secs s without a failure"
