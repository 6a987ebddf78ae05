//! The linearizability checker: can the recorded operations on each key be put in one order that
//! respects real time (an operation that completed before another was invoked comes first) and in
//! which every answer is what a single register would have given?
//!
//! The model is a register holding `Option<value>` with put, get, compare-and-swap (including
//! create-if-absent) and delete. Keys are independent, so each key's operations are checked on
//! their own (P-compositionality), which keeps the search small.
//!
//! The search is Wing and Gong's, with Lowe's memoization as in Porcupine: depth first over the
//! operations that may come next (those invoked before every pending operation's completion),
//! remembering every (set of linearized operations, register state) pair already explored.
//!
//! A write with an unknown outcome may take effect at any point after its invocation, or never: it
//! is given no completion time. Two sound reductions keep such writes cheap, relying on every
//! written value being unique:
//! * a put or compare-and-swap of a value that no completed operation ever depended on (read,
//!   reported as current by a failed compare-and-swap, or expected by a successful one) may be
//!   assumed never to have happened: if it did, nothing observed it before it was overwritten;
//! * one whose value was observed certainly happened, before the first observer completed, so it
//!   becomes a known write that completed then.
//!
//! An unknown delete is dropped when no completed operation that may follow it saw the key
//! absent; otherwise it stays open-ended, and the search tries it only after the known operations.

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::{Duration, Instant};

use super::history::{Call, Op, Outcome};

/// Search states explored for one key before the checker gives up and says so.
const MAX_STATES: usize = 20_000_000;
/// Completion time of an operation whose outcome is unknown.
const NEVER: u64 = u64::MAX;

/// The checker's conclusion about a whole history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// Not linearizable; the explanation names the key and the operations involved.
    Violation(String),
    /// The search exceeded its budget: no conclusion.
    Inconclusive(String),
}

/// A verdict with the figures for the report.
#[derive(Debug, Clone)]
pub struct Checked {
    pub verdict: Verdict,
    pub keys: usize,
    /// Operations that entered the search.
    pub searched_ops: usize,
    /// Unknown-outcome writes that provably did not matter.
    pub dropped_unknown: usize,
    /// Search states explored, over all keys.
    pub states: usize,
    pub elapsed: Duration,
}

/// Checks every key of `ops`; the first key that fails decides the verdict. Txns span keys and
/// are left to `revisions.rs`; they touch keys no other call does.
pub fn check(ops: &[Op]) -> Checked {
    let started = Instant::now();
    let mut by_key: HashMap<&str, Vec<&Op>> = HashMap::new();
    for op in ops.iter().filter(|op| !op.call.is_txn()) {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let mut keys: Vec<&str> = by_key.keys().copied().collect();
    keys.sort();
    let mut checked = Checked {
        verdict: Verdict::Linearizable,
        keys: keys.len(),
        searched_ops: 0,
        dropped_unknown: 0,
        states: 0,
        elapsed: Duration::ZERO,
    };
    for key in keys {
        let ops = &by_key[key];
        let (entries, dropped, values) = entries(ops);
        checked.searched_ops += entries.len();
        checked.dropped_unknown += dropped;
        let (outcome, states) = search(&entries);
        checked.states += states;
        match outcome {
            Search::Linearizable => {}
            Search::Stuck(stuck) => {
                checked.verdict = Verdict::Violation(explain(key, &entries, ops, &values, &stuck));
                break;
            }
            Search::OutOfBudget => {
                checked.verdict = Verdict::Inconclusive(format!(
                    "key {key:?}: gave up after {states} search states ({} operations)",
                    entries.len()
                ));
                break;
            }
        }
    }
    checked.elapsed = started.elapsed();
    checked
}

/// The register's content: absent, or the value with this interned id.
type State = Option<u32>;

/// An operation as the model sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Write(u32),
    Delete,
    Read(State),
    CasApplied { expected: State, value: u32 },
    CasFailed { expected: State, current: State },
}

impl Step {
    /// The register after this operation, or `None` if it cannot happen in `state`.
    fn apply(self, state: State) -> Option<State> {
        match self {
            Step::Write(value) => Some(Some(value)),
            Step::Delete => Some(None),
            Step::Read(seen) => (seen == state).then_some(state),
            Step::CasApplied { expected, value } => (expected == state).then_some(Some(value)),
            Step::CasFailed { expected, current } => {
                (current == state && expected != state).then_some(state)
            }
        }
    }
}

