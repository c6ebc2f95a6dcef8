//! Whether this process was paused (SIGSTOP, a frozen VM, a debugger): a task ticks
//! every [`TICK`]; a gap between two ticks, or since the last one, longer than `late`
//! is time the process did not run. A node that wakes from a pause finds its
//! connections closed by peers that declared it down; told of the pause first
//! ([`Event::Woke`](super::table::Event::Woke)), its table does not read those closes
//! as its peers going down and take their names over.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often the pulse ticks.
pub const TICK: Duration = Duration::from_millis(100);

/// The last tick, and how late one must be to count as a pause.
pub struct Pulse {
    last: Mutex<Instant>,
    late: Duration,
}

impl Pulse {
    /// A pulse whose gaps past `late` are pauses (at least 5 ticks, so that a busy
    /// runtime is not taken for a paused one).
    pub fn new(late: Duration, now: Instant) -> Pulse {
        Pulse { last: Mutex::new(now), late: late.max(TICK * 5) }
    }

    /// A tick at `now`: the gap since the last one when it was a pause. The pulse's task
    /// ticks, and so does whatever must know of a pause before its task has run (a peer's
    /// close, a durable instance's next message), so that each pause is told once.
    pub fn tick(&self, now: Instant) -> Option<Duration> {
        let mut last = self.last.lock().unwrap();
        let gap = now.saturating_duration_since(*last);
        *last = now;
        (gap > self.late).then_some(gap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_past_late_is_a_pause_and_a_tick_ends_it() {
        let t0 = Instant::now();
        let p = Pulse::new(Duration::from_millis(500), t0);
        assert_eq!(p.tick(t0 + TICK), None);
        assert_eq!(p.tick(t0 + TICK * 4), None, "a few ticks late: a busy runtime");
        let woke = t0 + TICK * 4 + Duration::from_secs(3);
        assert_eq!(p.tick(woke), Some(Duration::from_secs(3)), "woken: whoever ticks first is told");
        assert_eq!(p.tick(woke + TICK), None, "told once");
        // Never shorter than five ticks, whatever the heartbeat.
        let q = Pulse::new(Duration::from_millis(50), t0);
        assert_eq!(q.tick(t0 + TICK * 4), None);
        assert_eq!(q.tick(t0 + TICK * 10), Some(TICK * 6));
    }
}
