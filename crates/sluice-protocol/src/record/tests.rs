use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::legacy::{encode_message, encode_wrapper};
use super::*;
use crate::compression::Compression;

fn record(offset: i64, timestamp: i64, key: Option<&str>, value: Option<&str>) -> Record {
    Record {
        offset,
        timestamp,
        key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
        value: value.map(|v| Bytes::copy_from_slice(v.as_bytes())),
        headers: vec![RecordHeader::new("h", Some(b"v")), RecordHeader::new("h", None)],
    }
}

/// A batch header and its records, consistent with each other (as decoding returns them).
type Batch = (BatchHeader, Vec<Record>);

fn batch(base_offset: i64, count: i64, codec: Compression) -> Batch {
    let records: Vec<Record> =
        (0..count).map(|i| record(base_offset + i, 1_700_000_000_000 + i, Some("k"), Some("value"))).collect();
    let header = BatchHeader {
        base_offset,
        attributes: codec.attribute_bits(),
        last_offset_delta: (count - 1) as i32,
        base_timestamp: 1_700_000_000_000,
        max_timestamp: 1_700_000_000_000 + count - 1,
        ..BatchHeader::default()
    };
    (header, records)
}

fn encode(batches: &[Batch]) -> Bytes {
    let mut out = BytesMut::new();
    for (header, records) in batches {
        encode_batch(header, records, &mut out).unwrap();
    }
    out.freeze()
}

fn owned(decoded: &DecodedRecords) -> Vec<Batch> {
    decoded.batches.iter().map(|b| (b.header, b.to_records())).collect()
}

const CODECS: [Compression; 5] =
    [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd];

#[test]
fn batches_round_trip_with_every_codec() {
    for codec in CODECS {
        let batches = vec![batch(0, 5, codec), batch(5, 1, codec), batch(6, 100, codec)];
        let decoded = decode_records(&encode(&batches), &DecodeOptions::default()).unwrap();
        assert_eq!(owned(&decoded), batches, "{codec:?}");
        assert_eq!(decoded.next_offset, Some(106));
        assert_eq!(decoded.partial_bytes, 0);
    }
}

#[test]
fn uncompressed_values_are_slices_of_the_input_not_copies() {
    let input = encode(&[batch(0, 3, Compression::None)]);
    let decoded = decode_records(&input, &DecodeOptions::default()).unwrap();
    let range = input.as_ptr() as usize..input.as_ptr() as usize + input.len();
    for r in decoded.records() {
        assert!(range.contains(&(r.value().unwrap().as_ptr() as usize)));
        assert!(range.contains(&(r.value_bytes().unwrap().as_ptr() as usize)));
        assert!(range.contains(&(r.headers().next().unwrap().1.unwrap().as_ptr() as usize)));
        let owned = r.to_record();
        assert!(range.contains(&(owned.headers[0].value.as_ref().unwrap().as_ptr() as usize)));
    }
}

#[test]
fn a_crc_mismatch_names_the_batch_offset() {
    let mut bytes = BytesMut::from(&encode(&[batch(0, 2, Compression::None), batch(42, 2, Compression::None)])[..]);
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    let err = decode_records(&bytes.freeze(), &DecodeOptions::default()).unwrap_err();
    assert!(matches!(err.root_cause(), crate::DecodeError::CrcMismatch { base_offset: 42, .. }), "{err}");
    assert!(err.to_string().contains("base offset 42"), "{err}");
}

#[test]
fn finish_bytes_gives_the_same_batch_as_finish_for_every_codec() {
    for codec in CODECS {
        let (header, records) = batch(0, 5, codec);
        let fill = |builder: &mut BatchBuilder| {
            for r in &records {
                let headers: Vec<(&[u8], Option<&[u8]>)> =
                    r.headers.iter().map(|h| (&h.key[..], h.value.as_deref())).collect();
                builder.append(r.timestamp, r.key.as_deref(), r.value.as_deref(), &headers).unwrap();
            }
        };
        let (mut a, mut b) = (BatchBuilder::new(), BatchBuilder::with_capacity(1 << 10));
        fill(&mut a);
        fill(&mut b);
        assert_eq!(a.size_bytes(), b.size_bytes());
        let mut expected = BytesMut::new();
        a.finish(&header, &mut expected).unwrap();
        let got = b.finish_bytes(&header).unwrap();
        assert_eq!(&got[..], &expected[..], "{codec:?}");
        let decoded = decode_records(&got, &DecodeOptions::default()).unwrap();
        assert_eq!(owned(&decoded), vec![(header, records)], "{codec:?}");
    }
    // An empty builder finishes into a valid empty batch too.
    let empty = BatchBuilder::new().finish_bytes(&BatchHeader::default()).unwrap();
    assert_eq!(empty.len(), batch::BATCH_HEADER_LEN);
}