/// One operation in the search, with its real-time interval.
#[derive(Debug, Clone, Copy)]
struct Entry {
    step: Step,
    call: u64,
    /// [`NEVER`] for an unknown-outcome delete.
    ret: u64,
    /// Index of the operation in the key's ops, for explanations.
    op: usize,
}

/// Gives each distinct value a small id; `Some(id)` is a present value.
#[derive(Default)]
struct Values {
    ids: HashMap<String, u32>,
    names: Vec<String>,
}

impl Values {
    fn id(&mut self, value: &str) -> u32 {
        if let Some(id) = self.ids.get(value) {
            return *id;
        }
        let id = self.names.len() as u32;
        self.ids.insert(value.to_string(), id);
        self.names.push(value.to_string());
        id
    }

    fn state(&mut self, value: &Option<String>) -> State {
        value.as_deref().map(|v| self.id(v))
    }

    fn describe(&self, state: State) -> String {
        match state {
            None => "absent".to_string(),
            Some(id) => format!("{:?}", self.names[id as usize]),
        }
    }
}

/// What the operations that certainly happened required of the register (see [`entries`]).
#[derive(Default)]
struct Needs {
    first_needed: HashMap<u32, u64>,
    last_absent_needed: Option<u64>,
}

impl Needs {
    /// Records that `state` was needed by time `at`; whether that tells something new.
    fn add(&mut self, state: State, at: u64) -> bool {
        match state {
            Some(v) => match self.first_needed.get(&v) {
                Some(first) if *first <= at => false,
                _ => {
                    self.first_needed.insert(v, at);
                    true
                }
            },
            None if self.last_absent_needed.is_some_and(|last| last >= at) => false,
            None => {
                self.last_absent_needed = Some(at);
                true
            }
        }
    }

    /// When a write of `value` invoked at `invoked` had certainly happened, if it was needed.
    fn happened_by(&self, value: u32, invoked: u64) -> Option<u64> {
        self.first_needed
            .get(&value)
            .map(|first| (*first).max(invoked))
    }
}

/// Turns one key's operations into search entries sorted by invocation, applying the reductions
/// for unknown outcomes described in the module documentation. Returns the entries and how many
/// unknown writes were dropped, and the names of the interned values.
fn entries(ops: &[&Op]) -> (Vec<Entry>, usize, Values) {
    let mut values = Values::default();
    let mut written = HashSet::new();
    for op in ops {
        if let Call::Put { value } | Call::Cas { value, .. } = &op.call {
            assert!(
                written.insert(value.clone()),
                "the checker needs unique written values, but {value:?} is written twice"
            );
        }
    }
    // What operations that certainly happened needed: per value, the earliest completion of one
    // that needed the register to hold it; and the latest completion of one that needed it
    // absent. An unknown compare-and-swap whose value was needed certainly happened too, so what
    // it expected was needed as well, by the time it is known to have happened: hence a fixpoint.
    let mut needs = Needs::default();
    for op in ops {
        let needed = match (&op.call, &op.outcome) {
            (_, Outcome::Read(seen)) => seen,
            (Call::Cas { expected, .. }, Outcome::Ok) => expected,
            (Call::Cas { .. }, Outcome::CasFailed(current)) => current,
            _ => continue,
        };
        needs.add(values.state(needed), op.completed);
    }
    let mut changed = true;
    while changed {
        changed = false;
        for op in ops {
            if let (Call::Cas { expected, value }, Outcome::Unknown) = (&op.call, &op.outcome) {
                if let Some(happened_by) = needs.happened_by(values.id(value), op.invoked) {
                    changed |= needs.add(values.state(expected), happened_by);
                }
            }
        }
    }
    let mut entries = Vec::new();
    let mut dropped = 0;
    for (index, op) in ops.iter().enumerate() {
        let known = |step| Some((step, op.completed));
        // An unknown write of `value`: known if observed, else dropped.
        let observed = |step, value: u32| Some((step, needs.happened_by(value, op.invoked)?));
        let step = match (&op.call, &op.outcome) {
            (_, Outcome::NoInfo | Outcome::Failed) => continue,
            (Call::Get, Outcome::Read(seen)) => known(Step::Read(values.state(seen))),
            (Call::Put { value }, Outcome::Ok) => known(Step::Write(values.id(value))),
            (Call::Put { value }, Outcome::Unknown) => {
                let value = values.id(value);
                observed(Step::Write(value), value)
            }
            (Call::Delete, Outcome::Ok) => known(Step::Delete),
            (Call::Delete, Outcome::Unknown) => needs
                .last_absent_needed
                .filter(|last| *last > op.invoked)
                .map(|_| (Step::Delete, NEVER)),
            (Call::Cas { expected, value }, Outcome::Ok) => known(Step::CasApplied {
                expected: values.state(expected),
                value: values.id(value),
            }),
            (Call::Cas { expected, value }, Outcome::Unknown) => {
                let value = values.id(value);
                let expected = values.state(expected);
                observed(Step::CasApplied { expected, value }, value)
            }
            (Call::Cas { expected, .. }, Outcome::CasFailed(current)) => known(Step::CasFailed {
                expected: values.state(expected),
                current: values.state(current),
            }),
            (call, outcome) => panic!("impossible history entry: {call:?} with {outcome:?}"),
        };
        match step {
            Some((step, ret)) => entries.push(Entry {
                step,
                call: op.invoked,
                ret,
                op: index,
            }),
            None => dropped += 1,
        }
    }
    entries.sort_by_key(|e| (e.call, e.ret));
    (entries, dropped, values)
}

