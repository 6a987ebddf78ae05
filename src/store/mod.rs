//! Everything a node keeps on disk: the Raft log (`log_store`), the state machine (`state_machine`),
//! the snapshots that let the log be compacted (`snapshot`) and their installation as a new state
//! (`install`), the data directory that holds them (`data_dir`), and a new node's data directory
//! made from a backup (`restore`).
//!
//! Both the log and the state machine are RocksDB databases, in separate directories so each can be
//! tuned, synced and (for the state machine) replaced on its own.

mod apply;
mod auth;
mod data_dir;
mod install;
mod lease;
mod legacy;
mod log_store;
mod mvcc;
mod recent_entries;
mod restore;
mod snapshot;
mod state_db;
mod state_machine;
mod watch;
mod worker;

pub use apply::RevisionChanges;
pub use auth::AuthState;
pub use auth::User;
pub use data_dir::DataDir;
pub use install::PreparedSnapshot;
pub use install::SnapshotReceiver;
pub use lease::LeaseTable;
pub use log_store::AppendSync;
pub use log_store::LogStore;
pub use mvcc::Revisions;
pub use restore::restore;
pub use restore::Restored;
pub use snapshot::verify as verify_snapshot;
pub use snapshot::Checkpoint;
pub use snapshot::EtcdSeal;
pub use snapshot::MemberRecords;
pub use snapshot::SnapshotData;
pub use state_machine::snapshot_chunks;
pub use state_machine::DiskUsage;
pub use state_machine::StateMachineStore;
pub use state_machine::StateReader;
pub use watch::run_watch;
pub use watch::WatchHub;
pub use watch::WATCH_QUEUE;

use std::borrow::Borrow;
use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::OnceLock;
use std::time::Duration;
use std::time::Instant;

use rocksdb::BlockBasedIndexType;
use rocksdb::BlockBasedOptions;
use rocksdb::Cache;
use rocksdb::ColumnFamilyDescriptor;
use rocksdb::Options;
use rocksdb::WriteBatch;
use rocksdb::WriteBufferManager;
use rocksdb::WriteOptions;
use rocksdb::DB;

use crate::error::Error;
use crate::locks::lock;

/// WAL kept per database before RocksDB flushes memtables to let old WAL files go; also what a
/// restart may have to replay.
const MAX_WAL_BYTES: u64 = 32 << 20;
/// Old WAL files the Raft log's database keeps to write over (see [`open_rocksdb`]).
const RECYCLED_WAL_FILES: usize = 4;
/// Memtable memory of both databases together, charged to [`block_cache`].
const MEMTABLE_BUDGET_BYTES: usize = 64 << 20;

/// How often a database's WAL is synced, which decides whether its files are worth recycling.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum WalSyncs {
    /// Every write waits for a WAL fsync (the Raft log), which the writer asks for itself.
    EveryAppend,
    /// Writes go to the page cache; a sync comes with a snapshot or a flush (the state machine,
    /// whose snapshot installs also skip the WAL, which RocksDB refuses beside recycling).
    Rarely,
}

/// Opens (creating if needed) a RocksDB database with the given column families.
///
/// Errors are mapped by [`Error::from_rocksdb`], so a second process on the same directory is
/// reported as such instead of as a raw LOCK-file message.
fn open_rocksdb(path: &Path, column_families: &[&str], wal: WalSyncs) -> Result<DB, Error> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // RocksDB defaults to aborting the process on some corruption paths; paranoid checks make it
    // return an error at open instead, which we turn into a one-line message.
    opts.set_paranoid_checks(true);
    opts.set_keep_log_file_num(4);
    // A WAL file can go only once every column family with data in it has been flushed, and the
    // small meta families (vote, commit index, applied index) rarely fill a memtable, so without
    // a cap the WAL grows to hundreds of MiB under load, and a restart replays all of it (seconds
    // with a million keys). Past the cap RocksDB flushes the families holding the oldest file.
    opts.set_max_total_wal_size(MAX_WAL_BYTES);
    // Appending to a fresh file makes each fsync also journal the file's new size (on ext4, 220
    // µs against 145 µs for the same 4 KiB overwritten in place, measured here, and the journal
    // serialises the fsyncs of several processes); a recycled WAL file is overwritten instead.
    // Records carry their file's number, so what is left of the file's previous life after a
    // crash reads as the log's end (RocksDB allows this with point-in-time recovery, our mode).
    if wal == WalSyncs::EveryAppend {
        opts.set_recycle_log_file_num(RECYCLED_WAL_FILES);
        // An append waits for its fsync anyway, so its WAL record stays in RocksDB's buffer
        // until the syncer writes and syncs everything buffered in one call (`flush_wal`): one
        // write system call per fsync instead of one per append. Synced writes (a vote, a
        // truncation) write the buffer themselves, in order.
        opts.set_manual_wal_flush(true);
    }
    // Memtables across all families of both databases, flushed when full: bounds the memory a
    // node uses whatever the write rate (RocksDB's default allows 128 MiB per family).
    opts.set_write_buffer_manager(memtable_budget());
    let cfs = column_families
        .iter()
        .map(|name| ColumnFamilyDescriptor::new(*name, family_options(name)));
    DB::open_cf_descriptors(&opts, path, cfs).map_err(|e| Error::from_rocksdb(path, e))
}

