//! Where a stream's batches go: any [`Sink`], a closure (`foreach_batch`), stdout, or JSON-lines
//! files that appear whole at commit.

use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use std::sync::Arc;

use sluice_client::{Client, Consumer, ConsumerConfig, Isolation, OffsetReset, Producer, ProducerRecord, StartAt};
use sluice_protocol::error_code::ErrorCode;

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

    /// Scale-out mode: the batch last written (`batch`, its last piece) committed its Kafka
    /// transaction. A sink that holds its output until then (files renamed into place)
    /// publishes it here; an error fails the run. Does nothing unless implemented.
    fn committed(&mut self, batch: &BatchInfo) -> impl Future<Output = Result<(), BoxError>> + Send {
        let _ = batch;
        async { Ok(()) }
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
///
/// In scale-out mode a batch is not re-run (another process may read its records again), so
/// its file, `<transactional id>-batch-<id>.jsonl` (the process's id: processes may share the
/// directory), is renamed into place only once the batch's transaction has committed. The
/// transaction also writes the batch's id under the process's id to the compacted topic
/// `<group>-files-ledger`, so that a process restarted after a crash between the commit and
/// the rename knows whether the file it left committed: it is renamed into place if so, and
/// removed if not.
#[derive(Debug, Clone)]
pub struct JsonLinesFiles {
    dir: PathBuf,
    /// Scale-out mode: the file of the batch last written, to rename once it commits.
    pending: Option<(PathBuf, PathBuf)>,
    /// Scale-out mode: whether files a previous run left were looked into.
    resolved: bool,
}

impl JsonLinesFiles {
    /// Files in `dir` (created if missing).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into(), pending: None, resolved: false }
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
        let temporary = self.dir.join(format!(".batch-{batch_id:020}.jsonl.tmp"));
        self.write_file_piece(batch, items, (&temporary, Some(&self.file_of(batch_id)))).map(drop)
    }

    /// [`JsonLinesFiles::write_piece`] to the file `temporary`; returns whether the batch's file
    /// is written whole (at a last piece, with items). It is renamed to `target` unless that is
    /// `None` (scale-out mode: after the commit).
    fn write_file_piece<T: serde::Serialize>(
        &self,
        batch: &BatchInfo,
        items: &[T],
        (temporary, target): (&Path, Option<&Path>),
    ) -> Result<bool, String> {
        let batch_id = batch.batch_id;
        let io = |what: &str, path: &Path, e: std::io::Error| format!("{what} {}: {e}", path.display());
        let whole_batch_empty = batch.items_before == 0 && items.is_empty();
        if batch.piece == 0 && whole_batch_empty && batch.last_piece {
            return Ok(false);
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
                remove_if_there(temporary).map_err(|e| io("removing", temporary, e))?;
                options.write(true).create_new(true);
            } else {
                options.append(true);
                no_follow(&mut options);
            }
            let mut file = options.open(temporary).map_err(|e| io("opening", temporary, e))?;
            file.write_all(&text).map_err(|e| io("writing", temporary, e))?;
        }
        if !batch.last_piece {
            return Ok(false);
        }
        if whole_batch_empty {
            std::fs::remove_file(temporary).map_err(|e| io("removing", temporary, e))?;
            return Ok(false);
        }
        let mut options = std::fs::OpenOptions::new();
        options.read(true);
        no_follow(&mut options);
        let file = options.open(temporary).map_err(|e| io("opening", temporary, e))?;
        file.sync_all().map_err(|e| io("syncing", temporary, e))?;
        if let Some(target) = target {
            rename_into_place(temporary, target, &self.dir)?;
        }
        Ok(true)
    }

    /// Scale-out mode: the temporary and final names of a batch's file, by the process's
    /// transactional id.
    fn scale_names(&self, process: &str, batch_id: u64) -> (PathBuf, PathBuf) {
        let name = format!("{process}-batch-{batch_id:020}.jsonl");
        (self.dir.join(format!(".{name}.tmp")), self.dir.join(name))
    }

    /// Scale-out mode, once per run before its first batch: the files a previous run of this
    /// process left at their temporary names (a crash between its batch's commit and the
    /// rename), each renamed into place if the ledger says its batch committed, or removed.
    async fn resolve_left_files(&self, producer: &Producer, ledger: &str, process: &str) -> Result<(), BoxError> {
        let prefix = format!(".{process}-batch-");
        let left: Vec<(u64, PathBuf)> = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries
                .filter_map(|entry| {
                    let name = entry.ok()?.file_name().into_string().ok()?;
                    let id = name.strip_prefix(&prefix)?.strip_suffix(".jsonl.tmp")?.parse().ok()?;
                    Some((id, self.dir.join(name)))
                })
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(format!("listing {}: {e}", self.dir.display()).into()),
        };
        create_ledger(producer.client(), ledger).await?;
        if left.is_empty() {
            return Ok(());
        }
        let committed = last_committed(producer.client(), ledger, process).await?;
        for (batch_id, temporary) in left {
            let (_, target) = self.scale_names(process, batch_id);
            if committed == Some(batch_id) {
                tracing::info!(batch_id, file = %target.display(), "the batch committed before the run ended: its file is renamed into place");
                rename_into_place(&temporary, &target, &self.dir)?;
            } else {
                tracing::info!(batch_id, file = %temporary.display(), "the batch did not commit: its file is removed");
                remove_if_there(&temporary).map_err(|e| format!("removing {}: {e}", temporary.display()))?;
            }
        }
        Ok(())
    }

    /// Scale-out mode: writes a piece of the batch's file, and at its last piece syncs it and
    /// notes the batch in the ledger through the batch's transaction; the file is renamed into
    /// place when the transaction commits ([`Sink::committed`]).
    async fn write_in_transaction<T: serde::Serialize + Send + 'static>(
        &mut self,
        batch: &BatchInfo,
        items: Vec<T>,
        producer: Arc<Producer>,
    ) -> Result<(), BoxError> {
        let process =
            producer.transactional_id().ok_or("a files sink in a batch whose producer is not transactional")?;
        let group = batch.group.as_deref().ok_or("a files sink in scale-out mode without the job's group")?;
        let ledger = format!("{group}-files-ledger");
        if !self.resolved {
            self.resolve_left_files(&producer, &ledger, process).await?;
            self.resolved = true;
        }
        if batch.piece == 0 {
            // The file of a batch that did not commit (its transaction aborted).
            if let Some((temporary, _)) = self.pending.take() {
                remove_if_there(&temporary).map_err(|e| format!("removing {}: {e}", temporary.display()))?;
            }
        }
        let names = self.scale_names(process, batch.batch_id);
        let (sink, info, batch_id, paths) = (self.clone(), batch.clone(), batch.batch_id, names.clone());
        let written = tokio::task::spawn_blocking(move || sink.write_file_piece(&info, &items, (&paths.0, None))).await;
        if written.map_err(|e| format!("writing batch {batch_id}'s file stopped: {e}"))?? {
            let record = ProducerRecord::new(ledger, batch_id.to_string()).key(process.to_owned());
            drop(producer.send(record).await?);
            self.pending = Some(names);
        }
        Ok(())
    }
}