/// Where the search got stuck: the longest linearizable prefix it found, the register after it,
/// and the operations that could have come next but did not fit.
struct Stuck {
    prefix: Vec<usize>,
    state: State,
    candidates: Vec<usize>,
}

enum Search {
    Linearizable,
    Stuck(Stuck),
    OutOfBudget,
}

/// Which entries are linearized.
#[derive(Clone)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn get(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
    fn flip(&mut self, i: usize) {
        self.0[i / 64] ^= 1 << (i % 64);
    }
    fn first_unset(&self) -> usize {
        self.0
            .iter()
            .position(|w| *w != u64::MAX)
            .map_or(self.0.len() * 64, |w| {
                w * 64 + self.0[w].trailing_ones() as usize
            })
    }
    /// A 128-bit fingerprint of this set and `state`, for the memo table.
    fn fingerprint(&self, state: State) -> (u64, u64) {
        let hash = |salt: u64| {
            let mut h = DefaultHasher::new();
            salt.hash(&mut h);
            state.hash(&mut h);
            self.0.hash(&mut h);
            h.finish()
        };
        (hash(0x9e37_79b9_7f4a_7c15), hash(0xc2b2_ae3d_27d4_eb4f))
    }
}

/// The entries that may be linearized next: not yet linearized, and invoked no later than the
/// earliest completion among those not yet linearized. Known outcomes first, then at most one
/// open-ended delete: those are interchangeable (same effect, no completion), so trying only the
/// earliest invoked one loses no linearization and keeps the search from exploring every subset.
fn candidates(entries: &[Entry], done: &Bits) -> Vec<usize> {
    let mut earliest_ret = NEVER;
    let mut known = Vec::new();
    let mut open_ended = None;
    for (i, entry) in entries.iter().enumerate().skip(done.first_unset()) {
        if done.get(i) {
            continue;
        }
        if entry.call > earliest_ret {
            break;
        }
        if entry.ret == NEVER {
            open_ended = open_ended.or(Some(i));
        } else {
            earliest_ret = earliest_ret.min(entry.ret);
            known.push(i);
        }
    }
    known.retain(|&i| entries[i].call <= earliest_ret);
    known.extend(open_ended.filter(|&i| entries[i].call <= earliest_ret));
    known
}

/// One level of the depth-first search.
struct Frame {
    candidates: Vec<usize>,
    next: usize,
    /// The entry applied at this level and the state before it, while its subtree is explored.
    applied: Option<(usize, State)>,
}

