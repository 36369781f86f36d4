#!/usr/bin/env bash
# Builds the `sluice` binary statically linked and checks what a scratch container needs.
#
#   scripts/build-static.sh            build target/static/sluice (stripped), check it is static,
#                                      print its size and its time from start to first fetch
#   scripts/build-static.sh --chroot   also run it in an empty chroot holding only the binary and
#                                      /etc/hosts: produce and consume against a local Tansu reached
#                                      by the name `localhost` (needs root; scripts/test.sh runs this)
#
# The musl target is used when the toolchain has it; otherwise glibc with `+crt-static`. Either
# way host names resolve without glibc's NSS modules (sluice-client reads /etc/hosts and asks DNS
# itself, through hickory-resolver), which is what lets the binary run where no libc is installed.
# Targets: under 15 MB stripped, under 50 ms from start to first fetch.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
step() { printf '\n=== %s\n' "$*"; }
die() { printf 'build-static.sh: FAILED: %s\n' "$*" >&2; exit 1; }

chroot_test=false
case "${1:-}" in
--chroot) chroot_test=true ;;
"") ;;
*) echo "usage: $0 [--chroot]" >&2; exit 2 ;;
esac

if rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
    target=x86_64-unknown-linux-musl
    flags=""
else
    target=x86_64-unknown-linux-gnu
    # A static glibc has no dlsym, so the getrandom crate would find no getrandom(2) and read
    # /dev/urandom instead, which an empty container or chroot may lack (the DNS resolver's and
    # TLS's random numbers then fail): link getrandom(2) from glibc directly.
    flags='-C target-feature=+crt-static --cfg getrandom_backend="linux_getrandom"'
fi
step "building sluice for $target ${flags:+($flags)}"
# --target keeps RUSTFLAGS off build scripts and proc macros, which must stay dynamic.
# glibc's linker notes about getaddrinfo and friends are filtered out (sluice never calls them in
# a static build); a failed build still fails the script.
# The `dist` profile is release optimised as one program (fat LTO, one codegen unit).
RUSTFLAGS="${RUSTFLAGS:-} $flags" cargo build --profile dist -p sluice-cli --target "$target" \
    2> >(grep -v "in statically linked applications requires at runtime" >&2)
built="${CARGO_TARGET_DIR:-target}/$target/dist/sluice"
[ -x "$built" ] || die "no binary at $built"
mkdir -p target/static
cp "$built" target/static/sluice
strip target/static/sluice
bin="$ROOT/target/static/sluice"

step "is it static?"
file_says=$(file -b "$bin")
echo "file: $file_says"
case "$file_says" in
*"statically linked"*|*"static-pie linked"*) ;;
*) die "file does not call $bin statically linked" ;;
esac
ldd_says=$(ldd "$bin" 2>&1 || true)
echo "ldd: $ldd_says"
case "$ldd_says" in
*"not a dynamic executable"*|*"statically linked"*) ;;
*) die "ldd lists shared libraries for $bin" ;;
esac

size=$(stat -c %s "$bin")
size_mb=$(awk -v s="$size" 'BEGIN { printf "%.1f", s / 1048576 }')
echo "size (stripped): $size_mb MiB (target: under 15 MiB)"
[ "$size" -lt $((15 * 1048576)) ] || die "the binary is $size_mb MiB, over 15 MiB"

if ! $chroot_test; then
    exit 0
fi

step "a local broker, advertised as localhost"
[ -x .peers/bin/tansu ] || scripts/install-peers.sh
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
read -r port pid < <(TANSU_ADVERTISED_URL="tcp://localhost:$port" scripts/tansu.sh start "$port")
jail=$(mktemp -d)
cleanup() { scripts/tansu.sh stop "$pid" >/dev/null 2>&1 || true; rm -rf "$jail"; }
trap cleanup EXIT

step "start to first fetch"
broker="127.0.0.1:$port"
"$bin" topics -b "$broker" create startup >/dev/null
echo "one record" | "$bin" produce -b "$broker" -t startup
best=""
for _ in 1 2 3 4 5; do
    start=$(date +%s%N)
    got=$("$bin" consume -b "$broker" -t startup -o beginning -c 1)
    ms=$(( ($(date +%s%N) - start) / 1000000 ))
    [ "$got" = "one record" ] || die "consume printed '$got'"
    if [ -z "$best" ] || [ "$ms" -lt "$best" ]; then best=$ms; fi
done
echo "start to first record printed (process start, connect, metadata, offsets, fetch): best of 5 runs $best ms (target: under 50 ms)"

step "in an empty chroot: only the binary and /etc/hosts"
if [ "$(id -u)" != 0 ]; then
    echo "SKIPPED: the chroot test needs root (chroot(2)); run as root to check it"
    exit 0
fi
mkdir -p "$jail/etc"
cp "$bin" "$jail/sluice"
printf '127.0.0.1 localhost\n::1 localhost ip6-localhost\n' >"$jail/etc/hosts"
echo "chroot holds: $(cd "$jail" && find . -type f | sort | tr '\n' ' ')"
seq 1 100 | chroot "$jail" /sluice produce -b "localhost:$port" -t startup
chroot "$jail" /sluice topics -b "localhost:$port" create jailed --partitions 2 >/dev/null
seq 1 50 | chroot "$jail" /sluice produce -b "localhost:$port" -t jailed -K :
got=$(chroot "$jail" /sluice consume -b "localhost:$port" -t jailed -o beginning -e | sort -n | tr '\n' ' ')
want=$(seq 1 50 | tr '\n' ' ')
[ "$got" = "$want" ] || die "consumed in the chroot: '$got', expected '$want'"
count=$(chroot "$jail" /sluice consume -b "localhost:$port" -t startup -o beginning -e | wc -l)
[ "$count" = 101 ] || die "consumed $count records of topic startup in the chroot, expected 101"
# A name that is in neither /etc/hosts nor DNS fails with a clear message, not a crash.
if out=$(chroot "$jail" /sluice topics -b "no-such-host.invalid:$port" list 2>&1); then
    die "an unknown host name worked: $out"
fi
case "$out" in
*"no-such-host.invalid"*) echo "unknown host: $out" ;;
*) die "the error for an unknown host does not name it: $out" ;;
esac
echo "chroot test: ok (produced and consumed by the name localhost with no libc, no NSS modules, no resolv.conf)"
