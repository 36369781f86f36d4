//! Segments as files in a directory, memory-mapped with memmap2.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::{MmapOptions, MmapRaw};

use super::{SegmentFile, SegmentSync, Storage};
use crate::error::{Error, Result, StorageOp};
use crate::format::{parse_segment_file_name, segment_file_name};

/// Name of the lock file inside the log directory.
pub const LOCK_FILE_NAME: &str = "LOCK";

/// Preallocation writes zeros in pieces of this size, which also sets the size of the page
/// cache folios the segment ends up in (Linux 6.x builds large folios from large writes). A
/// store through the mapping faults per folio, and msync writes back whole dirty folios: 4 KiB
/// folios make a 1 MiB commit take 256 faults (twice the time of write + fdatasync), 1 MiB
/// folios make a 1 KiB commit write back 1 MiB. 64 KiB keeps both below write + fdatasync
/// (measured on ext4, Linux 6.18: 1 KiB, 64 KiB and 1 MiB commits all at 0.6-0.8x).
const ZERO_CHUNK: usize = 64 * 1024;

/// A log directory on the local file system, locked for exclusive writing.
///
/// The lock is an advisory `flock` on `LOCK` in the directory, held until this value (and the
/// `Log` that owns it) is dropped. A second opener, in this or another process, gets
/// [`Error::Locked`].
#[derive(Debug)]
pub struct FileStorage {
    dir: PathBuf,
    dir_handle: File,
    _lock: File,
}

impl FileStorage {
    /// Creates the directory if needed and takes its writer lock.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let dir_error = |source| Error::Storage { op: StorageOp::OpenDir, target: dir.display().to_string(), source };
        if !dir.is_dir() {
            let missing = missing_ancestors(&dir);
            fs::create_dir_all(&dir).map_err(dir_error)?;
            // Every new directory's own entry must be durable too, or a crash could lose the
            // whole log after its first commit returned: fsync the parent of each directory
            // created, deepest first.
            for parent in parents_to_sync(&missing) {
                File::open(&parent).and_then(|p| p.sync_all()).map_err(dir_error)?;
            }
        }
        let lock_file = dir.join(LOCK_FILE_NAME);
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_file)
            .map_err(dir_error)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(Error::Locked { dir, lock_file }),
            Err(TryLockError::Error(source)) => return Err(dir_error(source)),
        }
        let dir_handle = File::open(&dir).map_err(dir_error)?;
        Ok(Self { dir, dir_handle, _lock: lock })
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: u64) -> PathBuf {
        self.dir.join(segment_file_name(id))
    }
}

impl Storage for FileStorage {
    type Segment = FileSegment;

    fn location(&self) -> String {
        self.dir.display().to_string()
    }

    fn list_segments(&self) -> io::Result<Vec<u64>> {
        let mut ids = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            if let Some(id) = name.to_str().and_then(parse_segment_file_name) {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    fn open_segment(&self, id: u64) -> io::Result<FileSegment> {
        let file = OpenOptions::new().read(true).write(true).open(self.path(id))?;
        let len = file.metadata()?.len();
        // Recovery reads every byte right away, so fault the pages in with the mapping.
        FileSegment::map(file, len, true)
    }

    fn create_segment(&self, id: u64, len: u64, header: &[u8]) -> io::Result<FileSegment> {
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(self.path(id))?;
        preallocate(&file, len, header)?;
        FileSegment::map(file, len, false)
    }

    fn remove_segment(&self, id: u64) -> io::Result<()> {
        fs::remove_file(self.path(id))
    }

    fn sync_dir(&self) -> io::Result<()> {
        self.dir_handle.sync_all()
    }
}

/// `dir` and its ancestors that do not exist yet, deepest first: what `create_dir_all` creates.
fn missing_ancestors(dir: &Path) -> Vec<PathBuf> {
    dir.ancestors()
        .filter(|p| !p.as_os_str().is_empty())
        .take_while(|p| fs::symlink_metadata(p).is_err())
        .map(Path::to_path_buf)
        .collect()
}

/// The directories whose entries change when `created` (deepest first) are created: the parent
/// of each, "." for a relative path of one component.
fn parents_to_sync(created: &[PathBuf]) -> Vec<PathBuf> {
    created
        .iter()
        .map(|dir| match dir.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        })
        .collect()
}

/// Writes `header` and then zeros up to `len`, with ordinary writes. Writing real zeros (rather
/// than `set_len`, which leaves a hole) allocates every block now, where a full disk is an
/// ordinary error; a hole filled later through the mapping would fault with SIGBUS instead.
fn preallocate(file: &File, len: u64, header: &[u8]) -> io::Result<()> {
    let zeros = [0u8; ZERO_CHUNK];
    let mut at = 0u64;
    while at < len {
        let chunk = usize::try_from(len - at).map_or(ZERO_CHUNK, |left| left.min(ZERO_CHUNK));
        file.write_all_at(zeros.get(..chunk).unwrap_or_default(), at)?;
        at += chunk as u64;
    }
    let header_len = u64::try_from(header.len()).unwrap_or(u64::MAX);
    if header_len > len {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "segment header longer than segment"));
    }
    file.write_all_at(header, 0)
}

