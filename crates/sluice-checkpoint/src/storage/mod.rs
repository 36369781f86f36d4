//! Where segments live: a small trait with a file + mmap implementation and, behind the
//! `testing` feature, an in-memory one that injects faults and simulates power loss.
//!
//! The log code is the same over both (khonsulabs/okaywal's `FileManager`, redb's storage
//! backend). The trait is shaped by two needs: recovery reads whole segments as byte slices,
//! and `commit()` syncs a range while other threads keep appending, so syncing goes through a
//! separate shareable [`SegmentSync`] handle rather than the segment itself.

use std::io;

mod file;

pub use file::{FileSegment, FileStorage, FileSync};

/// A directory of segment files.
pub trait Storage: Send + Sync + 'static {
    /// An open segment.
    type Segment: SegmentFile;

    /// Where the log lives, for error messages (a directory path).
    fn location(&self) -> String;

    /// Ids of the segments present, in any order.
    fn list_segments(&self) -> io::Result<Vec<u64>>;

    /// Opens an existing segment, mapping exactly its current length.
    fn open_segment(&self, id: u64) -> io::Result<Self::Segment>;

    /// Creates segment `id` of `len` bytes: `header` at offset 0, zeros after it, every byte
    /// allocated so later writes into the mapping need no new space. Not yet durable: the
    /// caller syncs the file and the directory.
    fn create_segment(&self, id: u64, len: u64, header: &[u8]) -> io::Result<Self::Segment>;

    /// Deletes a segment file. Not durable until [`Storage::sync_dir`].
    fn remove_segment(&self, id: u64) -> io::Result<()>;

    /// Makes creations and removals of segment files durable (fsync of the directory).
    fn sync_dir(&self) -> io::Result<()>;
}

/// An open, mapped segment. Only its owner writes to it.
pub trait SegmentFile: Send + 'static {
    /// Handle that syncs this segment from any thread.
    type Sync: SegmentSync;

    /// Length of the file (and of the mapping).
    fn len(&self) -> u64;

    /// True if the file is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The segment's bytes. `&mut self` guarantees nothing writes while the slice lives.
    fn bytes(&mut self) -> &[u8];

    /// Copies `data` into the segment at `offset` (into the mapping: not durable until synced).
    fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;

    /// A handle to sync this segment.
    fn syncer(&self) -> Self::Sync;
}

/// Syncs one segment; shared between threads so a commit can sync while others append.
pub trait SegmentSync: Send + Sync + 'static {
    /// Makes `len` bytes at `offset` durable (`msync(MS_SYNC)` of the range).
    fn sync_range(&self, offset: u64, len: u64) -> io::Result<()>;

    /// Makes the whole file durable, length included (`fsync`).
    fn sync_file(&self) -> io::Result<()>;
}
