//! Watches: how the changes the state machine applies reach the watchers, live or from history.
//!
//! The state machine writes each batch, then publishes its revisions' changes to the [`WatchHub`],
//! which hands them to every subscriber whose range they touch, without ever waiting: a
//! subscriber's queue is bounded, and one that is full is dropped from the hub. Each watch is a
//! task ([`run_watch`]) that alternates between two modes:
//!
//! - catching up: it reads whole revisions, from the next revision it owes its client up to the
//!   revision the hub had published when it (re)subscribed: from the hub's [`RecentRevisions`]
//!   while they reach back that far, else from the history on disk;
//! - live: it forwards what the hub hands it, skipping revisions it has already sent.
//!
//! It subscribes before it reads the history, and the hub publishes only what is already on disk,
//! so nothing falls between the two; a watch dropped for falling behind (or because a snapshot
//! replaced the state) subscribes again and catches up. A slow client therefore costs only its own
//! task, never the node or other watchers, and every watcher sees exactly the changes the history
//! holds for each revision, however it received them.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::mpsc;

use super::apply::RevisionChanges;
use super::mvcc::Revisions;
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
/// Revisions taken from [`RecentRevisions`] per step while catching up.
const CATCH_UP_REVISIONS: usize = 1024;
/// The size [`RecentRevisions`] keeps at most, in bytes of keys and values (about 20,000 revisions
/// of one 128-byte put each, four seconds at 5,000 puts/s).
const RECENT_BYTES: usize = 8 << 20;
/// What an event costs [`RecentRevisions`] beyond its keys and values, roughly.
const EVENT_OVERHEAD_BYTES: usize = 160;
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
    /// Watches running, live or catching up, readable without the lock: for the node's metrics,
    /// and the apply path collects events only while some watch could want them. Every
    /// subscriber is a running watch.
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
    recent: RecentRevisions,
}

/// The changes of the newest published revisions, kept for watches catching up. Watchers dropped
/// for falling behind all need the same few thousand revisions at once; read from disk, each
/// watch read each of them again (with its previous version, for `prev_kv`): in a profile of a
/// thousand watchers behind 5,000 puts/s, the threads making those reads took two thirds of
/// the members' CPU. Shared here, they cost nothing more than the live changes they are.
///
/// Invariant: the revisions are consecutive, none is compacted, and the last (if any) is the
/// hub's `revision` (a gap, such as a batch applied while no watch ran, empties it first).
#[derive(Debug, Default)]
struct RecentRevisions {
    revisions: VecDeque<Arc<RevisionChanges>>,
    /// What `revisions` holds, as [`cost`] counts it; at most [`RECENT_BYTES`].
    bytes: usize,
}

impl RecentRevisions {
    /// Adds the revision after the last one held (after a gap, it starts afresh), and forgets
    /// the oldest ones past the size limit.
    fn push(&mut self, changes: &Arc<RevisionChanges>) {
        let follows = self
            .revisions
            .back()
            .is_none_or(|last| last.revision + 1 == changes.revision);
        if !follows {
            self.clear();
        }
        self.bytes += cost(changes);
        self.revisions.push_back(changes.clone());
        while self.bytes > RECENT_BYTES {
            let Some(oldest) = self.revisions.pop_front() else {
                break;
            };
            self.bytes -= cost(&oldest);
        }
    }

    /// Forgets the revisions below `revision`, now compacted: a watch that needs them reads the
    /// history, which tells it they are gone.
    fn forget_below(&mut self, revision: i64) {
        while let Some(oldest) = self.revisions.front() {
            if oldest.revision >= revision {
                break;
            }
            self.bytes -= cost(oldest);
            self.revisions.pop_front();
        }
    }

    fn clear(&mut self) {
        self.revisions.clear();
        self.bytes = 0;
    }

    /// The revisions from `from` on, none after `to`, at most `max`; none unless `from` is held.
    fn since(&self, from: i64, to: i64, max: usize) -> Vec<Arc<RevisionChanges>> {
        let Some(first) = self.revisions.front().map(|oldest| oldest.revision) else {
            return Vec::new();
        };
        let (Ok(skip), Ok(wanted)) = (
            usize::try_from(from - first),
            usize::try_from(to - from + 1),
        ) else {
            return Vec::new();
        };
        self.revisions
            .iter()
            .skip(skip)
            .take(wanted.min(max))
            .cloned()
            .collect()
    }
}