/// Depth-first search for a linearization of `entries` (sorted by invocation), starting from an
/// absent key. Returns the outcome and the number of states explored.
fn search(entries: &[Entry]) -> (Search, usize) {
    let n = entries.len();
    if n == 0 {
        return (Search::Linearizable, 0);
    }
    let mut done = Bits::new(n);
    let mut linearized = 0;
    let mut state: State = None;
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut order: Vec<usize> = Vec::new();
    let mut stuck = Stuck {
        prefix: Vec::new(),
        state,
        candidates: candidates(entries, &done),
    };
    let mut frames = vec![Frame {
        candidates: stuck.candidates.clone(),
        next: 0,
        applied: None,
    }];
    while let Some(frame) = frames.last_mut() {
        if frame.next == frame.candidates.len() {
            frames.pop();
            if let Some(parent) = frames.last_mut() {
                let (i, before) = parent
                    .applied
                    .take()
                    .expect("a parent frame applied an entry");
                done.flip(i);
                linearized -= 1;
                order.pop();
                state = before;
            }
            continue;
        }
        let i = frame.candidates[frame.next];
        frame.next += 1;
        let Some(after) = entries[i].step.apply(state) else {
            continue;
        };
        done.flip(i);
        if !seen.insert(done.fingerprint(after)) {
            done.flip(i);
            continue;
        }
        if seen.len() > MAX_STATES {
            return (Search::OutOfBudget, seen.len());
        }
        frame.applied = Some((i, state));
        state = after;
        linearized += 1;
        order.push(i);
        if linearized == n {
            return (Search::Linearizable, seen.len());
        }
        let next = candidates(entries, &done);
        if order.len() > stuck.prefix.len() {
            stuck = Stuck {
                prefix: order.clone(),
                state,
                candidates: next.clone(),
            };
        }
        frames.push(Frame {
            candidates: next,
            next: 0,
            applied: None,
        });
    }
    (Search::Stuck(stuck), seen.len())
}

/// How many operations of the linearizable prefix an explanation shows.
const CONTEXT_OPS: usize = 8;

fn explain(key: &str, entries: &[Entry], ops: &[&Op], values: &Values, stuck: &Stuck) -> String {
    let state = values.describe(stuck.state);
    let line = |i: &usize| format!("    {}\n", describe(ops[entries[*i].op]));
    let shown = stuck.prefix.len().saturating_sub(CONTEXT_OPS);
    format!(
        "key {key:?} is not linearizable: at most {} of its {} operations fit in one order. \
         The last of them:\n{}then the key is {state}, and none of the operations that could \
         come next fits:\n{}",
        stuck.prefix.len(),
        entries.len(),
        stuck.prefix[shown..].iter().map(line).collect::<String>(),
        stuck.candidates.iter().map(line).collect::<String>(),
    )
}

/// One operation for a human: who, what, the answer and when.
pub fn describe(op: &Op) -> String {
    let call = match &op.call {
        Call::Put { value } => format!("put {value:?}"),
        Call::Get => "get".to_string(),
        Call::Cas {
            expected: Some(e),
            value,
        } => format!("cas {e:?} -> {value:?}"),
        Call::Cas {
            expected: None,
            value,
        } => format!("create {value:?}"),
        Call::Delete => "delete".to_string(),
        Call::Txn { guard, writes } => format!("txn if {guard:?} then put {writes:?}"),
        Call::TxnRead { keys } => format!("txn read {keys:?}"),
    };
    let outcome = match &op.outcome {
        Outcome::Read(Some(v)) => format!("read {v:?}"),
        Outcome::Txn {
            revision,
            succeeded,
            reads,
        } => format!("revision {revision}, succeeded {succeeded}, read {reads:?}"),
        Outcome::Read(None) => "read absent".to_string(),
        Outcome::CasFailed(current) => format!("failed, current {current:?}"),
        other => other.label().to_string(),
    };
    format!(
        "[{:.6}s .. {:.6}s] client {} via node {}: {call} => {outcome} ({})",
        op.invoked as f64 / 1e9,
        op.completed as f64 / 1e9,
        op.client,
        op.node,
        op.detail
    )
}

#[cfg(test)]
mod tests {
    use super::super::history;
    use super::super::rng::Rng;
    use super::*;

    /// Builds hand-made histories: times are in arbitrary units, clients are implicit.
    struct H(Vec<Op>);

    impl H {
        fn new() -> H {
            H(Vec::new())
        }

        fn op(
            mut self,
            key: &str,
            call: Call,
            outcome: Outcome,
            invoked: u64,
            completed: u64,
        ) -> H {
            let client = self.0.len();
            self.0.push(Op {
                client,
                node: 1,
                key: key.into(),
                call,
                outcome,
                invoked,
                completed,
                detail: String::new(),
                read_at: None,
            });
            self
        }

