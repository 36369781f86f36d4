//! Size-prefixed framing: every Kafka request and response is an INT32 byte count followed by
//! that many bytes.
//!
//! [`FrameDecoder`] is incremental and sans-IO: hand it whatever bytes have arrived and it returns
//! `Ok(None)` until a whole frame is there, `Ok(Some(frame))` when one is, and `Err` only for input
//! that can never become a valid frame (a negative size, or a size over the configured maximum,
//! refused before any of it is buffered).

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};

/// Kafka's default `socket.request.max.bytes` (100 MiB): a sensible ceiling for one frame.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 100 * 1024 * 1024;

/// Splits a byte stream into frames.
#[derive(Debug, Clone, Copy)]
pub struct FrameDecoder {
    max_frame_bytes: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_BYTES)
    }
}

impl FrameDecoder {
    /// A decoder that refuses frames larger than `max_frame_bytes` (not counting the size prefix).
    pub fn new(max_frame_bytes: usize) -> Self {
        Self { max_frame_bytes }
    }

    /// The configured maximum frame size.
    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }

    /// How many bytes the frame at the front of `buf` needs in total (prefix included), once its
    /// size prefix has arrived; `Ok(None)` before that. Lets a reader reserve exactly once.
    pub fn frame_len(&self, buf: &[u8]) -> Result<Option<usize>, DecodeError> {
        let Some(prefix) = buf.first_chunk::<4>() else {
            return Ok(None);
        };
        let size = i32::from_be_bytes(*prefix);
        let len = usize::try_from(size).map_err(|_| DecodeError::InvalidLength {
            what: "frame",
            length: i64::from(size),
            reason: "negative size prefix",
        })?;
        if len > self.max_frame_bytes {
            return Err(DecodeError::FrameTooLarge { size: i64::from(size), max: self.max_frame_bytes });
        }
        Ok(Some(len + 4))
    }

    /// Removes one whole frame from the front of `buf` and returns its body (without the size
    /// prefix), or `Ok(None)` if the frame is not complete yet (nothing is consumed then).
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Bytes>, DecodeError> {
        match self.frame_len(buf)? {
            Some(total) if buf.len() >= total => {
                buf.advance(4);
                Ok(Some(buf.split_to(total - 4).freeze()))
            }
            _ => Ok(None),
        }
    }
}

/// Appends one frame to `buf`: reserves the size prefix, lets `body` write the frame's contents,
/// then fills the prefix in. On error `buf` is left as it was.
pub fn encode_frame(
    buf: &mut BytesMut,
    body: impl FnOnce(&mut BytesMut) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    let start = buf.len();
    buf.put_i32(0);
    if let Err(e) = body(buf) {
        buf.truncate(start);
        return Err(e);
    }
    let size = buf.len() - start - 4;
    let Ok(size32) = i32::try_from(size) else {
        buf.truncate(start);
        return Err(EncodeError::TooLong { what: "frame", length: size, max: i32::MAX as usize });
    };
    if let Some(prefix) = buf.get_mut(start..start + 4) {
        prefix.copy_from_slice(&size32.to_be_bytes());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(bodies: &[&[u8]]) -> BytesMut {
        let mut out = BytesMut::new();
        for body in bodies {
            encode_frame(&mut out, |b| {
                b.put_slice(body);
                Ok(())
            })
            .unwrap();
        }
        out
    }

    #[test]
    fn frames_come_out_whole_whatever_the_arrival_pattern() {
        let wire = framed(&[b"hello", b"", b"a longer frame body"]).freeze();
        let decoder = FrameDecoder::default();
        // Feed the stream one byte at a time, then in uneven slices: same frames out.
        for step in [1, 2, 3, 7, 64] {
            let mut buf = BytesMut::new();
            let mut frames = Vec::new();
            for chunk in wire.chunks(step) {
                buf.extend_from_slice(chunk);
                while let Some(frame) = decoder.decode(&mut buf).unwrap() {
                    frames.push(frame);
                }
            }
            assert_eq!(frames, vec![&b"hello"[..], b"", b"a longer frame body"], "step {step}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn oversized_and_negative_sizes_are_refused_before_buffering() {
        let decoder = FrameDecoder::new(1024);
        let mut buf = BytesMut::from(&[0u8, 0, 4, 1][..]);
        assert!(matches!(decoder.decode(&mut buf), Err(DecodeError::FrameTooLarge { size: 1025, max: 1024 })));
        let mut buf = BytesMut::from(&[0xffu8, 0xff, 0xff, 0xfe, 0][..]);
        assert!(matches!(decoder.decode(&mut buf), Err(DecodeError::InvalidLength { .. })));
        let mut buf = BytesMut::from(&[0u8, 0][..]);
        assert_eq!(decoder.decode(&mut buf).unwrap(), None);
        assert_eq!(buf.len(), 2, "incomplete input is not consumed");
    }

    #[test]
    fn a_failing_body_leaves_the_buffer_unchanged() {
        let mut buf = BytesMut::from(&b"prior"[..]);
        let err = encode_frame(&mut buf, |b| {
            b.put_slice(b"partial");
            Err(EncodeError::InvalidValue { what: "test", detail: String::new() })
        });
        assert!(err.is_err());
        assert_eq!(&buf[..], b"prior");
    }
}
