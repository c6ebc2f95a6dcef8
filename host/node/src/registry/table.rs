//! The registry's state machine: who runs what, what moved, what was announced, what is
//! lost and waits for a restart. Events in ([`Event`]), effects out ([`Effect`]); no
//! sockets, no clock, no tasks, no locks. The driver (`mod.rs`) owns the I/O and feeds
//! it; the simulation (`crate::sim`) feeds the same code from a seed.
//!
//! The transitions live beside the state they decide about:
//! - `directory.rs`: announcements of other nodes, and two instances of one name meeting;
//! - `supervise.rs`: members up, leaving and down; lost names restarted on their owner;
//! - `handoff.rs`: instances moving to another node with their state, and stops;
//! - `route.rs`: where a call for a name goes (a query, no transition).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::latest::Ask;
use super::origin::{self, Base, Holds, Origin};
use super::placement::{owner, Lineage};
use super::wire::Msg;
use super::{Restart, SpawnError, StartError, WorkerName};
use crate::dist::DownReason;
use crate::membership::MemberChange;

/// What the state machine needs to know of worker kinds (the runtime's configuration).
pub trait Kinds: Send + Sync {
    /// Whether this node can run workers of `kind`.
    fn has_kind(&self, kind: &str) -> bool;
    /// Every kind this node can run, as it tells other members ([`Msg::Kinds`]).
    fn declared(&self) -> Vec<String>;
    /// Whether a call to a name of `kind` that runs nowhere starts it.
    fn activate_on_call(&self, kind: &str) -> bool;
    /// Whether an instance of `kind` whose node went down is started again elsewhere.
    fn restart(&self, kind: &str) -> Restart;
    /// Whether instances move to a node that joins and owns them.
    fn rebalance_on_join(&self) -> bool;
    /// How many other nodes hold each instance's state of `kind` (0: not durable).
    fn replicas(&self, _kind: &str) -> usize {
        0
    }
    /// How many instances of `kind` this node runs at most before it refuses to start a
    /// new name (`max_instances`); names that move here are taken all the same.
    fn max_instances(&self, _kind: &str) -> Option<usize> {
        None
    }
}

/// How long a leaving node may take to hand its names over before the names it still
/// holds are restarted elsewhere without state.
pub const LEAVER_GRACE: Duration = Duration::from_secs(30);

/// How long a member whose connection ended without its saying it leaves counts as one
/// that may be back: a node that begins to leave with no member up waits for it (until
/// its handoff deadline) to hand its names over, rather than stop them with their state.
pub const GONE_GRACE: Duration = Duration::from_secs(600);

/// The instances on this node by name, and how many there are of each kind (kept as
/// they come and go: counting them at every start would make starting N names of a
/// bounded kind cost N² steps).
pub struct Local<M, R> {
    map: BTreeMap<WorkerName, Slot<M, R>>,
    kinds: std::collections::HashMap<String, usize>,
}

impl<M, R> Default for Local<M, R> {
    fn default() -> Self {
        Local { map: BTreeMap::new(), kinds: Default::default() }
    }
}

