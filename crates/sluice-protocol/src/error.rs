//! The crate's error types: what went wrong while decoding or encoding, and where.
//!
//! Decoding errors carry a path of message and field names, built on the error path only (the
//! happy path never allocates for context), and, once the top-level decoder has seen the whole
//! input, the byte position at which decoding stopped.

/// Input bytes that are not a valid encoding of what was asked for.
///
/// Displayed as the innermost cause followed by where it happened, for example
/// `array length 1000000 needs at least 4000000 bytes but only 12 remain, in
/// FetchResponse.responses[].partitions[], at byte 57 of 69`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended inside a value that has a fixed or declared size.
    #[error("input ended early: {what} needs {needed} bytes but only {remaining} remain")]
    UnexpectedEof {
        /// What was being read.
        what: &'static str,
        /// How many bytes it needed.
        needed: usize,
        /// How many bytes were left.
        remaining: usize,
    },
    /// A length prefix that is negative (where null is not allowed) or larger than the input.
    #[error("{what} length {length} is invalid: {reason}")]
    InvalidLength {
        /// What the length was for.
        what: &'static str,
        /// The length as read from the wire.
        length: i64,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A variable-length integer longer than its type allows.
    #[error("{what}: varint is longer than {max_bytes} bytes")]
    VarintTooLong {
        /// What was being read.
        what: &'static str,
        /// The longest encoding this integer type can have.
        max_bytes: usize,
    },
    /// A string that is not UTF-8.
    #[error("{what} is not valid UTF-8 (byte {valid_up_to} of the string)")]
    InvalidUtf8 {
        /// What the string was.
        what: &'static str,
        /// Length of the valid prefix.
        valid_up_to: usize,
    },
    /// A field value that is not allowed (an unknown enum value, a bad magic byte, ...).
    #[error("{what}: {detail}")]
    InvalidValue {
        /// What was being read.
        what: &'static str,
        /// What was wrong with it.
        detail: String,
    },
    /// A message version this codec does not implement.
    #[error("{api} version {version} is not supported (supported: {min}..={max})")]
    UnsupportedVersion {
        /// The message name.
        api: &'static str,
        /// The requested version.
        version: i16,
        /// Lowest supported version.
        min: i16,
        /// Highest supported version.
        max: i16,
    },
    /// Bytes left over after a value that should have used the whole input.
    #[error("{what}: {remaining} unexpected bytes after the end")]
    TrailingBytes {
        /// What was decoded.
        what: &'static str,
        /// How many bytes were left.
        remaining: usize,
    },
    /// A frame whose size prefix exceeds the configured maximum.
    #[error("frame of {size} bytes exceeds the maximum of {max} bytes (raise max_frame_bytes if the peer is trusted)")]
    FrameTooLarge {
        /// Declared size.
        size: i64,
        /// Configured maximum.
        max: usize,
    },
    /// A record batch whose CRC-32C does not match its contents.
    #[error("record batch at base offset {base_offset}: CRC-32C mismatch (stored {stored:#010x}, computed {computed:#010x}); the data is corrupt")]
    CrcMismatch {
        /// The batch's base offset.
        base_offset: i64,
        /// CRC stored in the batch.
        stored: u32,
        /// CRC computed over the batch.
        computed: u32,
    },
    /// A payload compressed with a codec this build leaves out (its cargo feature is off).
    #[error("{codec} data, but this build of sluice-protocol has no {codec} (enable its `{codec}` feature)")]
    CodecNotBuilt {
        /// The codec name (also its feature's name).
        codec: &'static str,
    },
    /// A compressed payload that could not be decompressed.
    #[error("{codec} decompression failed: {detail}")]
    Decompress {
        /// The codec name.
        codec: &'static str,
        /// What the decompressor reported.
        detail: String,
    },
    /// A compressed payload that expands past the configured limit.
    #[error("{codec} data expands past the limit of {limit} bytes (raise max_decompressed_bytes if this is expected)")]
    DecompressedTooLarge {
        /// The codec name.
        codec: &'static str,
        /// The configured limit.
        limit: usize,
    },
    /// An error inside a named field of a named structure.
    #[error("{source}, in {structure}.{field}")]
    InField {
        /// The structure (message or nested struct) being decoded.
        structure: &'static str,
        /// The field inside it.
        field: &'static str,
        /// The underlying error.
        source: Box<DecodeError>,
    },
    /// An error inside a record batch.
    #[error("{source}, in the record batch at base offset {base_offset}")]
    InBatch {
        /// The batch's base offset.
        base_offset: i64,
        /// The underlying error.
        source: Box<DecodeError>,
    },
    /// An error with the byte position where decoding stopped.
    #[error("{source}, at byte {position} of {total}")]
    At {
        /// Bytes consumed before the failure.
        position: usize,
        /// Total input length.
        total: usize,
        /// The underlying error.
        source: Box<DecodeError>,
    },
}

