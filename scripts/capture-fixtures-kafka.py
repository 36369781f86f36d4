#!/usr/bin/env python3
"""Capture golden Kafka wire frames between the Java client 4.4 and Apache Kafka 4.4 into
fixtures/kafka-4.4/ (the librdkafka/Tansu set in fixtures/ comes from scripts/capture-fixtures.py,
whose proxy and frame reading this script shares, so it runs on the peers' venv python too).

    scripts/install-peers.sh && .peers/bin/python scripts/capture-fixtures-kafka.py

What it does:
  * starts a one-node Apache Kafka 4.4 (scripts/kafka.sh) with a listener advertised at the
    address of a logging TCP proxy, so every connection the Java clients open goes through it;
  * drives the Java client through the proxy, one program run per phase: the admin client
    (kafka-tools' TopicCommand) creates the topics; JavaPeer produces 10 records with each codec,
    reads them back, produces idempotently and in a committed transaction, and joins a group
    (classic protocol, range assignor) that consumes a topic;
  * keeps, per phase, the frames that show the phase (the first request of each kind and its
    answer), checks them (one batch per produce, the codec's attribute bits, the consumer read
    back what was produced) and writes each as one file (the frame on the wire, size prefix
    included), fixtures/kafka-4.4/manifest.json (what each frame is; for produce and fetch, the
    records it must hold, from what JavaPeer reported) and fixtures/kafka-4.4/README.md.

Frames are attributed to phases by when they crossed the proxy: the phases run one after another.
Re-runnable: it replaces fixtures/kafka-4.4/.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "fixtures" / "kafka-4.4"
PEERS = ROOT / ".peers"
KAFKA_SH = ROOT / "scripts" / "kafka.sh"

# The proxy, frame capture and frame reading of the librdkafka/Tansu capture.
_spec = importlib.util.spec_from_file_location("capture_fixtures", ROOT / "scripts" / "capture-fixtures.py")
cf = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = cf  # its dataclasses look their module up
_spec.loader.exec_module(cf)
cf.FIXTURES = OUT_DIR  # Out.save writes there

CODECS = cf.CODECS
KAFKA_VERSION = "4.4.0"
CLIENT = f"Java client (kafka-clients) {KAFKA_VERSION}"
BROKER = f"Apache Kafka {KAFKA_VERSION} (KRaft, one node, scripts/kafka.sh)"
RECORDS = 10


def log(msg: str) -> None:
    print(f"capture-kafka: {msg}", file=sys.stderr, flush=True)


def java(*args: str, stdin=None, check: bool = True) -> subprocess.CompletedProcess:
    """Runs a Java program of the peers (JavaPeer, or a kafka-tools class) to completion."""
    classpath = f"{PEERS / 'java' / 'classes'}:{PEERS / 'kafka' / 'lib'}/*"
    return subprocess.run(["java", "-Xmx512m", "-cp", classpath, *args], input=stdin, capture_output=True,
                           text=True, check=check)


def peer_lines(proc: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def b64(value: str | None) -> bytes | None:
    return None if value is None else base64.b64decode(value)


def record_json(rec: dict, offset: int) -> dict:
    """A JavaPeer record (bytes in base64) in the manifest's record form."""
    headers = [(h[0], b64(h[1])) for h in rec["headers"]]
    return cf.record_json(dict(key=b64(rec["key"]), value=b64(rec["value"]), headers=headers,
                               timestamp_ms=rec["timestamp"]), offset)


class Phases:
    """Frames captured during each phase."""

    def __init__(self, capture: cf.Capture):
        self.capture = capture
        self.marks: dict[str, tuple[int, int]] = {}

    def run(self, name: str, action):
        start = len(self.capture.snapshot())
        result = action()
        time.sleep(0.3)  # the last answers reach the proxy
        self.marks[name] = (start, len(self.capture.snapshot()))
        return result

    def frames(self, name: str) -> list[cf.Frame]:
        start, end = self.marks[name]
        return self.capture.snapshot()[start:end]

    def first_request(self, name: str, api_key: int, where=lambda f: True) -> cf.Frame:
        answered = {f.request_seq for f in self.capture.snapshot() if f.direction == "response"}
        for f in self.frames(name):
            if f.direction == "request" and f.api_key == api_key and f.seq in answered and where(f):
                return f
        raise RuntimeError(f"phase {name}: no answered {cf.API_NAMES.get(api_key)} request")


def produce_carries_records(frame: cf.Frame) -> bool:
    return any(batches for _, _, batches in cf.produce_request_batches(frame))


def fetch_carries_records(capture: cf.Capture):
    return lambda f: cf.fetch_response_record_bytes(capture.response_to(f)) > 0