impl<M, R> std::ops::Deref for Local<M, R> {
    type Target = BTreeMap<WorkerName, Slot<M, R>>;
    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl<M, R> Local<M, R> {
    pub fn insert(&mut self, name: WorkerName, slot: Slot<M, R>) -> Option<Slot<M, R>> {
        if !self.map.contains_key(&name) {
            match self.kinds.get_mut(&name.kind) {
                Some(n) => *n += 1,
                None => {
                    self.kinds.insert(name.kind.clone(), 1);
                }
            }
        }
        self.map.insert(name, slot)
    }

    pub fn remove(&mut self, name: &WorkerName) -> Option<Slot<M, R>> {
        let slot = self.map.remove(name)?;
        if let Some(n) = self.kinds.get_mut(&name.kind) {
            *n -= 1;
            if *n == 0 {
                self.kinds.remove(&name.kind);
            }
        }
        Some(slot)
    }

    pub fn get_mut(&mut self, name: &WorkerName) -> Option<&mut Slot<M, R>> {
        self.map.get_mut(name)
    }

    /// Every slot, to change in place (which changes no slot's kind).
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut Slot<M, R>> {
        self.map.values_mut()
    }

    /// The instances of `kind` here, in any state.
    pub fn of_kind(&self, kind: &str) -> usize {
        self.kinds.get(kind).copied().unwrap_or(0)
    }
}

/// Something that happened, for the state machine to decide about. `M` is the driver's
/// handle to a running instance (a mailbox), `R` its handle to a waiting requester.
#[derive(Debug)]
pub enum Event<M, R> {
    /// A member connected (`conn` tells this connection from earlier and later ones).
    MemberUp { node: String, conn: u64 },
    /// A member announced it is leaving: it hands its names over and no name is placed
    /// on it; its connection stays up for that.
    MemberLeaving { node: String, conn: u64 },
    /// A member's connection `conn` is gone.
    MemberDown { node: String, conn: u64 },
    /// Start `name`: on its owner (`here` false), or on this node whoever owns it.
    Start { name: WorkerName, args: Vec<u8>, here: bool, reply: R },
    /// Stop the local instance of `name` (its state is dropped: an end, not a move).
    Stop { name: WorkerName, reason: String, reply: R },
    /// A message from another registry.
    Received { from: String, msg: Msg },
    /// The instance asked for with [`Effect::Spawn`] ran its `init`, or failed to.
    Spawned { name: WorkerName, id: u64, result: Result<M, SpawnError> },
    /// The instance asked to stop with [`Effect::Stop`] has, with this state.
    Stopped { name: WorkerName, id: u64, state: Option<Vec<u8>> },
    /// An instance ended by itself (a trap): nothing restarts it.
    Exited { name: WorkerName, id: u64 },
    /// This node is leaving: hand every instance to its next owner.
    Leave,
    /// This process did not run for `paused_ms` (SIGSTOP, a frozen VM) and runs again:
    /// its peers may have declared it down and taken its names over, and the
    /// connections it finds closed say so, not that they are down. What it loses to
    /// those connections is held for [`WOKE_HOLD`] ([`Orphan::held`]).
    Woke { paused_ms: u64 },
    /// A timer set with [`Effect::SetTimer`] fired.
    Timer(Timer),
}

/// What the driver must do, in order.
#[derive(Debug)]
pub enum Effect<M, R> {
    /// Send a message to another registry.
    Send { to: String, msg: Msg },
    /// Create instance `id` of `name` and run its `init(args, state)`; answer with
    /// [`Event::Spawned`].
    /// `merges`: other instances' states, merged (`resolve-conflict`) before the
    /// instance takes messages or, for a durable kind, copies its first state.
    Spawn { name: WorkerName, id: u64, args: Vec<u8>, state: Option<Vec<u8>>, merges: Vec<(String, Vec<u8>)> },
    /// Stop an instance after `terminate(reason)`; answer with [`Event::Stopped`].
    /// `moves`: the name goes on elsewhere (a handoff, another instance it gives way to,
    /// or a new instance here): the stop goes ahead of the calls and casts queued for
    /// the instance, and those follow the name instead of waiting for the instance to
    /// work through them (a deep queue would outlast a SIGTERM's handoff deadline, and
    /// the state with it).
    Stop { name: WorkerName, id: u64, handle: M, reason: String, moves: bool },
    /// Give a running instance the state of another instance of its name that stopped
    /// in its favour (`resolve-conflict`). With `ack`, send that message to that node
    /// once the instance has merged the state and, for a durable kind, its replicas hold
    /// the result (a handoff is acknowledged only once the state it carried is safe).
    Merge { name: WorkerName, handle: M, from: String, state: Vec<u8>, acks: Vec<(String, Msg)> },
    /// Ask `to` to start `name` (its owner); the answer goes to `reply`.
    ForwardStart { to: String, name: WorkerName, args: Vec<u8>, reply: R },
    /// Answer a start.
    Started { reply: R, result: Result<String, StartError> },
    /// Answer a stop: whether an instance ran here.
    StopDone { reply: R, stopped: bool },
    /// Fire [`Event::Timer`] after a while.
    SetTimer { after: Duration, timer: Timer },
    /// A state was dropped: nobody could take it (the last node leaving).
    Lost { name: WorkerName },
    /// Where names run changed: callers waiting for a name look again.
    Changed,
}

/// How long the owner of a lost durable name that holds no copy of its state waits for
/// a node that holds one to start it, before it starts the name empty.
pub const REPLICA_GRACE: Duration = Duration::from_secs(1);

/// How long an instance that came back because no node took it (its owner refused it:
/// the owner's own instance of the name was moving here meanwhile, say) runs here before
/// it moves to its owner again. Moved again at once, two such nodes pass the name back
/// and forth, restarting it each time, until their timing parts them.
pub const MOVE_AGAIN: Duration = Duration::from_secs(1);

/// How long a durable instance that stays over another node's ([`Table::rival`]) takes
/// no calls while it waits for that instance's state: a stop and a handoff take
/// milliseconds, a stop behind a message that computes up to its call timeout.
pub const RIVAL_WAIT: Duration = Duration::from_secs(1);

/// How long a node that woke from a pause ([`Event::Woke`]) holds what it lost to the
/// connections it found closed: enough for its peers, which declared it down, to
/// connect again and say where their names run now. Taken over from this node's own
/// copies at once (copies those peers went on from since), the names ran twice, and
/// calls went to the stale instances.
/// Shorter than [`REPLICA_GRACE`]: a peer that did die meanwhile has its durable names
/// taken over from this node's copies before their owner gives up on a copy.
pub const WOKE_HOLD: Duration = Duration::from_millis(500);

/// The timers the state machine sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Timer {
    /// A leaving member's grace is over: what it still holds is lost.
    LeaverGone { node: String, conn: u64 },
    /// A member that went down on connection `conn` is no longer waited for ([`GONE_GRACE`]).
    GoneForgotten { node: String, conn: u64 },
    /// Nobody started this lost durable name from a copy in time: its owner may start it empty.
    ReplicaGrace { name: WorkerName },
    /// An instance that came back here ([`MOVE_AGAIN`]) may move to its owner again.
    MoveAgain { name: WorkerName },
    /// The hold after the `wake`th pause is over ([`WOKE_HOLD`]); a later pause's
    /// hold is not (two pauses less than the hold apart).
    WokeHoldOver { wake: u64 },
    /// Ask `round` of which copies of this lost name the members hold: they are not
    /// waited for longer ([`ASK_WAIT`](super::latest::ASK_WAIT)), or it is time to ask
    /// again ([`ASK_AGAIN`](super::latest::ASK_AGAIN)).
    AskOver { name: WorkerName, round: u32 },
    /// Instance `id` of this name no longer waits for its rival's state ([`RIVAL_WAIT`]).
    RivalOver { name: WorkerName, id: u64 },
}

