#!/usr/bin/env python3
"""Generate sluice-protocol's message codecs from Kafka's JSON message schemas.

Usage: scripts/codegen/gen_messages.py [--spec DIR] [--overlay FILE] [--check]

The schemas (Apache Kafka's `clients/src/main/resources/common/message/*.json`) are read from
`../shared/kafka-spec/message` by default; they are never copied into the project. Those schemas
are from the Kafka 3.9 era; `kafka-4.4-overlay.json` beside this script (our own description of
what Kafka 4.4 added) raises them to Kafka 4.4's versions as they are loaded. What is written
is our own Rust: one module per message under `crates/sluice-protocol/src/messages/`, with a
struct per (nested) structure, `Encodable`/`Decodable` implementations that follow each field's
`versions`, `nullableVersions`, `taggedVersions` and the message's `flexibleVersions`, defaults as
the Java client defines them, and (behind the `arbitrary` feature) a generator of random values
valid for a given version, used by the round-trip property tests and the fuzz targets.

`--check` regenerates into memory and exits 1 if the committed files differ.
"""
import argparse
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT_DIR = os.path.join(ROOT, "crates", "sluice-protocol", "src", "messages")
OVERLAY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kafka-4.4-overlay.json")

# APIs whose request and response are generated, in API-key order as the README table lists them.
APIS = [
    "Produce", "Fetch", "ListOffsets", "Metadata", "OffsetCommit", "OffsetFetch", "FindCoordinator",
    "JoinGroup", "Heartbeat", "LeaveGroup", "SyncGroup", "DescribeGroups", "ListGroups",
    "SaslHandshake", "ApiVersions", "CreateTopics", "DeleteTopics", "DeleteRecords", "InitProducerId",
    "OffsetForLeaderEpoch", "AddPartitionsToTxn", "AddOffsetsToTxn", "EndTxn", "TxnOffsetCommit",
    "DescribeConfigs", "SaslAuthenticate", "CreatePartitions", "DeleteGroups", "ConsumerGroupHeartbeat",
    "ConsumerGroupDescribe",
]
EXTRA = ["RequestHeader", "ResponseHeader", "ConsumerProtocolSubscription", "ConsumerProtocolAssignment"]

PRIMS = {"bool", "int8", "int16", "int32", "int64", "uint16", "float64", "uuid", "string", "bytes", "records"}
RUST_PRIM = {"bool": "bool", "int8": "i8", "int16": "i16", "int32": "i32", "int64": "i64",
             "uint16": "u16", "float64": "f64", "uuid": "Uuid", "string": "String", "bytes": "Bytes",
             "records": "Bytes"}
FIXED_SIZE = {"bool": 1, "int8": 1, "int16": 2, "int32": 4, "int64": 8, "uint16": 2, "float64": 8, "uuid": 16}
KEYWORDS = {"type", "match", "ref", "self", "mod", "use", "move", "loop", "impl", "where", "as", "in", "fn"}


def snake(name):
    s = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    s = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", s).lower()
    return s + "_" if s in KEYWORDS else s


def load_json(path):
    """A JSON file with Kafka's whole-line `//` comments."""
    with open(path) as f:
        text = "\n".join(line for line in f if not line.lstrip().startswith("//"))
    return json.loads(text)


def load(spec_dir, name, overlay=None):
    """The schema of message `name`, with its overlay entry (if any) applied."""
    raw = load_json(os.path.join(spec_dir, name + ".json"))
    entry = (overlay or {}).get(name)
    return apply_overlay(raw, entry) if entry else raw


def find_field(fields, path, name):
    """The list holding the field at dotted `path` (through nested structures) and its index."""
    head, _, rest = path.partition(".")
    for i, f in enumerate(fields):
        if f["name"] == head:
            if not rest:
                return fields, i
            if "fields" not in f:
                break
            return find_field(f["fields"], rest, name)
    raise SystemExit("overlay: %s has no field %s" % (name, path))


def apply_overlay(raw, entry):
    """Raises a schema's highest version and changes and adds fields as `entry` says (see the
    overlay file's header); the lowest version stays."""
    name = raw["name"]
    lo, _, hi = raw["validVersions"].partition("-")
    hi = hi or lo
    if int(hi) != entry["fromMaxVersion"]:
        raise SystemExit("overlay: %s is written for schemas ending at v%d, but this one ends at v%s; "
                         "update or remove its overlay entry" % (name, entry["fromMaxVersion"], hi))
    raw["validVersions"] = "%s-%d" % (lo, entry["maxVersion"])
    for change in entry.get("changed", []):
        fields, i = find_field(raw["fields"], change["field"], name)
        fields[i].update({k: v for k, v in change.items() if k != "field"})
    for added in entry.get("added", []):
        fields, i = find_field(raw["fields"], added["after"], name)
        fields.insert(i + 1, {k: v for k, v in added.items() if k != "after"})
    return raw


