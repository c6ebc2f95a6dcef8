//! Replicas: the copies of durable instances' states this node holds for the nodes
//! that run them, and which nodes an instance running here copies its state to.
//!
//! A durable name's replicas are the members that rank next for it after the node
//! that runs it ([`placement::ranked`]): when that node goes down, the first live
//! replica is the name's owner by the same ranking, and starts it from the copy it
//! holds (`supervise.rs`, `replan`) instead of from an empty `init`.

use super::durable::{Target, Update};
use super::origin::{self, Base};
use super::placement::{ranked, Lineage};
use super::table::{Effect, Replica, Slot, Table};
use super::wire::Msg;
use super::wire::{Holds, Origin, Replicate};
use super::WorkerName;

/// Where an instance copies its state, and what each copy says of it.
#[derive(Debug, Clone)]
pub struct Replication {
    /// Its replicas, each with the connection to it.
    pub targets: Vec<Target>,
    pub args: Vec<u8>,
    pub lineage: Lineage,
    /// Its line ([`Replicate::line`]).
    pub line: Option<u64>,
    /// The height of the state it started from: a copy's height is that and the
    /// changes it copied since ([`Replicator::changes_with`](super::durable::Replicator::changes_with)).
    pub start: u64,
    /// What its state holds all of besides its line ([`Replicate::holds`]).
    pub holds: Option<Holds>,
}

/// Whether the copy `r`, whose node is gone, holds all of a state of origin `o` that is
/// a copy left as it was (`o.copy_of`: copy `seq` of line `line`): `r` is that copy or a
/// later one of that line, or its instance held all of that line (it took in a state
/// that did). Not by `o`'s own id, nor by the copy `r`'s instance started from, which
/// `r` may say it holds for having been handed `o`'s state: an instance takes a handed
/// state's origin in as it queues the merge, so a copy it sent meanwhile says it holds
/// what its bytes lack yet. `line` itself comes in only with a state that holds all of
/// it, which `o` does not say of itself; that state's sender keeps it until its merge
/// is copied.
pub fn dead_copy_holds(r: &Replica, o: &Origin) -> bool {
    let Some((line, seq)) = o.copy_of.filter(|(line, _)| !o.holds.contains(line)) else { return false };
    (r.line == Some(line) && r.seq >= seq) || r.holds.as_ref().is_some_and(|h| h.ids.contains(&line))
}

/// Why a copy was not taken.
#[derive(Debug, PartialEq, Eq)]
pub enum NotHeld {
    /// A delta from a copy this node does not hold: the sender sends the whole state.
    NeedFull,
}

impl<M: Clone + std::fmt::Debug, R: std::fmt::Debug> Table<M, R> {
    /// `from` sends a copy of the state of a durable instance it runs.
    pub fn replica_in(&mut self, from: &str, copy: Replicate) -> Result<(), NotHeld> {
        let Replicate { name, args, lineage, seq, update, holders, line, height, holds } = copy;
        // Copies held here from duplicates that are gone (or from the sender's previous
        // life) merge into the sender's instance, but those its state holds all of, by
        // what it says (see `copy_holds`): dropped.
        if let Some(h) = &holds {
            for node in self.dead_copies(&name) {
                let held = |c: &Replica| c.from != self.me && c.from != from && c.line.is_some_and(|l| h.holds_copy((l, c.seq)));
                if self.copy_from(&name, &node).is_some_and(held) {
                    self.take_copy(&name, &node);
                }
            }
        }
        if self.replicas.get(&name).is_some_and(|rs| rs.iter().any(|r| !self.copy_alive(r))) {
            self.settle_dead_copy(&name, Some((from, lineage)));
        }
        let old = self.copy_from(&name, from).map(|r| (r.seq, r.state.as_slice()));
        let is_full = matches!(update, Update::Full(_));
        let Some(state) = update.apply(old) else { return Err(NotHeld::NeedFull) };
        let conn = self.members.get(from).or(self.leavers.get(from)).copied();
        debug_assert!(is_full || old.is_some());
        // A new copy lists who holds it now: a node that said it holds none (or an older
        // one) may hold this one.
        self.lacking.remove(&name);
        self.stale.remove(&name);
        let copies = self.replicas.entry(name).or_default();
        copies.retain(|r| r.from != from);
        copies.push(Replica { from: from.to_string(), args, lineage, seq, state, holders, line, height, holds, conn });
        Ok(())
    }

