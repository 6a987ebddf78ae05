//! Applying commands to the key space: each write request becomes the changes of one revision in
//! the batch being built (data, changes, tombstones, lease links), decided only by the command and
//! the state before it, so every member computes the same revision, versions and answers.

use std::collections::BTreeSet;
use std::io;
use std::sync::Arc;

use super::auth::AuthState;
use super::decode;
use super::encode;
use super::mvcc;
use super::mvcc::LeaseRecord;
use super::mvcc::Overlay;
use super::mvcc::Record;
use super::mvcc::Values;
use super::mvcc::CF_CHANGES;
use super::mvcc::CF_DATA;
use super::mvcc::CF_DELETED;
use super::mvcc::CF_LEASES;
use super::mvcc::CF_LEASE_KEYS;
use crate::api;
use crate::api::AuthError;
use crate::api::Compare;
use crate::api::CompareResult;
use crate::api::CompareTarget;
use crate::api::DeleteRangeRequest;
use crate::api::DeleteRangeResponse;
use crate::api::Event;
use crate::api::EventKind;
use crate::api::KeyAccess;
use crate::api::KeySpan;
use crate::api::PutRequest;
use crate::api::PutResponse;
use crate::api::RangeRequest;
use crate::api::RangeResponse;
use crate::api::RequestOp;
use crate::api::ResponseHeader;
use crate::api::ResponseOp;
use crate::api::TxnRequest;
use crate::api::TxnResponse;
use crate::types::ApplyError;
use crate::types::AuthChange;
use crate::types::Command;
use crate::types::CommandResult;

/// The changes of one revision, as watchers receive them: every event of the revision, in the
/// order they were made, with the previous versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionChanges {
    pub revision: i64,
    pub events: Vec<Event>,
}

/// What applying a batch did to leases, for the in-memory lease table (`store::lease`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseChange {
    Granted { id: i64, ttl: i64 },
    Revoked { id: i64 },
}

/// Applies the commands of one batch of log entries to an [`Overlay`].
pub(super) struct Applier<'db> {
    pub overlay: Overlay<'db>,
    /// The newest revision, advanced by every write that changes a key.
    pub revision: i64,
    pub compact_revision: i64,
    /// Keep the events of each revision for watchers (only when some are watching: it copies
    /// every value).
    pub collect_events: bool,
    pub changes: Vec<Arc<RevisionChanges>>,
    pub lease_changes: Vec<LeaseChange>,
    /// Users, roles and permissions as of the command being applied; replaced (copy on write)
    /// by an auth change, which sets `auth_changed`.
    pub auth: Arc<AuthState>,
    pub auth_changed: bool,
}

/// The changes one write request makes, numbered in order within its revision.
#[derive(Default)]
struct Pending {
    /// Changes so far: the next one's number, and whether the request takes a revision.
    changes: u32,
    /// The changes as watchers see them, kept only while some are watching.
    events: Vec<Event>,
}

impl<'db> Applier<'db> {
    /// Applies `command`. A refusal decided by the state (an unknown lease, a compacted revision)
    /// is a result, the same on every member; only storage failures are errors.
    pub fn apply(&mut self, command: &Command) -> io::Result<CommandResult> {
        match command {
            Command::Put(put) => self.write(|applier, next, pending| {
                applier
                    .put(put.clone(), next, pending)
                    .map(|result| result.map(CommandResult::Put))
            }),
            Command::DeleteRange(delete) => self.write(|applier, next, pending| {
                applier
                    .delete_range(delete, next, pending)
                    .map(|response| Ok(CommandResult::DeleteRange(response)))
            }),
            Command::Txn(txn) => {
                if let Err(invalid) = api::validate_txn(txn, usize::MAX) {
                    return Ok(CommandResult::Refused(invalid.into()));
                }
                self.write(|applier, next, pending| {
                    applier
                        .txn(txn, next, pending)
                        .map(|result| result.map(CommandResult::Txn))
                })
            }
            Command::Compact(request) => self.compact(request.revision),
            Command::LeaseGrant(grant) => self.grant(grant.id, grant.ttl),
            Command::LeaseRevoke { id } => self.write(|applier, next, pending| {
                applier
                    .revoke(*id, next, pending)
                    .map(|result| result.map(|()| CommandResult::LeaseRevoked))
            }),
            Command::KeepLearner { .. } => Ok(CommandResult::Applied),
            Command::Auth(change) => Ok(self.change_auth(change)),
            Command::AsUser {
                user,
                auth_revision,
                command,
            } => {
                let checked_then = self.auth.revision == *auth_revision;
                if !checked_then && self.auth.enabled && !self.permits(user, command)? {
                    return Ok(CommandResult::Refused(AuthError::PermissionDenied.into()));
                }
                self.apply(command)
            }
        }
    }

