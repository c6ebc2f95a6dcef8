//! Deterministic simulation of a cluster: the registry's and the membership's real
//! state machines ([`Table`], [`View`]) on 3–20 nodes in one process, over a simulated
//! network whose time, delivery order, delays, partitions, pauses (SIGSTOP, some ending
//! in a SIGTERM that came meanwhile), kills (kill -9) and graceful leaves (SIGTERM) all
//! come from one seed. Workers are a counter test double whose state merges (a
//! grow-only counter per instance), so that no acknowledged increment may be lost or
//! doubled where the state survives.
//!
//! What it models of the connection layer (`dist`): one FIFO connection per pair of
//! nodes with a fresh id on every reconnect, dials the membership asks for that fail
//! (refused, timed out, name still in use) or connect, a connection noticed gone at once
//! when its peer is killed and after the heartbeat timeout when it is cut off or paused,
//! a node that wakes from a pause reading its sockets before its timers (told of a pause
//! of [`PAUSE_NOTICED`] or more first, as the driver's pulse tells its table), and a leaver
//! that announces the leave on every connection and closes them once its names are
//! handed over. Discovery lists every node; the member lists nodes gossip travel too.
//!
//! Invariants checked at the end of every run, once the network is healed and the
//! membership stable: every started name runs exactly once, on its owner; every name
//! whose state never lived on a killed node holds every acknowledged increment, and no
//! more than were attempted; every call got at most one reply, and none past its
//! deadline. Checked as it runs: an instance that stops in favour of another never had
//! fewer restarts without state; while only leaves and joins have happened, every call
//! succeeds; in non-durable seeds, no state merges into an instance when one of the two
//! holds all of the other (one state handed to two nodes must not merge into itself).
//! `./dev sim --seed N --trace` replays one run with its events.
//!
//! Two seeds in three make the counter kind durable, with 1 or 2 replicas: an instance
//! copies its state to its replicas (the table's `replication_of`, the real
//! [`Replicator`]) after each increment, on each membership change and when it starts,
//! and a call is answered only once every live replica took the copy (by that replica,
//! when it is the caller's node and the only one: the answer rides with the copy); the
//! replicas hold the copies in their real tables, and the table starts a lost name from
//! its copy. In those seeds kills, pauses and leaves together are never more than the
//! replicas at once (each counting until [`KILL_WINDOW`] after it ends, and each
//! process short of `replicas + 1` counting as one), and a kill taints nothing: every
//! acknowledged increment of every name must survive. Durable seeds do not partition
//! nodes yet: a name taken over from a copy on one side, while its instance on the
//! other side keeps counting and is then killed before the two meet, can lose what that
//! instance counted since the copy (seed 11 of the first 2,000 with partitions;
//! docs/durability.md).
//!
//! Half the durable seeds make the counter keep one state of two that meet instead of
//! merging them (`keeps_one`), as a worker without `resolve-conflict` does: the table
//! must then pick the state that holds the acknowledged increments (the one that went
//! further). Two histories that both took acknowledged increments cannot both be kept
//! that way, so in those seeds a name restarted empty (no copy reached in time) is not
//! counted, and clients do not call through a node for [`WOKE_ALONE`] after it wakes
//! from a pause (it may serve alone meanwhile).
//!
//! The simulator's parts, one per file: this file holds the world (nodes, instances,
//! calls, the event queue) and its dispatch; `faults` draws the faults, `network` is
//! the connection layer and feeds the membership, `table` drives each node's registry
//! table, `clients` and `calls` follow calls, `replicas` copies durable state, and
//! `checks` holds the invariants.

mod calls;
mod checks;
mod clients;
mod faults;
mod network;
mod replicas;
mod table;

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
use crate::registry::{Replication, StartError, WorkerName};

/// A pause at least this long is noticed by the node that wakes from it (ms; the
/// driver's pulse, `registry::pulse`, at the default heartbeat interval).
const PAUSE_NOTICED: u64 = 500;
/// In seeds whose counter keeps one state, clients do not call through a node for this
/// long after it wakes from a pause (ms): it may serve alone meanwhile.
const WOKE_ALONE: u64 = 3000;
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
    fn declared(&self) -> Vec<String> {
        vec!["counter".into()]
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
    /// A stop that waits for the copy in flight and what is queued ahead of it; with
    /// whether it moves the name on (`Effect::Stop::moves`).
    stop: Option<(WorkerName, u64, bool)>,
    /// The calls a stop that moves the name on went ahead of: they follow the name.
    follow: Vec<Pending>,
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
    /// Handoffs' answers, sent once a copy holding the states they merged is held.
    Tell(Vec<(String, Msg)>),
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

/// Merges `other` into `into` (a grow-only counter per instance), unless the kind keeps
/// one state (`keeps_one`): then `into` stays as it is and `other` is dropped.
fn merge(into: &mut BTreeMap<u64, u64>, other: &BTreeMap<u64, u64>, keeps_one: bool) {
    if keeps_one {
        return;
    }
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
    /// A paused node wakes, after this many ms.
    Wake(Node, u64),
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
    /// When it last woke from a pause.
    woke: Option<u64>,
    /// A SIGTERM came while it was paused: it leaves as it wakes.
    term_at_wake: bool,
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
    seed: u64,
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
    /// Half the durable seeds: the counter keeps one state of two that meet, as a
    /// worker without `resolve-conflict` does, instead of merging them.
    keeps_one: bool,
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
    let keeps_one = replicas > 0 && (seed / 3) % 2 == 1;
    let mut sim = Sim {
        seed,
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
        keeps_one,
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
        let mut table = Table::new(self.names[n].clone(), Arc::new(SimKinds(self.replicas)));
        // Unlike any other node's and this node's other lives', as a random one is.
        table.set_incarnation(((n as u64) << 32) | self.lives[n]);
        let members = View::new(self.names[n].clone(), true);
        self.nodes[n] = Some(Live {
            table,
            members,
            view: BTreeMap::new(),
            paused_until: None,
            leaving: false,
            parked: Vec::new(),
            booted: self.now,
            woke: None,
            term_at_wake: false,
        });
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
            Ev::Wake(n, paused_ms) => {
                if let Some(l) = self.nodes[n].as_mut() {
                    l.paused_until = None;
                    l.woke = Some(self.now);
                    self.log(|| format!("n{n} wakes (SIGCONT)"));
                    // As the driver's pulse: a pause it notices is told to the table
                    // before what the sockets hold.
                    if paused_ms >= PAUSE_NOTICED {
                        self.feed(n, Event::Woke { paused_ms });
                    }
                    if std::mem::take(&mut self.nodes[n].as_mut().unwrap().term_at_wake) {
                        self.leave(n);
                        let d = self.rng.range(2000, 8000);
                        self.after(d, Ev::Restart(n));
                    }
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
