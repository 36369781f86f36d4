//! Where a stream's batches go: any [`Sink`], a closure (`foreach_batch`), stdout, or JSON-lines
//! files that appear whole at commit.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use std::sync::Arc;

use sluice_client::{Client, Consumer, ConsumerConfig, Isolation, OffsetReset, Producer, ProducerRecord, StartAt};
use sluice_protocol::error_code::ErrorCode;

use crate::graph::{BatchInfo, BatchInput, Compute, Gather, Output};
use crate::hash::HashMap;
use crate::stream::PartTasks;
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
    /// transaction, and with it the batches written since the last call (a transaction spans
    /// batches while the process catches up: [`BatchInfo::continues_transaction`]). A sink that
    /// holds its output until then (files renamed into place) publishes it here; an error
    /// fails the run. Does nothing unless implemented.
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
/// In scale-out mode a batch has one file per task with items in it, as Spark has one file per
/// partition: `<transactional id>-<checkpoint>-batch-<id>-task-<task>.jsonl` (the process's id:
/// processes may share the directory; the task zero-padded to 5 digits), so that each task's
/// rows stay together whichever process ran it (see [`BatchInfo::task_runs`]: a stream whose
/// items' tasks are not known, after a `count` say, has one file per batch,
/// `<transactional id>-<checkpoint>-batch-<id>.jsonl`). A batch is not re-run there (another
/// process may read its records again), so its files are renamed into place only once the
/// batch's transaction has committed (with the files of the transaction's other batches, if it
/// spans batches). The transaction also writes
/// the batch's id under the process's id to the compacted topic `<group>-files-ledger`, so that
/// a process restarted after a crash between the commit and the renames knows whether the files
/// it left committed (those of the last batch the ledger holds, or of an earlier batch of the
/// same checkpoint): they are renamed into place if so, and removed if not.
#[derive(Debug, Clone)]
pub struct JsonLinesFiles {
    dir: PathBuf,
    /// Scale-out mode: the files of the batches written in the transaction under way (it may
    /// span batches), to rename once it commits.
    pending: Vec<(PathBuf, PathBuf)>,
    /// Scale-out mode: the files of the batch being written, by task, begun in its pieces so far.
    batch_files: BTreeMap<Option<i32>, (PathBuf, PathBuf)>,
    /// Scale-out mode: whether files a previous run left were looked into.
    resolved: bool,
}