    fn change_auth(&mut self, change: &AuthChange) -> CommandResult {
        // `AuthState::change` leaves the state untouched when it refuses, so the copy made for
        // writing is never a half-change.
        match Arc::make_mut(&mut self.auth).change(change) {
            Ok(()) => {
                self.auth_changed = true;
                CommandResult::AuthChanged
            }
            Err(refused) => CommandResult::Refused(refused.into()),
        }
    }

    /// Whether `user` may still make the write `command` asks for, by the auth state now.
    fn permits(&self, user: &str, command: &Command) -> io::Result<bool> {
        if let Command::LeaseRevoke { id } = command {
            let auth = &self.auth;
            return Ok(attached_keys(&self.overlay, *id)?
                .iter()
                .all(|key| auth.permits(user, &KeySpan::One(key), KeyAccess::Write)));
        }
        Ok(self.auth.permits_command(user, command))
    }

    /// Runs one write request at revision `self.revision + 1`, which it takes only if it changed a
    /// key. Every answer's header carries the revision the request left the store at.
    fn write(
        &mut self,
        work: impl FnOnce(&mut Self, i64, &mut Pending) -> io::Result<Result<CommandResult, ApplyError>>,
    ) -> io::Result<CommandResult> {
        let next = self.revision + 1;
        let mut pending = Pending::default();
        self.overlay.savepoint();
        let result = work(self, next, &mut pending)?;
        if result.is_err() {
            self.overlay.rollback();
            pending = Pending::default();
        }
        self.overlay.release();
        if pending.changes > 0 {
            self.revision = next;
            if self.collect_events {
                self.changes.push(Arc::new(RevisionChanges {
                    revision: next,
                    events: pending.events,
                }));
            }
        }
        let revision = self.revision;
        Ok(match result {
            Ok(mut result) => {
                result.set_revision(revision);
                result
            }
            Err(refusal) => CommandResult::Refused(refusal),
        })
    }

    fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            revision,
            ..ResponseHeader::default()
        }
    }

    fn put(
        &mut self,
        put: PutRequest,
        next: i64,
        pending: &mut Pending,
    ) -> io::Result<Result<PutResponse, ApplyError>> {
        // The previous value is read only when something uses it: most puts need only the
        // previous version's revisions and lease.
        let previous = if put.ignore_value || put.prev_kv || self.collect_events {
            self.overlay.record(&put.key)?
        } else {
            self.overlay.record_without_value(&put.key)?
        };
        if (put.ignore_value || put.ignore_lease) && previous.is_none() {
            return Ok(Err(ApplyError::KeyNotFound));
        }
        let lease = match (&previous, put.ignore_lease) {
            (Some(previous), true) => previous.lease,
            _ => put.lease,
        };
        if lease != 0 && self.lease(lease)?.is_none() {
            return Ok(Err(ApplyError::LeaseNotFound(lease)));
        }
        let value = match (&previous, put.ignore_value) {
            (Some(previous), true) => previous.value.clone(),
            _ => put.value,
        };
        let record = Record {
            create_revision: previous.as_ref().map_or(next, |p| p.create_revision),
            mod_revision: next,
            version: previous.as_ref().map_or(1, |p| p.version + 1),
            lease,
            value,
        };
        let previous_lease = previous.as_ref().map_or(0, |p| p.lease);
        if previous_lease != 0 && previous_lease != lease {
            self.overlay.delete(
                CF_LEASE_KEYS,
                &mvcc::lease_key_entry(previous_lease, &put.key),
            )?;
        }
        if lease != 0 {
            self.overlay.put(
                CF_LEASE_KEYS,
                &mvcc::lease_key_entry(lease, &put.key),
                Vec::new(),
            )?;
        }
        let replaced = previous.as_ref().map(|p| p.mod_revision);
        self.record_change(&put.key, Some(&record), replaced, next, pending, || Event {
            kind: EventKind::Put,
            kv: record.clone().into_key_value(put.key.clone()),
            prev_kv: previous.clone().map(|p| p.into_key_value(put.key.clone())),
        })?;
        self.overlay
            .put(CF_DATA, &put.key, mvcc::encode_current(&record)?)?;
        Ok(Ok(PutResponse {
            header: self.header(next),
            prev_kv: previous
                .filter(|_| put.prev_kv)
                .map(|p| p.into_key_value(put.key)),
        }))
    }

    fn delete_range(
        &mut self,
        delete: &DeleteRangeRequest,
        next: i64,
        pending: &mut Pending,
    ) -> io::Result<DeleteRangeResponse> {
        let span = KeySpan::new(&delete.key, &delete.range_end);
        let values = Values::when(delete.prev_kv || self.collect_events);
        let found = self.overlay.records_in(&span, values)?;
        let mut response = DeleteRangeResponse {
            header: self.header(next),
            deleted: found.len() as i64,
            prev_kvs: Vec::new(),
        };
        for (key, previous) in found {
            self.delete_key(&key, &previous, next, pending)?;
            if delete.prev_kv {
                response.prev_kvs.push(previous.into_key_value(key));
            }
        }
        Ok(response)
    }

    fn delete_key(
        &mut self,
        key: &[u8],
        previous: &Record,
        next: i64,
        pending: &mut Pending,
    ) -> io::Result<()> {
        if previous.lease != 0 {
            self.overlay
                .delete(CF_LEASE_KEYS, &mvcc::lease_key_entry(previous.lease, key))?;
        }
        self.overlay
            .put(CF_DELETED, &mvcc::tombstone_key(key, next), Vec::new())?;
        self.record_change(
            key,
            None,
            Some(previous.mod_revision),
            next,
            pending,
            || Event {
                kind: EventKind::Delete,
                kv: api::KeyValue {
                    key: key.to_vec(),
                    mod_revision: next,
                    ..api::KeyValue::default()
                },
                prev_kv: Some(previous.clone().into_key_value(key.to_vec())),
            },
        )?;
        self.overlay.delete(CF_DATA, key)
    }

    /// Records a change of `key` at revision `next` (`version`, `None` for a delete) replacing
    /// the version made at `replaced`, and, while someone watches, the event `event` makes (built
    /// only then: it copies the value).
    fn record_change(
        &mut self,
        key: &[u8],
        version: Option<&Record>,
        replaced: Option<i64>,
        next: i64,
        pending: &mut Pending,
        event: impl FnOnce() -> Event,
    ) -> io::Result<()> {
        if replaced == Some(next) {
            // A chain of versions must lead back in time; a request changes a key once (a
            // transaction with two changes of one key is refused before it is applied).
            return Err(io::Error::other("a key changed twice in one revision"));
        }
        let change = pending.changes;
        pending.changes = change
            .checked_add(1)
            .ok_or_else(|| io::Error::other("too many changes in one revision"))?;
        if self.collect_events {
            pending.events.push(event());
        }
        self.overlay.put(
            CF_CHANGES,
            &mvcc::change_key(next, key),
            mvcc::encode_change(replaced, change, version)?,
        )
    }

    fn txn(
        &mut self,
        txn: &TxnRequest,
        next: i64,
        pending: &mut Pending,
    ) -> io::Result<Result<TxnResponse, ApplyError>> {
        let mut succeeded = true;
        for compare in &txn.compare {
            if !self.holds(compare)? {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match op {
                RequestOp::Range(range) => match self.range_in_txn(range, next, pending)? {
                    Ok(response) => ResponseOp::Range(response),
                    Err(refusal) => return Ok(Err(refusal)),
                },
                RequestOp::Put(put) => match self.put(put.clone(), next, pending)? {
                    Ok(response) => ResponseOp::Put(response),
                    Err(refusal) => return Ok(Err(refusal)),
                },
                RequestOp::DeleteRange(delete) => {
                    ResponseOp::DeleteRange(self.delete_range(delete, next, pending)?)
                }
                RequestOp::Txn(inner) => match self.txn(inner, next, pending)? {
                    Ok(response) => ResponseOp::Txn(response),
                    Err(refusal) => return Ok(Err(refusal)),
                },
            };
            responses.push(response);
        }
        Ok(Ok(TxnResponse {
            header: self.header(next),
            succeeded,
            responses,
        }))
    }

    /// A range inside a transaction reads the store as the transaction has left it so far.
    fn range_in_txn(
        &self,
        range: &RangeRequest,
        next: i64,
        pending: &Pending,
    ) -> io::Result<Result<RangeResponse, ApplyError>> {
        let current = if pending.changes == 0 {
            self.revision
        } else {
            next
        };
        if range.revision != 0 && range.revision != current {
            // History inside a batch being built is not readable yet; etcd's clients do not ask
            // for it, and the answer would be no different from a range outside the txn.
            return Ok(Err(ApplyError::InvalidRequest(
                "a range inside a txn reads the current revision only".into(),
            )));
        }
        let span = KeySpan::new(&range.key, &range.range_end);
        let values = Values::when(!range.count_only && !range.keys_only);
        let found = self.overlay.records_in(&span, values)?;
        let mut response = RangeResponse {
            header: self.header(current),
            count: found.len() as i64,
            ..RangeResponse::default()
        };
        if range.count_only {
            return Ok(Ok(response));
        }
        let limit = usize::try_from(range.limit).unwrap_or(0);
        for (key, mut record) in found {
            if limit > 0 && response.kvs.len() >= limit {
                response.more = true;
                break;
            }
            if range.keys_only {
                record.value.clear();
            }
            response.kvs.push(record.into_key_value(key));
        }
        Ok(Ok(response))
    }

    /// Whether `compare` holds for every key it names (for a range, every key present in it). As
    /// in etcd, no key at all compares as zero revisions, version and lease, and fails value
    /// comparisons.
    fn holds(&self, compare: &Compare) -> io::Result<bool> {
        let span = KeySpan::new(&compare.key, &compare.range_end);
        let values = Values::when(matches!(compare.target, CompareTarget::Value(_)));
        let found = self.overlay.records_in(&span, values)?;
        if found.is_empty() {
            return Ok(match &compare.target {
                CompareTarget::Value(_) => false,
                _ => compares(0i64.cmp(&operand(&compare.target)), compare.result),
            });
        }
        Ok(found.iter().all(|(_, record)| {
            let ordering = match &compare.target {
                CompareTarget::Value(value) => record.value.as_slice().cmp(value.as_slice()),
                CompareTarget::Version(v) => record.version.cmp(v),
                CompareTarget::CreateRevision(r) => record.create_revision.cmp(r),
                CompareTarget::ModRevision(r) => record.mod_revision.cmp(r),
                CompareTarget::Lease(l) => record.lease.cmp(l),
            };
            compares(ordering, compare.result)
        }))
    }

    fn compact(&mut self, revision: i64) -> io::Result<CommandResult> {
        if revision <= self.compact_revision {
            return Ok(CommandResult::Refused(ApplyError::Compacted {
                compact_revision: self.compact_revision,
            }));
        }
        if revision > self.revision {
            return Ok(CommandResult::Refused(ApplyError::FutureRevision {
                revision: self.revision,
            }));
        }
        self.compact_revision = revision;
        Ok(CommandResult::Compacted(api::CompactionResponse {
            header: self.header(self.revision),
        }))
    }

    fn lease(&self, id: i64) -> io::Result<Option<LeaseRecord>> {
        self.overlay
            .get(CF_LEASES, &mvcc::lease_key(id))?
            .map(|bytes| decode(&bytes))
            .transpose()
    }

    fn grant(&mut self, id: i64, ttl: i64) -> io::Result<CommandResult> {
        if id <= 0 || !(1..=api::MAX_LEASE_TTL).contains(&ttl) {
            return Ok(CommandResult::Refused(ApplyError::InvalidRequest(format!(
                "a lease needs an id above 0 and a TTL of 1 to {} seconds",
                api::MAX_LEASE_TTL
            ))));
        }
        if self.lease(id)?.is_some() {
            return Ok(CommandResult::Refused(ApplyError::LeaseExists(id)));
        }
        self.overlay.put(
            CF_LEASES,
            &mvcc::lease_key(id),
            encode(&LeaseRecord { ttl })?,
        )?;
        self.lease_changes.push(LeaseChange::Granted { id, ttl });
        Ok(CommandResult::LeaseGranted(api::LeaseGrantResponse {
            header: self.header(self.revision),
            id,
            ttl,
        }))
    }

    /// Ends lease `id`: its keys are deleted, all in this one revision.
    fn revoke(
        &mut self,
        id: i64,
        next: i64,
        pending: &mut Pending,
    ) -> io::Result<Result<(), ApplyError>> {
        if self.lease(id)?.is_none() {
            return Ok(Err(ApplyError::LeaseNotFound(id)));
        }
        let keys = attached_keys(&self.overlay, id)?;
        for key in keys {
            // The deleted value is only needed for a watcher's previous version.
            let previous = if self.collect_events {
                self.overlay.record(&key)?
            } else {
                self.overlay.record_without_value(&key)?
            };
            if let Some(previous) = previous {
                self.delete_key(&key, &previous, next, pending)?;
            }
        }
        self.overlay.delete(CF_LEASES, &mvcc::lease_key(id))?;
        self.lease_changes.push(LeaseChange::Revoked { id });
        Ok(Ok(()))
    }
}

