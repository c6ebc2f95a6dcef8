//! Deterministic simulation of a cluster: the registry's and the membership's real
//! state machines ([`Table`], [`View`]) on 3–20 nodes in one process, over a simulated network whose time,
//! delivery order, delays, partitions, pauses (SIGSTOP), kills (kill -9) and graceful
//! leaves (SIGTERM) all come from one seed. Workers are a counter test double whose
//! state merges (a grow-only counter per instance), so that no acknowledged increment may
//! be lost or doubled where the state survives.
//!
//! What it models of the connection layer (`dist`): one FIFO connection per pair of
//! nodes with a fresh id on every reconnect, dials the membership asks for that fail
//! (refused, timed out, name still in use) or connect, a connection noticed gone at once
//! when its peer is killed and after the heartbeat timeout when it is cut off or paused,
//! a node that wakes from a pause reading its sockets before its timers, and a leaver
//! that announces the leave on every connection and closes them once its names are
//! handed over. Discovery lists every node; the member lists nodes gossip travel too.
//!
//! Invariants checked at the end of every run, once the network is healed and the
//! membership stable: every started name runs exactly once, on its owner; every name
//! whose state never lived on a killed node holds every acknowledged increment, and no
//! more than were attempted; every call got at most one reply, and none past its
//! deadline. Checked as it runs: an instance that stops in favour of another never had
//! fewer restarts without state; while only leaves and joins have happened, every call
//! succeeds. `./dev sim --seed N --trace` replays one run with its events.
//!
//! Two seeds in three make the counter kind durable, with 1 or 2 replicas: an instance
//! copies its state to its replicas (the table's `replication_of`, the real
//! [`Replicator`]) after each increment, on each membership change and when it starts,
//! and a call is answered only once every live replica took the copy (by that replica,
//! when it is the caller's node and the only one: the answer rides with the copy); the replicas hold
//! the copies in their real tables, and the table starts a lost name from its copy. In
//! those seeds kills, pauses and leaves together are never more than the replicas at
//! once (each counting until [`KILL_WINDOW`] after it ends, and each process short of
//! `replicas + 1` counting as one), and a kill taints nothing: every acknowledged
//! increment of every name must survive. Durable seeds do not partition nodes yet: a
//! name taken over from a copy on one side, while its instance on the other side keeps
//! counting and is then killed before the two meet, can lose what that instance counted
//! since the copy (seed 11 of the first 2,000 with partitions; docs/durability.md).

use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::fmt::Write as _;
use std::sync::Arc;

use crate::config::Restart;
use crate::dist::DownReason;
use crate::membership::view::{DialResult, Input, Names, Output, View};
use crate::registry::durable::{Replicator, Update};
use crate::registry::placement::owner;
use crate::registry::route::Route;
use crate::registry::table::{Effect, Event, Kinds, Table};
use crate::registry::wire::{Msg, Replicate};
use crate::registry::{StartError, WorkerName};

/// Heartbeat timeout: a cut-off or paused peer is noticed after this long (ms).
const HEARTBEAT_TIMEOUT: u64 = 1500;
/// How long a client waits for a call (ms).
const CALL_TIMEOUT: u64 = 3000;
/// How long a leaver waits for its handoffs before it closes anyway (ms).
const LEAVE_DEADLINE: u64 = 10_000;
/// How many nodes a call follows a moving name through.
const MAX_HOPS: u32 = 4;
/// After the last fault, how long the cluster has to settle before the checks (ms).
const SETTLE: u64 = 20_000;
/// How long a dial to a node that does not answer (cut off, paused) takes to fail (ms).
const CONNECT_TIMEOUT: u64 = 1000;
/// The membership's re-dial tick (ms).
const REDIAL_TICK: u64 = 200;
/// In durable seeds, at most `replicas` nodes are killed within this long (ms): the time
/// the survivors take to notice and copy every state to new replicas, with room.
const KILL_WINDOW: u64 = HEARTBEAT_TIMEOUT + 500;

/// A small, portable PRNG (splitmix64): the same seed gives the same run everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The kinds the simulated nodes run: one permanent counter kind, rebalanced on join,
/// durable with this many replicas (0: not durable).
struct SimKinds(usize);

impl Kinds for SimKinds {
    fn has_kind(&self, kind: &str) -> bool {
        kind == "counter"
    }
    fn activate_on_call(&self, _: &str) -> bool {
        false
    }
    fn restart(&self, _: &str) -> Restart {
        Restart::Permanent
    }
    fn rebalance_on_join(&self) -> bool {
        true
    }
    fn replicas(&self, _: &str) -> usize {
        self.0
    }
}

type Node = usize;
/// An instance's handle: its number in [`Sim::insts`].
type Inst = u64;
/// A requester's handle: its number in [`Sim::reqs`].
type Req = u64;

/// A counter instance: per instance that ever counted in its lineage, how many.
#[derive(Debug)]
struct Instance {
    name: WorkerName,
    node: Node,
    /// How often its line was restarted without state.
    restarts: u32,
    counts: BTreeMap<u64, u64>,
    stopping: bool,
    /// Durable seeds: the copies it sent, the copy in flight, what waits behind it.
    rep: Replicator,
    round: Option<Round>,
    queue: std::collections::VecDeque<Pending>,
    /// Members changed while a copy was in flight: copy again after it.
    dirty: bool,
    /// A stop that waits for the calls ahead of it.
    stop: Option<(WorkerName, u64)>,
}

/// A copy of an instance's state on its way to its replicas.
#[derive(Debug)]
struct Round {
    seq: u64,
    state: Vec<u8>,
    sent: Vec<crate::registry::durable::Target>,
    acked: Vec<String>,
    waiting: BTreeSet<Node>,
    /// What is released once every live replica took it.
    then: Pending,
    /// The call answer in `then` rides with the copy to its caller's node, the one
    /// replica (the driver's `Rpc::ReplicateThenReply`): that node answers it on taking
    /// the copy, and the owner only if it did not.
    ride: Option<(usize, u32)>,
}

/// What waits for a copy: a call's answer, or the instance's start.
#[derive(Debug, Clone)]
enum Pending {
    Nothing,
    /// A call applied by this instance: answered where it came from.
    Reply {
        call: usize,
        to: ReplyTo,
    },
    /// A call queued behind the copy in flight (not applied yet).
    Queued {
        call: usize,
        to: ReplyTo,
    },
    Spawned {
        name: WorkerName,
        id: u64,
    },
    /// A handoff's answer, sent once a copy holding the state it merged is held.
    Tell {
        to: String,
        msg: Msg,
    },
}

#[derive(Debug, Clone, Copy)]
enum ReplyTo {
    /// The caller is on the instance's node.
    Local,
    /// Over `conn` from `from`, answering hop `hop`.
    Remote { from: Node, conn: u64, hop: u32 },
}

fn encode(counts: &BTreeMap<u64, u64>) -> Vec<u8> {
    postcard::to_stdvec(counts).expect("counts serialize")
}

fn decode(state: &[u8]) -> BTreeMap<u64, u64> {
    postcard::from_bytes(state).unwrap_or_default()
}

fn merge(into: &mut BTreeMap<u64, u64>, other: &BTreeMap<u64, u64>) {
    for (k, v) in other {
        let e = into.entry(*k).or_insert(0);
        *e = (*e).max(*v);
    }
}

#[derive(Debug)]
enum Requester {
    /// A client's start of this name.
    Client(WorkerName),
    /// A start another node forwarded: answered to it, under its request number.
    Forwarded { origin: Node, conn: u64, req: Req },
}

