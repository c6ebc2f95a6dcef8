//! Membership's state machine: who is up, who is leaving, who left, and whom to dial
//! next. Inputs in ([`Input`]), outputs out ([`Output`]); no sockets, no clock reads, no
//! tasks, no locks. The driver (`mod.rs`) feeds it the connection layer's ordered events
//! and the time; the simulation (`crate::sim`) feeds the same code from a seed.
//!
//! The rules:
//! - a member is a visible peer with an open connection; the connection's id tells a
//!   down of this connection from a stale down of an earlier one;
//! - a peer that says it is leaving stops being a member at once (nothing is placed on
//!   it) and is not re-dialled; its connection closing later is [`MemberChange::Gone`];
//! - the names to dial are what discovery found plus, with `full_mesh`, what peers list
//!   (Erlang's transitive connect), minus members, this node and leavers; each with its
//!   own exponential backoff, forever; discovery only adds, so a poll that returns fewer
//!   names disconnects nobody;
//! - every change of the member set is sent to every member (their gossip).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::MemberChange;
use crate::dist::DownReason;

/// The first re-dial of a name that failed waits this long (ms); each failure doubles it.
pub const BACKOFF_START_MS: u64 = 100;
/// The longest wait between two dials of one name (ms).
pub const BACKOFF_MAX_MS: u64 = 5_000;

/// A list of node names, shared between the nodes it is sent to.
pub type Names = Arc<[String]>;

/// What happened, for the membership to decide about. Times are the driver's
/// monotonic milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A visible peer connected on connection `conn` (`since_ms`: wall clock, for display).
    Connected { node: String, conn: u64, since_ms: u64 },
    /// A peer said on connection `conn` that it is leaving.
    Leaving { node: String, conn: u64 },
    /// Connection `conn` to a peer is gone, for `reason`.
    Disconnected { node: String, conn: u64, reason: DownReason },
    /// A member sent the list of its members.
    Gossip { from: String, names: Names },
    /// Discovery's topology `topology` answered with `names`.
    Discovered { topology: String, names: Vec<String> },
    /// A dial asked for with [`Output::Dial`] ended.
    Dialled { node: String, result: DialResult, now_ms: u64 },
    /// Time passed: dial whatever is due.
    Tick { now_ms: u64 },
    /// This node is leaving: dial nobody from now on.
    Leave,
}

/// How a dial ended, as far as membership cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialResult {
    Connected,
    /// The other direction's connection is coming up (simultaneous connect): look again
    /// shortly, it is not a failure.
    Busy,
    /// It failed, with the error as an operator reads it; `refused` when the peer
    /// refused the handshake (a misconfiguration, not a node still starting).
    Failed {
        error: String,
        refused: bool,
    },
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Tell the registry, the watchers and the log.
    Changed(MemberChange),
    /// Send this member list (this node first) to every member.
    Gossip(Names),
    /// Dial this node.
    Dial(String),
    /// A dial failed; `repeated` when with the same error as the last time (the driver
    /// logs a new error once and a repeated one quietly).
    Unreachable { node: String, error: String, refused: bool, repeated: bool, retry_in_ms: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub conn: u64,
    pub since_ms: u64,
}

#[derive(Debug)]
struct Backoff {
    next_ms: u64,
    delay_ms: u64,
    last_error: Option<String>,
}

/// One node's view of the cluster.
#[derive(Debug)]
pub struct View {
    me: String,
    full_mesh: bool,
    members: BTreeMap<String, Member>,
    /// Nodes that said they are leaving and have not connected again since.
    left: BTreeSet<String>,
    /// Leavers by the connection still open to them.
    leavers: BTreeMap<String, u64>,
    /// The latest answer of each topology.
    discovered: BTreeMap<String, Vec<String>>,
    /// The latest member list of each member.
    gossip: BTreeMap<String, Names>,
    /// Every name discovered and (with full mesh) gossiped, with how many of those lists
    /// hold it: kept as lists change, so a tick looks at each name once.
    known: BTreeMap<String, usize>,
    backoff: BTreeMap<String, Backoff>,
    dialing: BTreeSet<String>,
    leaving: bool,
}

impl View {
    pub fn new(me: impl Into<String>, full_mesh: bool) -> View {
        View {
            me: me.into(),
            full_mesh,
            members: BTreeMap::new(),
            left: BTreeSet::new(),
            leavers: BTreeMap::new(),
            discovered: BTreeMap::new(),
            gossip: BTreeMap::new(),
            known: BTreeMap::new(),
            backoff: BTreeMap::new(),
            dialing: BTreeSet::new(),
            leaving: false,
        }
    }

    /// This node's name.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// The members, by name (this node not included).
    pub fn members(&self) -> &BTreeMap<String, Member> {
        &self.members
    }

    /// Whether `node` said it is leaving (and has not connected again since).
    pub fn has_left(&self, node: &str) -> bool {
        self.left.contains(node)
    }

    /// Whether this node is leaving.
    pub fn leaving(&self) -> bool {
        self.leaving
    }

    /// Whether `topologies` topologies have answered and every name they (and, with
    /// full mesh, the members) list is a member or has been tried once: the cluster as
    /// this node can see it has formed.
    pub fn settled(&self, topologies: usize) -> bool {
        self.discovered.len() >= topologies
            && self.wanted().iter().all(|n| self.members.contains_key(*n) || self.backoff.get(*n).is_some_and(|b| b.last_error.is_some()))
    }

