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
use std::fs;
use std::io;
use std::io::BufReader;
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
use rocksdb::IteratorMode;
use rocksdb::Options;
use rocksdb::ReadOptions;
use rocksdb::ReadTier;
use rocksdb::WriteBatch;
use rocksdb::WriteOptions;
use rocksdb::DB;
use tokio::sync::watch;

use super::apply::Applier;
use super::apply::LeaseChange;
use super::apply::RevisionChanges;
use super::auth::AuthState;
use super::blocking;
use super::column_family;
use super::decode;
use super::encode;
use super::install;
use super::install::PreparedSnapshot;
use super::install::STREAM_META_FAMILY;
use super::io_err;
use super::lease::LeaseTable;
use super::legacy;
use super::mvcc;
use super::mvcc::KnownKeys;
use super::mvcc::LeaseRecord;
use super::mvcc::Overlay;
use super::mvcc::Record;
use super::mvcc::RecordMeta;
use super::mvcc::Revisions;
use super::mvcc::Values;
use super::mvcc::CF_CHANGES;
use super::mvcc::CF_DATA;
use super::mvcc::CF_DELETED;
use super::mvcc::CF_LEASES;
use super::mvcc::CF_LEASE_KEYS;
use super::mvcc::KEY_COMPACT_REVISION;
use super::mvcc::KEY_REVISION;
use super::mvcc::KEY_TRIMMED_TO;
use super::mvcc::MVCC_FAMILIES;
use super::snapshot;
use super::snapshot::Checkpoint;
use super::snapshot::ChunkSender;
use super::snapshot::MemberRecords;
use super::snapshot::PieceReader;
use super::snapshot::SnapshotData;
use super::snapshot::SnapshotEncoder;
use super::snapshot::SnapshotReader;
use super::snapshot::READ_BUFFER;
use super::state_db::SharedStateDb;
use super::until_space;
use super::watch::WatchHub;
use super::worker::Worker;
use super::write_soon;
use super::write_until_space;
use super::SPACE_RESERVE;
use crate::api;
use crate::api::KeySpan;
use crate::error::Error;
use crate::locks::lock;
use crate::types::ApplyError;
use crate::types::Command;
use crate::types::CommandResult;
use crate::types::LogId;
use crate::types::NodeId;
use crate::types::Snapshot;
use crate::types::SnapshotMeta;
use crate::types::StoredMembership;
use crate::types::TypeConfig;

/// The applied log id, membership, removed ids and revisions, written in the same batch as the
/// data.
const CF_META: &str = "meta";
const COLUMN_FAMILIES: &[&str] = &[
    CF_DATA,
    CF_META,
    CF_CHANGES,
    CF_DELETED,
    CF_LEASES,
    CF_LEASE_KEYS,
];
/// The meta keys a snapshot carries beside the key space. How far the history has been trimmed
/// describes the changes the snapshot holds, so it travels with them: a member that installs it
/// does not scan the changes before it again (each of which names a version already gone).
pub(super) const STREAMED_META_KEYS: &[&[u8]] =
    &[KEY_REVISION, KEY_COMPACT_REVISION, KEY_TRIMMED_TO, KEY_AUTH];
/// Users, roles, permissions and the authentication switch ([`AuthState`]), one record.
const KEY_AUTH: &[u8] = b"auth";
/// History changes deleted per batch by the background history compaction.
const TRIM_CHANGES: usize = 10_000;
const KEY_APPLIED: &[u8] = b"applied";
const KEY_MEMBERSHIP: &[u8] = b"membership";
/// Ids that have been removed from the cluster: replicated, so a removed id is refused re-entry
/// on every node, after restarts and through snapshots.
const KEY_REMOVED_IDS: &[u8] = b"removed_ids";
/// Learners that stay learners: replicated, so whichever node leads next does not promote them.
const KEY_KEPT_LEARNERS: &[u8] = b"kept_learners";
/// Bytes per piece of a snapshot stream installed from a checkpoint, and how many pieces may wait
/// for the reader: together they bound the memory a stream uses, whatever the state's size.
const STREAM_CHUNK_BYTES: usize = 1 << 20;
const STREAM_QUEUE: usize = 2;

/// The newest snapshot, shared between the state machine and its snapshot builders.
type CurrentSnapshot = Arc<Mutex<Option<Arc<Checkpoint>>>>;

/// What the meta column family records about the state it sits beside.
struct StateMeta {
    applied: Option<LogId>,
    membership: StoredMembership,
    records: MemberRecords,
    revisions: Revisions,
    auth: AuthState,
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
            revisions: read_revisions(db, &ReadOptions::default)?,
            auth: read_auth(db)?,
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
    /// The revision counters as of `applied`.
    revisions: Revisions,
    shared: Arc<Shared>,
    /// Deletes compacted history in the background (see `mvcc::trim_history`).
    history_trimmer: Arc<Worker<()>>,
    /// Recently written keys as applied so far (see [`KnownKeys`]); shared only with the
    /// blocking task that rebuilds a batch needing the disk.
    known: Arc<Mutex<KnownKeys>>,
}

/// What the state machine shares with its readers.
struct Shared {
    /// A watch channel as well as the value: tasks that act on a removal or on a kept learner
    /// wake when these change, not at every commit.
    records: watch::Sender<MemberRecords>,
    /// Replaced whole by each batch that changes it, so a reader's copy is one Arc clone.
    auth: Mutex<Arc<AuthState>>,
    counters: Counters,
    watch_hub: Arc<WatchHub>,
    leases: LeaseTable,
}

/// Figures the node reports about its state machine.
#[derive(Debug, Default)]
struct Counters {
    /// Entries applied by this process; zero after a restart that resumed from disk with no replay.
    applied_this_run: AtomicU64,
    snapshots_built: AtomicU64,
    snapshots_installed: AtomicU64,
}

/// What the state machine database takes on disk, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskUsage {
    /// Every file of the database.
    pub files: u64,
    /// RocksDB's estimate of the live data among them.
    pub live: u64,
}

/// A read-only view of the state machine for serving reads without going through Raft's task.
///
/// Reads see whatever has been applied; linearizability is the caller's job (wait for the read
/// index to be applied first).
#[derive(Clone)]
pub struct StateReader {
    state: SharedStateDb,
    shared: Arc<Shared>,
}

impl StateMachineStore {
    /// Opens the state machine at `path` and the newest snapshot in `snapshot_dir`.
    pub fn open(path: &Path, snapshot_dir: PathBuf) -> Result<Self, Error> {
        legacy::upgrade_database(&SharedStateDb::in_service(path)?, COLUMN_FAMILIES)?;
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
            revisions,
            auth,
        } = StateMeta::read(&state.current()).map_err(storage_err(path))?;
        let leases = read_leases(&state.current()).map_err(storage_err(path))?;
        fs::create_dir_all(&snapshot_dir)?;
        let newest = snapshot::newest_checkpoint_in(&snapshot_dir)
            .and_then(|newest| newest.map(open_checkpoint).transpose())
            .map_err(storage_err(&snapshot_dir))?;
        let history_trimmer = start_history_trimmer(state.clone())?;
        tracing::info!(
            applied = ?applied,
            revision = revisions.current,
            "state machine opened at applied index {}",
            applied.map_or(0, |id| id.index)
        );
        Ok(StateMachineStore {
            state,
            snapshot_dir,
            current_snapshot: Arc::new(Mutex::new(newest.map(Arc::new))),
            applied,
            membership,
            revisions,
            shared: Arc::new(Shared {
                records: watch::Sender::new(records),
                auth: Mutex::new(Arc::new(auth)),
                counters: Counters::default(),
                watch_hub: Arc::new(WatchHub::new(revisions.current)),
                leases: LeaseTable::with(leases),
            }),
            history_trimmer,
            known: Arc::default(),
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
            shared: self.shared.clone(),
        }
    }
}

/// Starts the thread that deletes compacted history: woken after every compaction (and once at
/// start, to finish what a previous run left), it trims in bounded batches until it reaches the
/// compacted revision, so memory stays flat however long the history is.
fn start_history_trimmer(state: SharedStateDb) -> io::Result<Arc<Worker<()>>> {
    let trimmer = Worker::start("history-trim", move |wakeups: mpsc::Receiver<()>| {
        while wakeups.recv().is_ok() {
            while wakeups.try_recv().is_ok() {}
            if let Err(e) = trim_compacted_history(&state) {
                tracing::warn!("history compaction failed, will retry at the next one: {e}");
            }
        }
    })?;
    trimmer.enqueue(())?;
    Ok(trimmer)
}