    /// The copy of `name` that `from` sent, held here.
    pub(super) fn copy_from(&self, name: &WorkerName, from: &str) -> Option<&Replica> {
        self.replicas.get(name)?.iter().find(|r| r.from == from)
    }

    /// Whether an instance of `lineage` holds all of the copy `r` (see
    /// [`Lineage::continues`]), judged by lineages alone: for copies from nodes that do
    /// not say their line or what they hold. Never the state a stale instance here
    /// stopped with (`runs_on`): that instance may have the lineage of the one the other
    /// was copied from (an instance that stays over a handed state keeps its lineage),
    /// with copy numbers of its own, so the lineage cannot tell. It merges: the merge
    /// contract (a union or a maximum) makes a state merged twice count once.
    pub(super) fn continued(&self, lineage: Lineage, r: &Replica) -> bool {
        r.from != self.me && lineage.continues(r.lineage, r.seq)
    }

    /// Whether a state handed over, of origin `theirs` and lineage `lineage`, holds all
    /// of the copy `r`: by the line the copy names, when both say (a copy of another
    /// instance of the same lineage is not held, whatever its number); else by the
    /// lineages ([`Table::continued`]).
    pub(super) fn handed_holds(&self, theirs: Option<&Origin>, lineage: Lineage, r: &Replica) -> bool {
        match (r.line, theirs) {
            _ if r.from == self.me => false,
            (Some(line), Some(o)) => o.holds_copy((line, r.seq)),
            _ => self.continued(lineage, r),
        }
    }

    /// Whether the instance of copy `o` held all of copy `c` when it sent `o`: by `c`'s
    /// line and what `o` says it holds, when both say; else by the lineages.
    pub(super) fn copy_holds(&self, o: &Replica, c: &Replica) -> bool {
        match (c.line, &o.holds) {
            _ if c.from == self.me || o.from == c.from => false,
            (Some(line), Some(h)) => h.holds_copy((line, c.seq)),
            _ => self.continued(o.lineage, c),
        }
    }

    /// The origin of a state that goes on from the copy `r`, whose node is gone: a copy
    /// of its line, under a new id of this node's. The state this node's own stale
    /// instance stopped with is that instance's final state, not a copy: it holds all of
    /// its line, whatever number its last copy had (one it could not send while cut off
    /// went further than the copies its replicas hold), and all that the instance held
    /// (`r.holds`, as of that final state: the merges queued before the stop were
    /// handled before it), as a state it handed over would say ([`Base::handing`]).
    pub(super) fn dead_copy_origin(&mut self, r: &Replica) -> Origin {
        let id = self.new_state_id();
        match r.line {
            Some(line) if r.from == self.me => {
                let held = r.holds.as_ref();
                let holds = origin::final_holds(id, line, held.map_or(&[][..], |h| &h.ids));
                Origin { state: id, holds, copy_of: None, height: r.height, from_copy: held.and_then(|h| h.copy) }
            }
            Some(line) => Base::copy(id, line, r.seq, r.height),
            None => Origin { state: id, holds: vec![id], copy_of: None, height: r.height, from_copy: None },
        }
    }

    /// Removes and returns the copy of `name` that `from` sent.
    pub(super) fn take_copy(&mut self, name: &WorkerName, from: &str) -> Option<Replica> {
        let copies = self.replicas.get_mut(name)?;
        let at = copies.iter().position(|r| r.from == from)?;
        let r = copies.remove(at);
        if copies.is_empty() {
            self.replicas.remove(name);
            self.lacking.remove(name);
        }
        Some(r)
    }

