#!/usr/bin/env bash
# Long torture campaigns for crates/sluice-checkpoint, beyond what the test suite runs.
#
#   scripts/checkpoint-torture.sh exhaustive SIZE   truncation at every length and every bit
#                                                   flipped of a SIZE log (default 1M; 64K, 1M...)
#   scripts/checkpoint-torture.sh crashes COUNT     COUNT seeded power-loss crash points (default 100000)
#   scripts/checkpoint-torture.sh kills COUNT       COUNT SIGKILLs of a committing child (default 1000)
#   scripts/checkpoint-torture.sh all               the three with their defaults
#   scripts/checkpoint-torture.sh SIZE_OR_COUNT     a size (with K/M) runs exhaustive, a plain number crashes
#
# Failures print the seed that replays them. Builds in release mode; set CARGO_TARGET_DIR to
# keep out of another build's way.
set -euo pipefail
cd "$(dirname "$0")/.."

run() {
  local test_target=$1 test_name=$2
  shift 2
  env "$@" cargo test --release -p sluice-checkpoint --test "$test_target" -- \
    --ignored --exact "$test_name" --nocapture
}

exhaustive() {
  local size=${1:-1M}
  echo "== truncation and bit flips of a ${size} log"
  run exhaustive truncation_at_every_length_of_a_log_of_env_size SLUICE_TORTURE_BYTES="$size"
  run exhaustive bit_flips_of_a_log_of_env_size SLUICE_TORTURE_BYTES="$size"
}

crashes() {
  local count=${1:-100000}
  echo "== ${count} seeded power-loss crash points"
  run power_loss many_seeded_crash_points_from_env SLUICE_TORTURE_CRASHES="$count"
}

kills() {
  local count=${1:-1000}
  echo "== ${count} SIGKILLs"
  # Not an ignored test: the suite's SIGKILL test reads its count from the environment.
  SLUICE_TORTURE_KILLS="$count" cargo test --release -p sluice-checkpoint --test sigkill -- \
    --exact every_acknowledged_commit_survives_sigkill --nocapture
}

case "${1:-all}" in
  exhaustive) exhaustive "${2:-1M}" ;;
  crashes) crashes "${2:-100000}" ;;
  kills) kills "${2:-1000}" ;;
  all) exhaustive 1M; crashes 100000; kills 1000 ;;
  *[KkMm]) exhaustive "$1" ;;
  ''|*[!0-9]*) sed -n '2,12p' "$0"; exit 2 ;;
  *) crashes "$1" ;;
esac
