//! Handoff: an instance's state goes to another node, acknowledged — when this node
//! leaves, when a member joins that owns the name, and when the instance loses to
//! another instance of its name (then it *yields*: its state merges into the one that
//! stays). The instance stops (`terminate` gives its state), the state goes to the
//! target in [`Msg::Handoff`] and stays here, in [`Slot::Moving`], until the target
//! acknowledges; a target that goes down or refuses meanwhile is replaced by the next
//! one. States that arrive for the name meanwhile ride along. Calls that arrive
//! meanwhile wait, then follow the name. No state is sent without an acknowledgement
//! that it arrived. Also: stops.

use std::collections::BTreeSet;

use tracing::{info, warn};

use super::origin::{self, Base, Keep, Origin};
use super::placement::{owner, stays, Lineage};
use super::replica::dead_copy_holds;
use super::table::{Claim, Deferred, Effect, Grace, Merge, Orphan, Replica, Rival, Slot, StartWhy, StopWhy, Table, Timer, MOVE_AGAIN};
use super::wire::Msg;
use super::WorkerName;

type States = Vec<Merge>;

impl<M: Clone + std::fmt::Debug, R: std::fmt::Debug> Table<M, R> {
    /// This node leaves: every instance moves to its next owner.
    pub(super) fn leave(&mut self) {
        self.leaving = true;
        // A node that leaves a cluster (not the last one) keeps what it cannot hand over
        // yet until a member connects: one cut off now may be back before its deadline,
        // and so may one that went down lately without saying it leaves (a partition
        // or a pause: this node may be the one cut off). When every peer left is leaving
        // too, there is nobody to wait for.
        self.wait_to_hand_over = !self.members.is_empty() || !self.leavers.is_empty() || !self.gone.is_empty();
        for name in self.running() {
            self.begin_move(&name);
        }
        // Names lost elsewhere that this node was to restart go to their next owner.
        self.replan();
        self.out.push(Effect::Changed);
    }

    /// Stops a running instance so that it moves on (see [`Table::stopped`]).
    pub(super) fn begin_move(&mut self, name: &WorkerName) {
        let Some(Slot::Running { id, handle, args, lineage }) = self.local.remove(name) else { return };
        let moves = self.handoff_target(name, "", &BTreeSet::new()).is_some();
        let reason = if moves { "handoff" } else { "shutdown" };
        self.local.insert(name.clone(), Slot::Stopping { id, args, lineage, why: StopWhy::Handoff { yielders: Vec::new(), rival: None }, merges: Vec::new() });
        self.out.push(Effect::Stop { name: name.clone(), id, handle, reason: reason.into(), moves });
    }

    /// Where a state for `name` goes: `prefer` (the instance it yields to), else the
    /// node that runs the name by the directory, else its next owner among the other
    /// members; never one that refused it or is not connected.
    fn handoff_target(&self, name: &WorkerName, prefer: &str, refused: &BTreeSet<String>) -> Option<String> {
        let ok = |n: &str| n != self.me && !refused.contains(n) && self.members.contains_key(n) && self.runs_kind(n, &name.kind);
        if ok(prefer) {
            return Some(prefer.to_string());
        }
        if let Some(c) = self.directory.get(name).filter(|c| ok(&c.node)) {
            return Some(c.node.clone());
        }
        if !self.leaving && self.owner_of(name) == self.me {
            return None;
        }
        owner(self.members.keys().map(String::as_str).filter(|m| ok(m)), name).map(str::to_string)
    }

