//! The node's metrics, rendered by `prometheus-client` at `/metrics` (OpenMetrics text,
//! which Prometheus reads).
//!
//! One process-wide registry: each layer counts what it sees — `dist` connections,
//! disconnections by reason and handshake failures by cause; the HTTP ports' shed
//! connections and requests by reason; discovery polls, errors and
//! traps per topology; the registry calls (a latency histogram), handoffs and restarts.
//! Gauges (members, instances per kind, the process's CPU, memory and descriptors) are
//! read when rendered, the process's at most once a second. Every labelled family starts with its known labels at 0 (reasons,
//! causes, the configured topologies and kinds), so a rate over them works from the
//! first scrape. The crate escapes label values (`"`, `\` and newlines in a topology's name).

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// Upper bounds of the call-latency histogram, in seconds.
const BUCKETS: [f64; 10] = [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];

/// Every reason a connection ends for (`DownReason::code`).
pub const DOWN_REASONS: [&str; 6] = ["connection_closed", "heartbeat_timeout", "left", "protocol_error", "local_shutdown", "not_reading"];
/// Every reason the HTTP ports shed a connection or a request for: a connection closed to
/// make room on a full port, a newcomer refused because every connection is being
/// answered, a connection closed after its client read none of its answers for the send
/// timeout, a connection whose request body was closed to make room in the port's budget
/// for request bodies, a request refused because requests being answered hold that budget.
pub const HTTP_SHED_REASONS: [&str; 6] = ["port_full", "all_answering", "not_reading", "bodies_full", "bodies_answering", "answers_full"];
/// Every cause a handshake fails for (`DialError::cause`, and the accept loop's own).
pub const HANDSHAKE_CAUSES: [&str; 9] = ["cookie_mismatch", "version", "refused", "protocol", "timeout", "io", "name_in_use", "dropped", "tls"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Cause {
    cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Topology {
    topology: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Port {
    port: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

pub struct Metrics {
    registry: Registry,
    members: Gauge,
    connects: Counter,
    disconnects: Family<Reason, Counter>,
    handshake_failures: Family<Cause, Counter>,
    http_shed: Family<Reason, Counter>,
    http_connections: Family<Port, Gauge>,
    gateway_unauthorized: Counter,
    polls: Family<Topology, Counter>,
    poll_errors: Family<Topology, Counter>,
    poll_traps: Family<Topology, Counter>,
    instances: Family<Kind, Gauge>,
    mailbox_refused: Family<Kind, Counter>,
    calls: Histogram,
    call_errors: Counter,
    handoffs: Counter,
    restarts: Counter,
    replicated_copies: Counter,
    replicated_bytes: Counter,
    replication_failures: Counter,
    applied_twice: Counter,
    silences_kept: Counter,
    cpu_seconds: Counter<f64, AtomicU64>,
    resident: Gauge,
    virtual_memory: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
    start_time: FloatGauge,
    /// Every kind with a series (families offer no iteration).
    kinds_seen: std::sync::Mutex<Vec<String>>,
    /// When the process's figures were last read from /proc.
    process_read: std::sync::Mutex<Option<Instant>>,
}

/// How long the process's figures are reused: reading them costs /proc reads and a walk
/// of every open descriptor (about 0.1 ms, 0.45 ms with 900 connections open), which a
/// client scraping as fast as it can would otherwise pay for on every request. A
/// scrape interval is seconds; a second-old figure tells the same.
const PROCESS_READ_EVERY: Duration = Duration::from_secs(1);

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

/// What a poll of a strategy came to.
pub enum Poll {
    Ok,
    Error,
    Trap,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            registry: Registry::default(),
            members: Gauge::default(),
            connects: Counter::default(),
            gateway_unauthorized: Counter::default(),
            disconnects: Family::default(),
            handshake_failures: Family::default(),
            http_shed: Family::default(),
            http_connections: Family::default(),
            polls: Family::default(),
            poll_errors: Family::default(),
            poll_traps: Family::default(),
            instances: Family::default(),
            mailbox_refused: Family::default(),
            calls: Histogram::new(BUCKETS),
            call_errors: Counter::default(),
            handoffs: Counter::default(),
            restarts: Counter::default(),
            replicated_copies: Counter::default(),
            replicated_bytes: Counter::default(),
            replication_failures: Counter::default(),
            applied_twice: Counter::default(),
            silences_kept: Counter::default(),
            cpu_seconds: Counter::default(),
            resident: Gauge::default(),
            virtual_memory: Gauge::default(),
            open_fds: Gauge::default(),
            max_fds: Gauge::default(),
            start_time: FloatGauge::default(),
            kinds_seen: Default::default(),
            process_read: Default::default(),
        };
        registry.register("wasmnode_members", "Visible members of the cluster, this node included", m.members.clone());
        registry.register("wasmnode_connects", "Connections to cluster members (not tools) that passed the handshake", m.connects.clone());
        registry.register("wasmnode_disconnects", "Connections to cluster members that ended, by reason", m.disconnects.clone());
        registry.register("wasmnode_handshake_failures", "Handshakes that failed, by cause", m.handshake_failures.clone());
        registry.register(
            "wasmnode_http_shed",
            "Connections the HTTP ports closed, and requests they refused, to keep serving others, by reason",
            m.http_shed.clone(),
        );
        registry.register(
            "wasmnode_http_connections",
            "Connections open on each HTTP port (at most its max_connections), by the port's address",
            m.http_connections.clone(),
        );
        registry.register("wasmnode_gateway_unauthorized", "Gateway requests refused for want of the right bearer token", m.gateway_unauthorized.clone());
        registry.register("wasmnode_strategy_polls", "Polls of each topology's strategy", m.polls.clone());
        registry.register("wasmnode_strategy_errors", "Polls that returned an error", m.poll_errors.clone());
        registry.register("wasmnode_strategy_traps", "Polls that trapped (deadline, memory cap, guest trap)", m.poll_traps.clone());
        registry.register("wasmnode_worker_instances", "Worker instances running on this node, by kind", m.instances.clone());
        registry.register("wasmnode_mailbox_refused", "Calls and casts refused because their instance's mailbox was full, by kind", m.mailbox_refused.clone());
        registry.register("wasmnode_calls_seconds", "Worker calls made through this node, by latency", m.calls.clone());
        registry.register("wasmnode_call_errors", "Worker calls through this node that failed", m.call_errors.clone());
        registry.register("wasmnode_handoffs", "Instances this node handed to another with their state", m.handoffs.clone());
        registry.register("wasmnode_restarts", "Instances this node restarted after their node went down", m.restarts.clone());
        registry.register("wasmnode_replicated_copies", "Copies of durable instances' states a replica took from this node", m.replicated_copies.clone());
        registry.register("wasmnode_replicated_bytes", "State bytes (whole states and deltas) in those copies", m.replicated_bytes.clone());
        registry.register("wasmnode_replication_failures", "Copies a replica did not take (down, or no answer in time)", m.replication_failures.clone());
        registry.register(
            "wasmnode_calls_applied_twice",
            "Calls with an id that two instances of one name both applied, found when their states merged here",
            m.applied_twice.clone(),
        );
        registry.register(
            "wasmnode_silences_kept",
            "Silences of a peer past the heartbeat timeout that cost no node-down, because another member still heard it",
            m.silences_kept.clone(),
        );
        registry.register("wasmnode_build", "The wasmnode version running", Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]));
        registry.register("process_cpu_seconds", "User and system CPU time spent, in seconds", m.cpu_seconds.clone());
        registry.register("process_resident_memory_bytes", "Resident memory size, in bytes", m.resident.clone());
        registry.register("process_virtual_memory_bytes", "Virtual memory size, in bytes", m.virtual_memory.clone());
        registry.register("process_open_fds", "Open file descriptors", m.open_fds.clone());
        registry.register("process_max_fds", "The limit on open file descriptors", m.max_fds.clone());
        registry.register("process_start_time_seconds", "Start time of the process since the Unix epoch, in seconds", m.start_time.clone());
        for reason in DOWN_REASONS {
            let _ = m.disconnects.get_or_create(&Reason { reason: reason.into() });
        }
        for reason in HTTP_SHED_REASONS {
            let _ = m.http_shed.get_or_create(&Reason { reason: reason.into() });
        }
        for cause in HANDSHAKE_CAUSES {
            let _ = m.handshake_failures.get_or_create(&Cause { cause: cause.into() });
        }
        Metrics { registry, ..m }
    }

    /// The configured topologies and worker kinds: their series exist from the start, at 0.
    pub fn declare(&self, topologies: &[String], kinds: &[String]) {
        for t in topologies {
            let label = Topology { topology: t.clone() };
            let _ = self.polls.get_or_create(&label);
            let _ = self.poll_errors.get_or_create(&label);
            let _ = self.poll_traps.get_or_create(&label);
        }
        let mut seen = self.kinds_seen.lock().unwrap();
        for k in kinds {
            let _ = self.instances.get_or_create(&Kind { kind: k.clone() });
            let _ = self.mailbox_refused.get_or_create(&Kind { kind: k.clone() });
            if !seen.contains(k) {
                seen.push(k.clone());
            }
        }
    }

    /// A call or cast to an instance of `kind` refused: its mailbox was full.
    pub fn mailbox_refused(&self, kind: &str) {
        self.mailbox_refused.get_or_create(&Kind { kind: kind.to_string() }).inc();
    }

    pub fn connected(&self) {
        self.connects.inc();
    }
    pub fn disconnected(&self, reason: &'static str) {
        self.disconnects.get_or_create(&Reason { reason: reason.into() }).inc();
    }
    /// An HTTP port shed a connection or a request, for one of [`HTTP_SHED_REASONS`].
    pub fn http_shed(&self, reason: &'static str) {
        self.http_shed.get_or_create(&Reason { reason: reason.into() }).inc();
    }
    /// The gauge of connections open on the HTTP port at `port` (its address), which the
    /// port keeps.
    pub fn http_connections(&self, port: &str) -> Gauge {
        self.http_connections.get_or_create(&Port { port: port.to_string() }).clone()
    }
    /// A gateway request came without the right bearer token.
    pub fn gateway_unauthorized(&self) {
        self.gateway_unauthorized.inc();
    }
    pub fn handshake_failed(&self, cause: &'static str) {
        self.handshake_failures.get_or_create(&Cause { cause: cause.into() }).inc();
    }
    pub fn polled(&self, topology: &str, outcome: Poll) {
        let label = Topology { topology: topology.to_string() };
        self.polls.get_or_create(&label).inc();
        match outcome {
            Poll::Ok => {}
            Poll::Error => {
                self.poll_errors.get_or_create(&label).inc();
            }
            Poll::Trap => {
                self.poll_traps.get_or_create(&label).inc();
            }
        }
    }
    pub fn called(&self, took: Duration, ok: bool) {
        self.calls.observe(took.as_secs_f64());
        if !ok {
            self.call_errors.inc();
        }
    }
    pub fn handed_off(&self) {
        self.handoffs.inc();
    }
    /// A copy of a durable state went to a replica: `bytes` of state, taken or not.
    pub fn replicated(&self, bytes: usize, held: bool) {
        if held {
            self.replicated_copies.inc();
            self.replicated_bytes.inc_by(bytes as u64);
        } else {
            self.replication_failures.inc();
        }
    }
    /// Two instances' call logs met here with an id both applied.
    pub fn applied_twice(&self) {
        self.applied_twice.inc();
    }
    /// A peer silent past the heartbeat timeout was kept: another member heard it.
    pub fn silence_kept(&self) {
        self.silences_kept.inc();
    }
    pub fn restarted(&self) {
        self.restarts.inc();
    }

    /// The exposition, with the gauges given and the process's read now (or within the
    /// last [`PROCESS_READ_EVERY`]).
    pub fn render(&self, members: usize, instances: &BTreeMap<String, usize>) -> String {
        self.render_at(members, instances, Instant::now())
    }

    fn render_at(&self, members: usize, instances: &BTreeMap<String, usize>, now: Instant) -> String {
        self.members.set(members as i64);
        for (kind, n) in instances {
            self.instances.get_or_create(&Kind { kind: kind.clone() }).set(*n as i64);
        }
        self.zero_absent_kinds(instances);
        let due = {
            let mut last = self.process_read.lock().unwrap();
            let due = last.is_none_or(|t| now.saturating_duration_since(t) >= PROCESS_READ_EVERY);
            if due {
                *last = Some(now);
            }
            due
        };
        if due {
            self.read_process();
        }
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Kinds no longer running any instance go to 0, not away.
    fn zero_absent_kinds(&self, instances: &BTreeMap<String, usize>) {
        let mut seen = self.kinds_seen.lock().unwrap();
        for k in instances.keys() {
            if !seen.contains(k) {
                seen.push(k.clone());
            }
        }
        for k in seen.iter().filter(|k| !instances.contains_key(*k)) {
            self.instances.get_or_create(&Kind { kind: k.clone() }).set(0);
        }
    }

    /// The process's CPU time, memory and descriptors, from /proc (Linux; elsewhere the
    /// gauges stay at 0).
    fn read_process(&self) {
        let Some(p) = ProcessStats::read() else { return };
        let had = self.cpu_seconds.get();
        if p.cpu_seconds > had {
            self.cpu_seconds.inc_by(p.cpu_seconds - had);
        }
        self.resident.set(p.resident as i64);
        self.virtual_memory.set(p.virtual_memory as i64);
        self.open_fds.set(p.open_fds as i64);
        self.max_fds.set(p.max_fds as i64);
        self.start_time.set(p.start_time);
    }
}

struct ProcessStats {
    cpu_seconds: f64,
    resident: u64,
    virtual_memory: u64,
    open_fds: u64,
    max_fds: u64,
    start_time: f64,
}

impl ProcessStats {
    fn read() -> Option<ProcessStats> {
        // SAFETY: sysconf(3) has no preconditions.
        let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name (which may hold spaces, in parentheses).
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let num = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        // `man 5 proc`: utime 14, stime 15, starttime 22, vsize 23, rss 24 (1-based,
        // counting pid and comm); here 0-based from the state field (3).
        let (utime, stime, start, vsize, rss) = (num(11)?, num(12)?, num(19)?, num(20)?, num(21)?);
        let boot = std::fs::read_to_string("/proc/stat").ok()?.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse::<u64>().ok())?;
        let open_fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count() as u64).unwrap_or(0);
        let max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|l| l.lines().find(|l| l.starts_with("Max open files")).and_then(|l| l.split_whitespace().nth(3)).and_then(|v| v.parse().ok()))
            .unwrap_or(0);
        let ticks = ticks.max(1) as f64;
        Some(ProcessStats {
            cpu_seconds: (utime + stime) as f64 / ticks,
            resident: rss * page.max(1) as u64,
            virtual_memory: vsize,
            open_fds,
            max_fds,
            start_time: boot as f64 + start as f64 / ticks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quote_in_a_topology_name_keeps_the_exposition_parseable() {
        let m = Metrics::new();
        m.declare(&["we\"ird\\name\nx".to_string()], &["counter".to_string()]);
        let text = m.render(3, &BTreeMap::new());
        assert!(text.contains("wasmnode_strategy_polls_total{topology=\"we\\\"ird\\\\name\\nx\"} 0"), "{text}");
        assert!(text.lines().all(|l| l.starts_with('#') || l.rsplit_once(' ').is_some_and(|(_, v)| v.parse::<f64>().is_ok())), "{text}");
    }

    #[test]
    fn labelled_series_exist_at_zero_and_the_process_is_described() {
        let m = Metrics::new();
        m.declare(&[], &["counter".to_string()]);
        let text = m.render(1, &BTreeMap::new());
        for want in [
            "wasmnode_members 1",
            "wasmnode_disconnects_total{reason=\"not_reading\"} 0",
            "wasmnode_handshake_failures_total{cause=\"cookie_mismatch\"} 0",
            "wasmnode_http_shed_total{reason=\"bodies_full\"} 0",
            "wasmnode_gateway_unauthorized_total 0",
            "wasmnode_worker_instances{kind=\"counter\"} 0",
            "wasmnode_build_info{version=\"",
            "# TYPE wasmnode_calls_seconds histogram",
            "process_resident_memory_bytes ",
            "process_cpu_seconds_total ",
            "process_open_fds ",
        ] {
            assert!(text.contains(want), "{want} missing:\n{text}");
        }
        m.disconnected("left");
        m.called(Duration::from_millis(2), false);
        let text = m.render(1, &BTreeMap::from([("counter".to_string(), 2)]));
        assert!(text.contains("wasmnode_disconnects_total{reason=\"left\"} 1"), "{text}");
        assert!(text.contains("wasmnode_call_errors_total 1"), "{text}");
        assert!(text.contains("wasmnode_worker_instances{kind=\"counter\"} 2"), "{text}");
    }

    #[test]
    fn the_process_is_read_at_most_once_a_second_and_the_rest_each_time() {
        let m = Metrics::new();
        m.declare(&[], &["counter".to_string()]);
        let fds = |text: &str| text.lines().find_map(|l| l.strip_prefix("process_open_fds ")).and_then(|v| v.parse::<i64>().ok()).unwrap();
        let t0 = Instant::now();
        let first = m.render_at(1, &BTreeMap::new(), t0);
        let opened: Vec<std::fs::File> = (0..200).map(|_| std::fs::File::open("/dev/null").unwrap()).collect();
        // Within the second: the same process figures, but the node's own gauges are new.
        let soon = m.render_at(2, &BTreeMap::from([("counter".to_string(), 3)]), t0 + Duration::from_millis(900));
        assert_eq!(fds(&soon), fds(&first), "{soon}");
        assert!(soon.contains("wasmnode_members 2") && soon.contains("wasmnode_worker_instances{kind=\"counter\"} 3"), "{soon}");
        // A second on: read again (other tests' files come and go, hence the margin).
        let later = m.render_at(2, &BTreeMap::new(), t0 + Duration::from_secs(1));
        assert!(fds(&later) >= fds(&first) + 100, "{} then {}", fds(&first), fds(&later));
        drop(opened);
    }
}
