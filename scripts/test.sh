#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs the peers (Tansu broker, librdkafka clients),
# checks formatting, lints, the no-C promise and the generated code, smoke-runs every fuzz target,
# builds the static binary and runs it in an empty chroot, runs the demo briefly, then runs every
# test in release mode. `.ci/run` calls exactly this.
#
#   scripts/test.sh                    everything
#   SLUICE_FUZZ_SECONDS=N scripts/test.sh   seconds per fuzz target in the smoke run (default 10; 0 skips)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
step() { printf '\n=== %s\n' "$*"; }

step "peers (broker and reference clients)"
scripts/install-peers.sh

step "formatting"
cargo fmt --all --check

step "generated message codecs match Kafka's schemas"
spec="../shared/kafka-spec/message"
if [ -d "$spec" ]; then
    python3 scripts/codegen/gen_messages.py --check --spec "$spec"
else
    echo "skipped: $spec is not beside this checkout, so the generated code cannot be compared with it"
fi

step "no C in the shipped crates"
scripts/check-no-c.sh

step "clippy"
cargo clippy --workspace --all-targets --all-features -- -D warnings

fuzz_seconds="${SLUICE_FUZZ_SECONDS:-10}"
if [ "$fuzz_seconds" != 0 ]; then
    step "fuzz smoke: every target ${fuzz_seconds}s"
    scripts/fuzz.sh "$fuzz_seconds"
fi

step "the static binary: static, size, start-up time, and run in an empty chroot by host name"
scripts/build-static.sh --chroot

step "the demo, short (scripts/demo.sh 20)"
scripts/demo.sh 20

step "tests (release)"
# --show-output: tests that skip a check the broker cannot support print why, and that must be seen.
cargo test --workspace --release -- --show-output
