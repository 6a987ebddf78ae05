//! The newest log entries, kept decoded beside the log.
//!
//! Moments after an append, openraft asks for the same entries again: the leader's replication
//! streams to send them, and every member's apply once they commit. Reading them back from
//! RocksDB costs an iterator and a decode per read; handing out a copy of the entry as it was
//! appended costs neither. Anything not held here (a follower far behind, entries from before a
//! restart) is read from RocksDB as before, so this holds only what is cheap to keep.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::MutexGuard;

use super::log_store::ReadLimit;
use crate::locks::lock;
use crate::types::Entry;

/// At most this many entries are kept: a few replication batches (`max_payload_entries`).
const MAX_ENTRIES: usize = 2048;

/// At most this many encoded bytes are kept, so large values cost little memory here.
const MAX_BYTES: usize = 8 << 20;

/// A window of consecutive log entries ending at the newest one appended. Shared by the log
/// store's clones (the log, and openraft's readers of it).
#[derive(Default)]
pub(super) struct RecentEntries(Mutex<Window>);

#[derive(Default)]
struct Window {
    /// Each entry with its encoded size, oldest first. Invariant: the indexes are consecutive,
    /// and every entry is the one the log holds at its index (appends and truncations keep it so).
    entries: VecDeque<(Entry, usize)>,
    /// The sum of the encoded sizes in `entries`.
    bytes: usize,
}

impl RecentEntries {
    /// Records `entries` (with their encoded sizes), just written to the log after any entries
    /// they replace. An entry that does not follow the window's last (after a snapshot was
    /// installed, say) starts a new window.
    pub(super) fn appended(&self, entries: Vec<(Entry, usize)>) {
        let mut window = self.lock();
        for (entry, size) in entries {
            let index = entry.log_id.index;
            window.remove_from(index);
            if window.next_index().is_some_and(|next| next != index) {
                window.entries.clear();
                window.bytes = 0;
            }
            window.entries.push_back((entry, size));
            window.bytes += size;
        }
        while window.entries.len() > MAX_ENTRIES || window.bytes > MAX_BYTES {
            window.pop_oldest();
        }
    }

    /// Forgets every entry from `index` on: the log no longer holds them.
    pub(super) fn truncated(&self, index: u64) {
        self.lock().remove_from(index);
    }

    /// Forgets every entry up to `index`: the log has purged them.
    pub(super) fn purged(&self, index: u64) {
        let mut window = self.lock();
        while window
            .entries
            .front()
            .is_some_and(|(entry, _)| entry.log_id.index <= index)
        {
            window.pop_oldest();
        }
    }

    /// Copies of the entries from `start` up to `end` (exclusive), as many as a [`ReadLimit`] of
    /// `max_bytes` admits, as `read_entries` would read them from the log; `None` unless the
    /// window holds the whole range.
    pub(super) fn read(&self, start: u64, end: u64, max_bytes: usize) -> Option<Vec<Entry>> {
        let window = self.lock();
        let (first, _) = window.entries.front()?;
        let first = first.log_id.index;
        let next = window.next_index()?;
        if start < first || end > next || start >= end {
            return None;
        }
        let from = usize::try_from(start - first).ok()?;
        let count = usize::try_from(end - start).ok()?;
        let mut limit = ReadLimit::new(max_bytes);
        let mut entries = Vec::with_capacity(count);
        for (entry, size) in window.entries.range(from..from + count) {
            if !limit.admits(*size) {
                break;
            }
            entries.push(entry.clone());
        }
        Some(entries)
    }

    fn lock(&self) -> MutexGuard<'_, Window> {
        lock(&self.0)
    }
}

impl Window {
    /// The index after the newest entry held.
    fn next_index(&self) -> Option<u64> {
        self.entries.back().map(|(entry, _)| entry.log_id.index + 1)
    }