/// The keys attached to lease `id`, in key order.
pub(super) fn attached_keys(overlay: &Overlay<'_>, id: i64) -> io::Result<Vec<Vec<u8>>> {
    let prefix = mvcc::lease_key(id);
    let mut keys = BTreeSet::new();
    overlay.scan(CF_LEASE_KEYS, &prefix, |entry, _| {
        match entry.strip_prefix(&prefix[..]) {
            Some(key) => {
                keys.insert(key.to_vec());
                Ok(true)
            }
            None => Ok(false),
        }
    })?;
    Ok(keys.into_iter().collect())
}

/// The number a non-value comparison compares with.
fn operand(target: &CompareTarget) -> i64 {
    match target {
        CompareTarget::Version(n)
        | CompareTarget::CreateRevision(n)
        | CompareTarget::ModRevision(n)
        | CompareTarget::Lease(n) => *n,
        CompareTarget::Value(_) => 0,
    }
}

fn compares(ordering: std::cmp::Ordering, result: CompareResult) -> bool {
    use std::cmp::Ordering::*;
    matches!(
        (ordering, result),
        (Equal, CompareResult::Equal)
            | (Less | Greater, CompareResult::NotEqual)
            | (Greater, CompareResult::Greater)
            | (Less, CompareResult::Less)
    )
}
