//! Where a stream's batches go: any [`Sink`], a closure (`foreach_batch`), stdout, or JSON-lines
//! files that appear whole at commit.

use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use crate::graph::{BatchInfo, BatchInput, Compute, Gather, Output};
use crate::BoxError;

/// A destination for a stream's batches. `write` may be called again for the same batch (same
/// id, same items) after a crash or failure; a sink that replaces rather than appends makes the
/// output exactly once.
pub trait Sink<T>: Send {
    /// Writes one batch's items (or one piece's, see [`Sink::takes_pieces`]); an error fails
    /// the batch (it is re-run, from its first piece), and is the source of the job's error.
    ///
    /// Called on an async worker: a sink that blocks (files, a blocking client) does that work
    /// on the blocking pool (`tokio::task::spawn_blocking`), as [`JsonLinesFiles`] does.
    fn write(&mut self, batch: &BatchInfo, items: Vec<T>) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Whether the sink takes a batch larger than the job's memory budget piece by piece, so
    /// that the batch's output is never held whole: `write` is called once per piece, in
    /// order, the last piece included even when it has no items ([`BatchInfo::piece`],
    /// [`BatchInfo::last_piece`]). Such a sink finishes the batch (makes it visible, commits
    /// its transaction) at the last piece; a batch that fails part way starts again at piece 0.
    /// False (the default): the pieces' items are gathered and written at once.
    fn takes_pieces(&self) -> bool {
        false
    }
}

/// A closure as a sink.
#[derive(Debug)]
pub struct ForEach<F>(pub F);

impl<T: Send, F: FnMut(&BatchInfo, Vec<T>) -> Result<(), BoxError> + Send> Sink<T> for ForEach<F> {
    async fn write(&mut self, batch: &BatchInfo, items: Vec<T>) -> Result<(), BoxError> {
        (self.0)(batch, items)
    }
}

/// Prints the first items of each batch to stdout under a header with the batch's time, like
/// Spark's `print()`.
#[derive(Debug, Clone, Copy)]
pub struct Stdout {
    /// Items printed per batch at most (`...` follows when there were more).
    pub max_items: usize,
}

impl<T: std::fmt::Debug + Send> Sink<T> for Stdout {
    async fn write(&mut self, batch: &BatchInfo, items: Vec<T>) -> Result<(), BoxError> {
        let mut text = String::new();
        if batch.piece == 0 {
            let rule = "-------------------------------------------";
            text = format!("{rule}\nTime: {} ms (batch {})\n{rule}\n", batch.time_ms, batch.batch_id);
        }
        let room = (self.max_items as u64).saturating_sub(batch.items_before);
        for item in items.iter().take(usize::try_from(room).unwrap_or(usize::MAX)) {
            text.push_str(&format!("{item:?}\n"));
        }
        let total = batch.items_before + items.len() as u64;
        if total > self.max_items as u64 && batch.items_before <= self.max_items as u64 {
            text.push_str("...\n");
        }
        if batch.last_piece {
            text.push('\n');
        }
        Ok(std::io::stdout().lock().write_all(text.as_bytes()).map_err(|e| format!("writing to stdout: {e}"))?)
    }

    fn takes_pieces(&self) -> bool {
        true
    }
}

/// One JSON-lines file per batch with output, `batch-<id>.jsonl` (the id zero-padded to 20
/// digits, so names sort in batch order) in a directory. Each file is written under a
/// temporary name (a batch in pieces appends each piece to it), synced, and renamed into
/// place before the batch commits, so a batch's output appears whole or not at all; a re-run
/// writes the same file again and replaces it. Give each sink a directory of its own.
#[derive(Debug, Clone)]
pub struct JsonLinesFiles {
    dir: PathBuf,
}

impl JsonLinesFiles {
    /// Files in `dir` (created if missing).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The file of batch `batch_id`.
    pub fn file_of(&self, batch_id: u64) -> PathBuf {
        self.dir.join(format!("batch-{batch_id:020}.jsonl"))
    }

    /// Writes a piece of a batch to its temporary file (created afresh at piece 0) and, at the
    /// last piece, syncs it and renames it into place (or removes it if the batch had no items).
    ///
    /// The temporary file is created exclusively (a file or symbolic link left at its name by a
    /// crashed run is removed first, never followed) and reopened for the later pieces without
    /// following links; directories the sink makes are synced into their parents.
    fn write_piece<T: serde::Serialize>(&self, batch: &BatchInfo, items: &[T]) -> Result<(), String> {
        let batch_id = batch.batch_id;
        let io = |what: &str, path: &Path, e: std::io::Error| format!("{what} {}: {e}", path.display());
        let temporary = self.dir.join(format!(".batch-{batch_id:020}.jsonl.tmp"));
        let whole_batch_empty = batch.items_before == 0 && items.is_empty();
        if batch.piece == 0 && whole_batch_empty && batch.last_piece {
            return Ok(());
        }
        if !items.is_empty() || batch.piece == 0 {
            let mut text = Vec::with_capacity(items.len() * 32);
            for item in items {
                serde_json::to_writer(&mut text, item)
                    .map_err(|e| format!("batch {batch_id}: an item is not JSON: {e}"))?;
                text.push(b'\n');
            }
            let mut options = std::fs::OpenOptions::new();
            if batch.piece == 0 {
                create_dir_synced(&self.dir).map_err(|e| io("creating", &self.dir, e))?;
                match std::fs::remove_file(&temporary) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io("removing", &temporary, e)),
                    _ => {}
                }
                options.write(true).create_new(true);
            } else {
                options.append(true);
                no_follow(&mut options);
            }
            let mut file = options.open(&temporary).map_err(|e| io("opening", &temporary, e))?;
            file.write_all(&text).map_err(|e| io("writing", &temporary, e))?;
        }
        if !batch.last_piece {
            return Ok(());
        }
        if whole_batch_empty {
            return std::fs::remove_file(&temporary).map_err(|e| io("removing", &temporary, e));
        }
        let mut options = std::fs::OpenOptions::new();
        options.read(true);
        no_follow(&mut options);
        let file = options.open(&temporary).map_err(|e| io("opening", &temporary, e))?;
        file.sync_all().map_err(|e| io("syncing", &temporary, e))?;
        let target = self.file_of(batch_id);
        std::fs::rename(&temporary, &target).map_err(|e| io("renaming into place", &target, e))?;
        sync_dir(&self.dir).map_err(|e| io("syncing", &self.dir, e))
    }
}

