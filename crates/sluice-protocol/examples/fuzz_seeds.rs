//! Writes the fuzz targets' seed corpora from the golden fixtures, so that fuzzing starts from
//! real peers' bytes: `cargo run -p sluice-protocol --example fuzz_seeds -- FIXTURES_DIR CORPUS_DIR`.
//!
//! For each fixture frame it writes: the whole frame (frame_decode), the message body behind the
//! header with the API key/version/direction prefix that `message_decode` dispatches on, the
//! record sets of produce and fetch frames (record_batch, record_batch_nocrc), and the compressed
//! payloads inside those batches (decompress_<codec>).

#![allow(clippy::print_stdout)] // a command-line program: printing is its output

use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use sluice_protocol::compression::Compression;
use sluice_protocol::frame::FrameDecoder;
use sluice_protocol::header::{decode_request_header, response_header_version};
use sluice_protocol::messages::{decode_exact, Decodable, FetchResponse, ProduceRequest, ResponseHeader};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let fixtures = PathBuf::from(args.next().unwrap_or_else(|| "fixtures".into()));
    let corpus = PathBuf::from(args.next().unwrap_or_else(|| "fuzz/corpus".into()));
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixtures.join("manifest.json"))?)?;
    let mut written = 0;
    for f in manifest["fixtures"].as_array().into_iter().flatten() {
        let file = f["file"].as_str().unwrap_or_default();
        let raw = std::fs::read(fixtures.join(file))?;
        // Seeds are named after their fixture set (`fixtures`, `kafka-4.4`) and file.
        let set = fixtures.file_name().and_then(|n| n.to_str()).unwrap_or("fixtures");
        let name = format!("{set}-{}", file.trim_end_matches(".bin"));
        let name = name.as_str();
        let mut seeds = vec![("frame_decode".to_string(), [&[7u8][..], &raw].concat())];
        let Some(mut body) = FrameDecoder::default().decode(&mut BytesMut::from(&raw[..]))? else {
            continue;
        };
        let key = f["api_key"].as_i64().unwrap_or(-1) as i16;
        let version = f["api_version"].as_i64().unwrap_or(0) as i16;
        let response = f["direction"] == "response";
        if response {
            ResponseHeader::decode(&mut body, response_header_version(key, version))?;
        } else {
            decode_request_header(&mut body)?;
        }
        seeds.push(("message_decode".into(), [&[key as u8, version as u8, u8::from(response)][..], &body].concat()));
        for records in record_sets(key, version, response, body) {
            seeds.push(("record_batch".into(), records.to_vec()));
            seeds.push(("record_batch_nocrc".into(), records.to_vec()));
            if let Some(payload) = compressed_payload(&records) {
                seeds.push(payload);
            }
        }
        for (target, bytes) in seeds {
            write_seed(&corpus.join(&target), name, &bytes)?;
            written += 1;
        }
    }
    println!("wrote {written} seeds under {}", corpus.display());
    Ok(())
}

fn record_sets(key: i16, version: i16, response: bool, body: Bytes) -> Vec<Bytes> {
    match (key, response) {
        (0, false) => decode_exact::<ProduceRequest>(body, version)
            .map(|r| r.topic_data.into_iter().flat_map(|t| t.partition_data).filter_map(|p| p.records).collect())
            .unwrap_or_default(),
        (1, true) => decode_exact::<FetchResponse>(body, version)
            .map(|r| r.responses.into_iter().flat_map(|t| t.partitions).filter_map(|p| p.records).collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// The compressed records of the first batch, for its codec's decompress target.
fn compressed_payload(records: &[u8]) -> Option<(String, Vec<u8>)> {
    let attributes = i16::from_be_bytes([*records.get(21)?, *records.get(22)?]);
    let codec = Compression::from_attributes(attributes).ok()?;
    if codec == Compression::None {
        return None;
    }
    Some((format!("decompress_{}", codec.name()), records.get(61..)?.to_vec()))
}

fn write_seed(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(format!("seed-{name}")), bytes)
}