class Versions:
    """A version range from the schema syntax: "none", "3", "3+", "3-7"."""

    def __init__(self, text, top):
        text = (text or "none").strip()
        if text == "none":
            self.lo, self.hi = None, None
        elif text.endswith("+"):
            self.lo, self.hi = int(text[:-1]), top
        elif "-" in text:
            lo, hi = text.split("-")
            self.lo, self.hi = int(lo), int(hi)
        else:
            self.lo = self.hi = int(text)

    def contains(self, v):
        return self.lo is not None and self.lo <= v <= self.hi

    def set(self):
        return set() if self.lo is None else set(range(self.lo, self.hi + 1))


def cond(versions, valid):
    """A Rust boolean expression over `version` that is true exactly for the versions in `versions`
    (a set), assuming `version` is within `valid` (a set); simplified against the valid range."""
    vs = sorted(versions & valid)
    if not vs:
        return "false"
    if set(vs) == valid:
        return "true"
    lo, hi = vs[0], vs[-1]
    if set(range(lo, hi + 1)) != set(vs):
        raise SystemExit("non-contiguous version set %r" % vs)
    if lo == hi:
        return "version == %d" % lo
    parts = []
    if lo > min(valid):
        parts.append("version >= %d" % lo)
    if hi < max(valid):
        parts.append("version <= %d" % hi)
    return " && ".join(parts)


class Field:
    def __init__(self, raw, top, structs, msg):
        self.raw = raw
        self.name = raw["name"]
        self.rust = snake(self.name)
        self.type = raw["type"]
        self.versions = Versions(raw.get("versions"), top).set()
        self.nullable = Versions(raw.get("nullableVersions"), top).set() & self.versions
        self.tagged = Versions(raw.get("taggedVersions"), top).set() & self.versions
        self.tag = raw.get("tag")
        self.ignorable = raw.get("ignorable", False)
        default = raw.get("default")
        self.default = None if default is None else str(default).lower() if isinstance(default, bool) else str(default)
        fv = raw.get("flexibleVersions")
        self.flex_override = None if fv is None else Versions(fv, top).set()
        self.is_array = self.type.startswith("[]")
        self.elem = self.type[2:] if self.is_array else self.type
        self.struct = None
        if self.elem not in PRIMS:
            if "fields" in raw:
                structs[self.elem] = Struct(self.elem, raw["fields"], top, structs, msg)
            self.struct = self.elem

    @property
    def option(self):
        return bool(self.nullable)

    def elem_rust(self):
        return RUST_PRIM.get(self.elem, self.elem)

    def rust_type(self):
        inner = "Vec<%s>" % self.elem_rust() if self.is_array else self.elem_rust()
        return "Option<%s>" % inner if self.option else inner

    def regular(self):
        return self.versions - self.tagged


class Struct:
    def __init__(self, name, fields, top, structs, msg):
        self.name = name
        self.raw_fields = fields
        self.msg = msg
        self.fields = [Field(f, top, structs, msg) for f in fields]


class Message:
    def __init__(self, spec_dir, file_name, overlay=None):
        raw = load(spec_dir, file_name, overlay)
        self.raw = raw
        self.overlaid = file_name in (overlay or {})
        self.name = raw["name"]
        self.kind = raw["type"]
        self.api_key = raw.get("apiKey")
        valid = Versions(raw["validVersions"], None)
        self.min_version, self.max_version = valid.lo, valid.hi
        top = self.max_version
        self.valid = set(range(self.min_version, self.max_version + 1))
        self.flexible = Versions(raw.get("flexibleVersions", "none"), top).set() & self.valid
        self.structs = {}
        for common in raw.get("commonStructs", []):
            self.structs[common["name"]] = None  # placeholder keeps declaration order
        for common in raw.get("commonStructs", []):
            self.structs[common["name"]] = Struct(common["name"], common["fields"], top, self.structs, self)
        self.root = Struct(self.name, raw["fields"], top, self.structs, self)

    def all_structs(self):
        return [self.root] + [s for s in self.structs.values() if s is not None]


# ---------------------------------------------------------------------------------------------
# Rust emission
# ---------------------------------------------------------------------------------------------

def default_expr(f):
    d = f.default
    if f.is_array:
        return "None" if (f.option and d == "null") else ("Some(Vec::new())" if f.option else "Vec::new()")
    if f.struct:
        if f.option and d == "null":
            return "None"
        return "Some(%s::default())" % f.struct if f.option else "%s::default()" % f.struct
    t = f.elem
    if t in ("string",):
        if f.option and (d == "null"):
            return "None"
        s = "String::from(%s)" % json.dumps(d) if d else "String::new()"
        return "Some(%s)" % s if f.option else s
    if t in ("bytes", "records"):
        if f.option and (d == "null" or t == "records"):
            return "None"
        return "Some(Bytes::new())" if f.option else "Bytes::new()"
    if t == "bool":
        return "true" if d == "true" else "false"
    if t == "uuid":
        return "Uuid::ZERO"
    if t == "float64":
        return "%s_f64" % (d if d else "0.0")
    if d is None or d == "":
        return "0"
    if d.startswith("0x"):
        return str(int(d, 16))
    return d


