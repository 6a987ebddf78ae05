//! The Raft log, vote and commit point, in their own RocksDB database.
//!
//! Appends are written at once (so openraft can read them back immediately) but acknowledged only
//! after a WAL fsync done by one syncer thread, which takes every append queued behind the one it
//! is syncing into the next fsync: many appends, one fsync (group commit). Their WAL records wait
//! in RocksDB's buffer until that syncer writes them, also in one go.

use std::fmt::Debug;
use std::io;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::sync::Mutex;

use openraft::storage::IOFlushed;
use openraft::storage::RaftLogStorage;
use openraft::LogState;
use openraft::OptionalSend;
use openraft::RaftLogReader;
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
use super::recent_entries::RecentEntries;
use super::until_space;
use super::worker::Worker;
use super::write_soon;
use super::write_until_space;
use super::WalSyncs;
use crate::error::Error;
use crate::locks::lock;
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

/// openraft's log storage over RocksDB. Cheap to clone: clones share the database and its
/// background threads.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    /// Fsyncs the WAL for queued appends (group commit).
    syncer: Arc<Worker<IOFlushed<TypeConfig>>>,
    /// Compacts purged ranges: a compaction can take seconds with large entries, and openraft's
    /// core waits for `purge`, so it must not wait for the compaction too (heartbeats would stop).
    compactor: Arc<Worker<[u8; 8]>>,
    /// The newest entries, decoded, for the reads that follow an append.
    recent: Arc<RecentEntries>,
    /// The newest commit point not written yet. It rides with the next append's write instead
    /// of taking a RocksDB write of its own: the point moves once per replication round, as often
    /// as appends happen, and nothing needs it written sooner (see `save_committed`).
    unsaved_commit: Arc<Mutex<Option<LogId>>>,
}

/// When an append is reported durable to openraft.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendSync {
    /// After the WAL fsync that covers it: the only correct choice.
    Fsync,
    /// Written to the page cache without any fsync: a deliberately broken build
    /// (`--test-fault unsynced-appends`) that survives SIGKILL (the page cache keeps the writes)
    /// and only a power cut exposes.
    Skip,
}

impl LogStore {
    /// Opens the log database at `path` and starts its syncer and compactor threads.
    pub fn open(path: &Path) -> Result<Self, Error> {
        Self::open_with(path, AppendSync::Fsync)
    }

    /// [`LogStore::open`], choosing when appends are acknowledged (tests of the test suite only
    /// choose anything but [`AppendSync::Fsync`]).
    pub fn open_with(path: &Path, append_sync: AppendSync) -> Result<Self, Error> {
        let db = Arc::new(open_rocksdb(
            path,
            &[CF_LOGS, CF_META],
            WalSyncs::EveryAppend,
        )?);
        let syncer_db = db.clone();
        let syncer = Worker::start("raft-log-sync", move |pending| {
            sync_appends(&syncer_db, &pending, append_sync)
        })?;
        let compactor_db = db.clone();
        let compactor = Worker::start("raft-log-compact", move |pending| {
            compact_purged(&compactor_db, &pending)
        })?;
        Ok(LogStore {
            db,
            syncer,
            compactor,
            recent: Arc::default(),
            unsaved_commit: Arc::default(),
        })
    }

    /// Removes the log's tail from `applied`'s index on if the entry there is not `applied`: then
    /// that entry and every later one cannot be part of the log that produced the state
    /// machine's `applied` entry (terms never decrease along a log, so one look is enough).
    ///
    /// Installing a snapshot makes the state machine durable first; the log's truncation and
    /// purge that follow are synced right after. A power cut in between leaves the log from
    /// before the install beside the installed state, which openraft refuses to start from
    /// ("inverted log order") when that log reaches past the snapshot's index with older entries.
    /// Run before Raft starts; nothing removed here was committed.
    pub fn drop_tail_conflicting_with(&self, applied: Option<LogId>) -> io::Result<()> {
        let Some(applied) = applied else {
            return Ok(());
        };
        let at_applied = read_entries(
            &self.db,
            applied.index,
            Some(applied.index + 1),
            usize::MAX,
            ReadOptions::default(),
        )?;
        match at_applied.first() {
            Some(entry) if entry.log_id != applied => {
                tracing::warn!(
                    "removing the log from {} on: it conflicts with the state machine's applied entry {} (a snapshot was installed just before a crash)",
                    entry.log_id,
                    applied
                );
                self.delete_from(applied.index)
            }
            _ => Ok(()),
        }
    }

