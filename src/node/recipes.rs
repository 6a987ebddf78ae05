//! etcd's lock and election recipes served by the node (etcd's `v3lock` and `v3election`
//! services), built from the key-value API alone, as etcd's own are.
//!
//! A participant holds a lease and creates the key `NAME/<lease id in hex>` attached to it, only
//! if absent, in a transaction. Participants are ordered by the revision that created their key:
//! the lowest holds the lock or leads. A waiter watches only the key created just before its own,
//! for its deletion, so a release wakes one waiter rather than all. A participant that dies stops
//! renewing its lease, which expires and takes its key with it.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::api;
use crate::api::Compare;
use crate::api::CompareResult;
use crate::api::CompareTarget;
use crate::api::EventKind;
use crate::api::KeyValue;
use crate::api::RequestOp;
use crate::api::ResponseOp;
use crate::error::Error;

use super::Caller;
use super::Need;
use super::Node;

/// Why a recipe request failed.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    /// Nobody campaigns in the election (etcd's `ErrElectionNoLeader`).
    #[error("election: no leader")]
    NoLeader,
    /// The leader key given is no longer the one that leads (etcd's `ErrElectionNotLeader`).
    #[error("election: not leader")]
    NotLeader,
    /// The participant's key vanished while it waited: its lease ended.
    #[error("the lease of {0:?} ended while it waited its turn")]
    LeaseEnded(String),
    #[error(transparent)]
    Node(#[from] Error),
}

type Result<T> = std::result::Result<T, RecipeError>;

/// The key of a leader, as a campaign answers it and as proclaim and resign name it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaderKey {
    pub name: Vec<u8>,
    pub key: Vec<u8>,
    /// The revision that created the key: a later key with the same name is another term.
    pub rev: i64,
    pub lease: i64,
}

/// A participant's place in a queue: the revision that created its key, and the answer header.
struct Place {
    created: i64,
    header: api::ResponseHeader,
    /// The key's value when it already existed (a participant rejoining).
    existing_value: Option<Vec<u8>>,
}

impl Node {
    /// Takes the lock `name` for `lease`, waiting for every earlier holder to release it, and
    /// answers the key that holds it (`Unlock` deletes that key). A request abandoned while
    /// waiting withdraws its key.
    pub async fn lock(
        self: &Arc<Self>,
        caller: &Caller,
        name: &[u8],
        lease: i64,
    ) -> Result<(api::ResponseHeader, Vec<u8>)> {
        let prefix = prefix_of(name);
        self.authorize_recipe(caller, &prefix, true)?;
        let key = api::participant_key(&prefix, lease);
        let place = self.join(&key, lease, Vec::new()).await?;
        let withdraw = Withdraw::new(self.clone(), key.clone());
        self.wait_turn(&prefix, place.created).await?;
        self.still_held(&key).await?;
        withdraw.disarm();
        Ok((place.header, key))
    }

    /// Releases a lock by deleting the key `lock` answered.
    pub async fn unlock(&self, caller: &Caller, key: Vec<u8>) -> Result<api::ResponseHeader> {
        self.authorize(caller, Need::Write(api::KeySpan::One(&key)))?;
        let deleted = self
            .delete_range(
                &Caller::Operator,
                api::DeleteRangeRequest {
                    key,
                    ..api::DeleteRangeRequest::default()
                },
            )
            .await?;
        Ok(deleted.header)
    }

    /// Campaigns in the election `name` with `lease`, proposing `value`, and answers once this
    /// participant leads. A participant already campaigning with the same lease keeps its place
    /// and updates its value. A request abandoned while waiting withdraws its key.
    pub async fn campaign(
        self: &Arc<Self>,
        caller: &Caller,
        name: &[u8],
        lease: i64,
        value: Vec<u8>,
    ) -> Result<(api::ResponseHeader, LeaderKey)> {
        let prefix = prefix_of(name);
        self.authorize_recipe(caller, &prefix, true)?;
        let key = api::participant_key(&prefix, lease);
        let place = self.join(&key, lease, value.clone()).await?;
        let leader = LeaderKey {
            name: name.to_vec(),
            key: key.clone(),
            rev: place.created,
            lease,
        };
        let withdraw = Withdraw::new(self.clone(), key);
        if place
            .existing_value
            .is_some_and(|existing| existing != value)
        {
            self.proclaim(&Caller::Operator, &leader, value).await?;
        }
        self.wait_turn(&prefix, place.created).await?;
        self.still_held(&leader.key).await?;
        withdraw.disarm();
        Ok((place.header, leader))
    }