/// Where a name stands on this node.
#[derive(Debug)]
pub enum Slot<M, R> {
    /// `init` is running.
    Starting {
        id: u64,
        args: Vec<u8>,
        lineage: Lineage,
        why: StartWhy<R>,
        merges: Vec<Merge>,
        /// Answers to handoffs whose states wait in `merges` (a durable kind's: sent once
        /// the merged state is copied, see [`Table::merge_then_ack`]).
        acks: Vec<(String, Msg)>,
    },
    Running {
        id: u64,
        handle: M,
        args: Vec<u8>,
        lineage: Lineage,
    },
    /// `terminate` is running; what follows depends on why.
    Stopping {
        id: u64,
        args: Vec<u8>,
        lineage: Lineage,
        why: StopWhy<R>,
        merges: Vec<Merge>,
    },
    /// Handed to `to` (empty: nobody to hand to yet), not yet acknowledged: the states
    /// stay here until they are. `sent`: how many of `merges` the handoff in flight
    /// carries (more may have come since). `yielding`: it stopped in favour of an
    /// instance on `to`, to merge into.
    Moving {
        to: String,
        args: Vec<u8>,
        lineage: Lineage,
        state: Option<Vec<u8>>,
        merges: Vec<Merge>,
        sent: usize,
        yielding: bool,
        refused: BTreeSet<String>,
        /// Nodes waiting for the answer to their yielding handoffs, whose states are in
        /// `merges` (see [`StopWhy::Handoff`]).
        yielders: Vec<String>,
        /// Which state `state` is, told to every node it goes to.
        origin: Origin,
        /// The states were handed here, or are the copy of a dead instance held here
        /// (`Table::settle_dead_copy`), to pass on to where the name runs (`to`), and no
        /// instance of it ran here: should `to` hand the name here meanwhile, it starts
        /// here with them (see `Table::handoff_in`).
        passing: bool,
    },
}

#[derive(Debug)]
pub enum StartWhy<R> {
    /// A start request (or an activation by a call), answered on `reply`.
    Asked(R),
    /// Restarted without state after its node went down.
    Restart,
    /// Handed over by `from`, which waits for a [`Msg::HandoffAck`].
    Handoff { from: String },
    /// It ran nowhere when another instance's state arrived for it: started from that.
    Adopted,
    /// Its node went down and this node, its replica, starts it from the copied state.
    Failover,
}

#[derive(Debug)]
pub enum StopWhy<R> {
    /// Moving to its next owner (this node leaves, or another joined and owns it).
    /// `yielders`: nodes whose instances yielded to this one meanwhile, their states in
    /// the slot's `merges` (a durable kind's): answered once the handoff that carries
    /// those states on is acknowledged, since they drop their states on the answer.
    /// `rival`: a state handed over meanwhile that went further than this one; which
    /// of the two moves on, the other merged into it, is decided on this one's final
    /// state ([`Rival`]).
    Handoff { yielders: Vec<String>, rival: Option<Box<Rival>> },
    /// Another instance of the name stays, on `winner`: this one's state goes there.
    Duplicate { winner: String },
    /// Another instance of the name stays, on `runner`, a node this one does not hear
    /// ([`Msg::RunsOn`]): this one's state is held here as a copy of the name.
    Stale { runner: String },
    /// A handoff from `from` brought an instance that stays (or a state of the same
    /// origin as this one's, see `origin.rs`): once this one has stopped, the name
    /// starts here again with `args` and `lineage`, from `state` with this one's state
    /// merged in, or from the one of the two that holds all the other does, or, when
    /// both went on, from the one that went further (`mine_stays`: this one was chosen
    /// to stay, which decides when neither went further).
    Replaced { from: String, args: Vec<u8>, lineage: Lineage, state: Option<Vec<u8>>, merges: Vec<Merge>, origin: Option<Origin>, mine_stays: bool },
    /// A stop request.
    Asked(R),
}

/// A state handed to an instance already stopping to move on, that went further than
/// that instance ([`origin::further`](super::origin::further)): merged into it, a
/// worker without a merge would drop it (a stale take-over stopping to move on meets
/// the state of the instance it was copied from).
#[derive(Debug)]
pub struct Rival {
    pub from: String,
    pub state: Vec<u8>,
    pub origin: Origin,
}

/// A state to merge into an instance of its name: the node it came from, its bytes,
/// and which state it is, where known ([`Origin`]: the instance that merges it holds
/// all of it then, and the same state handed to it again adds nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merge {
    pub from: String,
    pub state: Vec<u8>,
    pub origin: Option<Origin>,
}

impl Merge {
    /// A state whose origin is not known (a replica's copy, a node before origins).
    pub fn bare(from: String, state: Vec<u8>) -> Merge {
        Merge { from, state, origin: None }
    }
}

/// A handoff put off until the instance it meets has started ([`Table::deferred`]).
#[derive(Debug)]
pub struct Deferred {
    pub from: String,
    pub args: Vec<u8>,
    pub lineage: Lineage,
    pub state: Option<Vec<u8>>,
    pub merges: Vec<Merge>,
    pub yielding: bool,
    pub origin: Option<Origin>,
}

/// Where another node says a name runs.
#[derive(Debug, Clone)]
pub struct Claim {
    pub node: String,
    /// The connection the announcement came on: a node that restarts under the same
    /// name speaks on a new one, and only the old one's names are lost.
    pub conn: u64,
    pub args: Vec<u8>,
    pub lineage: Lineage,
}

/// A name that runs nowhere since its node went down, waiting for its owner to start it.
#[derive(Debug, Clone)]
pub struct Orphan {
    pub args: Vec<u8>,
    /// The lost instance's lineage; the restart continues it (see [`Lineage::restarted`]).
    pub lineage: Lineage,
    /// The member last told that it owns this orphan (so it is told once per owner).
    pub told: Option<String>,
    /// For a durable kind whose copy this node (its owner) does not hold: the wait,
    /// [`REPLICA_GRACE`] long, for a node that holds one to start it.
    pub grace: Grace,
    /// Lost to a connection to this node that was found closed on waking from a pause
    /// ([`Event::Woke`]): that node most likely declared this one down and runs on. Not
    /// restarted or taken over until it has said where its names run (its
    /// [`Msg::Synced`] on a new connection), or until [`WOKE_HOLD`] is over.
    pub held: Option<String>,
    /// This node would take it over from its copy, and asked the members first which
    /// copies they hold (`latest.rs`).
    pub ask: Option<Ask>,
}

