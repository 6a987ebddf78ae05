//! Turning a snapshot stream into a state generation at the speed of the disk.
//!
//! A stream carries each column family's pairs in key order (the sender reads them out of RocksDB
//! in order), so [`prepare`] writes them, as they arrive, straight into one SST file per family
//! with RocksDB's `SstFileWriter`, and [`PreparedSnapshot::ingest_tables`] moves the finished files
//! into an empty new generation. Every byte is written once: no memtable, no flush, no compaction
//! (an empty database takes ingested files at its bottom level). A node receiving a snapshot
//! prepares it while the chunks arrive ([`SnapshotReceiver`]), so once the last chunk is in, the
//! stream has been verified and only the ingest and the switch are left.

use std::fs;
use std::io;
use std::io::BufRead;
use std::path::Path;
use std::path::PathBuf;

use rocksdb::IngestExternalFileOptions;
use rocksdb::Options;
use rocksdb::SstFileWriter;
use rocksdb::DB;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::column_family;
use super::family_options;
use super::io_err;
use super::legacy;
use super::mvcc;
use super::mvcc::Current;
use super::mvcc::Record;
use super::mvcc::CF_CHANGES;
use super::mvcc::CF_DATA;
use super::mvcc::MVCC_FAMILIES;
use super::snapshot;
use super::snapshot::invalid;
use super::snapshot::MemberRecords;
use super::snapshot::PieceReader;
use super::snapshot::SnapshotReader;
use super::state_db::RemoveWhenRetired;
use super::state_machine::STREAMED_META_KEYS;
use super::until_space;
use crate::types::SnapshotMeta;

/// The number a snapshot stream gives the meta family's pairs (the key-space families are
/// numbered by their place in [`MVCC_FAMILIES`]).
pub(super) const STREAM_META_FAMILY: u8 = MVCC_FAMILIES.len() as u8;
/// Pieces of a stream being received that may wait for the preparing task: the receiver's memory
/// for a transfer is about this many chunks, and the sender's next chunk travels while the task
/// works through the queue.
const RECEIVE_QUEUE: usize = 4;
/// Prefix of the directory a stream's tables are written into until they are ingested.
const PREPARING: &str = "preparing-";

/// A snapshot stream read to its verified end and written out as SST files, ready to become a
/// generation's content.
#[derive(Debug)]
pub struct PreparedSnapshot {
    /// The stream's header.
    pub meta: SnapshotMeta,
    /// The member records the stream carried.
    pub records: MemberRecords,
    /// The meta family's pairs that belong to the key space (revision counters, users and
    /// roles), few and small: written with the applied log id when the snapshot is installed.
    meta_pairs: Vec<(Vec<u8>, Vec<u8>)>,
    /// The column families the stream had pairs for, each with a finished table in `dir`.
    tables: Vec<&'static str>,
    /// The directory holding the tables, removed with this value: once ingested, the generation
    /// holds its own links to the files.
    dir: RemoveWhenRetired,
}

impl PreparedSnapshot {
    /// Moves the tables into `db`, an empty generation (a link, not a copy: the files are ours
    /// alone). Retrying after a full disk is safe: a failed ingest leaves the file where it was.
    pub(super) fn ingest_tables(&self, db: &DB) -> io::Result<()> {
        let mut options = IngestExternalFileOptions::default();
        options.set_move_files(true);
        for family in &self.tables {
            let handle = column_family(db, family)?;
            let table = table_path(self.dir.path(), family);
            until_space("snapshot install", db.path(), || {
                db.ingest_external_file_cf_opts(handle, &options, vec![&table])
            })?;
        }
        Ok(())
    }

    /// The meta family's pairs to write beside the tables.
    pub(super) fn meta_pairs(&self) -> &[(Vec<u8>, Vec<u8>)] {
        &self.meta_pairs
    }
}