    /// A stop asked with [`Effect::Stop`] is done, with the instance's final state.
    pub(super) fn stopped(&mut self, name: WorkerName, id: u64, state: Option<Vec<u8>>) {
        if !matches!(self.local.get(&name), Some(Slot::Stopping { id: sid, .. }) if *sid == id) {
            return;
        }
        let Some(Slot::Stopping { args, lineage, why, merges, .. }) = self.local.remove(&name) else { unreachable!() };
        self.out.push(Effect::Changed);
        // Which state this instance stopped with, and which it holds (see origin.rs).
        let base = self.bases.remove(&name).filter(|b| b.id == id).unwrap_or_else(|| Base::new(id, self.new_state_id(), None, None));
        let unchanged = base.unchanged(state.as_deref());
        let handing = base.handing(unchanged, self.new_state_id());
        let moving = |to: String, yielding: bool, yielders: Vec<String>| Slot::Moving {
            to,
            args: args.clone(),
            lineage,
            state: state.clone(),
            merges: merges.clone(),
            sent: 0,
            yielding,
            refused: BTreeSet::new(),
            yielders,
            origin: handing.clone(),
            passing: false,
        };
        match why {
            StopWhy::Handoff { yielders, rival: None } => {
                self.local.insert(name.clone(), moving(String::new(), false, yielders));
                self.send_handoff(name, None);
            }
            StopWhy::Handoff { yielders, rival: Some(r) } => {
                // Which of the two moves on, the other riding along to merge.
                let Rival { from, state: theirs, origin: their_origin } = *r;
                let (state, origin, rides) = match origin::keep_state(&base, unchanged, Some(&their_origin), Some(&theirs), state.as_deref()) {
                    // It holds all of theirs, and so all that theirs holds (as an instance
                    // here that goes on from its own takes the other's origin in).
                    Keep::Mine => (state, handing.holding(&their_origin), None),
                    Keep::Theirs => (Some(theirs), their_origin, None),
                    Keep::Both if origin::goes_on_from_mine(&base, Some(&their_origin), true) => {
                        let rides = Merge { from, state: theirs, origin: Some(their_origin) };
                        (state, handing, Some(rides))
                    }
                    Keep::Both => {
                        let rides = state.map(|s| Merge { from: self.me.clone(), state: s, origin: Some(handing) });
                        (Some(theirs), their_origin, rides)
                    }
                };
                let mut merges = merges;
                merges.extend(rides);
                let slot = Slot::Moving {
                    to: String::new(),
                    args,
                    lineage,
                    state,
                    merges,
                    sent: 0,
                    yielding: false,
                    refused: BTreeSet::new(),
                    yielders,
                    origin,
                    passing: false,
                };
                self.local.insert(name.clone(), slot);
                self.send_handoff(name, None);
            }
            StopWhy::Stale { .. } if merges.is_empty() && state.is_some() => {
                // Held as a copy this node sent itself: a dead one (it never connects to
                // itself), of this instance's line, as far as it went.
                let seq = self.copied.remove(&name).map_or(0, |(seq, _)| seq);
                let (line, height, holds) = (Some(base.line), Some(base.reached()), Some(base.holds()));
                let state = state.expect("matched above");
                self.tell_all(Msg::Unregistered { name: name.clone(), went: None });
                let me = self.me.clone();
                let copies = self.replicas.entry(name.clone()).or_default();
                copies.retain(|r| r.from != me);
                copies.push(Replica { from: me, args: args.clone(), lineage, seq, state, holders: Vec::new(), line, height, holds, conn: None });
                self.moved.remove(&name);
                // Heard of again while it stopped (the word that clears `stale`), this
                // node would wait for another word that may never come: the state goes
                // where the name runs now, or, told it runs nowhere, starts it again.
                if !self.stale.contains_key(&name) {
                    self.settle_held_stale(name, args, lineage);
                }
            }
            // A stale instance that took states to merge meanwhile (or has none) hands
            // them on as a duplicate's.
            StopWhy::Duplicate { winner } | StopWhy::Stale { runner: winner } => {
                self.local.insert(name.clone(), moving(winner, true, Vec::new()));
                self.send_handoff(name, None);
            }
            StopWhy::Replaced { from, args: new_args, lineage: new_lineage, state: handed, merges: handed_merges, origin: theirs, mine_stays } => {
                // The replicas of this instance hold copies the next one does not go on
                // from (it copies to its own, from its first state): should they stay, one
                // could take the name over from a stale copy when this node goes down.
                self.drop_copies(&name);
                // The name starts here again from the handed-over state, this one's state
                // merged in; or from the one of the two that holds all the other does.
                let mut all = handed_merges;
                let (start, origin, other) = match origin::keep_state(&base, unchanged, theirs.as_ref(), handed.as_deref(), state.as_deref()) {
                    Keep::Mine => {
                        info!(worker = %name, peer = %from, "{name}: this instance holds all of the state {from} handed over; it goes on from its own");
                        (state, Some(handing), theirs)
                    }
                    Keep::Theirs => {
                        info!(worker = %name, peer = %from, "{name}: the state {from} handed over holds all of this instance's; it goes on from that one");
                        (handed, theirs, Some(handing))
                    }
                    // Both went on from what they share: the one that went further is the
                    // one the name goes on from, the other merged into it (a worker
                    // without a merge keeps that one alone).
                    Keep::Both if origin::goes_on_from_mine(&base, theirs.as_ref(), mine_stays) => {
                        let (mine, other) = (base.reached(), theirs.as_ref().and_then(|o| o.height));
                        info!(
                            worker = %name, peer = %from,
                            "{name}: this instance and the state {from} handed over each went on from what they share; it goes on from its own \
                             ({mine} changes copied, the other {}), and the other merges into it",
                            other.map_or("unknown".to_string(), |h| h.to_string())
                        );
                        all.extend(handed.map(|s| Merge { from: from.clone(), state: s, origin: theirs.clone() }));
                        (state, Some(handing), theirs)
                    }
                    Keep::Both => {
                        all.extend(state.map(|s| Merge { from: self.me.clone(), state: s, origin: Some(handing.clone()) }));
                        (handed, theirs, Some(handing))
                    }
                };
                all.extend(merges);
                self.spawn(name.clone(), new_args, new_lineage, StartWhy::Handoff { from }, start, all, origin);
                if let Some(b) = self.bases.get_mut(&name) {
                    b.absorb(other.as_ref());
                }
            }
            StopWhy::Asked(reply) => {
                self.tell_all(Msg::Unregistered { name, went: None });
                self.out.push(Effect::StopDone { reply, stopped: true });
            }
        }
    }

