#!/usr/bin/env bash
# Start or stop Apache Kafka 4.4 in KRaft mode on loopback (one node, or a cluster), for tests,
# benchmarks and the demo. The jars come from scripts/install-peers.sh (.peers/kafka/lib).
#
#   scripts/kafka.sh start [OPTIONS]
#       --nodes N        N nodes, each a combined broker and controller (default 1); topics get
#                        min(N, 3) replicas, and min.insync.replicas is 2 when they have more than one
#       --sasl           a SASL_PLAINTEXT listener per node, "sasl": PLAIN, SCRAM-SHA-256 and
#                        SCRAM-SHA-512, user "alice" with password "alice-secret" (all three); and
#                        one, "sasl_scram", offering SCRAM-SHA-512 only; a SASL session lasts 5 s
#                        (connections.max.reauth.ms), so clients must log in again (KIP-368)
#       --tls            two TLS listeners per node, server certificate from a test CA made here
#                        (DIR/tls/ca.pem): "tls" (no client certificate) and "mtls" (a client
#                        certificate signed by the CA required: DIR/tls/client.{pem,key})
#       --sasl --tls     also a SASL_SSL listener per node, "sasl_tls": PLAIN, SCRAM-SHA-256,
#                        SCRAM-SHA-512 (alice as above) and OAUTHBEARER (Kafka's unsecured
#                        validator: an unsigned JWT, "alg":"none", with "sub" and "exp" claims)
#       --dir DIR        keep everything in DIR (default: a new temporary directory)
#       --heap SIZE      JVM heap per node (default 512m)
#       --watch PID      stop the nodes and remove DIR once process PID has exited (a test process
#                        that may not get to stop them itself)
#       --config K=V     an extra server property for every node (repeatable)
#       --external ADDR,...  one more listener per node, "EXTERNAL", node i's advertised as the
#                        i-th ADDR (a proxy in front of each node; inter-broker traffic stays on
#                        PLAINTEXT); prints "external 127.0.0.1:PORT,...", the addresses the
#                        proxies forward to
#     Formats storage, starts the nodes on free loopback ports, and waits (60 s at most) until every
#     node answers ApiVersions and the metadata lists every broker. Prints, one per line:
#       bootstrap HOST:PORT,...        the PLAINTEXT listeners
#       sasl HOST:PORT,...             with --sasl (and "sasl_scram HOST:PORT,...")
#       tls HOST:PORT,...  / mtls ...  with --tls; then "ca FILE", "client_cert FILE", "client_key FILE"
#       sasl_tls HOST:PORT,...         with --sasl and --tls
#       dir DIR
#       node ID PID PORT               one line per node (PORT: its PLAINTEXT listener)
#     The same lines are kept in DIR/info. Each node's log is DIR/node-ID/server.log; DIR/node-ID/run restarts a stopped node on the same
#     ports with the same storage.
#   scripts/kafka.sh stop DIR          stop every node of DIR (SIGTERM, SIGKILL after 20 s) and remove DIR
#   scripts/kafka.sh kill DIR ID       SIGKILL node ID (a crash); "DIR/node-ID/run" starts it again
#   scripts/kafka.sh stop-node DIR ID  stop node ID cleanly (SIGTERM: a controlled shutdown that
#                                      moves its leaderships first; SIGKILL after 30 s), as a
#                                      rolling restart does; "restart" starts it again
#   scripts/kafka.sh restart DIR ID    start node ID again (after kill), wait until it answers
#
# Needs Java 17+ and the jars (scripts/install-peers.sh). KAFKA_LIB=DIR overrides where the jars are.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LIB="${KAFKA_LIB:-$ROOT/.peers/kafka/lib}"
USER_NAME=alice
USER_PASSWORD=alice-secret

die() { printf 'kafka.sh: ERROR: %s\n' "$*" >&2; exit 1; }
log() { printf 'kafka.sh: %s\n' "$*" >&2; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2; }

