//! The simulated connection layer: one FIFO connection per pair with a fresh id on
//! every reconnect, dials that fail or connect, connections noticed gone, and the
//! membership's state machine fed with what happens to them.

use super::*;

impl Sim {
    pub(super) fn break_conn(&mut self, a: Node, b: Node, jitter: u64, reason: DownReason) {
        let Some(conn) = self.conns.remove(&pair(a, b)) else { return };
        for (x, y) in [(a, b), (b, a)] {
            let d = self.rng.range(0, jitter);
            self.after(d, Ev::ConnDown { node: x, peer: y, conn, reason: reason.clone() });
        }
    }

    pub(super) fn conn_down(&mut self, node: Node, peer: Node, conn: u64, reason: DownReason) {
        let Some(live) = self.nodes[node].as_mut() else { return };
        if live.view.get(&peer) != Some(&conn) {
            return;
        }
        live.view.remove(&peer);
        // A reset or timeout breaks the connection both ways.
        if self.conns.get(&pair(node, peer)) == Some(&conn) {
            self.conns.remove(&pair(node, peer));
            let d = self.rng.range(0, 3);
            self.after(d, Ev::ConnDown { node: peer, peer: node, conn, reason: DownReason::ConnectionClosed });
        }
        self.log(|| format!("n{node} sees conn {conn} to n{peer} gone ({reason})"));
        let orderly = reason == DownReason::Left;
        self.member_input(node, Input::Disconnected { node: self.names[peer].clone(), conn, reason });
        // Calls waiting for an answer on that connection get none.
        let waiting: Vec<usize> =
            self.calls.iter().enumerate().filter(|(_, c)| c.done.is_none() && c.origin == node && c.awaiting == Some((peer, conn))).map(|(i, _)| i).collect();
        for c in waiting {
            self.calls[c].awaiting = None;
            // Only an orderly close tells that the call was not handled there (the
            // driver's `call_routed`).
            if orderly {
                self.call_step(node, c, None);
            } else {
                self.finish_call(c, CallResult::Failed);
            }
        }
        // Copies waiting for that peer: it is not counted.
        let waiting: Vec<Inst> =
            self.insts.iter().filter(|(_, i)| i.node == node && i.round.as_ref().is_some_and(|r| r.waiting.contains(&peer))).map(|(id, _)| *id).collect();
        for inst in waiting {
            let round = self.insts.get_mut(&inst).unwrap().round.as_mut().unwrap();
            round.waiting.remove(&peer);
            if round.waiting.is_empty() {
                self.finish_round(node, inst);
            }
        }
        // Starts forwarded on it are answered as failed.
        let pending: Vec<Req> = self
            .reqs
            .iter()
            .filter(|(_, r)| matches!(r, Requester::Forwarded { origin, conn: c, .. } if *origin == peer && *c == conn))
            .map(|(k, _)| *k)
            .collect();
        for r in pending {
            self.reqs.remove(&r);
        }
    }

    /// `a`'s membership asked to dial `b`: the connection layer connects, or the dial
    /// fails as a real one would, and either way the membership hears how it ended.
    fn dial(&mut self, a: Node, b: Node) {
        let life = self.lives[a];
        let (result, after) = if !self.alive(b) {
            (DialResult::Failed { error: "connection refused".into(), refused: false }, self.rng.range(1, 5))
        } else if self.cut.contains(&pair(a, b)) || !self.running(b) {
            (DialResult::Failed { error: "timed out".into(), refused: false }, CONNECT_TIMEOUT)
        } else if self.nodes[b].as_ref().unwrap().leaving {
            (DialResult::Failed { error: "handshake failed: refused: this node is leaving".into(), refused: true }, self.rng.range(1, 5))
        } else if self.conns.contains_key(&pair(a, b)) {
            // The other direction's connection came up first (simultaneous connect).
            (DialResult::Busy, self.rng.range(1, 5))
        } else if self.nodes[b].as_ref().unwrap().view.contains_key(&a) {
            // `b` has not noticed yet that its previous connection to `a` is gone.
            (DialResult::Failed { error: "handshake failed: refused: name in use".into(), refused: true }, self.rng.range(1, 5))
        } else {
            let conn = self.next_conn;
            self.next_conn += 1;
            self.conns.insert(pair(a, b), conn);
            self.log(|| format!("n{a} -> n{b}: connected, conn {conn}"));
            for (x, y) in [(a, b), (b, a)] {
                self.nodes[x].as_mut().unwrap().view.insert(y, conn);
            }
            // Each side hears of the connection before anything else on it (as `dist`
            // reports a connection's up before its frames and its down).
            for (x, y) in [(a, b), (b, a)] {
                let since_ms = self.now;
                self.member_input(x, Input::Connected { node: self.names[y].clone(), conn, since_ms });
            }
            (DialResult::Connected, 0)
        };
        self.after(after, Ev::Dialled { node: a, life, peer: b, result });
    }