    /// Sets the leader's value, if `leader` still leads (its key has the same creation revision).
    pub async fn proclaim(
        &self,
        caller: &Caller,
        leader: &LeaderKey,
        value: Vec<u8>,
    ) -> Result<api::ResponseHeader> {
        self.authorize_recipe(caller, &leader.key, true)?;
        let put = RequestOp::Put(api::PutRequest {
            key: leader.key.clone(),
            value,
            lease: leader.lease,
            ..api::PutRequest::default()
        });
        let response = self
            .txn(&Caller::Operator, if_created_at(leader, put))
            .await?;
        if !response.succeeded {
            return Err(RecipeError::NotLeader);
        }
        Ok(response.header)
    }

    /// Gives up leadership (or a place in the queue): deletes the leader key if it is still the
    /// one given. Resigning a key already gone is not an error.
    pub async fn resign(&self, caller: &Caller, leader: &LeaderKey) -> Result<api::ResponseHeader> {
        self.authorize_recipe(caller, &leader.key, true)?;
        let delete = RequestOp::DeleteRange(api::DeleteRangeRequest {
            key: leader.key.clone(),
            ..api::DeleteRangeRequest::default()
        });
        Ok(self
            .txn(&Caller::Operator, if_created_at(leader, delete))
            .await?
            .header)
    }

    /// The current leader of election `name`: the key under it created first.
    pub async fn election_leader(
        &self,
        caller: &Caller,
        name: &[u8],
    ) -> Result<(api::ResponseHeader, KeyValue)> {
        self.authorize_recipe(caller, &prefix_of(name), false)?;
        let (header, participants) = self.participants(&prefix_of(name), false).await?;
        let first = first_created(participants).ok_or(RecipeError::NoLeader)?;
        Ok((header, first))
    }

    /// The leaders of election `name` as they change: the current one (or the first to campaign,
    /// when nobody does yet), every value it proclaims, and each next one after it resigns or its
    /// lease ends. Ends when the receiver is dropped or the node stops.
    pub fn observe(
        self: &Arc<Self>,
        caller: &Caller,
        name: &[u8],
    ) -> Result<mpsc::Receiver<Result<(api::ResponseHeader, KeyValue)>>> {
        self.authorize_recipe(caller, &prefix_of(name), false)?;
        let (leaders, received) = mpsc::channel(16);
        let node = self.clone();
        let prefix = prefix_of(name);
        tokio::spawn(async move {
            if let Err(e) = node.follow_leaders(&prefix, &leaders).await {
                let _ = leaders.send(Err(e)).await;
            }
        });
        Ok(received)
    }

    /// Refuses a recipe call unless `caller` may read (and, for a `write`, write) every key
    /// under `prefix`: a participant's key, and the others it reads and waits on.
    fn authorize_recipe(&self, caller: &Caller, prefix: &[u8], write: bool) -> Result<()> {
        let end = api::prefix_end(prefix);
        let span = || api::KeySpan::new(prefix, &end);
        self.authorize(caller, Need::Read(span()))?;
        if write {
            self.authorize(caller, Need::Write(span()))?;
        }
        Ok(())
    }