    /// Sends a `Moving` name's states to their next target, `failed` (down or refusing)
    /// excluded. With nobody to send to: a node that stays runs it again itself, from
    /// its own state; a leaving node keeps the states and waits for a member to come up
    /// (until its deadline), unless it was alone when it began to leave.
    pub(super) fn send_handoff(&mut self, name: WorkerName, failed: Option<String>) {
        let Some(Slot::Moving { to, refused, sent, .. }) = self.local.get_mut(&name) else { return };
        if let Some(f) = failed {
            refused.insert(f);
        }
        *sent = 0;
        let (prefer, refused) = (to.clone(), refused.clone());
        let target = self.handoff_target(&name, &prefer, &refused);
        let Some(Slot::Moving { to, args, lineage, state, merges, sent, yielding, origin, .. }) = self.local.get_mut(&name) else { unreachable!() };
        match target {
            Some(t) => {
                *to = t.clone();
                *sent = merges.len();
                let msg = Msg::Handoff {
                    name,
                    args: args.clone(),
                    lineage: *lineage,
                    state: state.clone(),
                    merges: merges.iter().map(|m| (m.from.clone(), m.state.clone())).collect(),
                    yielding: *yielding,
                    // Which state it is: none when the state went before (these are
                    // states that rode along since), else the receiver would count
                    // that state as held by what it starts from these alone.
                    origin: state.is_some().then(|| origin.clone()),
                    merge_origins: merges.iter().map(|m| m.origin.clone()).collect(),
                };
                self.out.push(Effect::Send { to: t, msg });
            }
            None if !self.leaving => {
                // Nobody else can take it: it runs here again, from its own state.
                let Some(Slot::Moving { args, lineage, state, merges, yielders, origin, .. }) = self.local.remove(&name) else { unreachable!() };
                let origin = state.is_some().then_some(origin);
                self.spawn(name.clone(), args, lineage, StartWhy::Adopted, state, merges, origin);
                // It stays a while before it tries its owner again.
                if self.came_back.insert(name.clone()) {
                    self.out.push(Effect::SetTimer { after: MOVE_AGAIN, timer: Timer::MoveAgain { name: name.clone() } });
                }
                // The yielders hear once it has merged their states here.
                if let Some(Slot::Starting { acks, .. }) = self.local.get_mut(&name) {
                    let at = Some(self.me.clone());
                    acks.extend(yielders.into_iter().map(|y| (y, Msg::HandoffAck { name: name.clone(), at: at.clone() })));
                }
            }
            // Cut off (every peer gone, none of them leaving): one may be back in time.
            None if self.wait_to_hand_over && self.leavers.is_empty() => {
                warn!(worker = %name, "no other node to hand {name} to now; keeping its state until one connects");
                to.clear();
            }
            None => {
                warn!(worker = %name, "no other node to hand {name} to; stopped (its state is lost)");
                if let Some(Slot::Moving { yielders, .. }) = self.local.remove(&name) {
                    // Refused: they keep their states and hand them on.
                    for y in yielders {
                        self.out.push(Effect::Send { to: y, msg: Msg::HandoffAck { name: name.clone(), at: None } });
                    }
                }
                self.tell_all(Msg::Unregistered { name: name.clone(), went: None });
                self.out.push(Effect::Lost { name });
                self.out.push(Effect::Changed);
            }
        }
    }

