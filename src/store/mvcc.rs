//! The key space with its history (MVCC): what a revision is, how each change is recorded, and
//! how reads at a revision, watch catch-up and compaction find their way through the records.
//!
//! Column families of the state machine database (all written in the apply's one WriteBatch):
//!
//! | family | key | value |
//! | --- | --- | --- |
//! | `data` | user key | the key's current version: a [`Record`] if its value is small, else its [`RecordMeta`] ([`encode_current`]) |
//! | `changes` | [`change_key`]: revision (big-endian), then user key | [`ChangeRecord`]: the version made, `None` for a delete, and the revision of the key's previous version |
//! | `deleted` | [`tombstone_key`]: escaped user key, then revision | empty: the revisions at which each key was deleted |
//! | `leases` | lease id (big-endian) | [`LeaseRecord`] |
//! | `lease_keys` | lease id, user key | empty: the keys attached to each lease |
//!
//! A write inserts one record at a random place (the key's `data` record; a delete, its tombstone
//! too) and one at the end of the `changes` family, which only grows: RocksDB's memtable finds the
//! end at once, while a random insert is a skip-list search, the largest single cost of a put
//! (BENCHMARKS.md). The history therefore has no index by key: each version names the revision of
//! the one before it, so the versions of one key since it was last created form a chain back from
//! its `data` record, and a deleted key's chain starts at its tombstone. A read at revision R
//! follows the chain until it reaches a version at or before R: one lookup per newer version,
//! bounded by compaction. A version made by a create names no previous version, so a read before
//! the key's creation looks in `deleted` for the first tombstone after R, whose chain holds the
//! version in force then, if there was one.
//!
//! A value larger than [`INLINE_VALUE_BYTES`] is stored once, in the change that made it: the
//! current version's value is found at `(mod_revision, key)` in `changes`, so the state on disk
//! is the live data plus the history not yet compacted, not twice the live data. A smaller value
//! is kept in the `data` record as well, where it costs less than the second lookup a read would
//! otherwise make.
//!
//! Compaction to revision C is logical at once (`compact_revision`: reads and watches below it are
//! refused) and physical in the background ([`trim_history`]): for each change made before C, the
//! version it replaced goes, and a delete goes with its tombstone. Versions still visible at C or
//! later are never touched, so reads at any revision from C on are unaffected by how far trimming
//! has got. Before format 4 the history was kept by key, and the events by revision, in two
//! families (`store::legacy` converts them).

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::io;
use std::ops::Bound;

use rocksdb::Direction;
use rocksdb::IteratorMode;
use rocksdb::ReadOptions;
use rocksdb::WriteBatch;
use rocksdb::DB;
use serde::Deserialize;
use serde::Serialize;

use super::column_family;
use super::decode;
use super::encode;
use crate::api::KeySpan;
use crate::api::KeyValue;

pub(super) const CF_DATA: &str = "data";
pub(super) const CF_CHANGES: &str = "changes";
pub(super) const CF_DELETED: &str = "deleted";
pub(super) const CF_LEASES: &str = "leases";
pub(super) const CF_LEASE_KEYS: &str = "lease_keys";
/// The families holding the key space and leases, in the order a snapshot stream numbers them.
pub(super) const MVCC_FAMILIES: &[&str] =
    &[CF_DATA, CF_CHANGES, CF_DELETED, CF_LEASES, CF_LEASE_KEYS];

/// Meta keys (in the state machine's meta family) that belong to the key space and travel in
/// snapshots with it.
pub(super) const KEY_REVISION: &[u8] = b"revision";
pub(super) const KEY_COMPACT_REVISION: &[u8] = b"compact_revision";
/// History below this revision has been trimmed (see [`trim_history`]). Each member trims on its
/// own; a snapshot carries the point its changes were trimmed to.
pub(super) const KEY_TRIMMED_TO: &[u8] = b"trimmed_to";

/// A key's version as stored: everything of a [`KeyValue`] but the key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Record {
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
    #[serde(with = "crate::api::bytes")]
    pub value: Vec<u8>,
}

impl Record {
    pub fn into_key_value(self, key: Vec<u8>) -> KeyValue {
        KeyValue {
            key,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            value: self.value,
            lease: self.lease,
        }
    }
}

/// A [`Record`] without its value. Its encoding is the leading fields of a [`Record`]'s (bincode
/// writes the fields in order and `decode` ignores the bytes after them), so it also decodes from
/// a whole record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct RecordMeta {
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

