//! The replicated state machine, which is a RocksDB database and nothing else: no in-memory copy,
//! so the data may be far larger than memory.
//!
//! Every applied batch of entries is ONE WriteBatch carrying the key-value changes together with
//! the last applied log id and the last membership. A restart therefore resumes from exactly the
//! state on disk, and openraft replays nothing it has already applied.
//!
//! Durability: applies are written without fsync (they are also in the fsynced Raft log). Before a
//! snapshot is reported to openraft, the state machine's WAL is fsynced; openraft purges the log
//! only up to a snapshot point, so the log never loses an entry the state machine could still lose.

use std::collections::BTreeSet;
use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;

use futures::Stream;
use futures::TryStreamExt;
use openraft::storage::EntryResponder;
use openraft::storage::RaftStateMachine;
use openraft::EntryPayload;
use openraft::OptionalSend;
use openraft::RaftSnapshotBuilder;
use openraft::Snapshot;
use rocksdb::Direction;
use rocksdb::IteratorMode;
use rocksdb::WriteBatch;
use rocksdb::WriteOptions;
use rocksdb::DB;

use super::blocking;
use super::column_family;
use super::decode;
use super::encode;
use super::io_err;
use super::snapshot;
use super::snapshot::SnapshotReader;
use super::snapshot::SnapshotWriter;
use super::state_db::SharedStateDb;
use super::SnapshotFile;
use crate::error::Error;
use crate::types::Command;
use crate::types::CommandResult;
use crate::types::LogId;
use crate::types::NodeId;
use crate::types::SnapshotMeta;
use crate::types::StoredMembership;
use crate::types::TypeConfig;

/// User keys and values, stored as given.
const CF_DATA: &str = "data";
/// The applied log id and membership, written in the same batch as the data they describe.
const CF_META: &str = "meta";
const KEY_APPLIED: &[u8] = b"applied";
/// Bytes of pairs per write while installing a snapshot.
const INSTALL_BATCH_BYTES: usize = 4 << 20;
const KEY_MEMBERSHIP: &[u8] = b"membership";
/// Ids that have been removed from the cluster: replicated, so a removed id is refused re-entry
/// on every node, after restarts and through snapshots.
const KEY_REMOVED_IDS: &[u8] = b"removed_ids";

/// The newest snapshot on disk, shared between the state machine and its snapshot builders.
type CurrentSnapshot = Arc<Mutex<Option<(SnapshotMeta, PathBuf)>>>;

/// openraft's state machine over RocksDB.
pub struct StateMachineStore {
    state: SharedStateDb,
    snapshot_dir: PathBuf,
    current_snapshot: CurrentSnapshot,
    applied: Option<LogId>,
    membership: StoredMembership,
    removed_ids: Arc<Mutex<BTreeSet<NodeId>>>,
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
    removed_ids: Arc<Mutex<BTreeSet<NodeId>>>,
    counters: Arc<Counters>,
}

impl StateMachineStore {
    /// Opens the state machine at `path` and finds the newest snapshot in `snapshot_dir`.
    pub fn open(path: &Path, snapshot_dir: PathBuf) -> Result<Self, Error> {
        let state = SharedStateDb::open(path, &[CF_DATA, CF_META])?;
        let db = state.current();
        let read_meta = || -> io::Result<(Option<LogId>, StoredMembership, BTreeSet<NodeId>)> {
            let meta = column_family(&db, CF_META)?;
            let applied = match db.get_pinned_cf(meta, KEY_APPLIED).map_err(io_err)? {
                Some(bytes) => decode(&bytes)?,
                None => None,
            };
            let membership = match db.get_pinned_cf(meta, KEY_MEMBERSHIP).map_err(io_err)? {
                Some(bytes) => decode(&bytes)?,
                None => StoredMembership::default(),
            };
            let removed = match db.get_pinned_cf(meta, KEY_REMOVED_IDS).map_err(io_err)? {
                Some(bytes) => decode(&bytes)?,
                None => BTreeSet::new(),
            };
            Ok((applied, membership, removed))
        };
        let storage_err = |e: io::Error| Error::Storage {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let (applied, membership, removed) = read_meta().map_err(storage_err)?;
        fs::create_dir_all(&snapshot_dir)?;
        let newest = snapshot::newest_in(&snapshot_dir).map_err(|e| Error::Storage {
            path: snapshot_dir.clone(),
            message: e.to_string(),
        })?;
        tracing::info!(
            applied = ?applied,
            "state machine opened at applied index {}",
            applied.map_or(0, |id| id.index)
        );
        Ok(StateMachineStore {
            state,
            snapshot_dir,
            current_snapshot: Arc::new(Mutex::new(newest)),
            applied,
            membership,
            removed_ids: Arc::new(Mutex::new(removed)),
            counters: Arc::default(),
        })
    }

    /// A reader sharing this state machine's database.
    pub fn reader(&self) -> StateReader {
        StateReader {
            state: self.state.clone(),
            removed_ids: self.removed_ids.clone(),
            counters: self.counters.clone(),
        }
    }
}

impl StateReader {
    /// The value of `key` as applied so far.
    pub fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        let db = self.state.current();
        let data = column_family(&db, CF_DATA)?;
        db.get_cf(data, key).map_err(io_err)
    }