impl DecodeError {
    /// Wraps this error with the structure and field it occurred in.
    #[cold]
    #[must_use]
    pub fn in_field(self, structure: &'static str, field: &'static str) -> Self {
        Self::InField { structure, field, source: Box::new(self) }
    }

    /// Wraps this error with the byte position where decoding stopped.
    #[cold]
    #[must_use]
    pub fn at(self, position: usize, total: usize) -> Self {
        Self::At { position, total, source: Box::new(self) }
    }

    /// The innermost error, without field or position context.
    pub fn root_cause(&self) -> &DecodeError {
        match self {
            Self::InField { source, .. } | Self::InBatch { source, .. } | Self::At { source, .. } => {
                source.root_cause()
            }
            other => other,
        }
    }
}

/// A value that cannot be encoded in the requested version or format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A codec this build leaves out (its cargo feature is off).
    #[error("{codec} compression asked for, but this build of sluice-protocol has no {codec} (enable its `{codec}` feature)")]
    CodecNotBuilt {
        /// The codec name (also its feature's name).
        codec: &'static str,
    },
    /// A string, byte array or array longer than the wire format can express.
    #[error("{what} is {length} long, more than the maximum of {max}")]
    TooLong {
        /// What was being encoded.
        what: &'static str,
        /// Its length.
        length: usize,
        /// The largest length the format allows.
        max: usize,
    },
    /// A null value where the version does not allow null.
    #[error("{structure}.{field} is null, which version {version} does not allow")]
    NullNotAllowed {
        /// The structure being encoded.
        structure: &'static str,
        /// The field.
        field: &'static str,
        /// The version.
        version: i16,
    },
    /// A field set to a non-default value that the requested version cannot carry.
    #[error("{structure}.{field} is set, but version {version} cannot carry it (use a newer version or leave it at its default)")]
    FieldNotInVersion {
        /// The structure being encoded.
        structure: &'static str,
        /// The field.
        field: &'static str,
        /// The version.
        version: i16,
    },
    /// Bytes given as an encoded v2 record batch are not one.
    #[error("not an encoded v2 record batch: {reason}")]
    NotABatch {
        /// What is wrong with the bytes.
        reason: &'static str,
    },
    /// A message version this codec does not implement.
    #[error("{api} version {version} is not supported (supported: {min}..={max})")]
    UnsupportedVersion {
        /// The message name.
        api: &'static str,
        /// The requested version.
        version: i16,
        /// Lowest supported version.
        min: i16,
        /// Highest supported version.
        max: i16,
    },
    /// Compression failed.
    #[error("{codec} compression failed: {detail}")]
    Compress {
        /// The codec name.
        codec: &'static str,
        /// What the compressor reported.
        detail: String,
    },
    /// A record or batch field that does not fit the format (e.g. an offset delta over i32).
    #[error("{what}: {detail}")]
    InvalidValue {
        /// What was being encoded.
        what: &'static str,
        /// What was wrong.
        detail: String,
    },
}