#[test]
fn set_producer_state_renumbers_an_encoded_batch_and_keeps_it_valid() {
    for codec in CODECS {
        let (header, records) = batch(7, 3, codec);
        let mut bytes = BytesMut::from(&encode(&[(header, records.clone())])[..]);
        set_producer_state(&mut bytes, 99, 4, 1_000).unwrap();
        let decoded = decode_records(&bytes.freeze(), &DecodeOptions::default()).unwrap();
        let got = &decoded.batches[0];
        assert_eq!((got.header.producer_id, got.header.producer_epoch, got.header.base_sequence), (99, 4, 1_000));
        assert_eq!(got.to_records(), records, "{codec:?}: the records are untouched");
    }
    assert!(set_producer_state(&mut [0u8; 10], 1, 1, 1).is_err());
    let mut not_v2 = encode(&[batch(0, 1, Compression::None)]).to_vec();
    not_v2[16] = 1;
    assert!(matches!(set_producer_state(&mut not_v2, 1, 1, 1), Err(crate::EncodeError::NotABatch { .. })));
}

#[test]
fn batches_before_the_start_offset_are_skipped_without_reading_them() {
    // Corrupt the first batch's body: skipping it must not even check its CRC.
    let first = encode(&[batch(0, 10, Compression::Gzip)]);
    let mut bytes = BytesMut::from(&first[..]);
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    bytes.extend_from_slice(&encode(&[batch(10, 10, Compression::None)]));
    let decoded =
        decode_records(&bytes.freeze(), &DecodeOptions { min_offset: 13, ..DecodeOptions::default() }).unwrap();
    assert_eq!(decoded.records().map(|r| r.offset()).collect::<Vec<_>>(), (13..20).collect::<Vec<_>>());
    assert_eq!(decoded.next_offset, Some(20));
}

/// A commit marker: key = version 0, type 1; value = version 0, coordinator epoch 5.
fn marker_record() -> Record {
    Record {
        offset: 0,
        timestamp: 1,
        key: Some(Bytes::from_static(&[0, 0, 0, 1])),
        value: Some(Bytes::from_static(&[0, 0, 0, 0, 0, 5])),
        headers: vec![],
    }
}

#[test]
fn control_batches_and_transactional_flags_are_exposed() {
    let marker = Record { offset: 7, ..marker_record() };
    let control = BatchHeader {
        base_offset: 7,
        attributes: ATTR_TRANSACTIONAL | ATTR_CONTROL,
        producer_id: 99,
        producer_epoch: 1,
        ..BatchHeader::default()
    };
    let decoded = decode_records(&encode(&[(control, vec![marker])]), &DecodeOptions::default()).unwrap();
    let b = &decoded.batches[0];
    assert!(b.header.is_control() && b.header.is_transactional());
    assert_eq!(b.control_type(), Some(ControlRecordType::Commit));
    assert_eq!((b.header.producer_id, b.header.producer_epoch), (99, 1));
    let data = decode_records(&encode(&[batch(0, 1, Compression::None)]), &DecodeOptions::default()).unwrap();
    assert_eq!(data.batches[0].control_type(), None);

    // Data then a marker: records() yields the data only, as a consumer expects; the marker
    // batch stays visible in `batches`.
    let mut mixed = BytesMut::from(&encode(&[batch(0, 7, Compression::None)])[..]);
    mixed.extend_from_slice(&encode(&[(control, vec![Record { offset: 7, ..marker_record() }])]));
    let decoded = decode_records(&mixed.freeze(), &DecodeOptions::default()).unwrap();
    assert_eq!(decoded.records().map(|r| r.offset()).collect::<Vec<_>>(), (0..7).collect::<Vec<_>>());
    assert_eq!(decoded.batches.len(), 2);
    assert!(decoded.batches[1].header.is_control());
}

#[test]
fn log_append_time_batches_give_every_record_the_max_timestamp() {
    let (mut header, records) = batch(0, 3, Compression::None);
    header.attributes |= ATTR_LOG_APPEND_TIME;
    let mut bytes = BytesMut::new();
    encode_batch(&header, &records, &mut bytes).unwrap();
    // The broker overwrites max timestamp on append; emulate it and fix the CRC.
    bytes[35..43].copy_from_slice(&5_000i64.to_be_bytes());
    let crc = crc32c::crc32c(&bytes[21..]);
    bytes[17..21].copy_from_slice(&crc.to_be_bytes());
    let decoded = decode_records(&bytes.freeze(), &DecodeOptions::default()).unwrap();
    assert_eq!(decoded.batches[0].header.timestamp_type(), TimestampType::LogAppendTime);
    assert!(decoded.records().all(|r| r.timestamp() == 5_000));
}

