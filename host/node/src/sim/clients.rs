//! Clients' calls, followed hop by hop to the instance that answers them.

use super::*;

impl Sim {
    pub(super) fn client(&mut self) {
        let now = self.now;
        let ready: Vec<Node> = self
            .live_nodes()
            .into_iter()
            .filter(|n| self.running(*n))
            .filter(|n| self.nodes[*n].as_ref().is_some_and(|l| !l.leaving && now >= l.booted + 300 && l.table.synced()))
            // A node that just woke from a pause serves alone until its peers are back,
            // acknowledging what no replica took (docs/durability.md, "Not there yet"):
            // a kind that keeps one state then loses one side's updates, whatever the
            // host does. Its clients wait that out.
            .filter(|n| !self.keeps_one || self.nodes[*n].as_ref().and_then(|l| l.woke).is_none_or(|w| now >= w + WOKE_ALONE))
            .collect();
        if ready.is_empty() {
            return;
        }
        let at = ready[self.rng.below(ready.len() as u64) as usize];
        let name = self.worker_names[self.rng.below(self.worker_names.len() as u64) as usize].clone();
        if !self.started.contains(&name) || self.rng.chance(5) {
            let req = self.new_req(Requester::Client(name.clone()));
            self.feed(at, Event::Start { name, args: Vec::new(), here: false, reply: req });
        } else {
            let c = self.calls.len();
            self.calls.push(Call {
                name,
                origin: at,
                deadline: self.now + CALL_TIMEOUT,
                hops: 0,
                awaiting: None,
                replied: BTreeSet::new(),
                applied: None,
                must_find: !self.hard_fault,
                done: None,
            });
            self.after(CALL_TIMEOUT, Ev::CallTimeout(c));
            let name = self.calls[c].name.clone();
            self.log(|| format!("n{at} client call {c} to {name}"));
            self.call_step(at, c, None);
        }
    }

    /// The caller's loop (the driver's `call_routed`): where to send the call next.
    pub(super) fn call_step(&mut self, n: Node, c: usize, next: Option<Node>) {
        if self.calls[c].done.is_some() {
            return;
        }
        let to = match next {
            Some(m) if m != n => m,
            _ => {
                let name = self.calls[c].name.clone();
                let route = self.nodes[n].as_ref().unwrap().table.route(&name, None);
                match route {
                    Route::Here(inst) => {
                        if let Some(r) = self.call_instance(n, inst, c, ReplyTo::Local) {
                            self.finish_call(c, r);
                        }
                        return;
                    }
                    Route::Remote(node) => self.node_ix(&node).expect("a known node"),
                    Route::Wait => {
                        self.nodes[n].as_mut().unwrap().parked.push(Parked::Caller(c));
                        return;
                    }
                    Route::NotFound | Route::Activate => {
                        self.finish_call(c, CallResult::NotFound);
                        return;
                    }
                }
            }
        };
        self.calls[c].hops += 1;
        if self.calls[c].hops > MAX_HOPS {
            self.finish_call(c, CallResult::Failed);
            return;
        }
        let conn = self.nodes[n].as_ref().unwrap().view.get(&to).copied();
        let name = self.calls[c].name.clone();
        match conn {
            Some(conn) if self.send_to(n, to, Wire::CallReq { call: c, hop: self.calls[c].hops, name }) => self.calls[c].awaiting = Some((to, conn)),
            _ => {
                self.log(|| format!("n{n} has no connection to n{to} for call {c}"));
                self.finish_call(c, CallResult::Failed)
            }
        }
    }

    /// The callee's side (the driver's answer to `Rpc::Call`).
    pub(super) fn serve_call(&mut self, n: Node, c: usize, hop: u32, from: Node, conn: u64, name: WorkerName) {
        let route = self.nodes[n].as_ref().unwrap().table.route(&name, Some(&self.names[from]));
        let result = match route {
            Route::Here(inst) => match self.call_instance(n, inst, c, ReplyTo::Remote { from, conn, hop }) {
                Some(r) => r,
                // Answered once its state is copied.
                None => return,
            },
            Route::Remote(node) => CallResult::Moved(self.node_ix(&node).expect("a known node")),
            Route::Wait => {
                if self.now < self.calls[c].deadline {
                    self.nodes[n].as_mut().unwrap().parked.push(Parked::Callee { call: c, hop, from, conn });
                }
                return;
            }
            Route::NotFound | Route::Activate => CallResult::NotFound,
        };
        if self.nodes[n].as_ref().unwrap().view.get(&from) == Some(&conn) {
            self.send_wire(n, from, conn, Wire::CallRep { call: c, hop, result });
        }
    }

    /// A call reaches instance `inst` on `n`: applied and answered now (`Some`), or, for
    /// a durable kind, answered once the state it made is copied (queued behind a copy
    /// in flight, as a mailbox would hold it).
    fn call_instance(&mut self, n: Node, inst: Inst, c: usize, to: ReplyTo) -> Option<CallResult> {
        if self.replicas == 0 {
            return Some(self.apply_call(inst, c));
        }
        let settling = self.settling(n);
        let busy = match self.insts.get(&inst) {
            Some(i) if !i.stopping => i.round.is_some() || settling,
            _ => return Some(CallResult::Failed),
        };
        if busy {
            self.insts.get_mut(&inst).unwrap().queue.push_back(Pending::Queued { call: c, to });
            return None;
        }
        self.apply_call(inst, c);
        self.start_round(n, inst, Pending::Reply { call: c, to });
        None
    }
}