impl RecordMeta {
    pub fn of(record: &Record) -> RecordMeta {
        RecordMeta {
            create_revision: record.create_revision,
            mod_revision: record.mod_revision,
            version: record.version,
            lease: record.lease,
        }
    }

    /// The record this describes, with an empty value.
    pub fn without_value(self) -> Record {
        Record {
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            lease: self.lease,
            value: Vec::new(),
        }
    }
}

/// The metadata of recently written keys as the last written batch left them, so that a put to a
/// key written moments ago does not look its previous version up in RocksDB (measured: that
/// lookup was the largest single cost of applying a put). Only the apply path uses it, in
/// batch order; a key it does not hold is read from the database. Bounded: it starts afresh
/// when full.
#[derive(Debug, Default)]
pub(super) struct KnownKeys {
    keys: HashMap<Vec<u8>, RecordMeta>,
}

/// Keys [`KnownKeys`] holds at most.
const KNOWN_KEYS: usize = 1 << 16;

impl KnownKeys {
    fn get(&self, key: &[u8]) -> Option<RecordMeta> {
        self.keys.get(key).copied()
    }

    /// Records what a batch that is now written did to the current keys (`None`: deleted).
    pub fn written(&mut self, changes: Vec<(Vec<u8>, Option<RecordMeta>)>) {
        for (key, meta) in changes {
            match meta {
                Some(meta) => {
                    if self.keys.len() >= KNOWN_KEYS && !self.keys.contains_key(&key) {
                        self.keys.clear();
                    }
                    self.keys.insert(key, meta);
                }
                None => {
                    self.keys.remove(&key);
                }
            }
        }
    }

    /// Forgets everything: the state was replaced, or a batch may or may not have been written.
    pub fn clear(&mut self) {
        self.keys.clear();
    }
}

/// A lease as stored: its TTL in seconds. Its expiry is not stored: only the leader counts it,
/// and a new leader starts every lease's TTL afresh (see `store::lease`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct LeaseRecord {
    pub ttl: i64,
}

/// The revision counters of a state, kept in its meta family.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Revisions {
    /// The newest revision: 1 for an empty store, one more for every write that changed a key.
    pub current: i64,
    /// Revisions below this have been compacted away; 0 or 1 when nothing has been.
    pub compacted: i64,
}

/// Where the change that gave `key` a version at `revision` is recorded: the revision first, so
/// that the family only grows and a revision's changes are adjacent.
pub(super) fn change_key(revision: i64, key: &[u8]) -> Vec<u8> {
    let mut encoded = Vec::with_capacity(8 + key.len());
    encoded.extend_from_slice(&revision_bytes(revision));
    encoded.extend_from_slice(key);
    encoded
}

/// Splits a change key into the revision and the user key.
fn split_change_key(encoded: &[u8]) -> io::Result<(i64, &[u8])> {
    let revision = encoded
        .get(..8)
        .and_then(|bytes| bytes.try_into().ok())
        .map(|bytes| u64::from_be_bytes(bytes) as i64)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed change key"))?;
    Ok((revision, &encoded[8..]))
}

fn revision_bytes(revision: i64) -> [u8; 8] {
    (revision.max(0) as u64).to_be_bytes()
}

/// Memcomparable encoding of `key` followed by the `revision` it was deleted at: 0x00 becomes
/// 0x00 0xff, and 0x00 0x00 ends the key, so a key's tombstones are adjacent, oldest first, and
/// never mixed with another key's.
pub(super) fn tombstone_key(key: &[u8], revision: i64) -> Vec<u8> {
    let mut encoded = escaped_key(key);
    encoded.extend_from_slice(&revision_bytes(revision));
    encoded
}

pub(super) fn escaped_key(key: &[u8]) -> Vec<u8> {
    let mut encoded = Vec::with_capacity(key.len() + 10);
    for &byte in key {
        encoded.push(byte);
        if byte == 0 {
            encoded.push(0xff);
        }
    }
    encoded.extend_from_slice(&[0, 0]);
    encoded
}

