//! `ondisk ctl lock` and `ondisk ctl elect`: etcd's concurrency recipes over the public API.
//!
//! Each participant holds a lease, kept alive by a background thread, and creates the key
//! `NAME/<lease id in hex>` attached to it (only if absent, in a transaction). Keys under NAME/
//! are ordered by the revision that created them: the lowest holds the lock or leads. A waiter
//! watches only the key just before its own, for its deletion, so a release wakes one waiter, not
//! all. A participant that dies stops renewing its lease; the lease expires and its key goes
//! with it, so nobody waits on a dead holder for longer than the TTL.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::io::Write;
use std::process::Command;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::thread::JoinHandle;
use std::time::Duration;
use std::time::Instant;

use crate::api;
use crate::api::EventKind;
use crate::api::KeyValue;
use crate::api::ResponseOp;

use super::lease;
use super::print_json;
use super::watch;
use super::Client;
use super::CtlError;
use super::Result;

/// The TTL of a participant's lease unless told otherwise, in seconds: how long its key outlives
/// a participant that dies without releasing it.
pub(super) const DEFAULT_TTL: i64 = 10;
/// The exit status after SIGINT or SIGTERM, as a shell reports a process ended by SIGINT.
const INTERRUPTED: i32 = 130;
/// How often the command run under a lock is checked on while waiting for a signal too.
const CHILD_POLL: Duration = Duration::from_millis(50);
/// How long a command under the lock has, after an interrupt, to end by itself (it was usually
/// sent the same signal) before it is killed, so the lock is never released while it runs.
const CHILD_GRACE: Duration = Duration::from_secs(5);

/// A lease kept alive in the background for as long as this participant takes part.
struct Session {
    client: Client,
    lease: i64,
    stop: Option<mpsc::Sender<()>>,
    keeper: Option<JoinHandle<()>>,
}

impl Session {
    /// Grants a lease of `ttl` seconds and starts renewing it.
    fn open(client: &Client, ttl: i64, timeout: Duration) -> Result<Session> {
        let lease = lease::grant(client, ttl)?.id;
        let (stop, stopped) = mpsc::channel::<()>();
        let keeper_client = client.clone();
        let keeper = thread::spawn(move || {
            let outcome = lease::keep_alive(
                &keeper_client,
                lease,
                timeout,
                |_| Ok(true),
                |pause| {
                    matches!(
                        stopped.recv_timeout(pause),
                        Err(mpsc::RecvTimeoutError::Timeout)
                    )
                },
            );
            if let Err(e) = outcome {
                eprintln!("warning: lease {lease} is no longer kept alive: {e}");
            }
        });
        Ok(Session {
            client: client.clone(),
            lease,
            stop: Some(stop),
            keeper: Some(keeper),
        })
    }

    /// This participant's key under `prefix`.
    fn key(&self, prefix: &[u8]) -> Vec<u8> {
        api::participant_key(prefix, self.lease)
    }

    /// Stops renewing and revokes the lease, deleting the participant's key.
    fn close(mut self) -> Result<()> {
        self.stop_keeper();
        lease::revoke(&self.client, self.lease)
    }

    fn stop_keeper(&mut self) {
        drop(self.stop.take());
        if let Some(keeper) = self.keeper.take() {
            let _ = keeper.join();
        }
    }
}

impl Drop for Session {
    /// On a failure midway, the lease is released rather than left to expire.
    fn drop(&mut self) {
        if self.keeper.is_some() {
            self.stop_keeper();
            let _ = lease::revoke(&self.client, self.lease);
        }
    }
}

/// Until `defer` is set, SIGINT or SIGTERM revokes `lease` and ends the process (whatever the
/// main thread is blocked on); once set, they are reported on the receiver instead.
fn on_interrupt(client: &Client, lease: i64, defer: Arc<AtomicBool>) -> Result<mpsc::Receiver<()>> {
    use tokio::signal::unix::signal;
    use tokio::signal::unix::SignalKind;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let (mut interrupt, mut terminate) = {
        let _inside = runtime.enter();
        (
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        )
    };
    let (sender, received) = mpsc::channel();
    let client = client.clone();
    thread::spawn(move || loop {
        runtime.block_on(async {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        });
        if defer.load(Ordering::SeqCst) {
            if sender.send(()).is_err() {
                return;
            }
        } else {
            let _ = lease::revoke(&client, lease);
            std::process::exit(INTERRUPTED);
        }
    });
    Ok(received)
}

/// `lock`: takes the lock, runs `command` (or holds the lock until interrupted), releases it.
pub(super) fn lock(
    client: &Client,
    name: &[u8],
    ttl: i64,
    command: &[OsString],
    timeout: Duration,
) -> Result<ExitCode> {
    let prefix = [name, b"/"].concat();
    let session = Session::open(client, ttl, timeout)?;
    let defer = Arc::new(AtomicBool::new(false));
    let interrupted = on_interrupt(client, session.lease, defer.clone())?;
    let key = session.key(&prefix);
    let created = create_key(client, &key, b"", session.lease)?;
    wait_for_turn(client, &prefix, created, timeout)?;
    let Some((program, args)) = command.split_first() else {
        let mut out = io::stdout().lock();
        out.write_all(&key)?;
        out.write_all(b"\n")?;
        out.flush()?;
        loop {
            thread::park();
        }
    };
    defer.store(true, Ordering::SeqCst);
    let status = run_under_lock(program, args, &interrupted);
    let released = session.close();
    let status = status?;
    released?;
    Ok(ExitCode::from(exit_status(&status)))
}

