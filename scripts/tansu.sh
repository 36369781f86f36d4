#!/usr/bin/env bash
# Start or stop a Tansu 0.6.0 broker (memory storage) on loopback, for tests.
#
#   scripts/tansu.sh start [PORT]   start Tansu on 127.0.0.1:PORT (a free port if none given) in the
#                                   background, wait until the port accepts connections (10 s at most),
#                                   print "PORT PID" on stdout. Log: .peers/tansu-PORT.log
#   scripts/tansu.sh stop PID       stop that Tansu (SIGTERM, then SIGKILL after 5 s)
#
# Needs scripts/install-peers.sh to have run (.peers/bin/tansu). TANSU=/path/to/tansu overrides.
# Extra environment: TANSU_ADVERTISED_URL (default tcp://127.0.0.1:PORT), e.g. to put a proxy in front.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEERS="$ROOT/.peers"
TANSU="${TANSU:-$PEERS/bin/tansu}"

die() { printf 'tansu.sh: ERROR: %s\n' "$*" >&2; exit 1; }
usage() { printf 'usage: %s start [PORT] | stop PID\n' "$0" >&2; exit 2; }

free_port() {
    local py
    for py in "$PEERS/bin/python" python3; do
        if command -v "$py" >/dev/null 2>&1; then
            "$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
            return
        fi
    done
    die "no python to pick a free port; give PORT explicitly"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

cmd="${1:-}"
case "$cmd" in
start)
    [ $# -le 2 ] || usage
    [ -x "$TANSU" ] || die "no Tansu at $TANSU: run scripts/install-peers.sh"
    port="${2:-$(free_port)}"
    case "$port" in ''|*[!0-9]*) die "bad port '$port'";; esac
    port_open "$port" && die "port $port already accepts connections"
    mkdir -p "$PEERS"
    log="$PEERS/tansu-$port.log"
    advertised="${TANSU_ADVERTISED_URL:-tcp://127.0.0.1:$port}"
    # setsid + nohup: the broker outlives this script and is not hit by the caller's terminal signals.
    setsid nohup "$TANSU" broker \
        --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "$advertised" \
        --storage-engine memory://tansu/ \
        </dev/null >"$log" 2>&1 &
    pid=$!
    deadline=$(( $(date +%s%N) + 10000000000 ))
    until port_open "$port"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -20 "$log" >&2 || true
            die "Tansu exited before accepting connections on port $port (log: $log)"
        fi
        if [ "$(date +%s%N)" -ge "$deadline" ]; then
            kill "$pid" 2>/dev/null || true
            tail -20 "$log" >&2 || true
            die "Tansu did not accept connections on port $port within 10 s (log: $log)"
        fi
        sleep 0.05
    done
    printf '%s %s\n' "$port" "$pid"
    ;;
stop)
    [ $# -eq 2 ] || usage
    pid="$2"
    case "$pid" in ''|*[!0-9]*) die "bad pid '$pid'";; esac
    if ! kill -0 "$pid" 2>/dev/null; then
        printf 'tansu.sh: pid %s is not running\n' "$pid" >&2
        exit 0
    fi
    if [ -r "/proc/$pid/cmdline" ] && ! tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q tansu; then
        die "pid $pid is not a tansu process; not stopping it"
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || exit 0
        sleep 0.05
    done
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.1
    kill -0 "$pid" 2>/dev/null && die "pid $pid survived SIGKILL"
    exit 0
    ;;
*)
    usage
    ;;
esac