/// Splits an escaped key followed by eight bytes of revision (a tombstone key, or a history key
/// of format 3) into the user key and the revision's bytes.
pub(super) fn split_escaped_key(encoded: &[u8]) -> io::Result<(Vec<u8>, [u8; 8])> {
    let corrupt = || io::Error::new(io::ErrorKind::InvalidData, "malformed escaped key");
    let mut key = Vec::with_capacity(encoded.len());
    let mut i = 0;
    loop {
        match (encoded.get(i), encoded.get(i + 1)) {
            (Some(0), Some(0)) => break,
            (Some(0), Some(0xff)) => {
                key.push(0);
                i += 2;
            }
            (Some(&byte), _) if byte != 0 => {
                key.push(byte);
                i += 1;
            }
            _ => return Err(corrupt()),
        }
    }
    let rest: [u8; 8] = encoded
        .get(i + 2..)
        .and_then(|rest| rest.try_into().ok())
        .ok_or_else(corrupt)?;
    Ok((key, rest))
}

/// Splits a tombstone key into the user key and the revision of the delete.
fn split_tombstone_key(encoded: &[u8]) -> io::Result<(Vec<u8>, i64)> {
    let (key, revision) = split_escaped_key(encoded)?;
    Ok((key, u64::from_be_bytes(revision) as i64))
}

/// A change as the `changes` family records it. `previous` comes first, and the version's
/// metadata before its value, so that [`ChangeHead`] decodes from the same bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ChangeRecord {
    /// The revision of the key's version before this change; `None` when the change created the
    /// key (it was absent before).
    pub previous: Option<i64>,
    /// The change's number within its revision: watchers see a revision's changes in the order
    /// they were made.
    pub change: u32,
    /// The version made; `None` for a delete.
    pub version: Option<Record>,
}

/// Encodes a [`ChangeRecord`] from its parts, without copying the version.
pub(super) fn encode_change(
    previous: Option<i64>,
    change: u32,
    version: Option<&Record>,
) -> io::Result<Vec<u8>> {
    // A tuple encodes as the struct of the same fields in the same order.
    encode(&(previous, change, version))
}

/// The leading fields of a [`ChangeRecord`], without the version's value: what following a
/// chain of versions needs.
#[derive(Debug, Clone, Copy, Deserialize)]
struct ChangeHead {
    previous: Option<i64>,
    /// Only there to be skipped: the fields follow in the stored order.
    _change: u32,
    version: Option<RecordMeta>,
}

pub(super) fn lease_key(id: i64) -> [u8; 8] {
    id.to_be_bytes()
}

pub(super) fn lease_key_entry(id: i64, key: &[u8]) -> Vec<u8> {
    let mut entry = lease_key(id).to_vec();
    entry.extend_from_slice(key);
    entry
}

/// Maps RocksDB's "not in memory" answer (a read with `ReadTier::BlockCache` that would need the
/// disk) to `WouldBlock`, so a caller can tell it from a real failure and retry off the worker.
pub(super) fn read_err(err: rocksdb::Error) -> io::Error {
    if err.kind() == rocksdb::ErrorKind::Incomplete {
        io::Error::new(io::ErrorKind::WouldBlock, "needs a disk read")
    } else {
        super::io_err(err)
    }
}

/// Values up to this many bytes are kept in the key's `data` record as well as in its change,
/// so that reading them takes one lookup: measured, the second lookup made a 128-byte get 8 to
/// 13 % slower, while storing a value once made 64 KiB puts 30 % faster.
pub(super) const INLINE_VALUE_BYTES: usize = 256;

/// The length of an encoded [`RecordMeta`]; a whole [`Record`] is always longer (its value's
/// length comes after the same fields).
const META_BYTES: usize = 32;

/// How a `data` record holds the current version of its key.
pub(super) enum Current {
    /// The whole version, value included.
    Whole(Record),
    /// The version's metadata; its value is in the change that made it, at `(mod_revision, key)`.
    ValueInChange(RecordMeta),
}

/// Encodes `record` as the current version of its key: whole if its value is small.
pub(super) fn encode_current(record: &Record) -> io::Result<Vec<u8>> {
    if record.value.len() <= INLINE_VALUE_BYTES {
        encode(record)
    } else {
        encode(&RecordMeta::of(record))
    }
}

/// Decodes a `data` record written by [`encode_current`] (or, before format 3, always whole).
pub(super) fn decode_current(bytes: &[u8]) -> io::Result<Current> {
    if bytes.len() == META_BYTES {
        decode(bytes).map(Current::ValueInChange)
    } else {
        decode(bytes).map(Current::Whole)
    }
}

impl Current {
    /// The version's metadata.
    fn meta(&self) -> RecordMeta {
        match self {
            Current::Whole(record) => RecordMeta::of(record),
            Current::ValueInChange(meta) => *meta,
        }
    }