/// A mapped segment file.
#[derive(Debug)]
pub struct FileSegment {
    shared: Arc<Mapped>,
}

/// Syncs a [`FileSegment`] from any thread.
#[derive(Debug, Clone)]
pub struct FileSync {
    shared: Arc<Mapped>,
}

#[derive(Debug)]
struct Mapped {
    file: File,
    /// `None` for an empty file, which cannot be mapped.
    map: Option<MmapRaw>,
}

impl FileSegment {
    fn map(file: File, len: u64, populate: bool) -> io::Result<Self> {
        let map = if len == 0 {
            None
        } else {
            let len =
                usize::try_from(len).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "segment too large"))?;
            let mut options = MmapOptions::new();
            // Exactly the file's length: never map past the end of the file.
            options.len(len);
            if populate {
                options.populate();
            }
            Some(options.map_raw(&file)?)
        };
        Ok(Self { shared: Arc::new(Mapped { file, map }) })
    }
}

impl SegmentFile for FileSegment {
    type Sync = FileSync;

    fn len(&self) -> u64 {
        self.shared.map.as_ref().map_or(0, |m| m.len() as u64)
    }

    fn bytes(&mut self) -> &[u8] {
        let Some(map) = &self.shared.map else {
            return &[];
        };
        // SAFETY: the mapping is valid for `map.len()` bytes and lives as long as `self.shared`,
        // which outlives the returned borrow. The only writer of this mapping is
        // `FileSegment::write`, which needs `&mut self`, so nothing in this process writes while
        // the slice lives; `FileSync` only calls msync/fsync, which do not change the bytes. The
        // directory's exclusive lock keeps other sluice processes from writing the file.
        unsafe { std::slice::from_raw_parts(map.as_ptr(), map.len()) }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let Some(map) = &self.shared.map else {
            return Err(out_of_bounds(offset, data.len(), 0));
        };
        let start = usize::try_from(offset).map_err(|_| out_of_bounds(offset, data.len(), map.len()))?;
        if start.checked_add(data.len()).is_none_or(|end| end > map.len()) {
            return Err(out_of_bounds(offset, data.len(), map.len()));
        }
        // SAFETY: `start + data.len() <= map.len()` was checked above, so the destination lies
        // inside the live mapping, which cannot overlap `data` (a separate allocation or another
        // mapping's bytes are never passed here). `&mut self` makes this the only access through
        // this segment in this process, and no slice from `bytes` can be alive at the same time.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), map.as_mut_ptr().add(start), data.len());
        }
        Ok(())
    }

    fn syncer(&self) -> FileSync {
        FileSync { shared: Arc::clone(&self.shared) }
    }
}

impl SegmentSync for FileSync {
    fn sync_range(&self, offset: u64, len: u64) -> io::Result<()> {
        let Some(map) = &self.shared.map else {
            return Ok(());
        };
        let offset = usize::try_from(offset).map_err(|_| out_of_bounds(offset, 0, map.len()))?;
        let len = usize::try_from(len).map_err(|_| out_of_bounds(0, usize::MAX, map.len()))?;
        // memmap2 aligns the start down to a page boundary and calls msync(MS_SYNC).
        map.flush_range(offset, len)
    }

    fn sync_file(&self) -> io::Result<()> {
        self.shared.file.sync_all()
    }
}

fn out_of_bounds(offset: u64, len: usize, map_len: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{len} bytes at offset {offset} do not fit the {map_len}-byte segment"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relative_one_component_directory_syncs_the_current_directory() {
        assert_eq!(parents_to_sync(&[PathBuf::from("ckpt")]), vec![PathBuf::from(".")]);
        assert_eq!(parents_to_sync(&[PathBuf::from("a/b")]), vec![PathBuf::from("a")]);
    }

    #[test]
    fn every_created_ancestor_gets_its_parent_synced() {
        let root = std::env::temp_dir().join(format!("sluice-ckpt-ancestors-{}", std::process::id()));
        let dir = root.join("a").join("b");
        let missing = missing_ancestors(&dir);
        assert_eq!(missing, vec![dir.clone(), root.join("a"), root.clone()]);
        assert_eq!(parents_to_sync(&missing), vec![root.join("a"), root.clone(), std::env::temp_dir()]);
        fs::create_dir_all(&root).unwrap();
        assert_eq!(missing_ancestors(&dir), vec![dir.clone(), root.join("a")]);
        let opened = FileStorage::open(&dir).unwrap();
        assert!(missing_ancestors(&dir).is_empty());
        drop(opened);
        fs::remove_dir_all(&root).unwrap();
    }
}