    /// Deletes every entry from `index` on, durably (see [`LogStore::truncate_after`]).
    fn delete_from(&self, index: u64) -> io::Result<()> {
        self.recent.truncated(index);
        let cf = column_family(&self.db, CF_LOGS)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf, index_key(index), index_key(u64::MAX));
        write_until_space("raft log truncation", &self.db, batch, &synced())
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        let cf = column_family(&self.db, CF_META)?;
        match self.db.get_pinned_cf(cf, key).map_err(io_err)? {
            Some(bytes) => decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Writes a meta record durably (synced at once).
    fn write_meta<T: serde::Serialize>(&self, key: &[u8], value: &T) -> io::Result<()> {
        let cf = column_family(&self.db, CF_META)?;
        let value = encode(value)?;
        until_space("raft log", self.db.path(), || {
            self.db.put_cf_opt(cf, key, &value, &synced())
        })
    }
}

/// The syncer loop: one WAL fsync per wake-up covers every append queued so far.
fn sync_appends(db: &DB, pending: &mpsc::Receiver<IOFlushed<TypeConfig>>, append_sync: AppendSync) {
    while let Ok(first) = pending.recv() {
        let mut waiting = vec![first];
        waiting.extend(pending.try_iter());
        // Writes the WAL records buffered by the appends (the log's WAL is flushed by hand,
        // see `open_rocksdb`), then syncs them unless told to skip that.
        let sync = append_sync == AppendSync::Fsync;
        let result = until_space("raft log sync", db.path(), || db.flush_wal(sync))
            .map_err(|e| e.to_string());
        for callback in waiting {
            callback.io_completed(result.clone().map_err(io::Error::other));
        }
    }
}

/// The compactor loop: compacts the purged range, up to the newest purge point queued.
fn compact_purged(db: &DB, pending: &mpsc::Receiver<[u8; 8]>) {
    while let Ok(first) = pending.recv() {
        let end = pending.try_iter().fold(first, |a, b| a.max(b));
        match column_family(db, CF_LOGS) {
            Ok(logs) => db.compact_range_cf(logs, None::<&[u8]>, Some(&end[..])),
            Err(e) => tracing::warn!("cannot compact the purged log: {e}"),
        }
    }
}

/// Write options for the log's rare structural changes (truncation, purge): synced at once
/// rather than left for the next append's fsync, so no power cut can undo one on its own.
fn synced() -> WriteOptions {
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    opts
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

/// Encoded bytes of entries one replication read returns (always at least one entry). openraft
/// bounds a batch only by count (`max_payload_entries`); this keeps an AppendEntries a few MiB
/// whatever the entries' sizes, far below the transport's frame limit, so a follower catching
/// up on large values is sent them a few at a time instead of in a frame no node accepts.
const MAX_REPLICATION_READ_BYTES: usize = 4 << 20;

/// How much one read of the log returns: entries while their encoded sizes add up to at most
/// `max_bytes`, and always the first, so a read makes progress whatever one entry's size.
pub(super) struct ReadLimit {
    max_bytes: usize,
    bytes: usize,
    entries: usize,
}

impl ReadLimit {
    pub(super) fn new(max_bytes: usize) -> Self {
        ReadLimit {
            max_bytes,
            bytes: 0,
            entries: 0,
        }
    }

    /// Whether the next entry, of `size` encoded bytes, is taken (and counts it if so).
    pub(super) fn admits(&mut self, size: usize) -> bool {
        let bytes = self.bytes.saturating_add(size);
        if bytes > self.max_bytes && self.entries > 0 {
            return false;
        }
        self.bytes = bytes;
        self.entries += 1;
        true
    }
}

/// Entries from index `start` up to `end` (exclusive; `None`: to the last), stopping before the
/// entry that would take their encoded size past `max_bytes` (but never before the first).
fn read_entries(
    db: &DB,
    start: u64,
    end: Option<u64>,
    max_bytes: usize,
    opts: ReadOptions,
) -> io::Result<Vec<Entry>> {
    let cf = column_family(db, CF_LOGS)?;
    let mut entries = Vec::new();
    let mut limit = ReadLimit::new(max_bytes);
    // A raw iterator lends each entry's bytes where RocksDB holds them: decoding copies a value
    // once, instead of once into an owned buffer and again out of it.
    let mut stored = db.raw_iterator_cf_opt(cf, opts);
    stored.seek(index_key(start));
    while let (Some(key), Some(value)) = (stored.key(), stored.value()) {
        if end.is_some_and(|end| key_index(key).is_ok_and(|i| i >= end)) {
            break;
        }
        if !limit.admits(value.len()) {
            break;
        }
        entries.push(decode::<Entry>(value)?);
        stored.next();
    }
    stored.status().map_err(io_err)?;
    Ok(entries)
}

impl LogStore {
    /// [`read_entries`] where it is cheapest: replication and apply ask for the newest few
    /// entries, which are still held decoded ([`RecentEntries`]) or sit in the memtable or the
    /// block cache, so those are read here. A range that is long, or that needs the disk (RocksDB
    /// answers "incomplete" instead of reading), goes to the blocking pool.
    async fn read_range(
        &self,
        start: u64,
        end: Option<u64>,
        max_bytes: usize,
    ) -> io::Result<Vec<Entry>> {
        if let Some(entries) = end.and_then(|end| self.recent.read(start, end, max_bytes)) {
            return Ok(entries);
        }
        if end.is_some_and(|end| end.saturating_sub(start) <= MAX_ENTRIES_READ_INLINE) {
            let mut from_memory = ReadOptions::default();
            from_memory.set_read_tier(ReadTier::BlockCache);
            if let Ok(entries) = read_entries(&self.db, start, end, max_bytes, from_memory) {
                return Ok(entries);
            }
        }
        let db = self.db.clone();
        blocking(move || read_entries(&db, start, end, max_bytes, ReadOptions::default())).await
    }
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
        self.read_range(start, end, usize::MAX).await
    }

    /// Replication's read: a batch bounded by [`MAX_REPLICATION_READ_BYTES`] as well as by count.
    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> io::Result<Vec<Entry>> {
        self.read_range(start, Some(end), MAX_REPLICATION_READ_BYTES)
            .await
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
        blocking(move || this.write_meta(KEY_VOTE, &vote)).await
    }

    /// Kept until the next append writes it ([`LogStore::unsaved_commit`]). The commit point
    /// only lets a restarted node re-apply its log up to it before hearing from a leader; losing
    /// the newest one means re-applying from the last applied index, which is itself durable
    /// with the state it describes, and learning the rest from the leader.
    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        if committed.is_some() {
            *lock(&self.unsaved_commit) = committed;
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        if let Some(unsaved) = *lock(&self.unsaved_commit) {
            return Ok(Some(unsaved));
        }
        Ok(self.read_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        let mut appended = Vec::new();
        {
            let cf = column_family(&self.db, CF_LOGS)?;
            for entry in entries {
                let encoded = encode(&entry)?;
                batch.put_cf(cf, index_key(entry.log_id.index), &encoded);
                appended.push((entry, encoded.len()));
            }
            if let Some(committed) = lock(&self.unsaved_commit).take() {
                let meta = column_family(&self.db, CF_META)?;
                batch.put_cf(meta, KEY_COMMITTED, encode(&Some(committed))?);
            }
        }
        write_soon("raft log append", &self.db, batch).await?;
        self.recent.appended(appended);
        // Readable now; durable (and acknowledged) once the syncer's next fsync covers it. WAL
        // order guarantees that fsync also covers every earlier vote or truncation.
        self.syncer.enqueue(callback)
    }

    /// Synced: a truncated tail that came back after a power cut could sit beside a state
    /// machine that has moved past it.
    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        let from = last_log_id.map_or(0, |id| id.index + 1);
        let this = self.clone();
        blocking(move || this.delete_from(from)).await
    }

    /// Purging is only ever asked for up to a snapshot point, and the state machine syncs its
    /// writes before it reports a snapshot (see `state_machine`), so the entries removed here are
    /// already durable in the state machine.
    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        self.recent.purged(log_id.index);
        let db = self.db.clone();
        let end = index_key(log_id.index + 1);
        blocking(move || {
            let logs = column_family(&db, CF_LOGS)?;
            let meta = column_family(&db, CF_META)?;
            let mut batch = WriteBatch::default();
            batch.put_cf(meta, KEY_LAST_PURGED, encode(&log_id)?);
            batch.delete_range_cf(logs, index_key(0), end);
            write_until_space("raft log purge", &db, batch, &synced())
        })
        .await?;
        // Range deletions free space only when compacted; compacting the purged range keeps the
        // log's disk use bounded under a steady write load.
        self.compactor.enqueue(end)
    }
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftLogStorageExt;
    use openraft::testing::blank_ent;
    use openraft::testing::log_id;