/// Families read by point lookups on a hot path: applying a write reads the current record of
/// every key it changes, a get reads one (and a large value in its change), and a read at a past
/// revision follows a key's chain of changes. Without a
/// filter such a lookup searches every memtable and every level-0 file down to the one holding
/// the key (measured: a put's lookup cost more than its writes); with a bloom filter on each
/// table it skips the ones that cannot hold it, for about 10 bits per key of memory.
const POINT_LOOKUP_FAMILIES: &[&str] = &[mvcc::CF_DATA, mvcc::CF_CHANGES, mvcc::CF_LEASES];

/// The families among [`POINT_LOOKUP_FAMILIES`] whose memtables keep a bloom filter too: those
/// looked up on the write path, where a key written long ago is looked for in every memtable
/// first. Every insert pays for the filter (a write at a random place in it); the `changes`
/// family's inserts, one per put, are not looked up by puts or by current reads, so its
/// memtables go without (measured: 3 % less CPU per put, BENCHMARKS.md).
const MEMTABLE_FILTER_FAMILIES: &[&str] = &[mvcc::CF_DATA, mvcc::CF_LEASES];

/// Families written at random keys. Each insert into a memtable is a skip-list search (the log's
/// and the changes' keys only grow, so theirs find their place at once).
const RANDOM_WRITE_FAMILIES: &[&str] = &[mvcc::CF_DATA, mvcc::CF_DELETED, mvcc::CF_LEASES];

/// The memtable size of the families in [`RANDOM_WRITE_FAMILIES`]: in a smaller memtable the
/// skip-list search of an insert is
/// shorter and stays in the CPU's caches. Measured against RocksDB's 64 MiB: 11 % more puts at
/// 256 clients over 10,000 keys, unchanged over a million (BENCHMARKS.md).
const RANDOM_WRITE_MEMTABLE_BYTES: usize = 8 << 20;

/// Level-0 tables that start a compaction out of level 0 (RocksDB's default, stated here because
/// [`RANDOM_WRITE_LEVEL_BASE_BYTES`] is derived from it).
const LEVEL0_COMPACTION_TRIGGER: i32 = 4;

/// The size of the first level below level 0 in the families written at random keys: level 0's
/// own size when it is compacted, as RocksDB's tuning guide advises. Each level-0 table of such a
/// family spans the whole key space, so a compaction out of level 0 rewrites all of the level it
/// goes to. With RocksDB's default of 256 MiB that level was the last one until it held 256 MiB,
/// and every compaction rewrote all of it: under a steady write load the servers' CPU per put
/// grew from about 50 µs to 77–104 µs within two minutes (BENCHMARKS.md). With this base the
/// tables pass through levels each ten times larger than the one above, so a byte is rewritten a
/// bounded number of times per level however large the history grows.
const RANDOM_WRITE_LEVEL_BASE_BYTES: u64 =
    LEVEL0_COMPACTION_TRIGGER as u64 * RANDOM_WRITE_MEMTABLE_BYTES as u64;

/// RocksDB's memory in this process: the block cache of every column family of both databases,
/// and the memtables, which are charged to it. Index and filter blocks live in the cache too,
/// instead of beside each open table file (RocksDB's default), where their memory grew with the
/// data (a member holding 10 million keys peaked at 387 MiB) and a restart loaded all of them
/// before serving. One budget for all of it keeps a node's memory flat whatever it holds and
/// however fast it is written; what writes do not use, reads get.
const BLOCK_CACHE_BYTES: usize = 128 << 20;

fn block_cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(|| Cache::new_lru_cache(BLOCK_CACHE_BYTES))
}

