//! Durable kinds: an instance's state copied to its replicas in rounds, calls answered
//! once their copy is held, and what waited for a copy released.

use super::*;

impl Sim {
    /// Copies the state of `inst` on `n` again (members changed, a merge): now, or after
    /// the copy in flight.
    pub(super) fn copy_again(&mut self, n: Node, inst: Inst) {
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
    pub(super) fn start_round(&mut self, n: Node, inst: Inst, then: Pending) {
        let Some(i) = self.insts.get(&inst) else { return };
        let name = i.name.clone();
        let state = encode(&i.counts);
        let plan = self.nodes[n]
            .as_ref()
            .unwrap()
            .table
            .replication_of(&name, self.replicas)
            .and_then(|r| i.rep.plan(&r.targets, &state).map(|(seq, sends)| (r, seq, sends)));
        let Some((Replication { targets, args, lineage, line, start, holds }, seq, sends)) = plan else {
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
        let changes = self.insts[&inst].rep.changes_with(&state);
        let height = Some(start + changes);
        for (to, update) in sends {
            let copy = Replicate { name: name.clone(), args: args.clone(), lineage, seq, update, holders: holders.clone(), line, height, holds: holds.clone() };
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
    pub(super) fn copy_answered(&mut self, n: Node, m: Node, inst: Inst, seq: u64, held: bool) {
        let m_name = self.names[m].clone();
        let Some(i) = self.insts.get_mut(&inst) else { return };
        let name = i.name.clone();
        let Some(round) = i.round.as_mut().filter(|r| r.seq == seq && r.waiting.contains(&m)) else { return };
        if !held {
            // A delta from a copy it does not hold: the whole state.
            let full = Update::Full(round.state.clone());
            let holders = round.sent.iter().map(|(t, _)| t.clone()).collect();
            let Some(Replication { args, lineage, line, start, holds, .. }) = self.nodes[n].as_ref().unwrap().table.replication_of(&name, self.replicas) else {
                return;
            };
            let height = Some(start + i.rep.changes_with(&round.state));
            let copy = Replicate { name, args, lineage, seq, update: full, holders, line, height, holds };
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
    pub(super) fn finish_round(&mut self, n: Node, inst: Inst) {
        let Some(i) = self.insts.get_mut(&inst) else { return };
        let Some(round) = i.round.take() else { return };
        let name = i.name.clone();
        // As the driver does: the table learns which replicas hold the copy (the ones it
        // tells to drop theirs once the instance leaves).
        let changes = i.rep.changes_with(&round.state);
        let line = self.nodes[n].as_ref().and_then(|l| l.table.replication_of(&name, self.replicas)).and_then(|r| r.line);
        if let Some(l) = self.nodes[n].as_mut() {
            l.table.copied(&name, round.seq, round.acked.clone());
            l.table.went_on(&name, line, changes);
        }
        let Some(i) = self.insts.get_mut(&inst) else { return };
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
    pub(super) fn advance(&mut self, n: Node, inst: Inst) {
        let settling = self.settling(n);
        let Some(i) = self.insts.get_mut(&inst) else { return };
        if i.round.is_some() {
            return;
        }
        if settling {
            // As the driver's instance on a node settling after a pause: it takes no
            // call; a stop (its name runs elsewhere now) goes ahead of them.
            if let Some((name, id, moves)) = i.stop.take() {
                self.stop_instance(n, inst, name, id, moves);
            }
            return;
        }
        if let Some(next) = i.queue.pop_front() {
            match next {
                Pending::Queued { call, to } => {
                    if self.apply_call(inst, call) == CallResult::Ok {
                        self.start_round(n, inst, Pending::Reply { call, to });
                    }
                }
                other => self.start_round(n, inst, other),
            }
        } else if let Some((name, id, moves)) = i.stop.take() {
            self.stop_instance(n, inst, name, id, moves);
        } else if std::mem::take(&mut i.dirty) {
            self.start_round(n, inst, Pending::Nothing);
        }
    }

    /// Whether the durable instances on `n` take no call now: it woke from a pause and
    /// its peers have not all said where their names run (`Table::settling`).
    pub(super) fn settling(&self, n: Node) -> bool {
        self.replicas > 0 && self.nodes[n].as_ref().is_some_and(|l| l.table.settling())
    }

    /// The instance stops (`terminate`): its state goes back to its table.
    /// The calls still queued for it follow the name when the stop `moves` it on (the
    /// driver's `Registry::forward_queued`): each is routed again where it waits, once
    /// the table has changed. Else their callers hear nothing (they time out).
    pub(super) fn stop_instance(&mut self, n: Node, inst: Inst, name: WorkerName, id: u64, moves: bool) {
        let removed = self.insts.remove(&inst);
        let state = removed.as_ref().map(|i| encode(&i.counts));
        self.log(|| format!("n{n} instance {inst} of {name} stops"));
        if let (true, Some(i), Some(live)) = (moves, removed, self.nodes[n].as_mut()) {
            for p in i.queue.into_iter().chain(i.follow) {
                match p {
                    Pending::Queued { call, to: ReplyTo::Local } => live.parked.push(Parked::Caller(call)),
                    Pending::Queued { call, to: ReplyTo::Remote { from, conn, hop } } => live.parked.push(Parked::Callee { call, hop, from, conn }),
                    _ => {}
                }
            }
        }
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
            Pending::Tell(acks) => {
                for (to, msg) in acks {
                    if let Some(m) = self.node_ix(&to) {
                        self.send_to(n, m, Wire::Msg(msg));
                    }
                }
            }
        }
    }
}