    /// The version in full, value included when `values` asks for it: from its change, with
    /// `read_change` (what the changes family holds at a change key), when this record does not
    /// hold it.
    fn resolve<B: AsRef<[u8]>>(
        self,
        key: &[u8],
        values: Values,
        read_change: impl FnOnce(&[u8]) -> io::Result<Option<B>>,
    ) -> io::Result<Record> {
        let meta = match (self, values) {
            (Current::Whole(record), _) => return Ok(record),
            (Current::ValueInChange(meta), Values::Skip) => return Ok(meta.without_value()),
            (Current::ValueInChange(meta), Values::Read) => meta,
        };
        let stored = read_change(&change_key(meta.mod_revision, key))?;
        current_version(key, meta, stored.as_ref().map(AsRef::as_ref))
    }
}

/// The version holding the value of current version `meta` of `key`, decoded from `stored` (what
/// the changes family holds at `(meta.mod_revision, key)`). The change is never trimmed while its
/// version is current, so its absence means the database is damaged.
fn current_version(key: &[u8], meta: RecordMeta, stored: Option<&[u8]>) -> io::Result<Record> {
    let version = stored
        .map(decode::<ChangeRecord>)
        .transpose()?
        .and_then(|change| change.version);
    version.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the value of key {:?} at revision {} is missing from the changes",
                String::from_utf8_lossy(key),
                meta.mod_revision
            ),
        )
    })
}

/// The current version of `key` as `current`, its `data` record, holds it: with its value
/// (looked up in the history if need be) when `values` says so.
pub(super) fn current_record(
    db: &DB,
    options: &impl Fn() -> ReadOptions,
    key: &[u8],
    current: Current,
    values: Values,
) -> io::Result<Record> {
    let changes = column_family(db, CF_CHANGES)?;
    current.resolve(key, values, |at| {
        db.get_pinned_cf_opt(changes, at, &options())
            .map_err(read_err)
    })
}

/// One column family's pending writes of a batch being built, readable before they are written.
type PendingFamily = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// How to undo one write: the family, the key, and what `pending` held for it before (`None`:
/// nothing).
type Undo = (&'static str, Vec<u8>, Option<Option<Vec<u8>>>);

/// A database seen through the writes of a batch not yet written: every write is remembered, so
/// later commands of the same batch read it (RocksDB cannot, until the batch is written), and can
/// be undone back to a savepoint (a refused request leaves no trace). Only the last write of each
/// key matters, so the batch is made from what is remembered, at the end.
pub(super) struct Overlay<'db> {
    pub db: &'db DB,
    read_options: fn() -> ReadOptions,
    known: &'db KnownKeys,
    pending: BTreeMap<&'static str, PendingFamily>,
    /// While a savepoint is set: what each write replaced in `pending`, newest last.
    undo: Option<Vec<Undo>>,
}

impl<'db> Overlay<'db> {
    /// `read_options` makes the options of every read (the apply path first tries memory only).
    pub fn new(db: &'db DB, read_options: fn() -> ReadOptions, known: &'db KnownKeys) -> Self {
        Overlay {
            db,
            read_options,
            known,
            pending: BTreeMap::new(),
            undo: None,
        }
    }

    pub fn put(&mut self, family: &'static str, key: &[u8], value: Vec<u8>) -> io::Result<()> {
        self.remember(family, key, Some(value));
        Ok(())
    }

    pub fn delete(&mut self, family: &'static str, key: &[u8]) -> io::Result<()> {
        self.remember(family, key, None);
        Ok(())
    }

    fn remember(&mut self, family: &'static str, key: &[u8], value: Option<Vec<u8>>) {
        let replaced = self
            .pending
            .entry(family)
            .or_default()
            .insert(key.to_vec(), value);
        if let Some(undo) = &mut self.undo {
            undo.push((family, key.to_vec(), replaced));
        }
    }

    /// Starts remembering how to undo the writes that follow.
    pub fn savepoint(&mut self) {
        self.undo = Some(Vec::new());
    }

    /// Undoes every write since the savepoint, and ends it.
    pub fn rollback(&mut self) {
        for (family, key, replaced) in self.undo.take().into_iter().flatten().rev() {
            let pending = self.pending.entry(family).or_default();
            match replaced {
                Some(previous) => pending.insert(key, previous),
                None => pending.remove(&key),
            };
        }
    }

    /// Keeps the writes since the savepoint, and ends it.
    pub fn release(&mut self) {
        self.undo = None;
    }