/// Removes `path`, if it is there.
fn remove_if_there(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Renames a synced file into place and makes the rename durable.
fn rename_into_place(temporary: &Path, target: &Path, dir: &Path) -> Result<(), String> {
    std::fs::rename(temporary, target).map_err(|e| format!("renaming into place {}: {e}", target.display()))?;
    sync_dir(dir).map_err(|e| format!("syncing {}: {e}", dir.display()))
}

/// Makes the ledger topic if it is not there: compacted (one record per process), one partition,
/// replicated on up to three brokers.
async fn create_ledger(client: &Client, ledger: &str) -> Result<(), BoxError> {
    let brokers = client.refresh_metadata(Some(&[ledger])).await?.brokers.len();
    let replication = i16::try_from(brokers.clamp(1, 3))?;
    let min_insync = if replication >= 3 { "2" } else { "1" };
    let configs = [("cleanup.policy", "compact"), ("min.insync.replicas", min_insync)];
    match client.create_topic_with_configs(ledger, 1, replication, &configs).await {
        Ok(())
        | Err(
            sluice_client::Error::Broker { code: ErrorCode::TopicAlreadyExists, .. }
            | sluice_client::Error::BrokerMessage { code: ErrorCode::TopicAlreadyExists, .. },
        ) => Ok(()),
        Err(error) => Err(format!("creating the files sink's ledger topic {ledger}: {error}").into()),
    }
}

/// The last batch `process` noted in the ledger, of the transactions that committed (read to the
/// end the ledger had when asked).
async fn last_committed(client: &Client, ledger: &str, process: &str) -> Result<Option<u64>, BoxError> {
    let partition = [(ledger.to_owned(), 0)];
    let deadline = std::time::Instant::now() + LEDGER_READ_TIMEOUT;
    // The topic may be new: its partition's leader comes a moment later.
    let end = loop {
        match client.log_ends(&partition, Isolation::ReadUncommitted).await {
            Ok(ends) => break ends.get(&partition[0]).copied().unwrap_or(0),
            Err(error) if std::time::Instant::now() < deadline && error.is_retriable() => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(error) => return Err(format!("the end of the ledger {ledger}: {error}").into()),
        }
    };
    let mut config = ConsumerConfig::default();
    config.isolation = Isolation::ReadCommitted;
    config.offset_reset = OffsetReset::Earliest;
    config.max_wait = std::time::Duration::from_millis(100);
    let mut consumer = Consumer::new(client.clone(), config);
    consumer.assign(ledger, 0, StartAt::Earliest).await?;
    let mut last = None;
    while consumer.partition_progress(ledger, 0).is_none_or(|p| p.position < end) {
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "reading the ledger {ledger} to offset {end} took over {} s (an open transaction?)",
                LEDGER_READ_TIMEOUT.as_secs()
            )
            .into());
        }
        for polled in consumer.poll().await? {
            for record in polled.records() {
                if record.key() == Some(process.as_bytes()) {
                    let value = record.value().and_then(|v| std::str::from_utf8(v).ok());
                    last = value.and_then(|v| v.parse().ok());
                }
            }
        }
    }
    Ok(last)
}

