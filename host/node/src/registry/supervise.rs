//! Supervision: members coming up, leaving and going down, and what that does to
//! names. A name whose node went down becomes an orphan on every node that knew it,
//! until an instance of it is announced again; each membership change re-plans every
//! orphan, so a restart whose planned owner died meanwhile is planned again.

use tracing::info;

use super::table::{Effect, Grace, Orphan, Slot, StartWhy, Table, Timer, LEAVER_GRACE, REPLICA_GRACE};
use super::wire::Msg;
use super::Restart;

impl<M: Clone + std::fmt::Debug, R: std::fmt::Debug> Table<M, R> {
    pub(super) fn member_up(&mut self, node: String, conn: u64) {
        self.leavers.remove(&node);
        self.members.insert(node.clone(), conn);
        // It tells this node its names again on this connection.
        self.synced.remove(&node);
        for (name, slot) in &self.local {
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
        // Names a leaving node had nobody to hand to go to the newcomer (or its owner).
        let waiting: Vec<_> = self.local.iter().filter(|(_, s)| matches!(s, Slot::Moving { to, .. } if to.is_empty())).map(|(n, _)| n.clone()).collect();
        for name in waiting {
            self.send_handoff(name, None);
        }
        self.out.push(Effect::Changed);
    }

    /// With rebalancing on, moves a running instance to its owner when the owner is
    /// another member that does not run it too (two instances meeting are a duplicate,
    /// resolved first, not a move).
    pub(super) fn place(&mut self, name: &super::WorkerName) {
        if matches!(self.local.get(name), Some(Slot::Running { .. })) {
            self.place_running(name);
        }
    }

    /// [`place`](Self::place) for an instance known to be running here (it has just
    /// started: no second search of `local`).
    pub(super) fn place_running(&mut self, name: &super::WorkerName) {
        if !self.kinds.rebalance_on_join() || self.leaving {
            return;
        }
        let owner = self.owner_of(name);
        if owner != self.me && self.directory.get(name).is_none_or(|c| c.node != owner) {
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
        self.members.remove(node);
        self.leavers.remove(node);
        self.synced.remove(node);
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
            self.orphans.insert(name, Orphan { args: claim.args, lineage: claim.lineage, told: None, grace: Grace::Unasked });
        }
        // Copies it sent of names that run here too (two instances since a partition or
        // a pause): its instance is gone, its state merges into the one here.
        let merging: Vec<_> = self.replicas.iter().filter(|(n, r)| r.from == node && self.local.contains_key(*n)).map(|(n, _)| n.clone()).collect();
        for name in merging {
            let r = self.replicas.remove(&name).expect("listed above");
            info!(worker = %name, peer = %node, "{node} went down with an instance of {name} that runs here too: its copied state merges into this one");
            match self.local.get_mut(&name).expect("listed above") {
                Slot::Running { handle, .. } => {
                    let handle = handle.clone();
                    self.out.push(Effect::Merge { name, handle, from: node.to_string(), state: r.state });
                }
                Slot::Starting { merges, .. } | Slot::Stopping { merges, .. } | Slot::Moving { merges, .. } => merges.push((node.to_string(), r.state)),
            }
        }
        // Copies it sent of names that run on another node now: from an instance that
        // continued its line there (taken over from a copy, or handed over), nothing to
        // do; from a duplicate (both sides of a partition ran the name), its state goes
        // to that instance to merge, as a duplicate that stops would send it.
        let elsewhere: Vec<_> = self
            .replicas
            .iter()
            .filter(|(n, r)| r.from == node && !self.local.contains_key(*n))
            .filter_map(|(n, r)| {
                self.directory.get(n).filter(|c| c.node != node && self.connected(&c.node)).map(|c| (n.clone(), c.node.clone(), c.lineage != r.lineage.moved()))
            })
            .collect();
        for (name, at, duplicate) in elsewhere {
            let r = self.replicas.remove(&name).expect("listed above");
            if duplicate {
                info!(worker = %name, peer = %node, "{node} went down with a duplicate instance of {name}: its copied state goes to the one on {at} to merge");
                let slot = Slot::Moving {
                    to: at,
                    args: r.args,
                    lineage: r.lineage,
                    state: Some(r.state),
                    merges: Vec::new(),
                    sent: 0,
                    yielding: true,
                    refused: Default::default(),
                };
                self.local.insert(name.clone(), slot);
                self.send_handoff(name, None);
            }
        }
        // Durable names it ran that this node holds a copy of, should its announcement
        // not have arrived: lost too.
        let copied: Vec<_> = self.replicas.iter().filter(|(n, r)| r.from == node && !self.orphans.contains_key(*n)).map(|(n, _)| n.clone()).collect();
        for name in copied {
            if self.local.contains_key(&name) || self.directory.get(&name).is_some_and(|c| c.node != node) {
                continue;
            }
            let r = &self.replicas[&name];
            self.orphans.insert(name, Orphan { args: r.args.clone(), lineage: r.lineage, told: None, grace: Grace::Unasked });
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

    /// Plans every orphan again: restarted here when this node owns it now; else its
    /// owner is told once (it may have joined after the name was lost).
    pub(super) fn replan(&mut self) {
        let names: Vec<_> = self.orphans.keys().cloned().collect();
        for name in names {
            let runs = self.local.contains_key(&name) || self.directory.get(&name).is_some_and(|c| self.connected(&c.node));
            if runs {
                self.orphans.remove(&name);
                continue;
            }
            let owner = self.owner_of(&name).to_string();
            if owner == self.me && self.leaving {
                // Leaving, with nobody left to own it: nothing to restart it on.
                continue;
            }
            // A copy of its state held here, from the node that lost it: this node starts
            // it from that when it owns it now, or when the owner holds no copy (it joined
            // since the last one) and this node is the first live holder.
            let copy = self.replicas.get(&name).filter(|r| !self.connected(&r.from));
            let takes_over = copy.is_some_and(|r| {
                owner == self.me || (!r.holders.iter().any(|h| h == &owner) && r.holders.iter().find(|h| *h == &self.me || self.connected(h)) == Some(&self.me))
            });
            if takes_over && !self.leaving {
                let r = self.replicas.remove(&name).expect("found above");
                self.spawn(name, r.args, r.lineage.moved(), StartWhy::Failover, Some(r.state), Vec::new());
                continue;
            }
            let durable = self.kinds.replicas(&name.kind) > 0;
            let orphan = self.orphans.get_mut(&name).expect("listed above");
            if owner == self.me && durable && orphan.grace != Grace::Over {
                // A node that holds a copy may start it (this one joined since the last
                // copy went out): that beats an empty start, which waits for it.
                if orphan.grace == Grace::Unasked {
                    orphan.grace = Grace::Waiting;
                    self.out.push(Effect::SetTimer { after: REPLICA_GRACE, timer: Timer::ReplicaGrace { name } });
                }
            } else if owner == self.me {
                let (args, lineage) = (orphan.args.clone(), orphan.lineage.restarted());
                self.spawn(name, args, lineage, StartWhy::Restart, None, Vec::new());
            } else if orphan.told.as_deref() != Some(owner.as_str()) {
                orphan.told = Some(owner.clone());
                let msg = Msg::Orphan { name, args: orphan.args.clone(), lineage: orphan.lineage };
                self.out.push(Effect::Send { to: owner, msg });
            }
        }
    }
}
