//! The directory: what other nodes announce they run, and what happens when two
//! instances of one name meet (after a partition heals, a paused node wakes, or a join
//! raced a start): the one that [`stays`] keeps running; the other hands it its state
//! (`handoff.rs`), to merge.

use tracing::{info, warn};

use super::placement::{stays, Lineage};
use super::table::{Claim, Effect, Grace, Orphan, Slot, StopWhy, Table, Timer, RIVAL_WAIT};
use super::wire::Msg;
use super::WorkerName;

impl<M: Clone + std::fmt::Debug, R: std::fmt::Debug> Table<M, R> {
    /// `from` runs `name` now.
    pub(super) fn registered(&mut self, from: String, name: WorkerName, args: Vec<u8>, lineage: Lineage) {
        let conn = self.members.get(&from).or(self.leavers.get(&from)).copied().unwrap_or(0);
        // Of two instances announced, the directory keeps the one that stays, whatever
        // order the announcements arrived in: every node ends with the same.
        let other = self.directory.get(&name).filter(|c| c.node != from && self.connected(&c.node)).map(|c| (c.node.clone(), c.lineage));
        let keep = other.as_ref().is_some_and(|(node, l)| stays((*l, node), (lineage, &from)));
        self.lacking.remove(&name);
        self.stale.remove(&name);
        if keep {
            // `from` may not hear the node whose instance stays (it was paused or cut off
            // while the name was taken over there): this node tells it.
            let c = &self.directory[&name];
            let msg = Msg::RunsOn { name: name.clone(), node: c.node.clone(), lineage: c.lineage };
            self.out.push(Effect::Send { to: from.clone(), msg });
        } else {
            // `from`'s instance stays over the one this node knew of, and `from` says so as
            // it connects (before its `Synced`): it may have been paused or cut off while
            // that one ran on and took calls, and may not hear that node yet. Told, a
            // durable instance there takes no calls until that one's state has come to
            // merge (`runs_on`): a kind without a merge would drop one side's calls.
            let connecting = !self.synced.contains(&from) && self.kinds.replicas(&name.kind) > 0;
            if let Some((node, l)) = other.filter(|_| connecting) {
                self.out.push(Effect::Send { to: from.clone(), msg: Msg::RunsOn { name: name.clone(), node, lineage: l } });
            }
            self.directory.insert(name.clone(), Claim { node: from.clone(), conn, args, lineage });
        }
        self.orphans.remove(&name);
        // Where the name runs now is what its node says, not where this one once sent it.
        self.moved.remove(&name);
        // A copy held here from a duplicate that is gone merges into this instance.
        self.settle_dead_copy(&name, Some((&from, lineage)));
        self.out.push(Effect::Changed);
        let Some(Slot::Running { id, handle, args, lineage: mine }) = self.local.get(&name) else { return };
        if stays((lineage, &from), (*mine, &self.me)) {
            warn!(worker = %name, peer = %from, "{name} runs on {from} too: keeping that one; stopping this one (its state goes to that one)");
            let (id, handle) = (*id, handle.clone());
            let (args, lineage) = (args.clone(), *mine);
            self.local.insert(name.clone(), Slot::Stopping { id, args, lineage, why: StopWhy::Duplicate { winner: from }, merges: Vec::new() });
            self.out.push(Effect::Stop { name, id, handle, reason: "duplicate".into(), moves: true });
        } else {
            // Tell `from` that this one stays, so it stops its own, and every other node,
            // so that each directory ends with this one whatever order claims came in.
            info!(worker = %name, peer = %from, "{name} runs on {from} too: keeping this one");
            let msg = Msg::Registered { name: name.clone(), args: args.clone(), lineage: *mine };
            let id = *id;
            self.tell_all(msg);
            if self.kinds.replicas(&name.kind) > 0 {
                // Its state comes here to merge; calls wait for it (see `Table::rival`).
                self.rival.insert(name.clone(), (from, id));
                self.out.push(Effect::SetTimer { after: RIVAL_WAIT, timer: Timer::RivalOver { name, id } });
            }
        }
    }