    /// Up to `limit` pairs whose keys start with `prefix`, in key order.
    pub fn scan(&self, prefix: &[u8], limit: usize) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let db = self.state.current();
        let data = column_family(&db, CF_DATA)?;
        let mut pairs = Vec::new();
        for item in db.iterator_cf(data, IteratorMode::From(prefix, Direction::Forward)) {
            let (key, value) = item.map_err(io_err)?;
            if !key.starts_with(prefix) || pairs.len() >= limit {
                break;
            }
            pairs.push((key.into_vec(), value.into_vec()));
        }
        Ok(pairs)
    }

    /// The directory of the state machine database in service.
    pub fn dir(&self) -> PathBuf {
        self.state.current().path().to_path_buf()
    }

    /// Ids removed from the cluster, as applied so far.
    pub fn removed_ids(&self) -> BTreeSet<NodeId> {
        lock(&self.removed_ids).clone()
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
    }
    Ok(CommandResult::Applied)
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapshotFile;
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
        let mut removed = lock(&self.removed_ids).clone();
        let removed_before = removed.len();
        let mut previous_nodes = node_ids(&self.membership);
        let mut commands = Vec::with_capacity(entries.len());
        let mut responders = Vec::with_capacity(entries.len());
        for (entry, responder) in entries {
            match entry.payload {
                EntryPayload::Blank => commands.push(None),
                EntryPayload::Normal(command) => commands.push(Some(command)),
                EntryPayload::Membership(m) => {
                    let next = StoredMembership::new(Some(entry.log_id), m);
                    let next_nodes = node_ids(&next);
                    removed.extend(previous_nodes.difference(&next_nodes));
                    previous_nodes = next_nodes;
                    membership = Some(next);
                    commands.push(None);
                }
            }
            responders.push(responder);
        }
        let db = self.state.current();
        let new_membership = membership.clone();
        let new_removed = (removed.len() != removed_before).then(|| removed.clone());
        let results = blocking(move || {
            let mut batch = WriteBatch::default();
            let mut pending = HashMap::new();
            let results = commands
                .into_iter()
                .map(|command| match command {
                    Some(command) => apply_command(&db, &mut batch, &mut pending, command),
                    None => Ok(CommandResult::Applied),
                })
                .collect::<io::Result<Vec<_>>>()?;
            let meta = column_family(&db, CF_META)?;
            batch.put_cf(meta, KEY_APPLIED, encode(&Some(last))?);
            if let Some(membership) = &new_membership {
                batch.put_cf(meta, KEY_MEMBERSHIP, encode(membership)?);
            }
            if let Some(removed) = &new_removed {
                batch.put_cf(meta, KEY_REMOVED_IDS, encode(removed)?);
            }
            db.write(batch).map_err(io_err)?;
            Ok(results)
        })
        .await?;
        self.applied = Some(last);
        if let Some(membership) = membership {
            self.membership = membership;
        }
        *lock(&self.removed_ids) = removed;
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
        snapshot: SnapshotFile,
    ) -> io::Result<()> {
        let state = self.state.clone();
        let dir = self.snapshot_dir.clone();
        let expected_meta = meta.clone();
        let (final_path, removed) = blocking(move || {
            let mut reader = SnapshotReader::new(snapshot.file.try_clone()?)?;
            if reader.meta != expected_meta {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "snapshot file header does not match the snapshot being installed",
                ));
            }
            let next = state.create_next()?;
            let data = column_family(&next, CF_DATA)?;
            // The new generation is invisible until the switch, and is synced by the flush
            // below, so the bulk load can skip the WAL.
            let mut unlogged = WriteOptions::default();
            unlogged.disable_wal(true);
            let mut batch = WriteBatch::default();
            while let Some((key, value)) = reader.next_pair()? {
                batch.put_cf(data, key, value);
                if batch.size_in_bytes() >= INSTALL_BATCH_BYTES {
                    next.write_opt(std::mem::take(&mut batch), &unlogged)
                        .map_err(io_err)?;
                }
            }
            let meta_cf = column_family(&next, CF_META)?;
            batch.put_cf(meta_cf, KEY_APPLIED, encode(&expected_meta.last_log_id)?);
            batch.put_cf(
                meta_cf,
                KEY_MEMBERSHIP,
                encode(&expected_meta.last_membership)?,
            );
            batch.put_cf(meta_cf, KEY_REMOVED_IDS, encode(&reader.removed)?);
            next.write_opt(batch, &unlogged).map_err(io_err)?;
            next.flush_cfs_opt(&[data, meta_cf], &rocksdb::FlushOptions::default())
                .map_err(io_err)?;
            state.switch_to(next)?;
            let final_path = dir.join(snapshot::file_name(&expected_meta));
            adopt_file(&snapshot.path, &final_path)?;
            Ok((final_path, reader.removed))
        })
        .await?;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        *lock(&self.removed_ids) = removed;
        replace_current(&self.current_snapshot, meta.clone(), final_path)?;
        self.counters
            .snapshots_installed
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            "installed snapshot at index {}",
            meta.last_log_id.map_or(0, |id| id.index)
        );
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<crate::types::Snapshot>> {
        let current = self
            .current_snapshot
            .lock()
            .map_err(|_| io::Error::other("snapshot state poisoned"))?
            .clone();
        match current {
            Some((meta, path)) => Ok(Some(Snapshot {
                meta,
                snapshot: SnapshotFile::open(path)?,
            })),
            None => Ok(None),
        }
    }
}