def is_default_expr(f, var):
    """Expression true when `var` (an expression of the field's type) equals its default."""
    d = default_expr(f)
    t = f.elem
    if f.is_array:
        if d == "None":
            return "%s.is_none()" % var
        return "%s.as_ref().is_some_and(Vec::is_empty)" % var if f.option else "%s.is_empty()" % var
    if f.struct:
        if d == "None":
            return "%s.is_none()" % var
        return "%s == %s" % (var, d)
    if t == "string":
        if d == "None":
            return "%s.is_none()" % var
        if not f.default:
            return "%s.as_deref() == Some(\"\")" % var if f.option else "%s.is_empty()" % var
        lit = json.dumps(f.default)
        return "%s.as_deref() == Some(%s)" % (var, lit) if f.option else "%s == %s" % (var, lit)
    if t in ("bytes", "records"):
        if d == "None":
            return "%s.is_none()" % var
        return "%s.as_ref().is_some_and(Bytes::is_empty)" % var if f.option else "%s.is_empty()" % var
    if t == "float64":
        return "%s.to_bits() == (%s).to_bits()" % (var, d)
    return "%s == %s" % (var, d)


def compact_expr(f, msg):
    """Rust expression: does this field use compact encodings in `version`?"""
    flex = msg.flexible
    if f.flex_override is not None:
        flex = flex & f.flex_override
    return cond(flex, msg.valid)


def min_size_for(st, msg, v, depth=0):
    """Smallest possible encoding of struct `st` at version `v`."""
    if depth > 8:
        return 0
    total = 1 if v in msg.flexible else 0
    for f in st.fields:
        if v not in f.regular():
            continue
        total += min_field_size(f, msg, v, depth)
    return total


def min_field_size(f, msg, v, depth):
    compact = v in msg.flexible and (f.flex_override is None or v in f.flex_override)
    if f.is_array:
        return 1 if compact else 4
    if f.struct:
        if v in f.nullable:
            return 1
        return min_size_for(msg.structs[f.struct], msg, v, depth + 1)
    if f.elem in FIXED_SIZE:
        return FIXED_SIZE[f.elem]
    if f.elem == "string":
        return 1 if compact else 2
    return 1 if compact else 4  # bytes / records


def elem_min_size_expr(f, msg):
    """Rust expression for the minimum encoded size of one array element at `version`."""
    if f.struct:
        return "%s::min_encoded_size(version)" % f.struct
    if f.elem in FIXED_SIZE:
        return str(FIXED_SIZE[f.elem])
    return "1"


