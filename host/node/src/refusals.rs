//! How often refused handshakes are logged: the first refusal from an address in a
//! window is logged, the rest of that window only counted, and the next logged refusal
//! says how many were left out. A wrong-cookie loop or a scanner costs the log one line
//! per address per window, not one per attempt. No I/O and no clock: the caller passes
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

#[derive(Debug, Clone, Copy)]
struct Window {
    opened: Instant,
    left_out: u64,
}

impl<K: std::hash::Hash + Eq> RefusalLog<K> {
    /// A refusal from `ip` at `now`: `Some(n)` when it is to be logged, `n` being how
    /// many refusals from `ip` were left out since the last logged one; `None` to count it
    /// and stay quiet.
    pub fn refused(&mut self, ip: K, now: Instant) -> Option<u64> {
        if let Some(w) = self.by_ip.get_mut(&ip) {
            if now.duration_since(w.opened) < WINDOW {
                w.left_out += 1;
                return None;
            }
            let left_out = w.left_out;
            *w = Window { opened: now, left_out: 0 };
            return Some(left_out);
        }
        if self.by_ip.len() >= MAX_ADDRESSES {
            self.by_ip.retain(|_, w| now.duration_since(w.opened) < WINDOW);
            if self.by_ip.len() >= MAX_ADDRESSES {
                self.by_ip.clear();
            }
        }
        self.by_ip.insert(ip, Window { opened: now, left_out: 0 });
        Some(0)
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