impl JsonLinesFiles {
    /// Files in `dir` (created if missing).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into(), pending: Vec::new(), batch_files: BTreeMap::new(), resolved: false }
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
        let whole_batch_empty = batch.items_before == 0 && items.is_empty();
        if batch.piece == 0 && whole_batch_empty && batch.last_piece {
            return Ok(());
        }
        if !items.is_empty() || batch.piece == 0 {
            append_lines(&self.dir, batch_id, &temporary, batch.piece == 0, items)?;
        }
        if !batch.last_piece {
            return Ok(());
        }
        if whole_batch_empty {
            return std::fs::remove_file(&temporary).map_err(|e| io_error("removing", &temporary, &e));
        }
        sync_file(&temporary)?;
        rename_into_place(&temporary, &self.file_of(batch_id), &self.dir)
    }

    /// Scale-out mode: the files at their temporary names.
    fn left_files(&self) -> Result<Vec<LeftFile>, BoxError> {
        match std::fs::read_dir(&self.dir) {
            Ok(entries) => Ok(entries
                .filter_map(|entry| {
                    let name = entry.ok()?.file_name().into_string().ok()?;
                    let (owner, stem, task) = split_temporary_name(&name)?;
                    Some((owner.to_owned(), stem.to_owned(), task, self.dir.join(&name)))
                })
                .collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(format!("listing {}: {e}", self.dir.display()).into()),
        }
    }

    /// Scale-out mode: the temporary and final names of a batch's file of `task` (`None`: of
    /// the batch's items whose tasks are not known), by the process's transactional id and
    /// [`file_stem`].
    fn scale_names(&self, process: &str, stem: &str, task: Option<i32>) -> (PathBuf, PathBuf) {
        let name = match task {
            Some(task) => format!("{process}-{stem}-task-{task:05}.jsonl"),
            None => format!("{process}-{stem}.jsonl"),
        };
        (self.dir.join(format!(".{name}.tmp")), self.dir.join(name))
    }

    /// Scale-out mode: the files left at their temporary names (by a crash between a
    /// transaction's commit and the renames, by a transaction that aborted, or being written now
    /// by another process sharing the directory). Each whose batch the ledger says committed is
    /// renamed into place, whichever process's it is (its process may never come back); this
    /// process's own others are removed (their transactions are over: aborted, or fenced by this
    /// run). The ledger holds each process's last committed batch with a file: a file left of
    /// that batch or an earlier one of the same checkpoint is of its transaction (a transaction
    /// may span batches), since the files of a transaction that did not commit are resolved, at
    /// the process's next write, before it writes any other.
    async fn resolve_left_files(&self, producer: &Producer, ledger: &str, process: &str) -> Result<(), BoxError> {
        if self.left_files()?.is_empty() {
            return Ok(());
        }
        let committed = committed_batches(producer.client(), ledger).await?;
        // Listed again after the ledger was read: another process removes a file of its batch
        // that did not commit before it commits a later batch, so a file still there now is not
        // one the ledger read above counts as committed unless it is.
        for (owner, stem, task, temporary) in self.left_files()? {
            let (_, target) = self.scale_names(&owner, &stem, task);
            if committed.get(&owner).is_some_and(|last| committed_with(last, &stem)) {
                tracing::info!(file = %target.display(), "a batch committed before its file was renamed: renamed into place now");
                rename_into_place(&temporary, &target, &self.dir)?;
            } else if owner == process {
                tracing::info!(file = %temporary.display(), "the batch did not commit: its file is removed");
                remove_if_there(&temporary).map_err(|e| format!("removing {}: {e}", temporary.display()))?;
            }
        }
        Ok(())
    }

    /// Scale-out mode: writes a piece of the batch's files, each task's items to its own (begun
    /// with its first items in the batch), and at the batch's last piece syncs them and notes the
    /// batch in the ledger through the batch's transaction; the files are renamed into place
    /// when the transaction commits ([`Sink::committed`]).
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
            create_ledger(producer.client(), &ledger).await?;
        }
        // Once per run, and after a transaction whose commit did not succeed (it may have
        // committed all the same, if the answer to its end was lost): the ledger decides.
        let uncommitted = batch.piece == 0 && !batch.continues_transaction && !self.pending.is_empty();
        if !self.resolved || uncommitted {
            self.pending.clear();
            self.resolve_left_files(&producer, &ledger, process).await?;
            self.resolved = true;
        }
        let (stem, batch_id) = (file_stem(batch.checkpoint_id, batch.batch_id), batch.batch_id);
        if batch.piece == 0 {
            // A batch begins (one that failed part way left its files, resolved as not
            // committed).
            self.batch_files.clear();
        }
        let mut writes = Vec::new();
        for (task, items) in by_task(items, batch.task_runs.as_deref()) {
            let begun = self.batch_files.contains_key(&task);
            let names = self.scale_names(process, &stem, task);
            let (temporary, _) = self.batch_files.entry(task).or_insert(names);
            writes.push((temporary.clone(), !begun, items));
        }
        let last = batch.last_piece.then(|| std::mem::take(&mut self.batch_files));
        let to_sync: Vec<PathBuf> = last.iter().flat_map(|files| files.values().map(|(t, _)| t.clone())).collect();
        if !writes.is_empty() || !to_sync.is_empty() {
            let dir = self.dir.clone();
            let written = tokio::task::spawn_blocking(move || {
                for (temporary, create, items) in writes {
                    append_lines(&dir, batch_id, &temporary, create, &items)?;
                }
                to_sync.iter().try_for_each(|temporary| sync_file(temporary))
            })
            .await;
            written.map_err(|e| format!("writing batch {batch_id}'s files stopped: {e}"))??;
        }
        let Some(files) = last.filter(|files| !files.is_empty()) else { return Ok(()) };
        let record = ProducerRecord::new(ledger.clone(), stem).key(process.to_owned());
        let sent = producer.send(record).await;
        drop(sent.map_err(|e| format!("noting batch {batch_id} in the ledger {ledger}: {e}"))?);
        self.pending.extend(files.into_values());
        Ok(())
    }
}

