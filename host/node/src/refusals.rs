//! How often repeated events are logged: the first refusal from an address in a window
//! is logged, the rest of that window only counted, and the next logged refusal says how
//! many were left out. A wrong-cookie loop or a scanner costs the log one line per
//! address per window, not one per attempt. The same [`Window`], with more lines to a
//! window, holds a guest's output to its rate. No I/O and no clock: the caller passes
//! the time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// One logged refusal per address per this long.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Addresses remembered at once; past this the oldest windows are forgotten (an
/// attacker with many addresses gets a line each, no memory).
pub const MAX_ADDRESSES: usize = 4096;

/// Refusals by source: an address (handshakes), or anything else that repeats (a
/// worker's denied outbound requests, by worker kind and host).
#[derive(Debug)]
pub struct RefusalLog<K = IpAddr> {
    by_ip: HashMap<K, Window>,
}

impl<K> Default for RefusalLog<K> {
    fn default() -> Self {
        RefusalLog { by_ip: HashMap::new() }
    }
}

/// Events of one source in windows of a given length: the first `most` of a window
/// pass, the rest are counted, and the next that passes carries the count.
#[derive(Debug, Clone, Copy, Default)]
pub struct Window {
    opened: Option<Instant>,
    passed: u32,
    /// Whether this window's first event left out was told.
    told: bool,
    left_out: u64,
}

/// What becomes of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// It passes, after saying that this many were left out before it (when any).
    Pass { left_out: u64 },
    /// Left out, the first of its window (for whoever says at once that some are).
    FirstLeftOut,
    /// Left out and counted.
    LeftOut,
}

impl Window {
    /// An event at `now`, in windows of `length` letting `most` pass.
    pub fn admit(&mut self, now: Instant, length: Duration, most: u32) -> Admit {
        if !self.is_open(now, length) {
            *self = Window { opened: Some(now), left_out: self.left_out, ..Window::default() };
        }
        if self.passed >= most {
            self.left_out += 1;
            return if std::mem::replace(&mut self.told, true) { Admit::LeftOut } else { Admit::FirstLeftOut };
        }
        self.passed += 1;
        Admit::Pass { left_out: std::mem::take(&mut self.left_out) }
    }

    /// Events left out since the last that passed.
    pub fn left_out(&self) -> u64 {
        self.left_out
    }

    fn is_open(&self, now: Instant, length: Duration) -> bool {
        self.opened.is_some_and(|t| now.duration_since(t) < length)
    }
}

impl<K: std::hash::Hash + Eq> RefusalLog<K> {
    /// A refusal from `ip` at `now`: `Some(n)` when it is to be logged, `n` being how
    /// many refusals from `ip` were left out since the last logged one; `None` to count it
    /// and stay quiet.
    pub fn refused(&mut self, ip: K, now: Instant) -> Option<u64> {
        if !self.by_ip.contains_key(&ip) && self.by_ip.len() >= MAX_ADDRESSES {
            self.by_ip.retain(|_, w| w.is_open(now, WINDOW));
            if self.by_ip.len() >= MAX_ADDRESSES {
                self.by_ip.clear();
            }
        }
        match self.by_ip.entry(ip).or_default().admit(now, WINDOW, 1) {
            Admit::Pass { left_out } => Some(left_out),
            Admit::FirstLeftOut | Admit::LeftOut => None,
        }
    }
}

/// The words a logged refusal ends with: nothing, or how many were left out.
pub fn left_out(n: u64) -> String {
    left_out_as(n, "refused")
}

/// [`left_out`] for another kind of event (`closed`, say).
pub fn left_out_as(n: u64, what: &str) -> String {
    match n {
        0 => String::new(),
        n => format!(" ({n} more {what} from this address in the last {} s, not logged)", WINDOW.as_secs()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_refusal_per_window_is_logged_and_the_next_says_how_many_were_left_out() {
        let mut log = RefusalLog::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        assert_eq!(log.refused(a, t0), Some(0));
        let quiet: Vec<_> = (1..500).map(|i| log.refused(a, t0 + Duration::from_micros(i * 200))).collect();
        assert!(quiet.iter().all(Option::is_none), "500 attempts in 0.1 s: one line");
        assert_eq!(log.refused(b, t0), Some(0), "another address has its own window");
        assert_eq!(log.refused(a, t0 + WINDOW), Some(499));
        assert_eq!(log.refused(a, t0 + WINDOW * 2), Some(0));
        assert_eq!(left_out(0), "");
        assert!(left_out(499).starts_with(" (499 more refused"));
    }

    #[test]
    fn many_addresses_cost_bounded_memory() {
        let mut log = RefusalLog::default();
        let t0 = Instant::now();
        for i in 0..(MAX_ADDRESSES as u32 * 3) {
            assert_eq!(log.refused(IpAddr::from(i.to_be_bytes()), t0), Some(0));
        }
        assert!(log.by_ip.len() <= MAX_ADDRESSES);
    }
}