/// Reads `reader` to its verified end, writing its pairs into SST files in a new directory in
/// `snapshot_dir` (removed again on failure). Fails on a damaged stream, a meta record it does
/// not know, or pairs out of key order.
pub(super) fn prepare<R: BufRead>(
    mut reader: SnapshotReader<R>,
    snapshot_dir: &Path,
) -> io::Result<PreparedSnapshot> {
    let dir = RemoveWhenRetired::new(snapshot_dir.join(snapshot::unique_name(PREPARING)));
    dir.retire();
    fs::create_dir(dir.path())?;
    let options = family_options_of(MVCC_FAMILIES);
    let mut tables = TableWriters::new(dir.path(), MVCC_FAMILIES, &options);
    // A stream from a node of the previous format carries its history by key; those tables are
    // converted once the stream is complete.
    let legacy_options = family_options_of(legacy::HISTORY_FAMILIES);
    let mut legacy_tables =
        TableWriters::new(dir.path(), legacy::HISTORY_FAMILIES, &legacy_options);
    let families = reader.key_space_families();
    let mut meta_pairs = Vec::new();
    let mut plain_pairs = 0u32;
    while let Some(pair) = reader.next_pair()? {
        match pair.family {
            Some(STREAM_META_FAMILY) => {
                if !STREAMED_META_KEYS.contains(&pair.key.as_slice()) {
                    return Err(invalid("unexpected meta record in the snapshot"));
                }
                meta_pairs.push((pair.key, pair.value));
            }
            Some(number) => {
                let family = families
                    .get(usize::from(number))
                    .ok_or_else(|| invalid("unknown column family in the snapshot"))?;
                if legacy::HISTORY_FAMILIES.contains(family) {
                    legacy_tables.put(family, &pair.key, &pair.value)?;
                } else {
                    put_family_pair(&mut tables, family, &pair.key, pair.value)?;
                }
            }
            None => {
                put_plain_pair(&mut tables, plain_pairs, &pair.key, pair.value)?;
                plain_pairs = plain_pairs.saturating_add(1);
            }
        }
    }
    let legacy_tables: Vec<_> = legacy_tables
        .finish()?
        .into_iter()
        .map(|family| (family, table_path(dir.path(), family)))
        .collect();
    if !legacy_tables.is_empty() {
        let scratch = dir.path().join("converting");
        legacy::convert_tables(&scratch, &legacy_tables, |family, key, value| {
            tables.put(family, key, value)
        })?;
    }
    let tables = tables.finish()?;
    Ok(PreparedSnapshot {
        meta: reader.meta,
        records: reader.records,
        meta_pairs,
        tables,
        dir,
    })
}

/// Adds a pair of the key-space family `family` to its table. A version 3 stream's `data`
/// records all carry their values; a large one is kept in its change only.
fn put_family_pair(
    tables: &mut TableWriters<'_>,
    family: &'static str,
    key: &[u8],
    value: Vec<u8>,
) -> io::Result<()> {
    if family != CF_DATA {
        return tables.put(family, key, &value);
    }
    let current = match mvcc::decode_current(&value)? {
        Current::Whole(record) => mvcc::encode_current(&record)?,
        Current::ValueInChange(_) => value,
    };
    tables.put(family, key, &current)
}

/// Adds a plain key and value of a version 1 or 2 stream (from before revisions): the key as
/// created at revision 1 by the change numbered `change`. Such a stream lists its keys in order,
/// so their change keys (revision 1, then the key) come in order too. The store starts at
/// revision 1, so no revision counter is written.
fn put_plain_pair(
    tables: &mut TableWriters<'_>,
    change: u32,
    key: &[u8],
    value: Vec<u8>,
) -> io::Result<()> {
    let record = Record {
        create_revision: 1,
        mod_revision: 1,
        version: 1,
        lease: 0,
        value,
    };
    tables.put(CF_DATA, key, &mvcc::encode_current(&record)?)?;
    tables.put(
        CF_CHANGES,
        &mvcc::change_key(1, key),
        &mvcc::encode_change(None, change, Some(&record))?,
    )
}

/// The options of each of `families`, as the generation opens them.
fn family_options_of(families: &[&str]) -> Vec<Options> {
    families.iter().map(|f| family_options(f)).collect()
}

/// One SST file per key-space family, each opened when its family's first pair arrives (RocksDB
/// cannot finish an empty table).
struct TableWriters<'o> {
    dir: &'o Path,
    /// The families tables may be written for.
    families: &'static [&'static str],
    /// The families' options, as the generation opens them, so the tables are built alike.
    options: &'o [Options],
    /// By family, in the order of `families`.
    writers: Vec<Option<SstFileWriter<'o>>>,
}

