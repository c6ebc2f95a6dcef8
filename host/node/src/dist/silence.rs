//! Judging a peer's silence: when a connection that has carried nothing for a while is
//! a peer gone, and when it is a link that loses packets while the peer lives. Pure: the
//! reader feeds it the time, when it last read and when another member last heard the
//! peer; it answers when to look again, whether to ask the other members, and whether
//! the peer is down.
//!
//! The rules (SWIM's indirect probe, Orleans' votes before a death):
//! - a connection that has been silent for a third of the heartbeat timeout (two
//!   heartbeats missed, at the defaults) asks up to [`ASKED`] other members when they
//!   last heard the peer, and asks again every quarter of the timeout while the silence
//!   lasts; an answer may take up to the timeout (the link to that member may lose
//!   packets too), and says how long ago that member last read from the peer;
//! - at the heartbeat timeout the peer is down unless another member heard it within
//!   the last heartbeat timeout: a peer that stopped (killed, paused, cut off from
//!   everyone) is down a timeout after the last member heard it, as before (or up to a
//!   heartbeat interval later, when another member read its last heartbeat later);
//! - a peer that others still hear is kept, its connection open (TCP retransmits what
//!   the link lost, with its backoff, and the connection resumes), for at most
//!   [`KEPT_MAX`] heartbeat timeouts of silence: a link between two members that stays
//!   cut is then a node-down, as before, only later.
//!
//! A lost packet on a link that carries little stalls it for TCP's retransmission
//! timeout, which doubles with each loss of the same segment (0.2, 0.4, 0.8, 1.6, 3.2 s):
//! three losses in a row outlast a 1.5 s heartbeat timeout. Without this rule such a
//! stall was a node-down and a take-over of the peer's names while the peer still served
//! them, and one of the two histories was lost.

use std::time::{Duration, Instant};

/// How many other members a silent connection asks at a time.
pub(super) const ASKED: usize = 3;

/// The longest silence a peer that other members hear is kept for, in heartbeat
/// timeouts: past the retransmission that follows 5 losses in a row of one segment
/// (6.2 s after the first), at the default 1.5 s.
pub(super) const KEPT_MAX: u32 = 8;

/// What the reader does when its silence timer fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Look again at `next`; first ask the other members when they heard the peer, if `ask`.
    Wait { next: Instant, ask: bool },
    /// Silent past the timeout, but another member heard the peer `heard_ago`: the
    /// connection stays. `first` for the first time in this silence (to log it once).
    Kept { next: Instant, ask: bool, heard_ago: Duration, first: bool },
    /// The peer is down: silent past the timeout and heard by no one else within it, or
    /// (`kept_max`) silent for [`KEPT_MAX`] timeouts while others heard it.
    Down { kept_max: bool },
}

/// One connection's judge of silence.
#[derive(Debug)]
pub(super) struct Silence {
    timeout: Duration,
    /// When the other members were last asked (in this silence or an earlier one).
    asked: Option<Instant>,
    /// Whether the peer was kept past the timeout in the present silence.
    kept: bool,
}

impl Silence {
    pub(super) fn new(timeout: Duration) -> Silence {
        Silence { timeout, asked: None, kept: false }
    }

    /// The first look after bytes arrived at `last_read`.
    pub(super) fn first_look(&self, last_read: Instant) -> Instant {
        last_read + self.timeout / 3
    }

