//! Watches: the changes to a key or a range, from a start revision on, as they are applied.
//!
//! What a watcher is promised (etcd's guarantees): events arrive in revision order, never twice,
//! never split (all events of one revision, such as a transaction's, come in one
//! [`WatchResponse`]), with no gaps; a watch resumed from `last revision + 1` on any member sees
//! the same events as one that never stopped; a watch from a compacted revision ends with
//! `compact_revision` set.

use serde::Deserialize;
use serde::Serialize;

use super::KeyValue;
use super::ResponseHeader;

/// What to watch, and from when.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WatchRequest {
    #[serde(with = "crate::api::bytes")]
    pub key: Vec<u8>,
    /// As in [`super::RangeRequest`]: empty for the one key, a prefix's [`super::prefix_end`] for
    /// everything under it.
    #[serde(with = "crate::api::bytes")]
    pub range_end: Vec<u8>,
    /// The first revision to report; 0 for changes after the current revision.
    pub start_revision: i64,
    /// Send a response with no events, carrying the current revision, when the watch has been
    /// idle for a while, so a client knows how far it has seen.
    pub progress_notify: bool,
    /// Kinds of event not to send.
    pub filters: Vec<WatchFilter>,
    /// Include each key's previous value in its events.
    pub prev_kv: bool,
}

/// An event kind a watcher does not want.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchFilter {
    NoPut,
    NoDelete,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventKind {
    #[default]
    Put,
    Delete,
}

/// One change to one key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// The key after the change; for a delete, the key with `mod_revision` set to the deleting
    /// revision and everything else zero.
    pub kv: KeyValue,
    /// The key before the change, when the watch asked for it and it is still in the history.
    pub prev_kv: Option<KeyValue>,
}

impl Event {
    /// The bytes of keys and values the event carries, its previous version's included: what
    /// holding or sending it costs, beyond a fixed overhead.
    pub fn payload_bytes(&self) -> usize {
        let previous = self
            .prev_kv
            .as_ref()
            .map_or(0, |kv| kv.key.len() + kv.value.len());
        self.kv.key.len() + self.kv.value.len() + previous
    }
}

/// One message of a watch stream.
///
/// - events: `events` holds every event of one or more whole revisions, in order;
/// - progress: no events, `header.revision` is how far the store has got (every change up to it
///   that the watch selects has been sent);
/// - the end: `canceled` with a `cancel_reason`, and `compact_revision` set when the start
///   revision had been compacted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchResponse {
    pub header: ResponseHeader,
    /// Set on the first response of a watch.
    pub created: bool,
    pub canceled: bool,
    /// The revision compacted to, when the watch ended because its start had been compacted.
    pub compact_revision: i64,
    pub cancel_reason: String,
    pub events: Vec<Event>,
}

impl WatchResponse {
    /// The revision the next watch must start from to resume after this response.
    pub fn resume_revision(&self) -> i64 {
        match self.events.last() {
            Some(event) => event.kv.mod_revision + 1,
            None => self.header.revision + 1,
        }
    }
}
