//! The key space with its history (MVCC): what a revision is, how each change is recorded, and
//! how reads at a revision, watch catch-up and compaction find their way through the records.
//!
//! Column families of the state machine database (all written in the apply's one WriteBatch):
//!
//! | family | key | value |
//! | --- | --- | --- |
//! | `data` | user key | the key's current version: a [`Record`] if its value is small, else its [`RecordMeta`] ([`encode_current`]) |
//! | `history` | [`history_key`]: escaped user key, then `!revision` | `Option<Record>`: the version made at that revision, `None` for a delete |
//! | `events` | revision, change number (big-endian) | user key: what changed at each revision, in order |
//! | `leases` | lease id (big-endian) | [`LeaseRecord`] |
//! | `lease_keys` | lease id, user key | empty: the keys attached to each lease |
//!
//! A value larger than [`INLINE_VALUE_BYTES`] is stored once, in the history version that made
//! it: the current version's value is found at `(key, mod_revision)` of its `data` record, so the
//! state on disk is the live data plus the history not yet compacted, not twice the live data. A
//! smaller value is kept in the `data` record as well, where it costs less than the second
//! lookup a read would otherwise make. (Before format 3 every `data` record carried its value;
//! such records read like the small ones.)
//!
//! The history key escapes the user key so that its encoding sorts like the key and is never a
//! prefix of another key's: all versions of one key are adjacent, newest first, and a seek to
//! `(key, !R)` lands on the newest version at or before revision R.
//!
//! Compaction to revision C is logical at once (`compact_revision`: reads and watches below it are
//! refused) and physical in the background ([`trim_history`]): a version older than C is deleted
//! once a newer version at or before C exists (or it is a delete, the newest before C), and the
//! events before C go. Versions still visible at C or later are never touched, so reads at any
//! revision from C on are unaffected by how far trimming has got.

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
pub(super) const CF_HISTORY: &str = "history";
pub(super) const CF_EVENTS: &str = "events";
pub(super) const CF_LEASES: &str = "leases";
pub(super) const CF_LEASE_KEYS: &str = "lease_keys";
/// The families holding the key space and leases, in the order a snapshot stream numbers them.
pub(super) const MVCC_FAMILIES: &[&str] =
    &[CF_DATA, CF_HISTORY, CF_EVENTS, CF_LEASES, CF_LEASE_KEYS];

/// Meta keys (in the state machine's meta family) that belong to the key space and travel in
/// snapshots with it.
pub(super) const KEY_REVISION: &[u8] = b"revision";
pub(super) const KEY_COMPACT_REVISION: &[u8] = b"compact_revision";
/// History below this revision has been trimmed (see [`trim_history`]); local, not replicated.
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

/// Memcomparable encoding of `key` followed by the inverted `revision`: 0x00 becomes 0x00 0xff,
/// and 0x00 0x00 ends the key.
pub(super) fn history_key(key: &[u8], revision: i64) -> Vec<u8> {
    let mut encoded = escaped_key(key);
    encoded.extend_from_slice(&inverted(revision));
    encoded
}

fn escaped_key(key: &[u8]) -> Vec<u8> {
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

fn inverted(revision: i64) -> [u8; 8] {
    (u64::MAX - revision.max(0) as u64).to_be_bytes()
}

/// Splits a history key into the user key and the revision.
fn split_history_key(encoded: &[u8]) -> io::Result<(Vec<u8>, i64)> {
    let corrupt = || io::Error::new(io::ErrorKind::InvalidData, "malformed history key");
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
    let revision = u64::MAX - u64::from_be_bytes(rest);
    Ok((key, i64::try_from(revision).map_err(|_| corrupt())?))
}

/// Where the change numbered `change` of `revision` is recorded in the events family.
pub(super) fn event_key(revision: i64, change: u32) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..8].copy_from_slice(&(revision.max(0) as u64).to_be_bytes());
    key[8..].copy_from_slice(&change.to_be_bytes());
    key
}