    /// The nodes that sent the copies of `name` held here and are gone (or came back as
    /// new processes since).
    pub(super) fn dead_copies(&self, name: &WorkerName) -> Vec<String> {
        self.replicas.get(name).into_iter().flatten().filter(|r| !self.copy_alive(r)).map(|r| r.from.clone()).collect()
    }

    /// Whether the node a copy came from is still connected on the connection it came on.
    pub(super) fn copy_alive(&self, r: &Replica) -> bool {
        let now = self.members.get(&r.from).or(self.leavers.get(&r.from));
        match r.conn {
            Some(c) => now == Some(&c),
            None => now.is_some(),
        }
    }

    /// Where the instance of `name` running here copies its state (the `n` members that
    /// rank next for it, this node excluded, each with the connection to it), with its
    /// args, lineage and line (its copies carry it: [`Replicate::line`]); `None` when no
    /// instance of it is here.
    pub fn replication_of(&self, name: &WorkerName, n: usize) -> Option<Replication> {
        let (args, lineage) = match self.local.get(name)? {
            // Stopping too: it handles what its mailbox holds ahead of the stop, and
            // those calls are answered only once their state is copied.
            Slot::Starting { args, lineage, .. } | Slot::Running { args, lineage, .. } | Slot::Stopping { args, lineage, .. } => (args.clone(), *lineage),
            _ => return None,
        };
        // Among the members that run its kind: a replica is where it would fail over to.
        let runs = self.members.keys().map(String::as_str).filter(|m| self.runs_kind(m, &name.kind));
        let targets = ranked(runs, name).into_iter().take(n).map(|m| (m.to_string(), self.members[m])).collect();
        let base = self.bases.get(name);
        Some(Replication { targets, args, lineage, line: base.map(|b| b.line), start: base.map_or(0, |b| b.height), holds: base.map(|b| b.holds()) })
    }

    /// The copy of `name` held here, if any (the first, should two instances copy
    /// here): which node it is from and its number.
    pub fn replica_of(&self, name: &WorkerName) -> Option<(&str, u64)> {
        self.replicas.get(name)?.first().map(|r| (r.from.as_str(), r.seq))
    }

    /// The instance of `name` here sent copy `seq` of its state, which `acked` hold now.
    pub fn copied(&mut self, name: &WorkerName, seq: u64, acked: Vec<String>) {
        if self.local.contains_key(name) {
            self.copied.insert(name.clone(), (seq, acked));
        }
        if self.copied.len() > 2 * self.local.len() + 64 {
            // Instances that stopped or moved since.
            let local = &self.local;
            self.copied.retain(|n, _| local.contains_key(n));
        }
    }

    /// The instance of `name` of line `line` has copied `changes` states that changed
    /// it (how far it went: [`Base::copies`](super::origin::Base::copies)).
    pub fn went_on(&mut self, name: &WorkerName, line: Option<u64>, changes: u64) {
        if let Some(b) = self.bases.get_mut(name).filter(|b| Some(b.line) == line) {
            b.copies = changes;
        }
    }

    /// The durable instances running here: name, last copy's number, the replicas
    /// that hold it.
    pub fn copies_sent(&self) -> Vec<(WorkerName, u64, Vec<String>)> {
        self.copied.iter().filter(|(n, _)| matches!(self.local.get(*n), Some(Slot::Running { .. }))).map(|(n, (s, a))| (n.clone(), *s, a.clone())).collect()
    }

    /// Every copy held here: name, the node it is from, its number and size.
    pub fn replicas_held(&self) -> Vec<(WorkerName, String, u64, usize)> {
        self.replicas.iter().flat_map(|(n, rs)| rs.iter().map(move |r| (n.clone(), r.from.clone(), r.seq, r.state.len()))).collect()
    }

    /// The instance of `name` left this node (moved with its state, or stopped in
    /// favour of another): the replicas holding its copies are told to drop them, since
    /// its next node copies to its own.
    pub(super) fn drop_copies(&mut self, name: &WorkerName) {
        if let Some((_, holders)) = self.copied.remove(name) {
            for to in holders {
                self.out.push(Effect::Send { to, msg: Msg::ReplicaDropped { name: name.clone() } });
            }
        }
    }
}
