#!/usr/bin/env bash
# Long SIGKILL campaigns for the scheduler and the streaming engine, beyond the 20 (10 for each
# Kafka sink) kills the test suite runs. Each kills a job at random moments COUNT times against a
# Tansu broker the test starts, restarts it each time, and checks:
#   scheduler   committed ranges cover every offset of 8 partitions exactly once
#   files       the clickstream job's JSON-lines output is byte-identical to a run without crashes
#   kafka       the clickstream job writing to Kafka loses nothing (duplicates counted)
#   txn         ... with transactions, each record committed once
#
#   scripts/crash-test.sh COUNT [scheduler|files|kafka|txn|all]   (default: 200 all)
#
# (The Kafka campaigns run COUNT/10 rounds of about 10 kills each: a job writing to Kafka is not
# started afresh on the same topics.)
#
# Each run prints the seed that replays it (SLUICE_KILL_SEED=...). Installs the broker first if
# needed (scripts/install-peers.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-200}
which=${2:-all}
[ -x .peers/bin/tansu ] || scripts/install-peers.sh

stream() {
  SLUICE_STREAM_KILLS=$count cargo test --release -p sluice-stream --test clickstream -- --exact "$1" --nocapture
}
# A job writing to Kafka cannot start afresh on the same topics, so about 10 kills land before it
# finishes: COUNT kills are COUNT/10 rounds, each on a new broker.
kafka_rounds() {
  local round
  for round in $(seq 1 $(( (count + 9) / 10 ))); do
    echo "--- round $round"
    SLUICE_STREAM_KILLS=10 cargo test --release -p sluice-stream --test clickstream -- --exact "$1" --nocapture
  done
}
case $which in
  scheduler|all)
    SLUICE_SCHEDULER_KILLS=$count cargo test --release -p sluice-scheduler --test kill9 -- \
      --exact committed_ranges_cover_every_offset_once_across_sigkills --nocapture ;;&
  files|all) stream killed_and_restarted_the_job_leaves_output_byte_identical_to_a_run_without_crashes ;;&
  kafka|all) kafka_rounds killed_with_the_idempotent_kafka_sink_no_record_is_lost_and_duplicates_are_counted ;;&
  txn|all) kafka_rounds killed_with_the_transactional_kafka_sink_each_record_is_committed_exactly_once ;;
  scheduler|files|kafka) ;;
  *) echo "unknown campaign: $which (scheduler, files, kafka, txn or all)" >&2; exit 2 ;;
esac
