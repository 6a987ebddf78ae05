//! Checks by revision, against the committed history.
//!
//! Every change the cluster commits gets the next revision, and a watch of every key from
//! revision 1 replays them all: the **committed history**, read from one node after the run
//! (up to the revision a final linearizable txn answers with). It is the cluster's own account,
//! so it is checked as much as it is used: its revisions must run without a hole from 2 (the first
//! change of an empty store) to that final revision, every watcher must have seen exactly the same events, every node's final reads
//! must fit it (`checker.rs`), and everything the clients were told must agree with it:
//!
//! * **writes**: every acknowledged put or compare-and-swap appears in it, once, as a put of its
//!   unique value on its key; a refused one (500) does not appear; every value it holds for a
//!   client key was written by some client; every linearizable read that found a value names (in
//!   its `x-ondisk-mod-revision` header) the revision that put exactly that value there, no later
//!   than the revision it was served at;
//! * **txns**: txns touch only their own two keys, both at once, so per-key independence does not
//!   hold for them and they are checked by revision instead of by search. A txn's answer carries
//!   the revision it created (if it wrote) or read at. Each revision that changed the txn keys must
//!   be exactly the two puts of one txn that was not refused, whose comparison held on the state
//!   before that revision; an acknowledged txn must be at the revision its answer named; a txn
//!   whose comparison failed must be one that fails on the state at its revision, and it and every
//!   read-only txn must have read exactly that state. Unknown txns count if (and where) they appear;
//! * **revision order** (all operations whose revision is known: reads by their header, txns by
//!   theirs, acknowledged puts and compare-and-swaps by where the committed history has their
//!   value): if A completed before B was invoked, A's revision is at most B's, and below it if B
//!   wrote. An unknown write that appears is held to this as B only (it may have taken effect at
//!   any time after its invocation).
//!
//! Together these are a linearization of the txns (by revision, writes before reads at the same
//! revision) that respects real time and gives every answer, so for the txn keys they prove
//! linearizability, given the committed history; and they tie the other keys' acknowledged
//! writes and reads to revisions that every watcher and node agrees on.
//!
//! The **watchers** are held to etcd's promises: across all the connections of one watcher,
//! revisions strictly increase from one response to the next (never duplicated, never out of
//! order); each response holds every event of each of its revisions (never split), exactly as
//! committed; no revision between the first and the last is missing (no gaps, also across
//! resumes on other nodes); and every watcher has caught up to the final revision. Watchers that
//! saw the same revision therefore saw the same events.

use std::collections::{BTreeMap, HashMap};

use super::checker::describe;
use super::history::{Call, Guard, Op, Outcome, ReadKv};
use super::watchers::{Seen, WatcherLog};

/// The committed history, by revision and by key.
pub struct Committed {
    revisions: BTreeMap<i64, Vec<Seen>>,
    /// Per key: each revision that changed it and the value it left (`None`: deleted).
    keys: HashMap<String, BTreeMap<i64, Option<String>>>,
    /// Where each (key, value) was put.
    puts: HashMap<(String, String), i64>,
}

impl Committed {
    /// Reads the events of a watch from revision 1 up to `final_revision`; fails if they are out
    /// of order, if a revision changes a key twice, if a value is put twice on one key (every
    /// client value is unique), or if some revision in between has no event.
    pub fn new(events: Vec<Seen>, final_revision: i64) -> Result<Committed, String> {
        let mut committed = Committed {
            revisions: BTreeMap::new(),
            keys: HashMap::new(),
            puts: HashMap::new(),
        };
        // An empty store is at revision 1; the first change makes revision 2.
        let mut last = 1;
        for event in events.into_iter().filter(|e| e.revision <= final_revision) {
            if event.revision < last {
                return Err(format!("revision {} came after {last}", event.revision));
            }
            if event.revision > last + 1 {
                return Err(format!(
                    "revisions {} to {} are missing",
                    last + 1,
                    event.revision - 1
                ));
            }
            last = event.revision;
            let changes = committed.keys.entry(event.key.clone()).or_default();
            if changes
                .insert(event.revision, event.value.clone())
                .is_some()
            {
                return Err(format!("revision {last} changes {:?} twice", event.key));
            }
            if let Some(value) = &event.value {
                let put = (event.key.clone(), value.clone());
                if let Some(earlier) = committed.puts.insert(put, last) {
                    return Err(format!(
                        "{value:?} was put on {:?} at revisions {earlier} and {last}",
                        event.key
                    ));
                }
            }
            committed.revisions.entry(last).or_default().push(event);
        }
        if last != final_revision {
            return Err(format!(
                "the history ends at revision {last}, not {final_revision}"
            ));
        }
        for events in committed.revisions.values_mut() {
            events.sort();
        }
        Ok(committed)
    }

