//! The replicated state machine, which is a RocksDB database and nothing else: no in-memory copy,
//! so the data may be far larger than memory.
//!
//! Every applied batch of entries is ONE WriteBatch carrying the key-value changes together with
//! the last applied log id, the last membership and the removed node ids. A restart therefore
//! resumes from exactly the state on disk, and openraft replays nothing it has already applied.
//!
//! Snapshots are RocksDB checkpoints (hard links to the live files, so building one copies no
//! data) and are streamed to followers in the format of `snapshot`. Installing a received snapshot
//! builds a new database generation and switches to it (see `state_db`).
//!
//! Durability: applies are written without fsync (they are also in the fsynced Raft log).
//! Creating a checkpoint flushes the memtables into synced table files and then syncs the WAL,
//! so everything at or below a snapshot point is durable in the state machine; openraft purges
//! the log only up to a snapshot point, so the log never loses an entry the state machine could
//! still lose, even to a power cut.

use std::collections::BTreeSet;
use std::collections::HashMap;
use std::fs;
use std::io;
use std::io::Read;
use std::io::Seek;
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::sync::Mutex;
use std::thread;

use futures::Stream;
use futures::TryStreamExt;
use openraft::storage::EntryResponder;
use openraft::storage::RaftStateMachine;
use openraft::EntryPayload;
use openraft::OptionalSend;
use openraft::RaftSnapshotBuilder;
use rocksdb::Direction;
use rocksdb::IteratorMode;
use rocksdb::Options;
use rocksdb::WriteBatch;
use rocksdb::WriteOptions;
use rocksdb::DB;

use super::blocking;
use super::column_family;
use super::decode;
use super::encode;
use super::io_err;
use super::snapshot;
use super::snapshot::Checkpoint;
use super::snapshot::MemberRecords;
use super::snapshot::SnapshotData;
use super::snapshot::SnapshotEncoder;
use super::snapshot::SnapshotFile;
use super::snapshot::SnapshotReader;
use super::state_db::SharedStateDb;
use super::until_space;
use super::write_soon;
use super::write_until_space;
use crate::error::Error;
use crate::types::Command;
use crate::types::CommandResult;
use crate::types::LogId;
use crate::types::NodeId;
use crate::types::Snapshot;
use crate::types::SnapshotMeta;
use crate::types::StoredMembership;
use crate::types::TypeConfig;

/// User keys and values, stored as given.
const CF_DATA: &str = "data";
/// The applied log id, membership and removed ids, written in the same batch as the data.
const CF_META: &str = "meta";
const COLUMN_FAMILIES: &[&str] = &[CF_DATA, CF_META];
const KEY_APPLIED: &[u8] = b"applied";
const KEY_MEMBERSHIP: &[u8] = b"membership";
/// Ids that have been removed from the cluster: replicated, so a removed id is refused re-entry
/// on every node, after restarts and through snapshots.
const KEY_REMOVED_IDS: &[u8] = b"removed_ids";
/// Learners that stay learners: replicated, so whichever node leads next does not promote them.
const KEY_KEPT_LEARNERS: &[u8] = b"kept_learners";
/// Bytes of pairs per write while installing a snapshot.
const INSTALL_BATCH_BYTES: usize = 4 << 20;
/// Bytes per piece of a snapshot stream, and how many pieces may wait for the reader: together
/// they bound the memory a stream uses, whatever the state's size.
const STREAM_CHUNK_BYTES: usize = 1 << 20;
const STREAM_QUEUE: usize = 2;

/// The newest snapshot, shared between the state machine and its snapshot builders.
type CurrentSnapshot = Arc<Mutex<Option<Arc<Checkpoint>>>>;

/// What the meta column family records about the state it sits beside.
struct StateMeta {
    applied: Option<LogId>,
    membership: StoredMembership,
    records: MemberRecords,
}

