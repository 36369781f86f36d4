//! Where a stream's batches go: any [`Sink`], a closure (`foreach_batch`), stdout, or JSON-lines
//! files that appear whole at commit.

use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use crate::stream::{BatchInput, Compute, Gather};

/// The batch a sink is writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchInfo {
    /// The batch id (consecutive over the job's life).
    pub batch_id: u64,
    /// The batch's time (end of its interval from the job's first batch, in ms).
    pub time_ms: u64,
    /// Whether this is a re-run of a batch begun before a crash or failure: a sink that is not
    /// idempotent may find part of this batch's output already written.
    pub rerun: bool,
}

/// A destination for a stream's batches. `write` may be called again for the same batch (same
/// id, same items) after a crash or failure; a sink that replaces rather than appends makes the
/// output exactly once.
pub trait Sink<T>: Send {
    /// Writes one batch's items; an error fails the batch (it is re-run).
    fn write(&mut self, batch: &BatchInfo, items: Vec<T>) -> impl Future<Output = Result<(), String>> + Send;
}

/// A closure as a sink.
#[derive(Debug)]
pub struct ForEach<F>(pub F);

impl<T: Send, F: FnMut(&BatchInfo, Vec<T>) -> Result<(), String> + Send> Sink<T> for ForEach<F> {
    async fn write(&mut self, batch: &BatchInfo, items: Vec<T>) -> Result<(), String> {
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
    async fn write(&mut self, batch: &BatchInfo, items: Vec<T>) -> Result<(), String> {
        let mut out = std::io::stdout().lock();
        let rule = "-------------------------------------------";
        let mut text = format!("{rule}\nTime: {} ms (batch {})\n{rule}\n", batch.time_ms, batch.batch_id);
        for item in items.iter().take(self.max_items) {
            text.push_str(&format!("{item:?}\n"));
        }
        if items.len() > self.max_items {
            text.push_str("...\n");
        }
        text.push('\n');
        out.write_all(text.as_bytes()).map_err(|e| format!("writing to stdout: {e}"))
    }
}

/// One JSON-lines file per batch with output, `batch-<id>.jsonl` (the id zero-padded to 20
/// digits, so names sort in batch order) in a directory. Each file is written under a
/// temporary name, synced, and renamed into place before the batch commits, so a batch's
/// output appears whole or not at all; a re-run writes the same file again and replaces it.
/// Give each sink a directory of its own.
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

    fn write_file<T: serde::Serialize>(&self, batch_id: u64, items: &[T]) -> Result<(), String> {
        let io = |what: &str, path: &Path, e: std::io::Error| format!("{what} {}: {e}", path.display());
        std::fs::create_dir_all(&self.dir).map_err(|e| io("creating", &self.dir, e))?;
        let target = self.file_of(batch_id);
        let temporary = self.dir.join(format!(".batch-{batch_id:020}.jsonl.tmp"));
        let mut text = Vec::with_capacity(items.len() * 32);
        for item in items {
            serde_json::to_writer(&mut text, item)
                .map_err(|e| format!("batch {batch_id}: an item is not JSON: {e}"))?;
            text.push(b'\n');
        }
        let mut file = std::fs::File::create(&temporary).map_err(|e| io("creating", &temporary, e))?;
        file.write_all(&text).map_err(|e| io("writing", &temporary, e))?;
        file.sync_all().map_err(|e| io("syncing", &temporary, e))?;
        std::fs::rename(&temporary, &target).map_err(|e| io("renaming into place", &target, e))?;
        std::fs::File::open(&self.dir).and_then(|d| d.sync_all()).map_err(|e| io("syncing", &self.dir, e))
    }
}

impl<T: serde::Serialize + Send> Sink<T> for JsonLinesFiles {
    async fn write(&mut self, batch: &BatchInfo, items: Vec<T>) -> Result<(), String> {
        if items.is_empty() {
            return Ok(());
        }
        self.write_file(batch.batch_id, &items)
    }
}

/// An output of the job: a stream's computation and where its items go.
pub(crate) trait Output: Send {
    fn run<'a>(&'a mut self, input: &'a BatchInput) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;
}

pub(crate) struct SinkOutput<T, S> {
    pub(crate) compute: Compute<T>,
    pub(crate) sink: S,
    /// The batch's items, gathered over its pieces: a sink writes a batch whole.
    pub(crate) pieces: Gather<T>,
}

impl<T: Send + 'static, S: Sink<T>> Output for SinkOutput<T, S> {
    fn run<'a>(&'a mut self, input: &'a BatchInput) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        let parts = self.pieces.add(input, (self.compute)(input)).flatten();
        let info = input.info();
        Box::pin(async move {
            match parts {
                Some(parts) => self.sink.write(&info, parts.into_iter().flatten().collect()).await,
                None => Ok(()),
            }
        })
    }
}