fn split_event_key(key: &[u8]) -> io::Result<i64> {
    key.get(..8)
        .and_then(|bytes| bytes.try_into().ok())
        .map(|bytes| u64::from_be_bytes(bytes) as i64)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed event key"))
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

/// Values up to this many bytes are kept in the key's `data` record as well as in the history,
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
    /// The version's metadata; its value is in the history, at `(key, mod_revision)`.
    ValueInHistory(RecordMeta),
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
        decode(bytes).map(Current::ValueInHistory)
    } else {
        decode(bytes).map(Current::Whole)
    }
}

impl Current {
    /// The version in full, value included when `values` asks for it: from the history, with
    /// `read_history` (what the history family holds at an encoded history key), when this
    /// record does not hold it.
    fn resolve<B: AsRef<[u8]>>(
        self,
        key: &[u8],
        values: Values,
        read_history: impl FnOnce(&[u8]) -> io::Result<Option<B>>,
    ) -> io::Result<Record> {
        let meta = match (self, values) {
            (Current::Whole(record), _) => return Ok(record),
            (Current::ValueInHistory(meta), Values::Skip) => return Ok(meta.without_value()),
            (Current::ValueInHistory(meta), Values::Read) => meta,
        };
        let stored = read_history(&history_key(key, meta.mod_revision))?;
        current_version(key, meta, stored.as_ref().map(AsRef::as_ref))
    }
}