/// The memtable limit shared by both databases. Writes never stall on it: past the limit RocksDB
/// flushes, and a flush that falls behind only lets the memtables grow for a while.
fn memtable_budget() -> &'static WriteBufferManager {
    static BUDGET: OnceLock<WriteBufferManager> = OnceLock::new();
    BUDGET.get_or_init(|| {
        WriteBufferManager::new_write_buffer_manager_with_cache(
            MEMTABLE_BUDGET_BYTES,
            false,
            block_cache().clone(),
        )
    })
}

/// The options of column family `name`.
fn family_options(name: &str) -> Options {
    let mut options = Options::default();
    let mut tables = BlockBasedOptions::default();
    tables.set_block_cache(block_cache());
    tables.set_cache_index_and_filter_blocks(true);
    // Partitioned: a large table's index and filter are read and cached in small pieces, so one
    // lookup does not bring a whole table's worth into the cache; the small top level of each
    // stays pinned, and so do the level-0 tables' (the newest data, read the most).
    tables.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
    tables.set_partition_filters(true);
    tables.set_pin_top_level_index_and_filter(true);
    tables.set_pin_l0_filter_and_index_blocks_in_cache(true);
    if POINT_LOOKUP_FAMILIES.contains(&name) {
        tables.set_bloom_filter(10.0, false);
    }
    if MEMTABLE_FILTER_FAMILIES.contains(&name) {
        options.set_memtable_whole_key_filtering(true);
        options.set_memtable_prefix_bloom_ratio(0.02);
    }
    if RANDOM_WRITE_FAMILIES.contains(&name) {
        options.set_write_buffer_size(RANDOM_WRITE_MEMTABLE_BYTES);
        options.set_level_zero_file_num_compaction_trigger(LEVEL0_COMPACTION_TRIGGER);
        options.set_max_bytes_for_level_base(RANDOM_WRITE_LEVEL_BASE_BYTES);
    }
    options.set_block_based_table_factory(&tables);
    options
}

/// Looks up a column family that [`open_rocksdb`] was asked to create, as an I/O error if missing
/// (it cannot be, short of a bug, but a peer-reachable path must not panic).
fn column_family<'a>(db: &'a DB, name: &str) -> io::Result<&'a rocksdb::ColumnFamily> {
    db.cf_handle(name)
        .ok_or_else(|| io::Error::other(format!("column family {name} is missing")))
}

/// Converts a RocksDB error on a running database into the `io::Error` openraft's traits expect.
fn io_err(err: rocksdb::Error) -> io::Error {
    io::Error::other(err.into_string())
}