/// Scale-out mode: what names a batch's file after its process's transactional id, and what the
/// ledger holds for the process's last committed batch with a file: the checkpoint (batch ids
/// start again on a new one, which may come with the same transactional id) and the batch.
fn file_stem(checkpoint_id: u64, batch_id: u64) -> String {
    format!("{checkpoint_id:016x}-batch-{batch_id:020}")
}

/// Whether the batch of file stem `stem` committed, given the stem of its process's last
/// committed batch with a file: the same checkpoint's, at or before it.
fn committed_with(last: &str, stem: &str) -> bool {
    match (last.split_once("-batch-"), stem.split_once("-batch-")) {
        // Batch ids are zero-padded to the same width: they compare as text.
        (Some((checkpoint, last)), Some((of, batch))) => checkpoint == of && batch <= last,
        _ => false,
    }
}

/// Scale-out mode: a file at its temporary name: (process, file stem, task, path).
type LeftFile = (String, String, Option<i32>, PathBuf);

/// A batch's items in groups by task, by the batch's task runs (see [`BatchInfo::task_runs`]),
/// each task's in their order: all in one group of no task (`None`) where the runs are not
/// known, or do not cover the items.
fn by_task<T>(items: Vec<T>, runs: Option<&[(i32, usize)]>) -> BTreeMap<Option<i32>, Vec<T>> {
    let mut groups: BTreeMap<Option<i32>, Vec<T>> = BTreeMap::new();
    let covered = runs.is_some_and(|runs| runs.iter().map(|(_, n)| n).sum::<usize>() == items.len());
    match runs.filter(|_| covered) {
        Some(runs) => {
            let mut items = items.into_iter();
            for (task, count) in runs {
                groups.entry(Some(*task)).or_default().extend(items.by_ref().take(*count));
            }
        }
        None if items.is_empty() => {}
        None => drop(groups.insert(None, items)),
    }
    groups
}

/// The (transactional id, [`file_stem`], task) of a scale-out file's temporary name (files of
/// items whose tasks are not known, and those of versions before per-task files, have no task).
fn split_temporary_name(name: &str) -> Option<(&str, &str, Option<i32>)> {
    const STEM: usize = 16 + "-batch-".len() + 20;
    let inner = name.strip_prefix('.')?.strip_suffix(".jsonl.tmp")?;
    let task = inner.rsplit_once("-task-").and_then(|(before, task)| {
        let digits = !task.is_empty() && task.bytes().all(|b| b.is_ascii_digit());
        Some((before, digits.then(|| task.parse::<i32>().ok()).flatten()?))
    });
    let (inner, task) = match task {
        Some((before, task)) => (before, Some(task)),
        None => (inner, None),
    };
    let split = inner.len().checked_sub(STEM + 1)?;
    let (owner, stem) = (inner.get(..split)?, inner.get(split + 1..)?);
    let (checkpoint, batch) = stem.split_once("-batch-")?;
    let well_formed = inner.get(split..=split) == Some("-")
        && checkpoint.len() == 16
        && checkpoint.bytes().all(|b| b.is_ascii_hexdigit())
        && batch.len() == 20
        && batch.bytes().all(|b| b.is_ascii_digit());
    (well_formed && !owner.is_empty()).then_some((owner, stem, task))
}

