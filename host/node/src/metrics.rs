//! The node's counters, rendered in Prometheus' text format at `/metrics`.
//!
//! One process-wide set of counters (atomics, and small maps for labelled ones): each
//! layer counts what it sees — `dist` connections, disconnections by reason and
//! handshake failures by cause; discovery polls, errors and traps per topology; the
//! registry calls (with a latency histogram), handoffs and restarts. Gauges (members,
//! instances per kind) are read from membership and the registry when rendered.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Upper bounds of the call-latency histogram, in seconds.
const BUCKETS: [f64; 10] = [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];

#[derive(Default)]
pub struct Metrics {
    connects: AtomicU64,
    disconnects: Mutex<BTreeMap<&'static str, u64>>,
    handshake_failures: Mutex<BTreeMap<&'static str, u64>>,
    /// Per topology: polls, errors, traps.
    polls: Mutex<BTreeMap<String, [u64; 3]>>,
    calls: [AtomicU64; BUCKETS.len() + 1],
    call_sum_micros: AtomicU64,
    call_errors: AtomicU64,
    handoffs: AtomicU64,
    restarts: AtomicU64,
}

/// The process's counters.
pub fn global() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::default)
}

/// What a poll of a strategy came to.
pub enum Poll {
    Ok,
    Error,
    Trap,
}

impl Metrics {
    pub fn connected(&self) {
        self.connects.fetch_add(1, Relaxed);
    }
    pub fn disconnected(&self, reason: &'static str) {
        *self.disconnects.lock().unwrap().entry(reason).or_default() += 1;
    }
    pub fn handshake_failed(&self, cause: &'static str) {
        *self.handshake_failures.lock().unwrap().entry(cause).or_default() += 1;
    }
    pub fn polled(&self, topology: &str, outcome: Poll) {
        let mut polls = self.polls.lock().unwrap();
        let p = polls.entry(topology.to_string()).or_default();
        p[0] += 1;
        match outcome {
            Poll::Ok => {}
            Poll::Error => p[1] += 1,
            Poll::Trap => p[2] += 1,
        }
    }
    pub fn called(&self, took: Duration, ok: bool) {
        let secs = took.as_secs_f64();
        let bucket = BUCKETS.iter().position(|b| secs <= *b).unwrap_or(BUCKETS.len());
        self.calls[bucket].fetch_add(1, Relaxed);
        self.call_sum_micros.fetch_add(took.as_micros() as u64, Relaxed);
        if !ok {
            self.call_errors.fetch_add(1, Relaxed);
        }
    }
    pub fn handed_off(&self) {
        self.handoffs.fetch_add(1, Relaxed);
    }
    pub fn restarted(&self) {
        self.restarts.fetch_add(1, Relaxed);
    }

    /// Prometheus text exposition, with the gauges given.
    pub fn render(&self, members: usize, instances: &BTreeMap<String, usize>) -> String {
        let mut out = String::new();
        fn family(out: &mut String, name: &str, kind: &str, help: &str) {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        }
        family(&mut out, "wasmnode_members", "gauge", "Visible members of the cluster, this node included.");
        let _ = writeln!(out, "wasmnode_members {members}");
        family(&mut out, "wasmnode_connects_total", "counter", "Connections to cluster members (not tools) that passed the handshake.");
        let _ = writeln!(out, "wasmnode_connects_total {}", self.connects.load(Relaxed));
        family(&mut out, "wasmnode_disconnects_total", "counter", "Connections to cluster members that ended, by reason.");
        for (reason, n) in self.disconnects.lock().unwrap().iter() {
            let _ = writeln!(out, "wasmnode_disconnects_total{{reason=\"{reason}\"}} {n}");
        }
        family(&mut out, "wasmnode_handshake_failures_total", "counter", "Handshakes that failed, by cause.");
        for (cause, n) in self.handshake_failures.lock().unwrap().iter() {
            let _ = writeln!(out, "wasmnode_handshake_failures_total{{cause=\"{cause}\"}} {n}");
        }
        let polls = self.polls.lock().unwrap();
        for (name, i, help) in [
            ("wasmnode_strategy_polls_total", 0, "Polls of each topology's strategy."),
            ("wasmnode_strategy_errors_total", 1, "Polls that returned an error."),
            ("wasmnode_strategy_traps_total", 2, "Polls that trapped (deadline, memory cap, guest trap)."),
        ] {
            family(&mut out, name, "counter", help);
            for (topology, p) in polls.iter() {
                let _ = writeln!(out, "{name}{{topology=\"{topology}\"}} {}", p[i]);
            }
        }
        family(&mut out, "wasmnode_worker_instances", "gauge", "Worker instances running on this node, by kind.");
        for (kind, n) in instances {
            let _ = writeln!(out, "wasmnode_worker_instances{{kind=\"{kind}\"}} {n}");
        }
        family(&mut out, "wasmnode_calls_seconds", "histogram", "Worker calls made through this node, by latency.");
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.calls[i].load(Relaxed);
            let _ = writeln!(out, "wasmnode_calls_seconds_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.calls[BUCKETS.len()].load(Relaxed);
        let _ = writeln!(out, "wasmnode_calls_seconds_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "wasmnode_calls_seconds_sum {}", self.call_sum_micros.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "wasmnode_calls_seconds_count {cumulative}");
        family(&mut out, "wasmnode_call_errors_total", "counter", "Worker calls through this node that failed.");
        let _ = writeln!(out, "wasmnode_call_errors_total {}", self.call_errors.load(Relaxed));
        family(&mut out, "wasmnode_handoffs_total", "counter", "Instances this node handed to another with their state.");
        let _ = writeln!(out, "wasmnode_handoffs_total {}", self.handoffs.load(Relaxed));
        family(&mut out, "wasmnode_restarts_total", "counter", "Instances this node restarted after their node went down.");
        let _ = writeln!(out, "wasmnode_restarts_total {}", self.restarts.load(Relaxed));
        out
    }
}