        fn put(self, value: &str, from: u64, to: u64) -> H {
            self.put_on("k", value, Outcome::Ok, from, to)
        }

        fn put_on(self, key: &str, value: &str, outcome: Outcome, from: u64, to: u64) -> H {
            let call = Call::Put {
                value: value.into(),
            };
            self.op(key, call, outcome, from, to)
        }

        fn put_unknown(self, value: &str, from: u64, to: u64) -> H {
            self.put_on("k", value, Outcome::Unknown, from, to)
        }

        fn get(self, seen: Option<&str>, from: u64, to: u64) -> H {
            self.get_on("k", seen, from, to)
        }

        fn get_on(self, key: &str, seen: Option<&str>, from: u64, to: u64) -> H {
            let outcome = Outcome::Read(seen.map(String::from));
            self.op(key, Call::Get, outcome, from, to)
        }

        fn cas(
            self,
            expected: Option<&str>,
            value: &str,
            outcome: Outcome,
            from: u64,
            to: u64,
        ) -> H {
            let call = Call::Cas {
                expected: expected.map(String::from),
                value: value.into(),
            };
            self.op("k", call, outcome, from, to)
        }

        fn delete(self, outcome: Outcome, from: u64, to: u64) -> H {
            self.op("k", Call::Delete, outcome, from, to)
        }

        fn verdict(&self) -> Verdict {
            check(&self.0).verdict
        }

        fn assert_linearizable(&self) {
            assert_eq!(self.verdict(), Verdict::Linearizable, "{:#?}", self.0);
        }

        fn assert_violation(&self) -> String {
            match self.verdict() {
                Verdict::Violation(explanation) => explanation,
                other => panic!("expected a violation, got {other:?} for {:#?}", self.0),
            }
        }
    }

    fn current(v: Option<&str>) -> Outcome {
        Outcome::CasFailed(v.map(String::from))
    }

    #[test]
    fn sequential_puts_and_gets_are_linearizable() {
        H::new()
            .get(None, 0, 1)
            .put("a", 2, 3)
            .get(Some("a"), 4, 5)
            .put("b", 6, 7)
            .get(Some("b"), 8, 9)
            .assert_linearizable();
    }

    #[test]
    fn a_read_concurrent_with_a_write_may_see_either_value() {
        for seen in [Some("a"), Some("b")] {
            H::new()
                .put("a", 0, 1)
                .put("b", 2, 10)
                .get(seen, 3, 4)
                .assert_linearizable();
        }
    }

    #[test]
    fn a_stale_read_is_a_violation() {
        let explanation = H::new()
            .put("a", 0, 1)
            .put("b", 2, 3)
            .get(Some("a"), 4, 5)
            .assert_violation();
        assert!(explanation.contains("key \"k\""), "{explanation}");
        assert!(explanation.contains("read \"a\""), "{explanation}");
    }

    #[test]
    fn reads_may_not_go_back_in_time_even_while_a_write_is_pending() {
        H::new()
            .put("a", 0, 1)
            .put("b", 2, 20)
            .get(Some("b"), 3, 4)
            .get(Some("a"), 5, 6)
            .assert_violation();
    }

    #[test]
    fn a_lost_acknowledged_write_is_a_violation() {
        H::new().put("a", 0, 1).get(None, 2, 3).assert_violation();
    }

    #[test]
    fn a_read_of_a_value_never_written_is_a_violation() {
        H::new()
            .put("a", 0, 1)
            .get(Some("zzz"), 2, 3)
            .assert_violation();
    }

    #[test]
    fn a_read_of_a_refused_write_is_a_violation() {
        H::new()
            .put_on("k", "a", Outcome::Failed, 0, 1)
            .get(Some("a"), 2, 3)
            .assert_violation();
    }

    #[test]
    fn an_unknown_write_may_take_effect_long_after_it_timed_out() {
        H::new()
            .put("a", 0, 1)
            .put_unknown("b", 2, 3)
            .get(Some("a"), 4, 5)
            .get(Some("a"), 6, 7)
            .get(Some("b"), 100, 101)
            .assert_linearizable();
    }