/// Runs the command to its end; after an interrupt, gives it [`CHILD_GRACE`] to end by itself,
/// then kills it.
fn run_under_lock(
    program: &OsString,
    args: &[OsString],
    interrupted: &mpsc::Receiver<()>,
) -> Result<std::process::ExitStatus> {
    let mut child = Command::new(program)
        .args(args)
        .spawn()
        .map_err(|e| CtlError::Input(format!("cannot run {}: {e}", program.to_string_lossy())))?;
    let mut kill_at = None;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if kill_at.is_some_and(|at| Instant::now() >= at) {
            child.kill()?;
        }
        if interrupted.recv_timeout(CHILD_POLL).is_ok() {
            kill_at.get_or_insert(Instant::now() + CHILD_GRACE);
        }
    }
}

/// The status to exit with: the command's, or 128 + the signal that ended it, as a shell does.
fn exit_status(status: &std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(1),
        (None, None) => 1,
    }
}

/// Creates `key` with `value` under `lease` unless it exists, and returns the revision that
/// created it.
fn create_key(client: &Client, key: &[u8], value: &[u8], lease: i64) -> Result<i64> {
    let request = api::create_unless_exists(key, value.to_vec(), lease);
    let answer: api::TxnResponse = client.send_json("POST", api::http::TXN, &request)?;
    if answer.succeeded {
        return Ok(answer.header.revision);
    }
    match answer.responses.first() {
        Some(ResponseOp::Range(range)) => range
            .kvs
            .first()
            .map(|kv| kv.create_revision)
            .ok_or_else(|| CtlError::Refused(format!("{} vanished", String::from_utf8_lossy(key)))),
        _ => Err(CtlError::Refused(
            "the transaction's answer lacks its read".into(),
        )),
    }
}

/// Every key under `prefix` and the revision they were read at.
fn list(client: &Client, prefix: &[u8], keys_only: bool) -> Result<(Vec<KeyValue>, i64)> {
    let request = api::RangeRequest {
        key: prefix.to_vec(),
        range_end: api::prefix_end(prefix),
        keys_only,
        ..api::RangeRequest::default()
    };
    let answer: api::RangeResponse = client.send_json("POST", api::http::RANGE, &request)?;
    Ok((answer.kvs, answer.header.revision))
}

/// Waits until no key under `prefix` was created before `created`: each time, for the deletion
/// of the newest key older than ours.
fn wait_for_turn(client: &Client, prefix: &[u8], created: i64, timeout: Duration) -> Result<()> {
    loop {
        let (kvs, revision) = list(client, prefix, true)?;
        let Some(before) = kvs
            .into_iter()
            .filter(|kv| kv.create_revision < created)
            .max_by_key(|kv| kv.create_revision)
        else {
            return Ok(());
        };
        let watched = watch::Watched {
            key: &before.key,
            prefix: false,
            start_revision: revision + 1,
            prev_kv: false,
        };
        watch::follow(client, &watched, timeout, |response| {
            let deleted = response
                .events
                .iter()
                .any(|event| event.kind == EventKind::Delete);
            Ok(if deleted {
                watch::Flow::Done
            } else {
                watch::Flow::More
            })
        })?;
    }
}

/// `elect`: campaigns with `value` (unless only listening) and prints the leader's value each
/// time the leadership changes, until interrupted.
pub(super) fn elect(
    client: &Client,
    name: &[u8],
    value: Option<&[u8]>,
    ttl: i64,
    json: bool,
    timeout: Duration,
) -> Result<()> {
    let prefix = [name, b"/"].concat();
    let _session = match value {
        Some(value) => {
            let session = Session::open(client, ttl, timeout)?;
            on_interrupt(client, session.lease, Arc::new(AtomicBool::new(false)))?;
            create_key(client, &session.key(&prefix), value, session.lease)?;
            Some(session)
        }
        None => None,
    };
    let (kvs, revision) = list(client, &prefix, false)?;
    let mut candidates: BTreeMap<Vec<u8>, KeyValue> =
        kvs.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
    let mut shown: Option<KeyValue> = None;
    show_leader(&candidates, &mut shown, json)?;
    let watched = watch::Watched {
        key: &prefix,
        prefix: true,
        start_revision: revision + 1,
        prev_kv: false,
    };
    watch::follow(client, &watched, timeout, |response| {
        for event in &response.events {
            match event.kind {
                EventKind::Put => candidates.insert(event.kv.key.clone(), event.kv.clone()),
                EventKind::Delete => candidates.remove(&event.kv.key),
            };
        }
        show_leader(&candidates, &mut shown, json)?;
        Ok(watch::Flow::More)
    })
}

/// Prints the leader (the candidate created first) if it is not the one `shown` last.
fn show_leader(
    candidates: &BTreeMap<Vec<u8>, KeyValue>,
    shown: &mut Option<KeyValue>,
    json: bool,
) -> Result<()> {
    let leader = candidates.values().min_by_key(|kv| kv.create_revision);
    let same = |a: &KeyValue, b: &KeyValue| a.key == b.key && a.value == b.value;
    let Some(leader) = leader else {
        *shown = None;
        return Ok(());
    };
    if shown.as_ref().is_some_and(|shown| same(shown, leader)) {
        return Ok(());
    }
    if json {
        print_json(leader)?;
    } else {
        let mut out = io::stdout().lock();
        out.write_all(&leader.value)?;
        out.write_all(b"\n")?;
        out.flush()?;
    }
    *shown = Some(leader.clone());
    Ok(())
}