def run(capture: cf.Capture, out: cf.Out, phases: Phases, proxy: str) -> dict:
    negotiated: dict[str, set[int]] = {}
    base_ts = int(time.time() * 1000) - 60_000

    def create_topics():
        for topic, partitions in [*[(f"golden-{c}", 1) for c in CODECS], ("golden-idempotent", 1),
                                  ("golden-txn", 1), ("golden-group", 3)]:
            java("org.apache.kafka.tools.TopicCommand", "--bootstrap-server", proxy, "--create", "--topic", topic,
                 "--partitions", str(partitions), "--replication-factor", "1")

    phases.run("admin", create_topics)
    how = "kafka-tools TopicCommand --create (the Java AdminClient): the first run's requests"
    for key, stem in [(18, "apiversions"), (3, "metadata"), (19, "createtopics")]:
        out.save_pair(stem, phases.first_request("admin", key), how)

    produced: dict[str, list[dict]] = {}
    for codec in CODECS:
        topic = f"golden-{codec}"
        lines = phases.run(f"produce-{codec}", lambda: peer_lines(java(
            "JavaPeer", "produce", proxy, topic, str(RECORDS), "--codec", codec, "--base-timestamp", str(base_ts))))
        produced[topic] = [l for l in lines if "offset" in l]
        req = phases.first_request(f"produce-{codec}", 0, produce_carries_records)
        batches = [b for _, _, bs in cf.produce_request_batches(req) for b in bs]
        assert len(batches) == 1 and batches[0]["count"] == RECORDS, f"{codec}: {batches}"
        assert batches[0]["attributes"] & 7 == cf.CODEC_ATTR[codec], f"{codec}: attributes {batches[0]}"
        records = [record_json(r, r["offset"]) for r in produced[topic]]
        how = (f"JavaPeer produce: {RECORDS} records of varied shape to partition 0, one batch, "
               f"compression.type={codec}, acks=all, enable.idempotence=false")
        out.save(f"produce-{codec}", req, how, topic=topic, partition=0, codec=codec, records=records)
        out.save(f"produce-response-{codec}", capture.response_to(req), how, topic=topic)

        lines = phases.run(f"fetch-{codec}", lambda: peer_lines(java("JavaPeer", "consume", proxy, topic)))
        consumed = [l for l in lines if "offset" in l]
        assert [(c["offset"], c["key"], c["value"], c["headers"]) for c in consumed] == \
            [(p["offset"], p["key"], p["value"], p["headers"]) for p in produced[topic]], f"{codec}: read back"
        req = phases.first_request(f"fetch-{codec}", 1, fetch_carries_records(capture))
        how = "JavaPeer consume: assign() every partition, seekToBeginning(), poll() until the end offsets"
        out.save(f"fetch-request-{codec}", req, how, topic=topic)
        out.save(f"fetch-{codec}", capture.response_to(req), how, topic=topic, partition=0, codec=codec,
                 records=[record_json(c, c["offset"]) for c in consumed])

    phases.run("idempotent", lambda: java("JavaPeer", "produce", proxy, "golden-idempotent", str(RECORDS),
                                          "--idempotent", "--base-timestamp", str(base_ts)))
    how = "JavaPeer produce --idempotent: enable.idempotence=true, acks=all"
    out.save_pair("idempotent-initproducerid", phases.first_request("idempotent", 22), how)
    out.save_pair("idempotent-produce", phases.first_request("idempotent", 0, produce_carries_records), how)

    phases.run("txn", lambda: java("JavaPeer", "produce", proxy, "golden-txn", str(RECORDS), "--transactional-id",
                                   "sluice-golden-txn", "--txn-size", str(RECORDS), "--base-timestamp", str(base_ts)))
    how = "JavaPeer produce --transactional-id sluice-golden-txn: one transaction of 10 records, committed"
    for key, stem in [(10, "txn-findcoordinator"), (22, "txn-initproducerid"), (0, "txn-produce"), (26, "txn-endtxn")]:
        where = produce_carries_records if key == 0 else (lambda f: True)
        out.save_pair(stem, phases.first_request("txn", key, where), how)
    for key, stem in [(24, "txn-addpartitionstotxn")]:
        try:
            out.save_pair(stem, phases.first_request("txn", key), how)
        except RuntimeError:
            log("no AddPartitionsToTxn: the Java client enrols partitions through Produce (transactions v2)")

    java("JavaPeer", "produce", proxy, "golden-group", "30", "--partitions", "3", "--base-timestamp", str(base_ts))

    def group():
        member = subprocess.Popen(
            ["java", "-Xmx512m", "-cp", f"{PEERS / 'java' / 'classes'}:{PEERS / 'kafka' / 'lib'}/*", "JavaPeer",
             "group-member", proxy, "golden-group", "sluice-golden-group", "--protocol", "classic",
             "--assignor", "range"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        values = 0
        for line in member.stdout:
            values += "value" in json.loads(line)
            if values == 30:
                break
        time.sleep(1.5)  # a heartbeat or two
        member.stdin.close()
        member.stdout.read()
        assert member.wait(30) == 0, "the group member failed"

    phases.run("group", group)
    how = "JavaPeer group-member (classic protocol, range assignor, commitSync per poll), 3 partitions"
    for key, stem in [(10, "group-findcoordinator"), (11, "joingroup"), (14, "syncgroup"), (12, "heartbeat"),
                      (9, "offsetfetch"), (8, "offsetcommit"), (13, "leavegroup"), (2, "listoffsets")]:
        try:
            out.save_pair(stem, phases.first_request("group", key), how)
        except RuntimeError as e:
            log(f"not saved: {e}")

    for f in capture.snapshot():
        if f.direction == "request":
            negotiated.setdefault(cf.API_NAMES.get(f.api_key, f"api{f.api_key}"), set()).add(f.api_version)
    return {k: sorted(v) for k, v in sorted(negotiated.items())}


def write_readme(out: cf.Out, negotiated: dict) -> None:
    lines = [
        "# Golden wire frames: the Java client 4.4 and Apache Kafka 4.4",
        "",
        "Each `.bin` file holds exactly one Kafka frame as it crossed the wire, **including its 4-byte",
        "big-endian size prefix**, captured by a logging proxy between the Java client and the broker.",
        "`manifest.json` has the same form as `../manifest.json` (the librdkafka/Tansu set): per file its",
        "direction, API, version and correlation id, how it was captured, and for produce and fetch",
        "frames the records it must hold, from what JavaPeer reported it produced and consumed.",
        "",
        f"- client: {CLIENT}, through `scripts/peers/java/JavaPeer.java` and kafka-tools' `TopicCommand`",
        f"- broker: {BROKER}",
        "- versions the Java client sent: " + ", ".join(f"{k} v{'/'.join(map(str, v))}" for k, v in negotiated.items()),
        "",
        "Things that differ from run to run: topic ids (Produce v13 and Fetch v13+ carry ids, not names),",
        "producer ids, member ids, client ids' numbers, timestamps (the records carry the capture time",
        "minus a minute), fetch session ids, and the proxy's port in Metadata answers.",
        "",
        "## Re-capture",
        "",
        "```",
        "scripts/install-peers.sh && .peers/bin/python scripts/capture-fixtures-kafka.py",
        "```",
        "",
        "## Files",
        "",
    ]
    for e in out.entries:
        lines.append(f"- `{e['file']}` ({e['size']} B): {e['api_name']} v{e['api_version']} {e['direction']}, "
                     f"corr {e['correlation_id']}, client.id `{e['client_id']}`: {e['captured']}")
    (OUT_DIR / "README.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    for need in [PEERS / "java" / "classes" / "JavaPeer.class", PEERS / "kafka" / "lib"]:
        if not need.exists():
            log(f"missing {need}: run scripts/install-peers.sh")
            return 1
    capture = cf.Capture()
    proxy_port = cf.free_port()
    work = Path(tempfile.mkdtemp(prefix="sluice-capture-kafka."))
    info = subprocess.run(["bash", str(KAFKA_SH), "start", "--dir", str(work / "kafka"), "--external",
                           f"127.0.0.1:{proxy_port}", "--watch", str(os.getpid())],
                          capture_output=True, text=True, check=True).stdout
    fields = dict(line.split(" ", 1) for line in info.splitlines() if " " in line)
    upstream = int(fields["external"].rsplit(":", 1)[1])
    proxy = cf.Proxy(capture, proxy_port, upstream)
    proxy.start()
    try:
        if OUT_DIR.exists():
            shutil.rmtree(OUT_DIR)
        OUT_DIR.mkdir(parents=True)
        out = cf.Out(capture, CLIENT, BROKER)
        negotiated = run(capture, out, Phases(capture), f"127.0.0.1:{proxy_port}")
        manifest = dict(format="each file is one Kafka frame including its 4-byte big-endian size prefix",
                        client=CLIENT, broker=BROKER, fixtures=out.entries)
        (OUT_DIR / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        write_readme(out, negotiated)
        log(f"wrote {len(out.entries)} fixtures to {OUT_DIR}")
    finally:
        proxy.stop()
        subprocess.run(["bash", str(KAFKA_SH), "stop", str(work / "kafka")], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
