//! The history as format 3 kept it, and its conversion to format 4's changes (see `mvcc`).
//!
//! Format 3 kept every version of a key in a `history` family keyed by the escaped key and the
//! inverted revision, and the keys each revision changed in an `events` family keyed by revision
//! and change number. Format 4 keeps the versions in the `changes` family, keyed by revision,
//! each naming the revision of the one before it, and the deletes' tombstones in `deleted`. A
//! state of format 3 reaches a node in three ways, and each goes through [`convert`]: its own data
//! directory or checkpoint ([`upgrade_database`], when opened) and a snapshot stream of version 3
//! or 4 from a node not yet upgraded (`install`).

use std::io;
use std::path::Path;
use std::path::PathBuf;

use rocksdb::Options;
use rocksdb::WriteBatch;
use rocksdb::WriteOptions;
use rocksdb::DB;

use super::column_family;
use super::decode;
use super::io_err;
use super::mvcc;
use super::mvcc::ChangeRecord;
use super::mvcc::Record;
use super::mvcc::CF_CHANGES;
use super::mvcc::CF_DATA;
use super::mvcc::CF_DELETED;
use super::mvcc::CF_LEASES;
use super::mvcc::CF_LEASE_KEYS;
use super::open_rocksdb;
use super::write_until_space;
use super::WalSyncs;
use crate::error::Error;

pub(super) const CF_HISTORY: &str = "history";
pub(super) const CF_EVENTS: &str = "events";
/// Format 3's families that format 4 no longer has, in the order they are dropped (see
/// [`upgrade_database`]).
pub(super) const HISTORY_FAMILIES: &[&str] = &[CF_HISTORY, CF_EVENTS];
/// The key-space families of a version 3 or 4 snapshot stream, in the order it numbers them.
pub(super) const STREAM_FAMILIES: &[&str] =
    &[CF_DATA, CF_HISTORY, CF_EVENTS, CF_LEASES, CF_LEASE_KEYS];
/// Writes per batch of a conversion, which bound its memory whatever the history's length.
const BATCH_WRITES: usize = 10_000;

/// Converts the state database at `path` (a generation or a checkpoint) to format 4 if it holds
/// format 3's families, opening it with `column_families` besides them. The new families are
/// flushed before the old ones are dropped, the history before the events: a crash at any point
/// converts again, from what is left, on the next open.
pub(super) fn upgrade_database(path: &Path, column_families: &[&str]) -> Result<(), Error> {
    let Ok(existing) = DB::list_cf(&Options::default(), path) else {
        // No database there yet.
        return Ok(());
    };
    let legacy: Vec<&str> = HISTORY_FAMILIES
        .iter()
        .copied()
        .filter(|family| existing.iter().any(|e| e == family))
        .collect();
    if legacy.is_empty() {
        return Ok(());
    }
    tracing::info!("converting the history in {} to format 4", path.display());
    let storage_err = |e: io::Error| Error::Storage {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let mut families = column_families.to_vec();
    families.extend(&legacy);
    let mut db = open_rocksdb(path, &families, WalSyncs::Rarely)?;
    convert(&db, &db).map_err(storage_err)?;
    for family in [CF_CHANGES, CF_DELETED] {
        let handle = column_family(&db, family).map_err(storage_err)?;
        db.flush_cf(handle).map_err(|e| storage_err(io_err(e)))?;
    }
    for family in legacy {
        db.drop_cf(family).map_err(|e| storage_err(io_err(e)))?;
    }
    Ok(())
}

/// Writes into `into` the changes and tombstones that format 3's history and events in `from`
/// describe (`into` may be `from`). Either family may be missing: what an interrupted upgrade
/// left.
pub(super) fn convert(from: &DB, into: &DB) -> io::Result<()> {
    if from.cf_handle(CF_HISTORY).is_some() {
        convert_versions(from, into)?;
    }
    if from.cf_handle(CF_EVENTS).is_some() {
        number_changes(from, into)?;
    }
    Ok(())
}

/// Writes a change for every version in the history, each naming the version before it, and a
/// tombstone for every delete. The history lists a key's versions newest first, so each version
/// is written once the next one read, its predecessor, is known. Change numbers are left at 0
/// for [`number_changes`].
fn convert_versions(from: &DB, into: &DB) -> io::Result<()> {
    let mut writes = Writes::new(into);
    let mut newer: Option<(Vec<u8>, i64, Option<Record>)> = None;
    let mut versions = from.raw_iterator_cf(column_family(from, CF_HISTORY)?);
    versions.seek_to_first();
    while let (Some(encoded), Some(bytes)) = (versions.key(), versions.value()) {
        let (key, inverted) = mvcc::split_escaped_key(encoded)?;
        let revision = (u64::MAX - u64::from_be_bytes(inverted)) as i64;
        let version: Option<Record> = decode(bytes)?;
        if let Some((newer_key, newer_revision, newer_version)) = newer.take() {
            let previous = match (&newer_version, &version) {
                _ if newer_key != key => None,
                // A delete ends a life: the version after it began a new one.
                (_, None) => None,
                // A life that ended before this version began (its end already compacted away).
                (Some(newer), Some(_)) if newer.create_revision > revision => None,
                _ => Some(revision),
            };
            writes.add_version(&newer_key, newer_revision, newer_version, previous)?;
        }
        newer = Some((key, revision, version));
        versions.next();
    }
    versions.status().map_err(io_err)?;
    if let Some((key, revision, version)) = newer {
        writes.add_version(&key, revision, version, None)?;
    }
    writes.finish()
}

/// Gives each change the number its event had within its revision (compaction has removed the
/// events of revisions before it, whose changes keep number 0: no watcher reads them).
fn number_changes(from: &DB, into: &DB) -> io::Result<()> {
    let changes = column_family(into, CF_CHANGES)?;
    let mut writes = Writes::new(into);
    let mut events = from.raw_iterator_cf(column_family(from, CF_EVENTS)?);
    events.seek_to_first();
    while let (Some(event), Some(key)) = (events.key(), events.value()) {
        let (revision, number) = split_event_key(event)?;
        let at = mvcc::change_key(revision, key);
        if number != 0 {
            if let Some(bytes) = into.get_pinned_cf(changes, &at).map_err(io_err)? {
                let change: ChangeRecord = decode(&bytes)?;
                let numbered =
                    mvcc::encode_change(change.previous, number, change.version.as_ref())?;
                writes.put(CF_CHANGES, &at, &numbered)?;
            }
        }
        events.next();
    }
    events.status().map_err(io_err)?;
    writes.finish()
}

/// Splits format 3's event key: the revision and the change's number within it.
fn split_event_key(key: &[u8]) -> io::Result<(i64, u32)> {
    let corrupt = || io::Error::new(io::ErrorKind::InvalidData, "malformed event key");
    let revision: [u8; 8] = key
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(corrupt)?;
    let number: [u8; 4] = key
        .get(8..12)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(corrupt)?;
    Ok((
        u64::from_be_bytes(revision) as i64,
        u32::from_be_bytes(number),
    ))
}

/// A conversion's writes, in batches of [`BATCH_WRITES`].
struct Writes<'d> {
    db: &'d DB,
    batch: WriteBatch,
}