    /// The newest revision, for the report.
    pub fn last_revision(&self) -> i64 {
        self.revisions.keys().next_back().copied().unwrap_or(0)
    }

    /// The revision that put `value` on `key`.
    fn put_revision(&self, key: &str, value: &str) -> Option<i64> {
        self.puts
            .get(&(key.to_string(), value.to_string()))
            .copied()
    }

    /// `key` as it was at `revision`.
    fn state_at(&self, key: &str, revision: i64) -> ReadKv {
        let last = self
            .keys
            .get(key)
            .and_then(|changes| changes.range(..=revision).next_back());
        match last {
            Some((&mod_revision, Some(value))) => ReadKv {
                key: key.to_string(),
                value: Some(value.clone()),
                mod_revision,
            },
            _ => ReadKv {
                key: key.to_string(),
                value: None,
                mod_revision: 0,
            },
        }
    }

    /// Whether a txn's `guard` holds on `key` at `revision`.
    fn guard_holds(&self, guard: &Guard, key: &str, revision: i64) -> bool {
        let state = self.state_at(key, revision);
        match guard {
            Guard::ModRevision(expected) => state.mod_revision == *expected,
            Guard::Value(expected) => state.value == *expected,
        }
    }
}

/// Holds the client keys' acknowledged writes and reads to the committed history (see the module
/// documentation); the figures on success.
pub fn check_writes(committed: &Committed, ops: &[Op]) -> Result<String, String> {
    let mut written: HashMap<(&str, &str), &Op> = HashMap::new();
    let (mut acknowledged, mut reads) = (0, 0);
    for op in ops.iter().filter(|op| !op.call.is_txn()) {
        if let Call::Put { value } | Call::Cas { value, .. } = &op.call {
            written.insert((&op.key, value), op);
            let found = committed.put_revision(&op.key, value);
            match (&op.outcome, found) {
                (Outcome::Ok, None) => {
                    return Err(format!(
                        "an acknowledged write is not in the committed history: {}",
                        describe(op)
                    ))
                }
                (Outcome::Failed, Some(revision)) => {
                    return Err(format!(
                        "a refused write is in the committed history at revision {revision}: {}",
                        describe(op)
                    ))
                }
                (Outcome::Ok, Some(_)) => acknowledged += 1,
                _ => {}
            }
        }
        if let (Outcome::Read(Some(value)), Some(at)) = (&op.outcome, op.read_at) {
            let put = committed.put_revision(&op.key, value);
            if put != Some(at.mod_revision) || at.mod_revision > at.revision {
                return Err(format!(
                    "a read answered with mod revision {} at revision {}, but the committed \
                     history put that value at {put:?}: {}",
                    at.mod_revision,
                    at.revision,
                    describe(op)
                ));
            }
            reads += 1;
        }
    }
    let client_keys: Vec<&str> = ops
        .iter()
        .filter(|op| !op.call.is_txn())
        .map(|op| op.key.as_str())
        .collect();
    for events in committed.revisions.values() {
        for event in events {
            let Some(value) = &event.value else { continue };
            if client_keys.contains(&event.key.as_str())
                && !written.contains_key(&(event.key.as_str(), value.as_str()))
            {
                return Err(format!(
                    "revision {} put {value:?} on {:?}, which no client wrote",
                    event.revision, event.key
                ));
            }
        }
    }
    Ok(format!(
        "all {acknowledged} acknowledged puts and compare-and-swaps committed once; {reads} reads \
         name the revision of the value they read"
    ))
}