    /// `from` no longer runs `name`; with `went`, its instance yielded to the one on that
    /// node, where its state went. Of a node this one hears, that node's own word came
    /// (or comes). Of one it does not hear (cut off from it, or it was declared down
    /// here while it ran on), the name runs on beyond `from` as far as this side can
    /// tell: the claim stays at `from`, so calls go there (it forwards them) and the
    /// name is restarted on this side should `from` go down, as on any partition.
    /// Dropped, no node here would know of the name: were `went` and `from` to go down
    /// together, it would run nowhere.
    pub(super) fn unregistered(&mut self, from: String, name: WorkerName, went: Option<String>) {
        self.take_copy(&name, &from);
        self.rival_done(&name, &from);
        if self.directory.get(&name).is_none_or(|c| c.node != from) {
            return;
        }
        if let Some(went) = went.filter(|w| *w != self.me && *w != from && !self.connected(w)) {
            info!(worker = %name, peer = %from, "{name} went from {from} to {went}, which this node does not hear: it runs beyond {from} as far as this node can tell");
            return;
        }
        self.directory.remove(&name);
        self.out.push(Effect::Changed);
    }

    /// `from` says `node` runs `name`, an instance of `lineage` that stays over the one
    /// this node announced. Of a node this one hears, that node's own word follows (or
    /// came). Of one it does not hear, this node's instance is a stale duplicate: it was
    /// paused or cut off while the name was taken over there, and that node is out of
    /// reach now. Should it go on, or move to an owner that never heard of the other,
    /// it would take calls beside that one, and a worker without a merge would drop one
    /// side's calls when the two meet. A durable instance stops instead, and its state
    /// is held here as a copy of the name: one of the copies a take-over weighs, should
    /// that node go down, and merged into the name's instance once this node hears
    /// where it runs (`settle_dead_copy`), unless that instance holds all of it.
    /// Told of an instance that this one stays over (as this node connects: see
    /// `registered`), a durable instance here waits for that one's state.
    pub(super) fn runs_on(&mut self, from: String, name: WorkerName, node: String, lineage: Lineage) {
        if node == self.me || self.connected(&node) || self.kinds.replicas(&name.kind) == 0 {
            return;
        }
        let Some(Slot::Running { id, handle, args, lineage: mine }) = self.local.get(&name) else { return };
        if !stays((lineage, &node), (*mine, &self.me)) {
            // This one stays over that one, which may have taken calls where this node
            // could not hear it: its state comes here to merge once its node hears this
            // one, and calls wait for it meanwhile, as for any rival's (at most
            // RIVAL_WAIT): taken first, a kind without a merge could drop them with this
            // state, should that one's have gone further.
            if !self.rival.contains_key(&name) {
                let id = *id;
                info!(
                    worker = %name, peer = %node, via = %from,
                    "{name} runs on {node} too (as {from} says), an instance that this one stays over, and this node does not hear {node}: \
                     calls wait for its state"
                );
                self.rival.insert(name.clone(), (node, id));
                self.out.push(Effect::SetTimer { after: RIVAL_WAIT, timer: Timer::RivalOver { name, id } });
            }
            return;
        }
        warn!(
            worker = %name, peer = %node, via = %from,
            "{name} runs on {node} too (as {from} says), an instance that stays over this one, and this node does not hear {node}: \
             stopping this one; its state is held here as a copy"
        );
        let (id, handle, args, mine) = (*id, handle.clone(), args.clone(), *mine);
        self.stale.insert(name.clone(), node.clone());
        self.local.insert(name.clone(), Slot::Stopping { id, args, lineage: mine, why: StopWhy::Stale { runner: node }, merges: Vec::new() });
        self.out.push(Effect::Stop { name, id, handle, reason: "duplicate".into(), moves: true });
    }

    /// `from` says `name` runs nowhere and this node owns it. A claim here that it runs
    /// on `from` itself is one kept behind it (see [`Table::unregistered`]): `from`
    /// knows better.
    pub(super) fn orphan_in(&mut self, from: String, name: WorkerName, args: Vec<u8>, lineage: Lineage) {
        self.stale.remove(&name);
        if self.directory.get(&name).is_some_and(|c| c.node == from) {
            self.directory.remove(&name);
            self.out.push(Effect::Changed);
        }
        let runs = self.local.contains_key(&name) || self.directory.get(&name).is_some_and(|c| self.connected(&c.node));
        if runs || self.orphans.contains_key(&name) {
            return;
        }
        self.orphans.insert(name, Orphan { args, lineage, told: None, grace: Grace::Unasked, held: None, ask: None });
        self.replan();
    }
}