impl StateMeta {
    fn read(db: &DB) -> io::Result<Self> {
        let meta = column_family(db, CF_META)?;
        let applied = match db.get_pinned_cf(meta, KEY_APPLIED).map_err(io_err)? {
            Some(bytes) => decode(&bytes)?,
            None => None,
        };
        let membership = match db.get_pinned_cf(meta, KEY_MEMBERSHIP).map_err(io_err)? {
            Some(bytes) => decode(&bytes)?,
            None => StoredMembership::default(),
        };
        let id_set = |key: &[u8]| -> io::Result<BTreeSet<NodeId>> {
            match db.get_pinned_cf(meta, key).map_err(io_err)? {
                Some(bytes) => decode(&bytes),
                None => Ok(BTreeSet::new()),
            }
        };
        let records = MemberRecords {
            removed: id_set(KEY_REMOVED_IDS)?,
            kept_learners: id_set(KEY_KEPT_LEARNERS)?,
        };
        Ok(StateMeta {
            applied,
            membership,
            records,
        })
    }

    fn snapshot_meta(&self) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: self.applied,
            last_membership: self.membership.clone(),
        }
    }
}

/// openraft's state machine over RocksDB.
pub struct StateMachineStore {
    state: SharedStateDb,
    snapshot_dir: PathBuf,
    current_snapshot: CurrentSnapshot,
    applied: Option<LogId>,
    membership: StoredMembership,
    records: Arc<Mutex<MemberRecords>>,
    counters: Arc<Counters>,
}

/// Figures the node reports about its state machine.
#[derive(Debug, Default)]
struct Counters {
    /// Entries applied by this process; zero after a restart that resumed from disk with no replay.
    applied_this_run: AtomicU64,
    snapshots_built: AtomicU64,
    snapshots_installed: AtomicU64,
}

/// A read-only view of the state machine for serving reads without going through Raft's task.
///
/// Reads see whatever has been applied; linearizability is the caller's job (wait for the read
/// index to be applied first).
#[derive(Clone)]
pub struct StateReader {
    state: SharedStateDb,
    records: Arc<Mutex<MemberRecords>>,
    counters: Arc<Counters>,
}

impl StateMachineStore {
    /// Opens the state machine at `path` and the newest snapshot in `snapshot_dir`.
    pub fn open(path: &Path, snapshot_dir: PathBuf) -> Result<Self, Error> {
        let state = SharedStateDb::open(path, COLUMN_FAMILIES)?;
        let storage_err = |path: &Path| {
            let path = path.to_path_buf();
            move |e: io::Error| Error::Storage {
                path,
                message: e.to_string(),
            }
        };
        let StateMeta {
            applied,
            membership,
            records,
        } = StateMeta::read(&state.current()).map_err(storage_err(path))?;
        fs::create_dir_all(&snapshot_dir)?;
        let newest = snapshot::newest_checkpoint_in(&snapshot_dir)
            .and_then(|newest| newest.map(open_checkpoint).transpose())
            .map_err(storage_err(&snapshot_dir))?;
        tracing::info!(
            applied = ?applied,
            "state machine opened at applied index {}",
            applied.map_or(0, |id| id.index)
        );
        Ok(StateMachineStore {
            state,
            snapshot_dir,
            current_snapshot: Arc::new(Mutex::new(newest.map(Arc::new))),
            applied,
            membership,
            records: Arc::new(Mutex::new(records)),
            counters: Arc::default(),
        })
    }

    /// The last log entry applied, as recorded durably with the state it produced.
    pub fn applied(&self) -> Option<LogId> {
        self.applied
    }

    /// A reader sharing this state machine's database.
    pub fn reader(&self) -> StateReader {
        StateReader {
            state: self.state.clone(),
            records: self.records.clone(),
            counters: self.counters.clone(),
        }
    }
}

/// A page of a scan, and where the next one starts.
#[derive(Debug, Default)]
pub struct ScanPage {
    /// Pairs in key order.
    pub pairs: Vec<(Vec<u8>, Vec<u8>)>,
    /// The first key under the prefix not in this page; `None` when the page ends the range.
    pub next: Option<Vec<u8>>,
}