/// Checks the txns against the committed history (see the module documentation); the figures
/// on success.
pub fn check_txns(committed: &Committed, ops: &[Op]) -> Result<String, String> {
    let txns: Vec<&Op> = ops.iter().filter(|op| op.call.is_txn()).collect();
    let found = locate_txns(committed, &txns)?;
    let (mut writes, mut failed, mut reads) = (0, 0, 0);
    for (index, op) in txns.iter().enumerate() {
        let Outcome::Txn {
            revision,
            succeeded,
            reads: seen,
        } = &op.outcome
        else {
            continue;
        };
        let wrong = match (&op.call, succeeded) {
            (Call::Txn { .. }, true) => {
                writes += 1;
                (!found.contains_key(&index))
                    .then_some("an acknowledged txn is not in the committed history")
            }
            (Call::Txn { guard, writes }, false)
                if committed.guard_holds(guard, &writes[0].0, *revision) =>
            {
                Some("a txn's comparison failed on a state where it holds")
            }
            _ => {
                if matches!(op.call, Call::Txn { .. }) {
                    failed += 1;
                } else {
                    reads += 1;
                }
                let state: Vec<ReadKv> = seen
                    .iter()
                    .map(|kv| committed.state_at(&kv.key, *revision))
                    .collect();
                (*seen != state).then_some("a txn read something else than the committed state")
            }
        };
        if let Some(wrong) = wrong {
            return Err(format!("{wrong}: {}", describe(op)));
        }
    }
    let unknown = found.len() - writes;
    Ok(format!(
        "{} txns: {writes} acknowledged writes and {unknown} of unknown outcome committed at \
         their revisions; {failed} failed comparisons and {reads} read-only txns read the \
         committed state at theirs",
        txns.len()
    ))
}

/// Finds the txn behind each revision that changed a txn key, and checks that the revision is
/// exactly that txn's effect; returns where each committed txn (by index in `txns`) is.
fn locate_txns(committed: &Committed, txns: &[&Op]) -> Result<HashMap<usize, i64>, String> {
    let mut by_value: HashMap<(&str, &str), usize> = HashMap::new();
    for (index, op) in txns.iter().enumerate() {
        if let Call::Txn { writes, .. } = &op.call {
            for (key, value) in writes {
                by_value.insert((key, value), index);
            }
        }
    }
    let mut found = HashMap::new();
    for (&revision, events) in &committed.revisions {
        let Some(first) = events
            .iter()
            .find(|e| by_value.keys().any(|(key, _)| *key == e.key))
        else {
            continue;
        };
        let writer = first
            .value
            .as_deref()
            .and_then(|value| by_value.get(&(first.key.as_str(), value)));
        let Some(&index) = writer else {
            return Err(format!(
                "revision {revision} changed the txn keys to {events:?}, which no txn wrote"
            ));
        };
        if let Some(wrong) = misapplied(committed, txns[index], revision, events) {
            return Err(format!(
                "revision {revision} {wrong}: {events:?}, txn {}",
                describe(txns[index])
            ));
        }
        found.insert(index, revision);
    }
    Ok(found)
}

/// What is wrong with revision `revision`, made of `events`, being the effect of `txn`.
fn misapplied(
    committed: &Committed,
    txn: &Op,
    revision: i64,
    events: &[Seen],
) -> Option<&'static str> {
    let Call::Txn { guard, writes } = &txn.call else {
        return Some("was made by something else than a txn");
    };
    let mut expected: Vec<Seen> = writes
        .iter()
        .map(|(key, value)| Seen {
            revision,
            key: key.clone(),
            value: Some(value.clone()),
        })
        .collect();
    expected.sort();
    if events != expected.as_slice() {
        return Some("does not hold exactly the txn's puts");
    }
    if !committed.guard_holds(guard, &writes[0].0, revision - 1) {
        return Some("applied a txn whose comparison did not hold before it");
    }
    match &txn.outcome {
        Outcome::Failed => Some("applied a txn that was refused"),
        Outcome::Txn {
            succeeded: false, ..
        } => Some("applied a txn answered as not succeeded"),
        Outcome::Txn { revision: r, .. } if *r != revision => {
            Some("is not the revision the txn's answer named")
        }
        _ => None,
    }
}

/// An operation placed at a revision, for [`check_order`].
struct Placed<'a> {
    op: &'a Op,
    revision: i64,
    writes: bool,
    /// `None` for an unknown write, which may have taken effect at any time after its invocation.
    completed: Option<u64>,
}

