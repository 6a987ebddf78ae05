//! Watches: how the changes the state machine applies reach the watchers, live or from history.
//!
//! The state machine writes each batch, then publishes its revisions' changes to the [`WatchHub`],
//! which hands them to every subscriber whose range they touch, without ever waiting: a
//! subscriber's queue is bounded, and one that is full is dropped from the hub. Each watch is a
//! task ([`run_watch`]) that alternates between two modes:
//!
//! - catching up: it reads whole revisions from the history on disk, from the next revision it
//!   owes its client up to the revision the hub had published when it (re)subscribed;
//! - live: it forwards what the hub hands it, skipping revisions it has already sent.
//!
//! It subscribes before it reads the history, and the hub publishes only what is already on disk,
//! so nothing falls between the two; a watch dropped for falling behind (or because a snapshot
//! replaced the state) subscribes again and catches up from disk. A slow client therefore costs
//! only its own task, never the node or other watchers, and every watcher sees exactly the
//! changes the history holds for each revision, however it received them.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::mpsc;

use super::apply::RevisionChanges;
use super::StateReader;
use crate::api::Event;
use crate::api::EventKind;
use crate::api::KeySpan;
use crate::api::ResponseHeader;
use crate::api::WatchFilter;
use crate::api::WatchRequest;
use crate::api::WatchResponse;

/// Revisions a subscriber's queue holds before the subscriber is dropped and must catch up.
const SUBSCRIBER_QUEUE: usize = 256;
/// Changes read from the history per step while catching up (a revision is never split).
const CATCH_UP_CHANGES: usize = 1000;
/// Revisions one response carries at most (each whole): a watcher with a backlog gets it in
/// batches.
const BATCH_REVISIONS: usize = 64;
/// Responses waiting for a watch's client before the watch stops reading.
pub const WATCH_QUEUE: usize = 8;
/// History reads for catching up that run at once on a member; the others wait their turn.
/// The reads run on the blocking pool, which also carries the state machine's and the log's
/// writes when those must wait for the disk, and reads of the key space: a thousand watchers
/// dropped together for being slow must not fill it and stall the writes behind them.
const CONCURRENT_CATCH_UPS: usize = 2;

/// Where applied changes are handed to live watchers.
#[derive(Debug)]
pub struct WatchHub {
    inner: Mutex<Hub>,
    /// Subscribers, readable without the lock: the apply path collects events only when some
    /// watcher could want them.
    subscribers: AtomicUsize,
    /// Watches running, live or catching up: for the node's metrics.
    watches: AtomicUsize,
    /// Turns to read the history (see [`CONCURRENT_CATCH_UPS`]).
    catch_ups: tokio::sync::Semaphore,
}

#[derive(Debug)]
struct Hub {
    /// The newest revision published: everything up to it is on disk and has been handed out.
    revision: i64,
    next_id: u64,
    subscribers: HashMap<u64, Subscriber>,
}

#[derive(Debug)]
struct Subscriber {
    key: Vec<u8>,
    range_end: Vec<u8>,
    sender: mpsc::Sender<Arc<RevisionChanges>>,
}

/// A watch's place in the hub; leaves the hub when dropped.
struct Subscription {
    id: u64,
    hub: Arc<WatchHub>,
    receiver: mpsc::Receiver<Arc<RevisionChanges>>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.remove(self.id);
    }
}

impl WatchHub {
    pub(super) fn new(revision: i64) -> Self {
        WatchHub {
            inner: Mutex::new(Hub {
                revision,
                next_id: 0,
                subscribers: HashMap::new(),
            }),
            subscribers: AtomicUsize::new(0),
            watches: AtomicUsize::new(0),
            catch_ups: tokio::sync::Semaphore::new(CONCURRENT_CATCH_UPS),
        }
    }

    /// Watches running on this member.
    pub fn watches(&self) -> usize {
        self.watches.load(Ordering::Relaxed)
    }

    /// Whether any watcher is subscribed, so that applying should collect events.
    pub(super) fn wants_events(&self) -> bool {
        self.subscribers.load(Ordering::Relaxed) > 0
    }

    /// Hands the changes of an applied batch, now on disk, to the subscribers they concern, and
    /// records `revision` as published. `collected` is false when the batch was applied without
    /// collecting events (nobody was subscribed then): anyone who subscribed meanwhile is dropped,
    /// to catch up from disk.
    pub(super) fn publish(&self, revision: i64, changes: &[Arc<RevisionChanges>], collected: bool) {
        let mut hub = self.lock();
        let mut dropped = Vec::new();
        for (id, subscriber) in &hub.subscribers {
            if !collected && revision > hub.revision {
                dropped.push(*id);
                continue;
            }
            let span = KeySpan::new(&subscriber.key, &subscriber.range_end);
            for revision_changes in changes {
                if !revision_changes
                    .events
                    .iter()
                    .any(|event| span.contains(&event.kv.key))
                {
                    continue;
                }
                if subscriber
                    .sender
                    .try_send(revision_changes.clone())
                    .is_err()
                {
                    dropped.push(*id);
                    break;
                }
            }
        }
        for id in dropped {
            hub.subscribers.remove(&id);
        }
        hub.revision = hub.revision.max(revision);
        self.subscribers
            .store(hub.subscribers.len(), Ordering::Relaxed);
    }