impl StateReader {
    /// The value of `key` as applied so far.
    pub fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        let db = self.state.current();
        let data = column_family(&db, CF_DATA)?;
        db.get_cf(data, key).map_err(io_err)
    }

    /// One page of the pairs whose keys start with `prefix`, in key order, from the first key at
    /// or after `start`: up to `limit` pairs, and no more than `max_bytes` of keys and values
    /// once the page holds one pair, so a page costs bounded memory whatever the values' sizes.
    pub fn scan(
        &self,
        prefix: &[u8],
        start: &[u8],
        limit: usize,
        max_bytes: usize,
    ) -> io::Result<ScanPage> {
        let db = self.state.current();
        let data = column_family(&db, CF_DATA)?;
        let from = prefix.max(start);
        let mut page = ScanPage::default();
        let mut bytes = 0usize;
        for item in db.iterator_cf(data, IteratorMode::From(from, Direction::Forward)) {
            let (key, value) = item.map_err(io_err)?;
            if !key.starts_with(prefix) {
                break;
            }
            bytes = bytes.saturating_add(key.len() + value.len());
            if page.pairs.len() >= limit || (bytes > max_bytes && !page.pairs.is_empty()) {
                page.next = Some(key.into_vec());
                break;
            }
            page.pairs.push((key.into_vec(), value.into_vec()));
        }
        Ok(page)
    }

    /// The directory of the state machine database in service.
    pub fn dir(&self) -> PathBuf {
        self.state.current().path().to_path_buf()
    }

    /// Ids removed from the cluster, as applied so far.
    pub fn removed_ids(&self) -> BTreeSet<NodeId> {
        lock(&self.records).removed.clone()
    }

    /// Learners that stay learners, as applied so far.
    pub fn kept_learners(&self) -> BTreeSet<NodeId> {
        lock(&self.records).kept_learners.clone()
    }

    /// Entries applied by this process since it started.
    pub fn applied_this_run(&self) -> u64 {
        self.counters.applied_this_run.load(Ordering::Relaxed)
    }

    /// Snapshots this node has built since it started.
    pub fn snapshots_built(&self) -> u64 {
        self.counters.snapshots_built.load(Ordering::Relaxed)
    }

    /// Snapshots this node has received and installed since it started.
    pub fn snapshots_installed(&self) -> u64 {
        self.counters.snapshots_installed.load(Ordering::Relaxed)
    }
}

