#!/usr/bin/env bash
# Long crash campaigns for the scheduler and the streaming engine, beyond the 20 (10 for each
# Kafka sink) kills and the four cluster faults the test suite runs. The first four kill a job at
# random moments COUNT times against the test broker (Apache Kafka by default), restart it each
# time, and check:
#   scheduler   committed ranges cover every offset of 8 partitions exactly once
#   files       the clickstream job's JSON-lines output is byte-identical to a run without crashes
#   kafka       the clickstream job writing to Kafka loses nothing (duplicates counted)
#   txn         ... with transactions, each record committed once
# The last leaves the job running and breaks the cluster under it instead:
#   cluster     COUNT random faults on a three-node Kafka cluster (a partition's leader or any node
#               killed with SIGKILL, or a node stopped cleanly, each started again after 0.5-5 s;
#               or every connection to a node cut, or frozen, by the proxy in front of it) while
#               a job reads from it and a producer writes to it, both through the proxies: every
#               record read exactly once; prints the longest stall each kind of fault caused
#   scaleout    the clickstream job with [scale] on a three-node Kafka cluster while a million
#               clicks arrive, COUNT random faults among one to four `sluice run` processes (one
#               killed with SIGKILL, started afresh or on a dead one's checkpoint, or stopped
#               with SIGTERM): its read_committed top items equal a single process's (the suite
#               runs 20)
#
#   scripts/crash-test.sh COUNT [scheduler|files|kafka|txn|cluster|scaleout|all]   (default: 200
#   all; "all" runs COUNT/4 cluster faults, each takes about 15 s, and COUNT/4 scale-out faults)
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
[ -d .peers/kafka/lib ] && [ -x .peers/bin/tansu ] || scripts/install-peers.sh

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
  txn|all) kafka_rounds killed_with_the_transactional_kafka_sink_each_record_is_committed_exactly_once ;;&
  cluster|all)
    faults=$count
    [ "$which" = all ] && faults=$(( (count + 3) / 4 ))
    SLUICE_CLUSTER_FAULTS=$faults cargo test --release -p sluice-scheduler --test cluster -- \
      --exact a_job_reads_every_record_exactly_once_through_a_leader_kill_and_a_rolling_restart --nocapture ;;&
  scaleout|all)
    faults=$count
    [ "$which" = all ] && faults=$(( (count + 3) / 4 ))
    SLUICE_SCALE_FAULTS=$faults cargo test --release -p sluice-cli --test scale_out -- \
      --exact random_kills_starts_and_stops_leave_the_clickstream_top_items_as_a_single_processs --nocapture ;;
  scheduler|files|kafka|txn|cluster) ;;
  *) echo "unknown campaign: $which (scheduler, files, kafka, txn, cluster, scaleout or all)" >&2; exit 2 ;;
esac