    /// The state was replaced (a snapshot was installed) at `revision`: every subscriber catches
    /// up from the new state's history.
    pub(super) fn reset(&self, revision: i64) {
        let mut hub = self.lock();
        hub.subscribers.clear();
        hub.revision = revision;
        self.subscribers.store(0, Ordering::Relaxed);
    }

    /// Subscribes to the changes of `key`/`range_end`; returns the subscription and the revision
    /// published so far (the subscription receives only later ones).
    fn subscribe(self: &Arc<Self>, key: &[u8], range_end: &[u8]) -> (Subscription, i64) {
        let (sender, receiver) = mpsc::channel(SUBSCRIBER_QUEUE);
        let mut hub = self.lock();
        let id = hub.next_id;
        hub.next_id += 1;
        hub.subscribers.insert(
            id,
            Subscriber {
                key: key.to_vec(),
                range_end: range_end.to_vec(),
                sender,
            },
        );
        self.subscribers
            .store(hub.subscribers.len(), Ordering::Relaxed);
        let revision = hub.revision;
        drop(hub);
        let subscription = Subscription {
            id,
            hub: self.clone(),
            receiver,
        };
        (subscription, revision)
    }

    fn remove(&self, id: u64) {
        let mut hub = self.lock();
        hub.subscribers.remove(&id);
        self.subscribers
            .store(hub.subscribers.len(), Ordering::Relaxed);
    }

    /// The revision a subscription has seen everything up to, when it has nothing queued and is
    /// still subscribed: what a progress notification may report.
    fn progress(&self, subscription: &Subscription) -> Option<i64> {
        let hub = self.lock();
        (hub.subscribers.contains_key(&subscription.id) && subscription.receiver.is_empty())
            .then_some(hub.revision)
    }

    /// The newest revision published.
    pub fn revision(&self) -> i64 {
        self.lock().revision
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Hub> {
        crate::locks::lock(&self.inner)
    }
}

/// How one watch ended, for its last response.
enum End {
    /// The client went away.
    Gone,
    /// The history it needed is compacted.
    Compacted(i64),
    Failed(String),
}

/// Serves `request` into `out` until the client drops its receiver: the created response, then
/// the selected changes of every revision from the start on, each revision whole in one response,
/// and (with `progress_notify`) a progress response after `progress_every` without any.
pub async fn run_watch(
    reader: StateReader,
    request: WatchRequest,
    out: mpsc::Sender<WatchResponse>,
    progress_every: Duration,
) {
    let hub = reader.watch_hub();
    let _running = Running::new(&hub);
    let (mut subscription, mut published) = hub.subscribe(&request.key, &request.range_end);
    let mut next = if request.start_revision > 0 {
        request.start_revision
    } else {
        published + 1
    };
    let created = WatchResponse {
        header: header(published),
        created: true,
        ..WatchResponse::default()
    };
    if out.send(created).await.is_err() {
        return;
    }
    let end = loop {
        if let Err(end) = catch_up(&reader, &request, &out, &mut next, published).await {
            break end;
        }
        match forward_live(
            &hub,
            &request,
            &out,
            &mut subscription,
            &mut next,
            progress_every,
        )
        .await
        {
            Some(end) => break end,
            None => (subscription, published) = hub.subscribe(&request.key, &request.range_end),
        }
    };
    let last = match end {
        End::Gone => return,
        End::Compacted(compact_revision) => WatchResponse {
            header: header(hub.revision()),
            canceled: true,
            compact_revision,
            cancel_reason: format!(
                "required revision has been compacted (compacted at {compact_revision})"
            ),
            ..WatchResponse::default()
        },
        End::Failed(reason) => WatchResponse {
            header: header(hub.revision()),
            canceled: true,
            cancel_reason: reason,
            ..WatchResponse::default()
        },
    };
    let _ = out.send(last).await;
}

/// Counts a watch as running for as long as it lives.
struct Running<'a>(&'a WatchHub);

impl<'a> Running<'a> {
    fn new(hub: &'a WatchHub) -> Self {
        hub.watches.fetch_add(1, Ordering::Relaxed);
        Running(hub)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.watches.fetch_sub(1, Ordering::Relaxed);
    }
}

fn header(revision: i64) -> ResponseHeader {
    ResponseHeader {
        revision,
        ..ResponseHeader::default()
    }
}

