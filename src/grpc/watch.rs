//! etcd's Watch service: one bidirectional stream carries any number of watches. The client
//! creates and cancels watches and asks for progress on it; each watch is a `Node::watch` whose
//! responses a task forwards, tagged with the watch's id, into the stream's one outgoing queue.
//!
//! A watch that has fallen behind sends the revisions already waiting for it in one message
//! (`coalesce`), so catching up costs fewer messages than keeping up.
//!
//! Memory stays bounded whatever the client does: the outgoing queue is bounded, so a client
//! that never reads stops its forwarders, whose node watches then fall behind and are dropped
//! from the watch hub (to catch up from disk later, see `store::watch`), never buffered.

use std::collections::HashMap;
use std::sync::atomic::AtomicI64;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::Stream;
use futures::StreamExt;
use prost::Message;
use tokio::sync::mpsc;
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::AbortHandle;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::BoxStream;
use tonic::Request;
use tonic::Response;
use tonic::Status;
use tonic::Streaming;

use crate::api;
use crate::api::etcdpb::etcdserverpb as pb;
use crate::api::etcdpb::etcdserverpb::watch_request::RequestUnion;
use crate::api::etcdpb::etcdserverpb::watch_server::Watch;
use crate::node::Caller;
use crate::node::Node;
use crate::node::WatchStream;

use super::caller;
use super::convert;
use super::status::status;
use super::status::COMPACTED;
use super::StreamBudget;

/// Responses queued for a stream's client before its watches wait (each response may carry many
/// revisions, so this is kept small: it is what an unread stream holds).
const STREAM_QUEUE: usize = 16;
/// The most watches one stream may hold: a client cannot make the node run an unbounded number
/// of tasks through one stream (it can open more streams, each bounded by HTTP/2's own limit).
pub const MAX_WATCHES_PER_STREAM: usize = 10_000;
/// etcd's watch id for a response that belongs to no single watch (a progress answer).
const NO_WATCH: i64 = -1;
/// etcd's error for a watch id already in use on the stream.
const DUPLICATE_WATCH_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

type Outgoing = mpsc::Sender<Result<pb::WatchResponse, Status>>;

pub struct WatchService {
    node: Arc<Node>,
    streams: StreamBudget,
}

impl WatchService {
    pub fn new(node: Arc<Node>, streams: StreamBudget) -> Self {
        WatchService { node, streams }
    }
}

#[tonic::async_trait]
impl Watch for WatchService {
    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<BoxStream<pb::WatchResponse>>, Status> {
        self.open(request).await
    }
}

impl WatchService {
    /// Opens a Watch stream whose requests are `request`'s stream: a gRPC stream's messages, or
    /// the messages of a JSON gateway request.
    pub async fn open<S>(
        &self,
        request: Request<S>,
    ) -> Result<Response<BoxStream<pb::WatchResponse>>, Status>
    where
        S: Stream<Item = Result<pb::WatchRequest, Status>> + Send + Unpin + 'static,
    {
        let caller = caller(&self.node, &request).await?;
        let place = self.streams.open()?;
        let (outgoing, received) = mpsc::channel(STREAM_QUEUE);
        let session = Session {
            _place: place,
            node: self.node.clone(),
            caller,
            outgoing,
            watches: HashMap::new(),
            forwarders: JoinSet::new(),
            next_id: 0,
        };
        tokio::spawn(session.run(request.into_inner()));
        Ok(Response::new(Box::pin(ReceiverStream::new(received))))
    }
}

/// One watch of a stream.
struct ActiveWatch {
    forwarder: AbortHandle,
    /// How far the client has been told everything this watch selects: the last revision sent
    /// whole, or the last progress answer. A progress request is answered with the lowest of
    /// these, so no event at or below it can follow (etcd's "bookmarkable" rule).
    progress: Arc<AtomicI64>,
}

/// The state of one Watch stream.
struct Session {
    /// Its place in the member's stream budget, given back when the session ends.
    _place: OwnedSemaphorePermit,
    node: Arc<Node>,
    /// Who opened the stream (its token): every watch on it is theirs.
    caller: Caller,
    outgoing: Outgoing,
    watches: HashMap<i64, ActiveWatch>,
    /// Each returns its watch id when its watch ends.
    forwarders: JoinSet<i64>,
    /// The next id handed out when the client lets the server choose.
    next_id: i64,
}