#[test]
fn malformed_batches_are_errors_not_panics() {
    let good = encode(&[batch(0, 3, Compression::None)]);
    // Declared length shorter than any header.
    let mut short = BytesMut::from(&good[..]);
    short[8..12].copy_from_slice(&5i32.to_be_bytes());
    assert!(decode_records(&short.freeze(), &DecodeOptions::default()).is_err());
    // Unknown magic.
    let mut magic = BytesMut::from(&good[..]);
    magic[16] = 3;
    assert!(decode_records(&magic.freeze(), &DecodeOptions::default()).is_err());
    // A records count larger than the records (CRC off to reach the structure).
    let mut count = BytesMut::from(&good[..]);
    count[57..61].copy_from_slice(&1_000_000i32.to_be_bytes());
    let options = DecodeOptions { verify_crc: false, ..DecodeOptions::default() };
    assert!(decode_records(&count.freeze(), &options).is_err());
    // Every single-byte corruption after the CRC, with the CRC gate off, decodes or errors.
    for i in 21..good.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut bytes = BytesMut::from(&good[..]);
            bytes[i] ^= flip;
            let _ = decode_records(&bytes.freeze(), &options);
        }
    }
}

#[test]
fn legacy_v0_and_v1_messages_decode_including_compressed_wrappers() {
    let mut set = BytesMut::new();
    encode_message(&mut set, 0, 0, 0, -1, Some(b"k0"), Some(b"v0")).unwrap();
    encode_message(&mut set, 1, 1, 0, 1_000, None, Some(b"v1")).unwrap();
    // A magic-1 gzip wrapper of three messages with relative offsets 0..2; the wrapper holds the
    // last absolute offset, 4.
    let mut inner = BytesMut::new();
    for i in 0..3 {
        encode_message(&mut inner, 1, i, 0, 2_000 + i, None, Some(format!("in{i}").as_bytes())).unwrap();
    }
    encode_wrapper(&mut set, 1, 4, 2_002, Compression::Gzip, &inner).unwrap();
    let decoded = decode_records(&set.freeze(), &DecodeOptions::default()).unwrap();
    let got: Vec<(i64, i64, Option<&[u8]>)> =
        decoded.records().map(|r| (r.offset(), r.timestamp(), r.value())).collect();
    assert_eq!(
        got,
        vec![
            (0, -1, Some(&b"v0"[..])),
            (1, 1_000, Some(&b"v1"[..])),
            (2, 2_000, Some(&b"in0"[..])),
            (3, 2_001, Some(&b"in1"[..])),
            (4, 2_002, Some(&b"in2"[..])),
        ]
    );
    assert_eq!(decoded.batches.iter().map(|b| b.header.magic).collect::<Vec<_>>(), vec![0, 1, 1]);
    assert_eq!(decoded.batches[0].record(0).unwrap().key(), Some(&b"k0"[..]));
    assert_eq!(decoded.batches[1].record(0).unwrap().key(), None);
    assert_eq!(decoded.batches[2].header.compression(), Compression::Gzip);
    assert_eq!(decoded.next_offset, Some(5));
}

#[test]
fn a_failed_encode_leaves_the_buffer_as_it_was() {
    let mut out = BytesMut::from(&b"earlier batches"[..]);
    // An offset before the batch's base offset cannot be expressed as a delta.
    let bad = vec![record(5, 0, None, Some("v")), record(4, 0, None, Some("w"))];
    let header = BatchHeader { base_offset: 5, ..BatchHeader::with_compression(Compression::Lz4) };
    assert!(encode_batch(&header, &bad, &mut out).is_err());
    assert_eq!(&out[..], b"earlier batches");
}

#[test]
fn a_wrapper_holding_messages_of_another_magic_is_refused() {
    let mut inner = BytesMut::new();
    encode_message(&mut inner, 0, 0, 0, -1, None, Some(b"old")).unwrap();
    let mut set = BytesMut::new();
    encode_wrapper(&mut set, 1, 0, 1_000, Compression::Gzip, &inner).unwrap();
    let err = decode_records(&set.freeze(), &DecodeOptions::default()).unwrap_err();
    assert!(err.to_string().contains("magic 0 inside a wrapper of magic 1"), "{err}");
}

#[test]
fn legacy_crc_mismatch_is_an_error() {
    let mut set = BytesMut::new();
    encode_message(&mut set, 1, 9, 0, 0, None, Some(b"value")).unwrap();
    let last = set.len() - 1;
    set[last] ^= 1;
    let err = decode_records(&set.freeze(), &DecodeOptions::default()).unwrap_err();
    assert!(matches!(err.root_cause(), crate::DecodeError::CrcMismatch { base_offset: 9, .. }), "{err}");
}

