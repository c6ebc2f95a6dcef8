//! Supervision: members coming up, leaving and going down, and what that does to
//! names. A name whose node went down becomes an orphan on every node that knew it,
//! until an instance of it is announced again; each membership change re-plans every
//! orphan, so a restart whose planned owner died meanwhile is planned again.

use tracing::info;

use super::origin::Base;
use super::placement::Lineage;
use super::replica::dead_copy_holds;
use super::table::{Effect, Grace, Merge, Orphan, Replica, Slot, StartWhy, Table, Timer, GONE_GRACE, LEAVER_GRACE, REPLICA_GRACE};
use super::wire::Msg;
use super::Restart;
use super::WorkerName;

impl<M: Clone + std::fmt::Debug, R: std::fmt::Debug> Table<M, R> {
    pub(super) fn member_up(&mut self, node: String, conn: u64) {
        self.leavers.remove(&node);
        self.gone.remove(&node);
        self.members.insert(node.clone(), conn);
        // It tells this node its kinds and its names again on this connection; its kinds
        // first, so that what it owns is known by the time it has told its names.
        self.synced.remove(&node);
        self.out.push(Effect::Send { to: node.clone(), msg: Msg::Kinds { kinds: self.kinds.declared() } });
        for (name, slot) in self.local.iter() {
            if let Slot::Running { args, lineage, .. } = slot {
                let msg = Msg::Registered { name: name.clone(), args: args.clone(), lineage: *lineage };
                self.out.push(Effect::Send { to: node.clone(), msg });
            }
        }
        self.out.push(Effect::Send { to: node.clone(), msg: Msg::Synced });
        self.replan();
        for name in self.running() {
            self.place(&name);
        }
        // A handoff to it that its connection's close cut short was not refused: on this
        // connection it may take it (a wake from a pause finds every connection closed,
        // each with a handoff on its way, and a leaver would wait for nobody).
        for slot in self.local.values_mut() {
            if let Slot::Moving { refused, .. } = slot {
                refused.remove(&node);
            }
        }
        // Names a leaving node had nobody to hand to go to the newcomer (or its owner).
        let waiting: Vec<_> = self.local.iter().filter(|(_, s)| matches!(s, Slot::Moving { to, .. } if to.is_empty())).map(|(n, _)| n.clone()).collect();
        for name in waiting {
            self.send_handoff(name, None);
        }
        self.out.push(Effect::Changed);
    }

    /// `from` runs workers of these kinds (and no others): what it owns changes with that.
    /// Kept whether or not its connection is up here yet (a message may be read before
    /// the membership change that comes with it), until it leaves or is forgotten.
    pub(super) fn kinds_in(&mut self, from: String, kinds: std::collections::BTreeSet<String>) {
        if self.member_kinds.get(&from) == Some(&kinds) {
            return;
        }
        self.member_kinds.insert(from, kinds);
        self.replan();
        for name in self.running() {
            self.place(&name);
        }
        self.out.push(Effect::Changed);
    }

    /// With rebalancing on, moves a running instance to its owner when the owner is
    /// another member that does not run it too (two instances meeting are a duplicate,
    /// resolved first, not a move) and has told this node every name it runs: until
    /// then this node knows neither all it runs nor whether it is leaving (a node that
    /// connects while it leaves says so first thing, and its names go nowhere else).
    /// Not an instance that came back because nobody took it, until its
    /// [`MOVE_AGAIN`](super::table::MOVE_AGAIN) is over.
    pub(super) fn place(&mut self, name: &super::WorkerName) {
        if matches!(self.local.get(name), Some(Slot::Running { .. })) {
            self.place_running(name);
        }
    }

    /// [`place`](Self::place) for an instance known to be running here (it has just
    /// started: no second search of `local`).
    pub(super) fn place_running(&mut self, name: &super::WorkerName) {
        if !self.kinds.rebalance_on_join() || self.leaving || self.came_back.contains(name) {
            return;
        }
        let owner = self.owner_of(name);
        if owner != self.me && self.synced.contains(owner) && self.directory.get(name).is_none_or(|c| c.node != owner) {
            self.begin_move(name);
        }
    }

    pub(super) fn member_leaving(&mut self, node: String, conn: u64) {
        if self.members.get(&node) != Some(&conn) {
            return;
        }
        self.members.remove(&node);
        self.leavers.insert(node.clone(), conn);
        self.out.push(Effect::SetTimer { after: LEAVER_GRACE, timer: Timer::LeaverGone { node, conn } });
        self.replan();
        self.out.push(Effect::Changed);
    }