    async fn follow_leaders(
        &self,
        prefix: &[u8],
        leaders: &mpsc::Sender<Result<(api::ResponseHeader, KeyValue)>>,
    ) -> Result<()> {
        loop {
            let (header, participants) = self.participants(prefix, false).await?;
            let (header, leader) = match first_created(participants) {
                Some(leader) => (header, leader),
                None => self.first_put(prefix, header.revision + 1).await?,
            };
            let from = header.revision + 1;
            if leaders.send(Ok((header, leader.clone()))).await.is_err() {
                return Ok(());
            }
            let mut watch = self.watch(
                &Caller::Operator,
                api::WatchRequest {
                    key: leader.key.clone(),
                    start_revision: from,
                    ..api::WatchRequest::default()
                },
            )?;
            'leader: while let Some(response) = watch.next().await {
                if response.canceled {
                    break;
                }
                for event in response.events {
                    if event.kind == EventKind::Delete {
                        break 'leader;
                    }
                    let mut header = response.header.clone();
                    header.revision = event.kv.mod_revision;
                    if leaders.send(Ok((header, event.kv))).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Waits for the first key put under `prefix` from revision `from` on.
    async fn first_put(&self, prefix: &[u8], from: i64) -> Result<(api::ResponseHeader, KeyValue)> {
        let mut watch = self.watch(
            &Caller::Operator,
            api::WatchRequest {
                key: prefix.to_vec(),
                range_end: api::prefix_end(prefix),
                start_revision: from,
                filters: vec![api::WatchFilter::NoDelete],
                ..api::WatchRequest::default()
            },
        )?;
        while let Some(response) = watch.next().await {
            if let Some(event) = response.events.into_iter().next() {
                let mut header = response.header;
                header.revision = event.kv.mod_revision;
                return Ok((header, event.kv));
            }
            if response.canceled {
                return Err(RecipeError::Node(Error::Refused(response.cancel_reason)));
            }
        }
        Err(RecipeError::Node(Error::ShuttingDown))
    }

    /// Creates `key` with `lease` and `value` unless it exists, in one transaction.
    async fn join(&self, key: &[u8], lease: i64, value: Vec<u8>) -> Result<Place> {
        let txn = api::create_unless_exists(key, value, lease);
        let response = self.txn(&Caller::Operator, txn).await?;
        if response.succeeded {
            return Ok(Place {
                created: response.header.revision,
                header: response.header,
                existing_value: None,
            });
        }
        let existing = response.responses.into_iter().find_map(|op| match op {
            ResponseOp::Range(range) => range.kvs.into_iter().next(),
            _ => None,
        });
        // The comparison failed, so the key existed at the transaction's revision, and the
        // range in the same transaction read it.
        let existing = existing.ok_or_else(|| RecipeError::LeaseEnded(lossy(key)))?;
        Ok(Place {
            created: existing.create_revision,
            header: response.header,
            existing_value: Some(existing.value),
        })
    }

    /// Waits until no key under `prefix` created before revision `created` remains.
    async fn wait_turn(&self, prefix: &[u8], created: i64) -> Result<()> {
        loop {
            let (header, participants) = self.participants(prefix, true).await?;
            let before = participants
                .into_iter()
                .filter(|kv| kv.create_revision < created)
                .max_by_key(|kv| kv.create_revision);
            let Some(before) = before else {
                return Ok(());
            };
            self.wait_deleted(before.key, header.revision + 1).await?;
        }
    }

    /// Waits for `key` to be deleted at revision `from` or later; returns early if the watch
    /// ends otherwise (the caller reads again).
    async fn wait_deleted(&self, key: Vec<u8>, from: i64) -> Result<()> {
        let mut watch = self.watch(
            &Caller::Operator,
            api::WatchRequest {
                key,
                start_revision: from,
                filters: vec![api::WatchFilter::NoPut],
                ..api::WatchRequest::default()
            },
        )?;
        while let Some(response) = watch.next().await {
            if response.canceled || !response.events.is_empty() {
                return Ok(());
            }
        }
        Err(RecipeError::Node(Error::ShuttingDown))
    }

    /// Fails if `key` is gone: its lease ended while its holder waited.
    async fn still_held(&self, key: &[u8]) -> Result<()> {
        let range = self
            .range(
                &Caller::Operator,
                api::RangeRequest {
                    key: key.to_vec(),
                    count_only: true,
                    ..api::RangeRequest::default()
                },
                usize::MAX,
            )
            .await?;
        if range.count == 0 {
            return Err(RecipeError::LeaseEnded(lossy(key)));
        }
        Ok(())
    }

    /// Every key under `prefix` (a linearizable read), with or without values.
    async fn participants(
        &self,
        prefix: &[u8],
        keys_only: bool,
    ) -> Result<(api::ResponseHeader, Vec<KeyValue>)> {
        let range = self
            .range(
                &Caller::Operator,
                api::RangeRequest {
                    key: prefix.to_vec(),
                    range_end: api::prefix_end(prefix),
                    keys_only,
                    ..api::RangeRequest::default()
                },
                usize::MAX,
            )
            .await?;
        Ok((range.header, range.kvs))
    }
}

/// Deletes a participant's key if the request is dropped or fails before it holds the lock or
/// leads, as etcd's recipes do, so an abandoned waiter never blocks those after it.
struct Withdraw {
    node: Arc<Node>,
    key: Option<Vec<u8>>,
}

impl Withdraw {
    fn new(node: Arc<Node>, key: Vec<u8>) -> Self {
        Withdraw {
            node,
            key: Some(key),
        }
    }

    fn disarm(mut self) {
        self.key = None;
    }
}

impl Drop for Withdraw {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let node = self.node.clone();
        runtime.spawn(async move {
            let delete = api::DeleteRangeRequest {
                key,
                ..api::DeleteRangeRequest::default()
            };
            if let Err(e) = node.delete_range(&Caller::Operator, delete).await {
                tracing::warn!("could not withdraw an abandoned lock or campaign key: {e}");
            }
        });
    }
}

/// The transaction that runs `op` only if the leader key is still the one created at its
/// revision.
fn if_created_at(leader: &LeaderKey, op: RequestOp) -> api::TxnRequest {
    api::TxnRequest {
        compare: vec![Compare {
            key: leader.key.clone(),
            range_end: Vec::new(),
            target: CompareTarget::CreateRevision(leader.rev),
            result: CompareResult::Equal,
        }],
        success: vec![op],
        failure: Vec::new(),
    }
}

/// The prefix of a lock's or an election's keys (etcd's: the name and a slash).
fn prefix_of(name: &[u8]) -> Vec<u8> {
    [name, b"/"].concat()
}

fn first_created(participants: Vec<KeyValue>) -> Option<KeyValue> {
    participants.into_iter().min_by_key(|kv| kv.create_revision)
}

fn lossy(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}
