//! A storage in memory that knows what is durable and what is not.
//!
//! Each file keeps two copies: what the process sees (the page cache) and what the disk holds.
//! Syncs copy dirty pages across; a crash throws the page cache away and keeps, drops or tears
//! every page that was not synced, and keeps or loses every directory change that was not
//! synced. Faults are injected by operation count: power fails just before the n-th storage
//! operation (so a crash can land between two pages of one msync), or the n-th sync fails.
//!
//! A failed sync behaves like Linux after "fsyncgate": the pages it covered are marked clean
//! whether or not they reached the disk, so retrying would wrongly report success.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::rng::SplitMix64;
use crate::storage::{SegmentFile, SegmentSync, Storage};

/// Page size of the model: the unit that is synced, kept, dropped or torn.
pub const MEM_PAGE_BYTES: usize = 4096;

/// Sector size: the unit a torn page is made of, when a tear is not a byte prefix.
const SECTOR_BYTES: usize = 512;

/// Faults to inject, counted from the last [`MemStorage::set_faults`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Power fails just before the n-th storage operation (1-based). Operations are writes,
    /// creations, removals, directory syncs, and each page a sync writes.
    pub crash_at_op: Option<u64>,
    /// The n-th sync call (1-based; msync, fsync or directory fsync) fails with an I/O error.
    pub fail_sync: Option<u64>,
    /// Seeds every random choice of the crash and of the failed sync.
    pub seed: u64,
}

/// The files that survive a crash: segment id to bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskImage {
    /// Surviving files.
    pub files: BTreeMap<u64, Vec<u8>>,
}

/// In-memory [`Storage`] with fault injection; clones share the same disk.
#[derive(Clone, Default)]
pub struct MemStorage {
    disk: Arc<Mutex<Disk>>,
}

/// Called (outside every lock) at the start of each sync, so tests can hold a sync open.
type SyncHook = Arc<dyn Fn() + Send + Sync>;

#[derive(Default)]
struct Disk {
    files: BTreeMap<u64, MemFile>,
    /// Removed files whose removal is not durable yet: a crash may bring them back.
    ghosts: BTreeMap<u64, MemFile>,
    faults: Faults,
    rng: Option<SplitMix64>,
    ops: u64,
    syncs: u64,
    sync_failures: u64,
    crash_image: Option<DiskImage>,
    sync_hook: Option<SyncHook>,
    /// `remove_segment` fails (without side effects) while set.
    fail_removals: bool,
}

#[derive(Clone)]
struct MemFile {
    /// The page cache: what reads and the mapping see.
    cache: Vec<u8>,
    /// The disk: what survives power loss. Same length as `cache`.
    durable: Vec<u8>,
    /// Pages written since they were last synced.
    dirty: BTreeSet<usize>,
    /// The file's length reached the disk (it was fsynced).
    len_durable: bool,
    /// The directory entry reached the disk (the directory was fsynced).
    entry_durable: bool,
}

impl MemStorage {
    /// An empty disk.
    pub fn new() -> Self {
        Self::default()
    }

    /// A disk holding `image`, everything durable (the state after a reboot).
    pub fn from_image(image: &DiskImage) -> Self {
        let storage = Self::new();
        if let Ok(mut disk) = storage.disk.lock() {
            for (&id, bytes) in &image.files {
                disk.files.insert(id, MemFile::durable(bytes.clone()));
            }
        }
        storage
    }

    /// Arms faults; operation and sync counts restart from zero.
    pub fn set_faults(&self, faults: Faults) {
        if let Ok(mut disk) = self.disk.lock() {
            disk.faults = faults;
            disk.rng = Some(SplitMix64::new(faults.seed));
            disk.ops = 0;
            disk.syncs = 0;
        }
    }

    /// The faults still to come, counted from now (what [`MemStorage::set_faults`] would need
    /// to arm them again, on this disk or on the one that replaces it after a restart).
    pub fn pending_faults(&self) -> Faults {
        let Ok(disk) = self.lock() else {
            return Faults::default();
        };
        let remaining = |at: Option<u64>, done: u64| at.and_then(|at| at.checked_sub(done)).filter(|&n| n > 0);
        Faults {
            crash_at_op: remaining(disk.faults.crash_at_op, disk.ops).filter(|_| disk.crash_image.is_none()),
            fail_sync: remaining(disk.faults.fail_sync, disk.syncs),
            seed: disk.faults.seed,
        }
    }

