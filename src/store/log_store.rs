//! The Raft log, vote and commit point, in their own RocksDB database.
//!
//! Appends are written at once (so openraft can read them back immediately) but acknowledged only
//! after a WAL fsync done by one syncer thread, which takes every append queued behind the one it
//! is syncing into the next fsync: many appends, one fsync (group commit).

use std::fmt::Debug;
use std::io;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;

use openraft::storage::IOFlushed;
use openraft::storage::RaftLogStorage;
use openraft::LogState;
use openraft::OptionalSend;
use openraft::RaftLogReader;
use rocksdb::Direction;
use rocksdb::IteratorMode;
use rocksdb::ReadOptions;
use rocksdb::ReadTier;
use rocksdb::WriteBatch;
use rocksdb::WriteOptions;
use rocksdb::DB;

use super::blocking;
use super::column_family;
use super::decode;
use super::encode;
use super::io_err;
use super::open_rocksdb;
use super::until_space;
use super::write_soon;
use super::write_until_space;
use crate::error::Error;
use crate::types::Entry;
use crate::types::LogId;
use crate::types::TypeConfig;
use crate::types::Vote;

/// Log entries keyed by their index as 8 big-endian bytes, so RocksDB's key order is log order.
const CF_LOGS: &str = "logs";
/// Small records: the vote, the commit point and the purge point.
const CF_META: &str = "meta";
const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

/// openraft's log storage over RocksDB. Cheap to clone: clones share the database and syncer.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    syncer: Arc<Syncer>,
}

/// When an append is reported durable to openraft.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendSync {
    /// After the WAL fsync that covers it: the only correct choice.
    Fsync,
    /// At once, without any fsync: a deliberately broken build (`--test-fault unsynced-appends`)
    /// that survives SIGKILL (the page cache keeps the writes) and only a power cut exposes.
    Skip,
}