/// Every node id in a membership, voter or learner.
fn node_ids(membership: &StoredMembership) -> BTreeSet<NodeId> {
    membership.nodes().map(|(id, _)| *id).collect()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Moves a received snapshot file into the snapshot directory under its final name; copies when
/// it lives on another file system.
fn adopt_file(from: &Path, to: &Path) -> io::Result<()> {
    if from == to {
        return Ok(());
    }
    if fs::rename(from, to).is_err() {
        fs::copy(from, to)?;
        fs::File::open(to)?.sync_all()?;
    }
    snapshot::sync_dir(to)
}

/// Records `path` as the newest snapshot and deletes the one it replaces.
fn replace_current(current: &CurrentSnapshot, meta: SnapshotMeta, path: PathBuf) -> io::Result<()> {
    let mut guard = current
        .lock()
        .map_err(|_| io::Error::other("snapshot state poisoned"))?;
    if let Some((_, old)) = guard.replace((meta, path.clone())) {
        if old != path {
            fs::remove_file(old)?;
        }
    }
    Ok(())
}

/// Builds a snapshot from a point-in-time view of the state machine while applies go on.
pub struct SnapshotBuilder {
    state: SharedStateDb,
    dir: PathBuf,
    current_snapshot: CurrentSnapshot,
    counters: Arc<Counters>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> io::Result<crate::types::Snapshot> {
        let db = self.state.current();
        let dir = self.dir.clone();
        let (meta, path) = blocking(move || {
            let view = db.snapshot();
            // Everything the view contains is now durable, so openraft may purge the log up to
            // this snapshot's index (see the module docs).
            db.flush_wal(true).map_err(io_err)?;
            let meta_cf = column_family(&db, CF_META)?;
            let applied: Option<LogId> = match view.get_cf(meta_cf, KEY_APPLIED).map_err(io_err)? {
                Some(bytes) => decode(&bytes)?,
                None => None,
            };
            let last_membership: StoredMembership =
                match view.get_cf(meta_cf, KEY_MEMBERSHIP).map_err(io_err)? {
                    Some(bytes) => decode(&bytes)?,
                    None => StoredMembership::default(),
                };
            let removed: BTreeSet<NodeId> =
                match view.get_cf(meta_cf, KEY_REMOVED_IDS).map_err(io_err)? {
                    Some(bytes) => decode(&bytes)?,
                    None => BTreeSet::new(),
                };
            let meta = SnapshotMeta {
                last_log_id: applied,
                last_membership,
            };
            let mut writer = SnapshotWriter::create(&dir, &meta)?;
            let data = column_family(&db, CF_DATA)?;
            for item in view.iterator_cf(data, IteratorMode::Start) {
                let (key, value) = item.map_err(io_err)?;
                writer.add(&key, &value)?;
            }
            writer.add_removed_ids(&removed)?;
            let path = dir.join(snapshot::file_name(&meta));
            writer.finish(&path)?;
            Ok((meta, path))
        })
        .await?;
        replace_current(&self.current_snapshot, meta.clone(), path.clone())?;
        self.counters
            .snapshots_built
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            "snapshot captured at index {}",
            meta.last_log_id.map_or(0, |id| id.index)
        );
        Ok(Snapshot {
            meta,
            snapshot: SnapshotFile::open(path)?,
        })
    }
}