    /// The state this node's stale instance of `name` stopped with, held here as a copy,
    /// once the node it ran on no longer says so (see `runs_on`): it goes where the name
    /// runs now, or, with the name running nowhere this node hears, the name is lost
    /// and planned again (this node starts it from that state, or its owner's ask
    /// finds the state here).
    pub(super) fn settle_held_stale(&mut self, name: WorkerName, args: Vec<u8>, lineage: Lineage) {
        if !self.settle_dead_copy(&name, None) {
            self.orphans.entry(name).or_insert(Orphan { args, lineage, told: None, grace: Grace::Unasked, held: None, ask: None });
            self.replan();
        }
    }

    /// `from` hands `name` over to this node (see [`Msg::Handoff`]). Accepted unless this
    /// node is leaving or cannot run the kind: the states never go back.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn handoff_in(
        &mut self,
        from: String,
        name: WorkerName,
        args: Vec<u8>,
        lineage: Lineage,
        state: Option<Vec<u8>>,
        merges: States,
        yielding: bool,
        theirs: Option<Origin>,
    ) {
        // The state the instance here may wait for (see `Table::rival`).
        self.rival_done(&name, &from);
        if self.leaving || !self.kinds.has_kind(&name.kind) {
            self.out.push(Effect::Send { to: from, msg: Msg::HandoffAck { name, at: None } });
            return;
        }
        if let Some(Slot::Starting { id, .. }) = self.local.get(&name) {
            let base = self.bases.get(&name).filter(|b| b.id == *id);
            if base.is_some_and(|b| origin::related(b, theirs.as_ref()) || origin::further(b, theirs.as_ref())) {
                // One of the two may hold all of the other, or the name go on from the
                // handed state: decided once this one runs.
                let d = Deferred { from, args, lineage, state, merges, yielding, origin: theirs };
                self.deferred.entry(name).or_default().push(d);
                return;
            }
        }
        // A copy `from` sent of this name is superseded by the state it hands over now
        // (and must not merge into it again when `from` goes).
        self.take_copy(&name, &from);
        let merges = self.unheld(&name, &from, merges);
        let ack = |at: &str| Msg::HandoffAck { name: name.clone(), at: Some(at.to_string()) };
        // States passing through here to the instance on `from`, which hands the name here
        // meanwhile: the two cross, and each would refuse the other's. The name starts
        // here from the handed state, the passing ones merged in, and their senders hear
        // once it runs.
        if matches!(self.local.get(&name), Some(Slot::Moving { passing: true, to, .. }) if *to == from) {
            let Some(Slot::Moving { state: held, merges: held_merges, yielders, origin: held_origin, .. }) = self.local.remove(&name) else { unreachable!() };
            info!(worker = %name, peer = %from, "{from} hands {name} here as the states passing through here go to it: it starts here, with them");
            // The passing state reached `from` before it stopped and rides along with its
            // own (a durable sender's answer waits for that): it is in `merges` already.
            let me = self.me.clone();
            let carried = |s: &Vec<u8>| merges.iter().any(|m| m.from == me && m.state == *s);
            let held = held.filter(|s| !carried(s));
            let held_merges: States = held_merges.into_iter().filter(|m| !carried(&m.state)).collect();
            let mut all = merges.clone();
            all.extend(held_merges);
            // A state that holds all of the other is the one it starts from, the other
            // left out (merged, it would be held twice); else the passing one merges in.
            // Held by id, or, for a copy left as it was, by its line and number (a dead
            // copy, or a take-over that changed nothing).
            let mut merged = None;
            let (state, theirs) = match (held, theirs) {
                (Some(_), Some(o)) if o.holds_all_of(&held_origin) => (state, Some(o)),
                (Some(h), Some(o)) if state.is_some() && held_origin.holds_all_of(&o) => (Some(h), Some(held_origin)),
                (held, theirs) => {
                    merged = held.clone().map(|h| (held_origin.clone(), h));
                    // From the node that handed it here; a dead instance's copy has
                    // none, and goes as this node's, as it went to `from`.
                    let by = yielders.first().cloned().unwrap_or_else(|| me.clone());
                    all.extend(held.map(|state| Merge { from: by, state, origin: Some(held_origin) }));
                    (state, theirs)
                }
            };
            self.spawn(name.clone(), args, lineage.moved(), StartWhy::Handoff { from }, state, all, theirs);
            // The instance holds all of the passing state: should its sender, whose
            // answer a partition or a pause cuts off, hand it over again, it adds
            // nothing (seed 121464). The spawn took in its origin with the merges;
            // this records its bytes too (`Base::merged`), as for a state merged alone.
            if let (Some((o, h)), Some(b)) = (merged, self.bases.get_mut(&name)) {
                b.absorb_alone(Some(&o), &h);
            }
            if let Some(Slot::Starting { acks, .. }) = self.local.get_mut(&name) {
                let at = Some(self.me.clone());
                acks.extend(yielders.into_iter().map(|y| (y, Msg::HandoffAck { name: name.clone(), at: at.clone() })));
            }
            return;
        }
        let mut states: States = state.clone().map(|s| Merge { from: from.clone(), state: s, origin: theirs.clone() }).into_iter().collect();
        states.extend(merges.iter().cloned());
        match self.local.remove(&name) {
            // Acknowledged once it has started (a failed start sends the states back).
            None => {
                // Copies held here from instances of the name whose nodes are gone may
                // hold updates the handed state lacks (it can be a stale duplicate's):
                // they merge into it, unless it holds all of them.
                let (mut merges, mut state, mut theirs, mut lineage) = (merges, state, theirs, lineage);
                for node in self.dead_copies(&name) {
                    let r = self.take_copy(&name, &node).expect("listed above");
                    // Unless it holds all of the handed state (its instance went on from
                    // it): then it is the state the name goes on from, in that one's place.
                    // Merged into the older one instead, a worker without a merge would
                    // keep that one, and drop what the copy's instance acknowledged since.
                    if state.is_some() && theirs.as_ref().is_some_and(|o| dead_copy_holds(&r, o)) {
                        info!(worker = %name, peer = %from, "{node} went down with an instance of {name} whose copy here holds all of the state {from} handed over: the name goes on from the copy");
                        let fresh = self.dead_copy_origin(&r);
                        theirs = theirs.map(|o| fresh.holding(&o));
                        state = Some(r.state);
                        // It holds all of the handed state: it ranks as that one does, at least.
                        lineage = r.lineage.better(lineage);
                        continue;
                    }
                    if !self.handed_holds(theirs.as_ref(), lineage, &r) {
                        merges.push(Merge::bare(node, r.state));
                    }
                }
                // The name runs on another member (the sender's instance is a stale one:
                // it was taken over while its node was paused or cut off): the states go
                // to that instance, as if the sender had handed them there, and the
                // sender hears once it has them. Started here, they would be a second
                // instance, taking calls on a history the other does not hold until the
                // two meet, and a kind without a merge would drop one of the two.
                let runner =
                    self.directory.get(&name).map(|c| c.node.clone()).filter(|n| *n != from && self.members.contains_key(n) && self.runs_kind(n, &name.kind));
                if let (Some(to), Some(origin)) = (runner, theirs.clone()) {
                    info!(worker = %name, peer = %from, "{name} runs on {to}: the state {from} handed over goes there");
                    // Never back to the sender, which is leaving or stopped it.
                    let refused = BTreeSet::from([from.clone()]);
                    let moving =
                        Slot::Moving { to: to.clone(), args, lineage, state, merges, sent: 0, yielding, refused, yielders: vec![from], origin, passing: true };
                    self.local.insert(name.clone(), moving);
                    self.send_handoff(name, None);
                    return;
                }
                self.spawn(name, args, lineage.moved(), StartWhy::Handoff { from }, state, merges, theirs)
            }
            Some(Slot::Running { id, handle, args: my_args, lineage: mine }) => {
                // A yielding sender decided on what it knew of this node's instance; this
                // node knows better: one restarted empty more often than the yielder's
                // is replaced by it all the same (the two states still merge).
                let replace = if yielding { lineage.restarts < mine.restarts } else { stays((lineage.moved(), &from), (mine, &self.me)) };
                let base = self.bases.get(&name).filter(|b| b.id == id);
                let (holds_theirs, related) = base
                    .map(|b| {
                        let holds = origin::keep_state(b, None, theirs.as_ref(), state.as_deref(), None) == Keep::Mine;
                        (holds, origin::related(b, theirs.as_ref()) || origin::further(b, theirs.as_ref()))
                    })
                    .unwrap_or_default();
                if !replace && holds_theirs {
                    // This instance holds all of the handed state already: it adds nothing.
                    info!(worker = %name, peer = %from, "{name} runs here and holds all of the state {from} handed over; nothing to merge");
                    states = merges.clone();
                } else if replace || related {
                    // The handed-over instance stays: this one stops and merges into it. So
                    // too when the handed state went on from the one this instance started
                    // from (this one's final state tells whether it went on as well), or
                    // went further than this one: the name goes on from the one that
                    // went further (`goes_on_from_mine`).
                    let (args, lineage) = if replace { (args, lineage.moved()) } else { (my_args.clone(), mine) };
                    let why = StopWhy::Replaced { from, args, lineage, state, merges, origin: theirs, mine_stays: !replace };
                    self.local.insert(name.clone(), Slot::Stopping { id, args: my_args, lineage: mine, why, merges: Vec::new() });
                    self.out.push(Effect::Stop { name, id, handle, reason: "replaced".into(), moves: true });
                    return;
                } else {
                    info!(worker = %name, peer = %from, "{name} runs here: the state {from} handed over merges into it");
                    if let Some(b) = self.bases.get_mut(&name).filter(|b| b.id == id) {
                        match (&state, merges.is_empty()) {
                            (Some(s), true) => b.absorb_alone(theirs.as_ref(), s),
                            _ => b.absorb(theirs.as_ref()),
                        }
                    }
                }
                self.local.insert(name.clone(), Slot::Running { id, handle: handle.clone(), args: my_args, lineage: mine });
                let answer = (from.clone(), ack(&self.me));
                self.merge_then_ack(&name, &handle, states, vec![answer]);
                // The sender's instance is gone: this one is the name's, and may move on.
                if self.directory.get(&name).is_some_and(|c| c.node == from) {
                    self.directory.remove(&name);
                }
                self.place(&name);
            }
            Some(Slot::Stopping { id, args: my_args, lineage: mine, why: StopWhy::Duplicate { .. }, merges: mine_merges }) => {
                // It was stopping in favour of an instance that has now been handed here:
                // the handed one starts here once this stop is done, and absorbs this state.
                let why = StopWhy::Replaced { from, args, lineage: lineage.moved(), state, merges, origin: theirs, mine_stays: false };
                self.local.insert(name, Slot::Stopping { id, args: my_args, lineage: mine, why, merges: mine_merges });
            }
            Some(mut slot @ (Slot::Starting { .. } | Slot::Stopping { why: StopWhy::Handoff { .. }, .. })) => {
                // The states ride along with this node's instance: merged once it has
                // started, or sent on with its own state when it moves. The instance
                // that ends up with them is the sender's successor, and its lineage says
                // so: else the sender's announcement, late at a third node, could win
                // that node's directory over it (and a name run nowhere once it dies).
                // A durable kind's sender drops its state on the answer: it waits until
                // the state is safe. A state this instance holds all of adds nothing.
                let sid = match &slot {
                    Slot::Starting { id, .. } | Slot::Stopping { id, .. } => Some(*id),
                    _ => None,
                };
                let base = self.bases.get(&name).filter(|b| Some(b.id) == sid);
                if base.is_some_and(|b| origin::keep_state(b, None, theirs.as_ref(), state.as_deref(), None) == Keep::Mine) {
                    info!(worker = %name, peer = %from, "{name} holds all of the state {from} handed over; nothing to merge");
                    states = merges.clone();
                }
                // Stopping to move on, and the handed state went further, or went on from
                // what this one holds (it may hold all of this one's, should this one have
                // changed nothing since: seed 130914): which of the two moves on is decided
                // on this one's final state (`Rival`).
                let mut rival = None;
                if let (Slot::Stopping { why: StopWhy::Handoff { rival: None, .. }, .. }, Some(s), Some(o)) = (&slot, &state, &theirs) {
                    if base.is_some_and(|b| origin::related(b, Some(o)) || origin::further(b, Some(o))) {
                        rival = Some(Box::new(Rival { from: from.clone(), state: s.clone(), origin: o.clone() }));
                        states = merges.clone();
                    }
                }
                let wait = self.kinds.replicas(&name.kind) > 0 && !states.is_empty();
                // The handed state merges alone (see `Base::merged`).
                let alone = state.as_deref().filter(|_| merges.is_empty() && states.len() == 1);
                let mut answer = Some((from, ack(&self.me)));
                match &mut slot {
                    Slot::Starting { id, merges, lineage: mine, acks, .. } => {
                        if let Some(b) = self.bases.get_mut(&name).filter(|b| b.id == *id) {
                            match alone {
                                Some(s) => b.absorb_alone(theirs.as_ref(), s),
                                None => b.absorb(theirs.as_ref()),
                            }
                            // And what rode along with it, once merged: handed again
                            // meanwhile, it adds nothing.
                            for m in &states {
                                b.absorb(m.origin.as_ref());
                            }
                        }
                        // Answered once the merged state is copied.
                        if wait {
                            acks.extend(answer.take());
                        }
                        merges.extend(states);
                        *mine = mine.absorbing(lineage);
                    }
                    Slot::Stopping { merges, lineage: mine, why: StopWhy::Handoff { yielders, rival: r }, .. } => {
                        // Answered once the handoff that carries the states on is.
                        if wait || rival.is_some() {
                            yielders.extend(answer.take().map(|(to, _)| to));
                        }
                        merges.extend(states);
                        if rival.is_some() {
                            *r = rival;
                        }
                        *mine = mine.absorbing(lineage);
                    }
                    _ => unreachable!("matched above"),
                }
                self.local.insert(name.clone(), slot);
                if let Some((to, msg)) = answer {
                    self.out.push(Effect::Send { to, msg });
                }
            }
            Some(slot) => {
                // Moving away, or ending: refused, so the sender tries elsewhere (two nodes
                // handing a name to each other would pass its states back and forth).
                self.local.insert(name.clone(), slot);
                self.out.push(Effect::Send { to: from, msg: Msg::HandoffAck { name, at: None } });
            }
        }
    }

    /// `states`, handed to the instance of `name` here by `from`, without those it holds
    /// all of already: one that came here before, riding along with another's handoff,
    /// and is handed again by a sender whose answer was cut off. Merged again, a worker
    /// whose merge appends would hold it twice.
    fn unheld(&self, name: &WorkerName, from: &str, states: States) -> States {
        let id = match self.local.get(name) {
            Some(Slot::Running { id, .. } | Slot::Starting { id, .. } | Slot::Stopping { id, .. }) => *id,
            _ => return states,
        };
        let Some(base) = self.bases.get(name).filter(|b| b.id == id) else { return states };
        let (held, rest): (States, States) =
            states.into_iter().partition(|m| m.origin.is_some() && origin::keep_state(base, None, m.origin.as_ref(), Some(&m.state), None) == Keep::Mine);
        for m in held {
            info!(worker = %name, peer = %from, "{name} holds all of the state from {} that {from} passed on; nothing to merge", m.from);
        }
        rest
    }

    /// `from` answered a handoff of `name`: it runs at `at` now, or `from` refused.
    pub(super) fn handoff_ack(&mut self, from: String, name: WorkerName, at: Option<String>) {
        let Some(Slot::Moving { to, .. }) = self.local.get_mut(&name) else { return };
        if *to != from {
            return;
        }
        let Some(at) = at else {
            self.send_handoff(name, Some(from));
            return;
        };
        // The states that yielded to this instance went with it (they came before it
        // stopped, so in the first handoff): their senders hear where they are now.
        let Some(Slot::Moving { yielders, .. }) = self.local.get_mut(&name) else { unreachable!() };
        for y in std::mem::take(yielders) {
            self.out.push(Effect::Send { to: y, msg: Msg::HandoffAck { name: name.clone(), at: Some(at.clone()) } });
        }
        let Some(Slot::Moving { merges, sent, .. }) = self.local.get_mut(&name) else { unreachable!() };
        if merges.len() > *sent {
            // States that arrived after the handoff went: after it, acknowledged too.
            let rest: States = merges.split_off(*sent);
            *merges = rest;
            let Some(Slot::Moving { state, yielding, .. }) = self.local.get_mut(&name) else { unreachable!() };
            *state = None;
            *yielding = true;
            self.send_handoff(name, None);
            return;
        }
        let Some(Slot::Moving { state, yielding, args, lineage, .. }) = self.local.remove(&name) else { unreachable!() };
        let size = state.as_ref().map(|s| s.len()).unwrap_or(0);
        // It runs there now, whether or not that node's announcement arrives before it
        // goes down: should it, the name is lost with it, and restarted. A node this one
        // does not hear (`from` passed the states on to it across a partition this node
        // is on the other side of): as far as this side can tell, the name runs behind
        // `from`, and is restarted here should `from` go down, as on any partition.
        let via = if self.connected(&at) { at.clone() } else { from.clone() };
        if !self.directory.contains_key(&name) {
            let conn = self.members.get(&via).or(self.leavers.get(&via)).copied().unwrap_or(0);
            self.directory.insert(name.clone(), Claim { node: via.clone(), conn, args, lineage: lineage.moved() });
        }
        if yielding {
            info!(worker = %name, peer = %at, "{name}: this instance's state went to the one on {at}");
            self.tell_all(Msg::Unregistered { name: name.clone(), went: Some(at.clone()) });
        } else {
            crate::metrics::global().handed_off();
            info!(worker = %name, peer = %at, "moved {name} to {at} (handoff {})", human_bytes(size));
        }
        self.drop_copies(&name);
        self.moved.insert(name, via);
        self.out.push(Effect::Changed);
    }

    /// A stop request: the instance ends after `terminate(reason)`; its state is dropped.
    pub(super) fn stop(&mut self, name: WorkerName, reason: String, reply: R) {
        let Some(Slot::Running { id, handle, args, lineage }) = self.local.remove(&name) else {
            self.out.push(Effect::StopDone { reply, stopped: false });
            return;
        };
        self.local.insert(name.clone(), Slot::Stopping { id, args, lineage, why: StopWhy::Asked(reply), merges: Vec::new() });
        self.out.push(Effect::Stop { name, id, handle, reason, moves: false });
    }
}

fn human_bytes(n: usize) -> String {
    if n < 1024 {
        format!("{n} B")
    } else {
        format!("{:.1} KiB", n as f64 / 1024.0)
    }
}