/// The history version holding the value of current version `meta` of `key`, decoded from
/// `stored` (what the history family holds at `(key, meta.mod_revision)`). The version is never
/// trimmed while it is current, so its absence means the database is damaged.
fn current_version(key: &[u8], meta: RecordMeta, stored: Option<&[u8]>) -> io::Result<Record> {
    let version: Option<Record> = stored.map(decode).transpose()?.flatten();
    version.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the value of key {:?} at revision {} is missing from the history",
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
    let history = column_family(db, CF_HISTORY)?;
    current.resolve(key, values, |at| {
        db.get_pinned_cf_opt(history, at, &options())
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
        current.resolve(key, values, |at| self.get(CF_HISTORY, at))
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
    let history = column_family(db, CF_HISTORY)?;
    let mut iter = db.raw_iterator_cf_opt(history, options());
    iter.seek(escaped_key(span.start()));
    loop {
        iter.status().map_err(super::io_err)?;
        let Some(encoded) = iter.key() else {
            return Ok(());
        };
        let (key, found_revision) = split_history_key(encoded)?;
        if span.is_past(&key) {
            return Ok(());
        }
        if found_revision > revision {
            // Newer than wanted: the newest version at or before `revision`, if any, follows.
            iter.seek(history_key(&key, revision));
            let at_key = match iter.key() {
                Some(encoded) => split_history_key(encoded)?.0 == key,
                None => false,
            };
            if !at_key {
                continue;
            }
        }
        let version: Option<Record> = match iter.value() {
            Some(bytes) => decode(bytes)?,
            None => None,
        };
        if let Some(record) = version {
            if span.contains(&key) && !visit(key.clone(), record)? {
                return Ok(());
            }
        }
        // Past every version of this key: its encoding followed by the largest inverted revision.
        let mut next = escaped_key(&key);
        next.extend_from_slice(&[0xff; 8]);
        iter.seek(next);
    }
}

/// The version of `key` in force at `revision` (`None`: absent then).
pub(super) fn version_at(
    db: &DB,
    options: &impl Fn() -> ReadOptions,
    key: &[u8],
    revision: i64,
) -> io::Result<Option<Record>> {
    if revision <= 0 {
        return Ok(None);
    }
    let history = column_family(db, CF_HISTORY)?;
    let mut iter = db.raw_iterator_cf_opt(history, options());
    iter.seek(history_key(key, revision));
    iter.status().map_err(super::io_err)?;
    match (iter.key(), iter.value()) {
        (Some(encoded), Some(bytes)) if split_history_key(encoded)?.0 == key => decode(bytes),
        _ => Ok(None),
    }
}

/// One change recorded in the events family, with the version it made.
pub(super) struct StoredChange {
    pub revision: i64,
    pub key: Vec<u8>,
    /// `None` for a delete.
    pub version: Option<Record>,
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
    let events = column_family(db, CF_EVENTS)?;
    let mut found = Vec::new();
    let mut last_revision = None;
    let changes = db.iterator_cf_opt(
        events,
        options(),
        IteratorMode::From(&event_key(from, 0), Direction::Forward),
    );
    for (scanned, item) in changes.enumerate() {
        let (event, key) = item.map_err(super::io_err)?;
        let revision = split_event_key(&event)?;
        if revision > to {
            break;
        }
        if scanned >= max_changes && last_revision != Some(revision) {
            return Ok((found, last_revision));
        }
        last_revision = Some(revision);
        if !span.contains(&key) {
            continue;
        }
        let version = version_exact(db, options, &key, revision)?;
        found.push(StoredChange {
            revision,
            key: key.into_vec(),
            version,
        });
    }
    Ok((found, None))
}

/// The version of `key` made exactly at `revision` (`None` for a delete).
fn version_exact(
    db: &DB,
    options: &impl Fn() -> ReadOptions,
    key: &[u8],
    revision: i64,
) -> io::Result<Option<Record>> {
    let history = column_family(db, CF_HISTORY)?;
    match db
        .get_cf_opt(history, history_key(key, revision), &options())
        .map_err(super::io_err)?
    {
        Some(bytes) => decode(&bytes),
        None => Ok(None),
    }
}

/// Deletes, in one batch, the history made unreachable by compacting to `compact_to`, starting at
/// the events of revision `from`: at most about `max_changes` events. Returns the revision
/// trimmed up to (exclusive), to be passed as `from` next time; it is recorded in the batch too.
pub(super) fn trim_history(
    db: &DB,
    meta: &rocksdb::ColumnFamily,
    from: i64,
    compact_to: i64,
    max_changes: usize,
) -> io::Result<i64> {
    let events = column_family(db, CF_EVENTS)?;
    let history = column_family(db, CF_HISTORY)?;
    let mut batch = WriteBatch::default();
    let mut trimmed_to = compact_to;
    let mut last_revision = None;
    let changes = db.iterator_cf(
        events,
        IteratorMode::From(&event_key(from, 0), Direction::Forward),
    );
    for (count, item) in changes.enumerate() {
        let (event, key) = item.map_err(super::io_err)?;
        let revision = split_event_key(&event)?;
        if revision >= compact_to {
            break;
        }
        if count >= max_changes && last_revision != Some(revision) {
            trimmed_to = revision;
            break;
        }
        last_revision = Some(revision);
        let mut newest = db.raw_iterator_cf(history);
        newest.seek(history_key(&key, compact_to));
        let (newest_key, newest_revision) = match newest.key() {
            Some(encoded) => split_history_key(encoded)?,
            None => (Vec::new(), 0),
        };
        let newest_is_delete = newest
            .value()
            .is_some_and(|v| decode::<Option<Record>>(v).is_ok_and(|version| version.is_none()));
        let superseded = newest_key != key[..] || newest_revision != revision;
        if superseded || newest_is_delete {
            batch.delete_cf(history, history_key(&key, revision));
        }
        batch.delete_cf(events, event);
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
    fn history_keys_sort_by_key_then_newest_first() {
        let mut keys = [
            history_key(b"a", 1),
            history_key(b"a", 7),
            history_key(b"a\0", 3),
            history_key(b"ab", 2),
            history_key(b"", 5),
            history_key(b"b", 1),
        ];
        keys.sort();
        let decoded: Vec<_> = keys.iter().map(|k| split_history_key(k).unwrap()).collect();
        assert_eq!(
            decoded,
            vec![
                (b"".to_vec(), 5),
                (b"a".to_vec(), 7),
                (b"a".to_vec(), 1),
                (b"a\0".to_vec(), 3),
                (b"ab".to_vec(), 2),
                (b"b".to_vec(), 1),
            ]
        );
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
    fn malformed_history_keys_are_errors() {
        for bad in [&b"abc"[..], b"a\0\x01", b"a\0\0\x01\x02"] {
            assert!(split_history_key(bad).is_err(), "{bad:?}");
        }
    }
}