    /// The verdict at `now` on a connection last read from at `last_read`, with `others`
    /// the latest time another member is known to have heard the peer.
    pub(super) fn judge(&mut self, now: Instant, last_read: Instant, others: Option<Instant>) -> Verdict {
        let silent = now.saturating_duration_since(last_read);
        if silent < self.timeout / 3 {
            self.kept = false;
            return Verdict::Wait { next: self.first_look(last_read), ask: false };
        }
        let every = self.timeout / 4;
        // Asked during this silence, recently enough: the answers are coming.
        let ask = !self.asked.is_some_and(|at| at >= last_read && now.saturating_duration_since(at) < every);
        if ask {
            self.asked = Some(now);
        }
        let next = now + every;
        if silent < self.timeout {
            self.kept = false;
            // The timeout itself is looked at on time: a stopped peer is down no later than before.
            return Verdict::Wait { next: next.min(last_read + self.timeout), ask };
        }
        if silent >= self.timeout * KEPT_MAX {
            return Verdict::Down { kept_max: true };
        }
        match others.map(|at| now.saturating_duration_since(at)) {
            Some(heard_ago) if heard_ago < self.timeout => {
                let first = !self.kept;
                self.kept = true;
                // Looked at again no later than a timeout after anyone last heard it.
                Verdict::Kept { next: next.min(now + (self.timeout - heard_ago)), ask, heard_ago, first }
            }
            _ => Verdict::Down { kept_max: false },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_millis(1500);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_connection_that_carries_bytes_is_looked_at_every_third_of_the_timeout_and_asks_nobody() {
        let t0 = Instant::now();
        let mut s = Silence::new(T);
        assert_eq!(s.judge(t0 + ms(700), t0 + ms(500), None), Verdict::Wait { next: t0 + ms(1000), ask: false });
    }

    #[test]
    fn a_third_of_a_timeout_of_silence_asks_the_others_then_again_every_quarter() {
        let t0 = Instant::now();
        let mut s = Silence::new(T);
        assert_eq!(s.judge(t0 + ms(500), t0, None), Verdict::Wait { next: t0 + ms(875), ask: true });
        // Looked at again before a quarter passed: the question is still out.
        assert_eq!(s.judge(t0 + ms(600), t0, None), Verdict::Wait { next: t0 + ms(975), ask: false });
        assert_eq!(s.judge(t0 + ms(875), t0, None), Verdict::Wait { next: t0 + ms(1250), ask: true });
        // The last look before the timeout is at the timeout, not a quarter later.
        assert_eq!(s.judge(t0 + ms(1250), t0, None), Verdict::Wait { next: t0 + ms(1500), ask: true });
        // Bytes came, then a new silence: asked anew at once, whatever the last question's age.
        assert_eq!(s.judge(t0 + ms(1700), t0 + ms(1150), None), Verdict::Wait { next: t0 + ms(2075), ask: true });
    }

    #[test]
    fn a_peer_nobody_else_heard_is_down_at_the_timeout() {
        let t0 = Instant::now();
        let mut s = Silence::new(T);
        s.judge(t0 + ms(750), t0, None);
        assert_eq!(s.judge(t0 + ms(1500), t0, None), Verdict::Down { kept_max: false });
        // Another member heard it too, but as long ago: it stopped for everyone.
        let mut s = Silence::new(T);
        assert_eq!(s.judge(t0 + ms(1500), t0, Some(t0)), Verdict::Down { kept_max: false });
        // Never looked at before the timeout (the driver asks, if it has anyone to ask): the same.
        assert_eq!(Silence::new(T).judge(t0 + ms(1600), t0, None), Verdict::Down { kept_max: false });
    }

    #[test]
    fn a_peer_another_member_heard_within_the_timeout_is_kept_and_logged_once() {
        let t0 = Instant::now();
        let mut s = Silence::new(T);
        s.judge(t0 + ms(750), t0, None);
        let v = s.judge(t0 + ms(1500), t0, Some(t0 + ms(1300)));
        assert_eq!(v, Verdict::Kept { next: t0 + ms(1875), ask: true, heard_ago: ms(200), first: true });
        let v = s.judge(t0 + ms(1875), t0, Some(t0 + ms(1700)));
        assert_eq!(v, Verdict::Kept { next: t0 + ms(2250), ask: true, heard_ago: ms(175), first: false });
        // Heard by another member only a little later than by this one (a peer that then
        // stopped: the member read its last heartbeat later): looked at again a timeout
        // after that, not a quarter of a timeout later.
        let mut late = Silence::new(T);
        let v = late.judge(t0 + ms(1500), t0, Some(t0 + ms(200)));
        assert_eq!(v, Verdict::Kept { next: t0 + ms(1700), ask: true, heard_ago: ms(1300), first: true });
        assert_eq!(late.judge(t0 + ms(1700), t0, Some(t0 + ms(200))), Verdict::Down { kept_max: false });
        // The others stopped hearing it too: down.
        assert_eq!(s.judge(t0 + ms(3300), t0, Some(t0 + ms(1700))), Verdict::Down { kept_max: false });
    }

    #[test]
    fn a_peer_others_hear_is_down_after_kept_max_timeouts_of_silence() {
        let t0 = Instant::now();
        let mut s = Silence::new(T);
        let cap = T * KEPT_MAX;
        assert!(matches!(s.judge(t0 + cap - ms(1), t0, Some(t0 + cap - ms(100))), Verdict::Kept { .. }));
        assert_eq!(s.judge(t0 + cap, t0, Some(t0 + cap - ms(100))), Verdict::Down { kept_max: true });
    }

    #[test]
    fn bytes_after_a_kept_silence_end_it() {
        let t0 = Instant::now();
        let mut s = Silence::new(T);
        assert!(matches!(s.judge(t0 + ms(2000), t0, Some(t0 + ms(1900))), Verdict::Kept { first: true, .. }));
        assert_eq!(s.judge(t0 + ms(2100), t0 + ms(2050), None), Verdict::Wait { next: t0 + ms(2550), ask: false });
        // A later silence kept again is logged again.
        assert!(matches!(s.judge(t0 + ms(3700), t0 + ms(2050), Some(t0 + ms(3600))), Verdict::Kept { first: true, .. }));
    }
}