impl Orphan {
    /// Whether what becomes of it is being decided: held after a pause, asking the
    /// members for their copies before a take-over from this node's, or (its owner,
    /// holding none) waiting for a node that holds one to start it. An empty start
    /// meanwhile, by a call or a start request, would run beside the instance it gets.
    pub fn pending(&self) -> bool {
        self.held.is_some() || self.ask.is_some() || self.grace == Grace::Waiting
    }
}

/// Where an owner without a copy of a lost durable name stands in its wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grace {
    Unasked,
    Waiting,
    Over,
}

/// A copy of a durable instance's state that this node holds as its replica.
#[derive(Debug, Clone)]
pub struct Replica {
    /// The node that runs the instance and sends the copies.
    pub from: String,
    pub args: Vec<u8>,
    pub lineage: Lineage,
    pub seq: u64,
    pub state: Vec<u8>,
    /// Every node the last copy went to, in ranking order.
    pub holders: Vec<String>,
    /// The line of the instance it is a copy of, if its node said
    /// ([`Replicate::line`](super::wire::Replicate::line)).
    pub line: Option<u64>,
    /// How far the copied state went ([`Replicate::height`](super::wire::Replicate::height)).
    pub height: Option<u64>,
    /// What the copied state held all of besides its line, if its node said
    /// ([`Replicate::holds`](super::wire::Replicate::holds)).
    pub holds: Option<Holds>,
    /// The connection it came on: a node that restarted (a new connection) runs none of
    /// the instances its previous life copied here, and those copies are dead. `None`
    /// when the sender was not a member yet here (alive while it is connected).
    pub conn: Option<u64>,
}

/// One node's registry state.
pub struct Table<M, R> {
    pub(super) me: String,
    pub(super) kinds: Arc<dyn Kinds>,
    /// Connected members that take names: not leaving, this node excluded.
    pub(super) members: BTreeMap<String, u64>,
    /// Members that announced they are leaving, still connected (handing names over).
    pub(super) leavers: BTreeMap<String, u64>,
    /// Members whose connection ended without their saying they leave, and not back
    /// since (for [`GONE_GRACE`]): cut off or paused, they may be back.
    pub(super) gone: BTreeMap<String, u64>,
    /// Members that have told this node every name they run (since they came up).
    pub(super) synced: BTreeSet<String>,
    /// The kinds each member runs, as it last said ([`Msg::Kinds`], first on each
    /// connection): names of a kind are placed among the members that run it. A member
    /// not in it (it has not said yet, or predates the message) counts as one that runs
    /// every kind. Kept while a member that went down may be back ([`Table::gone`]).
    pub(super) member_kinds: BTreeMap<String, BTreeSet<String>>,
    pub(super) local: Local<M, R>,
    /// Names other nodes run, as they announced them.
    pub(super) directory: BTreeMap<WorkerName, Claim>,
    /// Names that run nowhere since their node went down, until their owner restarts them.
    pub(super) orphans: BTreeMap<WorkerName, Orphan>,
    /// Names this node handed over, and to whom: calls follow them.
    pub(super) moved: BTreeMap<WorkerName, String>,
    /// Copies of durable instances' states that run elsewhere, held here as a replica:
    /// one per node that sends them (two, while two instances of a name run, since a
    /// partition or a pause, and both copy here).
    pub(super) replicas: BTreeMap<WorkerName, Vec<Replica>>,
    /// Lost durable names whose copy held here lists among its holders nodes that said
    /// they hold none ([`Msg::NoCopy`]): those do not wait for them. Kept while the copy
    /// is held and the name runs nowhere.
    pub(super) lacking: BTreeMap<WorkerName, BTreeSet<String>>,
    /// Names whose instance here stopped as stale ([`Msg::RunsOn`]), with the node that
    /// runs them, out of this node's reach: a start or a call here must not run them
    /// beside that one. Until this node hears of the name again (an announcement, a
    /// copy, or word that it runs nowhere).
    pub(super) stale: BTreeMap<WorkerName, String>,
    /// Durable names whose instance here (its id) stays over the one another node just
    /// announced: that node stops its own and hands its state here to merge. Until it
    /// arrives (or that node goes down, or [`RIVAL_WAIT`] passes), calls wait: the two
    /// histories both went on, and calls this one took meanwhile could be dropped with
    /// it should the name go on from the other's state (it went further, and a kind
    /// without a merge keeps one).
    pub(super) rival: BTreeMap<WorkerName, (String, u64)>,
    /// For each durable instance here: its last copy's number and the replicas that hold it.
    pub(super) copied: BTreeMap<WorkerName, (u64, Vec<String>)>,
    /// Set by [`Event::Leave`]: no new instances here.
    pub(super) leaving: bool,
    /// Whether a leaving node waits for a member to hand names to (it had members, or
    /// members gone that may be back, when it began to leave) rather than stop them
    /// with their state.
    pub(super) wait_to_hand_over: bool,
    /// What each instance here holds ([`Base`]: the handed-over state it started from,
    /// the states it merged), by name; the instance's id in it.
    pub(super) bases: BTreeMap<WorkerName, Base>,
    /// Handoffs that came while the name's instance here was starting, of a state it may
    /// hold all of or be held by: decided once it runs (see `origin.rs`).
    pub(super) deferred: BTreeMap<WorkerName, Vec<Deferred>>,
    /// Instances that came back because no node took them: they stay here until their
    /// [`Timer::MoveAgain`].
    pub(super) came_back: BTreeSet<WorkerName>,
    /// This node woke from a pause less than [`WOKE_HOLD`] ago: the members it had then,
    /// each with its connection. What is lost when one of those connections ends is
    /// held ([`Orphan::held`]).
    pub(super) woke: Option<BTreeMap<String, u64>>,
    /// How many pauses this node woke from: the hold of the last one ends with its
    /// timer ([`Timer::WokeHoldOver`]).
    pub(super) wakes: u64,
    /// Random per process: the states this node hands over get ids unlike any other
    /// node's ([`origin::state_id`]); `handed` counts them.
    incarnation: u64,
    handed: u64,
    next_id: u64,
    pub(super) out: Vec<Effect<M, R>>,
}