/// How long reading the ledger may take (it waits out other processes' open transactions).
const LEDGER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

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
        if let Some(producer) = batch.transaction.clone() {
            return self.write_in_transaction(batch, items, producer).await;
        }
        let (sink, batch_id, info) = (self.clone(), batch.batch_id, batch.clone());
        let written = tokio::task::spawn_blocking(move || sink.write_piece(&info, &items)).await;
        Ok(written.map_err(|e| format!("writing batch {batch_id}'s file stopped: {e}"))??)
    }

    fn takes_pieces(&self) -> bool {
        true
    }

    async fn committed(&mut self, _batch: &BatchInfo) -> Result<(), BoxError> {
        let Some((temporary, target)) = self.pending.take() else { return Ok(()) };
        let dir = self.dir.clone();
        let renamed = tokio::task::spawn_blocking(move || rename_into_place(&temporary, &target, &dir)).await;
        Ok(renamed.map_err(|e| format!("renaming a committed batch's file stopped: {e}"))??)
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
    /// The batch last written, for `committed`.
    written: Option<BatchInfo>,
}

impl<T, S> SinkOutput<T, S> {
    pub(crate) fn new(compute: Compute<T>, sink: S) -> Self {
        Self { compute, sink, pieces: Gather::default(), items_before: 0, ready: None, written: None }
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
                Some((info, items)) => {
                    let written = self.sink.write(&info, items).await;
                    self.written = Some(info);
                    written
                }
                None => Ok(()),
            }
        })
    }

    fn committed(&mut self) -> Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send + '_>> {
        Box::pin(async move {
            match self.written.take() {
                Some(info) => self.sink.committed(&info).await,
                None => Ok(()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process killed after its batch's transaction committed but before the rename finds its
    /// file at the temporary name when it runs again: renamed into place, as the ledger says the
    /// batch committed; the file of a batch whose transaction aborted is removed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn files_a_killed_process_left_are_renamed_if_their_batch_committed_and_removed_if_not() {
        let why = "the files sink's ledger is written in transactions (docs/brokers.md)";
        let Some(job) = sluice_testkit::scale_job(why, "files-ledger", 1).await else { return };
        let ledger = format!("{}-files-ledger", job.group);
        let process = format!("sluice-{}-0000000000000001", job.group);
        let mut config = sluice_client::ProducerConfig::default();
        config.transactional_id = Some(process.clone());
        let producer = Producer::new(job.client.clone(), config).await.unwrap();
        create_ledger(&job.client, &ledger).await.unwrap();
        // Batch 7 committed; batch 8's transaction was aborted.
        for (batch_id, commit) in [(7u64, true), (8, false)] {
            producer.begin_transaction().await.unwrap();
            let record = ProducerRecord::new(ledger.clone(), batch_id.to_string()).key(process.clone());
            producer.send(record).await.unwrap().await.unwrap();
            if commit {
                producer.commit_transaction().await.unwrap();
            } else {
                producer.abort_transaction().await.unwrap();
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let sink = JsonLinesFiles::new(dir.path());
        let (committed, aborted) = (sink.scale_names(&process, 7), sink.scale_names(&process, 8));
        std::fs::write(&committed.0, "{\"row\":7}\n").unwrap();
        std::fs::write(&aborted.0, "{\"row\":8}\n").unwrap();
        let other = sink.scale_names("sluice-another-process", 8);
        std::fs::write(&other.0, "{}\n").unwrap();

        sink.resolve_left_files(&producer, &ledger, &process).await.unwrap();
        assert_eq!(std::fs::read_to_string(&committed.1).unwrap(), "{\"row\":7}\n");
        assert!(!committed.0.exists() && !aborted.0.exists() && !aborted.1.exists());
        assert!(other.0.exists(), "another process's file is its own to resolve");
    }

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