/// Real time and revisions agree (see the module documentation); the figures on success.
pub fn check_order(committed: &Committed, ops: &[Op]) -> Result<String, String> {
    let mut placed: Vec<Placed> = ops.iter().filter_map(|op| place(committed, op)).collect();
    placed.sort_by_key(|p| p.op.invoked);
    let mut by_completion: Vec<&Placed> = placed.iter().filter(|p| p.completed.is_some()).collect();
    by_completion.sort_by_key(|p| p.completed);
    let mut finished = 0;
    let mut latest: Option<&Placed> = None;
    for b in &placed {
        while let Some(a) = by_completion
            .get(finished)
            .filter(|a| a.completed < Some(b.op.invoked))
        {
            if latest.is_none_or(|l| a.revision > l.revision) {
                latest = Some(a);
            }
            finished += 1;
        }
        let Some(a) = latest else { continue };
        if a.revision > b.revision || (b.writes && a.revision == b.revision) {
            return Err(format!(
                "revision {} of an operation that completed first is not {} revision {} of one \
                 invoked after it:\n  {}\n  {}",
                a.revision,
                if b.writes { "below" } else { "at most" },
                b.revision,
                describe(a.op),
                describe(b.op)
            ));
        }
    }
    Ok(format!(
        "{} operations with a known revision, in real-time order",
        placed.len()
    ))
}

/// Where `op` sits in the committed history, if that is known.
fn place<'a>(committed: &Committed, op: &'a Op) -> Option<Placed<'a>> {
    let at = |revision, writes, completed| {
        Some(Placed {
            op,
            revision,
            writes,
            completed,
        })
    };
    match (&op.call, &op.outcome) {
        (Call::Get, Outcome::Read(Some(_))) => at(op.read_at?.revision, false, Some(op.completed)),
        (Call::Put { value } | Call::Cas { value, .. }, Outcome::Ok) => at(
            committed.put_revision(&op.key, value)?,
            true,
            Some(op.completed),
        ),
        (Call::Put { value } | Call::Cas { value, .. }, Outcome::Unknown) => {
            at(committed.put_revision(&op.key, value)?, true, None)
        }
        (
            Call::Txn { .. },
            Outcome::Txn {
                revision,
                succeeded,
                ..
            },
        ) => at(*revision, *succeeded, Some(op.completed)),
        (Call::TxnRead { .. }, Outcome::Txn { revision, .. }) => {
            at(*revision, false, Some(op.completed))
        }
        (Call::Txn { writes, .. }, Outcome::Unknown) => at(
            committed.put_revision(&writes[0].0, &writes[0].1)?,
            true,
            None,
        ),
        _ => None,
    }
}

/// Holds every watcher to etcd's promises (see the module documentation), up to
/// `final_revision`; the figures on success.
pub fn check_watchers(
    committed: &Committed,
    logs: &[WatcherLog],
    final_revision: i64,
) -> Result<String, String> {
    let mut seen_by: HashMap<i64, usize> = HashMap::new();
    let (mut responses, mut events) = (0, 0);
    for log in logs {
        for revision in check_watcher(committed, log, final_revision)? {
            *seen_by.entry(revision).or_default() += 1;
        }
        responses += log.responses.len();
        events += log.responses.iter().map(|r| r.events.len()).sum::<usize>();
    }
    let resumes: usize = logs.iter().map(|l| l.connections.saturating_sub(1)).sum();
    let shared = seen_by.values().filter(|n| **n > 1).count();
    Ok(format!(
        "{} watchers, {resumes} resumes, {responses} responses, {events} events: ordered, never \
         duplicated or split, no gaps, as committed ({shared} revisions seen by several watchers, \
         identically)",
        logs.len()
    ))
}