# N distinct free loopback ports, one per line.
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print("\n".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# Waits until the node on PORT answers ApiVersions and its Metadata lists WANT brokers. Exit 0 when
# it does, 1 if not within SECONDS.
probe() {
    python3 - "$1" "$2" "$3" <<'EOF'
import socket, struct, sys, time
port, want, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])

def request(sock, key, version, body):
    client = b"kafka.sh"
    message = struct.pack(">hhih", key, version, 1, len(client)) + client + body
    sock.sendall(struct.pack(">i", len(message)) + message)
    size = struct.unpack(">i", read(sock, 4))[0]
    return read(sock, size)[4:]  # past the correlation id

def read(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("closed")
        data += chunk
    return data

deadline = time.time() + seconds
while True:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            api = request(sock, 18, 0, b"")
            if struct.unpack(">h", api[:2])[0] == 0:
                # Metadata v1 with no topics: the brokers array comes first.
                meta = request(sock, 3, 1, struct.pack(">i", 0))
                if struct.unpack(">i", meta[:4])[0] >= want:
                    sys.exit(0)
    except (OSError, EOFError, struct.error):
        pass
    if time.time() > deadline:
        sys.exit(1)
    time.sleep(0.2)
EOF
}

# Starts node ID of DIR in the background (its run script) and records its PID.
launch() {
    local dir="$1" id="$2"
    setsid nohup "$dir/node-$id/run" </dev/null >>"$dir/node-$id/server.log" 2>&1 &
    echo $! >"$dir/node-$id/pid"
}