    /// The batch of every write made.
    pub fn into_batch(self) -> io::Result<WriteBatch> {
        let mut batch = WriteBatch::default();
        for (family, pending) in self.pending {
            let cf = column_family(self.db, family)?;
            for (key, value) in pending {
                match value {
                    Some(value) => batch.put_cf(cf, key, value),
                    None => batch.delete_cf(cf, key),
                }
            }
        }
        Ok(batch)
    }

    pub fn get(&self, family: &'static str, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        if let Some(pending) = self.pending.get(family).and_then(|p| p.get(key)) {
            return Ok(pending.clone());
        }
        self.db
            .get_cf_opt(column_family(self.db, family)?, key, &(self.read_options)())
            .map_err(read_err)
    }

    /// Calls `visit` with every pair of `family` from `start` on, in key order, until it returns
    /// false: the database's pairs merged with the pending writes.
    pub fn scan(
        &self,
        family: &'static str,
        start: &[u8],
        mut visit: impl FnMut(&[u8], &[u8]) -> io::Result<bool>,
    ) -> io::Result<()> {
        let empty = PendingFamily::new();
        let pending = self.pending.get(family).unwrap_or(&empty);
        let mut pending = pending
            .range::<[u8], _>((Bound::Included(start), Bound::Unbounded))
            .peekable();
        let mut stored = self.db.iterator_cf_opt(
            column_family(self.db, family)?,
            (self.read_options)(),
            IteratorMode::From(start, Direction::Forward),
        );
        let mut next_stored = stored.next().transpose().map_err(read_err)?;
        loop {
            let take_pending = match (&next_stored, pending.peek()) {
                (None, None) => return Ok(()),
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some((key, _)), Some((pending_key, _))) => pending_key.as_slice() <= &key[..],
            };
            let keep_going = if take_pending {
                let Some((key, value)) = pending.next() else {
                    return Ok(());
                };
                if next_stored
                    .as_ref()
                    .is_some_and(|(stored_key, _)| stored_key[..] == key[..])
                {
                    next_stored = stored.next().transpose().map_err(read_err)?;
                }
                match value {
                    Some(value) => visit(key, value)?,
                    None => true,
                }
            } else {
                let Some((key, value)) = next_stored.take() else {
                    return Ok(());
                };
                next_stored = stored.next().transpose().map_err(read_err)?;
                visit(&key, &value)?
            };
            if !keep_going {
                return Ok(());
            }
        }
    }

    /// The current record of `key`, value included.
    pub fn record(&self, key: &[u8]) -> io::Result<Option<Record>> {
        let Some(bytes) = self.get(CF_DATA, key)? else {
            return Ok(None);
        };
        self.current_record(key, decode_current(&bytes)?, Values::Read)
            .map(Some)
    }

    /// [`current_record`] through the pending writes: the version may have been made by this
    /// batch.
    fn current_record(&self, key: &[u8], current: Current, values: Values) -> io::Result<Record> {
        current.resolve(key, values, |at| self.get(CF_CHANGES, at))
    }

    /// [`Overlay::record`] with an empty value, for a caller that does not use it: answered from
    /// [`KnownKeys`] when it holds the key.
    pub fn record_without_value(&self, key: &[u8]) -> io::Result<Option<Record>> {
        let pending = self
            .pending
            .get(CF_DATA)
            .is_some_and(|pending| pending.contains_key(key));
        if let (false, Some(known)) = (pending, self.known.get(key)) {
            return Ok(Some(known.without_value()));
        }
        let meta: Option<RecordMeta> = self
            .get(CF_DATA, key)?
            .map(|bytes| decode(&bytes))
            .transpose()?;
        Ok(meta.map(RecordMeta::without_value))
    }

    /// What the batch does to the current keys, for [`KnownKeys::written`] once it is written.
    pub fn key_changes(&self) -> io::Result<Vec<(Vec<u8>, Option<RecordMeta>)>> {
        let Some(pending) = self.pending.get(CF_DATA) else {
            return Ok(Vec::new());
        };
        pending
            .iter()
            .map(|(key, value)| Ok((key.clone(), value.as_deref().map(decode).transpose()?)))
            .collect()
    }

    /// Every current key in `span` with its record, in key order; with the value where `values`
    /// says to read it (for a large value, one more lookup) or the `data` record holds it.
    pub fn records_in(
        &self,
        span: &KeySpan<'_>,
        values: Values,
    ) -> io::Result<Vec<(Vec<u8>, Record)>> {
        let mut found = Vec::new();
        if span.is_empty() {
            return Ok(found);
        }
        let mut add = |key: &[u8], bytes: &[u8]| {
            let record = self.current_record(key, decode_current(bytes)?, values)?;
            found.push((key.to_vec(), record));
            Ok::<_, io::Error>(())
        };
        if let KeySpan::One(key) = span {
            if let Some(bytes) = self.get(CF_DATA, key)? {
                add(key, &bytes)?;
            }
            return Ok(found);
        }
        self.scan(CF_DATA, span.start(), |key, value| {
            if span.is_past(key) {
                return Ok(false);
            }
            add(key, value)?;
            Ok(true)
        })?;
        Ok(found)
    }
}