    /// Installs (or removes) a function every sync calls first, outside all locks.
    pub fn set_sync_hook(&self, hook: Option<SyncHook>) {
        if let Ok(mut disk) = self.disk.lock() {
            disk.sync_hook = hook;
        }
    }

    /// Makes every `remove_segment` fail with an I/O error (nothing is removed) while `fail`
    /// is true, as when another program holds the directory read-only.
    pub fn set_fail_removals(&self, fail: bool) {
        if let Ok(mut disk) = self.disk.lock() {
            disk.fail_removals = fail;
        }
    }

    /// Storage operations since the faults were last set.
    pub fn ops(&self) -> u64 {
        self.lock().map_or(0, |d| d.ops)
    }

    /// Sync calls since the faults were last set.
    pub fn syncs(&self) -> u64 {
        self.lock().map_or(0, |d| d.syncs)
    }

    /// Injected sync failures so far.
    pub fn sync_failures(&self) -> u64 {
        self.lock().map_or(0, |d| d.sync_failures)
    }

    /// True once the armed power failure has happened; every operation fails from then on.
    pub fn has_crashed(&self) -> bool {
        self.lock().is_ok_and(|d| d.crash_image.is_some())
    }

    /// Power loss: the image taken at the armed crash point, or one taken now (seeded by
    /// `seed`). Unsynced pages are kept, dropped or torn; unsynced directory changes are kept
    /// or lost.
    pub fn power_loss(&self, seed: u64) -> DiskImage {
        let Ok(disk) = self.lock() else {
            return DiskImage::default();
        };
        if let Some(image) = &disk.crash_image {
            return image.clone();
        }
        disk.crash_now(&mut SplitMix64::new(seed))
    }

    /// The disk as a new process finds it after this one was killed: the page cache survives,
    /// and so does what is durable and what is not (dirty pages, unsynced lengths and
    /// directory entries, removals not yet durable). Fault counters start afresh.
    pub fn survivor(&self) -> MemStorage {
        let storage = Self::new();
        if let (Ok(src), Ok(mut dst)) = (self.lock(), storage.disk.lock()) {
            dst.files = src.files.clone();
            dst.ghosts = src.ghosts.clone();
        }
        storage
    }

    /// The process dies but the machine does not: the page cache survives, synced or not.
    pub fn kill(&self) -> DiskImage {
        let Ok(disk) = self.lock() else {
            return DiskImage::default();
        };
        if let Some(image) = &disk.crash_image {
            return image.clone();
        }
        DiskImage { files: disk.files.iter().map(|(&id, f)| (id, f.cache.clone())).collect() }
    }

    fn lock(&self) -> io::Result<MutexGuard<'_, Disk>> {
        self.disk.lock().map_err(|_| io::Error::other("memory disk lock poisoned"))
    }

    fn sync_hook(&self) -> Option<SyncHook> {
        self.lock().ok().and_then(|d| d.sync_hook.clone())
    }
}

impl fmt::Debug for MemStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (files, ops, syncs) = self.lock().map_or((0, 0, 0), |d| (d.files.len(), d.ops, d.syncs));
        f.debug_struct("MemStorage").field("files", &files).field("ops", &ops).field("syncs", &syncs).finish()
    }
}

impl Disk {
    /// Counts one operation; fails if the power is (or just went) out.
    fn tick(&mut self) -> io::Result<()> {
        if self.crash_image.is_some() {
            return Err(power_is_out());
        }
        self.ops += 1;
        if self.faults.crash_at_op == Some(self.ops) {
            let mut rng = self.rng.take().unwrap_or_else(|| SplitMix64::new(self.faults.seed));
            let image = self.crash_now(&mut rng);
            self.crash_image = Some(image);
            return Err(power_is_out());
        }
        Ok(())
    }

    /// Counts one sync call; true if it is the one that must fail.
    fn sync_should_fail(&mut self) -> io::Result<bool> {
        if self.crash_image.is_some() {
            return Err(power_is_out());
        }
        self.syncs += 1;
        Ok(self.faults.fail_sync == Some(self.syncs))
    }

    fn crash_now(&self, rng: &mut SplitMix64) -> DiskImage {
        let mut files = BTreeMap::new();
        for (&id, file) in &self.files {
            if file.entry_durable || rng.chance(50) {
                files.insert(id, file.after_power_loss(rng));
            }
        }
        for (&id, ghost) in &self.ghosts {
            if rng.chance(50) {
                files.entry(id).or_insert_with(|| ghost.durable.clone());
            }
        }
        DiskImage { files }
    }