    pub(super) fn member_down(&mut self, node: &str, conn: u64) {
        let current = self.members.get(node).or(self.leavers.get(node)).copied();
        if current != Some(conn) {
            return;
        }
        // A connection found closed on waking from a pause: its node declared this one
        // down, most likely, and runs on (see `Event::Woke`).
        let held = self.woke.as_ref().filter(|w| w.get(node) == Some(&conn)).map(|_| node.to_string());
        if held.is_some() {
            info!(peer = %node, "the connection to {node} closed while this node was paused: its names wait for it to say where they run");
        }
        // Down without saying it leaves: it may be back (see `leave`), and what it said
        // it runs is kept until then. One that left says it again if it comes back.
        if self.members.contains_key(node) {
            self.gone.insert(node.to_string(), conn);
            self.out.push(Effect::SetTimer { after: GONE_GRACE, timer: Timer::GoneForgotten { node: node.to_string(), conn } });
        } else {
            self.member_kinds.remove(node);
        }
        self.members.remove(node);
        self.leavers.remove(node);
        self.synced.remove(node);
        // Its instance's state will not come.
        self.rival.retain(|_, (from, _)| *from != node);
        // What it announced on this connection (or an earlier one) runs nowhere now.
        let lost: Vec<_> = self.directory.iter().filter(|(_, c)| c.node == node && c.conn <= conn).map(|(n, _)| n.clone()).collect();
        for name in lost {
            let claim = self.directory.remove(&name).expect("listed above");
            if self.local.contains_key(&name) {
                continue;
            }
            if self.kinds.restart(&name.kind) == Restart::Temporary {
                info!(worker = %name, peer = %node, "not restarting {name} after {node} went down: its kind is temporary");
                continue;
            }
            self.orphans.insert(name, Orphan { args: claim.args, lineage: claim.lineage, told: None, grace: Grace::Unasked, held: held.clone(), ask: None });
        }
        // Copies it sent of names that run here, or on another live node, too (two
        // instances since a partition or a pause): its instance is gone, its state merges
        // into the one that runs on.
        let from_it: Vec<_> = self.replicas.iter().filter(|(_, rs)| rs.iter().any(|r| r.from == node)).map(|(n, _)| n.clone()).collect();
        for name in &from_it {
            self.settle_dead_copy(name, None);
        }
        // Durable names it ran that this node holds a copy of, should its announcement
        // not have arrived: lost too.
        for name in from_it {
            if self.orphans.contains_key(&name) || self.local.contains_key(&name) || self.directory.get(&name).is_some_and(|c| c.node != node) {
                continue;
            }
            if let Some(r) = self.copy_from(&name, node) {
                let orphan = Orphan { args: r.args.clone(), lineage: r.lineage, told: None, grace: Grace::Unasked, held: held.clone(), ask: None };
                self.orphans.insert(name, orphan);
            }
        }
        // Names handed to it and not yet acknowledged go to the next owner.
        let stranded: Vec<_> = self.local.iter().filter(|(_, s)| matches!(s, Slot::Moving { to, .. } if to == node)).map(|(n, _)| n.clone()).collect();
        for name in stranded {
            self.send_handoff(name, Some(node.to_string()));
        }
        // Names moved to it: calls no longer follow them there.
        self.moved.retain(|_, to| to != node);
        self.replan();
        self.out.push(Effect::Changed);
    }

