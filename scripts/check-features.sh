#!/usr/bin/env bash
# The cargo feature combinations that matter, each built on its own (libraries only): every
# crate with no default features, and sluice-client (and its dependents) with each feature
# alone, so that a feature never leans on another without saying so. aws-lc-rs is left out
# (it builds C; see scripts/check-no-c.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
check() {
    echo "check-features: $*"
    # A warning (an import or helper unused in this combination) fails the check too.
    if cargo check --quiet --message-format short "$@" 2>&1 | grep -E "^(warning|error)"; then
        echo "check-features: FAILED with $*" >&2
        exit 1
    fi
}
for crate in sluice-protocol sluice-checkpoint sluice-client sluice-scheduler sluice-stream; do
    check --lib -p "$crate" --no-default-features
done
for feature in gzip snappy lz4 zstd; do
    check --lib -p sluice-protocol --no-default-features --features "$feature"
done
for feature in tls graviola rustcrypto sasl resolver gzip; do
    check --lib -p sluice-client --no-default-features --features "$feature"
done
check --lib -p sluice-client --no-default-features --features "rustcrypto,sasl,resolver"
check --lib -p sluice-stream --no-default-features --features "rustcrypto,sasl"
check --lib -p sluice-checkpoint --features testing
check --lib -p sluice-stream --features testing,demo
check --bins -p sluice-cli
echo "check-features: ok"