fn trim_compacted_history(state: &SharedStateDb) -> io::Result<()> {
    loop {
        let db = state.current();
        let meta = column_family(&db, CF_META)?;
        let compacted = read_i64(&db, meta, KEY_COMPACT_REVISION, &ReadOptions::default)?;
        let trimmed = read_i64(&db, meta, KEY_TRIMMED_TO, &ReadOptions::default)?;
        let (compacted, trimmed) = (compacted.unwrap_or(0), trimmed.unwrap_or(0));
        if trimmed >= compacted {
            return Ok(());
        }
        mvcc::trim_history(&db, meta, trimmed, compacted, TRIM_CHANGES)?;
    }
}

fn read_i64(
    db: &DB,
    meta: &rocksdb::ColumnFamily,
    key: &[u8],
    options: &impl Fn() -> ReadOptions,
) -> io::Result<Option<i64>> {
    db.get_pinned_cf_opt(meta, key, &options())
        .map_err(mvcc::read_err)?
        .map(|bytes| decode(&bytes))
        .transpose()
}

/// The revision counters of `db` (an empty store is at revision 1).
fn read_revisions(db: &DB, options: &impl Fn() -> ReadOptions) -> io::Result<Revisions> {
    let meta = column_family(db, CF_META)?;
    Ok(Revisions {
        current: read_i64(db, meta, KEY_REVISION, options)?.unwrap_or(1),
        compacted: read_i64(db, meta, KEY_COMPACT_REVISION, options)?.unwrap_or(0),
    })
}

/// The auth state recorded in `db` (none yet: authentication off, no users or roles).
fn read_auth(db: &DB) -> io::Result<AuthState> {
    let meta = column_family(db, CF_META)?;
    match db.get_pinned_cf(meta, KEY_AUTH).map_err(io_err)? {
        Some(bytes) => decode(&bytes),
        None => Ok(AuthState::default()),
    }
}

/// Every lease in `db`, as (id, TTL).
fn read_leases(db: &DB) -> io::Result<Vec<(i64, i64)>> {
    let leases = column_family(db, CF_LEASES)?;
    let mut found = Vec::new();
    for item in db.iterator_cf(leases, IteratorMode::Start) {
        let (key, value) = item.map_err(io_err)?;
        let id: [u8; 8] = key[..]
            .try_into()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "malformed lease id"))?;
        let record: LeaseRecord = decode(&value)?;
        found.push((i64::from_be_bytes(id), record.ttl));
    }
    Ok(found)
}

/// Builds a range's answer key by key: stops keeping keys at the limit or past `max_bytes` (once
/// one is kept), and goes on counting.
struct RangeCollector<'a> {
    request: &'a api::RangeRequest,
    max_bytes: usize,
    bytes: usize,
    response: api::RangeResponse,
}

impl RangeCollector<'_> {
    /// Whether the next key's value would be kept (reading a current value is one more lookup,
    /// saved for keys that are only counted).
    fn wants_value(&self) -> bool {
        !(self.request.count_only || self.request.keys_only || self.response.more || self.full())
    }

    fn full(&self) -> bool {
        let limit = usize::try_from(self.request.limit).unwrap_or(0);
        limit > 0 && self.response.kvs.len() >= limit
    }

    fn add(&mut self, key: Vec<u8>, mut record: Record) {
        self.response.count += 1;
        if self.request.count_only || self.response.more {
            return;
        }
        self.bytes = self.bytes.saturating_add(key.len() + record.value.len());
        if self.full() || (self.bytes > self.max_bytes && !self.response.kvs.is_empty()) {
            self.response.more = true;
            return;
        }
        if self.request.keys_only {
            record.value = Vec::new();
        }
        self.response.kvs.push(record.into_key_value(key));
    }
}

impl StateReader {
    /// The current value of `key` as applied so far. A small value comes with the key's record;
    /// a large one is then read from the history, both at one snapshot: without it, a put and a
    /// compaction in between could retire the version the record named.
    pub fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        let db = self.state.current();
        let data = column_family(&db, CF_DATA)?;
        let Some(current) = db.get_pinned_cf(data, key).map_err(io_err)? else {
            return Ok(None);
        };
        if let mvcc::Current::Whole(record) = mvcc::decode_current(&current)? {
            return Ok(Some(record.value));
        }
        let snapshot = db.snapshot();
        let options = || {
            let mut options = ReadOptions::default();
            options.set_snapshot(&snapshot);
            options
        };
        let Some(current) = db
            .get_pinned_cf_opt(data, key, &options())
            .map_err(io_err)?
        else {
            return Ok(None);
        };
        let current = mvcc::decode_current(&current)?;
        let record = mvcc::current_record(&db, &options, key, current, Values::Read)?;
        Ok(Some(record.value))
    }

    /// Reads `request` (already validated) as applied so far, reading no more than about
    /// `max_bytes` of keys and values (past the first key; `more` tells). A refusal (a compacted
    /// or future revision) is the inner error.
    pub fn range(
        &self,
        request: &api::RangeRequest,
        max_bytes: usize,
    ) -> io::Result<Result<api::RangeResponse, ApplyError>> {
        self.range_reading(request, max_bytes, ReadOptions::default)
    }

    /// [`StateReader::range`] of one key as it is now, from memory only (memtables and block
    /// cache), so that it can run on an async worker: fails with `WouldBlock` when it would need
    /// the disk, and with `Unsupported` for any other range, which may read far more.
    pub fn key_in_memory(
        &self,
        request: &api::RangeRequest,
    ) -> io::Result<Result<api::RangeResponse, ApplyError>> {
        let one_current_key = request.range_end.is_empty() && request.revision == 0;
        if !one_current_key {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "only a single key as it is now is read from memory",
            ));
        }
        self.range_reading(request, usize::MAX, memory_only)
    }

    fn range_reading(
        &self,
        request: &api::RangeRequest,
        max_bytes: usize,
        base_options: fn() -> ReadOptions,
    ) -> io::Result<Result<api::RangeResponse, ApplyError>> {
        let db = self.state.current();
        let snapshot = db.snapshot();
        let options = || {
            let mut options = base_options();
            options.set_snapshot(&snapshot);
            options
        };
        let revisions = read_revisions(&db, &options)?;
        if request.revision > revisions.current {
            return Ok(Err(ApplyError::FutureRevision {
                revision: revisions.current,
            }));
        }
        if request.revision > 0 && request.revision < revisions.compacted {
            return Ok(Err(ApplyError::Compacted {
                compact_revision: revisions.compacted,
            }));
        }
        let mut collector = RangeCollector {
            request,
            max_bytes,
            bytes: 0,
            response: api::RangeResponse::default(),
        };
        collector.response.header.revision = revisions.current;
        let span = KeySpan::new(&request.key, &request.range_end);
        let current = request.revision == 0 || request.revision == revisions.current;
        let current_record = |key: &[u8], bytes: &[u8], wants_value: bool| {
            let current = mvcc::decode_current(bytes)?;
            mvcc::current_record(&db, &options, key, current, Values::when(wants_value))
        };
        if let (true, KeySpan::One(key)) = (current, &span) {
            // The common read, one key as it is now: point lookups, cheaper than a scan.
            let data = column_family(&db, CF_DATA)?;
            let found = db
                .get_pinned_cf_opt(data, key, &options())
                .map_err(mvcc::read_err)?;
            if let Some(bytes) = found {
                let record = current_record(key, &bytes, collector.wants_value())?;
                collector.add(key.to_vec(), record);
            }
        } else if current {
            let data = column_family(&db, CF_DATA)?;
            let mut iter = db.raw_iterator_cf_opt(data, options());
            iter.seek(span.start());
            while let (Some(key), Some(meta)) = (iter.key(), iter.value()) {
                if span.is_past(key) {
                    break;
                }
                let record = current_record(key, meta, collector.wants_value())?;
                collector.add(key.to_vec(), record);
                iter.next();
            }
            iter.status().map_err(mvcc::read_err)?;
        } else {
            mvcc::visit_at_revision(&db, options, &span, request.revision, |key, record| {
                collector.add(key, record);
                Ok(true)
            })?;
        }
        Ok(Ok(collector.response))
    }

    /// The changes to keys in `key`/`range_end` of whole revisions from `from` up to `to`, about
    /// `max_changes` at most, grouped by revision, with the revision read up to; or, as the inner
    /// error, the compacted revision when `from` is below it.
    pub fn changes_since(
        &self,
        key: &[u8],
        range_end: &[u8],
        from: i64,
        to: i64,
        max_changes: usize,
        prev_kv: bool,
    ) -> io::Result<Result<(Vec<RevisionChanges>, i64), i64>> {
        let db = self.state.current();
        let snapshot = db.snapshot();
        let options = || {
            let mut options = ReadOptions::default();
            options.set_snapshot(&snapshot);
            options
        };
        let revisions = read_revisions(&db, &options)?;
        if from < revisions.compacted {
            return Ok(Err(revisions.compacted));
        }
        let span = KeySpan::new(key, range_end);
        let (stored, stopped_at) =
            mvcc::changes_between(&db, &options, &span, from, to, max_changes)?;
        let mut grouped: Vec<RevisionChanges> = Vec::new();
        for change in stored {
            let prev = match change.previous.filter(|_| prev_kv) {
                Some(previous) => mvcc::version_made(&db, &options, &change.key, previous)?
                    .map(|record| record.into_key_value(change.key.clone())),
                None => None,
            };
            let event = match change.version {
                Some(record) => api::Event {
                    kind: api::EventKind::Put,
                    kv: record.into_key_value(change.key),
                    prev_kv: prev,
                },
                None => api::Event {
                    kind: api::EventKind::Delete,
                    kv: api::KeyValue {
                        key: change.key,
                        mod_revision: change.revision,
                        ..api::KeyValue::default()
                    },
                    prev_kv: prev,
                },
            };
            match grouped.last_mut() {
                Some(last) if last.revision == change.revision => last.events.push(event),
                _ => grouped.push(RevisionChanges {
                    revision: change.revision,
                    events: vec![event],
                }),
            }
        }
        Ok(Ok((grouped, stopped_at.unwrap_or(to))))
    }

    /// The keys attached to lease `id`, as applied so far.
    pub fn lease_keys(&self, id: i64) -> io::Result<Vec<Vec<u8>>> {
        let db = self.state.current();
        let nothing_known = KnownKeys::default();
        super::apply::attached_keys(&Overlay::new(&db, ReadOptions::default, &nothing_known), id)
    }

    /// The revision counters as applied so far.
    pub fn revisions(&self) -> io::Result<Revisions> {
        read_revisions(&self.state.current(), &ReadOptions::default)
    }

    /// Where applied changes are handed to watchers.
    pub fn watch_hub(&self) -> Arc<WatchHub> {
        self.shared.watch_hub.clone()
    }

    /// The leases in force, with the leader's expiry counts.
    pub fn leases(&self) -> &LeaseTable {
        &self.shared.leases
    }

    /// The directory of the state machine database in service.
    pub fn dir(&self) -> PathBuf {
        self.state.current().path().to_path_buf()
    }

    /// Bytes the state machine database takes on disk (its files), and RocksDB's estimate of the
    /// live data among them.
    pub fn disk_usage(&self) -> io::Result<DiskUsage> {
        let db = self.state.current();
        let mut files = 0;
        for entry in std::fs::read_dir(db.path())? {
            let metadata = entry?.metadata()?;
            if metadata.is_file() {
                files += metadata.len();
            }
        }
        let mut live = 0;
        for name in COLUMN_FAMILIES {
            let cf = column_family(&db, name)?;
            live += db
                .property_int_value_cf(cf, "rocksdb.estimate-live-data-size")
                .map_err(io_err)?
                .unwrap_or(0);
        }
        Ok(DiskUsage { files, live })
    }

    /// Compacts every column family of the state machine database whole, so the space of
    /// overwritten, deleted and compacted versions goes back to the file system (what etcd's
    /// defragment does for its database). Blocking, and long on a large state. Refused unless the
    /// disk has room for a full copy beside the reserve: RocksDB that runs out of space while
    /// compacting refuses every later write.
    pub fn compact_all(&self) -> io::Result<()> {
        let db = self.state.current();
        let needed = self.disk_usage()?.files + SPACE_RESERVE;
        let free = fs4::available_space(db.path())?;
        if free < needed {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!("a full compaction needs {needed} bytes free, and {free} are"),
            ));
        }
        for name in COLUMN_FAMILIES {
            let cf = column_family(&db, name)?;
            db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        }
        Ok(())
    }

    /// Users, roles and permissions, as applied so far.
    pub fn auth(&self) -> Arc<AuthState> {
        lock(&self.shared.auth).clone()
    }

    /// Ids removed from the cluster, as applied so far.
    pub fn removed_ids(&self) -> BTreeSet<NodeId> {
        self.shared.records.borrow().removed.clone()
    }

    /// Learners that stay learners, as applied so far.
    pub fn kept_learners(&self) -> BTreeSet<NodeId> {
        self.shared.records.borrow().kept_learners.clone()
    }

    /// The removed ids and kept learners as applied, marked changed whenever either changes.
    pub fn member_records(&self) -> watch::Receiver<MemberRecords> {
        self.shared.records.subscribe()
    }

    /// Entries applied by this process since it started.
    pub fn applied_this_run(&self) -> u64 {
        self.shared
            .counters
            .applied_this_run
            .load(Ordering::Relaxed)
    }

    /// Snapshots this node has built since it started.
    pub fn snapshots_built(&self) -> u64 {
        self.shared.counters.snapshots_built.load(Ordering::Relaxed)
    }

    /// Snapshots this node has received and installed since it started.
    pub fn snapshots_installed(&self) -> u64 {
        self.shared
            .counters
            .snapshots_installed
            .load(Ordering::Relaxed)
    }
}