    /// The copy held here of `name`, when the node it came from is gone and the name
    /// runs on elsewhere: on this node, its state merges into the instance here; on a
    /// live node (`runner`, the node and its instance's lineage, or else where the
    /// directory says, or else a node that copies it here), it goes there to merge when it is a duplicate's copy — two
    /// instances since a partition or a pause, this one gone before the two met — and
    /// not the copy the instance there continues from. Whether it went.
    pub(super) fn settle_dead_copy(&mut self, name: &WorkerName, runner: Option<(&str, Lineage)>) -> bool {
        // An earlier copy of the very instance that runs there, from before its node
        // connected here again (it declared this one down, and came back): a copy of a
        // live instance still, held as that until the next one comes. Sent to merge into
        // that instance, a worker without a merge could keep it and drop what came since.
        if let Some((at, lineage)) = runner {
            let now = self.members.get(at).or(self.leavers.get(at)).copied();
            if let (Some(now), Some(copies)) = (now, self.replicas.get_mut(name)) {
                for r in copies.iter_mut().filter(|r| r.from == at && r.lineage == lineage) {
                    r.conn = Some(now);
                }
            }
        }
        let dead = self.dead_copies(name);
        if dead.is_empty() {
            return false;
        }
        if self.local.contains_key(name) {
            for node in dead {
                let r = self.take_copy(name, &node).expect("listed above");
                // A state on its way from here that the copy holds all of (the copy's
                // instance went on from it), and that goes again (its target is gone):
                // the copy goes in its place. Merged into it instead, a worker without a
                // merge would keep the older state, and drop what the copy's instance
                // acknowledged since. Not while the state may still be taken where it
                // went: that answer would settle the slot, and drop the copy with it.
                let gone = |to: &String| !self.connected(to);
                if matches!(self.local.get(name), Some(Slot::Moving { state: Some(_), origin, to, .. }) if gone(to) && dead_copy_holds(&r, origin)) {
                    let fresh = self.dead_copy_origin(&r);
                    if let Some(Slot::Moving { state, origin, lineage, .. }) = self.local.get_mut(name) {
                        info!(worker = %name, peer = %node, "{node} went down with an instance of {name} whose copy here holds all of the state on its way from here: the copy goes in its place");
                        *origin = fresh.holding(origin);
                        *state = Some(r.state);
                        // It holds all of that state: it ranks as that one does, at least.
                        *lineage = r.lineage.better(*lineage);
                    }
                    continue;
                }
                info!(worker = %name, peer = %node, "{node} went down with an instance of {name} that runs here too: its copied state merges into this one");
                match self.local.get_mut(name).expect("found above") {
                    Slot::Running { handle, .. } => {
                        let handle = handle.clone();
                        self.out.push(Effect::Merge { name: name.clone(), handle, from: node, state: r.state, acks: Vec::new() });
                    }
                    Slot::Starting { merges, .. } | Slot::Stopping { merges, .. } | Slot::Moving { merges, .. } => merges.push(Merge::bare(node, r.state)),
                }
            }
            return true;
        }
        // Where it runs: as `runner` says; else as the directory says; else where a copy
        // still comes from (the directory kept the instance that went down, of two).
        let runner = match runner {
            Some((at, lineage)) => Some((at.to_string(), lineage)),
            None => self
                .directory
                .get(name)
                .filter(|c| self.connected(&c.node))
                .map(|c| (c.node.clone(), c.lineage))
                .or_else(|| self.replicas.get(name)?.iter().find(|r| self.copy_alive(r)).map(|r| (r.from.clone(), r.lineage))),
        };
        let Some((at, lineage)) = runner.filter(|(at, _)| self.connected(at)) else { return false };
        // A copy whose line the instance there continues (it took the name over from a
        // copy like it) has nothing to merge: dropped, so that it never merges later.
        // Told apart by lineages only when the copy does not name its line: one that does
        // goes there, and that instance, which knows which copy it started from, tells
        // (`handoff_in`, `origin::keep`): another instance of the same lineage may have
        // sent it. Unless a copy held here says it holds all of it: the one the
        // instance there sent, or another dead one.
        let held_by_other = |r: &Replica| dead.iter().chain([&at]).filter_map(|n| self.copy_from(name, n)).any(|o| self.copy_holds(o, r));
        let (continued, duplicates): (Vec<String>, Vec<String>) = dead
            .iter()
            .cloned()
            .partition(|node| self.copy_from(name, node).is_some_and(|r| if r.line.is_none() { self.continued(lineage, r) } else { held_by_other(r) }));
        for node in continued {
            self.take_copy(name, &node);
        }
        let mut copies = duplicates.iter().map(|node| self.take_copy(name, node).expect("listed above")).collect::<Vec<_>>().into_iter();
        let Some(first) = copies.next() else { return false };
        let merges = copies.map(|r| Merge::bare(r.from, r.state)).collect();
        if first.from == self.me {
            info!(worker = %name, peer = %at, "the state this node's stale instance of {name} stopped with goes to the one on {at} to merge");
        } else {
            info!(worker = %name, peer = %first.from, "{} went down with a duplicate instance of {name}: its copied state goes to the one on {at} to merge", first.from);
        }
        let origin = self.dead_copy_origin(&first);
        let slot = Slot::Moving {
            to: at,
            args: first.args,
            lineage: first.lineage,
            state: Some(first.state),
            merges,
            sent: 0,
            yielding: true,
            refused: Default::default(),
            yielders: Vec::new(),
            origin,
            // No instance ran here: should the one there hand the name here meanwhile,
            // the two cross, and it starts here with this state merged in.
            passing: true,
        };
        self.local.insert(name.clone(), slot);
        self.send_handoff(name.clone(), None);
        true
    }

