//! The primitive readers driven by an arbitrary program: each input byte picks a reader (and
//! whether to use the compact encoding), run over the rest of the input until it fails or ends.
#![no_main]
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sluice_protocol::primitives::*;

fuzz_target!(|input: (Vec<u8>, &[u8])| {
    let (program, data) = input;
    let mut buf = Bytes::copy_from_slice(data);
    let mut unknown = Vec::new();
    for op in program {
        let compact = op & 0x80 != 0;
        let ok = match op & 0x0f {
            0 => get_i8(&mut buf).is_ok(),
            1 => get_i16(&mut buf).is_ok(),
            2 => get_i32(&mut buf).is_ok(),
            3 => get_i64(&mut buf).is_ok(),
            4 => get_uvarint(&mut buf).is_ok(),
            5 => get_varint(&mut buf).is_ok(),
            6 => get_varlong(&mut buf).is_ok(),
            7 => get_string(&mut buf, compact).is_ok(),
            8 => get_nullable_string(&mut buf, compact).is_ok(),
            9 => get_bytes(&mut buf, compact).is_ok(),
            10 => get_nullable_bytes(&mut buf, compact).is_ok(),
            11 => get_nullable_array_len(&mut buf, compact, 1).is_ok_and(|n| n.is_none_or(|n| n <= buf.len())),
            12 => get_uuid(&mut buf).is_ok(),
            13 => get_tagged_fields(&mut buf, &mut unknown, |tag, _| Ok(tag % 2 == 0)).is_ok(),
            14 => get_f64(&mut buf).is_ok(),
            _ => get_bool(&mut buf).is_ok(),
        };
        if !ok {
            break;
        }
    }
});