/// What `changes` costs [`RecentRevisions`].
fn cost(changes: &RevisionChanges) -> usize {
    changes
        .events
        .iter()
        .map(|event| EVENT_OVERHEAD_BYTES + event.payload_bytes())
        .sum()
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
                recent: RecentRevisions::default(),
            }),
            watches: AtomicUsize::new(0),
            catch_ups: tokio::sync::Semaphore::new(CONCURRENT_CATCH_UPS),
        }
    }

    /// Watches running on this member.
    pub fn watches(&self) -> usize {
        self.watches.load(Ordering::Relaxed)
    }

    /// Whether any watch runs, so that applying should collect events: for its subscription, or
    /// for the recent revisions it may catch up from (a watch dropped for falling behind is not
    /// subscribed until it has seen what was queued for it).
    pub(super) fn wants_events(&self) -> bool {
        self.watches() > 0
    }

    /// Hands the changes of an applied batch, now on disk, to the subscribers they concern, and
    /// records `revisions.current` as published. `collected` is false when the batch was applied
    /// without collecting events (no watch ran then): anyone who subscribed meanwhile is dropped,
    /// to catch up from disk.
    pub(super) fn publish(
        &self,
        revisions: Revisions,
        changes: &[Arc<RevisionChanges>],
        collected: bool,
    ) {
        let revision = revisions.current;
        let mut hub = self.lock();
        // Revisions were made whose changes nobody collected: no subscriber and no window can
        // hand them on.
        let missed = !collected && revision > hub.revision;
        if missed {
            hub.recent.clear();
        } else {
            for revision_changes in changes {
                hub.recent.push(revision_changes);
            }
        }
        hub.recent.forget_below(revisions.compacted);
        let mut dropped = Vec::new();
        for (id, subscriber) in &hub.subscribers {
            if missed {
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
    }

    /// The state was replaced (a snapshot was installed) at `revision`: every subscriber catches
    /// up from the new state's history.
    pub(super) fn reset(&self, revision: i64) {
        let mut hub = self.lock();
        hub.subscribers.clear();
        hub.recent.clear();
        hub.revision = revision;
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
    }

    /// The revision a subscription has seen everything up to, when it has nothing queued and is
    /// still subscribed: what a progress notification may report.
    fn progress(&self, subscription: &Subscription) -> Option<i64> {
        let hub = self.lock();
        (hub.subscribers.contains_key(&subscription.id) && subscription.receiver.is_empty())
            .then_some(hub.revision)
    }

    /// The recent revisions from `from` on (see [`RecentRevisions::since`]).
    pub(super) fn recent(&self, from: i64, to: i64) -> Vec<Arc<RevisionChanges>> {
        self.lock().recent.since(from, to, CATCH_UP_REVISIONS)
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

/// Sends every selected change of the revisions from `next` to `to`: from the hub's recent
/// revisions while they hold `next`, else from the history on disk.
async fn catch_up(
    reader: &StateReader,
    request: &WatchRequest,
    out: &mpsc::Sender<WatchResponse>,
    next: &mut i64,
    to: i64,
) -> Result<(), End> {
    let hub = reader.watch_hub();
    while *next <= to {
        let recent = hub.recent(*next, to);
        if let Some(last) = recent.last().map(|changes| changes.revision) {
            for batch in recent.chunks(BATCH_REVISIONS) {
                send_selected(request, out, batch).await?;
            }
            *next = last + 1;
            continue;
        }
        let (from, span_key, range_end, prev_kv) = (
            *next,
            request.key.clone(),
            request.range_end.clone(),
            request.prev_kv,
        );
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
            kind: event.kind,
            kv: event.kv.clone(),
            // Only the watches that asked for it pay for a copy of the previous version.
            prev_kv: if request.prev_kv {
                event.prev_kv.clone()
            } else {
                None
            },
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::KeyValue;

    fn changes(revision: i64, value_bytes: usize) -> Arc<RevisionChanges> {
        Arc::new(RevisionChanges {
            revision,
            events: vec![Event {
                kind: EventKind::Put,
                kv: KeyValue {
                    key: b"k".to_vec(),
                    mod_revision: revision,
                    value: vec![0; value_bytes],
                    ..KeyValue::default()
                },
                prev_kv: None,
            }],
        })
    }

    fn revisions(found: &[Arc<RevisionChanges>]) -> Vec<i64> {
        found.iter().map(|changes| changes.revision).collect()
    }

    #[test]
    fn recent_revisions_answer_only_from_a_revision_they_hold() {
        let mut recent = RecentRevisions::default();
        assert!(recent.since(1, 10, 100).is_empty());
        for revision in 5..=9 {
            recent.push(&changes(revision, 10));
        }
        assert_eq!(revisions(&recent.since(5, 9, 100)), vec![5, 6, 7, 8, 9]);
        assert_eq!(revisions(&recent.since(7, 8, 100)), vec![7, 8]);
        assert_eq!(revisions(&recent.since(6, 9, 2)), vec![6, 7]);
        // Not held: older than the oldest, newer than the newest, or an empty range.
        assert!(recent.since(4, 9, 100).is_empty());
        assert!(recent.since(10, 12, 100).is_empty());
        assert!(recent.since(8, 7, 100).is_empty());
    }

    #[test]
    fn a_gap_empties_recent_revisions_and_compaction_trims_them() {
        let mut recent = RecentRevisions::default();
        for revision in 1..=4 {
            recent.push(&changes(revision, 10));
        }
        recent.push(&changes(6, 10));
        assert_eq!(revisions(&recent.since(6, 6, 100)), vec![6]);
        assert!(recent.since(4, 6, 100).is_empty());
        for revision in 7..=9 {
            recent.push(&changes(revision, 10));
        }
        recent.forget_below(8);
        assert!(recent.since(7, 9, 100).is_empty());
        assert_eq!(revisions(&recent.since(8, 9, 100)), vec![8, 9]);
        assert_eq!(recent.bytes, 2 * cost(&changes(8, 10)));
    }

    #[test]
    fn recent_revisions_keep_to_their_size() {
        let mut recent = RecentRevisions::default();
        let value_bytes = RECENT_BYTES / 4;
        for revision in 1..=10 {
            recent.push(&changes(revision, value_bytes));
            assert!(recent.bytes <= RECENT_BYTES);
        }
        let held = revisions(&recent.since(1, 10, 100));
        assert!(held.is_empty());
        let first = recent.revisions.front().map(|c| c.revision).unwrap();
        assert_eq!(
            revisions(&recent.since(first, 10, 100)),
            (first..=10).collect::<Vec<_>>()
        );
        assert!(first > 1 && first <= 8, "{first}");
        // One revision larger than the whole budget is not kept at all.
        recent.push(&changes(11, RECENT_BYTES));
        assert_eq!((recent.revisions.len(), recent.bytes), (0, 0));
    }
}
