//! The invariants checked at the end of a run, once the network is healed and the
//! membership stable.

use super::*;

impl Sim {
    pub(super) fn check(&mut self) {
        let live = self.live_nodes();
        // Membership stable: every pair of live nodes connected, both ways.
        for &a in &live {
            let l = self.nodes[a].as_ref().unwrap();
            for &b in live.iter().filter(|b| **b != a) {
                if !l.view.contains_key(&b) {
                    self.violations.push(format!("membership did not settle: n{a} is not connected to n{b}"));
                } else if !l.members.members().contains_key(&self.names[b]) {
                    self.violations.push(format!("n{a} is connected to n{b} but does not count it as a member"));
                }
            }
            let mut members: Vec<String> = l.table.placing().map(str::to_string).collect();
            members.sort();
            let mut want: Vec<String> = live.iter().map(|n| self.names[*n].clone()).collect();
            want.sort();
            if members != want {
                self.violations.push(format!("n{a} places names on {members:?}, the live nodes are {want:?}"));
            }
        }
        if !self.violations.is_empty() {
            return;
        }
        let live_names: Vec<&str> = live.iter().map(|n| self.names[*n].as_str()).collect();
        let mut instances: BTreeMap<&WorkerName, Vec<&Instance>> = BTreeMap::new();
        for i in self.insts.values().filter(|i| !i.stopping) {
            instances.entry(&i.name).or_default().push(i);
        }
        let mut found = Vec::new();
        for name in &self.worker_names {
            let here = instances.get(name).map(Vec::as_slice).unwrap_or_default();
            let want = if self.started.contains(name) && !self.forgotten.contains(name) { 1..=1 } else { 0..=1 };
            if !want.contains(&here.len()) {
                let on: Vec<String> = here.iter().map(|i| format!("n{}", i.node)).collect();
                found.push(format!("{name} runs {} times (on {on:?}); expected {want:?}", here.len()));
                continue;
            }
            let Some(inst) = here.first() else { continue };
            let owner = owner(live_names.iter().copied(), name).unwrap();
            if self.names[inst.node] != owner {
                found.push(format!("{name} runs on n{}, its owner is {owner}", inst.node));
            }
            let value: u64 = inst.counts.values().sum();
            let calls = self.calls.iter().filter(|c| c.name == *name);
            let (mut acked, mut attempted) = (0u64, 0u64);
            for c in calls {
                attempted += 1;
                if matches!(c.done, Some((_, CallResult::Ok))) {
                    acked += 1;
                }
            }
            if value > attempted {
                found.push(format!("{name} counts {value}, more than the {attempted} increments attempted (doubled)"));
            }
            if !self.tainted.contains(name) && value < acked {
                let mut by_inst: BTreeMap<Inst, u64> = BTreeMap::new();
                for c in self.calls.iter().filter(|c| c.name == *name && matches!(c.done, Some((_, CallResult::Ok)))) {
                    *by_inst.entry(c.applied.unwrap_or(0)).or_insert(0) += 1;
                }
                found.push(format!(
                    "{name} counts {value} of {acked} acknowledged increments (lost {}): acknowledged by instance {by_inst:?}, counted {:?}",
                    acked - value,
                    inst.counts
                ));
            }
        }
        for (i, c) in self.calls.iter().enumerate() {
            if c.done.is_none() {
                found.push(format!("call {i} to {} never answered", c.name));
            }
        }
        self.violations.extend(found);
    }
}