/// The thread that fsyncs the WAL for queued appends. Dropping the last handle stops it and
/// waits for it, so the database is closed once every store handle is gone.
struct Syncer {
    /// Appends waiting for the fsync that makes them durable.
    queue: Option<mpsc::Sender<IOFlushed<TypeConfig>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Syncer {
    fn enqueue(&self, callback: IOFlushed<TypeConfig>) -> io::Result<()> {
        self.queue
            .as_ref()
            .and_then(|queue| queue.send(callback).ok())
            .ok_or_else(|| io::Error::other("log syncer stopped"))
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.queue.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl LogStore {
    /// Opens the log database at `path` and starts its syncer thread.
    pub fn open(path: &Path) -> Result<Self, Error> {
        Self::open_with(path, AppendSync::Fsync)
    }

    /// [`LogStore::open`], choosing when appends are acknowledged (tests of the test suite only
    /// choose anything but [`AppendSync::Fsync`]).
    pub fn open_with(path: &Path, append_sync: AppendSync) -> Result<Self, Error> {
        let db = Arc::new(open_rocksdb(path, &[CF_LOGS, CF_META])?);
        let (queue, pending) = mpsc::channel();
        let syncer_db = db.clone();
        let thread = thread::Builder::new()
            .name("raft-log-sync".into())
            .spawn(move || sync_appends(&syncer_db, &pending, append_sync))?;
        let syncer = Arc::new(Syncer {
            queue: Some(queue),
            thread: Some(thread),
        });
        Ok(LogStore { db, syncer })
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        let cf = column_family(&self.db, CF_META)?;
        match self.db.get_pinned_cf(cf, key).map_err(io_err)? {
            Some(bytes) => decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    fn write_meta<T: serde::Serialize>(&self, key: &[u8], value: &T, sync: bool) -> io::Result<()> {
        let cf = column_family(&self.db, CF_META)?;
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        let value = encode(value)?;
        until_space("raft log", self.db.path(), || {
            self.db.put_cf_opt(cf, key, &value, &opts)
        })
    }
}

/// The syncer loop: one WAL fsync per wake-up covers every append queued so far.
fn sync_appends(db: &DB, pending: &mpsc::Receiver<IOFlushed<TypeConfig>>, append_sync: AppendSync) {
    while let Ok(first) = pending.recv() {
        let mut waiting = vec![first];
        waiting.extend(pending.try_iter());
        let result = match append_sync {
            AppendSync::Fsync => until_space("raft log sync", db.path(), || db.flush_wal(true))
                .map_err(|e| e.to_string()),
            AppendSync::Skip => Ok(()),
        };
        for callback in waiting {
            callback.io_completed(result.clone().map_err(io::Error::other));
        }
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn key_index(key: &[u8]) -> io::Result<u64> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "malformed log key"))?;
    Ok(u64::from_be_bytes(bytes))
}

/// The longest range of entries read on an async worker; replication batches are far shorter.
const MAX_ENTRIES_READ_INLINE: u64 = 256;

/// Entries from index `start` up to `end` (exclusive; `None`: to the last).
fn read_entries(
    db: &DB,
    start: u64,
    end: Option<u64>,
    opts: ReadOptions,
) -> io::Result<Vec<Entry>> {
    let cf = column_family(db, CF_LOGS)?;
    let from = index_key(start);
    let mut entries = Vec::new();
    for item in db.iterator_cf_opt(cf, opts, IteratorMode::From(&from, Direction::Forward)) {
        let (key, value) = item.map_err(io_err)?;
        if end.is_some_and(|end| key_index(&key).is_ok_and(|i| i >= end)) {
            break;
        }
        entries.push(decode::<Entry>(&value)?);
    }
    Ok(entries)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Some(i.saturating_add(1)),
            Bound::Excluded(i) => Some(*i),
            Bound::Unbounded => None,
        };
        // Replication and apply ask for the newest few entries, which sit in the memtable or the
        // block cache: read those here. A range that is long, or that needs the disk (RocksDB
        // answers "incomplete" instead of reading), goes to the blocking pool.
        if end.is_some_and(|end| end.saturating_sub(start) <= MAX_ENTRIES_READ_INLINE) {
            let mut from_memory = ReadOptions::default();
            from_memory.set_read_tier(ReadTier::BlockCache);
            if let Ok(entries) = read_entries(&self.db, start, end, from_memory) {
                return Ok(entries);
            }
        }
        let db = self.db.clone();
        blocking(move || read_entries(&db, start, end, ReadOptions::default())).await
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        self.read_meta(KEY_VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId> = self.read_meta(KEY_LAST_PURGED)?;
        let cf = column_family(&self.db, CF_LOGS)?;
        let last_log_id = match self.db.iterator_cf(cf, IteratorMode::End).next() {
            Some(item) => {
                let (_, value) = item.map_err(io_err)?;
                Some(decode::<Entry>(&value)?.log_id)
            }
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    /// A vote must be durable before the node acts on it: a synced write.
    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        let this = self.clone();
        let vote = *vote;
        blocking(move || this.write_meta(KEY_VOTE, &vote, true)).await
    }

    /// The commit point needs no fsync: losing it only means re-applying from the last applied
    /// index, which is itself durable with the state it describes.
    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        self.write_meta(KEY_COMMITTED, &committed, false)
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        Ok(self.read_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        {
            let cf = column_family(&self.db, CF_LOGS)?;
            for entry in entries {
                batch.put_cf(cf, index_key(entry.log_id.index), encode(&entry)?);
            }
        }
        write_soon("raft log append", &self.db, batch).await?;
        // Readable now; durable (and acknowledged) once the syncer's next fsync covers it. WAL
        // order guarantees that fsync also covers every earlier vote or truncation.
        self.syncer.enqueue(callback)
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        let from = last_log_id.map_or(0, |id| id.index + 1);
        let db = self.db.clone();
        blocking(move || {
            let cf = column_family(&db, CF_LOGS)?;
            until_space("raft log truncation", db.path(), || {
                db.delete_range_cf(cf, index_key(from), index_key(u64::MAX))
            })
        })
        .await
    }

    /// Purging is only ever asked for up to a snapshot point, and the state machine syncs its
    /// writes before it reports a snapshot (see `state_machine`), so the entries removed here are
    /// already durable in the state machine.
    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        let db = self.db.clone();
        blocking(move || {
            let logs = column_family(&db, CF_LOGS)?;
            let meta = column_family(&db, CF_META)?;
            let mut batch = WriteBatch::default();
            batch.put_cf(meta, KEY_LAST_PURGED, encode(&log_id)?);
            let end = index_key(log_id.index + 1);
            batch.delete_range_cf(logs, index_key(0), end);
            write_until_space("raft log purge", &db, batch, &WriteOptions::default())?;
            // Range deletions free space only when compacted; compacting the purged range now
            // keeps the log's disk use bounded under a steady write load.
            db.compact_range_cf(logs, None::<&[u8]>, Some(&end[..]));
            Ok(())
        })
        .await
    }
}