/// Reads from memory only (memtables and block cache): the apply path's first try, on the async
/// worker; a read that needs the disk fails with `WouldBlock` and the batch is rebuilt off it.
fn memory_only() -> ReadOptions {
    let mut options = ReadOptions::default();
    options.set_read_tier(ReadTier::BlockCache);
    options
}

/// What applying a batch produced, besides the batch to write.
struct Applied {
    results: Vec<CommandResult>,
    revisions: Revisions,
    changes: Vec<Arc<RevisionChanges>>,
    lease_changes: Vec<LeaseChange>,
    /// The auth state after the batch, when the batch changed it.
    auth: Option<Arc<AuthState>>,
    /// What the batch does to the current keys, for [`KnownKeys`] once it is written.
    key_changes: Vec<(Vec<u8>, Option<RecordMeta>)>,
}

/// What a batch of entries records beside the key space.
#[derive(Clone)]
struct BatchMeta {
    last: LogId,
    revisions_before: Revisions,
    membership: Option<StoredMembership>,
    records: Option<MemberRecords>,
    collect_events: bool,
    auth_before: Arc<AuthState>,
}

/// Applies `commands` (`None`: an entry with nothing to apply) to `db` as one batch.
fn build_batch(
    db: &DB,
    read_options: fn() -> ReadOptions,
    commands: &[Option<Command>],
    meta: &BatchMeta,
    known: &KnownKeys,
) -> io::Result<(WriteBatch, Applied)> {
    let mut applier = Applier {
        overlay: Overlay::new(db, read_options, known),
        revision: meta.revisions_before.current,
        compact_revision: meta.revisions_before.compacted,
        collect_events: meta.collect_events,
        changes: Vec::new(),
        lease_changes: Vec::new(),
        auth: meta.auth_before.clone(),
        auth_changed: false,
    };
    let results = commands
        .iter()
        .map(|command| match command {
            Some(command) => applier.apply(command),
            None => Ok(CommandResult::Applied),
        })
        .collect::<io::Result<Vec<_>>>()?;
    let revisions = Revisions {
        current: applier.revision,
        compacted: applier.compact_revision,
    };
    let Applier {
        overlay,
        changes,
        lease_changes,
        auth,
        auth_changed,
        ..
    } = applier;
    let key_changes = overlay.key_changes()?;
    let mut batch = overlay.into_batch()?;
    let meta_cf = column_family(db, CF_META)?;
    batch.put_cf(meta_cf, KEY_APPLIED, encode(&Some(meta.last))?);
    if revisions.current != meta.revisions_before.current {
        batch.put_cf(meta_cf, KEY_REVISION, encode(&revisions.current)?);
    }
    if revisions.compacted != meta.revisions_before.compacted {
        batch.put_cf(meta_cf, KEY_COMPACT_REVISION, encode(&revisions.compacted)?);
    }
    if let Some(membership) = &meta.membership {
        batch.put_cf(meta_cf, KEY_MEMBERSHIP, encode(membership)?);
    }
    if let Some(records) = &meta.records {
        put_member_records(&mut batch, meta_cf, records)?;
    }
    if auth_changed {
        batch.put_cf(meta_cf, KEY_AUTH, encode(&*auth)?);
    }
    let applied = Applied {
        results,
        revisions,
        changes,
        lease_changes,
        auth: auth_changed.then_some(auth),
        key_changes,
    };
    Ok((batch, applied))
}

/// A batch of log entries sorted for applying: one command per entry (`None` for an entry with
/// nothing to apply: a blank, a membership or a member-record change, applied here), each
/// entry's responder, and the membership and member records as of the batch's end.
struct SortedEntries {
    commands: Vec<Option<Command>>,
    responders: Vec<Option<ApplyResponder>>,
    /// The newest membership in the batch, if it has one.
    membership: Option<StoredMembership>,
    records: MemberRecords,
}