impl<M, R> Event<M, R> {
    /// The event a membership change is for the table; `None` for this node closing
    /// its own connections as it exits (its peers are not down, and calls still under
    /// way here are answered with where names moved).
    pub fn member(change: &MemberChange) -> Option<Self> {
        Some(match change {
            MemberChange::Up { node, conn } => Event::MemberUp { node: node.clone(), conn: *conn },
            MemberChange::Leaving { node, conn } => Event::MemberLeaving { node: node.clone(), conn: *conn },
            MemberChange::Down { reason: DownReason::LocalShutdown, .. } => return None,
            MemberChange::Down { node, conn, .. } | MemberChange::Gone { node, conn } => Event::MemberDown { node: node.clone(), conn: *conn },
        })
    }
}

impl<M: Clone + std::fmt::Debug, R: std::fmt::Debug> Table<M, R> {
    pub fn new(me: impl Into<String>, kinds: Arc<dyn Kinds>) -> Self {
        Table {
            me: me.into(),
            kinds,
            members: BTreeMap::new(),
            leavers: BTreeMap::new(),
            gone: BTreeMap::new(),
            synced: BTreeSet::new(),
            member_kinds: BTreeMap::new(),
            local: Local::default(),
            directory: BTreeMap::new(),
            orphans: BTreeMap::new(),
            moved: BTreeMap::new(),
            replicas: BTreeMap::new(),
            lacking: BTreeMap::new(),
            stale: BTreeMap::new(),
            rival: BTreeMap::new(),
            copied: BTreeMap::new(),
            leaving: false,
            wait_to_hand_over: false,
            bases: BTreeMap::new(),
            deferred: BTreeMap::new(),
            came_back: BTreeSet::new(),
            woke: None,
            wakes: 0,
            incarnation: 0,
            handed: 0,
            next_id: 1,
            out: Vec::new(),
        }
    }

    /// Sets this process's random incarnation, which the ids of the states it hands
    /// over derive from (a node that restarts under the same name gets a new one).
    pub fn set_incarnation(&mut self, incarnation: u64) {
        self.incarnation = incarnation;
    }

    /// An id for a state this node hands over.
    pub(super) fn new_state_id(&mut self) -> u64 {
        self.handed += 1;
        origin::state_id(self.incarnation, self.handed)
    }

    /// The effects called for outside [`Table::handle`] (by
    /// [`Table::replica_in`](Table::replica_in)), in order: for the driver to carry out
    /// at once.
    pub fn take_effects(&mut self) -> Vec<Effect<M, R>> {
        std::mem::take(&mut self.out)
    }

    /// Applies one event; the effects it calls for, in order.
    pub fn handle(&mut self, event: Event<M, R>) -> Vec<Effect<M, R>> {
        match event {
            Event::MemberUp { node, conn } => self.member_up(node, conn),
            Event::MemberLeaving { node, conn } => self.member_leaving(node, conn),
            Event::MemberDown { node, conn } => self.member_down(&node, conn),
            Event::Start { name, args, here, reply } => self.start(name, args, here, reply),
            Event::Stop { name, reason, reply } => self.stop(name, reason, reply),
            Event::Received { from, msg } => self.received(from, msg),
            Event::Spawned { name, id, result } => self.spawned(name, id, result),
            Event::Stopped { name, id, state } => self.stopped(name, id, state),
            Event::Exited { name, id } => self.exited(name, id),
            Event::Leave => self.leave(),
            Event::Woke { paused_ms } => {
                // Again within the hold of an earlier pause: the hold starts again, with
                // the connections this node has now.
                let mut members = self.members.clone();
                members.extend(self.leavers.iter().map(|(n, c)| (n.clone(), *c)));
                self.woke = Some(members);
                self.wakes += 1;
                warn!(
                    paused_ms,
                    "this node did not run for {paused_ms} ms (paused, or its machine was): its peers may have declared it down and taken its names over; \
                     for {} ms it takes over none of the names of a peer whose connection it finds closed, until that peer says where they run",
                    WOKE_HOLD.as_millis()
                );
                self.out.push(Effect::SetTimer { after: WOKE_HOLD, timer: Timer::WokeHoldOver { wake: self.wakes } });
            }
            Event::Timer(Timer::LeaverGone { node, conn }) => {
                if self.leavers.get(&node) == Some(&conn) {
                    warn!(%node, "node left {node} but kept its connection open past its grace; restarting what it still holds");
                    self.member_down(&node, conn);
                }
            }
            Event::Timer(Timer::GoneForgotten { node, conn }) => {
                if self.gone.get(&node) == Some(&conn) {
                    self.gone.remove(&node);
                    self.member_kinds.remove(&node);
                }
            }
            Event::Timer(Timer::ReplicaGrace { name }) => {
                if let Some(o) = self.orphans.get_mut(&name) {
                    o.grace = Grace::Over;
                    self.replan();
                }
            }
            Event::Timer(Timer::WokeHoldOver { wake }) if wake != self.wakes => {}
            Event::Timer(Timer::WokeHoldOver { .. }) => {
                self.woke = None;
                for o in self.orphans.values_mut() {
                    o.held = None;
                }
                self.replan();
            }
            Event::Timer(Timer::AskOver { name, round }) => self.ask_over(name, round),
            Event::Timer(Timer::RivalOver { name, id }) => {
                if self.rival.get(&name).is_some_and(|(_, i)| *i == id) {
                    self.rival.remove(&name);
                    self.out.push(Effect::Changed);
                }
            }
            Event::Timer(Timer::MoveAgain { name }) => {
                if self.came_back.remove(&name) {
                    self.place(&name);
                }
            }
        }
        std::mem::take(&mut self.out)
    }