impl Session {
    /// Serves the stream until the client stops listening; dropping the session ends every watch
    /// it holds. A client that is done sending (a gateway request's body has ended, or a gRPC
    /// client closed its side) keeps receiving, as etcd's watches go on after the requests end.
    async fn run<S>(mut self, incoming: S)
    where
        S: Stream<Item = Result<pb::WatchRequest, Status>> + Unpin,
    {
        let mut incoming = Some(incoming);
        loop {
            tokio::select! {
                message = next_request(&mut incoming) => match message {
                    Some(Ok(request)) => {
                        if self.handle(request).await.is_err() {
                            return;
                        }
                    }
                    None => incoming = None,
                    Some(Err(malformed)) => {
                        let _ = self.outgoing.send(Err(malformed)).await;
                        return;
                    }
                },
                Some(Ok((task, id))) = self.forwarders.join_next_with_id() => {
                    if self.watches.get(&id).is_some_and(|w| w.forwarder.id() == task) {
                        self.watches.remove(&id);
                    }
                }
                () = self.outgoing.closed() => return,
            }
        }
    }

    /// Acts on one request; fails once the client no longer reads.
    async fn handle(&mut self, request: pb::WatchRequest) -> Result<(), Closed> {
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(RequestUnion::CancelRequest(cancel)) => {
                let Some(watch) = self.watches.remove(&cancel.watch_id) else {
                    return Ok(());
                };
                watch.forwarder.abort();
                let response = pb::WatchResponse {
                    header: convert::header(self.node.header(self.current_revision())),
                    watch_id: cancel.watch_id,
                    canceled: true,
                    ..pb::WatchResponse::default()
                };
                self.send(response).await
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                let revision = self
                    .watches
                    .values()
                    .map(|watch| watch.progress.load(Ordering::Acquire))
                    .min()
                    .unwrap_or_else(|| self.current_revision());
                let response = pb::WatchResponse {
                    header: convert::header(self.node.header(revision)),
                    watch_id: NO_WATCH,
                    ..pb::WatchResponse::default()
                };
                self.send(response).await
            }
            None => Ok(()),
        }
    }

    /// Starts a watch. A watch that cannot start is answered, as etcd does, with a response
    /// both created and canceled, saying why.
    async fn create(&mut self, create: pb::WatchCreateRequest) -> Result<(), Closed> {
        let id = match create.watch_id {
            0 => self.free_id(),
            id if self.watches.contains_key(&id) => {
                return self.refuse(id, DUPLICATE_WATCH_ID.to_string()).await
            }
            id => id,
        };
        if self.watches.len() >= MAX_WATCHES_PER_STREAM {
            let reason = format!(
                "etcdserver: too many watches on one stream (at most {MAX_WATCHES_PER_STREAM})"
            );
            return self.refuse(id, reason).await;
        }
        let request = match convert::watch_request(&create) {
            Ok(request) => request,
            Err(refused) => return self.refuse(id, refused.message().to_string()).await,
        };
        // Everything up to the revision applied now, or before the start, is already known
        // not to be owed to the client.
        let now = self.current_revision();
        let known = match request.start_revision {
            0 => now,
            start => (start - 1).min(now),
        };
        let stream = match self.node.watch(&self.caller, request) {
            Ok(stream) => stream,
            Err(e) => return self.refuse(id, status(e).message().to_string()).await,
        };
        let progress = Arc::new(AtomicI64::new(known));
        let fragment_bytes = create
            .fragment
            .then(|| usize::try_from(self.node.max_request_bytes()).unwrap_or(usize::MAX));
        let forwarder = Forwarder {
            id,
            outgoing: self.outgoing.clone(),
            fragment_bytes,
            progress: progress.clone(),
        };
        let handle = self.forwarders.spawn(forwarder.run(stream));
        self.watches.insert(
            id,
            ActiveWatch {
                forwarder: handle,
                progress,
            },
        );
        Ok(())
    }

    fn free_id(&mut self) -> i64 {
        while self.watches.contains_key(&self.next_id) {
            self.next_id += 1;
        }
        self.next_id += 1;
        self.next_id - 1
    }

    async fn refuse(&self, id: i64, reason: String) -> Result<(), Closed> {
        let response = pb::WatchResponse {
            header: convert::header(self.node.header(self.current_revision())),
            watch_id: id,
            created: true,
            canceled: true,
            cancel_reason: reason,
            ..pb::WatchResponse::default()
        };
        self.send(response).await
    }

    /// The newest revision this member has published to watchers.
    fn current_revision(&self) -> i64 {
        self.node.current_header().revision
    }

    async fn send(&self, response: pb::WatchResponse) -> Result<(), Closed> {
        self.outgoing.send(Ok(response)).await.map_err(|_| Closed)
    }
}

