#!/usr/bin/env bash
# The clickstream demo, end to end: a broker (started here unless one is given), a generated
# clickstream, the clickstream job file run by the sluice binary, the top items of each window
# shown as they are published, then a clean stop.
#
#   scripts/demo.sh [SECONDS] [BROKER]
#
#   SECONDS  how long clicks are generated and the job runs (default 120). Under 60 the job's
#            windows are scaled down (10 s windows sliding every 2 s, 1 s lateness, instead of
#            60 s / 10 s / 5 s) so that windows close within the run; CI runs `demo.sh 20`.
#   BROKER   host:port of a Kafka-protocol broker to use; when absent, one is started on free local
#            ports and stopped after: Apache Kafka 4.4 when Java 17+ is on the machine (its jars
#            fetched with Maven by scripts/install-peers.sh), Tansu 0.6.0 otherwise (from PyPI).
#
# Exits 0 when the job published top items and stopped cleanly on SIGTERM; non-zero otherwise.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds="${1:-120}"
broker="${2:-}"
case "$seconds" in ''|*[!0-9]*) echo "usage: $0 [SECONDS] [BROKER]" >&2; exit 2 ;; esac
step() { printf '\n=== %s\n' "$*"; }
die() { printf 'demo.sh: FAILED: %s\n' "$*" >&2; exit 1; }

work=$(mktemp -d)
pids=()
tansu_pid=""
kafka_dir=""
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -n "$tansu_pid" ] && scripts/tansu.sh stop "$tansu_pid" >/dev/null 2>&1 || true
    [ -n "$kafka_dir" ] && scripts/kafka.sh stop "$kafka_dir" >/dev/null 2>&1 || true
    rm -rf "$work"
}

# Java 17 or newer (Apache Kafka 4 needs it).
have_java17() {
    command -v java >/dev/null 2>&1 || return 1
    local v
    v="$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')"
    [ "${v:-0}" -ge 17 ] 2>/dev/null
}
trap cleanup EXIT

step "the sluice binary"
cargo build --release -p sluice-cli --quiet
sluice="${CARGO_TARGET_DIR:-target}/release/sluice"

if [ -z "$broker" ] && have_java17 && command -v mvn >/dev/null 2>&1; then
    step "a local broker: Apache Kafka 4.4 (KRaft, one node)"
    [ -f .peers/kafka/pom.sha ] || scripts/install-peers.sh
    kafka_dir="$work/kafka"
    scripts/kafka.sh start --dir "$kafka_dir" --watch $$ >"$work/kafka.info"
    broker="$(sed -n 's/^bootstrap //p' "$work/kafka.info")"
    echo "Apache Kafka 4.4.0 on $broker (pid $(sed -n 's/^node 1 \([0-9]*\) .*/\1/p' "$work/kafka.info"))"
elif [ -z "$broker" ]; then
    step "a local broker: Tansu 0.6.0 (no Java 17 and Maven here for Apache Kafka)"
    [ -x .peers/bin/tansu ] || scripts/install-peers.sh
    read -r port tansu_pid < <(scripts/tansu.sh start)
    broker="127.0.0.1:$port"
    echo "Tansu on $broker (pid $tansu_pid)"
fi
export SLUICE_BROKERS="$broker"

step "topics"
"$sluice" topics create clicks --partitions 4 || echo "(using the existing topic clicks)"
"$sluice" topics create top-items --partitions 1 || echo "(using the existing topic top-items)"

job="$work/clickstream.toml"
sed -e "s|^brokers = .*|brokers = [\"$broker\"]|" \
    -e "s|^dir = \"sluice-state/clickstream-top-items\"|dir = \"$work/checkpoint\"|" \
    crates/sluice-cli/jobs/clickstream.toml >"$job"
if [ "$seconds" -lt 60 ]; then
    sed -i -e 's|^length = "60s"|length = "10s"|' -e 's|^slide = "10s"|slide = "2s"|' \
        -e 's|^watermark = "5s"|watermark = "1s"|' -e 's|^idle_after = "10s"|idle_after = "2s"|' "$job"
    echo "a short run: 10 s windows sliding every 2 s (the job file says 60 s and 10 s)"
fi

step "generating 2,000 clicks/s for $seconds s, and running the job (crates/sluice-cli/jobs/clickstream.toml)"
"$sluice" generate -t clicks --rate 2000 --duration "${seconds}s" 2>"$work/generate.log" &
pids+=($!)
"$sluice" run "$job" >"$work/top-items.jsonl" 2>"$work/progress.log" &
job_pid=$!
pids+=($job_pid)

# Show each window's top items as the job publishes them.
show() {
    python3 -u -c '
import json, sys, time
window = None
for line in sys.stdin:
    row = json.loads(line)
    if (row["window_start"], row["window_end"]) != window:
        window = (row["window_start"], row["window_end"])
        fmt = lambda ms: time.strftime("%H:%M:%S", time.gmtime(ms / 1000))
        print(f"\ntop items {fmt(window[0])}-{fmt(window[1])} UTC:", end="")
    rank, item, clicks = row["rank"], row["item"], row["clicks"]
    print(f"  {rank}. {item} ({clicks})", end="", flush=True)
print()
'
}
# tail follows the job's output until the job exits; the display then ends on its own.
tail --pid="$job_pid" -n +1 -f "$work/top-items.jsonl" | show &
show_pid=$!

deadline=$(( $(date +%s) + seconds ))
while [ "$(date +%s)" -lt "$deadline" ]; do
    kill -0 "$job_pid" 2>/dev/null || { cat "$work/progress.log" >&2; die "the job stopped on its own"; }
    sleep 1
done
wait "${pids[0]}" || { cat "$work/generate.log" >&2; die "the generator failed"; }

step "stopping the job (SIGTERM: it stops once the batch under way commits)"
kill -TERM "$job_pid"
if ! wait "$job_pid"; then
    tail -20 "$work/progress.log" >&2
    die "the job did not stop cleanly"
fi
wait "$show_pid" || true
echo
tail -3 "$work/progress.log"
cat "$work/generate.log"

step "what was published"
rows=$(wc -l <"$work/top-items.jsonl")
windows=$(grep -c '"rank":1,' "$work/top-items.jsonl" || true)
echo "$windows windows, $rows top-item rows on stdout"
published=$("$sluice" consume -t top-items -o beginning -e | wc -l)
echo "$published records in the topic top-items"
"$sluice" offsets -t clicks
"$sluice" checkpoint inspect "$work/checkpoint" --batches 3
[ "$windows" -gt 0 ] || die "no window was published in $seconds s"
[ "$published" -ge "$rows" ] || die "the topic top-items has $published records, fewer than the $rows printed"
echo
echo "demo: ok"