#[test]
fn a_bomb_batch_is_refused_by_the_decompression_limit() {
    let big = Record { value: Some(Bytes::from(vec![0u8; 4 << 20])), ..record(0, 0, None, None) };
    for codec in [Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd] {
        let bytes = encode(&[(BatchHeader::with_compression(codec), vec![big.clone()])]);
        let options = DecodeOptions { max_decompressed_bytes: 1 << 20, ..DecodeOptions::default() };
        let err = decode_records(&bytes, &options).unwrap_err();
        assert!(matches!(err.root_cause(), crate::DecodeError::DecompressedTooLarge { .. }), "{codec:?}: {err}");
    }
}

#[test]
fn many_small_bombs_expand_no_further_than_the_total_limit_and_the_set_ends_before_them() {
    // 200 batches of one 1 MiB record of zeros: zstd makes each a few dozen bytes, so the whole
    // set is a few KiB (well inside one fetch) and would expand to 200 MiB.
    let zeros = Record { value: Some(Bytes::from(vec![0u8; 1 << 20])), ..record(0, 0, None, None) };
    let batches: Vec<Batch> = (0..200)
        .map(|i| {
            let header = BatchHeader { base_offset: i, ..BatchHeader::with_compression(Compression::Zstd) };
            (header, vec![Record { offset: i, ..zeros.clone() }])
        })
        .collect();
    let bytes = encode(&batches);
    assert!(bytes.len() < 100 << 10, "{} bytes on the wire", bytes.len());
    let options = DecodeOptions { max_total_decompressed_bytes: 8 << 20, ..DecodeOptions::default() };
    let decoded = decode_records(&bytes, &options).unwrap();
    let expanded: usize = decoded.batches.iter().map(RecordBatch::data_len).sum();
    assert!(expanded <= 8 << 20, "{expanded} bytes");
    assert_eq!(decoded.batches.len(), 7, "seven whole batches of just over 1 MiB fit in 8 MiB");
    assert_eq!(decoded.next_offset, Some(7), "the next fetch starts at the first batch left out");
    // Decoding on from there gives the next ones: nothing is lost, only deferred.
    let rest = bytes.slice(encode(&batches[..7]).len()..);
    let next = decode_records(&rest, &options).unwrap();
    assert_eq!(next.batches.first().map(|b| b.header.base_offset), Some(7));
    // However low the total, the first batch is decoded (up to the per-batch limit), so a
    // reader always moves on.
    let tiny = DecodeOptions { max_total_decompressed_bytes: 1, ..DecodeOptions::default() };
    assert_eq!(decode_records(&bytes, &tiny).unwrap().batches.len(), 1);
    // By default the total is 64 MiB.
    assert_eq!(decode_records(&bytes, &DecodeOptions::default()).unwrap().batches.len(), 63);
}

/// A record's key, value, headers, offset gap and timestamp offset.
type RecordSpec = (Option<Vec<u8>>, Option<Vec<u8>>, Vec<(String, Option<Vec<u8>>)>, u16, i32);

fn arb_record() -> impl Strategy<Value = RecordSpec> {
    (
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..200)),
        proptest::collection::vec(
            ("[a-z]{0,8}", proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16))),
            0..4,
        ),
        any::<u16>(),
        -1_000_000..1_000_000i32,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_batches_round_trip(
        base_offset in 0i64..1 << 40,
        codec in 0usize..5,
        producer in (-1i64..1000, -1i16..10, -1i32..1000),
        specs in proptest::collection::vec(arb_record(), 1..50),
    ) {
        let mut offset = base_offset;
        let records: Vec<Record> = specs.into_iter().map(|(key, value, headers, gap, ts)| {
            offset += i64::from(gap % 3); // compacted topics leave gaps
            Record {
                offset,
                timestamp: 1_700_000_000_000 + i64::from(ts),
                key: key.map(Bytes::from),
                value: value.map(Bytes::from),
                headers: headers.into_iter().map(|(k, v)| RecordHeader { key: Bytes::from(k), value: v.map(Bytes::from) }).collect(),
            }
        }).collect();
        let header = BatchHeader {
            base_offset,
            attributes: CODECS[codec].attribute_bits(),
            producer_id: producer.0,
            producer_epoch: producer.1,
            base_sequence: producer.2,
            base_timestamp: records[0].timestamp,
            max_timestamp: records.iter().map(|r| r.timestamp).max().unwrap(),
            last_offset_delta: (records.last().unwrap().offset - base_offset) as i32,
            ..BatchHeader::default()
        };
        let original = (header, records);
        let bytes = encode(std::slice::from_ref(&original));
        let decoded = decode_records(&bytes, &DecodeOptions::default()).unwrap();
        prop_assert_eq!(owned(&decoded), vec![original]);
        // Any truncation is a partial batch, never an error.
        let cut = bytes.len() / 2;
        let partial = decode_records(&bytes.slice(..cut), &DecodeOptions::default()).unwrap();
        prop_assert_eq!(partial.partial_bytes, cut);
    }
}
