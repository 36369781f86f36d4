#!/usr/bin/env bash
# The no-C promise: the shipped crates' normal and build dependencies (all features on) contain no
# `*-sys` crate and no C build step (cc, cmake, bindgen), and no C-backed crypto (ring, aws-lc,
# openssl). Dev-dependencies (benchmark and interop peers) may use C and are not checked.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
tree=$(cargo tree --workspace --all-features -e normal,build --prefix none --format '{p}')
bad=$(printf '%s\n' "$tree" | awk '{print $1}' | grep -E '(-sys$|^cc$|^cmake$|^bindgen$|^openssl|^ring$|^aws-lc)' | sort -u || true)
if [ -n "$bad" ]; then
    echo "no-C check FAILED: the shipped crates depend on: $(echo $bad | tr '\n' ' ')" >&2
    printf '%s\n' "$tree" | grep -E "$(echo $bad | tr ' ' '|')" | sort -u >&2
    exit 1
fi
echo "no-C check: ok ($(printf '%s\n' "$tree" | awk '{print $1}' | sort -u | wc -l) crates in normal+build dependencies, none -sys/cc/cmake/bindgen/ring/aws-lc/openssl)"