    /// Fails a sync like Linux does: each page either reached the disk or silently did not,
    /// and either way it is no longer dirty.
    fn fail_sync(&mut self, id: Option<u64>, pages: Option<(usize, usize)>) -> io::Error {
        self.sync_failures += 1;
        let mut rng = self.rng.take().unwrap_or_else(|| SplitMix64::new(self.faults.seed));
        for (&file_id, file) in self.files.iter_mut() {
            if id.is_some_and(|id| id != file_id) {
                continue;
            }
            let (first, end) = pages.unwrap_or((0, usize::MAX));
            let hit: Vec<usize> = file.dirty.range(first..end).copied().collect();
            for page in hit {
                if rng.chance(50) {
                    file.persist_page(page);
                }
                file.dirty.remove(&page);
            }
        }
        self.rng = Some(rng);
        io::Error::other("injected sync failure (EIO)")
    }

    fn file(&mut self, id: u64) -> io::Result<&mut MemFile> {
        self.files
            .get_mut(&id)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("segment {id} does not exist")))
    }
}

fn power_is_out() -> io::Error {
    io::Error::other("simulated power loss: the disk is gone")
}

impl MemFile {
    fn durable(bytes: Vec<u8>) -> Self {
        Self { cache: bytes.clone(), durable: bytes, dirty: BTreeSet::new(), len_durable: true, entry_durable: true }
    }

    fn write(&mut self, offset: usize, data: &[u8]) -> io::Result<()> {
        let end = offset.checked_add(data.len()).filter(|&end| end <= self.cache.len());
        let Some(dst) = end.and_then(|end| self.cache.get_mut(offset..end)) else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "write past the end of the segment"));
        };
        dst.copy_from_slice(data);
        if let Some(end) = end.filter(|_| !data.is_empty()) {
            self.dirty.extend(offset / MEM_PAGE_BYTES..=(end - 1) / MEM_PAGE_BYTES);
        }
        Ok(())
    }

    fn page_range(&self, page: usize) -> std::ops::Range<usize> {
        let start = page.saturating_mul(MEM_PAGE_BYTES).min(self.cache.len());
        start..start.saturating_add(MEM_PAGE_BYTES).min(self.cache.len())
    }

    fn persist_page(&mut self, page: usize) {
        let range = self.page_range(page);
        if let (Some(dst), Some(src)) = (self.durable.get_mut(range.clone()), self.cache.get(range)) {
            dst.copy_from_slice(src);
        }
    }

    /// What this file holds after power loss.
    fn after_power_loss(&self, rng: &mut SplitMix64) -> Vec<u8> {
        if !self.len_durable && rng.chance(50) {
            return Vec::new();
        }
        let mut out = self.durable.clone();
        for &page in &self.dirty {
            let range = self.page_range(page);
            let (Some(dst), Some(src)) = (out.get_mut(range.clone()), self.cache.get(range)) else {
                continue;
            };
            tear_page(dst, src, rng);
        }
        out
    }
}

/// Keeps, drops or tears one unsynced page: `dst` holds the old bytes, `src` the new ones.
fn tear_page(dst: &mut [u8], src: &[u8], rng: &mut SplitMix64) {
    match rng.below(4) {
        0 => dst.copy_from_slice(src),
        1 => {}
        2 => {
            let cut = rng.below(dst.len() as u64 + 1) as usize;
            if let (Some(d), Some(s)) = (dst.get_mut(..cut), src.get(..cut)) {
                d.copy_from_slice(s);
            }
        }
        _ => {
            for (d, s) in dst.chunks_mut(SECTOR_BYTES).zip(src.chunks(SECTOR_BYTES)) {
                if rng.chance(50) {
                    d.copy_from_slice(s);
                }
            }
        }
    }
}

/// A segment of a [`MemStorage`]. Keeps its own copy of the bytes for [`SegmentFile::bytes`].
pub struct MemSegment {
    id: u64,
    view: Vec<u8>,
    disk: Arc<Mutex<Disk>>,
}

/// Syncs a [`MemSegment`].
#[derive(Clone)]
pub struct MemSync {
    id: u64,
    storage: MemStorage,
}

impl fmt::Debug for MemSegment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemSegment").field("id", &self.id).field("len", &self.view.len()).finish()
    }
}

impl fmt::Debug for MemSync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemSync").field("id", &self.id).finish()
    }
}

