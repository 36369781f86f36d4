//! The one error type of the crate.
//!
//! Every variant carries enough context to find the problem on disk (segment file and byte
//! offset) and its message says what to do next.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong opening, writing or recovering a checkpoint log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bytes before the log's tail are damaged: this is not a torn write from a crash, because
    /// something written later proves the damaged bytes had already been made durable.
    #[error(
        "checkpoint segment {file} is damaged at byte {offset}: {problem}. This is not a torn \
         write from a crash but damage to data that had reached the disk: restore the log \
         directory from a backup, or reopen with RecoveryMode::TruncateAtDamage to keep only \
         the records before this point"
    )]
    Corrupt {
        /// Id of the damaged segment.
        segment_id: u64,
        /// The segment's file (a path once the log knows its directory).
        file: String,
        /// Byte offset of the damaged record or header inside the segment.
        offset: u64,
        /// What was wrong.
        problem: String,
    },

    /// A record passed its CRC but does not fit the batch protocol (a commit without an
    /// intent, a payload that does not decode). The log was written by something other than
    /// this crate, or by a version of it with a bug.
    #[error(
        "checkpoint record {seq} in segment {file} at byte {offset} is well-formed but \
         inconsistent: {problem}. The log was not written by a compatible sluice-checkpoint; \
         keep a copy of the directory for diagnosis and restore from a backup"
    )]
    Inconsistent {
        /// Id of the segment holding the record.
        segment_id: u64,
        /// The segment's file.
        file: String,
        /// Byte offset of the record inside the segment.
        offset: u64,
        /// Sequence number of the record.
        seq: u64,
        /// What was wrong.
        problem: String,
    },

    /// Another process (or another `Log` in this process) holds the log's writer lock.
    #[error(
        "checkpoint log {dir} is already open for writing (lock file {lock_file} is held by \
         another process or another Log in this process); stop the other job or give this one \
         its own checkpoint directory"
    )]
    Locked {
        /// The log directory.
        dir: PathBuf,
        /// The lock file that is held.
        lock_file: PathBuf,
    },

    /// A storage operation failed. If it happened while writing, the log is now poisoned:
    /// every later call returns [`Error::Poisoned`].
    #[error("{op} of {target} failed: {source}; {advice}", advice = op.advice())]
    Storage {
        /// What the log was doing.
        op: StorageOp,
        /// The file or directory concerned.
        target: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// An earlier storage operation failed, so nothing this log object holds in memory can be
    /// trusted to match the disk. Syncs are never retried (a failed fsync may already have
    /// dropped the dirty pages it could not write).
    #[error(
        "the checkpoint log is poisoned: an earlier {op} of {target} failed ({cause}). Nothing \
         is retried; drop this Log, and after a failed sync restart the machine (or drop the \
         page cache) before reopening the directory, which then recovers what reached the disk"
    )]
    Poisoned {
        /// The operation that failed first.
        op: StorageOp,
        /// The file or directory concerned.
        target: String,
        /// The first failure's error message.
        cause: String,
    },

    /// The caller asked for something the batch protocol does not allow (committing a batch
    /// that has no intent, snapshotting a batch that is not the last committed one). Nothing
    /// was written and the log stays usable.
    #[error("invalid checkpoint operation: {problem}")]
    InvalidOperation {
        /// What was wrong and what the log expected.
        problem: String,
    },

    /// A record would exceed the configured maximum record size.
    #[error(
        "checkpoint record of {bytes} bytes exceeds the limit of {limit} bytes; raise \
         Options::max_record_bytes or make the batch's metadata, state delta or sink markers smaller \
         (a snapshot is split into parts instead)"
    )]
    RecordTooLarge {
        /// Size of the record that was refused.
        bytes: u64,
        /// The configured limit.
        limit: u64,
    },

    /// The options passed to `open` are not usable.
    #[error("invalid checkpoint options: {problem}")]
    InvalidOptions {
        /// What was wrong.
        problem: String,
    },

    /// A typed payload could not be serialized or deserialized.
    #[error("cannot {action} a typed checkpoint payload ({type_name}): {source}")]
    Payload {
        /// `"encode"` or `"decode"`.
        action: &'static str,
        /// Rust type that was being converted.
        type_name: &'static str,
        /// The serializer's error.
        #[source]
        source: postcard::Error,
    },
}

/// The storage operations of the log, named in [`Error::Storage`] and [`Error::Poisoned`].
///
/// The `*Sync` variants are the sync sites: a failure at any of them poisons the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StorageOp {
    /// Creating or opening the log directory, or taking its lock.
    OpenDir,
    /// Listing the segment files.
    ListSegments,
    /// Opening and mapping an existing segment.
    OpenSegment,
    /// Creating, preallocating and mapping a new segment.
    CreateSegment,
    /// Writing into a mapped segment.
    Write,
    /// Deleting a segment (compaction, or removing a segment whose creation was torn).
    RemoveSegment,
    /// `msync` of the dirty range in `commit()`.
    CommitSync,
    /// `msync` of the full segment before rolling over to a new one.
    RollSync,
    /// `msync` at open, making the recovered records and the zeroed torn tail durable.
    OpenSync,
    /// `fsync` of a newly created segment file (data and length).
    FileSync,
    /// `fsync` of the log directory after creating or deleting a segment.
    DirSync,
}

impl StorageOp {
    /// True for the operations that make data durable; these poison the log when they fail.
    pub fn is_sync(self) -> bool {
        matches!(self, Self::CommitSync | Self::RollSync | Self::OpenSync | Self::FileSync | Self::DirSync)
    }

    fn advice(self) -> &'static str {
        match self {
            Self::OpenDir | Self::ListSegments | Self::OpenSegment => {
                "check that the directory exists, is readable and writable by this user, and \
                 is on a local file system"
            }
            Self::OpenSync => {
                "the log was not opened; fix the disk problem, then restart the machine (or at \
                 least drop the page cache) before opening it again, since a failed sync may \
                 have left pages in memory that never reached the disk"
            }
            Self::RemoveSegment => {
                "if this happened while writing, the log is now poisoned (nothing is retried): \
                 drop it and reopen the directory once the problem is fixed"
            }
            _ => {
                "if this happened while writing, the log is now poisoned (nothing is retried): \
                 drop it, fix the disk problem, and restart the machine (or at least drop the \
                 page cache) before reopening the directory; commits that returned Ok were \
                 durable"
            }
        }
    }
}

impl fmt::Display for StorageOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::OpenDir => "opening the log directory",
            Self::ListSegments => "listing segments",
            Self::OpenSegment => "opening a segment",
            Self::CreateSegment => "creating a segment",
            Self::Write => "writing a record",
            Self::RemoveSegment => "removing a segment",
            Self::CommitSync => "msync on commit",
            Self::RollSync => "msync before segment roll-over",
            Self::OpenSync => "msync at open",
            Self::FileSync => "fsync of a new segment",
            Self::DirSync => "fsync of the log directory",
        })
    }
}
