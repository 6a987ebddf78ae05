//! `ondisk ctl watch`, and the watch every recipe waits with: a stream of `WatchResponse` lines
//! from one node, resumed on the next endpoint from the revision after the last one seen when the
//! connection drops, so a node's death neither loses nor repeats a change.

use std::io;
use std::io::BufRead;
use std::io::BufReader;
use std::io::Write;
use std::thread;
use std::time::Duration;
use std::time::Instant;

use crate::api;
use crate::api::http::param;
use crate::api::http::percent_encode;
use crate::api::EventKind;
use crate::api::WatchResponse;

use super::print_json;
use super::Client;
use super::CtlError;
use super::Result;

/// Pause between rounds of the endpoints while none can be connected to.
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);

/// What to watch.
pub(super) struct Watched<'a> {
    pub(super) key: &'a [u8],
    /// Every key that starts with `key`, rather than `key` alone.
    pub(super) prefix: bool,
    /// The first revision to report; 0 for changes from now on.
    pub(super) start_revision: i64,
    pub(super) prev_kv: bool,
}

/// Whether a watch's reader wants more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flow {
    More,
    Done,
}

/// `watch`: prints each change as it arrives until interrupted.
pub(super) fn run(
    client: &Client,
    watched: &Watched<'_>,
    json: bool,
    reconnect_within: Duration,
) -> Result<()> {
    follow(client, watched, reconnect_within, |response| {
        if json {
            print_json(response)?;
            return Ok(Flow::More);
        }
        let mut out = io::stdout().lock();
        for event in &response.events {
            print_event(&mut out, event)?;
        }
        out.flush()?;
        Ok(Flow::More)
    })
}

/// One event as a line: `PUT key value` or `DELETE key`, with `(was value)` when the previous
/// value came along.
fn print_event(out: &mut impl Write, event: &api::Event) -> io::Result<()> {
    match event.kind {
        EventKind::Put => {
            out.write_all(b"PUT ")?;
            out.write_all(&event.kv.key)?;
            out.write_all(b" ")?;
            out.write_all(&event.kv.value)?;
        }
        EventKind::Delete => {
            out.write_all(b"DELETE ")?;
            out.write_all(&event.kv.key)?;
        }
    }
    if let Some(previous) = &event.prev_kv {
        out.write_all(b" (was ")?;
        out.write_all(&previous.value)?;
        out.write_all(b")")?;
    }
    out.write_all(b"\n")
}

/// Follows `watched`, handing each response to `handle` in revision order (the first `created`
/// response once, then events and progress) until `handle` is done or the watch ends. A dropped
/// connection is resumed on the next endpoint; the watch fails once no endpoint could be
/// connected to for `reconnect_within`, or when its start revision is compacted.
pub(super) fn follow(
    client: &Client,
    watched: &Watched<'_>,
    reconnect_within: Duration,
    mut handle: impl FnMut(&WatchResponse) -> Result<Flow>,
) -> Result<()> {
    let mut next = watched.start_revision;
    let mut position = 0;
    let mut created_seen = false;
    let mut down_since: Option<Instant> = None;
    loop {
        let stream = match client.open_from(position, &watch_path(watched, next)) {
            Ok((at, stream)) => {
                position = at;
                down_since = None;
                stream
            }
            Err(CtlError::Unreachable(reason)) => {
                let since = *down_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= reconnect_within {
                    return Err(CtlError::Unreachable(reason));
                }
                thread::sleep(RECONNECT_PAUSE);
                continue;
            }
            Err(e) => return Err(e),
        };
        let endpoint = client.endpoints[position].clone();
        let lines = BufReader::new(stream.into_body().into_reader()).split(b'\n');
        // A read error is the connection dropping (its node died, say): resume elsewhere.
        for line in lines.map_while(io::Result::ok) {
            if line.is_empty() {
                continue;
            }
            let response: WatchResponse =
                serde_json::from_slice(&line).map_err(|e| CtlError::BadAnswer {
                    endpoint: endpoint.clone(),
                    reason: format!("not a watch response: {e}"),
                })?;
            if response.canceled {
                return Err(ended(next, response));
            }
            if response.created {
                // The revision a watch "from now" starts after; a watch from a given revision
                // still owes everything from there.
                if next == 0 {
                    next = response.header.revision + 1;
                }
                if std::mem::replace(&mut created_seen, true) {
                    continue;
                }
            } else {
                next = next.max(response.resume_revision());
            }
            if handle(&response)? == Flow::Done {
                return Ok(());
            }
        }
        position = (position + 1) % client.endpoints.len().max(1);
    }
}

/// The error a canceled response ends a watch from `from` with.
fn ended(from: i64, response: WatchResponse) -> CtlError {
    if response.compact_revision > 0 {
        return CtlError::Compacted {
            reason: format!(
                "cannot watch from revision {from}: {} (watch from revision {} or later)",
                response.cancel_reason, response.compact_revision
            ),
            compact_revision: response.compact_revision,
        };
    }
    CtlError::Refused(format!("the watch ended: {}", response.cancel_reason))
}

fn watch_path(watched: &Watched<'_>, start_revision: i64) -> String {
    let mut path = format!("{}{}", api::http::WATCH, percent_encode(watched.key));
    let mut query = Vec::new();
    if watched.prefix {
        query.push(format!("{}=true", param::PREFIX));
    }
    if start_revision > 0 {
        query.push(format!("{}={start_revision}", param::START_REVISION));
    }
    if watched.prev_kv {
        query.push(format!("{}=true", param::PREV_KV));
    }
    if !query.is_empty() {
        path.push('?');
        path.push_str(&query.join("&"));
    }
    path
}