/// Holds one watcher to etcd's promises; the revisions it saw.
fn check_watcher(
    committed: &Committed,
    log: &WatcherLog,
    final_revision: i64,
) -> Result<Vec<i64>, String> {
    let mut seen = Vec::new();
    let mut last = log.start_revision - 1;
    for response in &log.responses {
        let whence = format!(
            "watcher {} (connection {}, node {})",
            log.id, response.connection, response.node
        );
        let mut rest = response.events.as_slice();
        while let Some(first) = rest.first() {
            let revision = first.revision;
            if revision <= last {
                return Err(format!(
                    "{whence} got revision {revision} after {last}: duplicated or out of order"
                ));
            }
            let next = committed
                .revisions
                .range(last + 1..)
                .next()
                .map(|(r, _)| *r);
            if next != Some(revision) {
                return Err(format!(
                    "{whence} got revision {revision} after {last}, but the committed history's \
                     next is {next:?}: a gap"
                ));
            }
            let count = rest.iter().take_while(|e| e.revision == revision).count();
            let mut got = rest[..count].to_vec();
            got.sort();
            if committed.revisions.get(&revision) != Some(&got) {
                return Err(format!(
                    "{whence} got {got:?} for revision {revision}, committed: {:?} (split or \
                     different)",
                    committed.revisions.get(&revision)
                ));
            }
            seen.push(revision);
            rest = &rest[count..];
            last = revision;
        }
    }
    if last < final_revision {
        return Err(format!(
            "watcher {} saw revisions up to {last} only, not up to the final {final_revision}",
            log.id
        ));
    }
    Ok(seen)
}

#[cfg(test)]
mod tests {
    use super::super::history::ReadAt;
    use super::super::watchers::Response;
    use super::*;

    fn put(revision: i64, key: &str, value: &str) -> Seen {
        Seen {
            revision,
            key: key.into(),
            value: Some(value.into()),
        }
    }

    fn op(key: &str, call: Call, outcome: Outcome, invoked: u64, completed: u64) -> Op {
        Op {
            client: 0,
            node: 1,
            key: key.into(),
            call,
            outcome,
            invoked,
            completed,
            detail: String::new(),
            read_at: None,
        }
    }

    fn txn(guard: Guard, a: &str, b: &str, outcome: Outcome, invoked: u64, completed: u64) -> Op {
        let writes = vec![("t0".into(), a.into()), ("t1".into(), b.into())];
        op(
            "txn",
            Call::Txn { guard, writes },
            outcome,
            invoked,
            completed,
        )
    }

    fn answered(revision: i64, succeeded: bool, reads: Vec<ReadKv>) -> Outcome {
        Outcome::Txn {
            revision,
            succeeded,
            reads,
        }
    }

    fn kv(key: &str, value: Option<&str>, mod_revision: i64) -> ReadKv {
        ReadKv {
            key: key.into(),
            value: value.map(String::from),
            mod_revision,
        }
    }

    /// Revision 2 puts k=a, 3 is txn x, 4 is txn y (guarded on x's revision).
    fn committed() -> Committed {
        let events = vec![
            put(2, "k", "a"),
            put(3, "t0", "x0"),
            put(3, "t1", "x1"),
            put(4, "t1", "y1"),
            put(4, "t0", "y0"),
        ];
        Committed::new(events, 4).expect("a well-formed history")
    }

    fn txns() -> Vec<Op> {
        vec![
            txn(
                Guard::Value(None),
                "x0",
                "x1",
                answered(3, true, vec![]),
                0,
                10,
            ),
            txn(Guard::ModRevision(3), "y0", "y1", Outcome::Unknown, 11, 12),
            txn(
                Guard::ModRevision(0),
                "z0",
                "z1",
                answered(
                    4,
                    false,
                    vec![kv("t0", Some("y0"), 4), kv("t1", Some("y1"), 4)],
                ),
                20,
                21,
            ),
            op(
                "txn",
                Call::TxnRead {
                    keys: vec!["t0".into(), "t1".into()],
                },
                answered(
                    3,
                    true,
                    vec![kv("t0", Some("x0"), 3), kv("t1", Some("x1"), 3)],
                ),
                11,
                13,
            ),
        ]
    }

    #[test]
    fn a_committed_history_with_a_hole_or_a_value_put_twice_is_refused() {
        assert!(Committed::new(vec![put(2, "k", "a"), put(4, "k", "b")], 4).is_err());
        assert!(Committed::new(vec![put(2, "k", "a"), put(3, "k", "a")], 3).is_err());
        assert!(Committed::new(vec![put(2, "k", "a")], 3).is_err());
    }

    #[test]
    fn txns_that_fit_the_committed_history_pass() {
        let figures = check_txns(&committed(), &txns()).expect("fits");
        assert!(
            figures.contains("1 acknowledged writes and 1 of unknown outcome"),
            "{figures}"
        );
        check_order(&committed(), &txns()).expect("in order");
    }

