//! The incremental frame decoder over arbitrary bytes fed in arbitrary pieces: never panics, and
//! the frames it returns are the same however the input is split.
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sluice_protocol::frame::FrameDecoder;

fuzz_target!(|input: (u8, &[u8])| {
    let (step, data) = input;
    let decoder = FrameDecoder::new(1 << 16);
    let whole = {
        let mut buf = BytesMut::from(data);
        let mut frames = Vec::new();
        while let Ok(Some(frame)) = decoder.decode(&mut buf) {
            frames.push(frame);
        }
        frames
    };
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    'outer: for chunk in data.chunks(usize::from(step).max(1)) {
        buf.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(_) => break 'outer,
            }
        }
    }
    assert_eq!(frames, whole);
});