    /// `from`, whose instance of `name` one here stays over, handed its state here or
    /// stopped: calls to the one here wait no longer (see [`Table::rival`]).
    pub(super) fn rival_done(&mut self, name: &WorkerName, from: &str) {
        if self.rival.get(name).is_some_and(|(f, _)| f == from) {
            self.rival.remove(name);
            self.out.push(Effect::Changed);
        }
    }

    fn received(&mut self, from: String, msg: Msg) {
        match msg {
            Msg::Registered { name, args, lineage } => self.registered(from, name, args, lineage),
            Msg::Unregistered { name, went } => self.unregistered(from, name, went),
            Msg::Synced => {
                // What it owns moves to it now (see `place_running`); a leaver owns nothing.
                let member = self.members.contains_key(&from);
                // It said where its names run: what was held for it is lost or found.
                let mut released = false;
                for o in self.orphans.values_mut().filter(|o| o.held.as_deref() == Some(from.as_str())) {
                    o.held = None;
                    released = true;
                }
                if released {
                    self.replan();
                }
                // It said every name it runs, and not these, which this node's stale
                // instances stopped for as running there (see `runs_on`: its
                // announcement would have cleared them): stopped there meanwhile, or
                // lost with it. Held on, the state would wait for a word that never
                // comes, and calls here for the name with it.
                let gone: Vec<WorkerName> = self.stale.iter().filter(|(_, at)| **at == from).map(|(n, _)| n.clone()).collect();
                for name in gone {
                    self.stale.remove(&name);
                    info!(worker = %name, peer = %from, "{from} does not run {name} (it said every name it runs): the state this node's stale instance of {name} stopped with goes where it runs, or starts it again");
                    // A stop still under way settles it once done (`stopped`).
                    if matches!(self.local.get(&name), Some(Slot::Stopping { .. })) {
                        continue;
                    }
                    let me = self.me.clone();
                    if let Some((args, lineage)) = self.copy_from(&name, &me).map(|r| (r.args.clone(), r.lineage)) {
                        self.settle_held_stale(name, args, lineage);
                    }
                }
                self.synced.insert(from);
                // Every peer it had at the wake has connected again and said where its
                // names run: the hold is over.
                let back = |w: &BTreeMap<String, u64>| {
                    w.iter().all(|(n, c)| self.synced.contains(n) && self.members.get(n).or(self.leavers.get(n)).is_some_and(|now| now != c))
                };
                if self.woke.as_ref().is_some_and(back) {
                    self.woke = None;
                    self.replan();
                }
                if member {
                    for name in self.running() {
                        self.place(&name);
                    }
                }
                self.out.push(Effect::Changed);
            }
            Msg::Handoff { name, args, lineage, state, merges, yielding, origin, merge_origins } => {
                let mut origins = merge_origins.into_iter();
                let merges = merges.into_iter().map(|(from, state)| Merge { from, state, origin: origins.next().flatten() }).collect();
                self.handoff_in(from, name, args, lineage, state, merges, yielding, origin)
            }
            Msg::HandoffAck { name, at } => self.handoff_ack(from, name, at),
            Msg::Orphan { name, args, lineage } => self.orphan_in(from, name, args, lineage),
            Msg::ReplicaDropped { name } => {
                self.take_copy(&name, &from);
            }
            Msg::Kinds { kinds } => self.kinds_in(from, kinds.into_iter().collect()),
            Msg::NoCopy { name } => {
                if self.replicas.contains_key(&name) {
                    self.lacking.entry(name).or_default().insert(from);
                    self.replan();
                }
            }
            Msg::CopyAsk { name } => self.copy_ask(from, name),
            Msg::CopyHeld { name, copies } => self.copy_held(from, name, copies),
            Msg::RunsOn { name, node, lineage } => self.runs_on(from, name, node, lineage),
        }
    }

    // ---- queries ----

    /// The members that take names, this node included unless it is leaving.
    pub fn placing(&self) -> impl Iterator<Item = &str> {
        let me = if self.leaving { None } else { Some(self.me.as_str()) };
        me.into_iter().chain(self.members.keys().map(String::as_str))
    }

    /// Whether `node` (this one or a member) runs workers of `kind`, by its word.
    pub(super) fn runs_kind(&self, node: &str, kind: &str) -> bool {
        if node == self.me {
            return self.kinds.has_kind(kind);
        }
        self.member_kinds.get(node).is_none_or(|k| k.contains(kind))
    }

    /// The members that take names of `kind`: those of [`Table::placing`] that run it.
    fn placing_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a str> {
        self.placing().filter(move |m| self.runs_kind(m, kind))
    }

    /// The node that should run `name` now: its owner among the members that run its
    /// kind (this node when none does, so that a start says the kind is unknown).
    pub fn owner_of(&self, name: &WorkerName) -> &str {
        owner(self.placing().filter(|m| self.runs_kind(m, &name.kind)), name).unwrap_or(&self.me)
    }

    /// Whether `node` is connected (a member, or a leaver still handing over).
    pub fn connected(&self, node: &str) -> bool {
        self.members.contains_key(node) || self.leavers.contains_key(node)
    }

    /// Names running here, sorted.
    pub fn running(&self) -> Vec<WorkerName> {
        self.local.iter().filter(|(_, s)| matches!(s, Slot::Running { .. })).map(|(n, _)| n.clone()).collect()
    }

    /// Names with any instance here (running, starting, stopping or moving), sorted.
    pub fn held(&self) -> Vec<WorkerName> {
        self.local.keys().cloned().collect()
    }

    /// Names with any instance here (running, starting, stopping or moving).
    pub fn local_count(&self) -> usize {
        self.local.len()
    }

    /// Whether `name` is known here: running, starting, moved or announced elsewhere.
    pub fn knows(&self, name: &WorkerName) -> bool {
        self.local.contains_key(name) || self.directory.contains_key(name) || self.moved.contains_key(name)
    }