/// Applies one command to the batch being built. `pending` holds this batch's earlier writes,
/// which RocksDB cannot see yet, so a compare-and-swap after a put in the same batch sees the put.
fn apply_command(
    db: &DB,
    batch: &mut WriteBatch,
    pending: &mut HashMap<Vec<u8>, Option<Vec<u8>>>,
    command: Command,
) -> io::Result<CommandResult> {
    let data = column_family(db, CF_DATA)?;
    match command {
        Command::Put { key, value } => {
            batch.put_cf(data, &key, &value);
            pending.insert(key, Some(value));
        }
        Command::Delete { key } => {
            batch.delete_cf(data, &key);
            pending.insert(key, None);
        }
        Command::CompareAndSwap {
            key,
            expected,
            value,
        } => {
            let current = match pending.get(&key) {
                Some(value) => value.clone(),
                None => db.get_cf(data, &key).map_err(io_err)?,
            };
            if current != expected {
                return Ok(CommandResult::PreconditionFailed { current });
            }
            batch.put_cf(data, &key, &value);
            pending.insert(key, Some(value));
        }
        // A member record, not data: `apply` records it with the membership.
        Command::KeepLearner { .. } => {}
    }
    Ok(CommandResult::Applied)
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<Strm>(&mut self, entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + OptionalSend,
    {
        let entries: Vec<EntryResponder<TypeConfig>> = entries.try_collect().await?;
        let Some(last) = entries.last().map(|(entry, _)| entry.log_id) else {
            return Ok(());
        };
        let mut membership = None;
        let records_before = lock(&self.records).clone();
        let mut records = records_before.clone();
        let mut previous_nodes = node_ids(&self.membership);
        let mut commands = Vec::with_capacity(entries.len());
        let mut responders = Vec::with_capacity(entries.len());
        for (entry, responder) in entries {
            match entry.payload {
                EntryPayload::Blank => commands.push(None),
                EntryPayload::Normal(Command::KeepLearner { id, keep }) => {
                    if keep {
                        records.kept_learners.insert(id);
                    } else {
                        records.kept_learners.remove(&id);
                    }
                    commands.push(None);
                }
                EntryPayload::Normal(command) => commands.push(Some(command)),
                EntryPayload::Membership(m) => {
                    let next = StoredMembership::new(Some(entry.log_id), m);
                    let next_nodes = node_ids(&next);
                    for gone in previous_nodes.difference(&next_nodes) {
                        records.removed.insert(*gone);
                        records.kept_learners.remove(gone);
                    }
                    previous_nodes = next_nodes;
                    membership = Some(next);
                    commands.push(None);
                }
            }
            responders.push(responder);
        }
        let db = self.state.current();
        let new_membership = membership.clone();
        let new_records = (records != records_before).then(|| records.clone());
        // Puts and deletes only write, so their batch is built and written here (see
        // `write_soon`); a compare-and-swap may read the disk, so such a batch is built on the
        // blocking pool.
        let reads = commands
            .iter()
            .any(|command| matches!(command, Some(Command::CompareAndSwap { .. })));
        let build = move |db: &DB| -> io::Result<(WriteBatch, Vec<CommandResult>)> {
            let mut batch = WriteBatch::default();
            let mut pending = HashMap::new();
            let results = commands
                .into_iter()
                .map(|command| match command {
                    Some(command) => apply_command(db, &mut batch, &mut pending, command),
                    None => Ok(CommandResult::Applied),
                })
                .collect::<io::Result<Vec<_>>>()?;
            let meta = column_family(db, CF_META)?;
            batch.put_cf(meta, KEY_APPLIED, encode(&Some(last))?);
            if let Some(membership) = &new_membership {
                batch.put_cf(meta, KEY_MEMBERSHIP, encode(membership)?);
            }
            if let Some(records) = &new_records {
                put_member_records(&mut batch, meta, records)?;
            }
            Ok((batch, results))
        };
        let results = if reads {
            blocking(move || {
                let (batch, results) = build(&db)?;
                write_until_space("state machine", &db, batch, &WriteOptions::default())?;
                Ok(results)
            })
            .await?
        } else {
            let (batch, results) = build(&db)?;
            write_soon("state machine", &db, batch).await?;
            results
        };
        self.applied = Some(last);
        if let Some(membership) = membership {
            self.membership = membership;
        }
        *lock(&self.records) = records;
        self.counters
            .applied_this_run
            .fetch_add(results.len() as u64, Ordering::Relaxed);
        for (responder, result) in responders.into_iter().zip(results) {
            if let Some(responder) = responder {
                responder.send(result);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            state: self.state.clone(),
            dir: self.snapshot_dir.clone(),
            current_snapshot: self.current_snapshot.clone(),
            counters: self.counters.clone(),
        }
    }

    /// Builds the snapshot's state as a new database generation, streaming pairs in bounded
    /// batches (memory stays flat whatever the state's size), verifies the checksum, syncs, and
    /// only then switches to it: a crash at any point leaves the old state or the new, never a
    /// mix. Reads keep using the old generation until the switch.
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> io::Result<()> {
        let state = self.state.clone();
        let dir = self.snapshot_dir.clone();
        let expected_meta = meta.clone();
        let (checkpoint, records) = blocking(move || {
            let received = match &snapshot {
                SnapshotData::Received(file) => Some(file.path.clone()),
                SnapshotData::Checkpoint(_) => None,
            };
            let reader = SnapshotReader::new(snapshot_stream(snapshot)?)?;
            if reader.meta != expected_meta {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "snapshot header does not match the snapshot being installed",
                ));
            }
            let loaded = load_stream(&state, &dir, reader, &expected_meta, None)?;
            if let Some(received) = received {
                fs::remove_file(received)?;
            }
            Ok(loaded)
        })
        .await?;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        *lock(&self.records) = records;
        replace_current(&self.current_snapshot, checkpoint);
        self.counters
            .snapshots_installed
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            "installed snapshot at index {}",
            meta.last_log_id.map_or(0, |id| id.index)
        );
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot>> {
        Ok(lock(&self.current_snapshot)
            .clone()
            .map(|checkpoint| Snapshot {
                meta: checkpoint.meta.clone(),
                snapshot: SnapshotData::Checkpoint(checkpoint),
            }))
    }
}

