//! The key-value API on the node: range reads (linearizable by default), and the write requests
//! (put, delete-range, txn, compaction), each checked here before it is proposed, so a malformed
//! request never takes a log entry.

use std::io::ErrorKind;

use openraft::async_runtime::WatchReceiver;

use crate::api;
use crate::error::Error;
use crate::error::Result;
use crate::types::ApplyError;
use crate::types::Command;
use crate::types::CommandResult;

use super::Caller;
use super::InjectedFault;
use super::Need;
use super::Node;

impl Node {
    /// An answer header from this member at `revision`.
    pub fn header(&self, revision: i64) -> api::ResponseHeader {
        api::ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.id,
            revision,
            raft_term: self.raft.metrics().borrow_watched().current_term,
        }
    }

    /// An answer header at the newest revision this member has applied and published, for
    /// answers that change nothing. Read from memory (the watch hub's revision), never the disk.
    pub fn current_header(&self) -> api::ResponseHeader {
        self.header(self.state.watch_hub().revision())
    }

    /// Reads `request`: after a read barrier (reflecting every write acknowledged before the
    /// call) unless it is `serializable`, from this member's state. At most about `max_bytes` of
    /// keys and values come back (past the first key; `more` says so).
    pub async fn range(
        &self,
        caller: &Caller,
        request: api::RangeRequest,
        max_bytes: usize,
    ) -> Result<api::RangeResponse> {
        self.authorize(
            caller,
            Need::Read(api::KeySpan::new(&request.key, &request.range_end)),
        )?;
        self.range_named("range", request, max_bytes).await
    }

    /// [`Node::range`], with `op` naming it in errors.
    async fn range_named(
        &self,
        op: &'static str,
        request: api::RangeRequest,
        max_bytes: usize,
    ) -> Result<api::RangeResponse> {
        api::validate_range(&request).map_err(invalid)?;
        if !request.serializable && self.fault != Some(InjectedFault::StaleReads) {
            self.read_barrier(op).await?;
        }
        // The common read, one key as it is now, is served here when it is in memory: a trip
        // to the blocking pool costs more than the read.
        let mut response = match self.state.key_in_memory(&request) {
            Ok(answer) => answer?,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Unsupported) => {
                self.read_state(move |state| state.range(&request, max_bytes))
                    .await??
            }
            Err(e) => return Err(e.into()),
        };
        response.header = self.header(response.header.revision);
        Ok(response)
    }

    /// A linearizable read of `key`'s value.
    pub async fn get(&self, caller: &Caller, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.authorize(caller, Need::Read(api::KeySpan::One(key)))?;
        let request = api::RangeRequest {
            key: key.to_vec(),
            ..api::RangeRequest::default()
        };
        let response = self.range_named("get", request, usize::MAX).await?;
        Ok(response.kvs.into_iter().next().map(|kv| kv.value))
    }

    /// Sets a key once committed and applied.
    pub async fn put(&self, caller: &Caller, request: api::PutRequest) -> Result<api::PutResponse> {
        match self
            .propose_as(caller, "put", Command::Put(request))
            .await?
        {
            CommandResult::Put(mut response) => {
                response.header = self.header(response.header.revision);
                Ok(response)
            }
            other => self.unanswered("put", other),
        }
    }

    /// Deletes a key or a range once committed and applied.
    pub async fn delete_range(
        &self,
        caller: &Caller,
        request: api::DeleteRangeRequest,
    ) -> Result<api::DeleteRangeResponse> {
        match self
            .propose_as(caller, "delete", Command::DeleteRange(request))
            .await?
        {
            CommandResult::DeleteRange(mut response) => {
                response.header = self.header(response.header.revision);
                Ok(response)
            }
            other => self.unanswered("delete", other),
        }
    }

    /// Runs a transaction once committed and applied: every comparison checked and one branch
    /// applied at one revision, atomically.
    pub async fn txn(&self, caller: &Caller, request: api::TxnRequest) -> Result<api::TxnResponse> {
        match self
            .propose_as(caller, "txn", Command::Txn(request))
            .await?
        {
            CommandResult::Txn(mut response) => {
                fill_txn_headers(self, &mut response);
                Ok(response)
            }
            other => self.unanswered("txn", other),
        }
    }

    /// Compacts the history up to `request.revision` once committed and applied.
    pub async fn compact(
        &self,
        caller: &Caller,
        request: api::CompactionRequest,
    ) -> Result<api::CompactionResponse> {
        match self
            .propose_as(caller, "compact", Command::Compact(request))
            .await?
        {
            CommandResult::Compacted(mut response) => {
                response.header = self.header(response.header.revision);
                Ok(response)
            }
            other => self.unanswered("compact", other),
        }
    }

    /// Checks `command` and completes what the proposer decides for every member (a lease's id
    /// and TTL), before it enters the log. Runs where a command enters: a front end, or a native
    /// client's request on the raft port.
    pub(super) fn prepare(&self, command: Command) -> std::result::Result<Command, ApplyError> {
        match command {
            Command::Put(put) => {
                if put.lease < 0 {
                    return Err(ApplyError::LeaseNotFound(put.lease));
                }
                Ok(Command::Put(put))
            }
            Command::DeleteRange(delete) => {
                api::validate_span(&delete.key, &delete.range_end)
                    .map_err(ApplyError::InvalidRequest)?;
                Ok(Command::DeleteRange(delete))
            }
            Command::Txn(txn) => {
                api::validate_txn(&txn, self.max_txn_ops)?;
                Ok(Command::Txn(txn))
            }
            Command::Compact(compact) if compact.revision <= 0 => Err(ApplyError::InvalidRequest(
                format!("compaction revision {} must be above 0", compact.revision),
            )),
            Command::LeaseGrant(grant) => self.prepare_grant(grant).map(Command::LeaseGrant),
            Command::AsUser {
                user,
                auth_revision,
                command,
            } => Ok(Command::AsUser {
                user,
                auth_revision,
                command: Box::new(self.prepare(*command)?),
            }),
            other => Ok(other),
        }
    }
}

