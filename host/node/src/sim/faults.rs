//! The faults a run injects, drawn from its seed: kills (kill -9), pauses (SIGSTOP; one
//! in four with a SIGTERM that came meanwhile, handled at the wake),
//! partitions, graceful leaves (SIGTERM) and joins, within what the run may lose.

use super::*;

impl Sim {
    pub(super) fn live_nodes(&self) -> Vec<Node> {
        (0..self.nodes.len()).filter(|n| self.alive(*n)).collect()
    }

    pub(super) fn fault(&mut self) {
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
                // One pause in four gets a SIGTERM meanwhile (a pod evicted from a frozen
                // machine), handled as it wakes: it leaves then, and counts as a leave
                // from there. Drawn apart from the generator, so that the runs of seeds
                // none of whose pauses draw it stay as they were.
                let term = steady.len() >= 2 && Rng(self.seed ^ self.now.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ n as u64).next().is_multiple_of(4);
                self.failures.push(self.now + d + if term { LEAVE_DEADLINE.min(2 * KILL_WINDOW) } else { KILL_WINDOW });
                self.log(|| format!("n{n} paused (SIGSTOP) for {d} ms{}", if term { ", a SIGTERM comes meanwhile" } else { "" }));
                let live = self.nodes[n].as_mut().unwrap();
                live.paused_until = Some(self.now + d);
                live.term_at_wake = term;
                self.after(d, Ev::Wake(n, d));
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
    /// of a name besides its instance: each process missing counts as a failure too. So
    /// does one that is back but not yet connected to every running node, or for less
    /// than [`KILL_WINDOW`] since it came back: it holds no copies until it is a member
    /// and they have reached it (a kill of two others then is three failures).
    fn may_fail(&self, count: usize) -> bool {
        if self.replicas == 0 {
            return true;
        }
        let current = self.failures.iter().filter(|end| **end > self.now).count();
        let processes = self.nodes.iter().filter(|n| n.is_some()).count();
        let running: Vec<Node> = (0..self.nodes.len()).filter(|n| self.running(*n)).collect();
        let joining = running
            .iter()
            .filter(|n| {
                let live = self.nodes[**n].as_ref().expect("running");
                (live.booted > 0 && self.now < live.booted + KILL_WINDOW) || running.iter().any(|m| m != *n && !live.view.contains_key(m))
            })
            .count();
        current + joining + count <= self.replicas.min(processes.saturating_sub(1))
    }

    pub(super) fn kill(&mut self, n: Node) {
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

    pub(super) fn leave(&mut self, n: Node) {
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
    pub(super) fn finish_leave(&mut self, n: Node) {
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
}