    #[test]
    fn a_txn_at_another_revision_or_reading_a_stale_state_is_caught() {
        let mut moved = txns();
        moved[0].outcome = answered(4, true, vec![]);
        assert!(check_txns(&committed(), &moved).is_err());
        let mut stale = txns();
        stale[3].outcome = answered(
            4,
            true,
            vec![kv("t0", Some("x0"), 3), kv("t1", Some("x1"), 3)],
        );
        assert!(check_txns(&committed(), &stale).is_err());
        let mut wrong_failure = txns();
        wrong_failure[2].call = Call::Txn {
            guard: Guard::ModRevision(4),
            writes: vec![("t0".into(), "z0".into()), ("t1".into(), "z1".into())],
        };
        assert!(check_txns(&committed(), &wrong_failure).is_err());
    }

    #[test]
    fn a_half_applied_txn_or_one_applied_against_its_comparison_is_caught() {
        let half = vec![put(2, "k", "a"), put(3, "t0", "x0")];
        let half = Committed::new(half, 3).expect("well-formed");
        assert!(check_txns(&half, &txns()[..1]).is_err());
        let mut guarded = txns();
        guarded[1].call = Call::Txn {
            guard: Guard::ModRevision(0),
            writes: vec![("t0".into(), "y0".into()), ("t1".into(), "y1".into())],
        };
        assert!(check_txns(&committed(), &guarded).is_err());
    }

    #[test]
    fn a_lost_write_a_wrong_read_revision_and_a_stale_read_are_caught() {
        let put_a = op("k", Call::Put { value: "a".into() }, Outcome::Ok, 0, 1);
        let put_b = op("k", Call::Put { value: "b".into() }, Outcome::Ok, 0, 1);
        assert!(check_writes(&committed(), std::slice::from_ref(&put_a)).is_ok());
        assert!(check_writes(&committed(), &[put_a.clone(), put_b]).is_err());
        let mut read = op("k", Call::Get, Outcome::Read(Some("a".into())), 5, 6);
        read.read_at = Some(ReadAt {
            revision: 4,
            mod_revision: 3,
        });
        assert!(check_writes(&committed(), &[put_a.clone(), read.clone()]).is_err());
        // Read at revision 2, after txn x (revision 3) completed: stale.
        read.read_at = Some(ReadAt {
            revision: 2,
            mod_revision: 2,
        });
        read.invoked = 15;
        read.completed = 16;
        assert!(check_writes(&committed(), &[put_a.clone(), read.clone()]).is_ok());
        let mut ops = txns();
        ops.push(read);
        assert!(check_order(&committed(), &ops).is_err());
    }

    fn watcher(responses: Vec<Vec<Seen>>) -> WatcherLog {
        WatcherLog {
            id: 0,
            start_revision: 1,
            connections: responses.len(),
            next_revision: responses
                .iter()
                .flatten()
                .map(|e| e.revision + 1)
                .max()
                .unwrap_or(1),
            responses: responses
                .into_iter()
                .enumerate()
                .map(|(connection, events)| Response {
                    node: 1,
                    connection: connection + 1,
                    events,
                })
                .collect(),
        }
    }

    #[test]
    fn watchers_that_duplicate_split_skip_or_stop_early_are_caught() {
        let r2 = vec![put(2, "k", "a")];
        let r3 = vec![put(3, "t0", "x0"), put(3, "t1", "x1")];
        let r4 = vec![put(4, "t0", "y0"), put(4, "t1", "y1")];
        let good = watcher(vec![r2.clone(), [r3.clone(), r4.clone()].concat()]);
        check_watchers(&committed(), &[good.clone(), good], 4).expect("as committed");
        let duplicated = watcher(vec![r2.clone(), r3.clone(), r3.clone(), r4.clone()]);
        assert!(check_watchers(&committed(), &[duplicated], 4).is_err());
        let split = watcher(vec![
            r2.clone(),
            r3[..1].to_vec(),
            r3[1..].to_vec(),
            r4.clone(),
        ]);
        assert!(check_watchers(&committed(), &[split], 4).is_err());
        let gap = watcher(vec![r2.clone(), r4.clone()]);
        assert!(check_watchers(&committed(), &[gap], 4).is_err());
        let early = watcher(vec![r2, r3]);
        assert!(check_watchers(&committed(), &[early], 4).is_err());
    }
}