type ApplyResponder = openraft::storage::ApplyResponder<TypeConfig>;

/// Sorts `entries`, applied after `membership` with `records`: a node that leaves the membership
/// is recorded as removed for good (it can never come back), and loses its learner mark.
fn sort_entries(
    entries: Vec<EntryResponder<TypeConfig>>,
    membership: &StoredMembership,
    mut records: MemberRecords,
) -> SortedEntries {
    let mut previous_nodes = node_ids(membership);
    let mut newest_membership = None;
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
                newest_membership = Some(next);
                commands.push(None);
            }
        }
        responders.push(responder);
    }
    SortedEntries {
        commands,
        responders,
        membership: newest_membership,
        records,
    }
}

impl StateMachineStore {
    /// Applies `commands` as one RocksDB write. Most batches read only what is in memory (the keys
    /// just written), so they are built and written here (see `write_soon`); one that needs the
    /// disk is rebuilt on the blocking pool.
    async fn write_batch(
        &self,
        commands: Vec<Option<Command>>,
        meta: &BatchMeta,
    ) -> io::Result<Applied> {
        let db = self.state.current();
        let built_in_memory = build_batch(&db, memory_only, &commands, meta, &lock(&self.known));
        match built_in_memory {
            Ok((batch, applied)) => write_soon("state machine", &db, batch)
                .await
                .map(|()| applied),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let known = self.known.clone();
                let meta = meta.clone();
                blocking(move || {
                    let (batch, applied) =
                        build_batch(&db, ReadOptions::default, &commands, &meta, &lock(&known))?;
                    write_until_space("state machine", &db, batch, &WriteOptions::default())?;
                    Ok(applied)
                })
                .await
            }
            Err(e) => Err(e),
        }
    }

    /// Makes a written batch visible beyond the database: the auth state, the lease table, the
    /// revisions, the watchers (the events were collected only if `collected`), the history
    /// trimmer after a compaction, and the count of `applied_entries`.
    fn publish(
        &mut self,
        mut applied: Applied,
        applied_entries: usize,
        collected: bool,
    ) -> io::Result<()> {
        if let Some(auth) = applied.auth.take() {
            *lock(&self.shared.auth) = auth;
        }
        self.shared.leases.apply(&applied.lease_changes);
        let compacted = applied.revisions.compacted != self.revisions.compacted;
        self.revisions = applied.revisions;
        self.shared
            .watch_hub
            .publish(applied.revisions, &applied.changes, collected);
        if compacted {
            self.history_trimmer.enqueue(())?;
        }
        self.shared
            .counters
            .applied_this_run
            .fetch_add(applied_entries as u64, Ordering::Relaxed);
        Ok(())
    }
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
        let records_before = self.shared.records.borrow().clone();
        let sorted = sort_entries(entries, &self.membership, records_before.clone());
        let records_changed = sorted.records != records_before;
        let meta = BatchMeta {
            last,
            revisions_before: self.revisions,
            membership: sorted.membership.clone(),
            records: records_changed.then(|| sorted.records.clone()),
            collect_events: self.shared.watch_hub.wants_events(),
            auth_before: lock(&self.shared.auth).clone(),
        };
        let mut applied = self
            .write_batch(sorted.commands, &meta)
            .await
            .inspect_err(|_| lock(&self.known).clear())?;
        lock(&self.known).written(std::mem::take(&mut applied.key_changes));
        let results = std::mem::take(&mut applied.results);
        self.applied = Some(last);
        if let Some(membership) = sorted.membership {
            self.membership = membership;
        }
        if records_changed {
            self.shared.records.send_replace(sorted.records);
        }
        self.publish(applied, results.len(), meta.collect_events)?;
        for (responder, result) in sorted.responders.into_iter().zip(results) {
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
            shared: self.shared.clone(),
        }
    }

    /// Builds the snapshot's state as a new database generation from its tables (a snapshot
    /// received from the leader arrives prepared; any other is prepared from its stream first,
    /// which verifies it), syncs, and only then switches to it: a crash at any point leaves the
    /// old state or the new, never a mix. Reads keep using the old generation until the switch.
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> io::Result<()> {
        let state = self.state.clone();
        let dir = self.snapshot_dir.clone();
        let expected_meta = meta.clone();
        let (checkpoint, records) = blocking(move || {
            let prepared = match snapshot {
                SnapshotData::Prepared(prepared) => *prepared,
                SnapshotData::Checkpoint(checkpoint) => {
                    let chunks = snapshot_chunks(
                        SnapshotData::Checkpoint(checkpoint),
                        STREAM_CHUNK_BYTES,
                        STREAM_QUEUE,
                    );
                    install::prepare(SnapshotReader::new(PieceReader::new(chunks))?, &dir)?
                }
            };
            if prepared.meta != expected_meta {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "snapshot header does not match the snapshot being installed",
                ));
            }
            install_prepared(&state, &dir, prepared, &expected_meta, None)
        })
        .await?;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.shared.records.send_replace(records);
        lock(&self.known).clear();
        let db = self.state.current();
        self.revisions = read_revisions(&db, &ReadOptions::default)?;
        self.shared.leases.replace(read_leases(&db)?);
        *lock(&self.shared.auth) = Arc::new(read_auth(&db)?);
        self.shared.watch_hub.reset(self.revisions.current);
        self.history_trimmer.enqueue(())?;
        replace_current(&self.current_snapshot, checkpoint);
        self.shared
            .counters
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

/// Makes a prepared snapshot the state: ingests its tables into a new database generation,
/// records `recorded` (applied log id and membership) and the member records beside them, syncs,
/// switches to it and checkpoints it. The member records are `records` when given, otherwise the
/// snapshot's. Returns the checkpoint and the member records in force.
fn install_prepared(
    state: &SharedStateDb,
    dir: &Path,
    prepared: PreparedSnapshot,
    recorded: &SnapshotMeta,
    records: Option<MemberRecords>,
) -> io::Result<(Checkpoint, MemberRecords)> {
    let next = state.create_next()?;
    prepared.ingest_tables(&next)?;
    let records = records.unwrap_or_else(|| prepared.records.clone());
    let meta_cf = column_family(&next, CF_META)?;
    let mut batch = WriteBatch::default();
    for (key, value) in prepared.meta_pairs() {
        batch.put_cf(meta_cf, key, value);
    }
    batch.put_cf(meta_cf, KEY_APPLIED, encode(&recorded.last_log_id)?);
    batch.put_cf(meta_cf, KEY_MEMBERSHIP, encode(&recorded.last_membership)?);
    put_member_records(&mut batch, meta_cf, &records)?;
    // The new generation is invisible until the switch and is synced by the flush below, so the
    // meta records can skip the WAL.
    let mut unlogged = WriteOptions::default();
    unlogged.disable_wal(true);
    write_until_space("snapshot install", &next, batch, &unlogged)?;
    let families = COLUMN_FAMILIES
        .iter()
        .map(|name| column_family(&next, name))
        .collect::<io::Result<Vec<_>>>()?;
    until_space("snapshot install", next.path(), || {
        next.flush_cfs_opt(&families, &rocksdb::FlushOptions::default())
    })?;
    drop(prepared);
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
        let backup = blocking(move || {
            let file = fs::File::open(&file)?;
            let reader = SnapshotReader::new(BufReader::with_capacity(READ_BUFFER, file))?;
            let prepared = install::prepare(reader, &dir)?;
            let backup = prepared.meta.clone();
            let recorded = SnapshotMeta {
                last_log_id: backup.last_log_id,
                last_membership: StoredMembership::new(backup.last_log_id, membership),
            };
            install_prepared(
                &state,
                &dir,
                prepared,
                &recorded,
                Some(MemberRecords::default()),
            )?;
            Ok(backup)
        })
        .await?;
        lock(&self.known).clear();
        *lock(&self.shared.auth) = Arc::new(read_auth(&self.state.current())?);
        Ok(backup)
    }
}

/// Every node id in a membership, voter or learner.
fn node_ids(membership: &StoredMembership) -> BTreeSet<NodeId> {
    membership.nodes().map(|(id, _)| *id).collect()
}

fn open_read_only(path: &Path) -> io::Result<DB> {
    DB::open_cf_for_read_only(&Options::default(), path, COLUMN_FAMILIES, false).map_err(io_err)
}

