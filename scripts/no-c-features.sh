#!/usr/bin/env bash
# Prints every feature of the workspace's crates but `default` and `aws-lc-rs` (the opt-in TLS
# provider built from C), as `crate/feature,...`: what the no-C check and clippy build with.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo metadata --no-deps --format-version 1 | python3 -c '
import json, sys
meta = json.load(sys.stdin)
print(",".join(sorted(p["name"] + "/" + f for p in meta["packages"] for f in p["features"] if f not in ("default", "aws-lc-rs"))))'