/// Whether a read of current records also reads their values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Values {
    Read,
    Skip,
}

impl Values {
    /// Read the values when they are `needed`.
    pub fn when(needed: bool) -> Values {
        if needed {
            Values::Read
        } else {
            Values::Skip
        }
    }
}

/// What a read at some revision finds: the keys in `span` as they were at `revision`, in key
/// order, one visit per key (`visit` returns false to stop). `revision` must not be compacted.
///
/// The keys that may have had a version then are the current ones and the deleted ones: the
/// `data` and `deleted` families, walked side by side.
pub(super) fn visit_at_revision(
    db: &DB,
    options: impl Fn() -> ReadOptions,
    span: &KeySpan<'_>,
    revision: i64,
    mut visit: impl FnMut(Vec<u8>, Record) -> io::Result<bool>,
) -> io::Result<()> {
    if span.is_empty() {
        return Ok(());
    }
    let mut current = db.raw_iterator_cf_opt(column_family(db, CF_DATA)?, options());
    current.seek(span.start());
    let mut tombstones = db.raw_iterator_cf_opt(column_family(db, CF_DELETED)?, options());
    tombstones.seek(escaped_key(span.start()));
    loop {
        current.status().map_err(read_err)?;
        tombstones.status().map_err(read_err)?;
        let next_current = current.key().filter(|key| !span.is_past(key));
        let next_deleted = match tombstones.key() {
            Some(encoded) => Some(split_tombstone_key(encoded)?.0),
            None => None,
        }
        .filter(|key| !span.is_past(key));
        let key = match (next_current, next_deleted) {
            (None, None) => return Ok(()),
            (Some(current), None) => current.to_vec(),
            (None, Some(deleted)) => deleted,
            (Some(current), Some(deleted)) => deleted.min(current.to_vec()),
        };
        let record = match (current.key(), current.value()) {
            (Some(at), Some(bytes)) if at == &key[..] => {
                let record = decode_current(bytes)?;
                current.next();
                Some(record)
            }
            _ => None,
        };
        let mut first_delete_after = None;
        while let Some(encoded) = tombstones.key() {
            let (deleted, at) = split_tombstone_key(encoded)?;
            if deleted != key {
                break;
            }
            if at > revision && first_delete_after.is_none() {
                first_delete_after = Some(at);
            }
            tombstones.next();
        }
        let found = version_in_force(db, &options, &key, record, revision, first_delete_after)?;
        if let Some(record) = found {
            if span.contains(&key) && !visit(key, record)? {
                return Ok(());
            }
        }
    }
}

/// The version of `key` in force at `revision` (`None`: absent then), given its current record
/// `current` (`None`: deleted now) and the revision of its first delete after `revision`.
fn version_in_force(
    db: &DB,
    options: &impl Fn() -> ReadOptions,
    key: &[u8],
    current: Option<Current>,
    revision: i64,
    first_delete_after: Option<i64>,
) -> io::Result<Option<Record>> {
    let newer = match current {
        Some(current) if current.meta().mod_revision <= revision => {
            return current_record(db, options, key, current, Values::Read).map(Some);
        }
        // The key existed at `revision` only if its current life began by then.
        Some(current) if current.meta().create_revision <= revision => current.meta().mod_revision,
        // Otherwise the life it had then, if any, ended with its first delete after `revision`.
        _ => match first_delete_after {
            Some(delete) => delete,
            None => return Ok(None),
        },
    };
    version_before(db, options, key, newer, revision)
}

