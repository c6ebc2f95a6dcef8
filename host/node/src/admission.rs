//! Which incoming connections may hold a handshake slot: the accept loop never waits
//! for one. Every accepted connection is admitted; when its source address already holds
//! [`HalfOpen::per_source`] handshakes, that source's oldest is dropped, and when all
//! [`HalfOpen::total`] are held, the oldest of all is. So a flood of connections that
//! never finish a handshake — from one address or many — drops its own, and a member or
//! the CLI, whose handshake takes a millisecond, is never the oldest for long enough to
//! be dropped. A connection leaves the set once it has proved the cookie.
//!
//! No I/O: the driver (`dist/listener.rs`) keeps a handle `H` per entry (an abort handle) and
//! cancels the ones [`HalfOpen::admit`] returns.
//!
//! The HTTP port follows the same rule with [`longest_waiting`]: when its connections are
//! as many as its cap, a new one closes the one that has waited longest on its client
//! (for a request, a body, or to read an answer), so that holding connections open costs
//! an attacker as much as it costs the port.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;

/// Handshakes in progress from one source address.
pub const PER_SOURCE: usize = 32;
/// Handshakes in progress in total.
pub const TOTAL: usize = 256;

pub struct HalfOpen<H> {
    per_source: usize,
    total: usize,
    next: u64,
    /// Entries in admission order (ids only grow): the first is the oldest.
    entries: BTreeMap<u64, (IpAddr, Option<H>)>,
    by_source: HashMap<IpAddr, VecDeque<u64>>,
}

impl<H> HalfOpen<H> {
    pub fn new(per_source: usize, total: usize) -> Self {
        assert!(per_source > 0 && total > 0);
        HalfOpen { per_source, total, next: 0, entries: BTreeMap::new(), by_source: HashMap::new() }
    }

    /// Admits a connection from `source`: its id, and the handles of the entries dropped
    /// to make room (cancel them).
    pub fn admit(&mut self, source: IpAddr) -> (u64, Vec<H>) {
        let mut dropped = Vec::new();
        let held = self.by_source.get(&source).map_or(0, VecDeque::len);
        if held >= self.per_source {
            let oldest = self.by_source[&source][0];
            dropped.extend(self.remove(oldest));
        } else if self.entries.len() >= self.total {
            let oldest = *self.entries.keys().next().expect("full, so not empty");
            dropped.extend(self.remove(oldest));
        }
        let id = self.next;
        self.next += 1;
        self.entries.insert(id, (source, None));
        self.by_source.entry(source).or_default().push_back(id);
        (id, dropped)
    }

    /// Gives entry `id` its handle, unless it was dropped (or finished) meanwhile: then
    /// the handle comes back, to be cancelled.
    pub fn set_handle(&mut self, id: u64, handle: H) -> Option<H> {
        match self.entries.get_mut(&id) {
            Some((_, h)) => {
                *h = Some(handle);
                None
            }
            None => Some(handle),
        }
    }

    /// Entry `id` finished its handshake (or failed it): it leaves the set. Whether it
    /// was still in it — `false`: it was dropped, and must not go on.
    pub fn finish(&mut self, id: u64) -> bool {
        let was = self.entries.contains_key(&id);
        self.remove(id);
        was
    }

    /// Handshakes in progress.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn remove(&mut self, id: u64) -> Option<H> {
        let (source, handle) = self.entries.remove(&id)?;
        if let Some(q) = self.by_source.get_mut(&source) {
            q.retain(|i| *i != id);
            if q.is_empty() {
                self.by_source.remove(&source);
            }
        }
        handle
    }
}

/// A connection's state as [`longest_waiting`] sees it: the node is answering it (a call
/// to a worker under way), or has waited on its client since `t` (nanoseconds since any
/// fixed instant).
pub const ANSWERING: u64 = u64::MAX;
/// A connection already chosen to be closed.
pub const CLOSING: u64 = u64::MAX - 1;

/// Of `(id, state)` pairs, the connection that has waited longest on its client, with its
/// state: the one to close when the port is full. `None` when every connection is being
/// answered (or closed): then the newcomer is the one refused, and no call under way is
/// cut off.
pub fn longest_waiting(conns: impl IntoIterator<Item = (u64, u64)>) -> Option<(u64, u64)> {
    conns.into_iter().filter(|&(_, since)| since < CLOSING).min_by_key(|&(id, since)| (since, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_source_past_its_share_drops_its_own_oldest() {
        let mut h = HalfOpen::new(2, 10);
        let (a1, _) = h.admit(ip("10.0.0.1"));
        h.set_handle(a1, "a1");
        let (m, _) = h.admit(ip("10.0.0.9"));
        h.set_handle(m, "member");
        let (a2, _) = h.admit(ip("10.0.0.1"));
        h.set_handle(a2, "a2");
        let (_, dropped) = h.admit(ip("10.0.0.1"));
        assert_eq!(dropped, vec!["a1"], "the flooding source's oldest, not the member's");
        assert!(!h.finish(a1), "a dropped entry must not go on");
        assert!(h.finish(m));
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn a_full_set_drops_the_oldest_of_all() {
        let mut h = HalfOpen::new(10, 3);
        for i in 1..=3 {
            let (id, _) = h.admit(ip(&format!("10.0.0.{i}")));
            h.set_handle(id, id);
        }
        let (_, dropped) = h.admit(ip("10.0.0.4"));
        assert_eq!(dropped, vec![0]);
        assert_eq!(h.len(), 3);
        // Finished ones free their place: nothing is dropped.
        assert!(h.finish(1));
        let (_, dropped) = h.admit(ip("10.0.0.5"));
        assert!(dropped.is_empty());
    }

    #[test]
    fn a_handle_given_after_the_entry_was_dropped_comes_back_to_be_cancelled() {
        let mut h = HalfOpen::new(1, 10);
        let (first, _) = h.admit(ip("10.0.0.1"));
        let (_, dropped) = h.admit(ip("10.0.0.1"));
        assert!(dropped.is_empty(), "it had no handle yet");
        assert_eq!(h.set_handle(first, "late"), Some("late"));
    }

    #[test]
    fn two_thousand_connections_from_one_source_never_drop_another() {
        let mut h = HalfOpen::new(PER_SOURCE, TOTAL);
        let (member, _) = h.admit(ip("10.0.0.2"));
        h.set_handle(member, u64::MAX);
        for _ in 0..2000 {
            let (id, dropped) = h.admit(ip("10.0.0.66"));
            h.set_handle(id, id);
            assert!(!dropped.contains(&u64::MAX));
        }
        assert_eq!(h.len(), PER_SOURCE + 1);
        assert!(h.finish(member));
    }

    #[test]
    fn a_full_port_closes_the_connection_that_waited_longest_and_never_one_being_answered() {
        // 7 is answered (a call under way) though it came first; 3 waits since 20, 9 since 10.
        let conns = [(7, ANSWERING), (3, 20), (9, 10), (4, CLOSING), (5, 30)];
        assert_eq!(longest_waiting(conns), Some((9, 10)));
        // Equal waits: the older connection (smaller id) goes first.
        assert_eq!(longest_waiting([(6, 10), (2, 10)]), Some((2, 10)));
        // All answered, or already closing: none is closed, the newcomer is refused.
        assert_eq!(longest_waiting([(1, ANSWERING), (2, CLOSING)]), None);
        assert_eq!(longest_waiting([]), None);
    }
}