impl<'d> Writes<'d> {
    fn new(db: &'d DB) -> Self {
        Writes {
            db,
            batch: WriteBatch::default(),
        }
    }

    /// The change that made `version` of `key` at `revision`, and a delete's tombstone.
    fn add_version(
        &mut self,
        key: &[u8],
        revision: i64,
        version: Option<Record>,
        previous: Option<i64>,
    ) -> io::Result<()> {
        let change = mvcc::encode_change(previous, 0, version.as_ref())?;
        self.put(CF_CHANGES, &mvcc::change_key(revision, key), &change)?;
        if version.is_none() {
            self.put(CF_DELETED, &mvcc::tombstone_key(key, revision), &[])?;
        }
        Ok(())
    }

    fn put(&mut self, family: &str, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.batch
            .put_cf(column_family(self.db, family)?, key, value);
        if self.batch.len() >= BATCH_WRITES {
            self.write()?;
        }
        Ok(())
    }

    fn write(&mut self) -> io::Result<()> {
        let batch = std::mem::take(&mut self.batch);
        write_until_space("format upgrade", self.db, batch, &WriteOptions::default())
    }

    fn finish(mut self) -> io::Result<()> {
        self.write()
    }
}

/// Converts format 3's history and events of a snapshot stream, written as the tables `tables`
/// (family, file), into changes and tombstones handed to `add` family by family in key order, as
/// tables are written. The conversion needs the history by key and writes the changes by
/// revision, so it goes through a scratch database in `scratch`, which RocksDB sorts on disk
/// whatever the size. The caller removes `scratch` with the rest of a failed preparation; a
/// finished conversion removes it at once, as it holds a copy of the history.
pub(super) fn convert_tables(
    scratch: &Path,
    tables: &[(&'static str, PathBuf)],
    mut add: impl FnMut(&'static str, &[u8], &[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let db = open_rocksdb(
        scratch,
        &[CF_HISTORY, CF_EVENTS, CF_CHANGES, CF_DELETED],
        WalSyncs::Rarely,
    )
    .map_err(|e| io::Error::other(e.to_string()))?;
    let mut options = rocksdb::IngestExternalFileOptions::default();
    options.set_move_files(true);
    for (family, table) in tables {
        db.ingest_external_file_cf_opts(column_family(&db, family)?, &options, vec![table])
            .map_err(io_err)?;
    }
    convert(&db, &db)?;
    for family in [CF_CHANGES, CF_DELETED] {
        let mut pairs = db.raw_iterator_cf(column_family(&db, family)?);
        pairs.seek_to_first();
        while let (Some(key), Some(value)) = (pairs.key(), pairs.value()) {
            add(family, key, value)?;
            pairs.next();
        }
        pairs.status().map_err(io_err)?;
    }
    drop(db);
    std::fs::remove_dir_all(scratch)
}
