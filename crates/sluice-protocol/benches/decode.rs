//! Fetch-response decoding, sluice beside rskafka on the same bytes in the same run.
//!
//! Input: a Fetch v4 response (the newest version rskafka reads) of about 1 MiB holding 100-byte
//! record values in 1000-record batches, once uncompressed and once per codec, encoded by sluice.
//! Both decoders parse the whole response including every record (rskafka copies each key and
//! value into a `Vec`; sluice hands out `Bytes` slices). Criterion measures; the summary at the
//! end reads criterion's estimates back and prints records/s, MB/s of response bytes, and the
//! ratio. Run: `cargo bench -p sluice-protocol --bench decode`.

#![allow(clippy::print_stdout)] // a command-line program: printing is its output

use std::io::Cursor;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput};
use sluice_protocol::compression::Compression;
use sluice_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use sluice_protocol::messages::{decode_exact, encode_to_bytes, FetchResponse};
use sluice_protocol::record::{decode_records, encode_batch, BatchHeader, DecodeOptions, Record};

const FETCH_VERSION: i16 = 4;
const TARGET_BYTES: usize = 1 << 20;
const RECORDS_PER_BATCH: usize = 1000;
const VALUE_BYTES: usize = 100;

/// A deterministic, realistically compressible 100-byte value (a click-like CSV line, padded).
fn value(i: usize) -> Bytes {
    let mut state = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut line =
        format!("user-{:06},item-{:05},{},", next() % 100_000, next() % 20_000, 1_700_000_000_000u64 + i as u64);
    while line.len() < VALUE_BYTES {
        line.push(char::from(b'a' + (next() % 26) as u8));
    }
    line.truncate(VALUE_BYTES);
    Bytes::from(line)
}

/// A Fetch v4 response of about `TARGET_BYTES` of record batches compressed with `codec`, and the
/// number of records in it.
fn fetch_response(codec: Compression) -> (Bytes, usize) {
    let mut records = BytesMut::new();
    let mut offset = 0usize;
    while records.len() < TARGET_BYTES {
        let header = BatchHeader { base_offset: offset as i64, ..BatchHeader::with_compression(codec) };
        let batch: Vec<Record> = (offset..offset + RECORDS_PER_BATCH)
            .map(|i| Record {
                offset: i as i64,
                timestamp: 1_700_000_000_000 + i as i64,
                value: Some(value(i)),
                ..Record::default()
            })
            .collect();
        encode_batch(&header, &batch, &mut records).expect("encode batch");
        offset += RECORDS_PER_BATCH;
    }
    let response = FetchResponse {
        responses: vec![FetchableTopicResponse {
            topic: "bench".into(),
            partitions: vec![PartitionData {
                high_watermark: offset as i64,
                last_stable_offset: offset as i64,
                aborted_transactions: Some(vec![]),
                records: Some(records.freeze()),
                ..PartitionData::default()
            }],
            ..FetchableTopicResponse::default()
        }],
        ..FetchResponse::default()
    };
    (encode_to_bytes(&response, FETCH_VERSION).expect("encode response"), offset)
}

/// Decodes the response and every record, and reads each value (as a consumer would), so that
/// both decoders do the same work: rskafka's values are already copied out by then.
fn sluice_decode(bytes: &Bytes) -> usize {
    let response: FetchResponse = decode_exact(bytes.clone(), FETCH_VERSION).expect("sluice decodes");
    let options = DecodeOptions::default();
    let mut count = 0;
    for topic in &response.responses {
        for partition in &topic.partitions {
            let Some(records) = &partition.records else { continue };
            let decoded = decode_records(records, &options).expect("records");
            count += decoded.records().filter(|r| r.value().is_some()).count();
        }
    }
    count
}

fn rskafka_decode(bytes: &Bytes) -> usize {
    use rskafka::protocol::api_version::ApiVersion;
    use rskafka::protocol::messages::{FetchResponse, ReadVersionedType};
    use rskafka::protocol::primitives::Int16;
    use rskafka::protocol::record::ControlBatchOrRecords;
    let response = FetchResponse::read_versioned(&mut Cursor::new(&bytes[..]), ApiVersion(Int16(FETCH_VERSION)))
        .expect("rskafka decodes");
    let mut count = 0;
    for topic in &response.responses {
        for partition in &topic.partitions {
            for batch in &partition.records.0 {
                if let ControlBatchOrRecords::Records(records) = &batch.records {
                    count += records.iter().filter(|r| r.value.is_some()).count();
                }
            }
        }
    }
    count
}

const CODECS: [Compression; 5] =
    [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd];

fn main() {
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
        .configure_from_args();
    let mut rows = Vec::new();
    for codec in CODECS {
        let (bytes, records) = fetch_response(codec);
        assert_eq!(sluice_decode(&bytes), records);
        assert_eq!(rskafka_decode(&bytes), records, "rskafka reads the same records");
        let name = format!("fetch_decode_{}", codec.name());
        let mut group = criterion.benchmark_group(&name);
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function("sluice", |b| b.iter(|| sluice_decode(&bytes)));
        group.bench_function("rskafka", |b| b.iter(|| rskafka_decode(&bytes)));
        group.finish();
        rows.push((name, codec, bytes.len(), records));
    }
    criterion.final_summary();
    print_summary(&rows);
}

/// Criterion's mean estimate for `group/function`, in nanoseconds per iteration.
fn estimate_ns(group: &str, function: &str) -> Option<f64> {
    let dir = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../target").into());
    let path = format!("{dir}/criterion/{group}/{function}/new/estimates.json");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    json["mean"]["point_estimate"].as_f64()
}

fn print_summary(rows: &[(String, Compression, usize, usize)]) {
    println!("\nFetch v{FETCH_VERSION} response decode, {VALUE_BYTES}-byte values, {RECORDS_PER_BATCH}-record batches (criterion means)");
    println!("| codec | response bytes | records | sluice rec/s | sluice MB/s | rskafka rec/s | rskafka MB/s | sluice/rskafka |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (group, codec, bytes, records) in rows {
        let (Some(ours), Some(theirs)) = (estimate_ns(group, "sluice"), estimate_ns(group, "rskafka")) else {
            println!("| {} | (no criterion estimates found; run without --test) |", codec.name());
            continue;
        };
        let per_sec = |ns: f64, n: usize| n as f64 / (ns / 1e9);
        println!(
            "| {} | {} | {} | {:.1} M | {:.0} | {:.1} M | {:.0} | {:.2}x |",
            codec.name(),
            bytes,
            records,
            per_sec(ours, *records) / 1e6,
            per_sec(ours, *bytes) / 1e6,
            per_sec(theirs, *records) / 1e6,
            per_sec(theirs, *bytes) / 1e6,
            theirs / ours
        );
    }
}