/// What travels on a connection.
#[derive(Debug)]
enum Wire {
    Msg(Msg),
    StartReq {
        req: Req,
        name: WorkerName,
        args: Vec<u8>,
    },
    StartRep {
        req: Req,
        result: Result<String, StartError>,
    },
    CallReq {
        call: usize,
        hop: u32,
        name: WorkerName,
    },
    CallRep {
        call: usize,
        hop: u32,
        result: CallResult,
    },
    Leaving,
    Close,
    Members(Names),
    /// A copy of instance `inst`'s state for the receiver to hold; with the answer to
    /// the receiver's call `(call, hop)`, which it takes once it holds the copy.
    Replicate {
        inst: Inst,
        copy: Box<Replicate>,
        ride: Option<(usize, u32)>,
    },
    ReplicateRep {
        inst: Inst,
        seq: u64,
        held: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum CallResult {
    Ok,
    Moved(Node),
    NotFound,
    Failed,
}

#[derive(Debug)]
enum Ev {
    /// An event for a node's table.
    Table(Node, Event<Inst, Req>),
    /// Something arrives on connection `conn` from `from`.
    Deliver {
        from: Node,
        to: Node,
        conn: u64,
        what: Wire,
    },
    /// `node` notices that its connection `conn` to `peer` is gone.
    ConnDown {
        node: Node,
        peer: Node,
        conn: u64,
        reason: DownReason,
    },
    /// A dial `node` made (in its life `life`) to `peer` ended.
    Dialled {
        node: Node,
        life: u64,
        peer: Node,
        result: DialResult,
    },
    /// Connections cut off or to a paused node time out, if they still are.
    Detect {
        a: Node,
        b: Node,
        conn: u64,
    },
    Redial,
    Fault,
    Heal {
        a: Node,
        b: Node,
    },
    Wake(Node),
    Kill(Node),
    Restart(Node),
    LeaveDeadline {
        node: Node,
        life: u64,
    },
    Client,
    CallTimeout(usize),
    /// Retry the calls parked at a node (after its table changed).
    Retry(Node),
}

/// A call from a client, followed hop by hop.
#[derive(Debug)]
struct Call {
    name: WorkerName,
    origin: Node,
    deadline: u64,
    hops: u32,
    /// The node and connection whose answer it waits for.
    awaiting: Option<(Node, u64)>,
    /// The hops answered so far: each at most once.
    replied: BTreeSet<u32>,
    /// The instance that counted it, when one did.
    applied: Option<Inst>,
    /// Made to a started name before any fault but graceful leaves and joins: if none
    /// comes before its answer either, it must succeed.
    must_find: bool,
    done: Option<(u64, CallResult)>,
}

/// A call waiting at a node for its name to finish starting or moving.
#[derive(Debug, Clone, Copy)]
enum Parked {
    /// At the caller's node, deciding where to send it.
    Caller(usize),
    /// At a callee, for a caller on `from` over `conn`.
    Callee { call: usize, hop: u32, from: Node, conn: u64 },
}

struct Live {
    table: Table<Inst, Req>,
    members: View,
    /// Connections this node's connection layer considers up, by peer.
    view: BTreeMap<Node, u64>,
    paused_until: Option<u64>,
    leaving: bool,
    parked: Vec<Parked>,
    /// When it started: a node serves clients once it has found its cluster (the
    /// driver's readiness gate), modelled as a re-dial round after boot, then synced.
    booted: u64,
}

/// What one run found.
pub struct Outcome {
    pub seed: u64,
    pub nodes: usize,
    pub violations: Vec<String>,
    pub trace: Vec<String>,
    pub events: u64,
    pub calls: usize,
    pub acked: u64,
}

struct Sim {
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<std::cmp::Reverse<(u64, u64)>>,
    events: BTreeMap<u64, Ev>,
    names: Vec<String>,
    nodes: Vec<Option<Live>>,
    /// How many times each node was (re)started: a leave deadline is for one life.
    lives: Vec<u64>,
    next_conn: u64,
    /// Connections that exist, by ordered pair.
    conns: BTreeMap<(Node, Node), u64>,
    cut: BTreeSet<(Node, Node)>,
    /// What was sent across a cut, held until it heals (TCP retransmits; it is lost only
    /// if the connection breaks meanwhile).
    held: BTreeMap<(Node, Node), Vec<(u64, Wire)>>,
    link_clock: BTreeMap<(Node, Node), u64>,
    insts: BTreeMap<Inst, Instance>,
    next_inst: Inst,
    reqs: BTreeMap<Req, Requester>,
    next_req: Req,
    calls: Vec<Call>,
    worker_names: Vec<WorkerName>,
    started: BTreeSet<WorkerName>,
    /// Names whose state lived on a killed node (or a leaver that gave up): not counted.
    tainted: BTreeSet<WorkerName>,
    /// Names that no live node knew of after a kill: nothing can restart them.
    forgotten: BTreeSet<WorkerName>,
    faults_until: u64,
    /// Whether a partition, pause or kill has happened yet.
    hard_fault: bool,
    trace: Option<Vec<String>>,
    processed: u64,
    violations: Vec<String>,
    /// Durable seeds: the replicas each counter has (0: not durable).
    replicas: usize,
    /// Until when each kill, pause or partition counts (durable seeds keep those within
    /// the replicas: see [`Sim::may_fail`]).
    failures: Vec<u64>,
}

fn pair(a: Node, b: Node) -> (Node, Node) {
    (a.min(b), a.max(b))
}

/// Runs the simulation for `seed`; with `trace`, every event processed is recorded.
pub fn run(seed: u64, trace: bool) -> Outcome {
    let mut rng = Rng(seed);
    let n = rng.range(3, 20) as usize;
    let names: Vec<String> = (0..n).map(|i| format!("n{i}@sim")).collect();
    let worker_names = (0..rng.range(5, 40)).map(|k| WorkerName::new("counter", format!("k{k}"))).collect();
    let faults_until = rng.range(10_000, 30_000);
    // Apart from the generator, so that a seed's run does not depend on it otherwise.
    let replicas = [0, 1, 2][(seed % 3) as usize];
    let mut sim = Sim {
        rng,
        now: 0,
        seq: 0,
        queue: BinaryHeap::new(),
        events: BTreeMap::new(),
        names,
        nodes: (0..n).map(|_| None).collect(),
        lives: vec![0; n],
        next_conn: 1,
        conns: BTreeMap::new(),
        cut: BTreeSet::new(),
        held: BTreeMap::new(),
        link_clock: BTreeMap::new(),
        insts: BTreeMap::new(),
        next_inst: 1,
        reqs: BTreeMap::new(),
        next_req: 1,
        calls: Vec::new(),
        worker_names,
        started: BTreeSet::new(),
        tainted: BTreeSet::new(),
        forgotten: BTreeSet::new(),
        faults_until,
        hard_fault: false,
        trace: trace.then(Vec::new),
        processed: 0,
        violations: Vec::new(),
        replicas,
        failures: Vec::new(),
    };
    for i in 0..n {
        sim.boot(i);
    }
    sim.at(0, Ev::Redial);
    sim.at(2000, Ev::Client);
    let first_fault = sim.rng.range(2500, 5000);
    sim.at(first_fault, Ev::Fault);
    let end = faults_until + SETTLE;
    while let Some(std::cmp::Reverse((t, seq))) = sim.queue.pop() {
        if t > end {
            break;
        }
        sim.now = t;
        let ev = sim.events.remove(&seq).expect("queued");
        sim.dispatch(ev);
    }
    sim.now = end;
    sim.check();
    let acked = sim.calls.iter().filter(|c| matches!(c.done, Some((_, CallResult::Ok)))).count() as u64;
    Outcome { seed, nodes: n, violations: sim.violations, trace: sim.trace.unwrap_or_default(), events: sim.processed, calls: sim.calls.len(), acked }
}

impl Sim {
    fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(std::cmp::Reverse((t, self.seq)));
        self.events.insert(self.seq, ev);
    }

    fn after(&mut self, d: u64, ev: Ev) {
        self.at(self.now + d, ev);
    }

    fn log(&mut self, line: impl FnOnce() -> String) {
        if let Some(t) = &mut self.trace {
            t.push(format!("{:>6} ms  {}", self.now, line()));
        }
    }

    fn node_ix(&self, name: &str) -> Option<Node> {
        self.names.iter().position(|n| n == name)
    }

    fn alive(&self, n: Node) -> bool {
        self.nodes[n].is_some()
    }

    fn running(&self, n: Node) -> bool {
        self.nodes[n].as_ref().is_some_and(|l| l.paused_until.is_none())
    }

    fn boot(&mut self, n: Node) {
        self.lives[n] += 1;
        let table = Table::new(self.names[n].clone(), Arc::new(SimKinds(self.replicas)));
        let members = View::new(self.names[n].clone(), true);
        self.nodes[n] = Some(Live { table, members, view: BTreeMap::new(), paused_until: None, leaving: false, parked: Vec::new(), booted: self.now });
        self.log(|| format!("n{n} boots"));
        let names = self.names.clone();
        self.member_input(n, Input::Discovered { topology: "sim".into(), names });
    }

    fn dispatch(&mut self, ev: Ev) {
        // Events for a paused node wait until it wakes, in their order.
        let target = match &ev {
            Ev::Table(n, _) | Ev::Deliver { to: n, .. } | Ev::ConnDown { node: n, .. } | Ev::Dialled { node: n, .. } | Ev::Retry(n) => Some(*n),
            _ => None,
        };
        if let Some(n) = target {
            match self.nodes[n].as_ref() {
                None => return,
                Some(l) => {
                    if let Some(until) = l.paused_until {
                        self.at(until.max(self.now), ev);
                        return;
                    }
                }
            }
        }
        self.processed += 1;
        match ev {
            Ev::Table(n, event) => self.feed(n, event),
            Ev::Deliver { from, to, conn, what } => self.deliver(from, to, conn, what),
            Ev::ConnDown { node, peer, conn, reason } => self.conn_down(node, peer, conn, reason),
            Ev::Dialled { node, life, peer, result } => {
                if self.lives[node] == life {
                    self.log(|| format!("n{node} dial to n{peer}: {result:?}"));
                    let now_ms = self.now;
                    self.member_input(node, Input::Dialled { node: self.names[peer].clone(), result, now_ms });
                }
            }
            Ev::Detect { a, b, conn } => {
                let stalled = self.cut.contains(&pair(a, b)) || !self.running(a) || !self.running(b);
                if stalled && self.conns.get(&pair(a, b)) == Some(&conn) {
                    self.log(|| format!("n{a} - n{b}: heartbeat timeout on conn {conn}"));
                    self.break_conn(a, b, 0, DownReason::HeartbeatTimeout);
                }
            }
            Ev::Redial => {
                for n in self.live_nodes() {
                    if self.running(n) {
                        let now_ms = self.now;
                        self.member_input(n, Input::Tick { now_ms });
                    }
                }
                self.after(REDIAL_TICK, Ev::Redial);
            }
            Ev::Fault => {
                self.fault();
                if self.now < self.faults_until {
                    let d = self.rng.range(500, 4000);
                    self.after(d, Ev::Fault);
                }
            }
            Ev::Heal { a, b } => {
                self.cut.remove(&pair(a, b));
                // What TCP kept retransmitting arrives now, in order.
                for (x, y) in [(a, b), (b, a)] {
                    for (conn, what) in self.held.remove(&(x, y)).unwrap_or_default() {
                        self.send_wire(x, y, conn, what);
                    }
                }
            }
            Ev::Wake(n) => {
                if let Some(l) = self.nodes[n].as_mut() {
                    l.paused_until = None;
                    self.log(|| format!("n{n} wakes (SIGCONT)"));
                }
            }
            Ev::Kill(n) => self.kill(n),
            Ev::Restart(n) => {
                if !self.alive(n) {
                    self.boot(n);
                }
            }
            Ev::LeaveDeadline { node, life } => {
                if self.lives[node] == life && self.nodes[node].as_ref().is_some_and(|l| l.leaving) {
                    let held: Vec<WorkerName> = self.nodes[node].as_ref().unwrap().table.held();
                    self.log(|| format!("n{node} leave deadline: closing with {} names", held.len()));
                    for name in &held {
                        self.tainted.insert(name.clone());
                    }
                    self.finish_leave(node);
                }
            }
            Ev::Client => {
                if self.now < self.faults_until {
                    self.client();
                    let d = self.rng.range(5, 60);
                    self.after(d, Ev::Client);
                }
            }
            Ev::CallTimeout(c) => {
                if self.calls[c].done.is_none() {
                    self.finish_call(c, CallResult::Failed);
                }
            }
            Ev::Retry(n) => self.retry_parked(n),
        }
    }

    // ---- faults ----

    fn live_nodes(&self) -> Vec<Node> {
        (0..self.nodes.len()).filter(|n| self.alive(*n)).collect()
    }

    fn fault(&mut self) {
        let live = self.live_nodes();
        let steady: Vec<Node> = live.iter().copied().filter(|n| self.running(*n) && !self.nodes[*n].as_ref().unwrap().leaving).collect();
        let dead: Vec<Node> = (0..self.nodes.len()).filter(|n| !self.alive(*n)).collect();
        match self.rng.below(6) {
            // A partition: a random group cut off from the rest, for a while.
            0 if steady.len() >= 2 && self.may_fail(1) && self.replicas == 0 => {
                let size = self.rng.range(1, (live.len() as u64 / 2).max(1)) as usize;
                let mut island = BTreeSet::new();
                while island.len() < size {
                    island.insert(live[self.rng.below(live.len() as u64) as usize]);
                }
                let heal = self.rng.range(500, 5000);
                self.hard_fault = true;
                self.failures.push(self.now + heal + KILL_WINDOW);
                self.log(|| format!("partition {island:?} for {heal} ms"));
                for &a in &island {
                    for &b in live.iter().filter(|b| !island.contains(b)) {
                        self.cut.insert(pair(a, b));
                        if let Some(&conn) = self.conns.get(&pair(a, b)) {
                            self.after(HEARTBEAT_TIMEOUT, Ev::Detect { a, b, conn });
                        }
                        self.after(heal, Ev::Heal { a, b });
                    }
                }
            }
            // A pause (SIGSTOP … SIGCONT), longer or shorter than the heartbeat timeout.
            1 if !steady.is_empty() && self.may_fail(1) => {
                let n = steady[self.rng.below(steady.len() as u64) as usize];
                let d = self.rng.range(200, 4000);
                self.hard_fault = true;
                self.failures.push(self.now + d + KILL_WINDOW);
                self.log(|| format!("n{n} paused (SIGSTOP) for {d} ms"));
                self.nodes[n].as_mut().unwrap().paused_until = Some(self.now + d);
                self.after(d, Ev::Wake(n));
                let peers: Vec<(Node, u64)> = self.nodes[n].as_ref().unwrap().view.iter().map(|(p, c)| (*p, *c)).collect();
                for (p, conn) in peers {
                    self.after(HEARTBEAT_TIMEOUT, Ev::Detect { a: n, b: p, conn });
                }
            }
            // kill -9: state gone; back after a while as a new process.
            2 if steady.len() >= 2 && self.may_fail(1) => {
                let n = steady[self.rng.below(steady.len() as u64) as usize];
                self.kill(n);
                let d = self.rng.range(500, 5000);
                self.after(d, Ev::Restart(n));
            }
            // SIGTERM: a graceful leave; back later as a new process.
            3 if steady.len() >= 2 && self.may_fail(1) => {
                let n = steady[self.rng.below(steady.len() as u64) as usize];
                // A leave hands every name over, with its state, but the cluster has a
                // node fewer to hold copies until it is back: it counts in durable seeds.
                self.failures.push(self.now + LEAVE_DEADLINE.min(2 * KILL_WINDOW));
                self.leave(n);
                let d = self.rng.range(2000, 8000);
                self.after(d, Ev::Restart(n));
            }
            // Two nodes killed at once.
            4 if steady.len() >= 3 && self.may_fail(2) => {
                let a = steady[self.rng.below(steady.len() as u64) as usize];
                let b = steady[self.rng.below(steady.len() as u64) as usize];
                self.kill(a);
                if b != a {
                    // The second a few milliseconds later, as two pods evicted together.
                    let d = self.rng.range(0, 5);
                    self.after(d, Ev::Kill(b));
                }
                let d = self.rng.range(1000, 6000);
                self.after(d, Ev::Restart(a));
                self.after(d + 100, Ev::Restart(b));
            }
            // A node that was down comes back.
            _ if !dead.is_empty() => {
                let n = dead[self.rng.below(dead.len() as u64) as usize];
                self.after(0, Ev::Restart(n));
            }
            _ => {}
        }
    }

    /// Whether `count` more failures now keep a durable seed within its replicas: a
    /// kill, a pause or a partition counts from its start until [`KILL_WINDOW`] after
    /// it ends (a pause or partition of a node that runs names is, to the others, a
    /// node that went down, and comes back with another state); a leave counts too.
    /// A cluster with fewer than `replicas + 1` processes cannot hold `replicas` copies
    /// of a name besides its instance: each process missing counts as a failure too.
    fn may_fail(&self, count: usize) -> bool {
        let current = self.failures.iter().filter(|end| **end > self.now).count();
        let processes = self.nodes.iter().filter(|n| n.is_some()).count();
        self.replicas == 0 || current + count <= self.replicas.min(processes.saturating_sub(1))
    }

    fn kill(&mut self, n: Node) {
        let Some(live) = self.nodes[n].take() else { return };
        self.hard_fault = true;
        self.failures.push(self.now + KILL_WINDOW);
        self.log(|| format!("n{n} killed (kill -9)"));
        // Whatever state lived there is gone; unless it is durable, the names it held
        // are not counted.
        if self.replicas == 0 {
            for name in live.table.held() {
                self.tainted.insert(name);
            }
        }
        let gone: Vec<Inst> = self.insts.iter().filter(|(_, i)| i.node == n).map(|(id, _)| *id).collect();
        for id in gone {
            let inst = self.insts.remove(&id).unwrap();
            if self.replicas == 0 {
                self.tainted.insert(inst.name);
            }
        }
        for (p, conn) in live.view {
            if self.conns.get(&pair(n, p)) == Some(&conn) {
                self.conns.remove(&pair(n, p));
            }
            let d = self.rng.range(1, 5);
            self.after(d, Ev::ConnDown { node: p, peer: n, conn, reason: DownReason::ConnectionClosed });
        }
        self.conns.retain(|(a, b), _| *a != n && *b != n);
        self.forget();
    }

    /// Names no live node knows of any more (the last that did was killed, or left
    /// alone): nothing can restart them, and they are not expected to run.
    fn forget(&mut self) {
        let lost: Vec<WorkerName> = self.worker_names.iter().filter(|w| !self.nodes.iter().flatten().any(|l| l.table.remembers(w))).cloned().collect();
        for w in lost {
            if self.forgotten.insert(w.clone()) {
                self.log(|| format!("{w} is known to no live node now"));
            }
        }
    }

    fn leave(&mut self, n: Node) {
        self.log(|| format!("n{n} leaves (SIGTERM)"));
        let peers: Vec<(Node, u64)> = {
            let live = self.nodes[n].as_mut().unwrap();
            live.leaving = true;
            live.view.iter().map(|(p, c)| (*p, *c)).collect()
        };
        for (p, conn) in peers {
            self.send_wire(n, p, conn, Wire::Leaving);
        }
        self.member_input(n, Input::Leave);
        self.feed(n, Event::Leave);
        let life = self.lives[n];
        self.after(LEAVE_DEADLINE, Ev::LeaveDeadline { node: n, life });
    }

    /// A leaver whose names are all handed over (or whose deadline passed) closes its
    /// connections, behind everything it sent, and exits.
    fn finish_leave(&mut self, n: Node) {
        let live = self.nodes[n].take().expect("leaving node is alive");
        self.log(|| format!("n{n} closes its connections and exits"));
        // Its clients' calls under way get no answer (the driver drains the HTTP port
        // first; this model does not wait for them).
        for c in self.calls.iter_mut().filter(|c| c.origin == n && c.done.is_none()) {
            c.must_find = false;
        }
        for (p, conn) in live.view {
            self.send_wire(n, p, conn, Wire::Close);
        }
        let gone: Vec<Inst> = self.insts.iter().filter(|(_, i)| i.node == n).map(|(id, _)| *id).collect();
        for id in gone {
            let inst = self.insts.remove(&id).unwrap();
            self.tainted.insert(inst.name);
        }
        self.conns.retain(|(a, b), _| *a != n && *b != n);
        self.forget();
    }

    // ---- the network ----

    fn break_conn(&mut self, a: Node, b: Node, jitter: u64, reason: DownReason) {
        let Some(conn) = self.conns.remove(&pair(a, b)) else { return };
        for (x, y) in [(a, b), (b, a)] {
            let d = self.rng.range(0, jitter);
            self.after(d, Ev::ConnDown { node: x, peer: y, conn, reason: reason.clone() });
        }
    }

    fn conn_down(&mut self, node: Node, peer: Node, conn: u64, reason: DownReason) {
        let Some(live) = self.nodes[node].as_mut() else { return };
        if live.view.get(&peer) != Some(&conn) {
            return;
        }
        live.view.remove(&peer);
        // A reset or timeout breaks the connection both ways.
        if self.conns.get(&pair(node, peer)) == Some(&conn) {
            self.conns.remove(&pair(node, peer));
            let d = self.rng.range(0, 3);
            self.after(d, Ev::ConnDown { node: peer, peer: node, conn, reason: DownReason::ConnectionClosed });
        }
        self.log(|| format!("n{node} sees conn {conn} to n{peer} gone ({reason})"));
        self.member_input(node, Input::Disconnected { node: self.names[peer].clone(), conn, reason });
        // Calls waiting for an answer on that connection get none.
        let waiting: Vec<usize> =
            self.calls.iter().enumerate().filter(|(_, c)| c.done.is_none() && c.origin == node && c.awaiting == Some((peer, conn))).map(|(i, _)| i).collect();
        for c in waiting {
            self.calls[c].awaiting = None;
            let left = self.nodes[node].as_ref().is_some_and(|l| l.members.has_left(&self.names[peer]));
            if left {
                self.call_step(node, c, None);
            } else {
                self.finish_call(c, CallResult::Failed);
            }
        }
        // Copies waiting for that peer: it is not counted.
        let waiting: Vec<Inst> =
            self.insts.iter().filter(|(_, i)| i.node == node && i.round.as_ref().is_some_and(|r| r.waiting.contains(&peer))).map(|(id, _)| *id).collect();
        for inst in waiting {
            let round = self.insts.get_mut(&inst).unwrap().round.as_mut().unwrap();
            round.waiting.remove(&peer);
            if round.waiting.is_empty() {
                self.finish_round(node, inst);
            }
        }
        // Starts forwarded on it are answered as failed.
        let pending: Vec<Req> = self
            .reqs
            .iter()
            .filter(|(_, r)| matches!(r, Requester::Forwarded { origin, conn: c, .. } if *origin == peer && *c == conn))
            .map(|(k, _)| *k)
            .collect();
        for r in pending {
            self.reqs.remove(&r);
        }
    }

    /// `a`'s membership asked to dial `b`: the connection layer connects, or the dial
    /// fails as a real one would, and either way the membership hears how it ended.
    fn dial(&mut self, a: Node, b: Node) {
        let life = self.lives[a];
        let (result, after) = if !self.alive(b) {
            (DialResult::Failed { error: "connection refused".into(), refused: false }, self.rng.range(1, 5))
        } else if self.cut.contains(&pair(a, b)) || !self.running(b) {
            (DialResult::Failed { error: "timed out".into(), refused: false }, CONNECT_TIMEOUT)
        } else if self.nodes[b].as_ref().unwrap().leaving {
            (DialResult::Failed { error: "handshake failed: refused: this node is leaving".into(), refused: true }, self.rng.range(1, 5))
        } else if self.conns.contains_key(&pair(a, b)) {
            // The other direction's connection came up first (simultaneous connect).
            (DialResult::Busy, self.rng.range(1, 5))
        } else if self.nodes[b].as_ref().unwrap().view.contains_key(&a) {
            // `b` has not noticed yet that its previous connection to `a` is gone.
            (DialResult::Failed { error: "handshake failed: refused: name in use".into(), refused: true }, self.rng.range(1, 5))
        } else {
            let conn = self.next_conn;
            self.next_conn += 1;
            self.conns.insert(pair(a, b), conn);
            self.log(|| format!("n{a} -> n{b}: connected, conn {conn}"));
            for (x, y) in [(a, b), (b, a)] {
                self.nodes[x].as_mut().unwrap().view.insert(y, conn);
            }
            // Each side hears of the connection before anything else on it (as `dist`
            // reports a connection's up before its frames and its down).
            for (x, y) in [(a, b), (b, a)] {
                let since_ms = self.now;
                self.member_input(x, Input::Connected { node: self.names[y].clone(), conn, since_ms });
            }
            (DialResult::Connected, 0)
        };
        self.after(after, Ev::Dialled { node: a, life, peer: b, result });
    }

    /// Feeds `n`'s membership and carries out what it decides.
    fn member_input(&mut self, n: Node, input: Input) {
        let Some(live) = self.nodes[n].as_mut() else { return };
        if let Some(t) = &mut self.trace {
            if !matches!(input, Input::Tick { .. }) {
                t.push(format!("{:>6} ms  n{n} membership {input:?}", self.now));
            }
        }
        let outputs = live.members.handle(input);
        for output in outputs {
            if let Some(t) = &mut self.trace {
                t.push(format!("{:>6} ms  n{n}   membership output {output:?}", self.now));
            }
            match output {
                Output::Changed(change) => {
                    if let Some(event) = Event::member(&change) {
                        self.feed(n, event);
                    }
                }
                Output::Gossip(names) => {
                    let peers: Vec<(Node, u64)> = self.nodes[n].as_ref().map(|l| l.view.iter().map(|(p, c)| (*p, *c)).collect()).unwrap_or_default();
                    for (p, conn) in peers {
                        self.send_wire(n, p, conn, Wire::Members(names.clone()));
                    }
                }
                Output::Dial(name) => {
                    let b = self.node_ix(&name).expect("discovery lists only simulated nodes");
                    self.dial(n, b);
                }
                Output::Unreachable { .. } => {}
            }
        }
    }

    /// Sends on `from`'s connection `conn` to `to`, in order behind what it sent before.
    fn send_wire(&mut self, from: Node, to: Node, conn: u64, what: Wire) {
        if self.cut.contains(&pair(from, to)) {
            self.held.entry((from, to)).or_default().push((conn, what));
            return;
        }
        let delay = if self.rng.chance(5) { self.rng.range(5, 40) } else { self.rng.range(1, 4) };
        let clock = self.link_clock.entry((from, to)).or_insert(0);
        let t = (self.now + delay).max(*clock);
        *clock = t;
        self.at(t, Ev::Deliver { from, to, conn, what });
    }

    fn send_to(&mut self, from: Node, to: Node, what: Wire) -> bool {
        // As far as the sender knows, the connection is up: what it sends on one the
        // peer already closed is lost, and the sender learns of the close soon after.
        let Some(conn) = self.nodes[from].as_ref().and_then(|l| l.view.get(&to)).copied() else { return false };
        self.send_wire(from, to, conn, what);
        true
    }

    fn deliver(&mut self, from: Node, to: Node, conn: u64, what: Wire) {
        if self.cut.contains(&pair(from, to)) {
            self.held.entry((from, to)).or_default().push((conn, what));
            return;
        }
        if self.nodes[to].as_ref().is_none_or(|l| l.view.get(&from) != Some(&conn)) {
            return;
        }
        self.log(|| format!("n{to} <- n{from}: {what:?}"));
        match what {
            Wire::Msg(msg) => self.feed(to, Event::Received { from: self.names[from].clone(), msg }),
            Wire::Leaving => self.member_input(to, Input::Leaving { node: self.names[from].clone(), conn }),
            Wire::Close => self.conn_down(to, from, conn, DownReason::ConnectionClosed),
            Wire::Members(names) => self.member_input(to, Input::Gossip { from: self.names[from].clone(), names }),
            Wire::StartReq { req, name, args } => {
                let local = self.new_req(Requester::Forwarded { origin: from, conn, req });
                self.feed(to, Event::Start { name, args, here: true, reply: local });
            }
            Wire::StartRep { req, result } => self.start_answered(to, req, result),
            Wire::CallReq { call, hop, name } => self.serve_call(to, call, hop, from, conn, name),
            Wire::Replicate { inst, copy, ride } => {
                let seq = copy.seq;
                let from_name = self.names[from].clone();
                let held = self.nodes[to].as_mut().unwrap().table.replica_in(&from_name, *copy).is_ok();
                self.send_wire(to, from, conn, Wire::ReplicateRep { inst, seq, held });
                if let Some((call, hop)) = ride.filter(|_| held) {
                    self.deliver(from, to, conn, Wire::CallRep { call, hop, result: CallResult::Ok });
                }
            }
            Wire::ReplicateRep { inst, seq, held } => self.copy_answered(to, from, inst, seq, held),
            Wire::CallRep { call, hop, result } => {
                if !self.calls[call].replied.insert(hop) {
                    self.violations.push(format!("call {call} to {} got a second reply from n{from}", self.calls[call].name));
                }
                if self.calls[call].done.is_some() || self.calls[call].awaiting != Some((from, conn)) {
                    return;
                }
                self.calls[call].awaiting = None;
                match result {
                    CallResult::Moved(m) => self.call_step(to, call, Some(m)),
                    r => self.finish_call(call, r),
                }
            }
        }
    }

    fn new_req(&mut self, r: Requester) -> Req {
        let id = self.next_req;
        self.next_req += 1;
        self.reqs.insert(id, r);
        id
    }

    // ---- the state machine and its effects ----

    fn feed(&mut self, n: Node, event: Event<Inst, Req>) {
        let Some(live) = self.nodes[n].as_mut() else { return };
        if let Some(t) = &mut self.trace {
            t.push(format!("{:>6} ms  n{n} event {event:?}", self.now));
        }
        let member_event = matches!(event, Event::MemberUp { .. } | Event::MemberDown { .. } | Event::MemberLeaving { .. });
        let effects = live.table.handle(event);
        let mut changed = false;
        for e in effects {
            if let Some(t) = &mut self.trace {
                if !matches!(e, Effect::Changed) {
                    t.push(format!("{:>6} ms  n{n}   effect {e:?}", self.now));
                }
            }
            match e {
                Effect::Send { to, msg } => {
                    if let Some(to) = self.node_ix(&to) {
                        self.send_to(n, to, Wire::Msg(msg));
                    }
                }
                Effect::Spawn { name, id, args: _, state, merges } => {
                    let inst = self.next_inst;
                    self.next_inst += 1;
                    let mut counts = state.as_deref().map(decode).unwrap_or_default();
                    for (_, s) in &merges {
                        merge(&mut counts, &decode(s));
                    }
                    let restarts = self.nodes[n].as_ref().and_then(|l| l.table.lineage_of(&name)).map(|l| l.restarts).unwrap_or(0);
                    let instance = Instance {
                        name: name.clone(),
                        node: n,
                        restarts,
                        counts,
                        stopping: false,
                        rep: Replicator::default(),
                        round: None,
                        queue: Default::default(),
                        dirty: false,
                        stop: None,
                    };
                    self.insts.insert(inst, instance);
                    if self.replicas > 0 {
                        // Its replicas hold its first state before it counts as started.
                        self.start_round(n, inst, Pending::Spawned { name, id });
                    } else {
                        let d = self.rng.range(0, 2);
                        self.after(d, Ev::Table(n, Event::Spawned { name, id, result: Ok(inst) }));
                    }
                }
                Effect::Stop { name, id, handle, reason } => {
                    if reason == "duplicate" {
                        // The instance it stops for, as claimed, must not be one restarted
                        // without state more often than this one. (A claim can be stale: the
                        // winner's node replaces a worse instance when the state arrives.)
                        let mine = self.insts.get(&handle).map(|i| i.restarts);
                        let other = self.nodes[n].as_ref().and_then(|l| l.table.claim_of(&name)).map(|l| l.restarts);
                        if let (Some(m), Some(o)) = (mine, other) {
                            if m < o {
                                self.violations.push(format!("n{n} stopped its {name} (restarted {m} times) for one restarted empty {o} times"));
                            }
                        }
                    }
                    match self.insts.get_mut(&handle) {
                        // The stop waits in the mailbox behind the calls there and the copy
                        // in flight, as the driver's instance handles one message at a time.
                        Some(i) if i.round.is_some() || !i.queue.is_empty() => i.stop = Some((name, id)),
                        _ => self.stop_instance(n, handle, name, id),
                    }
                }
                Effect::Merge { name, handle, state, ack, .. } => match self.insts.get_mut(&handle) {
                    Some(i) if !i.stopping => {
                        merge(&mut i.counts, &decode(&state));
                        match ack {
                            // Behind the copy in flight (which lacks the merge): the next
                            // copy carries it, and the answer goes once that is held.
                            Some((to, msg)) if i.round.is_some() => i.queue.push_back(Pending::Tell { to, msg }),
                            Some((to, msg)) => self.start_round(n, handle, Pending::Tell { to, msg }),
                            None => self.copy_again(n, handle),
                        }
                    }
                    _ => self.violations.push(format!("n{n}: the state merged into {name} had no instance to go to")),
                },
                Effect::ForwardStart { to, name, args, reply } => {
                    let sent = self.node_ix(&to).is_some_and(|to| self.send_to(n, to, Wire::StartReq { req: reply, name, args }));
                    if !sent {
                        self.reqs.remove(&reply);
                    }
                }
                Effect::Started { reply, result } => self.start_answered(n, reply, result),
                Effect::StopDone { .. } => {}
                Effect::Lost { name } => {
                    self.tainted.insert(name);
                }
                Effect::SetTimer { after, timer } => {
                    self.after(after.as_millis() as u64, Ev::Table(n, Event::Timer(timer)));
                }
                Effect::Changed => changed = true,
            }
        }
        if changed {
            self.after(0, Ev::Retry(n));
        }
        if member_event && self.replicas > 0 {
            // Members changed: every durable instance here copies its state to its
            // replicas now (the whole state to new ones).
            let here: Vec<Inst> = self.insts.iter().filter(|(_, i)| i.node == n && !i.stopping).map(|(id, _)| *id).collect();
            for inst in here {
                self.copy_again(n, inst);
            }
        }
        let done_leaving = self.nodes[n].as_ref().is_some_and(|l| l.leaving && l.table.local_count() == 0);
        if done_leaving {
            self.finish_leave(n);
        }
    }

    fn start_answered(&mut self, n: Node, req: Req, result: Result<String, StartError>) {
        match self.reqs.remove(&req) {
            Some(Requester::Client(name)) => {
                if matches!(result, Ok(_) | Err(StartError::AlreadyStarted(_))) {
                    self.started.insert(name);
                }
            }
            // Answered on the connection it came on, if that is still up.
            Some(Requester::Forwarded { origin, conn, req }) if self.nodes[n].as_ref().and_then(|l| l.view.get(&origin)) == Some(&conn) => {
                self.send_wire(n, origin, conn, Wire::StartRep { req, result });
            }
            Some(Requester::Forwarded { .. }) | None => {}
        }
    }

    // ---- clients ----

    fn client(&mut self) {
        let now = self.now;
        let ready: Vec<Node> = self
            .live_nodes()
            .into_iter()
            .filter(|n| self.running(*n))
            .filter(|n| self.nodes[*n].as_ref().is_some_and(|l| !l.leaving && now >= l.booted + 300 && l.table.synced()))
            .collect();
        if ready.is_empty() {
            return;
        }
        let at = ready[self.rng.below(ready.len() as u64) as usize];
        let name = self.worker_names[self.rng.below(self.worker_names.len() as u64) as usize].clone();
        if !self.started.contains(&name) || self.rng.chance(5) {
            let req = self.new_req(Requester::Client(name.clone()));
            self.feed(at, Event::Start { name, args: Vec::new(), here: false, reply: req });
        } else {
            let c = self.calls.len();
            self.calls.push(Call {
                name,
                origin: at,
                deadline: self.now + CALL_TIMEOUT,
                hops: 0,
                awaiting: None,
                replied: BTreeSet::new(),
                applied: None,
                must_find: !self.hard_fault,
                done: None,
            });
            self.after(CALL_TIMEOUT, Ev::CallTimeout(c));
            let name = self.calls[c].name.clone();
            self.log(|| format!("n{at} client call {c} to {name}"));
            self.call_step(at, c, None);
        }
    }

    /// The caller's loop (the driver's `call_routed`): where to send the call next.
    fn call_step(&mut self, n: Node, c: usize, next: Option<Node>) {
        if self.calls[c].done.is_some() {
            return;
        }
        let to = match next {
            Some(m) if m != n => m,
            _ => {
                let name = self.calls[c].name.clone();
                let route = self.nodes[n].as_ref().unwrap().table.route(&name, None);
                match route {
                    Route::Here(inst) => {
                        if let Some(r) = self.call_instance(n, inst, c, ReplyTo::Local) {
                            self.finish_call(c, r);
                        }
                        return;
                    }
                    Route::Remote(node) => self.node_ix(&node).expect("a known node"),
                    Route::Wait => {
                        self.nodes[n].as_mut().unwrap().parked.push(Parked::Caller(c));
                        return;
                    }
                    Route::NotFound | Route::Activate => {
                        self.finish_call(c, CallResult::NotFound);
                        return;
                    }
                }
            }
        };
        self.calls[c].hops += 1;
        if self.calls[c].hops > MAX_HOPS {
            self.finish_call(c, CallResult::Failed);
            return;
        }
        let conn = self.nodes[n].as_ref().unwrap().view.get(&to).copied();
        let name = self.calls[c].name.clone();
        match conn {
            Some(conn) if self.send_to(n, to, Wire::CallReq { call: c, hop: self.calls[c].hops, name }) => self.calls[c].awaiting = Some((to, conn)),
            _ => {
                self.log(|| format!("n{n} has no connection to n{to} for call {c}"));
                self.finish_call(c, CallResult::Failed)
            }
        }
    }

    /// The callee's side (the driver's answer to `Rpc::Call`).
    fn serve_call(&mut self, n: Node, c: usize, hop: u32, from: Node, conn: u64, name: WorkerName) {
        let route = self.nodes[n].as_ref().unwrap().table.route(&name, Some(&self.names[from]));
        let result = match route {
            Route::Here(inst) => match self.call_instance(n, inst, c, ReplyTo::Remote { from, conn, hop }) {
                Some(r) => r,
                // Answered once its state is copied.
                None => return,
            },
            Route::Remote(node) => CallResult::Moved(self.node_ix(&node).expect("a known node")),
            Route::Wait => {
                if self.now < self.calls[c].deadline {
                    self.nodes[n].as_mut().unwrap().parked.push(Parked::Callee { call: c, hop, from, conn });
                }
                return;
            }
            Route::NotFound | Route::Activate => CallResult::NotFound,
        };
        if self.nodes[n].as_ref().unwrap().view.get(&from) == Some(&conn) {
            self.send_wire(n, from, conn, Wire::CallRep { call: c, hop, result });
        }
    }

    /// A call reaches instance `inst` on `n`: applied and answered now (`Some`), or, for
    /// a durable kind, answered once the state it made is copied (queued behind a copy
    /// in flight, as a mailbox would hold it).
    fn call_instance(&mut self, n: Node, inst: Inst, c: usize, to: ReplyTo) -> Option<CallResult> {
        if self.replicas == 0 {
            let r = self.apply_call(inst);
            if r == CallResult::Ok {
                self.calls[c].applied = Some(inst);
            }
            return Some(r);
        }
        let busy = match self.insts.get(&inst) {
            Some(i) if !i.stopping => i.round.is_some(),
            _ => return Some(CallResult::Failed),
        };
        if busy {
            self.insts.get_mut(&inst).unwrap().queue.push_back(Pending::Queued { call: c, to });
            return None;
        }
        self.apply_call(inst);
        self.calls[c].applied = Some(inst);
        self.start_round(n, inst, Pending::Reply { call: c, to });
        None
    }

    /// Copies the state of `inst` on `n` again (members changed, a merge): now, or after
    /// the copy in flight.
    fn copy_again(&mut self, n: Node, inst: Inst) {
        if self.replicas == 0 {
            return;
        }
        match self.insts.get_mut(&inst) {
            Some(i) if i.round.is_some() => i.dirty = true,
            Some(_) => self.start_round(n, inst, Pending::Nothing),
            None => {}
        }
    }

    /// Sends the state of `inst` on `n` to its replicas (the driver's
    /// `Registry::replicate`); `then` is released once every live one took it.
    fn start_round(&mut self, n: Node, inst: Inst, then: Pending) {
        let Some(i) = self.insts.get(&inst) else { return };
        let name = i.name.clone();
        let state = encode(&i.counts);
        let plan = self.nodes[n]
            .as_ref()
            .unwrap()
            .table
            .replication_of(&name, self.replicas)
            .and_then(|(targets, args, lineage)| i.rep.plan(&targets, &state).map(|(seq, sends)| (targets, args, lineage, seq, sends)));
        let Some((targets, args, lineage, seq, sends)) = plan else {
            self.release(n, inst, then);
            self.advance(n, inst);
            return;
        };
        let mut waiting = BTreeSet::new();
        let holders: Vec<String> = targets.iter().map(|(t, _)| t.clone()).collect();
        let ride = match (&then, sends.as_slice()) {
            (Pending::Reply { call, to: ReplyTo::Remote { from, conn, hop } }, [(to, _)])
                if *to == self.names[*from] && targets.iter().any(|(t, c)| t == to && c == conn) =>
            {
                Some((*call, *hop))
            }
            _ => None,
        };
        for (to, update) in sends {
            let copy = Replicate { name: name.clone(), args: args.clone(), lineage, seq, update, holders: holders.clone() };
            if let Some(m) = self.node_ix(&to) {
                if self.send_to(n, m, Wire::Replicate { inst, copy: Box::new(copy), ride }) {
                    waiting.insert(m);
                }
            }
        }
        self.log(|| format!("n{n} copies {name} #{seq} to {holders:?}"));
        let empty = waiting.is_empty();
        self.insts.get_mut(&inst).unwrap().round = Some(Round { seq, state, sent: targets, acked: Vec::new(), waiting, then, ride });
        if empty {
            self.finish_round(n, inst);
        }
    }

    /// Replica `m` answered copy `seq` of `inst` (on `n`).
    fn copy_answered(&mut self, n: Node, m: Node, inst: Inst, seq: u64, held: bool) {
        let m_name = self.names[m].clone();
        let Some(i) = self.insts.get_mut(&inst) else { return };
        let name = i.name.clone();
        let Some(round) = i.round.as_mut().filter(|r| r.seq == seq && r.waiting.contains(&m)) else { return };
        if !held {
            // A delta from a copy it does not hold: the whole state.
            let full = Update::Full(round.state.clone());
            let holders = round.sent.iter().map(|(t, _)| t.clone()).collect();
            let Some((_, args, lineage)) = self.nodes[n].as_ref().unwrap().table.replication_of(&name, self.replicas) else { return };
            let copy = Replicate { name, args, lineage, seq, update: full, holders };
            let ride = round.ride;
            if !self.send_to(n, m, Wire::Replicate { inst, copy: Box::new(copy), ride }) {
                let round = self.insts.get_mut(&inst).unwrap().round.as_mut().unwrap();
                round.waiting.remove(&m);
                if round.waiting.is_empty() {
                    self.finish_round(n, inst);
                }
            }
            return;
        }
        round.waiting.remove(&m);
        round.acked.push(m_name);
        if round.waiting.is_empty() {
            self.finish_round(n, inst);
        }
    }

    /// Every live replica took the copy in flight: what waited for it goes on, and the
    /// next queued call is applied.
    fn finish_round(&mut self, n: Node, inst: Inst) {
        let Some(i) = self.insts.get_mut(&inst) else { return };
        let Some(round) = i.round.take() else { return };
        let name = i.name.clone();
        let dropped = i.rep.done(round.seq, round.state, &round.sent, &round.acked);
        for d in dropped {
            if let Some(m) = self.node_ix(&d) {
                self.send_to(n, m, Wire::Msg(Msg::ReplicaDropped { name: name.clone() }));
            }
        }
        // A reply that rode with a copy its replica took was answered there.
        let then = if round.ride.is_some() && !round.acked.is_empty() { Pending::Nothing } else { round.then };
        self.release(n, inst, then);
        self.advance(n, inst);
    }

    /// With no copy in flight, the instance takes the next thing in its mailbox: a
    /// queued call, the stop, or a copy asked for meanwhile.
    fn advance(&mut self, n: Node, inst: Inst) {
        let Some(i) = self.insts.get_mut(&inst) else { return };
        if i.round.is_some() {
            return;
        }
        if let Some(next) = i.queue.pop_front() {
            match next {
                Pending::Queued { call, to } => {
                    if self.apply_call(inst) == CallResult::Ok {
                        self.calls[call].applied = Some(inst);
                        self.start_round(n, inst, Pending::Reply { call, to });
                    }
                }
                other => self.start_round(n, inst, other),
            }
        } else if let Some((name, id)) = i.stop.take() {
            self.stop_instance(n, inst, name, id);
        } else if std::mem::take(&mut i.dirty) {
            self.start_round(n, inst, Pending::Nothing);
        }
    }

    /// The instance stops (`terminate`): its state goes back to its table.
    fn stop_instance(&mut self, n: Node, inst: Inst, name: WorkerName, id: u64) {
        let state = self.insts.remove(&inst).map(|i| encode(&i.counts));
        self.log(|| format!("n{n} instance {inst} of {name} stops"));
        let d = self.rng.range(0, 2);
        self.after(d, Ev::Table(n, Event::Stopped { name, id, state }));
    }

    /// What waited for a copy goes on.
    fn release(&mut self, n: Node, inst: Inst, then: Pending) {
        match then {
            Pending::Nothing | Pending::Queued { .. } => {}
            Pending::Reply { call, to: ReplyTo::Local } => self.finish_call(call, CallResult::Ok),
            Pending::Reply { call, to: ReplyTo::Remote { from, conn, hop } } => {
                if self.nodes[n].as_ref().is_some_and(|l| l.view.get(&from) == Some(&conn)) {
                    self.send_wire(n, from, conn, Wire::CallRep { call, hop, result: CallResult::Ok });
                }
            }
            Pending::Spawned { name, id } => {
                let d = self.rng.range(0, 2);
                self.after(d, Ev::Table(n, Event::Spawned { name, id, result: Ok(inst) }));
            }
            Pending::Tell { to, msg } => {
                if let Some(m) = self.node_ix(&to) {
                    self.send_to(n, m, Wire::Msg(msg));
                }
            }
        }
    }

    fn apply_call(&mut self, inst: Inst) -> CallResult {
        match self.insts.get_mut(&inst) {
            Some(i) if !i.stopping => {
                *i.counts.entry(inst).or_insert(0) += 1;
                CallResult::Ok
            }
            _ => CallResult::Failed,
        }
    }

    fn finish_call(&mut self, c: usize, r: CallResult) {
        self.log(|| format!("call {c} answered: {r:?}"));
        let call = &mut self.calls[c];
        if call.done.is_some() {
            return;
        }
        if self.now > call.deadline {
            self.violations.push(format!("call {c} to {} answered {} ms past its deadline", call.name, self.now - call.deadline));
        }
        // A name whose state was dropped (the last node left with nobody to hand it to)
        // is not expected to answer.
        if r != CallResult::Ok && call.must_find && !self.hard_fault && !self.tainted.contains(&call.name) {
            self.violations.push(format!("call {c} to {} answered {r:?}, with only graceful leaves and joins so far", call.name));
        }
        call.done = Some((self.now, r));
    }

    fn retry_parked(&mut self, n: Node) {
        let parked = std::mem::take(&mut self.nodes[n].as_mut().unwrap().parked);
        for p in parked {
            match p {
                Parked::Caller(c) => self.call_step(n, c, None),
                Parked::Callee { call, hop, from, conn } => {
                    if self.now < self.calls[call].deadline && self.calls[call].done.is_none() {
                        let name = self.calls[call].name.clone();
                        self.serve_call(n, call, hop, from, conn, name);
                    }
                }
            }
            if self.nodes[n].is_none() {
                return;
            }
        }
    }

    // ---- the checks ----

    fn check(&mut self) {
        let live = self.live_nodes();
        // Membership stable: every pair of live nodes connected, both ways.
        for &a in &live {
            let l = self.nodes[a].as_ref().unwrap();
            for &b in live.iter().filter(|b| **b != a) {
                if !l.view.contains_key(&b) {
                    self.violations.push(format!("membership did not settle: n{a} is not connected to n{b}"));
                } else if !l.members.members().contains_key(&self.names[b]) {
                    self.violations.push(format!("n{a} is connected to n{b} but does not count it as a member"));
                }
            }
            let mut members: Vec<String> = l.table.placing().map(str::to_string).collect();
            members.sort();
            let mut want: Vec<String> = live.iter().map(|n| self.names[*n].clone()).collect();
            want.sort();
            if members != want {
                self.violations.push(format!("n{a} places names on {members:?}, the live nodes are {want:?}"));
            }
        }
        if !self.violations.is_empty() {
            return;
        }
        let live_names: Vec<&str> = live.iter().map(|n| self.names[*n].as_str()).collect();
        let mut instances: BTreeMap<&WorkerName, Vec<&Instance>> = BTreeMap::new();
        for i in self.insts.values().filter(|i| !i.stopping) {
            instances.entry(&i.name).or_default().push(i);
        }
        let mut found = Vec::new();
        for name in &self.worker_names {
            let here = instances.get(name).map(Vec::as_slice).unwrap_or_default();
            let want = if self.started.contains(name) && !self.forgotten.contains(name) { 1..=1 } else { 0..=1 };
            if !want.contains(&here.len()) {
                let on: Vec<String> = here.iter().map(|i| format!("n{}", i.node)).collect();
                found.push(format!("{name} runs {} times (on {on:?}); expected {want:?}", here.len()));
                continue;
            }
            let Some(inst) = here.first() else { continue };
            let owner = owner(live_names.iter().copied(), name).unwrap();
            if self.names[inst.node] != owner {
                found.push(format!("{name} runs on n{}, its owner is {owner}", inst.node));
            }
            let value: u64 = inst.counts.values().sum();
            let calls = self.calls.iter().filter(|c| c.name == *name);
            let (mut acked, mut attempted) = (0u64, 0u64);
            for c in calls {
                attempted += 1;
                if matches!(c.done, Some((_, CallResult::Ok))) {
                    acked += 1;
                }
            }
            if value > attempted {
                found.push(format!("{name} counts {value}, more than the {attempted} increments attempted (doubled)"));
            }
            if !self.tainted.contains(name) && value < acked {
                let mut by_inst: BTreeMap<Inst, u64> = BTreeMap::new();
                for c in self.calls.iter().filter(|c| c.name == *name && matches!(c.done, Some((_, CallResult::Ok)))) {
                    *by_inst.entry(c.applied.unwrap_or(0)).or_insert(0) += 1;
                }
                found.push(format!(
                    "{name} counts {value} of {acked} acknowledged increments (lost {}): acknowledged by instance {by_inst:?}, counted {:?}",
                    acked - value,
                    inst.counts
                ));
            }
        }
        for (i, c) in self.calls.iter().enumerate() {
            if c.done.is_none() {
                found.push(format!("call {i} to {} never answered", c.name));
            }
        }
        self.violations.extend(found);
    }
}

/// Runs `count` seeds from `first`; the failing ones' outcomes.
pub fn run_many(first: u64, count: u64) -> (Vec<Outcome>, u64) {
    let mut failing = Vec::new();
    let mut events = 0;
    for seed in first..first + count {
        let o = run(seed, false);
        events += o.events;
        if !o.violations.is_empty() {
            failing.push(o);
        }
    }
    (failing, events)
}

/// One line per violation, with the seed and the command that replays it.
pub fn report(o: &Outcome) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "seed {} ({} nodes, {} events, {} calls) failed; replay with: ./dev sim --seed {} --trace", o.seed, o.nodes, o.events, o.calls, o.seed);
    for v in &o.violations {
        let _ = writeln!(s, "  {v}");
    }
    s
}