class Emitter:
    def __init__(self, msg):
        self.msg = msg
        self.out = []

    def w(self, line=""):
        self.out.append(line)

    # ----- values -----
    def decode_scalar(self, t):
        """Expression decoding a fixed-width value of primitive type `t` from `buf`."""
        return {"bool": "get_bool(buf)?", "int8": "get_i8(buf)?", "int16": "get_i16(buf)?",
                "int32": "get_i32(buf)?", "int64": "get_i64(buf)?", "uint16": "get_u16(buf)?",
                "float64": "get_f64(buf)?", "uuid": "get_uuid(buf)?"}[t]

    def emit_decode_value(self, f, target, compact, nullable_cond, indent):
        """Emit statements assigning the decoded field value to `target`."""
        msg = self.msg
        pad = "    " * indent
        if f.is_array:
            elem_decode = self.elem_decode_expr(f, compact)
            min_size = elem_min_size_expr(f, msg)
            if f.option:
                self.w(pad + "%s = match get_nullable_array_len(buf, %s, %s)? {" % (target, compact, min_size))
                self.w(pad + "    None if %s => None," % nullable_cond)
                self.w(pad + "    None => return Err(DecodeError::InvalidLength { what: \"array\", length: -1, reason: \"null is not allowed in this version\" }),")
                self.w(pad + "    Some(n) => {")
                self.w(pad + "        let mut items = Vec::with_capacity(bounded_capacity(n));")
                self.w(pad + "        for _ in 0..n { items.push(%s); }" % elem_decode)
                self.w(pad + "        Some(items)")
                self.w(pad + "    }")
                self.w(pad + "};")
            else:
                self.w(pad + "let n = get_array_len(buf, %s, %s)?;" % (compact, min_size))
                self.w(pad + "let mut items = Vec::with_capacity(bounded_capacity(n));")
                self.w(pad + "for _ in 0..n { items.push(%s); }" % elem_decode)
                self.w(pad + "%s = items;" % target)
            return
        if f.struct:
            if f.option:
                self.w(pad + "%s = if get_i8(buf)? < 0 {" % target)
                self.w(pad + "    if !(%s) { return Err(DecodeError::InvalidLength { what: \"struct\", length: -1, reason: \"null is not allowed in this version\" }); }" % nullable_cond)
                self.w(pad + "    None")
                self.w(pad + "} else { Some(%s::decode(buf, version)?) };" % f.struct)
            else:
                self.w(pad + "%s = %s::decode(buf, version)?;" % (target, f.struct))
            return
        t = f.elem
        if t in ("string", "bytes", "records"):
            fn = "string" if t == "string" else "bytes"
            if f.option:
                self.w(pad + "%s = get_nullable_%s(buf, %s)?;" % (target, fn, compact))
                self.w(pad + "if %s.is_none() && !(%s) { return Err(DecodeError::InvalidLength { what: \"%s\", length: -1, reason: \"null is not allowed in this version\" }); }" % (target, nullable_cond, fn))
            else:
                self.w(pad + "%s = get_%s(buf, %s)?;" % (target, fn, compact))
            return
        self.w(pad + "%s = %s;" % (target, self.decode_scalar(t)))

    def elem_decode_expr(self, f, compact):
        if f.struct:
            return "%s::decode(buf, version)?" % f.struct
        t = f.elem
        if t == "string":
            return "get_string(buf, %s)?" % compact
        if t in ("bytes", "records"):
            return "get_bytes(buf, %s)?" % compact
        return self.decode_scalar(t)

    def emit_encode_value(self, f, expr, compact, nullable_cond, indent, st):
        """Emit statements encoding `expr` (a reference-able place of the field's type)."""
        pad = "    " * indent
        null_err = ("return Err(EncodeError::NullNotAllowed { structure: \"%s\", field: \"%s\", version })"
                    % (st.name, f.rust))
        if f.is_array:
            if f.option:
                self.w(pad + "match &%s {" % expr)
                self.w(pad + "    None if %s => put_array_len(buf, None, %s)?," % (nullable_cond, compact))
                self.w(pad + "    None => %s," % null_err)
                self.w(pad + "    Some(items) => {")
                self.w(pad + "        put_array_len(buf, Some(items.len()), %s)?;" % compact)
                self.w(pad + "        for item in items { %s }" % self.elem_encode_stmt(f, "item", compact))
                self.w(pad + "    }")
                self.w(pad + "}")
            else:
                self.w(pad + "put_array_len(buf, Some(%s.len()), %s)?;" % (expr, compact))
                self.w(pad + "for item in &%s { %s }" % (expr, self.elem_encode_stmt(f, "item", compact)))
            return
        if f.struct:
            if f.option:
                self.w(pad + "match &%s {" % expr)
                self.w(pad + "    None if %s => buf.put_i8(-1)," % nullable_cond)
                self.w(pad + "    None => %s," % null_err)
                self.w(pad + "    Some(value) => { buf.put_i8(1); value.encode(buf, version)?; }")
                self.w(pad + "}")
            else:
                self.w(pad + "%s.encode(buf, version)?;" % expr)
            return
        t = f.elem
        if t in ("string", "bytes", "records"):
            fn = "string" if t == "string" else "bytes"
            if f.option:
                self.w(pad + "if %s.is_none() && !(%s) { %s; }" % (expr, nullable_cond, null_err))
                self.w(pad + "put_nullable_%s(buf, %s.as_deref(), %s)?;" % (fn, expr, compact))
            else:
                self.w(pad + "put_%s(buf, &%s, %s)?;" % (fn, expr, compact))
            return
        self.w(pad + self.scalar_encode_stmt(t, expr))

    def scalar_encode_stmt(self, t, expr):
        return {"bool": "put_bool(buf, %s);", "int8": "buf.put_i8(%s);", "int16": "buf.put_i16(%s);",
                "int32": "buf.put_i32(%s);", "int64": "buf.put_i64(%s);", "uint16": "buf.put_u16(%s);",
                "float64": "buf.put_f64(%s);", "uuid": "put_uuid(buf, &%s);"}[t] % expr

    def elem_encode_stmt(self, f, var, compact):
        if f.struct:
            return "%s.encode(buf, version)?;" % var
        t = f.elem
        if t == "string":
            return "put_string(buf, %s, %s)?;" % (var, compact)
        if t in ("bytes", "records"):
            return "put_bytes(buf, %s, %s)?;" % (var, compact)
        return self.scalar_encode_stmt(t, "*" + var)

    # ----- structs -----
    def emit_struct(self, st):
        msg = self.msg
        flexible_any = bool(msg.flexible)
        top = st is msg.root
        if top:
            what = " ".join(x for x in ("API key %d" % msg.api_key if msg.api_key is not None else "", msg.kind) if x)
            flexible = ", flexible from %d" % min(msg.flexible) if msg.flexible else ""
            summary = " (%s, versions %d-%d%s)" % (what, msg.min_version, msg.max_version, flexible)
        else:
            summary = ", part of `%s`" % msg.name
        self.w("/// `%s`%s." % (st.name, summary))
        self.w("#[derive(Debug, Clone, PartialEq)]")
        self.w("pub struct %s {" % st.name)
        for f in st.fields:
            vs = sorted(f.versions & msg.valid)
            desc = "versions %d-%d" % (vs[0], vs[-1]) if vs else "no supported version"
            if f.tagged:
                desc += ", tagged (tag %d) in %d+" % (f.tag, min(f.tagged))
            if f.nullable:
                desc += ", nullable in %d+" % min(f.nullable)
            self.w("    /// `%s`: %s." % (f.name, desc))
            self.w("    pub %s: %s," % (f.rust, f.rust_type()))
        if flexible_any:
            self.w("    /// Tagged fields this version of the schema does not know, kept for re-encoding.")
            self.w("    pub unknown_tagged_fields: Vec<RawTaggedField>,")
        self.w("}")
        self.w()
        self.w("impl Default for %s {" % st.name)
        self.w("    fn default() -> Self {")
        self.w("        Self {")
        for f in st.fields:
            self.w("            %s: %s," % (f.rust, default_expr(f)))
        if flexible_any:
            self.w("            unknown_tagged_fields: Vec::new(),")
        self.w("        }")
        self.w("    }")
        self.w("}")
        self.w()
        self.emit_min_size(st)
        self.emit_encode(st)
        self.emit_decode(st)
        self.emit_arbitrary(st)

    def emit_min_size(self, st):
        msg = self.msg
        by_size = {}
        for v in sorted(msg.valid):
            by_size.setdefault(min_size_for(st, msg, v), []).append(v)
        self.w("impl %s {" % st.name)
        self.w("    /// The fewest bytes one encoded value can take in `version`, used to bound array")
        self.w("    /// lengths before allocating.")
        self.w("    #[allow(unused_variables)]")
        self.w("    pub fn min_encoded_size(version: i16) -> usize {")
        if len(by_size) == 1:
            self.w("        %d" % list(by_size)[0])
        else:
            self.w("        match version {")
            items = sorted(by_size.items(), key=lambda kv: kv[1][0])
            for size, vs in items[:-1]:
                self.w("            %s => %d," % (version_pattern(vs), size))
            self.w("            _ => %d," % items[-1][0])
            self.w("        }")
        self.w("    }")
        self.w("}")
        self.w()

    def emit_encode(self, st):
        msg = self.msg
        self.w("impl Encodable for %s {" % st.name)
        self.w("    #[allow(unused_variables, clippy::bool_comparison)]")
        self.w("    fn encode(&self, buf: &mut BytesMut, version: i16) -> EncodeResult {")
        if st is msg.root:
            self.w("        check_version::<Self>(version).map_err(|(min, max)| EncodeError::UnsupportedVersion { api: %s, version, min, max })?;" % json.dumps(msg.name))
        for f in st.fields:
            regular = cond(f.regular(), msg.valid)
            present = cond(f.versions, msg.valid)
            compact = compact_expr(f, msg)
            nullable = cond(f.nullable, msg.valid)
            if regular != "false":
                if regular == "true":
                    self.emit_encode_value(f, "self." + f.rust, compact, nullable, 2, st)
                else:
                    self.w("        if %s {" % regular)
                    self.emit_encode_value(f, "self." + f.rust, compact, nullable, 3, st)
                    self.w("        }")
            if not f.ignorable and present != "true":
                absent = "!(%s)" % present if present != "false" else "true"
                self.w("        if %s && !(%s) {" % (absent, is_default_expr(f, "self." + f.rust)))
                self.w("            return Err(EncodeError::FieldNotInVersion { structure: \"%s\", field: \"%s\", version });" % (st.name, f.rust))
                self.w("        }")
        if msg.flexible:
            flex = cond(msg.flexible, msg.valid)
            self.w("        if %s {" % flex)
            self.w("            let mut tagged: Vec<(u32, Bytes)> = Vec::new();")
            for f in st.fields:
                if not f.tagged:
                    continue
                tcond = cond(f.tagged, msg.valid)
                self.w("            if %s && !(%s) {" % (tcond, is_default_expr(f, "self." + f.rust)))
                self.w("                let mut body = BytesMut::new();")
                self.w("                {")
                self.w("                    let buf = &mut body;")
                self.emit_encode_value(f, "self." + f.rust, "true", cond(f.nullable, msg.valid), 5, st)
                self.w("                }")
                self.w("                tagged.push((%d, body.freeze()));" % f.tag)
                self.w("            }")
            self.w("            tagged.extend(self.unknown_tagged_fields.iter().map(|f| (f.tag, f.data.clone())));")
            self.w("            put_tagged_fields(buf, tagged)?;")
            self.w("        }")
        self.w("        Ok(())")
        self.w("    }")
        self.w("}")
        self.w()

    def emit_decode(self, st):
        msg = self.msg
        self.w("impl Decodable for %s {" % st.name)
        self.w("    #[allow(unused_variables, unused_mut, clippy::bool_comparison)]")
        self.w("    fn decode(buf: &mut Bytes, version: i16) -> DecodeResult<Self> {")
        if st is msg.root:
            self.w("        check_version::<Self>(version).map_err(|(min, max)| DecodeError::UnsupportedVersion { api: %s, version, min, max })?;" % json.dumps(msg.name))
        self.w("        let mut this = Self::default();")
        for f in st.fields:
            regular = cond(f.regular(), msg.valid)
            if regular == "false":
                continue
            compact = compact_expr(f, msg)
            nullable = cond(f.nullable, msg.valid)
            self.w("        if %s {" % regular)
            self.w("            (|| -> DecodeResult<()> {")
            self.emit_decode_value(f, "this." + f.rust, compact, nullable, 4)
            self.w("                Ok(())")
            self.w("            })().map_err(|e| e.in_field(\"%s\", \"%s\"))?;" % (st.name, f.rust))
            self.w("        }")
        if msg.flexible:
            flex = cond(msg.flexible, msg.valid)
            self.w("        if %s {" % flex)
            self.w("            let mut unknown = Vec::new();")
            if not any(f.tagged for f in st.fields):
                self.w("            get_tagged_fields(buf, &mut unknown, |_, _| Ok(false))?;")
                self.w("            this.unknown_tagged_fields = unknown;")
                self.w("        }")
                self.w("        Ok(this)")
                self.w("    }")
                self.w("}")
                self.w()
                return
            self.w("            get_tagged_fields(buf, &mut unknown, |tag, buf| {")
            self.w("                match tag {")
            for f in st.fields:
                if not f.tagged:
                    continue
                tcond = cond(f.tagged, msg.valid)
                self.w("                    %d if %s => {" % (f.tag, tcond))
                self.w("                        (|| -> DecodeResult<()> {")
                self.emit_decode_value(f, "this." + f.rust, "true", cond(f.nullable, msg.valid), 7)
                self.w("                            Ok(())")
                self.w("                        })().map_err(|e| e.in_field(\"%s\", \"%s\"))?;" % (st.name, f.rust))
                self.w("                        Ok(true)")
                self.w("                    }")
            self.w("                    _ => Ok(false),")
            self.w("                }")
            self.w("            })?;")
            self.w("            this.unknown_tagged_fields = unknown;")
            self.w("        }")
        self.w("        Ok(this)")
        self.w("    }")
        self.w("}")
        self.w()

    # ----- arbitrary -----
    def arb_scalar(self, t):
        return {"bool": "u.arbitrary::<bool>()?", "int8": "u.arbitrary::<i8>()?", "int16": "u.arbitrary::<i16>()?",
                "int32": "u.arbitrary::<i32>()?", "int64": "u.arbitrary::<i64>()?", "uint16": "u.arbitrary::<u16>()?",
                "float64": "f64::from(u.arbitrary::<i32>()?)", "uuid": "Uuid(u.arbitrary()?)",
                "string": "arbitrary_string(u)?", "bytes": "Bytes::from(u.arbitrary::<Vec<u8>>()?)",
                "records": "Bytes::from(u.arbitrary::<Vec<u8>>()?)"}[t]

    def arb_value(self, f):
        if f.is_array:
            elem = ("%s::arbitrary_for_version(u, version)?" % f.struct) if f.struct else self.arb_scalar(f.elem)
            return "{ let n = u.int_in_range(0..=3usize)?; let mut items = Vec::with_capacity(n); for _ in 0..n { items.push(%s); } items }" % elem
        if f.struct:
            return "%s::arbitrary_for_version(u, version)?" % f.struct
        return self.arb_scalar(f.elem)

    def emit_arbitrary(self, st):
        msg = self.msg
        self.w("#[cfg(feature = \"arbitrary\")]")
        self.w("impl %s {" % st.name)
        self.w("    /// A random value that can be encoded in `version` (fields the version lacks stay at")
        self.w("    /// their defaults), for property tests and fuzzing.")
        self.w("    #[allow(unused_variables, clippy::bool_comparison)]")
        self.w("    pub fn arbitrary_for_version(u: &mut arbitrary::Unstructured<'_>, version: i16) -> arbitrary::Result<Self> {")
        self.w("        let mut this = Self::default();")
        for f in st.fields:
            present = cond(f.versions, msg.valid)
            if present == "false":
                continue
            nullable = cond(f.nullable, msg.valid)
            value = self.arb_value(f)
            if f.option:
                value = "if (%s) && u.ratio(1, 4)? { None } else { Some(%s) }" % (nullable, value)
            self.w("        if %s { this.%s = %s; }" % (present, f.rust, value))
        if msg.flexible:
            flex = cond(msg.flexible, msg.valid)
            self.w("        if (%s) && u.ratio(1, 8)? {" % flex)
            self.w("            this.unknown_tagged_fields.push(RawTaggedField { tag: 10_000 + u32::from(u.arbitrary::<u8>()?), data: Bytes::from(u.arbitrary::<Vec<u8>>()?) });")
            self.w("        }")
        self.w("        Ok(this)")
        self.w("    }")
        self.w("}")
        self.w()

    def emit(self):
        msg = self.msg
        source = "Kafka's %s.json schema" % msg.name
        if msg.overlaid:
            source += " and scripts/codegen/%s" % os.path.basename(OVERLAY)
        self.w("// @generated by scripts/codegen/gen_messages.py from %s. Do not edit." % source)
        self.w("//! `%s`: versions %d-%d%s." % (msg.name, msg.min_version, msg.max_version,
                                               ", flexible (KIP-482) from %d" % min(msg.flexible) if msg.flexible else ""))
        self.w()
        self.w("#![allow(clippy::too_many_lines, clippy::redundant_closure_call, clippy::needless_late_init, clippy::nonminimal_bool, clippy::overly_complex_bool_expr, clippy::absurd_extreme_comparisons, clippy::manual_range_contains, clippy::single_match, clippy::derivable_impls, clippy::match_single_binding, unused_comparisons, unused_imports)]")
        self.w()
        self.w("use bytes::{BufMut, Bytes, BytesMut};")
        self.w()
        self.w("use crate::error::{DecodeError, EncodeError};")
        self.w("use crate::messages::{check_version, Decodable, Encodable, Message};")
        self.w("use crate::primitives::*;")
        self.w("#[cfg(feature = \"arbitrary\")]")
        self.w("use crate::messages::arbitrary_string;")
        self.w()
        self.w("impl Message for %s {" % msg.name)
        self.w("    const NAME: &'static str = %s;" % json.dumps(msg.name))
        self.w("    const API_KEY: i16 = %d;" % (msg.api_key if msg.api_key is not None else -1))
        self.w("    const MIN_VERSION: i16 = %d;" % msg.min_version)
        self.w("    const MAX_VERSION: i16 = %d;" % msg.max_version)
        self.w("    const FLEXIBLE_MIN_VERSION: Option<i16> = %s;" % ("Some(%d)" % min(msg.flexible) if msg.flexible else "None"))
        self.w("}")
        self.w()
        for st in msg.all_structs():
            self.emit_struct(st)
        return "\n".join(self.out) + "\n"