    use super::*;

    /// A log holding entries 1..=10 of term 1, as a follower had it before a snapshot arrived.
    async fn log_of_term_1() -> (tempfile::TempDir, LogStore) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        let entries = (1..=10).map(|index| blank_ent::<TypeConfig>(1, 1, index));
        store.blocking_append(entries).await.unwrap();
        (dir, store)
    }

    async fn last_log_index(store: &mut LogStore) -> Option<u64> {
        store
            .get_log_state()
            .await
            .unwrap()
            .last_log_id
            .map(|id| id.index)
    }

    #[tokio::test]
    async fn a_tail_older_than_an_installed_snapshot_is_removed() {
        let (_dir, mut store) = log_of_term_1().await;
        // A snapshot of term 2 at index 6 was installed, and the power went before the log's
        // truncation was durable: entries 6..=10 of term 1 conflict with it.
        let applied = log_id::<TypeConfig>(2, 2, 6);
        store.drop_tail_conflicting_with(Some(applied)).unwrap();
        assert_eq!(last_log_index(&mut store).await, Some(5));
        // openraft's own start-up check: the last log id is now below the applied one, a hole
        // it fills by purging, instead of an "inverted log order" at the same index.
        let last = store.get_log_state().await.unwrap().last_log_id;
        assert!(last < Some(applied) && last.map(|id| id.index) < Some(applied.index));
    }

    #[tokio::test]
    async fn a_log_that_agrees_with_the_state_machine_is_kept() {
        let (_dir, mut store) = log_of_term_1().await;
        for applied in [Some(log_id::<TypeConfig>(1, 1, 6)), None] {
            store.drop_tail_conflicting_with(applied).unwrap();
            assert_eq!(last_log_index(&mut store).await, Some(10));
        }
        // A state machine ahead of the whole log leaves nothing to compare.
        store
            .drop_tail_conflicting_with(Some(log_id::<TypeConfig>(3, 2, 20)))
            .unwrap();
        assert_eq!(last_log_index(&mut store).await, Some(10));
    }
}