    #[test]
    fn an_unknown_write_may_never_take_effect() {
        H::new()
            .put("a", 0, 1)
            .put_unknown("b", 2, 3)
            .get(Some("a"), 100, 101)
            .assert_linearizable();
    }

    #[test]
    fn an_unknown_write_seen_cannot_be_unseen() {
        H::new()
            .put("a", 0, 1)
            .put_unknown("b", 2, 3)
            .get(Some("b"), 4, 5)
            .get(Some("a"), 6, 7)
            .assert_violation();
    }

    #[test]
    fn an_unknown_write_cannot_be_seen_before_it_was_invoked() {
        H::new()
            .get(Some("b"), 0, 1)
            .put_unknown("b", 2, 3)
            .assert_violation();
    }

    #[test]
    fn compare_and_swap_applies_only_on_the_expected_value() {
        H::new()
            .put("a", 0, 1)
            .cas(Some("a"), "b", Outcome::Ok, 2, 3)
            .cas(Some("a"), "c", current(Some("b")), 4, 5)
            .cas(None, "d", current(Some("b")), 6, 7)
            .get(Some("b"), 8, 9)
            .assert_linearizable();
    }

    #[test]
    fn a_compare_and_swap_that_applied_on_the_wrong_value_is_a_violation() {
        H::new()
            .put("a", 0, 1)
            .cas(Some("x"), "b", Outcome::Ok, 2, 3)
            .assert_violation();
    }

    #[test]
    fn a_failed_compare_and_swap_must_report_the_actual_value() {
        H::new()
            .put("a", 0, 1)
            .cas(Some("x"), "b", current(Some("old")), 2, 3)
            .assert_violation();
        H::new()
            .put("a", 0, 1)
            .cas(Some("a"), "b", current(Some("a")), 2, 3)
            .assert_violation();
    }

    #[test]
    fn two_concurrent_creates_cannot_both_win() {
        H::new()
            .cas(None, "a", Outcome::Ok, 0, 10)
            .cas(None, "b", Outcome::Ok, 1, 11)
            .assert_violation();
        H::new()
            .cas(None, "a", Outcome::Ok, 0, 10)
            .cas(None, "b", current(Some("a")), 1, 11)
            .get(Some("a"), 12, 13)
            .assert_linearizable();
    }

    #[test]
    fn an_unknown_compare_and_swap_whose_value_is_seen_took_effect() {
        H::new()
            .put("a", 0, 1)
            .cas(Some("a"), "b", Outcome::Unknown, 2, 3)
            .get(Some("b"), 4, 5)
            .assert_linearizable();
        H::new()
            .put("a", 0, 1)
            .put("c", 2, 3)
            .cas(Some("a"), "b", Outcome::Unknown, 4, 5)
            .get(Some("b"), 6, 7)
            .assert_violation();
    }

    #[test]
    fn a_chain_of_unknown_compare_and_swaps_ending_in_a_seen_value_all_took_effect() {
        H::new()
            .put("a", 0, 1)
            .cas(Some("a"), "b", Outcome::Unknown, 2, 3)
            .cas(Some("b"), "c", Outcome::Unknown, 4, 5)
            .get(Some("c"), 6, 7)
            .assert_linearizable();
    }

    #[test]
    fn deletes_make_the_key_absent_and_an_unknown_delete_may_apply_late() {
        H::new()
            .put("a", 0, 1)
            .delete(Outcome::Ok, 2, 3)
            .get(None, 4, 5)
            .assert_linearizable();
        H::new()
            .put("a", 0, 1)
            .delete(Outcome::Unknown, 2, 3)
            .get(Some("a"), 4, 5)
            .get(None, 50, 51)
            .assert_linearizable();
        H::new()
            .put("a", 0, 1)
            .delete(Outcome::Unknown, 2, 3)
            .get(None, 4, 5)
            .get(Some("a"), 6, 7)
            .assert_violation();
    }

    #[test]
    fn keys_are_independent_and_a_violation_on_one_is_found_among_others() {
        let explanation = H::new()
            .put_on("x", "x1", Outcome::Ok, 0, 1)
            .put_on("y", "y1", Outcome::Ok, 0, 1)
            .get_on("x", Some("x1"), 2, 3)
            .put_on("y", "y2", Outcome::Ok, 2, 3)
            .get_on("y", Some("y1"), 4, 5)
            .assert_violation();
        assert!(explanation.contains("key \"y\""), "{explanation}");
    }