/// The next request of `incoming`; never ready once the requests have ended (`None`).
async fn next_request<S>(incoming: &mut Option<S>) -> Option<Result<pb::WatchRequest, Status>>
where
    S: Stream<Item = Result<pb::WatchRequest, Status>> + Unpin,
{
    match incoming {
        Some(incoming) => incoming.next().await,
        None => std::future::pending().await,
    }
}

/// The client stopped reading the stream.
struct Closed;

/// Keys, values and previous values a coalesced message carries at most before it is sent: well
/// under the 4 MiB a gRPC client accepts by default (tonic's limit).
const COALESCE_BYTES: usize = 256 << 10;

/// Joins to `response` the responses with events that are already waiting behind it, whole
/// revisions in order, up to [`COALESCE_BYTES`]: a watch that has fallen behind then costs one
/// gRPC message per batch rather than one per node response. A waiting response of another kind
/// (progress, the end) is left in `held`, to be sent on its own next.
fn coalesce(
    mut response: api::WatchResponse,
    stream: &mut WatchStream,
    held: &mut Option<api::WatchResponse>,
) -> api::WatchResponse {
    let joinable = |r: &api::WatchResponse| {
        !r.created && !r.canceled && r.compact_revision == 0 && !r.events.is_empty()
    };
    if !joinable(&response) {
        return response;
    }
    let mut bytes = event_bytes(&response);
    while bytes < COALESCE_BYTES {
        let Some(next) = stream.try_next() else {
            break;
        };
        if !joinable(&next) {
            *held = Some(next);
            break;
        }
        bytes += event_bytes(&next);
        response.header = next.header;
        response.events.extend(next.events);
    }
    response
}

/// The bytes of keys and values a response's events carry.
fn event_bytes(response: &api::WatchResponse) -> usize {
    response.events.iter().map(api::Event::payload_bytes).sum()
}

/// Hands one watch's responses to the stream.
struct Forwarder {
    id: i64,
    outgoing: Outgoing,
    /// Responses larger than this are split into fragments; `None` when the watch did not ask
    /// for fragments (then a response's size is never computed).
    fragment_bytes: Option<usize>,
    progress: Arc<AtomicI64>,
}

impl Forwarder {
    async fn run(self, mut stream: WatchStream) -> i64 {
        // A response taken while coalescing that could not join the message before it.
        let mut held: Option<api::WatchResponse> = None;
        loop {
            let response = match held.take() {
                Some(response) => response,
                None => match stream.next().await {
                    Some(response) => response,
                    None => break,
                },
            };
            let response = coalesce(response, &mut stream, &mut held);
            let ends = response.canceled;
            let seen = match response.events.last() {
                Some(event) => Some(event.kv.mod_revision),
                None if !response.created && !ends => Some(response.header.revision),
                None => None,
            };
            for message in self.messages(response) {
                if self.outgoing.send(Ok(message)).await.is_err() {
                    return self.id;
                }
            }
            if let Some(seen) = seen {
                self.progress.fetch_max(seen, Ordering::AcqRel);
            }
            if ends {
                break;
            }
        }
        self.id
    }