    /// Decides about `input`; what the driver must do comes back in order.
    pub fn handle(&mut self, input: Input) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            Input::Connected { node, conn, since_ms } => {
                self.members.insert(node.clone(), Member { conn, since_ms });
                self.left.remove(&node);
                self.leavers.remove(&node);
                self.backoff.remove(&node);
                out.push(Output::Changed(MemberChange::Up { node, conn }));
                out.push(self.gossip_out());
            }
            Input::Leaving { node, conn } => {
                if self.members.get(&node).is_none_or(|m| m.conn != conn) {
                    return out;
                }
                self.members.remove(&node);
                self.gossip_from(&node, None);
                self.left.insert(node.clone());
                self.leavers.insert(node.clone(), conn);
                out.push(Output::Changed(MemberChange::Leaving { node, conn }));
                out.push(self.gossip_out());
            }
            Input::Disconnected { node, conn, reason } => {
                if self.leavers.get(&node) == Some(&conn) {
                    self.leavers.remove(&node);
                    out.push(Output::Changed(MemberChange::Gone { node, conn }));
                    return out;
                }
                if self.members.get(&node).is_none_or(|m| m.conn != conn) {
                    return out;
                }
                self.members.remove(&node);
                self.gossip_from(&node, None);
                if reason == DownReason::Left {
                    self.left.insert(node.clone());
                }
                out.push(Output::Changed(MemberChange::Down { node, conn, reason }));
                out.push(self.gossip_out());
            }
            Input::Gossip { from, names } => {
                if self.members.contains_key(&from) && self.gossip.get(&from) != Some(&names) {
                    self.gossip_from(&from, Some(names));
                }
            }
            Input::Discovered { topology, names } => {
                if self.discovered.get(&topology) != Some(&names) {
                    self.count(&names, true);
                    if let Some(old) = self.discovered.insert(topology, names) {
                        self.count(&old, false);
                    }
                }
            }
            Input::Dialled { node, result, now_ms } => {
                self.dialing.remove(&node);
                match result {
                    DialResult::Connected => {
                        self.backoff.remove(&node);
                    }
                    DialResult::Busy => {
                        let b = self.backoff.entry(node).or_insert(Backoff::new());
                        b.next_ms = now_ms + BACKOFF_START_MS;
                    }
                    DialResult::Failed { error, refused } => {
                        let b = self.backoff.entry(node.clone()).or_insert(Backoff::new());
                        let repeated = b.last_error.as_deref() == Some(error.as_str());
                        let retry_in_ms = b.delay_ms;
                        b.next_ms = now_ms + b.delay_ms;
                        b.delay_ms = (b.delay_ms * 2).min(BACKOFF_MAX_MS);
                        b.last_error = Some(error.clone());
                        out.push(Output::Unreachable { node, error, refused, repeated, retry_in_ms });
                    }
                }
            }
            Input::Tick { now_ms } => {
                if self.leaving {
                    return out;
                }
                let due: Vec<String> = self
                    .wanted()
                    .into_iter()
                    .filter(|n| !self.dialing.contains(*n))
                    .filter(|n| self.backoff.get(*n).is_none_or(|b| b.next_ms <= now_ms))
                    .cloned()
                    .collect();
                for node in due {
                    self.dialing.insert(node.clone());
                    out.push(Output::Dial(node));
                }
            }
            Input::Leave => self.leaving = true,
        }
        out
    }

    /// The names this node wants connected and is not: discovered (and, with full mesh,
    /// gossiped), not itself, not a member, not a leaver.
    fn wanted(&self) -> Vec<&String> {
        self.known.keys().filter(|n| **n != self.me && !self.members.contains_key(*n) && !self.left.contains(*n)).collect()
    }

    /// Replaces (or, with `None`, drops) the member list `from` sent.
    fn gossip_from(&mut self, from: &str, names: Option<Names>) {
        let old = match names {
            Some(names) => {
                // Most gossip repeats the sender's last list: nothing to count again.
                if self.gossip.get(from).is_some_and(|old| Arc::ptr_eq(old, &names) || **old == *names) {
                    return;
                }
                if self.full_mesh {
                    self.count(&names, true);
                }
                self.gossip.insert(from.to_string(), names)
            }
            None => self.gossip.remove(from),
        };
        if let (Some(old), true) = (old, self.full_mesh) {
            self.count(&old, false);
        }
    }

    fn count(&mut self, names: &[String], add: bool) {
        for n in names {
            if add {
                match self.known.get_mut(n) {
                    Some(c) => *c += 1,
                    None => {
                        self.known.insert(n.clone(), 1);
                    }
                }
            } else if let Some(c) = self.known.get_mut(n) {
                *c -= 1;
                if *c == 0 {
                    self.known.remove(n);
                }
            }
        }
    }

    fn gossip_out(&self) -> Output {
        Output::Gossip(std::iter::once(self.me.clone()).chain(self.members.keys().cloned()).collect())
    }
}

impl Backoff {
    fn new() -> Backoff {
        Backoff { next_ms: 0, delay_ms: BACKOFF_START_MS, last_error: None }
    }
}