impl<'o> TableWriters<'o> {
    fn new(dir: &'o Path, families: &'static [&'static str], options: &'o [Options]) -> Self {
        TableWriters {
            dir,
            families,
            options,
            writers: families.iter().map(|_| None).collect(),
        }
    }

    fn put(&mut self, family: &'static str, key: &[u8], value: &[u8]) -> io::Result<()> {
        let number = self
            .families
            .iter()
            .position(|f| *f == family)
            .ok_or_else(|| invalid("unknown column family in the snapshot"))?;
        let (Some(slot), Some(options)) = (self.writers.get_mut(number), self.options.get(number))
        else {
            return Err(invalid("unknown column family in the snapshot"));
        };
        let writer = match slot {
            Some(writer) => writer,
            None => {
                let writer = SstFileWriter::create(options);
                writer.open(table_path(self.dir, family)).map_err(io_err)?;
                slot.insert(writer)
            }
        };
        writer.put(key, value).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("snapshot pairs of {family}: {e}"),
            )
        })
    }

    /// Finishes (and syncs: RocksDB's writer does) every table, and lists their families.
    fn finish(self) -> io::Result<Vec<&'static str>> {
        let mut tables = Vec::new();
        for (family, writer) in self.families.iter().zip(self.writers) {
            if let Some(mut writer) = writer {
                writer.finish().map_err(io_err)?;
                tables.push(*family);
            }
        }
        Ok(tables)
    }
}

fn table_path(dir: &Path, family: &str) -> PathBuf {
    dir.join(format!("{family}.sst"))
}

/// A snapshot stream being prepared while it arrives: each piece goes to a blocking task that
/// decodes it and writes the tables, at most [`RECEIVE_QUEUE`] pieces behind.
pub struct SnapshotReceiver {
    pieces: mpsc::Sender<io::Result<Vec<u8>>>,
    /// The preparing task, until its outcome has been taken.
    prepared: Option<JoinHandle<io::Result<PreparedSnapshot>>>,
}

impl SnapshotReceiver {
    /// Starts preparing a stream whose tables go into `snapshot_dir`. Dropping the receiver
    /// before [`Self::finish`] stops the task, which then removes what it wrote.
    pub fn start(snapshot_dir: PathBuf) -> Self {
        let (pieces, queued) = mpsc::channel(RECEIVE_QUEUE);
        let prepared = tokio::task::spawn_blocking(move || {
            let reader = SnapshotReader::new(PieceReader::new(queued))?;
            prepare(reader, &snapshot_dir)
        });
        SnapshotReceiver {
            pieces,
            prepared: Some(prepared),
        }
    }

    /// Hands over the next piece of the stream, waiting while the task is [`RECEIVE_QUEUE`]
    /// pieces behind. If the task has stopped (a damaged stream, a full disk), answers why; the
    /// receiver is then done with.
    pub async fn push(&mut self, piece: Vec<u8>) -> io::Result<()> {
        if self.pieces.send(Ok(piece)).await.is_ok() {
            return Ok(());
        }
        match outcome(&mut self.prepared).await {
            Err(e) => Err(e),
            Ok(_) => Err(invalid("data after the end of the snapshot stream")),
        }
    }

    /// Ends the stream and waits for the prepared snapshot, verified to its end.
    pub async fn finish(self) -> io::Result<PreparedSnapshot> {
        let SnapshotReceiver {
            pieces,
            mut prepared,
        } = self;
        drop(pieces);
        outcome(&mut prepared).await
    }
}

/// What the preparing task ended with; the task's outcome can be taken once.
async fn outcome(
    task: &mut Option<JoinHandle<io::Result<PreparedSnapshot>>>,
) -> io::Result<PreparedSnapshot> {
    let task = task
        .take()
        .ok_or_else(|| io::Error::other("the snapshot's preparation has already ended"))?;
    task.await
        .map_err(|e| io::Error::other(format!("snapshot preparation failed: {e}")))?
}