/// Loads a snapshot stream into a new database generation, records `recorded` (applied log id
/// and membership) and the member records beside it, syncs, switches to it and checkpoints it.
/// The member records are `records` when given, otherwise the stream's. Returns the checkpoint
/// and the member records in force. The checksum is verified before the switch, so a damaged
/// stream changes nothing.
fn load_stream<R: Read>(
    state: &SharedStateDb,
    dir: &Path,
    mut reader: SnapshotReader<R>,
    recorded: &SnapshotMeta,
    records: Option<MemberRecords>,
) -> io::Result<(Checkpoint, MemberRecords)> {
    let next = state.create_next()?;
    let data = column_family(&next, CF_DATA)?;
    // The new generation is invisible until the switch and is synced by the flush below, so the
    // bulk load can skip the WAL.
    let mut unlogged = WriteOptions::default();
    unlogged.disable_wal(true);
    let mut batch = WriteBatch::default();
    while let Some((key, value)) = reader.next_pair()? {
        batch.put_cf(data, key, value);
        if batch.size_in_bytes() >= INSTALL_BATCH_BYTES {
            let full = std::mem::take(&mut batch);
            write_until_space("snapshot install", &next, full, &unlogged)?;
        }
    }
    let records = records.unwrap_or(reader.records);
    let meta_cf = column_family(&next, CF_META)?;
    batch.put_cf(meta_cf, KEY_APPLIED, encode(&recorded.last_log_id)?);
    batch.put_cf(meta_cf, KEY_MEMBERSHIP, encode(&recorded.last_membership)?);
    put_member_records(&mut batch, meta_cf, &records)?;
    write_until_space("snapshot install", &next, batch, &unlogged)?;
    until_space("snapshot install", next.path(), || {
        next.flush_cfs_opt(&[data, meta_cf], &rocksdb::FlushOptions::default())
    })?;
    state.switch_to(next)?;
    Ok((create_checkpoint(state, dir)?, records))
}

/// Adds both member records to `batch`, in the meta column family `meta`.
fn put_member_records(
    batch: &mut WriteBatch,
    meta: &rocksdb::ColumnFamily,
    records: &MemberRecords,
) -> io::Result<()> {
    batch.put_cf(meta, KEY_REMOVED_IDS, encode(&records.removed)?);
    batch.put_cf(meta, KEY_KEPT_LEARNERS, encode(&records.kept_learners)?);
    Ok(())
}

impl StateMachineStore {
    /// Fills this new, empty state machine from the backup stream in `file` as the state of a
    /// NEW cluster: the backup's data at its applied log id, with `membership` (set at that log
    /// id) in place of the backup's and no member records, which belonged to the old cluster. Returns
    /// the backup's own header. A damaged stream is refused before anything is switched to.
    pub async fn restore(
        &mut self,
        file: PathBuf,
        membership: crate::types::Membership,
    ) -> io::Result<SnapshotMeta> {
        let state = self.state.clone();
        let dir = self.snapshot_dir.clone();
        blocking(move || {
            let reader = SnapshotReader::new(fs::File::open(&file)?)?;
            let backup = reader.meta.clone();
            let recorded = SnapshotMeta {
                last_log_id: backup.last_log_id,
                last_membership: StoredMembership::new(backup.last_log_id, membership),
            };
            load_stream(
                &state,
                &dir,
                reader,
                &recorded,
                Some(MemberRecords::default()),
            )?;
            Ok(backup)
        })
        .await
    }
}