/// Opens without following a symbolic link at the path's last component.
fn no_follow(options: &mut std::fs::OpenOptions) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.custom_flags(libc::O_NOFOLLOW);
    }
    #[cfg(not(unix))]
    let _ = options;
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Creates `dir` and its missing parents, each made durable in the directory holding it.
fn create_dir_synced(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(path) = at.filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
        missing.push(path);
        at = path.parent();
    }
    std::fs::create_dir_all(dir)?;
    for path in missing.iter().rev() {
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        sync_dir(parent)?;
    }
    Ok(())
}

impl<T: serde::Serialize + Send + 'static> Sink<T> for JsonLinesFiles {
    /// Encodes, writes, syncs and renames on the blocking pool.
    async fn write(&mut self, batch: &BatchInfo, items: Vec<T>) -> Result<(), BoxError> {
        if batch.transaction.is_some() {
            // Its files would be renamed before the batch's transaction commits.
            return Err("a files sink cannot run in scale-out mode yet: its output would not be exactly once".into());
        }
        let (sink, batch_id, info) = (self.clone(), batch.batch_id, batch.clone());
        let written = tokio::task::spawn_blocking(move || sink.write_piece(&info, &items)).await;
        Ok(written.map_err(|e| format!("writing batch {batch_id}'s file stopped: {e}"))??)
    }

    fn takes_pieces(&self) -> bool {
        true
    }
}

pub(crate) struct SinkOutput<T, S> {
    pub(crate) compute: Compute<T>,
    pub(crate) sink: S,
    /// For a sink that takes batches whole: the batch's items, gathered over its pieces.
    pub(crate) pieces: Gather<T>,
    /// For a sink that takes pieces: items given to it in the batch's earlier pieces.
    pub(crate) items_before: u64,
    /// What the last `compute` made, for `write`.
    ready: Option<(BatchInfo, Vec<T>)>,
}

impl<T, S> SinkOutput<T, S> {
    pub(crate) fn new(compute: Compute<T>, sink: S) -> Self {
        Self { compute, sink, pieces: Gather::default(), items_before: 0, ready: None }
    }
}

impl<T: Send + 'static, S: Sink<T>> Output for SinkOutput<T, S> {
    fn compute(&mut self, input: &BatchInput) {
        let info = input.info();
        self.ready = if self.sink.takes_pieces() {
            // Every piece goes to the sink, empty or not: the first starts the batch, the last
            // finishes it.
            if info.piece == 0 {
                self.items_before = 0;
            }
            let items: Vec<T> = (self.compute)(input).into_iter().flatten().flatten().collect();
            let before = self.items_before;
            self.items_before += items.len() as u64;
            let (piece, last) = (info.piece, info.last_piece);
            Some((info.with_piece(piece, last, before), items))
        } else {
            let parts = self.pieces.add(input, (self.compute)(input)).flatten();
            parts.map(|parts| (info.with_piece(0, true, 0), parts.into_iter().flatten().collect()))
        };
    }

    fn write(&mut self) -> Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send + '_>> {
        let ready = self.ready.take();
        Box::pin(async move {
            match ready {
                Some((info, items)) => self.sink.write(&info, items).await,
                None => Ok(()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_sink_replaces_what_is_left_at_its_temporary_name_and_never_follows_a_link() {
        let root = tempfile::tempdir().unwrap();
        let sink = JsonLinesFiles::new(root.path().join("made/by/the/sink"));
        std::fs::create_dir_all(&sink.dir).unwrap();
        let outside = root.path().join("outside.txt");
        std::fs::write(&outside, "keep me").unwrap();
        let temporary = sink.dir.join(format!(".batch-{:020}.jsonl.tmp", 3));
        #[cfg(unix)]
        std::os::unix::fs::symlink(&outside, &temporary).unwrap();
        let batch = BatchInfo::new(3, 400, true);
        sink.write_piece(&batch.clone().with_piece(0, false, 0), &[1, 2]).unwrap();
        sink.write_piece(&batch.with_piece(1, true, 2), &[3]).unwrap();
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "keep me", "the link was not followed");
        assert_eq!(std::fs::read_to_string(sink.file_of(3)).unwrap(), "1\n2\n3\n");
        assert!(!temporary.exists());
    }

    #[test]
    fn the_file_sink_makes_its_directories_and_writes_nothing_for_an_empty_batch() {
        let root = tempfile::tempdir().unwrap();
        let sink = JsonLinesFiles::new(root.path().join("a/b"));
        sink.write_piece::<u32>(&BatchInfo::new(0, 100, false), &[]).unwrap();
        assert!(!sink.dir.exists(), "nothing to write, nothing made");
        sink.write_piece(&BatchInfo::new(1, 200, false), &["x"]).unwrap();
        let names: Vec<_> = std::fs::read_dir(&sink.dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [std::ffi::OsString::from(format!("batch-{:020}.jsonl", 1))]);
    }
}
