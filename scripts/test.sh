#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs the peers (Apache Kafka 4.4 and the Java
# client, Tansu, librdkafka clients), checks formatting, lints, the no-C promise, the feature
# combinations, the minimum Rust version and the generated code, smoke-runs every fuzz target, builds the static binary and runs it in an empty chroot, runs
# the demo briefly, then runs every test in release mode against Apache Kafka (one broker with
# SASL and TLS listeners shared by the tests; tests that kill, restart or proxy a broker start
# their own), and an interop subset against Tansu. `.ci/run` calls exactly this.
#
#   scripts/test.sh                    everything
#   SLUICE_FUZZ_SECONDS=N scripts/test.sh   seconds per fuzz target in the smoke run (default 10; 0 skips)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
step() { printf '\n=== %s (at %s s)\n' "$*" "$SECONDS"; }

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

step "feature combinations (scripts/check-features.sh)"
scripts/check-features.sh

step "minimum supported Rust version: the workspace checks with the rust-version it declares"
msrv=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
rustup toolchain install "$msrv" --profile minimal --no-self-update >/dev/null
CARGO_TARGET_DIR=target/msrv cargo "+$msrv" check --workspace --lib --bins

step "clippy"
# Every feature but aws-lc-rs, the opt-in provider whose C build CI has no need to pay for.
features=$(scripts/no-c-features.sh)
cargo clippy --workspace --all-targets --features "$features" -- -D warnings

fuzz_seconds="${SLUICE_FUZZ_SECONDS:-10}"
if [ "$fuzz_seconds" != 0 ]; then
    step "fuzz smoke: every target ${fuzz_seconds}s"
    scripts/fuzz.sh "$fuzz_seconds"
fi

step "the static binary: static, size, start-up time, and run in an empty chroot by host name"
scripts/build-static.sh --chroot

step "the demo, short (scripts/demo.sh 20)"
scripts/demo.sh 20

step "tests (release) against Apache Kafka 4.4"
kafka_dir="$(mktemp -d "${TMPDIR:-/tmp}/sluice-test-kafka.XXXXXX")"
trap 'scripts/kafka.sh stop "$kafka_dir" >/dev/null 2>&1 || true' EXIT
scripts/kafka.sh start --sasl --tls --heap 768m --dir "$kafka_dir" --watch $$
# --show-output: what tests print about the brokers (and any skip, with its reason) must be seen.
SLUICE_TEST_BROKER=kafka SLUICE_TEST_KAFKA_DIR="$kafka_dir" cargo test --workspace --release --no-fail-fast -- --show-output \
    2>&1 | tee "$kafka_dir/test.log"
if grep -n "SKIPPED" "$kafka_dir/test.log"; then
    echo "test.sh: a test skipped against Apache Kafka (above); nothing may skip there" >&2
    exit 1
fi
scripts/kafka.sh stop "$kafka_dir"

step "interop subset against Tansu 0.6.0 (a second broker implementation)"
# --workspace with the test targets named: the crates are built with the same features as above,
# so nothing is compiled again (selecting packages with -p would build them anew).
SLUICE_TEST_BROKER=tansu cargo test --release --workspace \
    --test client --test connection --test producer --test consumer --test transactions \
    --test group --test group_interop --test interop --test sasl --test tls \
    --test scheduler --test kafka_sink --test job -- --show-output

echo "test.sh: every step passed in $SECONDS s"
