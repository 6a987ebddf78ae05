//! The lease table: every lease in force with its TTL (replicated state, applied with the log) and,
//! on the leader only, when each expires.
//!
//! Expiry is the leader's alone to decide, and it acts on it through the log (a replicated
//! revoke), so every member deletes a lease's keys at the same revision. A member that becomes
//! leader starts every lease's TTL afresh ([`LeaseTable::promote`]), as etcd does: it cannot know
//! how long ago the old leader last heard a keep-alive, and guessing short would expire a lease
//! whose holder did nothing wrong. A follower counts nothing ([`LeaseTable::demote`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use super::apply::LeaseChange;

/// One lease as the table keeps it.
#[derive(Debug, Clone, Copy)]
struct Lease {
    /// The TTL granted, in seconds.
    ttl: i64,
    /// When it expires, counted by the leader; `None` on a follower.
    expires: Option<Instant>,
}

/// Leases in force (see the module's documentation).
#[derive(Debug, Default)]
pub struct LeaseTable {
    inner: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    leases: HashMap<i64, Lease>,
    /// Whether this member counts expiry (it leads).
    counting: bool,
}

impl LeaseTable {
    /// A table holding `leases` (id, TTL), as loaded from the state machine.
    pub(super) fn with(leases: impl IntoIterator<Item = (i64, i64)>) -> Self {
        let table = LeaseTable::default();
        table.replace(leases);
        table
    }

    /// Replaces every lease (a snapshot was installed), keeping whether expiry is counted.
    pub(super) fn replace(&self, leases: impl IntoIterator<Item = (i64, i64)>) {
        let mut table = self.lock();
        let now = Instant::now();
        let counting = table.counting;
        table.leases = leases
            .into_iter()
            .map(|(id, ttl)| (id, Lease::new(ttl, counting.then_some(now))))
            .collect();
    }

    /// Records what an applied batch granted and revoked.
    pub(super) fn apply(&self, changes: &[LeaseChange]) {
        let mut table = self.lock();
        let now = Instant::now();
        let counting = table.counting;
        for change in changes {
            match *change {
                LeaseChange::Granted { id, ttl } => {
                    table
                        .leases
                        .insert(id, Lease::new(ttl, counting.then_some(now)));
                }
                LeaseChange::Revoked { id } => {
                    table.leases.remove(&id);
                }
            }
        }
    }

    /// This member now leads: every lease gets its full TTL from now.
    pub fn promote(&self) {
        let mut table = self.lock();
        let now = Instant::now();
        table.counting = true;
        for lease in table.leases.values_mut() {
            lease.expires = Some(Lease::deadline(now, lease.ttl));
        }
    }

    /// This member no longer leads: it stops counting.
    pub fn demote(&self) {
        let mut table = self.lock();
        table.counting = false;
        for lease in table.leases.values_mut() {
            lease.expires = None;
        }
    }

    /// A keep-alive: the lease's full TTL again from now. `None` when there is no such lease.
    /// Meaningful on the leader only.
    pub fn renew(&self, id: i64) -> Option<i64> {
        let mut table = self.lock();
        let counting = table.counting;
        let lease = table.leases.get_mut(&id)?;
        if counting {
            lease.expires = Some(Lease::deadline(Instant::now(), lease.ttl));
        }
        Some(lease.ttl)
    }

    /// The TTL granted and the seconds left (the full TTL where expiry is not counted), or `None`
    /// when there is no such lease.
    pub fn time_to_live(&self, id: i64) -> Option<(i64, i64)> {
        let table = self.lock();
        let lease = table.leases.get(&id)?;
        let left = match lease.expires {
            Some(expires) => {
                let left = expires.saturating_duration_since(Instant::now());
                i64::try_from(left.as_secs()).unwrap_or(i64::MAX)
            }
            None => lease.ttl,
        };
        Some((lease.ttl, left))
    }

    /// Up to `max` leases whose time is up, oldest deadline first. Empty where expiry is not
    /// counted.
    pub fn expired(&self, max: usize) -> Vec<i64> {
        let table = self.lock();
        let now = Instant::now();
        let mut expired: Vec<(Instant, i64)> = table
            .leases
            .iter()
            .filter_map(|(id, lease)| lease.expires.filter(|at| *at <= now).map(|at| (at, *id)))
            .collect();
        expired.sort();
        expired.into_iter().take(max).map(|(_, id)| id).collect()
    }

    /// How many leases are in force.
    pub fn len(&self) -> usize {
        self.lock().leases.len()
    }

    /// Whether no lease is in force.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every lease id, in order.
    pub fn ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self.lock().leases.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        crate::locks::lock(&self.inner)
    }
}

impl Lease {
    fn new(ttl: i64, counted_from: Option<Instant>) -> Self {
        Lease {
            ttl,
            expires: counted_from.map(|now| Lease::deadline(now, ttl)),
        }
    }

    fn deadline(now: Instant, ttl: i64) -> Instant {
        let ttl = Duration::from_secs(u64::try_from(ttl).unwrap_or(0));
        now.checked_add(ttl)
            .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 100))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_leader_counts_and_a_new_leader_restarts_every_ttl() {
        let table = LeaseTable::with([(1, 0), (2, 100)]);
        assert!(table.expired(10).is_empty(), "a follower expires nothing");
        table.promote();
        assert_eq!(table.expired(10), vec![1], "a TTL of 0 is up at once");
        assert_eq!(table.time_to_live(2).map(|(granted, _)| granted), Some(100));
        table.demote();
        assert!(table.expired(10).is_empty());
        table.apply(&[LeaseChange::Revoked { id: 1 }]);
        table.promote();
        assert!(table.expired(10).is_empty());
        assert_eq!(table.renew(2), Some(100));
        assert_eq!(table.renew(3), None);
        assert_eq!(table.ids(), vec![2]);
    }
}