impl Storage for MemStorage {
    type Segment = MemSegment;

    fn location(&self) -> String {
        "mem:".to_string()
    }

    fn list_segments(&self) -> io::Result<Vec<u64>> {
        Ok(self.lock()?.files.keys().copied().collect())
    }

    fn open_segment(&self, id: u64) -> io::Result<MemSegment> {
        let mut disk = self.lock()?;
        let view = disk.file(id)?.cache.clone();
        Ok(MemSegment { id, view, disk: Arc::clone(&self.disk) })
    }

    fn create_segment(&self, id: u64, len: u64, header: &[u8]) -> io::Result<MemSegment> {
        let mut disk = self.lock()?;
        disk.tick()?;
        if disk.files.contains_key(&id) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("segment {id} exists")));
        }
        let len = usize::try_from(len).map_err(|_| io::Error::other("segment too large"))?;
        let mut file = MemFile {
            cache: vec![0; len],
            durable: vec![0; len],
            dirty: BTreeSet::new(),
            len_durable: false,
            entry_durable: false,
        };
        file.write(0, header)?;
        let view = file.cache.clone();
        disk.ghosts.remove(&id);
        disk.files.insert(id, file);
        Ok(MemSegment { id, view, disk: Arc::clone(&self.disk) })
    }

    fn remove_segment(&self, id: u64) -> io::Result<()> {
        let mut disk = self.lock()?;
        if disk.fail_removals {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, "injected removal failure (EACCES)"));
        }
        disk.tick()?;
        let Some(file) = disk.files.remove(&id) else {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("segment {id} does not exist")));
        };
        if file.entry_durable {
            disk.ghosts.insert(id, file);
        }
        Ok(())
    }

    fn sync_dir(&self) -> io::Result<()> {
        if let Some(hook) = self.sync_hook() {
            hook();
        }
        let mut disk = self.lock()?;
        if disk.sync_should_fail()? {
            disk.sync_failures += 1;
            return Err(io::Error::other("injected directory fsync failure (EIO)"));
        }
        disk.tick()?;
        for file in disk.files.values_mut() {
            file.entry_durable = true;
        }
        disk.ghosts.clear();
        Ok(())
    }
}

impl SegmentFile for MemSegment {
    type Sync = MemSync;

    fn len(&self) -> u64 {
        self.view.len() as u64
    }

    fn bytes(&mut self) -> &[u8] {
        &self.view
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let offset = usize::try_from(offset).map_err(|_| io::Error::other("offset too large"))?;
        let mut disk = self.disk.lock().map_err(|_| io::Error::other("memory disk lock poisoned"))?;
        disk.tick()?;
        disk.file(self.id)?.write(offset, data)?;
        let end = offset.saturating_add(data.len());
        if let Some(dst) = self.view.get_mut(offset..end) {
            dst.copy_from_slice(data);
        }
        Ok(())
    }

    fn syncer(&self) -> MemSync {
        MemSync { id: self.id, storage: MemStorage { disk: Arc::clone(&self.disk) } }
    }
}

impl MemSync {
    fn sync_pages(&self, pages: Option<(usize, usize)>, whole_file: bool) -> io::Result<()> {
        if let Some(hook) = self.storage.sync_hook() {
            hook();
        }
        let mut disk = self.storage.lock()?;
        if disk.sync_should_fail()? {
            return Err(disk.fail_sync(Some(self.id), pages));
        }
        let (first, end) = pages.unwrap_or((0, usize::MAX));
        let dirty: Vec<usize> = disk.file(self.id)?.dirty.range(first..end).copied().collect();
        for page in dirty {
            // One operation per page, so power can fail half-way through a sync.
            disk.tick()?;
            let file = disk.file(self.id)?;
            file.persist_page(page);
            file.dirty.remove(&page);
        }
        if whole_file {
            disk.file(self.id)?.len_durable = true;
        }
        Ok(())
    }
}

impl SegmentSync for MemSync {
    fn sync_range(&self, offset: u64, len: u64) -> io::Result<()> {
        let first = usize::try_from(offset).unwrap_or(usize::MAX) / MEM_PAGE_BYTES;
        let end_byte = offset.saturating_add(len);
        let end = usize::try_from(end_byte.div_ceil(MEM_PAGE_BYTES as u64)).unwrap_or(usize::MAX);
        self.sync_pages(Some((first, end)), false)
    }

    fn sync_file(&self) -> io::Result<()> {
        self.sync_pages(None, true)
    }
}