/// Encodes a value with bincode for storage; the types stored are all plain data.
fn encode<T: serde::Serialize>(value: &T) -> io::Result<Vec<u8>> {
    bincode::serialize(value).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Decodes a stored value; a decode failure means the database is corrupt.
fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    bincode::deserialize(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Set while some storage write is waiting for disk space; the node uses it to explain why a
/// request timed out. One flag per process: a full disk is a property of the machine.
static WAITING_FOR_SPACE: AtomicBool = AtomicBool::new(false);

/// Free space a write waits for. RocksDB that runs out of space in the middle of a write refuses
/// every later write until it is reopened, so writes stop short of a full disk instead. The
/// reserve covers typical appends and flushes; an unusually large append on an almost full disk
/// can still hit the limit, after which a restart is needed.
const SPACE_RESERVE: u64 = 16 << 20;
/// Longest pause between checks while waiting for space.
const FULL_DISK_RETRY: Duration = Duration::from_secs(1);

/// Free space far enough above [`SPACE_RESERVE`] that a reading of it stays good for
/// [`FREE_SPACE_READING_LIFETIME`]: no program writes a GiB in that time, and our own writes in
/// it are a few MiB at most. Below it every write reads the free space afresh.
const PLENTY_OF_SPACE: u64 = 64 * SPACE_RESERVE;
const FREE_SPACE_READING_LIFETIME: Duration = Duration::from_millis(10);

/// The free space of the file system holding `dir`, as [`fs4::available_space`] says, but read
/// at most once per [`FREE_SPACE_READING_LIFETIME`] while there is [`PLENTY_OF_SPACE`]: every
/// write checks it, and the statvfs behind it was 1 % of a put's CPU (BENCHMARKS.md).
fn available_space(dir: &Path) -> io::Result<u64> {
    /// The last plentiful reading per directory: a node's databases, and the state machine's
    /// later generations (one per snapshot installed), hence the bound.
    const MAX_READINGS: usize = 16;
    static READINGS: OnceLock<Mutex<HashMap<PathBuf, (Instant, u64)>>> = OnceLock::new();
    let readings = READINGS.get_or_init(Mutex::default);
    if let Some(&(at, free)) = lock(readings).get(dir) {
        if at.elapsed() < FREE_SPACE_READING_LIFETIME {
            return Ok(free);
        }
    }
    let free = fs4::available_space(dir)?;
    let mut readings = lock(readings);
    if free >= PLENTY_OF_SPACE {
        if readings.len() >= MAX_READINGS {
            readings.clear();
        }
        readings.insert(dir.to_path_buf(), (Instant::now(), free));
    } else {
        readings.remove(dir);
    }
    Ok(free)
}

/// True while a storage write is waiting for disk space to be freed.
pub fn waiting_for_space() -> bool {
    WAITING_FOR_SPACE.load(Ordering::Relaxed)
}

/// Runs a RocksDB write to the database in `dir`, first waiting until its file system has
/// [`SPACE_RESERVE`] free, and waiting again if the write still finds the disk full. openraft
/// stops for good on a storage error, so failing would turn a full disk, which usually gets
/// freed, into an outage that needs a restart. Writes are atomic, so retrying one is safe;
/// meanwhile requests time out with an error that names the full disk.
fn until_space<T>(
    what: &str,
    dir: &Path,
    mut write: impl FnMut() -> Result<T, rocksdb::Error>,
) -> io::Result<T> {
    let mut pause = Duration::from_millis(50);
    loop {
        let free = available_space(dir).unwrap_or(u64::MAX);
        let outcome = (free >= SPACE_RESERVE).then(&mut write);
        match outcome {
            Some(Err(e)) if !e.as_ref().contains("No space left") => return Err(io_err(e)),
            Some(Ok(value)) => {
                if WAITING_FOR_SPACE.swap(false, Ordering::Relaxed) {
                    tracing::info!("{what}: disk space is available again");
                }
                return Ok(value);
            }
            _ => {
                if !WAITING_FOR_SPACE.swap(true, Ordering::Relaxed) {
                    tracing::error!(
                        "{what}: the disk holding {} is full ({free} bytes free); waiting until space is freed",
                        dir.display()
                    );
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(FULL_DISK_RETRY);
            }
        }
    }
}

/// Writes `batch` to `db` with `opts`, waiting out a full disk like [`until_space`]. RocksDB
/// consumes the batch it is given, so a copy of its bytes is kept to rebuild it for a retry; the
/// first attempt uses the batch itself.
fn write_until_space(
    what: &str,
    db: &DB,
    batch: WriteBatch,
    opts: &WriteOptions,
) -> io::Result<()> {
    let bytes = batch.data().to_vec();
    let mut first = Some(batch);
    until_space(what, db.path(), || {
        let batch = first
            .take()
            .unwrap_or_else(|| WriteBatch::from_data(&bytes));
        db.write_opt(batch, opts)
    })
}

/// Writes `batch` (WAL on, not synced) on the calling async task when RocksDB can take it at once
/// (an append to the memtable and to the WAL in the page cache, with the disk's free-space
/// reserve intact), and otherwise on the blocking pool, which waits out write stalls and a full
/// disk. A put crosses storage three times (log append, replication read, apply), and each trip to
/// another thread costs tens of microseconds, a large part of a put's latency; a write that would
/// have to wait never runs here.
async fn write_soon<D>(what: &'static str, db: &Arc<D>, batch: WriteBatch) -> io::Result<()>
where
    D: Borrow<DB> + Send + Sync + 'static,
{
    let bytes = batch.data().to_vec();
    // Read afresh unless there is plenty (see `available_space`): a reading kept longer would let
    // a write through after another program filled the disk, and RocksDB that hits "no space"
    // mid-write refuses every later write until it is reopened.
    let free = available_space((**db).borrow().path()).unwrap_or(0);
    if free.saturating_sub(bytes.len() as u64) >= SPACE_RESERVE {
        let mut at_once = WriteOptions::default();
        at_once.set_no_slowdown(true);
        match (**db).borrow().write_opt(batch, &at_once) {
            Ok(()) => return Ok(()),
            // Nothing was written (a write is atomic); the blocking path retries it.
            Err(e) => tracing::debug!("{what}: write cannot complete at once ({e}); waiting"),
        }
    }
    let db = db.clone();
    blocking(move || {
        write_until_space(
            what,
            (*db).borrow(),
            WriteBatch::from_data(&bytes),
            &WriteOptions::default(),
        )
    })
    .await
}

/// Runs blocking RocksDB work off the async workers, so a slow disk never stalls the runtime that
/// carries heartbeats.
async fn blocking<T, F>(work: F) -> io::Result<T>
where
    F: FnOnce() -> io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| io::Error::other(format!("storage task failed: {e}")))?
}