/// The version of `key` in force at `revision`, found by following the chain of versions back
/// from the one made at `newer`, a revision after it.
fn version_before(
    db: &DB,
    options: &impl Fn() -> ReadOptions,
    key: &[u8],
    mut newer: i64,
    revision: i64,
) -> io::Result<Option<Record>> {
    let changes = column_family(db, CF_CHANGES)?;
    loop {
        let Some(bytes) = db
            .get_pinned_cf_opt(changes, change_key(newer, key), &options())
            .map_err(read_err)?
        else {
            // Trimmed: only a compacted revision's read gets here.
            return Ok(None);
        };
        let head: ChangeHead = decode(&bytes)?;
        match head.previous {
            None => return Ok(None),
            Some(previous) if previous <= revision => {
                return version_made(db, options, key, previous);
            }
            Some(previous) => newer = previous,
        }
    }
}

/// The version of `key` made exactly at `revision` (`None` for a delete, or when compaction has
/// trimmed it: a delete that was the newest change before the compacted revision goes).
pub(super) fn version_made(
    db: &DB,
    options: &impl Fn() -> ReadOptions,
    key: &[u8],
    revision: i64,
) -> io::Result<Option<Record>> {
    let changes = column_family(db, CF_CHANGES)?;
    match db
        .get_pinned_cf_opt(changes, change_key(revision, key), &options())
        .map_err(read_err)?
    {
        Some(bytes) => Ok(decode::<ChangeRecord>(&bytes)?.version),
        None => Ok(None),
    }
}

/// One change as watchers catch up on it.
pub(super) struct StoredChange {
    pub revision: i64,
    pub key: Vec<u8>,
    /// `None` for a delete.
    pub version: Option<Record>,
    /// The revision of the version it replaced, if the key existed before.
    pub previous: Option<i64>,
}

/// The changes of whole revisions from `from` on, in order: at most about `max_changes` (a
/// revision is never split) and none after `to`. Keys outside `span` are skipped. Also returns,
/// when it stopped at `max_changes`, the last revision it read (the next read starts after it).
pub(super) fn changes_between(
    db: &DB,
    options: &impl Fn() -> ReadOptions,
    span: &KeySpan<'_>,
    from: i64,
    to: i64,
    max_changes: usize,
) -> io::Result<(Vec<StoredChange>, Option<i64>)> {
    let changes = column_family(db, CF_CHANGES)?;
    let mut found = Vec::new();
    let mut last_revision = None;
    let mut stopped_at = None;
    let stored = db.iterator_cf_opt(
        changes,
        options(),
        IteratorMode::From(&revision_bytes(from), Direction::Forward),
    );
    for (scanned, item) in stored.enumerate() {
        let (encoded, bytes) = item.map_err(super::io_err)?;
        let (revision, key) = split_change_key(&encoded)?;
        if revision > to {
            break;
        }
        if scanned >= max_changes && last_revision != Some(revision) {
            stopped_at = last_revision;
            break;
        }
        last_revision = Some(revision);
        if !span.contains(key) {
            continue;
        }
        let change: ChangeRecord = decode(&bytes)?;
        found.push((
            change.change,
            StoredChange {
                revision,
                key: key.to_vec(),
                version: change.version,
                previous: change.previous,
            },
        ));
    }
    // A revision's changes are stored in key order; watchers see them in the order made.
    found.sort_by_key(|(change, stored)| (stored.revision, *change));
    Ok((
        found.into_iter().map(|(_, stored)| stored).collect(),
        stopped_at,
    ))
}