/// Removes `path`, if it is there.
fn remove_if_there(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Renames a synced file into place and makes the rename durable. In scale-out mode another
/// process sharing the directory may have renamed it first (a committed batch's file left
/// behind): that is done too.
fn rename_into_place(temporary: &Path, target: &Path, dir: &Path) -> Result<(), String> {
    rename_all_into_place(&[(temporary.to_owned(), target.to_owned())], dir)
}

/// [`rename_into_place`] for each (temporary, target) file of `dir`, one after the other, and
/// the directory synced once after them.
fn rename_all_into_place(files: &[(PathBuf, PathBuf)], dir: &Path) -> Result<(), String> {
    for (temporary, target) in files {
        match std::fs::rename(temporary, target) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && target.exists() => {}
            renamed => renamed.map_err(|e| format!("renaming into place {}: {e}", target.display()))?,
        }
    }
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

/// Each process's last batch with a file noted in the ledger ([`file_stem`]), of the
/// transactions that committed (read to the end the ledger had when asked).
async fn committed_batches(client: &Client, ledger: &str) -> Result<HashMap<String, String>, BoxError> {
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
    consumer.assign(ledger, 0, StartAt::Earliest).await.map_err(|e| format!("reading the ledger {ledger}: {e}"))?;
    let mut last = HashMap::default();
    while consumer.partition_progress(ledger, 0).is_none_or(|p| p.position < end) {
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "reading the ledger {ledger} to offset {end} took over {} s (an open transaction?)",
                LEDGER_READ_TIMEOUT.as_secs()
            )
            .into());
        }
        for polled in consumer.poll().await.map_err(|e| format!("reading the ledger {ledger}: {e}"))? {
            for record in polled.records() {
                let text = |bytes: Option<&[u8]>| bytes.and_then(|b| std::str::from_utf8(b).ok()).map(str::to_owned);
                if let (Some(process), Some(stem)) = (text(record.key()), text(record.value())) {
                    last.insert(process, stem);
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

/// Writes `items` of batch `batch_id` as JSON lines to the file `temporary` in `dir`: a new
/// file if `create` (made exclusively, after removing what a crashed run left at its name, in
/// `dir`, made and synced if missing), else appended to, never through a link.
fn append_lines<T: serde::Serialize>(
    dir: &Path,
    batch_id: u64,
    temporary: &Path,
    create: bool,
    items: &[T],
) -> Result<(), String> {
    let mut text = Vec::with_capacity(items.len() * 32);
    for item in items {
        serde_json::to_writer(&mut text, item).map_err(|e| format!("batch {batch_id}: an item is not JSON: {e}"))?;
        text.push(b'\n');
    }
    let mut options = std::fs::OpenOptions::new();
    if create {
        create_dir_synced(dir).map_err(|e| io_error("creating", dir, &e))?;
        remove_if_there(temporary).map_err(|e| io_error("removing", temporary, &e))?;
        options.write(true).create_new(true);
    } else {
        options.append(true);
        no_follow(&mut options);
    }
    let mut file = options.open(temporary).map_err(|e| io_error("opening", temporary, &e))?;
    file.write_all(&text).map_err(|e| io_error("writing", temporary, &e))
}

/// What failed, on which path, and why.
fn io_error(what: &str, path: &Path, error: &std::io::Error) -> String {
    format!("{what} {}: {error}", path.display())
}

/// Makes a written file durable (opened without following a link).
fn sync_file(path: &Path) -> Result<(), String> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    no_follow(&mut options);
    let file = options.open(path).map_err(|e| io_error("opening", path, &e))?;
    file.sync_all().map_err(|e| io_error("syncing", path, &e))
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
        if batch.group.is_some() {
            return match batch.transaction.clone() {
                Some(producer) => self.write_in_transaction(batch, items, producer).await,
                // A scale-out batch without records has no transaction, and nothing to write.
                None if items.is_empty() => Ok(()),
                None => Err("a files sink's items in a scale-out batch without a transaction".into()),
            };
        }
        let (sink, batch_id, info) = (self.clone(), batch.batch_id, batch.clone());
        let written = tokio::task::spawn_blocking(move || sink.write_piece(&info, &items)).await;
        Ok(written.map_err(|e| format!("writing batch {batch_id}'s file stopped: {e}"))??)
    }

    fn takes_pieces(&self) -> bool {
        true
    }

    async fn committed(&mut self, _batch: &BatchInfo) -> Result<(), BoxError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let (pending, dir) = (std::mem::take(&mut self.pending), self.dir.clone());
        let renamed = tokio::task::spawn_blocking(move || rename_all_into_place(&pending, &dir)).await;
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
    /// Scale-out mode: how the task of each part of the stream's batches is known.
    tasks: PartTasks,
    /// What the last `compute` made, for `write`.
    ready: Option<(BatchInfo, Vec<T>)>,
    /// The batch last written, for `committed`.
    written: Option<BatchInfo>,
}

impl<T, S> SinkOutput<T, S> {
    pub(crate) fn new(compute: Compute<T>, sink: S, tasks: PartTasks) -> Self {
        let pieces = Gather::default();
        Self { compute, sink, pieces, items_before: 0, tasks, ready: None, written: None }
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
            let parts = (self.compute)(input);
            let runs = self.tasks.runs(input, parts.as_ref().unwrap_or(&Vec::new()));
            let items: Vec<T> = parts.into_iter().flatten().flatten().collect();
            let before = self.items_before;
            self.items_before += items.len() as u64;
            let (piece, last) = (info.piece, info.last_piece);
            Some((info.with_piece(piece, last, before).with_task_runs(runs), items))
        } else {
            // The gathered parts are the pieces' part by part: read tasks stay read tasks, and
            // the operators that give tasks' parts give them at a batch's last piece only.
            let parts = self.pieces.add(input, (self.compute)(input)).flatten();
            parts.map(|parts| {
                let runs = self.tasks.runs(input, &parts);
                (info.with_piece(0, true, 0).with_task_runs(runs), parts.into_iter().flatten().collect())
            })
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
    /// batch committed, and so are the files of the transaction's earlier batches (a transaction
    /// spanning batches 5 to 7); the file of a batch whose transaction aborted is removed. Another
    /// process's committed file is renamed too (that process may never come back); its other
    /// files are its own (being written, maybe).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn files_a_killed_process_left_are_renamed_if_their_batch_committed_and_removed_if_not() {
        let why = "the files sink's ledger is written in transactions (docs/brokers.md)";
        let Some(job) = sluice_testkit::scale_job(why, "files-ledger", 1).await else { return };
        let ledger = format!("{}-files-ledger", job.group);
        create_ledger(&job.client, &ledger).await.unwrap();
        let transactional = |id: String| {
            let mut config = sluice_client::ProducerConfig::default();
            config.transactional_id = Some(id);
            Producer::new(job.client.clone(), config)
        };
        let (process, other) = (format!("sluice-{}-0000000000000001", job.group), format!("sluice-{}-2", job.group));
        let producer = transactional(process.clone()).await.unwrap();
        let other_producer = transactional(other.clone()).await.unwrap();
        // This process's batches 5 to 7 committed in one transaction and its batch 8 aborted;
        // the other's batch 3 committed.
        for (producer, owner, batches, commit) in [
            (&producer, &process, 5..8, true),
            (&producer, &process, 8..9, false),
            (&other_producer, &other, 3..4, true),
        ] {
            producer.begin_transaction().await.unwrap();
            for batch_id in batches {
                let record = ProducerRecord::new(ledger.clone(), file_stem(1, batch_id)).key(owner.clone());
                producer.send(record).await.unwrap().await.unwrap();
            }
            if commit {
                producer.commit_transaction().await.unwrap();
            } else {
                producer.abort_transaction().await.unwrap();
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let sink = JsonLinesFiles::new(dir.path());
        // A batch's files are per task; one of items whose tasks are not known (or of a
        // version before per-task files) has none.
        let names = |owner: &str, batch_id, task| sink.scale_names(owner, &file_stem(1, batch_id), task);
        let (earlier, committed) = (names(&process, 5, None), names(&process, 7, Some(3)));
        let (committed_too, aborted) = (names(&process, 7, Some(12)), names(&process, 8, Some(3)));
        let (others_committed, others_open) = (names(&other, 3, Some(0)), names(&other, 4, Some(1)));
        let files = [
            (&earlier.0, "5"),
            (&committed.0, "7"),
            (&committed_too.0, "7.12"),
            (&aborted.0, "8"),
            (&others_committed.0, "3"),
            (&others_open.0, "4"),
        ];
        for (path, text) in files {
            std::fs::write(path, format!("{{\"row\":{text}}}\n")).unwrap();
        }

        sink.resolve_left_files(&producer, &ledger, &process).await.unwrap();
        assert_eq!(std::fs::read_to_string(&earlier.1).unwrap(), "{\"row\":5}\n");
        assert_eq!(std::fs::read_to_string(&committed.1).unwrap(), "{\"row\":7}\n");
        assert_eq!(std::fs::read_to_string(&committed_too.1).unwrap(), "{\"row\":7.12}\n");
        assert!(committed_too.1.ends_with(format!("{process}-{}-task-00012.jsonl", file_stem(1, 7))));
        assert_eq!(std::fs::read_to_string(&others_committed.1).unwrap(), "{\"row\":3}\n");
        assert!(!earlier.0.exists() && !committed.0.exists() && !committed_too.0.exists());
        assert!(!aborted.0.exists() && !aborted.1.exists());
        assert!(others_open.0.exists(), "another process's open batch is its own to finish");
        // The other process renaming its own file after this one did is no error.
        std::fs::write(&others_committed.0, "{\"row\":3}\n").unwrap();
        std::fs::rename(&others_committed.0, &others_committed.1).unwrap();
        rename_into_place(&others_committed.0, &others_committed.1, dir.path()).unwrap();
    }

    #[test]
    fn a_batch_committed_with_the_last_one_the_ledger_holds_is_one_of_its_checkpoint_at_or_before_it() {
        let last = file_stem(0xabc, 42);
        assert!(committed_with(&last, &file_stem(0xabc, 42)));
        assert!(committed_with(&last, &file_stem(0xabc, 9)));
        assert!(!committed_with(&last, &file_stem(0xabc, 43)));
        assert!(!committed_with(&last, &file_stem(0xabd, 1)), "another checkpoint's");
        assert!(!committed_with("garbage", &file_stem(0xabc, 1)));
    }

    #[test]
    fn scale_out_file_names_give_back_their_process_batch_and_task() {
        let stem = file_stem(0xabc, 42);
        let name = format!(".sluice-clicks-9-{stem}.jsonl.tmp");
        assert_eq!(split_temporary_name(&name), Some(("sluice-clicks-9", stem.as_str(), None)));
        let sink = JsonLinesFiles::new("d");
        for (process, task) in [("sluice-clicks-9", 7), ("sluice-a-task-3-1", 123_456)] {
            let (temporary, _) = sink.scale_names(process, &stem, Some(task));
            let name = temporary.file_name().unwrap().to_str().unwrap();
            assert_eq!(split_temporary_name(name), Some((process, stem.as_str(), Some(task))), "{name}");
        }
        for bad in [
            ".batch-00000000000000000001.jsonl.tmp",
            ".x-zzzzzzzzzzzzzzzz-batch-00000000000000000001.jsonl.tmp",
            ".x-0000000000000abc-batch-00000000000000000001-task-.jsonl.tmp",
            ".x-0000000000000abc-batch-00000000000000000001-task-x1.jsonl.tmp",
            ".x-0000000000000abc-batch-00000000000000000001-task-99999999999.jsonl.tmp",
            "x.jsonl",
        ] {
            assert_eq!(split_temporary_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_batchs_items_go_to_their_tasks_by_its_runs_or_together_where_they_are_not_known() {
        let items = || vec!["a", "b", "c", "d", "e"];
        let runs = [(4, 2), (1, 1), (4, 2)];
        let groups = by_task(items(), Some(&runs));
        assert_eq!(groups, BTreeMap::from([(Some(1), vec!["c"]), (Some(4), vec!["a", "b", "d", "e"])]));
        assert_eq!(by_task(items(), None), BTreeMap::from([(None, items())]));
        let short = [(4, 2)];
        assert_eq!(by_task(items(), Some(&short)), BTreeMap::from([(None, items())]), "runs that do not cover them");
        assert!(by_task(Vec::<u8>::new(), None).is_empty() && by_task(Vec::<u8>::new(), Some(&[])).is_empty());
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