    /// Whether this node knows anything of `name`: an instance, a claim, a move, or that
    /// it is lost and waits for a restart.
    pub fn remembers(&self, name: &WorkerName) -> bool {
        self.knows(name) || self.orphans.contains_key(name) || self.replicas.contains_key(name)
    }

    /// Whether this node woke from a pause less than [`WOKE_HOLD`] ago, and not every
    /// peer it had then has connected again and said where its names run. Its durable
    /// instances take no message meanwhile: their names may run elsewhere now, taken
    /// over while this node slept, and what they acknowledged now a worker without
    /// `resolve-conflict` could drop when the two instances meet.
    pub fn settling(&self) -> bool {
        self.woke.is_some()
    }

    /// Whether every member has told this node the names it runs.
    pub fn synced(&self) -> bool {
        self.members.keys().all(|m| self.synced.contains(m))
    }

    pub fn is_leaving(&self) -> bool {
        self.leaving
    }

    /// The lineage of the instance of `name` here, whatever its state.
    pub fn lineage_of(&self, name: &WorkerName) -> Option<Lineage> {
        match self.local.get(name)? {
            Slot::Starting { lineage, .. } | Slot::Running { lineage, .. } | Slot::Stopping { lineage, .. } | Slot::Moving { lineage, .. } => Some(*lineage),
        }
    }

    /// The lineage another node announced for `name`, as the directory keeps it.
    pub fn claim_of(&self, name: &WorkerName) -> Option<Lineage> {
        self.directory.get(name).map(|c| c.lineage)
    }

    /// A running instance's handle.
    pub fn handle_of(&self, name: &WorkerName) -> Option<&M> {
        match self.local.get(name) {
            Some(Slot::Running { handle, .. }) => Some(handle),
            _ => None,
        }
    }

    // ---- helpers for the transition files ----

    pub(super) fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Sends `msg` to every connected member (leavers too: they route calls still).
    pub(super) fn tell_all(&mut self, msg: Msg) {
        let to: Vec<String> = self.members.keys().chain(self.leavers.keys()).cloned().collect();
        for to in to {
            self.out.push(Effect::Send { to, msg: msg.clone() });
        }
    }