/// Wraps the checkpoint directory found at start-up, reading its metadata from the checkpoint
/// (converted first if an older version of ondisk made it).
fn open_checkpoint(path: PathBuf) -> io::Result<Checkpoint> {
    legacy::upgrade_database(&path, COLUMN_FAMILIES)
        .map_err(|e| io::Error::other(e.to_string()))?;
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
    with_attempts("snapshot checkpoint", CHECKPOINT_ATTEMPTS, || {
        until_space("snapshot", dir, || {
            if building.exists() {
                // What a failed attempt left behind; RocksDB wants a fresh directory.
                let _ = fs::remove_dir_all(&building);
            }
            rocksdb::checkpoint::Checkpoint::new(&db)
                .and_then(|checkpoint| checkpoint.create_checkpoint(&building))
        })
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

/// Attempts at a checkpoint before its failure is final. A checkpoint copies the live WAL while
/// applies go on appending to it, and that copy can come out short (seen once under the fault
/// suite: "File smaller than expected for copy"); a new attempt flushes again and copies a fresh
/// WAL. openraft stops the node for good on a snapshot error, so one bad copy must not be final.
const CHECKPOINT_ATTEMPTS: u32 = 3;

/// Runs `attempt` up to `attempts` times until it succeeds, logging each failure that is retried;
/// the last failure is returned. Only for work that may simply be run again after a failure.
fn with_attempts<T>(
    what: &str,
    attempts: u32,
    mut attempt: impl FnMut() -> io::Result<T>,
) -> io::Result<T> {
    let mut failed = 0;
    loop {
        match attempt() {
            Err(e) if failed + 1 < attempts => {
                failed += 1;
                tracing::warn!("{what}: attempt {failed} of {attempts} failed, trying again: {e}");
            }
            outcome => return outcome,
        }
    }
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

/// The snapshot stream of `snapshot` in chunks of exactly `chunk_len` bytes, the last one shorter
/// (possibly empty), so a receiver knows the end without another read. A thread encodes the
/// checkpoint into them at most `ahead` chunks before the consumer, off the async workers, so
/// sending one chunk overlaps with encoding the next. Dropping the receiver stops the thread. A
/// prepared snapshot is not a stream any more (it is only ever installed): its receiver yields an
/// error.
pub fn snapshot_chunks(
    snapshot: SnapshotData,
    chunk_len: usize,
    ahead: usize,
) -> tokio::sync::mpsc::Receiver<io::Result<Vec<u8>>> {
    let (chunks, received) = tokio::sync::mpsc::channel(ahead.max(1));
    let checkpoint = match snapshot {
        SnapshotData::Checkpoint(checkpoint) => checkpoint,
        SnapshotData::Prepared(_) => {
            let refused = io::Error::other("a snapshot received for installing cannot be streamed");
            let _ = chunks.try_send(Err(refused));
            return received;
        }
    };
    let encoding = chunks.clone();
    let started = thread::Builder::new()
        .name("snapshot-stream".into())
        .spawn(move || {
            let out = ChunkSender::new(encoding.clone(), chunk_len);
            if let Err(e) = encode_checkpoint(&checkpoint, out) {
                let _ = encoding.blocking_send(Err(e));
            }
        });
    if let Err(e) = started {
        let _ = chunks.try_send(Err(e));
    }
    received
}

/// Encodes a checkpoint's content into `out`. Stops with an error when the reader goes away.
fn encode_checkpoint(checkpoint: &Checkpoint, out: ChunkSender) -> io::Result<()> {
    let db = open_read_only(checkpoint.path())?;
    let state_meta = StateMeta::read(&db)?;
    let mut encoder = SnapshotEncoder::new(out, &state_meta.snapshot_meta())?;
    for (number, name) in MVCC_FAMILIES.iter().enumerate() {
        let family = column_family(&db, name)?;
        // Read once, in order: the blocks need not stay in the cache.
        let mut options = ReadOptions::default();
        options.fill_cache(false);
        let mut pairs = db.raw_iterator_cf_opt(family, options);
        pairs.seek_to_first();
        while let (Some(key), Some(value)) = (pairs.key(), pairs.value()) {
            encoder.add(number as u8, key, value)?;
            pairs.next();
        }
        pairs.status().map_err(io_err)?;
    }
    let meta = column_family(&db, CF_META)?;
    for key in STREAMED_META_KEYS {
        if let Some(value) = db.get_pinned_cf(meta, key).map_err(io_err)? {
            encoder.add(STREAM_META_FAMILY, key, &value)?;
        }
    }
    encoder.add_member_records(&state_meta.records)?;
    encoder.finish()?.finish()
}

/// Builds snapshots (checkpoints) while applies go on.
pub struct SnapshotBuilder {
    state: SharedStateDb,
    dir: PathBuf,
    current_snapshot: CurrentSnapshot,
    shared: Arc<Shared>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> io::Result<Snapshot> {
        let state = self.state.clone();
        let dir = self.dir.clone();
        let checkpoint = blocking(move || create_checkpoint(&state, &dir)).await?;
        let checkpoint = replace_current(&self.current_snapshot, checkpoint);
        self.shared
            .counters
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
    use std::collections::BTreeMap;

    /// A state machine driven batch by batch, as `apply` drives it, without openraft.
    struct Driven {
        _dir: tempfile::TempDir,
        store: StateMachineStore,
        index: u64,
    }

    impl Driven {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let store =
                StateMachineStore::open(&dir.path().join("state"), dir.path().join("snapshots"))
                    .unwrap();
            Driven {
                _dir: dir,
                store,
                index: 0,
            }
        }

        /// Applies `commands` as one batch and returns their results.
        fn apply(&mut self, commands: Vec<Command>) -> Vec<CommandResult> {
            self.index += 1;
            let db = self.store.state.current();
            // Every other batch as if someone watched: a put then reads the whole previous
            // version, otherwise only its metadata (from the known keys when they hold it).
            let collect_events = self.index.is_multiple_of(2);
            let meta = BatchMeta {
                last: openraft::testing::log_id::<TypeConfig>(1, 1, self.index),
                revisions_before: self.store.revisions,
                membership: None,
                records: None,
                collect_events,
                auth_before: lock(&self.store.shared.auth).clone(),
            };
            let commands: Vec<Option<Command>> = commands.into_iter().map(Some).collect();
            let known = &self.store.known;
            let (batch, mut applied) =
                build_batch(&db, ReadOptions::default, &commands, &meta, &lock(known)).unwrap();
            db.write(batch).unwrap();
            lock(known).written(std::mem::take(&mut applied.key_changes));
            self.store.revisions = applied.revisions;
            self.store.shared.leases.apply(&applied.lease_changes);
            if let Some(auth) = applied.auth.take() {
                *lock(&self.store.shared.auth) = auth;
            }
            self.store.shared.watch_hub.publish(
                applied.revisions,
                &applied.changes,
                collect_events,
            );
            applied.results
        }

        fn range_at(&self, revision: i64) -> Result<Vec<api::KeyValue>, ApplyError> {
            let request = api::RangeRequest {
                key: vec![0],
                range_end: vec![0],
                revision,
                ..api::RangeRequest::default()
            };
            self.store
                .reader()
                .range(&request, usize::MAX)
                .unwrap()
                .map(|response| response.kvs)
        }
    }

    fn put(key: &str, value: &str) -> Command {
        Command::Put(api::PutRequest {
            key: key.into(),
            value: value.into(),
            ..api::PutRequest::default()
        })
    }

    fn delete(key: &str, range_end: &str) -> Command {
        Command::DeleteRange(api::DeleteRangeRequest {
            key: key.into(),
            range_end: range_end.into(),
            prev_kv: true,
        })
    }

    /// What the store should hold: each key's version, per revision.
    #[derive(Default)]
    struct Model {
        current: BTreeMap<Vec<u8>, api::KeyValue>,
        /// The state at each revision, from revision 1 (the empty store).
        at: Vec<BTreeMap<Vec<u8>, api::KeyValue>>,
    }

    impl Model {
        fn new() -> Self {
            Model {
                current: BTreeMap::new(),
                at: vec![BTreeMap::new(), BTreeMap::new()],
            }
        }

        fn revision(&self) -> i64 {
            self.at.len() as i64 - 1
        }

        /// Applies a put or delete the way etcd defines them; returns whether it changed a key.
        fn apply(&mut self, command: &Command) {
            let next = self.revision() + 1;
            let changed = match command {
                Command::Put(put) => {
                    let previous = self.current.get(&put.key);
                    let kv = api::KeyValue {
                        key: put.key.clone(),
                        create_revision: previous.map_or(next, |p| p.create_revision),
                        mod_revision: next,
                        version: previous.map_or(1, |p| p.version + 1),
                        value: put.value.clone(),
                        lease: 0,
                    };
                    self.current.insert(put.key.clone(), kv);
                    true
                }
                Command::DeleteRange(delete) => {
                    let span = KeySpan::new(&delete.key, &delete.range_end);
                    let before = self.current.len();
                    self.current.retain(|key, _| !span.contains(key));
                    before != self.current.len()
                }
                _ => unreachable!("the model knows puts and deletes"),
            };
            if changed {
                self.at.push(self.current.clone());
            }
        }
    }

    fn command(op: u8, key: u8, value: u16) -> Command {
        let key = format!("k{}", key % 5);
        // Every third value is too large to be kept with its key (see `mvcc`).
        let repeat = if value.is_multiple_of(3) { 100 } else { 1 };
        match op % 4 {
            0 | 1 => put(&key, &format!("v{value}").repeat(repeat)),
            2 => delete(&key, ""),
            _ => delete(&key, &format!("k{}", key.as_bytes()[1] - b'0' + 2)),
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// Every past revision reads exactly as the model says, before and after compaction;
        /// compacted revisions are refused; the history's events replay the model's changes.
        #[test]
        fn every_revision_reads_as_it_was_and_compaction_keeps_what_it_must(
            ops in proptest::collection::vec((0u8..4, 0u8..5, 0u16..1000, 1usize..4), 1..40),
            compact_at in 0.0f64..1.0,
        ) {
            let mut driven = Driven::new();
            let mut model = Model::new();
            let mut batch = Vec::new();
            for (op, key, value, batch_len) in ops {
                let command = command(op, key, value);
                model.apply(&command);
                batch.push(command);
                if batch.len() >= batch_len {
                    driven.apply(std::mem::take(&mut batch));
                }
            }
            driven.apply(batch);
            proptest::prop_assert_eq!(driven.store.revisions.current, model.revision());
            for key in (0..5).map(|k| format!("k{k}").into_bytes()) {
                let value = model.current.get(&key).map(|kv| kv.value.clone());
                proptest::prop_assert_eq!(driven.store.reader().get(&key).unwrap(), value);
            }
            for revision in 1..=model.revision() {
                let expected: Vec<_> = model.at[revision as usize].values().cloned().collect();
                proptest::prop_assert_eq!(driven.range_at(revision), Ok(expected));
            }
            // A watch catching up from the recent revisions in memory gets what the history on
            // disk holds.
            let reader = driven.store.reader();
            for from in 1..=model.revision() {
                let recent = reader.watch_hub().recent(from, model.revision());
                let Some(last) = recent.last().map(|changes| changes.revision) else {
                    continue;
                };
                let (stored, _) = reader
                    .changes_since(&[0], &[0], from, last, usize::MAX, true)
                    .unwrap()
                    .unwrap();
                let recent: Vec<RevisionChanges> =
                    recent.iter().map(|changes| (**changes).clone()).collect();
                proptest::prop_assert_eq!(recent, stored);
            }
            let compact_to = 1 + ((model.revision() - 1) as f64 * compact_at) as i64;
            let results = driven.apply(vec![Command::Compact(api::CompactionRequest {
                revision: compact_to,
                physical: false,
            })]);
            proptest::prop_assert!(matches!(results[0], CommandResult::Compacted(_)));
            trim_compacted_history(&driven.store.state).unwrap();
            for revision in 1..=model.revision() {
                let read = driven.range_at(revision);
                if revision < compact_to {
                    proptest::prop_assert_eq!(
                        read,
                        Err(ApplyError::Compacted { compact_revision: compact_to })
                    );
                } else {
                    let expected: Vec<_> =
                        model.at[revision as usize].values().cloned().collect();
                    proptest::prop_assert_eq!(read, Ok(expected));
                }
            }
            let reader = driven.store.reader();
            let (changes, read_to) = reader
                .changes_since(&[0], &[0], compact_to, model.revision(), usize::MAX, true)
                .unwrap()
                .unwrap();
            proptest::prop_assert_eq!(read_to, model.revision());
            for changed in changes {
                let before = &model.at[changed.revision as usize - 1];
                let after = &model.at[changed.revision as usize];
                for event in changed.events {
                    let key = &event.kv.key;
                    match event.kind {
                        api::EventKind::Put => {
                            proptest::prop_assert_eq!(Some(&event.kv), after.get(key))
                        }
                        api::EventKind::Delete => proptest::prop_assert!(!after.contains_key(key)),
                    }
                    if changed.revision > compact_to {
                        proptest::prop_assert_eq!(event.prev_kv.as_ref(), before.get(key));
                    }
                }
            }
        }
    }

    /// Writes `driven`'s state as format 3 kept it into a new database at `path`: the history
    /// by key and the events by revision, made from its changes (the events of revisions before
    /// `events_from` left out, as format 3's compaction removed them), the other families as
    /// they are.
    fn write_format_3(driven: &Driven, path: &Path, events_from: i64) {
        let families = [
            CF_DATA,
            CF_META,
            legacy::CF_HISTORY,
            legacy::CF_EVENTS,
            CF_LEASES,
            CF_LEASE_KEYS,
        ];
        let old =
            super::super::open_rocksdb(path, &families, super::super::WalSyncs::Rarely).unwrap();
        let db = driven.store.state.current();
        for family in [CF_DATA, CF_META, CF_LEASES, CF_LEASE_KEYS] {
            let (from, to) = (
                column_family(&db, family).unwrap(),
                column_family(&old, family).unwrap(),
            );
            for item in db.iterator_cf(from, IteratorMode::Start) {
                let (key, value) = item.unwrap();
                old.put_cf(to, key, value).unwrap();
            }
        }
        let history = column_family(&old, legacy::CF_HISTORY).unwrap();
        let events = column_family(&old, legacy::CF_EVENTS).unwrap();
        for item in db.iterator_cf(column_family(&db, CF_CHANGES).unwrap(), IteratorMode::Start) {
            let (encoded, value) = item.unwrap();
            let revision = i64::from_be_bytes(encoded[..8].try_into().unwrap());
            let key = &encoded[8..];
            let change: mvcc::ChangeRecord = decode(&value).unwrap();
            let mut history_key = mvcc::escaped_key(key);
            history_key.extend_from_slice(&(u64::MAX - revision as u64).to_be_bytes());
            old.put_cf(history, history_key, encode(&change.version).unwrap())
                .unwrap();
            if revision >= events_from {
                let mut event_key = encoded[..8].to_vec();
                event_key.extend_from_slice(&change.change.to_be_bytes());
                old.put_cf(events, event_key, key).unwrap();
            }
        }
    }

    /// A version 4 snapshot stream of the format 3 state at `path`, as an older ondisk sent it.
    fn format_3_stream(path: &Path, meta: &SnapshotMeta) -> Vec<u8> {
        let mut families = vec![CF_META];
        families.extend(legacy::STREAM_FAMILIES);
        let db = DB::open_cf_for_read_only(&Options::default(), path, families, false).unwrap();
        let mut encoder = SnapshotEncoder::of_older_version(Vec::new(), meta, 4).unwrap();
        for (number, name) in legacy::STREAM_FAMILIES.iter().enumerate() {
            for item in db.iterator_cf(column_family(&db, name).unwrap(), IteratorMode::Start) {
                let (key, value) = item.unwrap();
                encoder.add(number as u8, &key, &value).unwrap();
            }
        }
        let meta_family = column_family(&db, CF_META).unwrap();
        for key in STREAMED_META_KEYS {
            if let Some(value) = db.get_cf(meta_family, key).unwrap() {
                encoder.add(STREAM_META_FAMILY, key, &value).unwrap();
            }
        }
        encoder
            .add_member_records(&MemberRecords::default())
            .unwrap();
        encoder.finish().unwrap()
    }

    /// What a store holds from revision `from` on: every revision's range, the changes.
    fn state_from(
        driven: &Driven,
        from: i64,
    ) -> (
        Vec<Result<Vec<api::KeyValue>, ApplyError>>,
        Vec<RevisionChanges>,
    ) {
        let current = driven.store.revisions.current;
        let ranges = (from..=current)
            .map(|revision| driven.range_at(revision))
            .collect();
        let (changes, _) = driven
            .store
            .reader()
            .changes_since(&[0], &[0], from, current, usize::MAX, true)
            .unwrap()
            .unwrap();
        (ranges, changes)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(16))]

        /// A state of format 3 converts when the state machine opens it, and when it arrives as
        /// a version 4 snapshot stream from a node not yet upgraded: every revision reads as it
        /// did and each revision's changes come in the order they were made.
        #[test]
        fn a_state_of_format_3_converts_and_reads_as_it_was(
            ops in proptest::collection::vec((0u8..4, 0u8..5, 0u16..1000), 1..30),
            compact_at in 0.0f64..1.0,
        ) {
            let mut driven = Driven::new();
            for (op, key, value) in ops {
                driven.apply(vec![command(op, key, value)]);
            }
            // Changes of one revision in an order other than their keys', at the newest
            // revision, which compaction leaves.
            let txn = api::TxnRequest {
                success: vec![
                    api::RequestOp::Put(api::PutRequest { key: b"k3".to_vec(), value: b"t".to_vec(), ..Default::default() }),
                    api::RequestOp::Put(api::PutRequest { key: b"k1".to_vec(), value: b"t".to_vec(), ..Default::default() }),
                ],
                ..api::TxnRequest::default()
            };
            driven.apply(vec![Command::Txn(txn)]);
            let compact_to = 1 + ((driven.store.revisions.current - 1) as f64 * compact_at) as i64;
            driven.apply(vec![Command::Compact(api::CompactionRequest {
                revision: compact_to,
                physical: false,
            })]);
            trim_compacted_history(&driven.store.state).unwrap();
            let expected = state_from(&driven, compact_to);

            let dir = tempfile::tempdir().unwrap();
            write_format_3(&driven, &dir.path().join("state"), compact_to);
            let meta = StateMeta::read(&driven.store.state.current()).unwrap().snapshot_meta();
            let stream = format_3_stream(&dir.path().join("state"), &meta);
            let mut follower = Driven::new();
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            runtime.block_on(async {
                let mut receiver = install::SnapshotReceiver::start(follower.store.snapshot_dir.clone());
                for piece in stream.chunks(4096) {
                    receiver.push(piece.to_vec()).await.unwrap();
                }
                let prepared = receiver.finish().await.unwrap();
                follower
                    .store
                    .install_snapshot(&meta, SnapshotData::Prepared(Box::new(prepared)))
                    .await
                    .unwrap();
            });
            proptest::prop_assert_eq!(&state_from(&follower, compact_to), &expected);

            let opened = Driven {
                store: StateMachineStore::open(&dir.path().join("state"), dir.path().join("snapshots")).unwrap(),
                _dir: dir,
                index: driven.index,
            };
            proptest::prop_assert_eq!(&state_from(&opened, compact_to), &expected);
        }
    }

    /// A backup made before revisions (a version 2 stream of plain pairs) restores as the state
    /// at revision 1: every key created then, readable at revision 1, with its history.
    #[tokio::test]
    async fn a_backup_from_before_revisions_restores_at_revision_1() {
        let mut stream = Vec::new();
        let mut crc = crc32fast::Hasher::new();
        let mut put = |bytes: &[u8]| {
            crc.update(bytes);
            stream.extend_from_slice(bytes);
        };
        let meta = SnapshotMeta {
            last_log_id: Some(openraft::testing::log_id::<TypeConfig>(2, 1, 40)),
            last_membership: StoredMembership::default(),
        };
        let meta = encode(&meta).unwrap();
        put(b"ONDISKSN");
        put(&2u32.to_be_bytes());
        put(&(meta.len() as u32).to_be_bytes());
        put(&meta);
        for (key, value) in [(&b"a"[..], &b"1"[..]), (b"b", b"\xff")] {
            put(&[1]);
            put(&(key.len() as u32).to_be_bytes());
            put(key);
            put(&(value.len() as u32).to_be_bytes());
            put(value);
        }
        put(&[0]);
        put(&2u64.to_be_bytes());
        let checksum = crc.finalize();
        stream.extend_from_slice(&checksum.to_be_bytes());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("old.snap");
        fs::write(&file, &stream).unwrap();

        let mut driven = Driven::new();
        let membership = crate::types::Membership::new(
            vec![BTreeSet::from([1])],
            BTreeMap::from([(1, crate::types::Member::default())]),
        )
        .unwrap();
        driven.store.restore(file, membership).await.unwrap();
        assert_eq!(driven.store.reader().revisions().unwrap().current, 1);
        let kvs = driven.range_at(1).unwrap();
        let keys: Vec<_> = kvs
            .iter()
            .map(|kv| {
                (
                    kv.key.clone(),
                    kv.value.clone(),
                    kv.create_revision,
                    kv.version,
                )
            })
            .collect();
        assert_eq!(
            keys,
            vec![
                (b"a".to_vec(), b"1".to_vec(), 1, 1),
                (b"b".to_vec(), b"\xff".to_vec(), 1, 1)
            ]
        );
        let (changes, _) = driven
            .store
            .reader()
            .changes_since(&[0], &[0], 1, 1, 100, false)
            .unwrap()
            .unwrap();
        assert_eq!(
            changes[0].events.len(),
            2,
            "both keys were created at revision 1"
        );
    }

    #[test]
    fn a_txn_is_one_revision_and_sees_its_own_writes() {
        let mut driven = Driven::new();
        driven.apply(vec![put("a", "1")]);
        let txn = api::TxnRequest {
            compare: vec![api::Compare {
                key: b"a".to_vec(),
                range_end: Vec::new(),
                target: api::CompareTarget::Value(b"1".to_vec()),
                result: api::CompareResult::Equal,
            }],
            success: vec![
                api::RequestOp::Put(api::PutRequest {
                    key: b"b".to_vec(),
                    value: b"2".to_vec(),
                    ..api::PutRequest::default()
                }),
                api::RequestOp::DeleteRange(api::DeleteRangeRequest {
                    key: b"a".to_vec(),
                    ..api::DeleteRangeRequest::default()
                }),
                api::RequestOp::Range(api::RangeRequest {
                    key: b"\0".to_vec(),
                    range_end: vec![0],
                    ..api::RangeRequest::default()
                }),
            ],
            failure: Vec::new(),
        };
        let results = driven.apply(vec![Command::Txn(txn.clone())]);
        let CommandResult::Txn(answer) = &results[0] else {
            panic!("{results:?}")
        };
        assert!(answer.succeeded);
        assert_eq!(answer.header.revision, 3);
        let api::ResponseOp::Range(range) = &answer.responses[2] else {
            panic!("{answer:?}")
        };
        let keys: Vec<_> = range.kvs.iter().map(|kv| kv.key.clone()).collect();
        assert_eq!(keys, vec![b"b".to_vec()]);
        let results = driven.apply(vec![Command::Txn(txn)]);
        let CommandResult::Txn(answer) = &results[0] else {
            panic!("{results:?}")
        };
        assert!(!answer.succeeded, "a is gone, so the comparison fails");
        assert_eq!(
            answer.header.revision, 3,
            "a failed txn with no writes changes nothing"
        );
    }

    /// A user's write checked before a revocation committed is checked again when applied
    /// after it, and refused; one checked at the current auth revision is applied as it is.
    #[test]
    fn a_write_checked_before_a_revocation_is_refused_when_applied_after_it() {
        use crate::types::AuthChange;
        let mut driven = Driven::new();
        let name = |s: &str| s.to_string();
        let setup = [
            AuthChange::RoleAdd { name: name("app") },
            AuthChange::RoleGrantPermission {
                role: name("app"),
                permission: api::Permission {
                    kind: api::PermissionKind::ReadWrite,
                    key: b"app/".to_vec(),
                    range_end: b"app0".to_vec(),
                },
            },
            AuthChange::UserAdd {
                name: name("app"),
                password_hash: None,
            },
            AuthChange::UserGrantRole {
                user: name("app"),
                role: name("app"),
            },
            AuthChange::UserAdd {
                name: name("root"),
                password_hash: None,
            },
            AuthChange::RoleAdd { name: name("root") },
            AuthChange::UserGrantRole {
                user: name("root"),
                role: name("root"),
            },
            AuthChange::Enable {
                token_key: vec![1; 32],
            },
        ];
        let results = driven.apply(setup.into_iter().map(Command::Auth).collect());
        assert!(results.iter().all(|r| *r == CommandResult::AuthChanged));
        let checked_at = driven.store.reader().auth().revision;
        let as_app = |command: Command| Command::AsUser {
            user: name("app"),
            auth_revision: checked_at,
            command: Box::new(command),
        };
        assert!(matches!(
            driven.apply(vec![as_app(put("app/a", "1"))])[0],
            CommandResult::Put(_)
        ));
        let revoke = Command::Auth(AuthChange::UserRevokeRole {
            user: name("app"),
            role: name("app"),
        });
        let results = driven.apply(vec![revoke, as_app(put("app/b", "2"))]);
        assert_eq!(
            results[1],
            CommandResult::Refused(api::AuthError::PermissionDenied.into())
        );
        let keys: Vec<_> = driven
            .range_at(0)
            .unwrap()
            .into_iter()
            .map(|kv| kv.key)
            .collect();
        assert_eq!(keys, vec![b"app/a".to_vec()]);
        assert!(!driven.store.reader().auth().is_root("app"));
    }

    #[test]
    fn a_refused_put_in_a_txn_leaves_no_trace() {
        let mut driven = Driven::new();
        let txn = api::TxnRequest {
            success: vec![
                api::RequestOp::Put(api::PutRequest {
                    key: b"x".to_vec(),
                    value: b"1".to_vec(),
                    ..api::PutRequest::default()
                }),
                api::RequestOp::Put(api::PutRequest {
                    key: b"y".to_vec(),
                    value: b"1".to_vec(),
                    lease: 42,
                    ..api::PutRequest::default()
                }),
            ],
            ..api::TxnRequest::default()
        };
        let results = driven.apply(vec![Command::Txn(txn), put("z", "after")]);
        assert_eq!(
            results[0],
            CommandResult::Refused(ApplyError::LeaseNotFound(42))
        );
        let keys: Vec<_> = driven
            .range_at(0)
            .unwrap()
            .into_iter()
            .map(|kv| (kv.key, kv.mod_revision))
            .collect();
        assert_eq!(keys, vec![(b"z".to_vec(), 2)]);
    }

    #[test]
    fn revoking_a_lease_deletes_its_keys_in_one_revision() {
        let mut driven = Driven::new();
        let grant = Command::LeaseGrant(api::LeaseGrantRequest { ttl: 10, id: 7 });
        driven.apply(vec![grant.clone()]);
        assert_eq!(
            driven.apply(vec![grant]),
            vec![CommandResult::Refused(ApplyError::LeaseExists(7))]
        );
        let leased = |key: &str| {
            Command::Put(api::PutRequest {
                key: key.into(),
                value: b"v".to_vec(),
                lease: 7,
                ..api::PutRequest::default()
            })
        };
        driven.apply(vec![leased("a"), leased("b"), put("c", "free")]);
        assert_eq!(
            driven.store.reader().lease_keys(7).unwrap(),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        let results = driven.apply(vec![Command::LeaseRevoke { id: 7 }]);
        assert_eq!(results, vec![CommandResult::LeaseRevoked]);
        assert_eq!(
            driven.store.revisions.current, 5,
            "one revision for both deletes"
        );
        let left: Vec<_> = driven
            .range_at(0)
            .unwrap()
            .into_iter()
            .map(|kv| kv.key)
            .collect();
        assert_eq!(left, vec![b"c".to_vec()]);
        let (changes, _) = driven
            .store
            .reader()
            .changes_since(&[0], &[0], 5, 5, 100, false)
            .unwrap()
            .unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].events.len(), 2);
        assert_eq!(
            driven.apply(vec![Command::LeaseRevoke { id: 7 }]),
            vec![CommandResult::Refused(ApplyError::LeaseNotFound(7))]
        );
    }

    /// Builds a snapshot of `driven` and feeds its stream, in pieces of `piece` bytes, to a
    /// receiver preparing it in `snapshots`; `damage` may change the pieces on the way.
    async fn receive_snapshot_of(
        driven: &mut Driven,
        snapshots: &Path,
        piece: usize,
        damage: impl Fn(usize, &mut Vec<u8>),
    ) -> io::Result<PreparedSnapshot> {
        let snapshot = driven
            .store
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await?;
        let mut pieces = snapshot_chunks(snapshot.snapshot, piece, 1);
        let mut receiver = install::SnapshotReceiver::start(snapshots.to_path_buf());
        let mut number = 0;
        while let Some(mut data) = pieces.recv().await.transpose()? {
            damage(number, &mut data);
            number += 1;
            receiver.push(data).await?;
        }
        receiver.finish().await
    }

    /// A new store that received a snapshot of `leader` in pieces of `piece` bytes and installed
    /// it.
    async fn follower_of(leader: &mut Driven, piece: usize) -> Driven {
        let mut follower = Driven::new();
        let snapshots = follower.store.snapshot_dir.clone();
        let prepared = receive_snapshot_of(leader, &snapshots, piece, |_, _| {})
            .await
            .unwrap();
        let meta = prepared.meta.clone();
        follower
            .store
            .install_snapshot(&meta, SnapshotData::Prepared(Box::new(prepared)))
            .await
            .unwrap();
        follower
    }

    /// A snapshot received in pieces, prepared as it arrives and installed by ingesting its
    /// tables, is the state it was taken from: every revision, the revision counters, leases.
    #[tokio::test]
    async fn a_snapshot_received_in_pieces_installs_as_the_state_it_was_taken_from() {
        let mut leader = Driven::new();
        for round in 0..50u16 {
            let key = (round % 7) as u8;
            leader.apply(vec![
                command(round as u8, key, round),
                command(0, key + 1, round),
            ]);
        }
        leader.apply(vec![Command::LeaseGrant(api::LeaseGrantRequest {
            ttl: 60,
            id: 7,
        })]);
        let follower = follower_of(&mut leader, 997).await;
        let snapshots = follower.store.snapshot_dir.clone();

        assert_eq!(follower.store.revisions, leader.store.revisions);
        for revision in 1..=leader.store.revisions.current {
            assert_eq!(follower.range_at(revision), leader.range_at(revision));
        }
        assert_eq!(follower.store.shared.leases.ids(), vec![7]);
        let left: Vec<_> = fs::read_dir(&snapshots)
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 1, "only the new checkpoint stays: {left:?}");
    }

    /// The lengths of the records in the `data` family of `driven`'s state.
    fn data_record_lengths(driven: &Driven) -> Vec<usize> {
        let db = driven.store.state.current();
        let data = column_family(&db, CF_DATA).unwrap();
        db.iterator_cf(data, IteratorMode::Start)
            .map(|item| item.unwrap().1.len())
            .collect()
    }

    /// Before format 3 the `data` records held each current value too (as a version 3 stream
    /// carries them). Such records still read as they did, and a snapshot of them installs with
    /// each large value stored once, in the history; new writes store it once from the start.
    #[tokio::test]
    async fn values_stored_twice_before_format_3_read_the_same_and_install_stored_once() {
        let large = "v".repeat(mvcc::INLINE_VALUE_BYTES + 1);
        let mut leader = Driven::new();
        leader.apply(vec![put("a", "1"), put("b", "2")]);
        leader.apply(vec![put("a", &large), delete("b", "")]);
        leader.apply(vec![put("c", "small")]);
        let metadata_len = encode(&RecordMeta::of(&Record::default())).unwrap().len();
        let stored_once = |driven: &Driven| {
            let lengths = data_record_lengths(driven);
            assert_eq!(
                lengths[0], metadata_len,
                "the large value is in the history only"
            );
            assert!(
                lengths[1] > metadata_len,
                "the small value is kept with its key"
            );
        };
        stored_once(&leader);
        let expected = leader.range_at(0).unwrap();
        {
            let db = leader.store.state.current();
            let data = column_family(&db, CF_DATA).unwrap();
            for kv in &expected {
                let record = Record {
                    create_revision: kv.create_revision,
                    mod_revision: kv.mod_revision,
                    version: kv.version,
                    lease: kv.lease,
                    value: kv.value.clone(),
                };
                db.put_cf(data, &kv.key, encode(&record).unwrap()).unwrap();
            }
        }
        assert!(data_record_lengths(&leader)[0] > large.len());
        assert_eq!(leader.range_at(0).unwrap(), expected);
        let value = leader.store.reader().get(b"a").unwrap();
        assert_eq!(value, Some(large.clone().into_bytes()));

        let follower = follower_of(&mut leader, 64).await;
        stored_once(&follower);
        for revision in 1..=leader.store.revisions.current {
            assert_eq!(follower.range_at(revision), leader.range_at(revision));
        }
    }

    /// A damaged piece fails the preparation, which removes what it wrote.
    #[tokio::test]
    async fn a_damaged_snapshot_is_refused_and_leaves_nothing_behind() {
        let mut leader = Driven::new();
        for round in 0..20u16 {
            leader.apply(vec![put(&format!("key{round}"), "value")]);
        }
        let dir = tempfile::tempdir().unwrap();
        let prepared = receive_snapshot_of(&mut leader, dir.path(), 256, |number, data| {
            if number == 2 {
                data[10] ^= 1;
            }
        })
        .await;
        assert!(prepared.is_err());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// A failure is retried while attempts remain; the last failure is the answer.
    #[test]
    fn work_with_attempts_is_retried_until_it_succeeds_or_the_attempts_run_out() {
        let failing_first = |failures: u32| {
            let mut calls = 0;
            move || {
                calls += 1;
                if calls <= failures {
                    Err(io::Error::other(format!("failure {calls}")))
                } else {
                    Ok(calls)
                }
            }
        };
        assert_eq!(with_attempts("test", 3, failing_first(0)).unwrap(), 1);
        assert_eq!(with_attempts("test", 3, failing_first(2)).unwrap(), 3);
        let last = with_attempts("test", 3, failing_first(3)).unwrap_err();
        assert_eq!(last.to_string(), "failure 3");
    }

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