    /// Feeds `n`'s membership and carries out what it decides.
    pub(super) fn member_input(&mut self, n: Node, input: Input) {
        let Some(live) = self.nodes[n].as_mut() else { return };
        if let Some(t) = &mut self.trace {
            if !matches!(input, Input::Tick { .. }) {
                t.push(format!("{:>6} ms  n{n} membership {input:?}", self.now));
            }
        }
        let outputs = live.members.handle(input);
        for output in outputs {
            if let Some(t) = &mut self.trace {
                t.push(format!("{:>6} ms  n{n}   membership output {output:?}", self.now));
            }
            match output {
                Output::Changed(change) => {
                    if let Some(event) = Event::member(&change) {
                        self.feed(n, event);
                    }
                }
                Output::Gossip(names) => {
                    let peers: Vec<(Node, u64)> = self.nodes[n].as_ref().map(|l| l.view.iter().map(|(p, c)| (*p, *c)).collect()).unwrap_or_default();
                    for (p, conn) in peers {
                        self.send_wire(n, p, conn, Wire::Members(names.clone()));
                    }
                }
                Output::Dial(name) => {
                    let b = self.node_ix(&name).expect("discovery lists only simulated nodes");
                    self.dial(n, b);
                }
                Output::Unreachable { .. } => {}
            }
        }
    }

    /// Sends on `from`'s connection `conn` to `to`, in order behind what it sent before.
    pub(super) fn send_wire(&mut self, from: Node, to: Node, conn: u64, what: Wire) {
        if self.cut.contains(&pair(from, to)) {
            self.held.entry((from, to)).or_default().push((conn, what));
            return;
        }
        let delay = if self.rng.chance(5) { self.rng.range(5, 40) } else { self.rng.range(1, 4) };
        let clock = self.link_clock.entry((from, to)).or_insert(0);
        let t = (self.now + delay).max(*clock);
        *clock = t;
        self.at(t, Ev::Deliver { from, to, conn, what });
    }

    pub(super) fn send_to(&mut self, from: Node, to: Node, what: Wire) -> bool {
        // As far as the sender knows, the connection is up: what it sends on one the
        // peer already closed is lost, and the sender learns of the close soon after.
        let Some(conn) = self.nodes[from].as_ref().and_then(|l| l.view.get(&to)).copied() else { return false };
        self.send_wire(from, to, conn, what);
        true
    }

    pub(super) fn deliver(&mut self, from: Node, to: Node, conn: u64, what: Wire) {
        if self.cut.contains(&pair(from, to)) {
            self.held.entry((from, to)).or_default().push((conn, what));
            return;
        }
        if self.nodes[to].as_ref().is_none_or(|l| l.view.get(&from) != Some(&conn)) {
            return;
        }
        self.log(|| format!("n{to} <- n{from}: {what:?}"));
        match what {
            Wire::Msg(msg) => self.feed(to, Event::Received { from: self.names[from].clone(), msg }),
            Wire::Leaving => self.member_input(to, Input::Leaving { node: self.names[from].clone(), conn }),
            // A leaver's orderly close, behind everything it sent (the driver's last
            // `Leaving` and the stream's end).
            Wire::Close => self.conn_down(to, from, conn, DownReason::Left),
            Wire::Members(names) => self.member_input(to, Input::Gossip { from: self.names[from].clone(), names }),
            Wire::StartReq { req, name, args } => {
                let local = self.new_req(Requester::Forwarded { origin: from, conn, req });
                self.feed(to, Event::Start { name, args, here: true, reply: local });
            }
            Wire::StartRep { req, result } => self.start_answered(to, req, result),
            Wire::CallReq { call, hop, name } => self.serve_call(to, call, hop, from, conn, name),
            Wire::Replicate { inst, copy, ride } => {
                let seq = copy.seq;
                let from_name = self.names[from].clone();
                let table = &mut self.nodes[to].as_mut().unwrap().table;
                let was_settling = table.settling();
                let held = table.replica_in(&from_name, *copy).is_ok();
                // What the copy called for (a dead copy it settles), at once, as the
                // driver does.
                let effects = table.take_effects();
                self.carry_out(to, effects, was_settling, false);
                self.send_wire(to, from, conn, Wire::ReplicateRep { inst, seq, held });
                if let Some((call, hop)) = ride.filter(|_| held) {
                    self.deliver(from, to, conn, Wire::CallRep { call, hop, result: CallResult::Ok });
                }
            }
            Wire::ReplicateRep { inst, seq, held } => self.copy_answered(to, from, inst, seq, held),
            Wire::CallRep { call, hop, result } => {
                if !self.calls[call].replied.insert(hop) {
                    self.violations.push(format!("call {call} to {} got a second reply from n{from}", self.calls[call].name));
                }
                if self.calls[call].done.is_some() || self.calls[call].awaiting != Some((from, conn)) {
                    return;
                }
                self.calls[call].awaiting = None;
                match result {
                    CallResult::Moved(m) => self.call_step(to, call, Some(m)),
                    r => self.finish_call(call, r),
                }
            }
        }
    }
}