/// Deletes, in one batch, the history made unreachable by compacting to `compact_to`, starting at
/// the changes of revision `from`: at most about `max_changes` changes. Returns the revision
/// trimmed up to (exclusive), to be passed as `from` next time; it is recorded in the batch too.
///
/// Each change before `compact_to` makes the version it replaced invisible at every revision
/// from `compact_to` on, and a delete before it leaves nothing to see but absence: those go. A
/// version still current, or replaced only at `compact_to` or later, stays.
pub(super) fn trim_history(
    db: &DB,
    meta: &rocksdb::ColumnFamily,
    from: i64,
    compact_to: i64,
    max_changes: usize,
) -> io::Result<i64> {
    let changes = column_family(db, CF_CHANGES)?;
    let deleted = column_family(db, CF_DELETED)?;
    let mut batch = WriteBatch::default();
    let mut trimmed_to = compact_to;
    let mut last_revision = None;
    let stored = db.iterator_cf(
        changes,
        IteratorMode::From(&revision_bytes(from), Direction::Forward),
    );
    for (count, item) in stored.enumerate() {
        let (encoded, bytes) = item.map_err(super::io_err)?;
        let (revision, key) = split_change_key(&encoded)?;
        if revision >= compact_to {
            break;
        }
        if count >= max_changes && last_revision != Some(revision) {
            trimmed_to = revision;
            break;
        }
        last_revision = Some(revision);
        let head: ChangeHead = decode(&bytes)?;
        if let Some(previous) = head.previous {
            batch.delete_cf(changes, change_key(previous, key));
        }
        if head.version.is_none() {
            batch.delete_cf(changes, &encoded);
            batch.delete_cf(deleted, tombstone_key(key, revision));
        }
    }
    batch.put_cf(meta, KEY_TRIMMED_TO, encode(&trimmed_to)?);
    super::write_until_space(
        "history compaction",
        db,
        batch,
        &rocksdb::WriteOptions::default(),
    )?;
    Ok(trimmed_to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tombstone_keys_sort_by_key_then_oldest_first() {
        let mut keys = [
            tombstone_key(b"a", 7),
            tombstone_key(b"a", 1),
            tombstone_key(b"a\0", 3),
            tombstone_key(b"ab", 2),
            tombstone_key(b"", 5),
            tombstone_key(b"b", 1),
        ];
        keys.sort();
        let decoded: Vec<_> = keys
            .iter()
            .map(|k| split_tombstone_key(k).unwrap())
            .collect();
        assert_eq!(
            decoded,
            vec![
                (b"".to_vec(), 5),
                (b"a".to_vec(), 1),
                (b"a".to_vec(), 7),
                (b"a\0".to_vec(), 3),
                (b"ab".to_vec(), 2),
                (b"b".to_vec(), 1),
            ]
        );
    }

    #[test]
    fn change_keys_sort_by_revision_and_a_change_head_decodes_from_its_record() {
        let mut keys = [
            change_key(300, b"a"),
            change_key(2, b"z"),
            change_key(2, b"b"),
        ];
        keys.sort();
        let decoded: Vec<_> = keys.iter().map(|k| split_change_key(k).unwrap()).collect();
        assert_eq!(
            decoded,
            vec![(2, &b"b"[..]), (2, &b"z"[..]), (300, &b"a"[..])]
        );
        let change = ChangeRecord {
            previous: Some(4),
            change: 2,
            version: Some(Record {
                mod_revision: 9,
                value: b"value".to_vec(),
                ..Record::default()
            }),
        };
        assert_eq!(
            encode_change(Some(4), 2, change.version.as_ref()).unwrap(),
            encode(&change).unwrap()
        );
        let head: ChangeHead = decode(&encode(&change).unwrap()).unwrap();
        assert_eq!(head.previous, Some(4));
        assert_eq!(head.version.map(|meta| meta.mod_revision), Some(9));
        let delete = ChangeRecord {
            version: None,
            ..change
        };
        let head: ChangeHead = decode(&encode(&delete).unwrap()).unwrap();
        assert!(head.version.is_none());
    }

    #[test]
    fn a_records_metadata_decodes_from_its_stored_form_and_known_keys_follow_writes() {
        let record = Record {
            create_revision: 3,
            mod_revision: 9,
            version: 4,
            lease: 77,
            value: b"a value the metadata skips".to_vec(),
        };
        let meta: RecordMeta = decode(&encode(&record).unwrap()).unwrap();
        assert_eq!(encode(&meta).unwrap().len(), META_BYTES);
        let empty_value = Record::default();
        assert!(encode(&empty_value).unwrap().len() > META_BYTES);
        assert_eq!(
            meta.without_value(),
            Record {
                value: Vec::new(),
                ..record
            }
        );

        let mut known = KnownKeys::default();
        known.written(vec![
            (b"a".to_vec(), Some(meta)),
            (b"b".to_vec(), Some(meta)),
        ]);
        known.written(vec![(b"a".to_vec(), None)]);
        assert_eq!((known.get(b"a"), known.get(b"b")), (None, Some(meta)));
        // Full: it starts afresh rather than growing.
        known.written(
            (0..KNOWN_KEYS as u32)
                .map(|i| (i.to_be_bytes().to_vec(), Some(meta)))
                .collect(),
        );
        assert!(known.keys.len() <= KNOWN_KEYS);
        known.clear();
        assert_eq!(known.get(&0u32.to_be_bytes()), None);
    }

    #[test]
    fn malformed_keys_are_errors() {
        for bad in [&b"abc"[..], b"a\0\x01", b"a\0\0\x01\x02"] {
            assert!(split_tombstone_key(bad).is_err(), "{bad:?}");
        }
        assert!(split_change_key(b"1234567").is_err());
    }
}
