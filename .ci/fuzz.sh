#!/usr/bin/env bash
# Runs portalock's cargo-fuzz targets for a short while each.
#
#   .ci/fuzz.sh [TARGET...]        (default: owner_record)
#
# FUZZ_SECONDS (default 30) bounds each target's run. Each target starts from
# a copy of its seed corpus in fuzz/corpus/TARGET, so the repository's corpus
# is never modified. Prints `fuzz TARGET: N runs, no crash` per target and
# fails as soon as a fuzzer fails (a crash is saved under fuzz/artifacts/).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR=never

seconds="${FUZZ_SECONDS:-30}"
if [ $# -eq 0 ]; then
    set -- owner_record
fi

# cargo-fuzz needs a nightly toolchain (for -Zsanitizer).
if ! rustup toolchain list | grep -q nightly; then
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --help >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

for target in "$@"; do
    corpus="$work/corpus-$target"
    log="$work/fuzz-$target.log"
    mkdir -p "$corpus"
    if [ -d "fuzz/corpus/$target" ]; then
        cp -R "fuzz/corpus/$target/." "$corpus/"
    fi
    # cargo-fuzz builds in fuzz/target and runs libFuzzer, which logs to
    # stderr; keep the log for the run count and show it on failure.
    if ! cargo +nightly fuzz run "$target" "$corpus" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 >"$log" 2>&1; then
        cat "$log" >&2
        echo "fuzz $target: FAILED (see output above; crash inputs go to fuzz/artifacts/$target/)" >&2
        exit 1
    fi
    runs="$(grep -Eo 'Done [0-9]+ runs' "$log" | tail -n 1 | grep -Eo '[0-9]+' || true)"
    if [ -z "$runs" ]; then
        cat "$log" >&2
        echo "fuzz $target: no 'Done N runs' line in libFuzzer's output" >&2
        exit 1
    fi
    echo "fuzz $target: $runs runs, no crash"
done