    #[test]
    fn a_history_round_trips_through_json_lines() {
        let history = H::new()
            .put("a", 0, 1)
            .cas(None, "b", current(Some("a")), 2, 3)
            .delete(Outcome::Unknown, 4, 5)
            .get(None, 6, 7)
            .get(Some("a\n\"b"), 8, 9);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("history.jsonl");
        history::save(&history.0, &path).expect("save");
        assert_eq!(history::load(&path).expect("load"), history.0);
    }

    /// A history of `n` operations by `clients` concurrent clients on one register, produced by
    /// executing each operation atomically at a random point inside its interval, so it is
    /// linearizable by construction. Some writes are reported as unknown, taking effect or not.
    fn linearizable_history(seed: u64, n: usize, clients: usize) -> Vec<Op> {
        let mut rng = Rng::new(seed);
        let mut free_at = vec![0u64; clients];
        // (linearization point, client, call, invoked, completed, unknown)
        let mut planned = Vec::new();
        for i in 0..n {
            let client = rng.below(clients as u64) as usize;
            let invoked = free_at[client] + 1 + rng.below(20);
            let point = invoked + 1 + rng.below(30);
            let completed = point + 1 + rng.below(30);
            free_at[client] = completed;
            let value = format!("v{i}");
            let call = match rng.below(10) {
                0..=3 => Call::Get,
                4..=6 => Call::Put { value },
                7 => Call::Delete,
                _ => Call::Cas {
                    expected: None,
                    value,
                },
            };
            let unknown = !matches!(call, Call::Get) && rng.below(8) == 0;
            planned.push((point, client, call, invoked, completed, unknown));
        }
        planned.sort_by_key(|p| p.0);
        let mut register: Option<String> = None;
        let mut last_written: Option<String> = None;
        let mut ops = Vec::new();
        for (_, client, mut call, invoked, completed, unknown) in planned {
            if let Call::Cas { expected, .. } = &mut call {
                *expected = if rng.below(2) == 0 {
                    last_written.clone()
                } else {
                    register.clone()
                };
            }
            let takes_effect = !unknown || rng.below(2) == 0;
            let outcome = match &call {
                Call::Get => Outcome::Read(register.clone()),
                Call::Put { value } => {
                    if takes_effect {
                        register = Some(value.clone());
                        last_written = register.clone();
                    }
                    Outcome::Ok
                }
                Call::Delete => {
                    if takes_effect {
                        register = None;
                    }
                    Outcome::Ok
                }
                Call::Cas { expected, value } => {
                    if *expected == register {
                        if takes_effect {
                            register = Some(value.clone());
                            last_written = register.clone();
                        }
                        Outcome::Ok
                    } else {
                        Outcome::CasFailed(register.clone())
                    }
                }
                Call::Txn { .. } | Call::TxnRead { .. } => unreachable!("no txns here"),
            };
            let outcome = if unknown { Outcome::Unknown } else { outcome };
            let completed = if unknown { completed + 1000 } else { completed };
            ops.push(Op {
                client,
                node: 1,
                key: "k".into(),
                call,
                outcome,
                invoked,
                completed,
                detail: String::new(),
                read_at: None,
            });
        }
        ops
    }

    #[test]
    fn large_random_linearizable_histories_pass_quickly() {
        for seed in 0..5 {
            let ops = linearizable_history(seed, 3000, 8);
            let checked = check(&ops);
            assert_eq!(checked.verdict, Verdict::Linearizable, "seed {seed}");
            assert!(
                checked.elapsed < Duration::from_secs(20),
                "seed {seed} took {:?}",
                checked.elapsed
            );
        }
    }

    #[test]
    fn a_single_corrupted_read_in_a_large_history_is_found() {
        for seed in 0..5 {
            let mut ops = linearizable_history(seed, 2000, 8);
            let read = ops
                .iter()
                .rposition(|op| matches!(op.outcome, Outcome::Read(Some(_))))
                .expect("a read of a value");
            ops[read].outcome = Outcome::Read(Some("never written".into()));
            assert!(
                matches!(check(&ops).verdict, Verdict::Violation(_)),
                "seed {seed}"
            );
        }
    }
}
