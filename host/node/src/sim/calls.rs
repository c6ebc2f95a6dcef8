//! A call applied to an instance, its result recorded, and calls parked at a node
//! retried.

use super::*;

impl Sim {
    /// Call `c` reaches instance `inst`: counted, unless the instance is stopping. A
    /// call is sent to one instance at a time, so one applied twice is a violation.
    pub(super) fn apply_call(&mut self, inst: Inst, c: usize) -> CallResult {
        match self.insts.get_mut(&inst) {
            Some(i) if !i.stopping => {
                *i.counts.entry(inst).or_insert(0) += 1;
                self.log(|| format!("call {c} applied by instance {inst}"));
                if let Some(before) = self.calls[c].applied.replace(inst) {
                    self.violations.push(format!("call {c} to {} applied twice, by instances {before} and {inst}", self.calls[c].name));
                }
                CallResult::Ok
            }
            _ => CallResult::Failed,
        }
    }

    pub(super) fn finish_call(&mut self, c: usize, r: CallResult) {
        self.log(|| format!("call {c} answered: {r:?}"));
        let call = &mut self.calls[c];
        if call.done.is_some() {
            return;
        }
        if self.now > call.deadline {
            self.violations.push(format!("call {c} to {} answered {} ms past its deadline", call.name, self.now - call.deadline));
        }
        // A name whose state was dropped (the last node left with nobody to hand it to)
        // is not expected to answer.
        if r != CallResult::Ok && call.must_find && !self.hard_fault && !self.tainted.contains(&call.name) {
            self.violations.push(format!("call {c} to {} answered {r:?}, with only graceful leaves and joins so far", call.name));
        }
        call.done = Some((self.now, r));
    }

    pub(super) fn retry_parked(&mut self, n: Node) {
        let parked = std::mem::take(&mut self.nodes[n].as_mut().unwrap().parked);
        for p in parked {
            match p {
                Parked::Caller(c) => self.call_step(n, c, None),
                Parked::Callee { call, hop, from, conn } => {
                    if self.now < self.calls[call].deadline && self.calls[call].done.is_none() {
                        let name = self.calls[call].name.clone();
                        self.serve_call(n, call, hop, from, conn, name);
                    }
                }
            }
            if self.nodes[n].is_none() {
                return;
            }
        }
    }
}
