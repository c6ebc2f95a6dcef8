//! Each node's registry table (the real state machine) fed its events, and its effects
//! carried out on the simulated network and instances.

use super::*;

impl Sim {
    pub(super) fn new_req(&mut self, r: Requester) -> Req {
        let id = self.next_req;
        self.next_req += 1;
        self.reqs.insert(id, r);
        id
    }

    // ---- the state machine and its effects ----

    pub(super) fn feed(&mut self, n: Node, event: Event<Inst, Req>) {
        let Some(live) = self.nodes[n].as_mut() else { return };
        if let Some(t) = &mut self.trace {
            t.push(format!("{:>6} ms  n{n} event {event:?}", self.now));
        }
        let member_event = matches!(event, Event::MemberUp { .. } | Event::MemberDown { .. } | Event::MemberLeaving { .. });
        let was_settling = live.table.settling();
        let effects = live.table.handle(event);
        self.carry_out(n, effects, was_settling, member_event);
    }

    /// Carries out `effects`, which node `n`'s table called for (`was_settling`: it was
    /// settling before; `member_event`: its members changed).
    pub(super) fn carry_out(&mut self, n: Node, effects: Vec<Effect<Inst, Req>>, was_settling: bool, member_event: bool) {
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
                    if self.keeps_one && state.is_none() && self.started.contains(&name) {
                        // Restarted empty (no copy within its grace: the nodes holding
                        // one were paused or gone) while a copy may live on: two
                        // histories, of which a kind that keeps one state keeps one.
                        self.tainted.insert(name.clone());
                    }
                    let inst = self.next_inst;
                    self.next_inst += 1;
                    let mut counts = state.as_deref().map(decode).unwrap_or_default();
                    for (_, s) in &merges {
                        let other = decode(s);
                        self.check_shared(n, &name, &counts, &other);
                        merge(&mut counts, &other, self.keeps_one);
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
                        follow: Vec::new(),
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
                Effect::Stop { name, id, handle, reason, moves } => {
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
                    let settling = self.settling(n);
                    match self.insts.get_mut(&handle) {
                        // The stop waits in the mailbox behind the copy in flight, as the
                        // driver's instance handles one message at a time, and behind what
                        // is queued there. One that moves the name on goes ahead of the
                        // calls after the last thing the host queued itself (a merge's
                        // answers), as the driver's `Mailbox::send_ahead` puts it, and those
                        // calls follow the name. While the node settles after a pause, any
                        // stop goes ahead of every call (they wait, and it does not).
                        Some(i) => {
                            if moves {
                                let cut = i.queue.iter().rposition(|p| !matches!(p, Pending::Queued { .. })).map_or(0, |k| k + 1);
                                i.follow.extend(i.queue.drain(cut..));
                            }
                            if i.round.is_some() || (!i.queue.is_empty() && !settling) {
                                i.stop = Some((name, id, moves));
                            } else {
                                self.stop_instance(n, handle, name, id, moves);
                            }
                        }
                        None => self.stop_instance(n, handle, name, id, moves),
                    }
                }
                Effect::Merge { name, handle, state, acks, .. } => match self.insts.get_mut(&handle) {
                    Some(i) if !i.stopping => {
                        let other = decode(&state);
                        let into = i.counts.clone();
                        self.check_shared(n, &name, &into, &other);
                        let keeps_one = self.keeps_one;
                        let Some(i) = self.insts.get_mut(&handle) else { unreachable!() };
                        merge(&mut i.counts, &other, keeps_one);
                        match acks {
                            acks if acks.is_empty() => self.copy_again(n, handle),
                            // Behind the copy in flight (which lacks the merge): the next
                            // copy carries it, and the answers go once that is held.
                            acks if i.round.is_some() => i.queue.push_back(Pending::Tell(acks)),
                            acks => self.start_round(n, handle, Pending::Tell(acks)),
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
        if was_settling && !self.settling(n) && self.replicas > 0 {
            // Settled: the calls that waited are taken now.
            let here: Vec<Inst> = self.insts.iter().filter(|(_, i)| i.node == n).map(|(id, _)| *id).collect();
            for inst in here {
                self.advance(n, inst);
            }
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

    /// A state merging into an instance when one of the two holds all of the other's
    /// counts (and they share some): the merge adds nothing, and a worker whose merge
    /// appends (an order's items) would hold the shared part twice. Two instances
    /// started from one handed-over state meet so (a handoff that went on to the next
    /// node, its first target only paused); the table knows them by their states'
    /// origins. Not for durable kinds: a copy that merges shares the history of the
    /// instance it was copied from, by design (docs/durability.md).
    fn check_shared(&mut self, n: Node, name: &WorkerName, into: &BTreeMap<u64, u64>, other: &BTreeMap<u64, u64>) {
        let holds = |a: &BTreeMap<u64, u64>, b: &BTreeMap<u64, u64>| b.iter().all(|(k, v)| a.get(k).is_some_and(|w| w >= v));
        let shared = other.iter().find(|(k, v)| **v > 0 && into.get(*k).is_some_and(|w| *w > 0));
        if let Some((k, v)) = shared.filter(|_| self.replicas == 0 && (holds(into, other) || holds(other, into))) {
            let w = into[k];
            self.violations
                .push(format!("n{n}: a state of {name} merged into an instance when one of the two held all of the other (instance {k}: {v} and {w})"));
        }
    }

    pub(super) fn start_answered(&mut self, n: Node, req: Req, result: Result<String, StartError>) {
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
}
