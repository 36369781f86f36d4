//! Structure-aware round trip: a random message valid for a random version encodes, and decodes
//! back to the same value, for every request and response.
#![no_main]
use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use sluice_protocol::messages::{decode_exact, encode_to_bytes, Message};

fn check<M: Message>(u: &mut Unstructured<'_>, make: fn(&mut Unstructured<'_>, i16) -> arbitrary::Result<M>) {
    let Ok(version) = u.int_in_range(M::MIN_VERSION..=M::MAX_VERSION) else { return };
    let Ok(value) = make(u, version) else { return };
    let bytes = encode_to_bytes(&value, version).expect("a valid message encodes");
    let decoded: M = decode_exact(bytes, version).expect("an encoded message decodes");
    assert_eq!(decoded, value);
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(pick) = u.arbitrary::<u8>() else { return };
    let mut index = 0u8;
    macro_rules! dispatch {
        ($req:ty, $resp:ty) => {
            if pick / 2 == index {
                if pick % 2 == 0 {
                    check::<$req>(&mut u, <$req>::arbitrary_for_version);
                } else {
                    check::<$resp>(&mut u, <$resp>::arbitrary_for_version);
                }
            }
            index += 1;
        };
    }
    sluice_protocol::for_each_api!(dispatch);
    let _ = index;
});