# Makes a test CA, a server certificate for 127.0.0.1/localhost and a client certificate in DIR,
# with the PEM key stores Kafka reads (key and certificate chain in one file).
make_tls() {
    local dir="$1"
    mkdir -p "$dir"
    (
        cd "$dir"
        local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
        openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.pem -days 30 -subj "/CN=sluice test CA" 2>/dev/null
        printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n' >server.ext
        printf 'extendedKeyUsage=clientAuth\n' >client.ext
        for who in server client; do
            openssl req "${ec[@]}" -keyout "$who.key.raw" -out "$who.csr" -subj "/CN=sluice-test-$who" 2>/dev/null
            openssl pkcs8 -topk8 -nocrypt -in "$who.key.raw" -out "$who.key"
            openssl x509 -req -in "$who.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -out "$who.pem" \
                -days 30 -extfile "$who.ext" 2>/dev/null
            cat "$who.key" "$who.pem" >"$who.keystore.pem"
        done
        rm -f ./*.csr ./*.raw ./*.ext ca.srl
    ) || die "could not make the test certificates with openssl"
}

cmd_start() {
    local nodes=1 sasl=0 tls=0 dir="" heap=512m watch="" external="" extra=()
    while [ $# -gt 0 ]; do
        case "$1" in
            --nodes) nodes="$2"; shift 2 ;;
            --sasl) sasl=1; shift ;;
            --tls) tls=1; shift ;;
            --dir) dir="$2"; shift 2 ;;
            --heap) heap="$2"; shift 2 ;;
            --watch) watch="$2"; shift 2 ;;
            --config) extra+=("$2"); shift 2 ;;
            --external) external="$2"; shift 2 ;;
            *) usage ;;
        esac
    done
    case "$nodes" in ''|*[!0-9]*|0) die "bad --nodes '$nodes'" ;; esac
    local externals=()
    if [ -n "$external" ]; then
        IFS=, read -r -a externals <<<"$external"
        [ "${#externals[@]}" = "$nodes" ] || die "--external needs one address per node ($nodes)"
    fi
    command -v java >/dev/null 2>&1 || die "java not found (Kafka 4.4 needs Java 17 or newer)"
    [ -f "$LIB/kafka_2.13-4.4.0.jar" ] || die "no Kafka jars in $LIB: run scripts/install-peers.sh"
    if [ -z "$dir" ]; then
        dir="$(mktemp -d "${TMPDIR:-/tmp}/sluice-kafka.XXXXXX")"
    fi
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"

    # Ports: PLAINTEXT, CONTROLLER, and SASL / TLS / MTLS listeners when asked for.
    local per=2
    [ "$sasl" = 1 ] && per=$((per + 2))
    [ "$tls" = 1 ] && per=$((per + 2))
    [ "$sasl" = 1 ] && [ "$tls" = 1 ] && per=$((per + 1))
    [ -n "$external" ] && per=$((per + 1))
    mapfile -t ports < <(free_ports $((nodes * per)))
    local external_ports=() plain=() controller=() sasl_ports=() scram_ports=() tls_ports=() mtls_ports=() sasl_tls_ports=() voters="" i j
    for ((i = 0; i < nodes; i++)); do
        j=$((i * per))
        plain+=("${ports[j]}")
        controller+=("${ports[j + 1]}")
        j=$((j + 2))
        if [ "$sasl" = 1 ]; then sasl_ports+=("${ports[j]}"); scram_ports+=("${ports[j + 1]}"); j=$((j + 2)); fi
        if [ "$tls" = 1 ]; then tls_ports+=("${ports[j]}"); mtls_ports+=("${ports[j + 1]}"); j=$((j + 2)); fi
        if [ "$sasl" = 1 ] && [ "$tls" = 1 ]; then sasl_tls_ports+=("${ports[j]}"); j=$((j + 1)); fi
        if [ -n "$external" ]; then external_ports+=("${ports[j]}"); fi
        voters+="${voters:+,}$((i + 1))@127.0.0.1:${controller[i]}"
    done
    [ "$tls" = 1 ] && make_tls "$dir/tls"

    local rf=$((nodes < 3 ? nodes : 3))
    local min_isr=$((rf > 1 ? 2 : 1))
    # A cluster id: 16 random bytes, URL-safe base64 without padding (what StorageTool random-uuid
    # prints), made here to spare a JVM start. Like Kafka's own Uuid.randomUuid, never one that
    # starts with '-', which the storage tool would take for an option (one id in 64 did).
    local cluster_id
    cluster_id="$(python3 -c '
import base64, os
while True:
    id = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
    if not id.startswith("-"):
        print(id)
        break')"

    cat >"$dir/log4j2.properties" <<'EOF'
status = error
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = ${env:KAFKA_LOG_LEVEL:-WARN}
rootLogger.appenderRef.out.ref = out
logger.kafka.name = kafka
logger.kafka.level = ${env:KAFKA_LOG_LEVEL:-INFO}
logger.server.name = org.apache.kafka.server
logger.server.level = ${env:KAFKA_LOG_LEVEL:-INFO}
EOF

    for ((i = 0; i < nodes; i++)); do
        local id=$((i + 1)) node="$dir/node-$((i + 1))"
        mkdir -p "$node/data"
        local listeners="PLAINTEXT://127.0.0.1:${plain[i]},CONTROLLER://127.0.0.1:${controller[i]}"
        local advertised="PLAINTEXT://127.0.0.1:${plain[i]}"
        local protocols="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
        if [ "$sasl" = 1 ]; then
            listeners+=",SASL://127.0.0.1:${sasl_ports[i]},SCRAM://127.0.0.1:${scram_ports[i]}"
            advertised+=",SASL://127.0.0.1:${sasl_ports[i]},SCRAM://127.0.0.1:${scram_ports[i]}"
            protocols+=",SASL:SASL_PLAINTEXT,SCRAM:SASL_PLAINTEXT"
        fi
        if [ "$tls" = 1 ]; then
            listeners+=",TLS://127.0.0.1:${tls_ports[i]},MTLS://127.0.0.1:${mtls_ports[i]}"
            advertised+=",TLS://127.0.0.1:${tls_ports[i]},MTLS://127.0.0.1:${mtls_ports[i]}"
            protocols+=",TLS:SSL,MTLS:SSL"
        fi
        if [ "$sasl" = 1 ] && [ "$tls" = 1 ]; then
            listeners+=",SASL_TLS://127.0.0.1:${sasl_tls_ports[i]}"
            advertised+=",SASL_TLS://127.0.0.1:${sasl_tls_ports[i]}"
            protocols+=",SASL_TLS:SASL_SSL"
        fi
        if [ -n "$external" ]; then
            listeners+=",EXTERNAL://127.0.0.1:${external_ports[i]}"
            advertised+=",EXTERNAL://${externals[i]}"
            protocols+=",EXTERNAL:PLAINTEXT"
        fi
        {
            echo "process.roles=broker,controller"
            echo "node.id=$id"
            echo "controller.quorum.voters=$voters"
            echo "listeners=$listeners"
            echo "advertised.listeners=$advertised"
            echo "controller.listener.names=CONTROLLER"
            echo "inter.broker.listener.name=PLAINTEXT"
            echo "listener.security.protocol.map=$protocols"
            echo "log.dirs=$node/data"
            echo "num.partitions=1"
            echo "default.replication.factor=$rf"
            echo "offsets.topic.replication.factor=$rf"
            echo "offsets.topic.num.partitions=10"
            echo "transaction.state.log.replication.factor=$rf"
            echo "transaction.state.log.min.isr=$min_isr"
            echo "transaction.state.log.num.partitions=10"
            echo "min.insync.replicas=$min_isr"
            echo "group.initial.rebalance.delay.ms=0"
            # A transaction a dead process left open is aborted after its timeout at the next
            # sweep (every 10 s by default): every second, so that scale-out tests fail over fast.
            echo "transaction.abort.timed.out.transaction.cleanup.interval.ms=1000"
            # Consumer-protocol groups (KIP-848) take their sessions and heartbeat interval from
            # the broker (45 s and 5 s by default, which are also the floors): short ones, so
            # that a test sees a member that died fenced within seconds.
            echo "group.consumer.min.session.timeout.ms=6000"
            echo "group.consumer.session.timeout.ms=6000"
            echo "group.consumer.min.heartbeat.interval.ms=500"
            echo "group.consumer.heartbeat.interval.ms=500"
            echo "auto.create.topics.enable=false"
            echo "delete.topic.enable=true"
            echo "log.segment.bytes=67108864"
            # Test data carries old event times (a fixed generator epoch): no time-based retention,
            # so a run's records are not deleted under it after 5 minutes.
            echo "log.retention.ms=-1"
            # Small test brokers: few threads, quick shutdown.
            echo "num.network.threads=2"
            echo "num.io.threads=4"
            echo "num.recovery.threads.per.data.dir=1"
            echo "controlled.shutdown.enable=true"
            echo "unclean.leader.election.enable=false"
            if [ "$sasl" = 1 ]; then
                echo "sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512"
                echo "listener.name.sasl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$USER_NAME=\"$USER_PASSWORD\";"
                echo "listener.name.sasl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;"
                echo "listener.name.sasl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;"
                echo "listener.name.scram.sasl.enabled.mechanisms=SCRAM-SHA-512"
                echo "listener.name.scram.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;"
                # Short sessions: a client that does not log in again in time loses its connection.
                for mechanism in sasl.plain sasl.scram-sha-256 sasl.scram-sha-512 scram.scram-sha-512; do
                    echo "listener.name.$mechanism.connections.max.reauth.ms=5000"
                done
            fi
            if [ "$tls" = 1 ]; then
                for name in tls mtls; do
                    echo "listener.name.$name.ssl.keystore.type=PEM"
                    echo "listener.name.$name.ssl.keystore.location=$dir/tls/server.keystore.pem"
                    echo "listener.name.$name.ssl.truststore.type=PEM"
                    echo "listener.name.$name.ssl.truststore.location=$dir/tls/ca.pem"
                done
                echo "listener.name.tls.ssl.client.auth=none"
                echo "listener.name.mtls.ssl.client.auth=required"
            fi
            if [ "$sasl" = 1 ] && [ "$tls" = 1 ]; then
                echo "listener.name.sasl_tls.ssl.keystore.type=PEM"
                echo "listener.name.sasl_tls.ssl.keystore.location=$dir/tls/server.keystore.pem"
                echo "listener.name.sasl_tls.ssl.client.auth=none"
                echo "listener.name.sasl_tls.sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512,OAUTHBEARER"
                echo "listener.name.sasl_tls.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$USER_NAME=\"$USER_PASSWORD\";"
                echo "listener.name.sasl_tls.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;"
                echo "listener.name.sasl_tls.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;"
                echo "listener.name.sasl_tls.oauthbearer.sasl.jaas.config=org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required;"
            fi
            local kv
            for kv in ${extra[@]+"${extra[@]}"}; do echo "$kv"; done
        } >"$node/server.properties"
        cat >"$node/run" <<EOF
#!/bin/sh
# Generated by scripts/kafka.sh: runs node $id of this cluster in the foreground.
exec java -Xms128m -Xmx$heap -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \\
    -Dlog4j2.configurationFile="$dir/log4j2.properties" \\
    -cp "$LIB/*" kafka.Kafka "$node/server.properties"
EOF
        chmod +x "$node/run"
    done

    # Format every node's storage (one JVM each, side by side), SCRAM credentials included.
    local scram=()
    if [ "$sasl" = 1 ]; then
        scram=(--add-scram "SCRAM-SHA-256=[name=$USER_NAME,password=$USER_PASSWORD]"
               --add-scram "SCRAM-SHA-512=[name=$USER_NAME,password=$USER_PASSWORD]")
    fi
    local format_pids=()
    for ((i = 1; i <= nodes; i++)); do
        java -Xmx256m -XX:TieredStopAtLevel=1 -cp "$LIB/*" kafka.tools.StorageTool format -t "$cluster_id" \
            -c "$dir/node-$i/server.properties" ${scram[@]+"${scram[@]}"} >"$dir/node-$i/format.log" 2>&1 &
        format_pids+=($!)
    done
    for ((i = 1; i <= nodes; i++)); do
        wait "${format_pids[i - 1]}" || { cat "$dir/node-$i/format.log" >&2; die "formatting node $i failed"; }
    done

    for ((i = 1; i <= nodes; i++)); do launch "$dir" "$i"; done
    if [ -n "$watch" ]; then
        # The watcher: once PID is gone, the nodes go and DIR with them.
        setsid nohup bash -c '
            while kill -0 "$1" 2>/dev/null; do sleep 1; done
            "$2" stop "$3" >/dev/null 2>&1' kafka-watch "$watch" "$ROOT/scripts/kafka.sh" "$dir" \
            </dev/null >/dev/null 2>&1 &
    fi

    for ((i = 0; i < nodes; i++)); do
        if ! probe "${plain[i]}" "$nodes" 60; then
            tail -30 "$dir/node-$((i + 1))/server.log" >&2 || true
            cmd_stop "$dir" >/dev/null 2>&1 || true
            die "node $((i + 1)) did not answer with all $nodes brokers in its metadata within 60 s"
        fi
    done

    local joined
    join() { local IFS=,; echo "$*"; }
    {
    joined=(); for p in "${plain[@]}"; do joined+=("127.0.0.1:$p"); done
    echo "bootstrap $(join "${joined[@]}")"
    if [ "$sasl" = 1 ]; then
        joined=(); for p in "${sasl_ports[@]}"; do joined+=("127.0.0.1:$p"); done
        echo "sasl $(join "${joined[@]}")"
        joined=(); for p in "${scram_ports[@]}"; do joined+=("127.0.0.1:$p"); done
        echo "sasl_scram $(join "${joined[@]}")"
    fi
    if [ "$tls" = 1 ]; then
        joined=(); for p in "${tls_ports[@]}"; do joined+=("127.0.0.1:$p"); done
        echo "tls $(join "${joined[@]}")"
        joined=(); for p in "${mtls_ports[@]}"; do joined+=("127.0.0.1:$p"); done
        echo "mtls $(join "${joined[@]}")"
        echo "ca $dir/tls/ca.pem"
        echo "client_cert $dir/tls/client.pem"
        echo "client_key $dir/tls/client.key"
    fi
    if [ "$sasl" = 1 ] && [ "$tls" = 1 ]; then
        joined=(); for p in "${sasl_tls_ports[@]}"; do joined+=("127.0.0.1:$p"); done
        echo "sasl_tls $(join "${joined[@]}")"
    fi
    if [ -n "$external" ]; then
        joined=(); for p in "${external_ports[@]}"; do joined+=("127.0.0.1:$p"); done
        echo "external $(join "${joined[@]}")"
    fi
    echo "dir $dir"
    for ((i = 1; i <= nodes; i++)); do
        echo "node $i $(cat "$dir/node-$i/pid") ${plain[i - 1]}"
    done
    } | tee "$dir/info"
}

node_pid() { cat "$1/node-$2/pid" 2>/dev/null || true; }

# Whether PID runs (a zombie, killed but not yet reaped, does not).
running() {
    local state
    state="$(sed -n 's/^[0-9]* (.*) \([A-Z]\).*/\1/p' "/proc/$1/stat" 2>/dev/null || true)"
    [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

cmd_stop() {
    local dir="$1" pids=() p
    [ -d "$dir" ] || { log "no directory $dir (already stopped?)"; return 0; }
    for f in "$dir"/node-*/pid; do
        [ -f "$f" ] || continue
        p="$(cat "$f")"
        running "$p" && pids+=("$p") && kill -TERM "$p" 2>/dev/null || true
    done
    for _ in $(seq 1 200); do
        local alive=0
        for p in ${pids[@]+"${pids[@]}"}; do running "$p" && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for p in ${pids[@]+"${pids[@]}"}; do kill -KILL "$p" 2>/dev/null || true; done
    case "$dir" in
        /|"$HOME"|"$ROOT") die "refusing to remove $dir" ;;
    esac
    [ -f "$dir/node-1/server.properties" ] && rm -rf "$dir"
    return 0
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
    start) cmd_start "$@" ;;
    stop) [ $# -eq 1 ] || usage; cmd_stop "$1" ;;
    kill)
        [ $# -eq 2 ] || usage
        p="$(node_pid "$1" "$2")"
        [ -n "$p" ] || die "no node $2 in $1"
        kill -KILL "$p" 2>/dev/null || true
        ;;
    stop-node)
        [ $# -eq 2 ] || usage
        p="$(node_pid "$1" "$2")"
        [ -n "$p" ] || die "no node $2 in $1"
        kill -TERM "$p" 2>/dev/null || true
        for _ in $(seq 1 300); do running "$p" || break; sleep 0.1; done
        if running "$p"; then
            log "node $2 (pid $p) still runs 30 s after SIGTERM; killing it"
            kill -KILL "$p" 2>/dev/null || true
            for _ in $(seq 1 100); do running "$p" || break; sleep 0.1; done
        fi
        ;;
    restart)
        [ $# -eq 2 ] || usage
        dir="$1"; id="$2"
        p="$(node_pid "$dir" "$id")"
        [ -n "$p" ] && running "$p" && die "node $id of $dir still runs (pid $p)"
        launch "$dir" "$id"
        port="$(sed -n 's|^listeners=PLAINTEXT://127.0.0.1:\([0-9]*\),.*|\1|p' "$dir/node-$id/server.properties")"
        nodes="$(ls -d "$dir"/node-* | wc -l)"
        probe "$port" "$nodes" 60 || die "node $id did not come back within 60 s (log: $dir/node-$id/server.log)"
        echo "node $id $(cat "$dir/node-$id/pid") $port"
        ;;
    *) usage ;;
esac
