//! Every request and response decoder over arbitrary bytes. The first byte picks the API key,
//! the second the version, the third's low bit request (0) or response (1); the rest is the
//! message body. Whatever decodes must re-encode, and decode again to the same value.
#![no_main]
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sluice_protocol::messages::{decode_exact, encode_to_bytes, Message};

fn check<M: Message>(version: i16, body: &[u8]) {
    if !(M::MIN_VERSION..=M::MAX_VERSION).contains(&version) {
        return;
    }
    let Ok(value) = decode_exact::<M>(Bytes::copy_from_slice(body), version) else { return };
    let bytes = encode_to_bytes(&value, version).expect("a decoded message re-encodes");
    let again: M = decode_exact(bytes, version).expect("a re-encoded message decodes");
    assert_eq!(again, value);
}

fuzz_target!(|data: &[u8]| {
    let [key, version, flags, body @ ..] = data else { return };
    let (key, version, response) = (i16::from(*key), i16::from(*version), flags & 1 == 1);
    macro_rules! dispatch {
        ($req:ty, $resp:ty) => {
            if <$req as Message>::API_KEY == key {
                if response {
                    check::<$resp>(version, body)
                } else {
                    check::<$req>(version, body)
                }
            }
        };
    }
    sluice_protocol::for_each_api!(dispatch);
});