impl Node {
    /// What a write whose result does not answer it becomes: a refusal decided while applying is
    /// an error; an acknowledgement without an answer (the `ack-before-commit` test fault, which
    /// acknowledges before anything is applied) is an empty answer, as the fault intends.
    pub(super) fn unanswered<T: Default>(
        &self,
        op: &'static str,
        result: CommandResult,
    ) -> Result<T> {
        match result {
            CommandResult::Applied if self.fault == Some(InjectedFault::AckBeforeCommit) => {
                Ok(T::default())
            }
            other => Err(unexpected(op, other)),
        }
    }
}

/// Fills every header of a transaction's answer with this member's identity.
fn fill_txn_headers(node: &Node, response: &mut api::TxnResponse) {
    let header = node.header(response.header.revision);
    for op in &mut response.responses {
        match op {
            api::ResponseOp::Range(range) => range.header = header.clone(),
            api::ResponseOp::Put(put) => put.header = header.clone(),
            api::ResponseOp::DeleteRange(delete) => delete.header = header.clone(),
            api::ResponseOp::Txn(inner) => fill_txn_headers(node, inner),
        }
    }
    response.header = header;
}

fn invalid(reason: String) -> Error {
    Error::Request(ApplyError::InvalidRequest(reason))
}

/// The error for a command result that does not answer the command: a refusal decided while
/// applying, or an acknowledgement without an answer (the `ack-before-commit` test fault).
pub(super) fn unexpected(op: &'static str, result: CommandResult) -> Error {
    match result {
        CommandResult::Refused(refusal) => Error::Request(refusal),
        other => Error::OutcomeUnknown {
            op,
            reason: format!("the leader answered {other:?}"),
        },
    }
}