    fn remove_from(&mut self, index: u64) {
        while self
            .entries
            .back()
            .is_some_and(|(entry, _)| entry.log_id.index >= index)
        {
            if let Some((_, size)) = self.entries.pop_back() {
                self.bytes -= size;
            }
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((_, size)) = self.entries.pop_front() {
            self.bytes -= size;
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::testing::blank_ent;

    use super::*;

    fn entries(term: u64, indexes: std::ops::RangeInclusive<u64>) -> Vec<(Entry, usize)> {
        indexes
            .map(|index| (blank_ent::<crate::types::TypeConfig>(term, 1, index), 10))
            .collect()
    }

    /// How many entries a read of `start..end` returns, if the window answers it.
    fn held(recent: &RecentEntries, start: u64, end: u64) -> Option<usize> {
        recent
            .read(start, end, usize::MAX)
            .map(|entries| entries.len())
    }

    fn read(recent: &RecentEntries, start: u64, end: u64) -> Option<Vec<(u64, u64)>> {
        recent.read(start, end, usize::MAX).map(|entries| {
            entries
                .iter()
                .map(|entry| (entry.log_id.leader_id.term, entry.log_id.index))
                .collect()
        })
    }

    #[test]
    fn a_range_is_answered_only_when_held_whole() {
        let recent = RecentEntries::default();
        assert_eq!(read(&recent, 1, 2), None);
        recent.appended(entries(1, 5..=9));
        assert_eq!(held(&recent, 5, 10), Some(5));
        assert_eq!(read(&recent, 7, 8), Some(vec![(1, 7)]));
        assert_eq!(read(&recent, 4, 6), None, "starts before the window");
        assert_eq!(read(&recent, 9, 11), None, "ends after the newest entry");
        assert_eq!(read(&recent, 6, 6), None, "empty");
    }

    #[test]
    fn a_replaced_tail_is_never_read_again() {
        let recent = RecentEntries::default();
        recent.appended(entries(1, 1..=6));
        // A new leader's entries overwrite 4.. with term 2, after a truncation or without one.
        recent.truncated(5);
        recent.appended(entries(2, 4..=4));
        assert_eq!(read(&recent, 3, 5), Some(vec![(1, 3), (2, 4)]));
        assert_eq!(read(&recent, 5, 6), None);
    }

    #[test]
    fn an_entry_that_does_not_follow_starts_a_new_window() {
        let recent = RecentEntries::default();
        recent.appended(entries(1, 1..=3));
        recent.appended(entries(1, 10..=11));
        assert_eq!(read(&recent, 2, 3), None);
        assert_eq!(held(&recent, 10, 12), Some(2));
    }

    #[test]
    fn purged_and_old_entries_are_let_go() {
        let recent = RecentEntries::default();
        recent.appended(entries(1, 1..=10));
        recent.purged(4);
        assert_eq!(read(&recent, 4, 5), None);
        assert_eq!(held(&recent, 5, 11), Some(6));
        let newest = MAX_ENTRIES as u64 + 20;
        recent.appended(entries(1, 11..=newest));
        let oldest_kept = newest - MAX_ENTRIES as u64 + 1;
        assert_eq!(read(&recent, oldest_kept - 1, oldest_kept), None);
        assert_eq!(held(&recent, oldest_kept, newest + 1), Some(MAX_ENTRIES));
    }

    #[test]
    fn large_entries_are_kept_within_the_byte_budget() {
        let recent = RecentEntries::default();
        let large = entries(1, 1..=3)
            .into_iter()
            .map(|(entry, _)| (entry, MAX_BYTES / 2))
            .collect();
        recent.appended(large);
        assert_eq!(read(&recent, 1, 2), None);
        assert_eq!(held(&recent, 2, 4), Some(2));
    }

    #[test]
    fn a_read_stops_at_its_byte_limit_but_returns_one_entry() {
        let recent = RecentEntries::default();
        recent.appended(entries(1, 1..=5));
        let limited = |max_bytes| recent.read(1, 6, max_bytes).map(|e| e.len());
        assert_eq!(limited(25), Some(2));
        assert_eq!(limited(5), Some(1));
    }
}