    /// One node response as etcd's: tagged with the watch id, a compaction reported with etcd's
    /// reason, and split into fragments of at most `fragment_bytes` when it is larger (every
    /// fragment but the last marked as such; each carries at least one event).
    fn messages(&self, response: api::WatchResponse) -> Vec<pb::WatchResponse> {
        let cancel_reason = if response.compact_revision != 0 {
            COMPACTED.to_string()
        } else {
            response.cancel_reason
        };
        let mut whole = pb::WatchResponse {
            header: convert::header(response.header),
            watch_id: self.id,
            created: response.created,
            canceled: response.canceled,
            compact_revision: response.compact_revision,
            cancel_reason,
            fragment: false,
            events: response.events.into_iter().map(convert::event).collect(),
        };
        let fragment_bytes = match self.fragment_bytes {
            Some(limit) if whole.encoded_len() > limit => limit,
            _ => return vec![whole],
        };
        let events = std::mem::take(&mut whole.events);
        whole.fragment = true;
        let mut pieces: Vec<pb::WatchResponse> = Vec::new();
        let mut size = 0;
        for event in events {
            let len = event.encoded_len();
            match pieces.last_mut() {
                Some(piece) if size + len <= fragment_bytes => piece.events.push(event),
                _ => {
                    let mut piece = whole.clone();
                    piece.events.push(event);
                    pieces.push(piece);
                    size = 0;
                }
            }
            size += len;
        }
        if let Some(last) = pieces.last_mut() {
            last.fragment = false;
        }
        pieces
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarder(fragment_bytes: Option<usize>) -> Forwarder {
        let (outgoing, _received) = mpsc::channel(1);
        Forwarder {
            id: 7,
            outgoing,
            fragment_bytes,
            progress: Arc::new(AtomicI64::new(0)),
        }
    }

    fn revision_of(events: usize, value_len: usize) -> api::WatchResponse {
        api::WatchResponse {
            header: api::ResponseHeader {
                revision: 5,
                ..api::ResponseHeader::default()
            },
            events: (0..events)
                .map(|i| api::Event {
                    kv: api::KeyValue {
                        key: format!("k{i}").into_bytes(),
                        value: vec![b'v'; value_len],
                        mod_revision: 5,
                        ..api::KeyValue::default()
                    },
                    ..api::Event::default()
                })
                .collect(),
            ..api::WatchResponse::default()
        }
    }

    #[test]
    fn a_response_within_the_limit_is_sent_whole() {
        let messages = forwarder(None).messages(revision_of(3, 100));
        assert_eq!(messages.len(), 1);
        assert_eq!((messages[0].watch_id, messages[0].fragment), (7, false));
        assert_eq!(messages[0].events.len(), 3);
    }

    #[test]
    fn a_large_response_is_split_in_order_and_every_fragment_but_the_last_says_so() {
        let messages = forwarder(Some(2_500)).messages(revision_of(10, 1_000));
        assert!(messages.len() >= 4, "{} fragments", messages.len());
        let (last, rest) = messages.split_last().expect("fragments");
        assert!(rest.iter().all(|m| m.fragment) && !last.fragment);
        assert!(messages
            .iter()
            .all(|m| !m.events.is_empty() && m.watch_id == 7));
        let keys: Vec<Vec<u8>> = messages
            .iter()
            .flat_map(|m| m.events.iter())
            .filter_map(|e| e.kv.as_ref().map(|kv| kv.key.clone()))
            .collect();
        let expected: Vec<Vec<u8>> = (0..10).map(|i| format!("k{i}").into_bytes()).collect();
        assert_eq!(keys, expected);
    }

    #[test]
    fn an_event_larger_than_the_limit_still_travels_alone() {
        let messages = forwarder(Some(100)).messages(revision_of(2, 1_000));
        assert_eq!(messages.len(), 2);
        assert!(messages.iter().all(|m| m.events.len() == 1));
    }

    #[test]
    fn a_compacted_watch_ends_with_etcds_reason() {
        let compacted = api::WatchResponse {
            canceled: true,
            compact_revision: 9,
            cancel_reason: "compacted at 9".into(),
            ..api::WatchResponse::default()
        };
        let messages = forwarder(None).messages(compacted);
        assert_eq!(messages[0].cancel_reason, COMPACTED);
        assert_eq!(messages[0].compact_revision, 9);
    }
}