    /// Puts a new instance of `name` in `Starting` and asks the driver to create it.
    /// `origin`: `state`'s, when it is a handed-over state.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn spawn(
        &mut self,
        name: WorkerName,
        args: Vec<u8>,
        lineage: Lineage,
        why: StartWhy<R>,
        state: Option<Vec<u8>>,
        merges: Vec<Merge>,
        origin: Option<Origin>,
    ) {
        let id = self.next_id();
        self.orphans.remove(&name);
        // The state a stale instance here stopped with (see `runs_on`), held while the
        // name ran out of this node's reach: the name runs here now, so it merges in.
        self.stale.remove(&name);
        let mut merges = merges;
        if let Some(r) = self.take_copy(&name, &self.me.clone()) {
            info!(worker = %name, "{name} starts here again: the state its stale instance here stopped with merges into it");
            merges.push(Merge::bare(r.from, r.state));
        }
        let line = self.new_state_id();
        let mut base = Base::new(id, line, state.as_deref(), origin.as_ref());
        // It holds all of what it merges as it starts.
        for m in &merges {
            base.absorb(m.origin.as_ref());
        }
        self.bases.insert(name.clone(), base);
        let merges = merges.into_iter().map(|m| (m.from, m.state)).collect();
        // The states known now merge as the instance starts, before its first copy; the
        // slot gathers those that arrive while it starts.
        self.local.insert(name.clone(), Slot::Starting { id, args: args.clone(), lineage, why, merges: Vec::new(), acks: Vec::new() });
        self.out.push(Effect::Spawn { name, id, args, state, merges });
    }

    fn start(&mut self, name: WorkerName, args: Vec<u8>, here: bool, reply: R) {
        // A kind this node does not run may run on other members: the start goes to the
        // name's owner among those (below), unless it was sent here as the owner.
        if !self.kinds.has_kind(&name.kind) && (here || self.placing_kind(&name.kind).next().is_none()) {
            let on = if here { self.me.clone() } else { format!("{} or any member", self.me) };
            let e = StartError::UnknownKind(format!("{} (on {on})", name.kind));
            self.out.push(Effect::Started { reply, result: Err(e) });
            return;
        }
        if self.local.contains_key(&name) {
            self.out.push(Effect::Started { reply, result: Err(StartError::AlreadyStarted(self.me.clone())) });
            return;
        }
        if !here {
            if let Some(c) = self.directory.get(&name).filter(|c| self.connected(&c.node)) {
                let e = StartError::AlreadyStarted(c.node.clone());
                self.out.push(Effect::Started { reply, result: Err(e) });
                return;
            }
            let owner = self.owner_of(&name).to_string();
            if owner != self.me {
                self.out.push(Effect::ForwardStart { to: owner, name, args, reply });
                return;
            }
        }
        if let Some(at) = self.stale.get(&name) {
            // It runs there, out of this node's reach (see `runs_on`).
            self.out.push(Effect::Started { reply, result: Err(StartError::AlreadyStarted(at.clone())) });
            return;
        }
        if self.orphans.get(&name).is_some_and(Orphan::pending) {
            // It starts again here from a copy of its state, or on the node that holds
            // one: an empty start now would run beside it.
            self.out.push(Effect::Started { reply, result: Err(StartError::AlreadyStarted(self.me.clone())) });
            return;
        }
        if self.leaving {
            let e = StartError::Failed(format!("{} is leaving the cluster", self.me));
            self.out.push(Effect::Started { reply, result: Err(e) });
            return;
        }
        if let Some(max) = self.kinds.max_instances(&name.kind) {
            // Only a new name counts against the bound: one that moves here (a handoff, a
            // take-over, a restart after its node went down) is never refused for it, so
            // no state is lost to it.
            let here = self.local.of_kind(&name.kind);
            if here >= max {
                let e = StartError::Failed(format!("{} runs {here} instances of {} already, its max_instances", self.me, name.kind));
                self.out.push(Effect::Started { reply, result: Err(e) });
                return;
            }
        }
        self.spawn(name, args, Lineage::default(), StartWhy::Asked(reply), None, Vec::new(), None);
    }

    fn spawned(&mut self, name: WorkerName, id: u64, result: Result<M, SpawnError>) {
        // One lookup in `local` (it holds every instance of the node: the spawn path's
        // cost grows with each search): the slot becomes `Running` where it is.
        let Some(slot) = self.local.get_mut(&name) else { return };
        if !matches!(slot, Slot::Starting { id: sid, .. } if *sid == id) {
            return;
        }
        self.out.push(Effect::Changed);
        let handle = match result {
            Ok(handle) => handle,
            Err(e) => {
                let Some(Slot::Starting { why, acks, .. }) = self.local.remove(&name) else { unreachable!() };
                // Handoffs whose states were to merge into it: refused, their senders keep
                // them and hand them on.
                self.bases.remove(&name);
                let put_off = self.deferred.remove(&name).unwrap_or_default().into_iter().map(|d| d.from);
                for to in acks.into_iter().map(|(to, _)| to).chain(put_off) {
                    self.out.push(Effect::Send { to, msg: Msg::HandoffAck { name: name.clone(), at: None } });
                }
                match why {
                    StartWhy::Asked(reply) => self.out.push(Effect::Started { reply, result: Err(StartError::Failed(e.to_string())) }),
                    StartWhy::Handoff { from } => {
                        warn!(worker = %name, peer = %from, "could not start {name} from its handed-over state: {e}");
                        self.out.push(Effect::Send { to: from, msg: Msg::HandoffAck { name, at: None } });
                    }
                    StartWhy::Restart | StartWhy::Adopted | StartWhy::Failover => warn!(worker = %name, "could not restart {name}: {e}"),
                }
                return;
            }
        };
        let running = Slot::Running { id, handle: handle.clone(), args: Vec::new(), lineage: Lineage::default() };
        let Slot::Starting { args, lineage, why, merges, mut acks, .. } = std::mem::replace(slot, running) else { unreachable!() };
        if let Slot::Running { args: a, lineage: l, .. } = slot {
            a.clone_from(&args);
            *l = lineage;
        }
        self.directory.remove(&name);
        self.orphans.remove(&name);
        self.moved.remove(&name);
        match why {
            StartWhy::Asked(reply) => {
                info!(worker = %name, "started {name}");
                self.out.push(Effect::Started { reply, result: Ok(self.me.clone()) });
            }
            StartWhy::Restart => {
                crate::metrics::global().restarted();
                warn!(worker = %name, "restarted {name} on {} after node down: no handoff state", self.me)
            }
            StartWhy::Adopted => warn!(worker = %name, "started {name} on {} from the state of an instance that stopped elsewhere", self.me),
            StartWhy::Failover => {
                crate::metrics::global().restarted();
                warn!(worker = %name, "took over {name} on {} after node down, from its replicated state", self.me)
            }
            StartWhy::Handoff { from } => {
                info!(worker = %name, peer = %from, "started {name} from the state {from} handed over");
                acks.push((from, Msg::HandoffAck { name: name.clone(), at: Some(self.me.clone()) }));
            }
        }
        self.merge_then_ack(&name, &handle, merges, acks);
        self.tell_all(Msg::Registered { name: name.clone(), args, lineage });
        if self.leaving {
            // Started while this node leaves (a handoff that crossed the leave): move on.
            self.begin_move(&name);
        } else {
            self.place_running(&name);
        }
        for d in self.deferred.remove(&name).unwrap_or_default() {
            self.handoff_in(d.from, name.clone(), d.args, d.lineage, d.state, d.merges, d.yielding, d.origin);
        }
    }

    /// Merges `states` into the instance of `name` running here, and sends `acks`
    /// (handoffs' answers) once they are safe: at once when nothing is to merge or the
    /// kind is not durable, else once the instance has merged the last of them and its
    /// replicas hold the result (the senders drop their states on the ack).
    /// The instance holds all of each state it merges (see [`Merge::origin`]).
    pub(super) fn merge_then_ack(&mut self, name: &WorkerName, handle: &M, states: Vec<Merge>, acks: Vec<(String, Msg)>) {
        let id = match self.local.get(name) {
            Some(Slot::Running { id, .. }) => Some(*id),
            _ => None,
        };
        if let Some(b) = self.bases.get_mut(name).filter(|b| Some(b.id) == id) {
            for m in &states {
                b.absorb(m.origin.as_ref());
            }
        }
        let durable = self.kinds.replicas(&name.kind) > 0;
        let mut acks = acks;
        if !durable || states.is_empty() {
            for (to, msg) in acks.drain(..) {
                self.out.push(Effect::Send { to, msg });
            }
        }
        let last = states.len().saturating_sub(1);
        for (k, Merge { from, state, .. }) in states.into_iter().enumerate() {
            let acks = if k == last { std::mem::take(&mut acks) } else { Vec::new() };
            self.out.push(Effect::Merge { name: name.clone(), handle: handle.clone(), from, state, acks });
        }
    }

    fn exited(&mut self, name: WorkerName, id: u64) {
        if matches!(self.local.get(&name), Some(Slot::Running { id: rid, .. }) if *rid == id) {
            self.local.remove(&name);
            self.bases.remove(&name);
            self.tell_all(Msg::Unregistered { name, went: None });
            self.out.push(Effect::Changed);
        }
    }
}

impl<M: Clone, R> Table<M, R> {
    /// The handles of every running instance (for `info` events).
    pub fn running_handles(&self) -> Vec<M> {
        self.local
            .values()
            .filter_map(|s| match s {
                Slot::Running { handle, .. } => Some(handle.clone()),
                _ => None,
            })
            .collect()
    }
}