/// Every node id in a membership, voter or learner.
fn node_ids(membership: &StoredMembership) -> BTreeSet<NodeId> {
    membership.nodes().map(|(id, _)| *id).collect()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn open_read_only(path: &Path) -> io::Result<DB> {
    DB::open_cf_for_read_only(&Options::default(), path, COLUMN_FAMILIES, false).map_err(io_err)
}

/// Wraps the checkpoint directory found at start-up, reading its metadata from the checkpoint.
fn open_checkpoint(path: PathBuf) -> io::Result<Checkpoint> {
    let meta = StateMeta::read(&open_read_only(&path)?)?.snapshot_meta();
    Ok(snapshot::checkpoint_at(path, meta))
}

/// Checkpoints the generation in service into the snapshot directory. Cheap: RocksDB flushes
/// the memtables and hard-links the files. The metadata is read from the checkpoint itself, so it
/// describes exactly the data in it.
///
/// The checkpoint also copies the live WAL's tail, entries applied after the flush: those are not
/// yet durable in the live database, whose writes are not synced. openraft may purge the log up
/// to a snapshot's index once it exists, so the live WAL is synced before the checkpoint is
/// returned: after a power cut the live state is never behind a snapshot's purge point.
fn create_checkpoint(state: &SharedStateDb, dir: &Path) -> io::Result<Checkpoint> {
    let building = dir.join(snapshot::checkpoint_building_name());
    let db = state.current();
    until_space("snapshot", dir, || {
        if building.exists() {
            // What a failed attempt left behind; RocksDB wants a fresh directory.
            let _ = fs::remove_dir_all(&building);
        }
        rocksdb::checkpoint::Checkpoint::new(&db)
            .and_then(|checkpoint| checkpoint.create_checkpoint(&building))
    })?;
    until_space("snapshot", dir, || db.flush_wal(true))?;
    let meta = StateMeta::read(&open_read_only(&building)?)?.snapshot_meta();
    let path = dir.join(snapshot::checkpoint_name(&meta));
    match fs::rename(&building, &path) {
        Ok(()) => snapshot::sync_dir(&path)?,
        // Same log id, same state, built by another build meanwhile: keep that one, which may
        // already be streaming (a rename never replaces a directory that has files in it).
        Err(_) if path.exists() => fs::remove_dir_all(&building)?,
        Err(e) => return Err(e),
    }
    Ok(snapshot::checkpoint_at(path, meta))
}

/// Makes `checkpoint` the current snapshot unless a newer one is already current (a build and an
/// install may finish in either order); the loser is retired.
fn replace_current(current: &CurrentSnapshot, checkpoint: Checkpoint) -> Arc<Checkpoint> {
    let mut guard = lock(current);
    match guard.as_ref() {
        Some(existing) if existing.path() == checkpoint.path() => existing.clone(),
        Some(existing) if existing.meta.last_log_id > checkpoint.meta.last_log_id => {
            checkpoint.retire();
            existing.clone()
        }
        _ => {
            let checkpoint = Arc::new(checkpoint);
            if let Some(previous) = guard.replace(checkpoint.clone()) {
                previous.retire();
            }
            checkpoint
        }
    }
}

/// The snapshot stream of `snapshot` in chunks of `chunk_len` bytes, the last one shorter
/// (possibly empty), so a receiver knows the end without another read. One blocking task reads
/// them at most `ahead` chunks before the consumer, off the async workers: the stream reads the
/// disk, and sending the previous chunk overlaps with reading the next. Dropping the receiver
/// stops the task.
pub fn snapshot_chunks(
    snapshot: SnapshotData,
    chunk_len: usize,
    ahead: usize,
) -> tokio::sync::mpsc::Receiver<io::Result<Vec<u8>>> {
    let (chunks, received) = tokio::sync::mpsc::channel(ahead.max(1));
    tokio::task::spawn_blocking(move || {
        let mut stream = match snapshot_stream(snapshot) {
            Ok(stream) => stream,
            Err(e) => {
                let _ = chunks.blocking_send(Err(e));
                return;
            }
        };
        loop {
            let mut chunk = Vec::with_capacity(chunk_len);
            let read = (&mut stream)
                .take(chunk_len as u64)
                .read_to_end(&mut chunk)
                .map(|_| chunk);
            let last = read.as_ref().map_or(true, |chunk| chunk.len() < chunk_len);
            if chunks.blocking_send(read).is_err() || last {
                return;
            }
        }
    });
    received
}

/// A snapshot as a byte stream in the snapshot format: a received file as it is, a checkpoint
/// encoded on the fly by a thread that stays at most [`STREAM_QUEUE`] pieces ahead of the reader.
pub fn snapshot_stream(snapshot: SnapshotData) -> io::Result<Box<dyn Read + Send>> {
    match snapshot {
        SnapshotData::Received(SnapshotFile { mut file, .. }) => {
            file.rewind()?;
            Ok(Box::new(file))
        }
        SnapshotData::Checkpoint(checkpoint) => {
            let (pieces, received) = mpsc::sync_channel(STREAM_QUEUE);
            thread::Builder::new()
                .name("snapshot-stream".into())
                .spawn(move || {
                    if let Err(e) = encode_checkpoint(&checkpoint, &pieces) {
                        let _ = pieces.send(Err(e));
                    }
                })?;
            Ok(Box::new(PieceReader {
                pieces: received,
                current: Vec::new(),
                position: 0,
            }))
        }
    }
}

/// Encodes a checkpoint's content into pieces of about [`STREAM_CHUNK_BYTES`]. Stops quietly when
/// the reader goes away.
fn encode_checkpoint(
    checkpoint: &Checkpoint,
    pieces: &mpsc::SyncSender<io::Result<Vec<u8>>>,
) -> io::Result<()> {
    let db = open_read_only(checkpoint.path())?;
    let state_meta = StateMeta::read(&db)?;
    let mut encoder = SnapshotEncoder::new(
        Vec::with_capacity(STREAM_CHUNK_BYTES),
        &state_meta.snapshot_meta(),
    )?;
    let data = column_family(&db, CF_DATA)?;
    for item in db.iterator_cf(data, IteratorMode::Start) {
        let (key, value) = item.map_err(io_err)?;
        encoder.add(&key, &value)?;
        if encoder.output().len() >= STREAM_CHUNK_BYTES {
            let piece = std::mem::take(encoder.output());
            if pieces.send(Ok(piece)).is_err() {
                return Ok(());
            }
        }
    }
    encoder.add_member_records(&state_meta.records)?;
    let rest = encoder.finish()?;
    let _ = pieces.send(Ok(rest));
    Ok(())
}

/// The reading end of a checkpoint stream.
struct PieceReader {
    pieces: mpsc::Receiver<io::Result<Vec<u8>>>,
    current: Vec<u8>,
    position: usize,
}

impl Read for PieceReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.position == self.current.len() {
            match self.pieces.recv() {
                Ok(Ok(piece)) => {
                    self.current = piece;
                    self.position = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.position);
        buf[..n].copy_from_slice(&self.current[self.position..self.position + n]);
        self.position += n;
        Ok(n)
    }
}

/// Builds snapshots (checkpoints) while applies go on.
pub struct SnapshotBuilder {
    state: SharedStateDb,
    dir: PathBuf,
    current_snapshot: CurrentSnapshot,
    counters: Arc<Counters>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> io::Result<Snapshot> {
        let state = self.state.clone();
        let dir = self.dir.clone();
        let checkpoint = blocking(move || create_checkpoint(&state, &dir)).await?;
        let checkpoint = replace_current(&self.current_snapshot, checkpoint);
        self.counters
            .snapshots_built
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            "snapshot captured at index {}",
            checkpoint.meta.last_log_id.map_or(0, |id| id.index)
        );
        Ok(Snapshot {
            meta: checkpoint.meta.clone(),
            snapshot: SnapshotData::Checkpoint(checkpoint),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A follower may build a checkpoint (its snapshot policy) while it installs one it received
    /// (which checkpoints the new generation): the two builds must not share a directory.
    #[test]
    fn checkpoints_built_at_the_same_time_do_not_disturb_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let snapshots = dir.path().join("snapshots");
        let store = StateMachineStore::open(&dir.path().join("state"), snapshots.clone()).unwrap();
        for _ in 0..20 {
            let builds: Vec<_> = (0..2)
                .map(|_| {
                    let (state, snapshots) = (store.state.clone(), snapshots.clone());
                    thread::spawn(move || create_checkpoint(&state, &snapshots).map(drop))
                })
                .collect();
            for build in builds {
                build.join().unwrap().unwrap();
            }
        }
    }
}