/// Sends every selected change of the revisions from `next` to `to` from the history on disk.
async fn catch_up(
    reader: &StateReader,
    request: &WatchRequest,
    out: &mpsc::Sender<WatchResponse>,
    next: &mut i64,
    to: i64,
) -> Result<(), End> {
    while *next <= to {
        let (from, span_key, range_end, prev_kv) = (
            *next,
            request.key.clone(),
            request.range_end.clone(),
            request.prev_kv,
        );
        let hub = reader.watch_hub();
        let turn = hub
            .catch_ups
            .acquire()
            .await
            .map_err(|e| End::Failed(format!("reading the history failed: {e}")))?;
        let reader = reader.clone();
        let read = tokio::task::spawn_blocking(move || {
            reader.changes_since(&span_key, &range_end, from, to, CATCH_UP_CHANGES, prev_kv)
        })
        .await
        .map_err(|e| End::Failed(format!("reading the history failed: {e}")))?
        .map_err(|e| End::Failed(format!("reading the history failed: {e}")))?;
        drop(turn);
        let (changes, read_to) = match read {
            Ok(read) => read,
            Err(compact_revision) => return Err(End::Compacted(compact_revision)),
        };
        for batch in changes.chunks(BATCH_REVISIONS) {
            send_selected(request, out, batch).await?;
        }
        *next = read_to + 1;
    }
    Ok(())
}

/// Forwards what the hub hands `subscription` until it is dropped from the hub (`None`: catch up
/// again) or the watch ends.
async fn forward_live(
    hub: &Arc<WatchHub>,
    request: &WatchRequest,
    out: &mpsc::Sender<WatchResponse>,
    subscription: &mut Subscription,
    next: &mut i64,
    progress_every: Duration,
) -> Option<End> {
    loop {
        let idle = tokio::time::sleep(progress_every);
        tokio::select! {
            received = subscription.receiver.recv() => match received {
                Some(changes) => {
                    let batch = queued_after(changes, &mut subscription.receiver, *next);
                    let Some(last) = batch.last().map(|changes| changes.revision) else {
                        continue;
                    };
                    if let Err(end) = send_selected(request, out, &batch).await {
                        return Some(end);
                    }
                    *next = last + 1;
                }
                None => return None,
            },
            () = idle, if request.progress_notify => {
                if let Some(revision) = hub.progress(subscription) {
                    let progress = WatchResponse { header: header(revision), ..WatchResponse::default() };
                    if out.send(progress).await.is_err() {
                        return Some(End::Gone);
                    }
                }
            }
            () = out.closed() => return Some(End::Gone),
        }
    }
}

/// `first` and whatever else is already queued behind it, up to [`BATCH_REVISIONS`], without the
/// revisions before `next` (already sent from the history). A watcher that fell behind gets its
/// backlog in a few responses rather than one per revision: the cost of a response (a wake-up, a
/// line, a write) is paid per batch, so a crowd of watchers catches up instead of falling
/// further behind.
fn queued_after(
    first: Arc<RevisionChanges>,
    queue: &mut mpsc::Receiver<Arc<RevisionChanges>>,
    next: i64,
) -> Vec<Arc<RevisionChanges>> {
    let mut batch = Vec::new();
    let mut received = Some(first);
    while let Some(changes) = received {
        if changes.revision >= next {
            batch.push(changes);
        }
        if batch.len() >= BATCH_REVISIONS {
            break;
        }
        received = queue.try_recv().ok();
    }
    batch
}

/// Sends the events that `request` selects from `revisions` (whole revisions, in order) in one
/// response, if there are any.
async fn send_selected<C: Borrow<RevisionChanges>>(
    request: &WatchRequest,
    out: &mpsc::Sender<WatchResponse>,
    revisions: &[C],
) -> Result<(), End> {
    let span = KeySpan::new(&request.key, &request.range_end);
    let events: Vec<Event> = revisions
        .iter()
        .flat_map(|changes| changes.borrow().events.iter())
        .filter(|event| span.contains(&event.kv.key) && wanted(request, event))
        .map(|event| Event {
            prev_kv: event.prev_kv.clone().filter(|_| request.prev_kv),
            ..event.clone()
        })
        .collect();
    let Some(last) = events.last().map(|event| event.kv.mod_revision) else {
        return Ok(());
    };
    let response = WatchResponse {
        header: header(last),
        events,
        ..WatchResponse::default()
    };
    out.send(response).await.map_err(|_| End::Gone)
}

fn wanted(request: &WatchRequest, event: &Event) -> bool {
    let filtered = match event.kind {
        EventKind::Put => WatchFilter::NoPut,
        EventKind::Delete => WatchFilter::NoDelete,
    };
    !request.filters.contains(&filtered)
}