    /// Plans every orphan again: restarted here when this node owns it now; else its
    /// owner is told once (it may have joined after the name was lost).
    pub(super) fn replan(&mut self) {
        let names: Vec<_> = self.orphans.keys().cloned().collect();
        if !names.is_empty() {
            // Calls that wait for a lost name whose fate was pending look again
            // (`Orphan::pending`, `route.rs`).
            self.out.push(Effect::Changed);
        }
        for name in names {
            let runs = self.local.contains_key(&name) || self.directory.get(&name).is_some_and(|c| self.connected(&c.node));
            if runs {
                self.orphans.remove(&name);
                self.lacking.remove(&name);
                continue;
            }
            if self.orphans[&name].held.is_some() {
                // Lost to a close found on waking: where it runs now is on its way.
                continue;
            }
            let owner = self.owner_of(&name).to_string();
            if owner == self.me && (self.leaving || !self.kinds.has_kind(&name.kind)) {
                // Leaving, or no live member runs its kind: nothing to restart it on until
                // one that does comes up (or says it runs the kind).
                continue;
            }
            // A copy of its state held here, from the node that lost it: this node starts
            // it from that when it owns it now, or when the owner holds no copy (it joined
            // since the last one) and this node is the first live holder.
            let dead = self.dead_copies(&name);
            // Of two copies from nodes that are gone (two instances since a partition or
            // a pause, both gone), the one of the instance this node last knew starts
            // it, and the other merges into it.
            let lineage = self.orphans[&name].lineage;
            let first = dead.iter().find(|n| self.copy_from(&name, n).is_some_and(|r| r.lineage == lineage)).or(dead.first()).cloned();
            let copy = first.as_deref().and_then(|n| self.copy_from(&name, n));
            // The copy's holders, less those that said they hold none (they came up
            // after it went out: a listed owner without it would wait for nobody).
            let lacking = self.lacking.get(&name);
            let holds = |h: &&String| lacking.is_none_or(|l| !l.contains(*h));
            let takes_over = copy.is_some_and(|r| {
                owner == self.me
                    || (!r.holders.iter().filter(holds).any(|h| h == &owner)
                        && r.holders.iter().filter(holds).find(|h| *h == &self.me || self.connected(h)) == Some(&self.me))
            });
            if takes_over && !self.leaving {
                let first = first.expect("found above");
                // Not from this copy while a member may hold a later one (`latest.rs`).
                let mine = self.copy_at(self.copy_from(&name, &first).expect("found above"));
                if self.ask_first(&name, mine) {
                    continue;
                }
                let copies: Vec<Replica> =
                    std::iter::once(&first).chain(dead.iter().filter(|n| **n != first)).filter_map(|n| self.take_copy(&name, n)).collect();
                // A copy that another one's instance continues holds nothing that one
                // lacks: merged, it would count its updates twice. The rest merge, into
                // the first that is left (the one this node last knew, unless another
                // continued it).
                let held = |c: &Replica, by: &[Replica]| by.iter().any(|o| self.copy_holds(o, c));
                let mut kept: Vec<bool> = copies.iter().map(|c| !held(c, &copies)).collect();
                // Holding is in time order (a copy says what its instance held when it
                // sent it), so one copy at least is held by none; should none be, the
                // first stays.
                if !kept.contains(&true) {
                    kept[0] = true;
                }
                let mut copies = copies.into_iter().zip(kept).filter_map(|(c, keep)| keep.then_some(c));
                let r = copies.next().expect("one is kept");
                let merges = copies.map(|c| Merge::bare(c.from, c.state)).collect();
                self.lacking.remove(&name);
                // The copy says which instance it is of: should that instance be alive after all
                // (this node was cut off from it, not it from the cluster) and go on, its
                // state holds all of this one's as long as this one has not changed.
                let origin = r.line.map(|line| Base::copy(self.new_state_id(), line, r.seq, r.height));
                self.spawn(name, r.args, r.lineage.failed_over(r.seq), StartWhy::Failover, Some(r.state), merges, origin);
                continue;
            }
            let durable = self.kinds.replicas(&name.kind) > 0;
            let orphan = self.orphans.get_mut(&name).expect("listed above");
            if owner == self.me && durable && orphan.grace != Grace::Over {
                // A node that holds a copy may start it (this one joined since the last
                // copy went out): that beats an empty start, which waits for it.
                if orphan.grace == Grace::Unasked {
                    orphan.grace = Grace::Waiting;
                    self.out.push(Effect::SetTimer { after: REPLICA_GRACE, timer: Timer::ReplicaGrace { name: name.clone() } });
                    // The copy may list this node as a holder all the same (it was sent
                    // one it did not take): the holders are told not to wait for it.
                    self.tell_all(Msg::NoCopy { name });
                }
            } else if owner == self.me {
                let (args, lineage) = (orphan.args.clone(), orphan.lineage.restarted());
                self.spawn(name, args, lineage, StartWhy::Restart, None, Vec::new(), None);
            } else if orphan.told.as_deref() != Some(owner.as_str()) {
                orphan.told = Some(owner.clone());
                let msg = Msg::Orphan { name, args: orphan.args.clone(), lineage: orphan.lineage };
                self.out.push(Effect::Send { to: owner, msg });
            }
        }
    }
}
