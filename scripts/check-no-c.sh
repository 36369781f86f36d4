#!/usr/bin/env bash
# The no-C promise: the shipped crates' normal and build dependencies contain no `*-sys` crate, no
# C build step (cc, cmake, bindgen) and no C-backed crypto (ring, aws-lc, openssl), with the
# default features and with every feature but `aws-lc-rs` (the opt-in TLS provider for users who
# accept C). Dev-dependencies (benchmark and interop peers) and sluice-testkit (the tests' harness,
# not published) may use C and are not checked. Also
# checks that `aws-lc-rs` really is the only way AWS-LC gets in, so the exception stays honest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bad_pattern='(-sys$|^cc$|^cmake$|^bindgen$|^openssl|^ring$|^aws-lc)'

tree_of() {
    cargo tree --workspace --exclude sluice-testkit -e normal,build --prefix none --format '{p}' "$@" | awk '{print $1}' | sort -u
}

# Every feature of the workspace's crates except `default` and `aws-lc-rs`, as `crate/feature`.
features=$(scripts/no-c-features.sh)

for what in default "all but aws-lc-rs"; do
    if [ "$what" = default ]; then tree=$(tree_of); else tree=$(tree_of --features "$features"); fi
    bad=$(printf '%s\n' "$tree" | grep -E "$bad_pattern" || true)
    if [ -n "$bad" ]; then
        echo "no-C check FAILED ($what features): the shipped crates depend on: $(echo $bad | tr '\n' ' ')" >&2
        exit 1
    fi
    echo "no-C check ($what features): ok ($(printf '%s\n' "$tree" | wc -l) crates in normal+build dependencies, none -sys/cc/cmake/bindgen/ring/aws-lc/openssl)"
done

with_aws=$(tree_of --features sluice-cli/aws-lc-rs)
if ! printf '%s\n' "$with_aws" | grep -qE '^aws-lc'; then
    echo "no-C check FAILED: the aws-lc-rs feature no longer brings AWS-LC in; fix the feature or this check" >&2
    exit 1
fi
echo "no-C check: C enters only with the opt-in aws-lc-rs feature ($(printf '%s\n' "$with_aws" | grep -E "$bad_pattern" | tr '\n' ' '))"
