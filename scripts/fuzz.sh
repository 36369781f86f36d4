#!/usr/bin/env bash
# Fuzzing campaign: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
#   SLUICE_FUZZ_RUNS=N      also stop a target after N executions (whichever comes first)
#   SLUICE_FUZZ_SUMMARY=F   write the summary table to F instead of fuzz/last-run.md
#
# Runs every cargo-fuzz target under fuzz/ (or the ones named) for SECONDS_PER_TARGET (default 60)
# with libFuzzer, starting from seed corpora generated from fixtures/ and keeping what each run
# adds in fuzz/corpus/TARGET. Prints a summary table (target, executions, corpus files, crashes)
# and writes it to fuzz/last-run.md. A crash is minimised with `cargo fuzz tmin`, copied to
# fuzz/regressions/TARGET/ (replayed by plain `cargo test`), and makes the script fail.
#
# Uses the machine's Rust toolchain with RUSTC_BOOTSTRAP=1 if no nightly is installed, and installs
# cargo-fuzz if it is missing. Builds without a sanitizer (the fuzzed crates forbid unsafe code)
# but with debug assertions, so integer overflow is caught as a crash.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds="${1:-60}"
shift || true

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz"
    cargo install cargo-fuzz --locked --quiet
fi
if rustup run nightly rustc --version >/dev/null 2>&1; then
    toolchain=(+nightly)
else
    toolchain=()
    export RUSTC_BOOTSTRAP=1
fi
fuzz() { cargo "${toolchain[@]}" fuzz "$@"; }

if [ $# -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(fuzz list); fi

# The commit the targets are built from (recorded now: the tree may move on during a long run).
commit="$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- crates fuzz 2>/dev/null || echo '+changes')"
echo "fuzz.sh: generating seed corpora from fixtures/"
cargo run --quiet --release -p sluice-protocol --example fuzz_seeds -- fixtures fuzz/corpus
cargo run --quiet --release -p sluice-protocol --example fuzz_seeds -- fixtures/kafka-4.4 fuzz/corpus
echo "fuzz.sh: building ${#targets[@]} targets"
fuzz build --sanitizer none --debug-assertions

mkdir -p fuzz/logs
summary="| target | seconds (limit) | executions | corpus files | crashes |\n| --- | --- | --- | --- | --- |\n"
summary_file="${SLUICE_FUZZ_SUMMARY:-fuzz/last-run.md}"
failed=0
for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
    log="fuzz/logs/$target.log"
    set +e
    fuzz run --sanitizer none --debug-assertions "$target" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -runs="${SLUICE_FUZZ_RUNS:--1}" -rss_limit_mb=2048 -timeout=20 \
        -print_final_stats=1 >"$log" 2>&1
    status=$?
    set -e
    runs=$(grep -oE '^Done [0-9]+ runs' "$log" | awk '{print $2}' | tail -1 || true)
    took=$(grep -oE '^Done [0-9]+ runs in [0-9]+ second' "$log" | awk '{print $5}' | tail -1 || true)
    [ -n "$runs" ] || runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | awk '{print $2}' | tail -1 || true)
    corpus=$(find "fuzz/corpus/$target" -type f | wc -l)
    crashes=$(find "fuzz/artifacts/$target" -type f \( -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' \) | wc -l || true)
    if [ "$status" -ne 0 ] || [ "$crashes" -ne 0 ]; then
        failed=1
        echo "fuzz.sh: $target FAILED (exit $status); last lines of $log:"
        tail -25 "$log"
        for artifact in $(find "fuzz/artifacts/$target" -type f \( -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' \)); do
            mkdir -p "fuzz/regressions/$target"
            fuzz tmin --sanitizer none --debug-assertions "$target" "$artifact" >"$log.tmin" 2>&1 || true
            minimized=$(ls -t "fuzz/artifacts/$target"/minimized-from-* 2>/dev/null | head -1 || true)
            cp "${minimized:-$artifact}" "fuzz/regressions/$target/$(basename "$artifact")"
            echo "fuzz.sh: kept fuzz/regressions/$target/$(basename "$artifact") (commit it; cargo test replays it)"
        done
    fi
    summary+="| $target | ${took:-?} ($seconds) | ${runs:-?} | $corpus | $crashes |\n"
    printf 'fuzz.sh: %-24s %10s runs  %6s corpus  %s crashes\n' "$target" "${runs:-?}" "$corpus" "$crashes"
done
{
    echo "Fuzz run of $(date -u +%Y-%m-%d), targets built at commit $commit, ${seconds}s per target"
    echo
    printf "$summary"
} > "$summary_file"
echo
cat "$summary_file"
exit "$failed"