def version_pattern(vs):
    """A match pattern for a sorted list of versions, as contiguous ranges."""
    runs = []
    for v in vs:
        if runs and runs[-1][1] == v - 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return " | ".join(str(a) if a == b else "%d..=%d" % (a, b) for a, b in runs)


def module_name(name):
    return snake(name).rstrip("_")


def generate(spec_dir, overlay):
    files = {}
    messages = []
    for api in APIS:
        for kind in ("Request", "Response"):
            messages.append(Message(spec_dir, api + kind, overlay))
    for extra in EXTRA:
        messages.append(Message(spec_dir, extra, overlay))
    unused = set(overlay) - {m.name for m in messages}
    if unused:
        raise SystemExit("overlay: entries for messages not generated: %s" % ", ".join(sorted(unused)))
    for msg in messages:
        files[module_name(msg.name) + ".rs"] = Emitter(msg).emit()
    files["mod.rs"] = emit_mod(messages)
    return {name: rustfmt(text) for name, text in files.items()}


def rustfmt(text):
    """Formats generated code with the repository's rustfmt settings, so `cargo fmt` leaves it be."""
    result = subprocess.run(["rustfmt", "--edition", "2021", "--config-path", os.path.join(ROOT, "rustfmt.toml")],
                            input=text, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit("rustfmt failed on generated code:\n" + result.stderr[:2000])
    return result.stdout


def emit_mod(messages):
    out = []
    w = out.append
    w("// @generated by scripts/codegen/gen_messages.py. Do not edit; edit the generator and rerun it.")
    w("//! The Kafka request and response messages, one module each, generated from Kafka's JSON")
    w("//! message schemas (every field at every version, tagged fields, defaults as the Java client")
    w("//! defines them).")
    w("//!")
    w("//! Each message implements [`Message`] (its API key and version range), [`Encodable`] and")
    w("//! [`Decodable`]; requests implement [`Request`] naming their response type.")
    w("")
    w("use bytes::{Bytes, BytesMut};")
    w("")
    w("use crate::error::{DecodeError, EncodeError};")
    w("")
    for msg in messages:
        w("pub mod %s;" % module_name(msg.name))
    w("")
    for msg in messages:
        w("pub use %s::%s;" % (module_name(msg.name), msg.name))
    w("")
    w(MOD_TRAITS)
    for msg in messages:
        if msg.kind == "request":
            resp = msg.name[: -len("Request")] + "Response"
            w("impl Request for %s {" % msg.name)
            w("    type Response = %s;" % resp)
            w("}")
            w("")
    w("/// An API this crate implements.")
    w("#[derive(Debug, Clone, Copy, PartialEq, Eq)]")
    w("pub struct ApiInfo {")
    w("    /// The API key.")
    w("    pub key: i16,")
    w("    /// The API name, e.g. `Fetch`.")
    w("    pub name: &'static str,")
    w("    /// Lowest version implemented.")
    w("    pub min_version: i16,")
    w("    /// Highest version implemented.")
    w("    pub max_version: i16,")
    w("    /// First flexible version (request header v2, response header v1), if any.")
    w("    pub flexible_min_version: Option<i16>,")
    w("}")
    w("")
    w("/// Every API this crate implements, by API key.")
    w("pub const SUPPORTED_APIS: &[ApiInfo] = &[")
    for msg in sorted((m for m in messages if m.kind == "request"), key=lambda m: m.api_key):
        w("    ApiInfo { key: %d, name: %s, min_version: %d, max_version: %d, flexible_min_version: %s }," % (
            msg.api_key, json.dumps(msg.name[: -len("Request")]), msg.min_version, msg.max_version,
            "Some(%d)" % min(msg.flexible) if msg.flexible else "None"))
    w("];")
    w("")
    w("/// The API with this key, if this crate implements it.")
    w("pub fn api_info(key: i16) -> Option<&'static ApiInfo> {")
    w("    SUPPORTED_APIS.iter().find(|api| api.key == key)")
    w("}")
    w("")
    w("/// Calls `$m!(RequestType, ResponseType)` once for every request/response pair, so tests and")
    w("/// tools can cover every message without listing them by hand.")
    w("#[macro_export]")
    w("macro_rules! for_each_api {")
    w("    ($m:ident) => {")
    for msg in messages:
        if msg.kind == "request":
            w("        $m!($crate::messages::%s, $crate::messages::%s);" % (msg.name, msg.name[: -len("Request")] + "Response"))
    w("    };")
    w("}")
    return "\n".join(out) + "\n"


MOD_TRAITS = '''/// A message type with a name, an API key and a range of versions.
pub trait Message: Encodable + Decodable + Default + Clone + PartialEq + std::fmt::Debug {
    /// The schema name, e.g. `FetchRequest`.
    const NAME: &'static str;
    /// The API key (or -1 for headers and embedded data).
    const API_KEY: i16;
    /// Lowest version this codec implements.
    const MIN_VERSION: i16;
    /// Highest version this codec implements.
    const MAX_VERSION: i16;
    /// First flexible version (compact encodings and tagged fields), if any.
    const FLEXIBLE_MIN_VERSION: Option<i16>;

    /// Whether `version` uses the flexible (KIP-482) encoding.
    fn is_flexible(version: i16) -> bool {
        Self::FLEXIBLE_MIN_VERSION.is_some_and(|v| version >= v)
    }
}

/// A request, naming the response the broker answers it with.
pub trait Request: Message {
    /// The response type.
    type Response: Message;
}

/// Writes a value in a given version.
pub trait Encodable {
    /// Appends the encoding of `self` in `version` to `buf`.
    fn encode(&self, buf: &mut BytesMut, version: i16) -> Result<(), EncodeError>;
}

/// Reads a value in a given version.
pub trait Decodable: Sized {
    /// Reads one value from the front of `buf`, advancing it. Byte fields are zero-copy slices
    /// of `buf`.
    fn decode(buf: &mut Bytes, version: i16) -> Result<Self, DecodeError>;
}

/// `Ok` if `version` is within `M`'s range, else the range.
pub(crate) fn check_version<M: Message>(version: i16) -> Result<(), (i16, i16)> {
    if (M::MIN_VERSION..=M::MAX_VERSION).contains(&version) {
        Ok(())
    } else {
        Err((M::MIN_VERSION, M::MAX_VERSION))
    }
}

/// Encodes `message` in `version` into a new buffer.
pub fn encode_to_bytes<M: Message>(message: &M, version: i16) -> Result<Bytes, EncodeError> {
    let mut buf = BytesMut::new();
    message.encode(&mut buf, version)?;
    Ok(buf.freeze())
}

/// Decodes a whole buffer as one `M` in `version`: trailing bytes are an error, and any error
/// carries the byte position where decoding stopped.
pub fn decode_exact<M: Message>(bytes: Bytes, version: i16) -> Result<M, DecodeError> {
    let total = bytes.len();
    let mut buf = bytes;
    let value = M::decode(&mut buf, version).map_err(|e| e.at(total - buf.len(), total))?;
    if !buf.is_empty() {
        let remaining = buf.len();
        return Err(DecodeError::TrailingBytes { what: M::NAME, remaining }.at(total - remaining, total));
    }
    Ok(value)
}

#[cfg(feature = "arbitrary")]
pub(crate) fn arbitrary_string(u: &mut arbitrary::Unstructured<'_>) -> arbitrary::Result<String> {
    let s: String = u.arbitrary()?;
    Ok(s.chars().take(64).collect())
}
'''


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", default=os.path.join(ROOT, "..", "shared", "kafka-spec", "message"))
    ap.add_argument("--overlay", default=OVERLAY, help="versions beyond the schemas in --spec ('' for none)")
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    overlay = load_json(args.overlay) if args.overlay else {}
    files = generate(args.spec, overlay)
    if args.check:
        stale = []
        for name, text in files.items():
            path = os.path.join(OUT_DIR, name)
            if not os.path.exists(path) or open(path).read() != text:
                stale.append(name)
        if stale:
            print("generated messages are stale: %s (run scripts/codegen/gen_messages.py)" % ", ".join(stale))
            sys.exit(1)
        print("generated messages are up to date (%d files)" % len(files))
        return
    os.makedirs(OUT_DIR, exist_ok=True)
    for name in os.listdir(OUT_DIR):
        if name.endswith(".rs") and name not in files:
            os.remove(os.path.join(OUT_DIR, name))
    for name, text in files.items():
        with open(os.path.join(OUT_DIR, name), "w") as f:
            f.write(text)
    print("wrote %d files to %s" % (len(files), os.path.relpath(OUT_DIR, ROOT)))


if __name__ == "__main__":
    main()
