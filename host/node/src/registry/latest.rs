//! The latest copy takes a lost name over. Before a node starts a lost durable name
//! from the copy it holds, it asks the members that run the name's kind which copies
//! they hold ([`Msg::CopyAsk`]). A replica that missed copies (paused, or cut off, while
//! the name's node went on copying to others) holds an older state than theirs. Taken
//! over from it, the name would acknowledge updates on a state that lacks some it
//! acknowledged before; when the two histories meet, a worker without `resolve-conflict`
//! keeps one and drops the other's.
//!
//! Told of a later copy, this node gives way: it tells the members it holds none
//! ([`Msg::NoCopy`]), so that the holder of the later copy does not wait for it, and it
//! takes the name over from its own copy only should every such holder go down first. A
//! member that does not answer within [`ASK_WAIT`] (paused itself, cut off) is not
//! waited for.
//!
//! A member that still hears the node a copy came from (it says so: [`CopyAt::live`])
//! keeps the name from being taken over: that node may be alive, cut off from this one
//! only, or paused for less than the member's heartbeat timeout. This node asks again
//! after a while ([`ASK_AGAIN`]), until that member too finds the node down, or the
//! node connects here again and says what it runs.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tracing::{debug, info, warn};

use super::table::{Effect, Replica, Table, Timer};
use super::wire::{CopyAt, Msg};
use super::WorkerName;

/// How long a node waits for the members' answers before it takes a lost name over
/// from its copy. Well within [`REPLICA_GRACE`](super::table::REPLICA_GRACE), the
/// wait of an owner that holds no copy for a node that holds one.
pub const ASK_WAIT: Duration = Duration::from_millis(250);

/// How long a node waits before it asks again, when a member still hears the node a
/// copy came from (that node may be alive, or the member has not noticed it is down
/// yet): doubled each time, up to 16 times as long.
pub const ASK_AGAIN: Duration = Duration::from_millis(200);

/// After how many asks a member that still hears the node a copy came from no longer
/// keeps the name from being taken over (about 16 s of asking): that node is cut off
/// from this one and not from that member, and the name runs twice until the two
/// instances meet, as it would without the ask.
pub const MAX_ROUNDS: u32 = 8;

/// A lost name's question to the members ([`Orphan::ask`](super::table::Orphan::ask)).
#[derive(Debug, Clone, Default)]
pub struct Ask {
    /// Which ask this is (the first is 0): its [`Timer::AskOver`] carries it.
    pub round: u32,
    /// Whether this round's question went out.
    pub asked: bool,
    /// Members asked that have not answered yet.
    pub waiting: BTreeSet<String>,
    /// What each member that answered holds.
    pub told: BTreeMap<String, Vec<CopyAt>>,
    /// [`ASK_WAIT`] is over: the members that have not answered are not waited for.
    pub over: bool,
    /// A member still hears the node a copy came from: this node asks again after a
    /// while ([`ASK_AGAIN`]).
    pub again: bool,
    /// This node told the members it holds no copy: a member holds a later one.
    pub gave_way: bool,
    /// [`MAX_ROUNDS`] asks are over and a member still hears that node (logged once).
    pub heard_anyway: bool,
}

impl CopyAt {
    /// Whether this copy holds updates that `other` lacks: a later copy of the same
    /// instance, or a copy of another instance whose state went further (the rule that
    /// picks, of two instances that met, the one a worker without a merge keeps).
    pub fn later_than(&self, other: &CopyAt) -> bool {
        match (self.line, other.line) {
            (Some(a), Some(b)) if a == b => self.seq > other.seq,
            _ => matches!((self.height, other.height), (Some(a), Some(b)) if a > b),
        }
    }
}

impl<M: Clone + std::fmt::Debug, R: std::fmt::Debug> Table<M, R> {
    /// What copy `r` is, as this node tells a node that asks.
    pub(super) fn copy_at(&self, r: &Replica) -> CopyAt {
        CopyAt { line: r.line, seq: r.seq, height: r.height, live: self.copy_alive(r) }
    }

    /// Whether this node, about to take the lost `name` over from its copy `mine`, must
    /// wait first: for the members' answers (it asks them now if it has not), for a
    /// member that still hears the node a copy came from, or for a member that holds a
    /// later copy to take the name over.
    pub(super) fn ask_first(&mut self, name: &WorkerName, mine: CopyAt) -> bool {
        let members: BTreeSet<String> = self.members.keys().chain(self.leavers.keys()).filter(|m| self.runs_kind(m, &name.kind)).cloned().collect();
        let Some(orphan) = self.orphans.get_mut(name) else { return false };
        let ask = orphan.ask.get_or_insert_with(Ask::default);
        if !ask.asked {
            if members.is_empty() {
                return false;
            }
            debug!(worker = %name, round = ask.round, "asking {} members which copies of {name} they hold before taking it over from copy {}", members.len(), mine.seq);
            ask.asked = true;
            ask.waiting.clone_from(&members);
            let timer = Timer::AskOver { name: name.clone(), round: ask.round };
            for to in members {
                self.out.push(Effect::Send { to, msg: Msg::CopyAsk { name: name.clone() } });
            }
            self.out.push(Effect::SetTimer { after: ASK_WAIT, timer });
            return true;
        }
        ask.waiting.retain(|m| members.contains(m));
        if !ask.waiting.is_empty() && !ask.over {
            return true;
        }
        let told = || ask.told.iter().filter(|(m, _)| members.contains(*m));
        let heard = told().find(|(_, copies)| copies.iter().any(|c| c.live)).map(|(m, _)| m.clone());
        if let Some(peer) = heard.as_ref().filter(|_| ask.round < MAX_ROUNDS) {
            if !ask.again {
                ask.again = true;
                let after = ASK_AGAIN * (1 << ask.round.min(4));
                debug!(worker = %name, peer = %peer, "{peer} still hears the node that copied {name} to it: not taken over; asking again in {} ms", after.as_millis());
                self.out.push(Effect::SetTimer { after, timer: Timer::AskOver { name: name.clone(), round: ask.round } });
            }
            return true;
        }
        if let Some(peer) = heard {
            if !ask.heard_anyway {
                ask.heard_anyway = true;
                warn!(worker = %name, peer = %peer, "{peer} still hears the node that copied {name} to it after {MAX_ROUNDS} asks: taking it over all the same");
            }
        }
        let later = told().find_map(|(m, copies)| {
            let best = copies.iter().filter(|c| c.later_than(&mine)).max_by_key(|c| (c.height, c.seq))?;
            Some((m.clone(), *best))
        });
        let Some((peer, theirs)) = later else { return false };
        if !ask.gave_way {
            ask.gave_way = true;
            info!(
                worker = %name, peer = %peer,
                "{peer} holds a later copy of {name}'s state than this node (copy {} of height {:?}, this node's copy {} of height {:?}): \
                 this node does not take it over, and tells the members it holds none",
                theirs.seq, theirs.height, mine.seq, mine.height
            );
            self.tell_all(Msg::NoCopy { name: name.clone() });
        }
        true
    }

    /// `from` asks which copies of `name` this node holds.
    pub(super) fn copy_ask(&mut self, from: String, name: WorkerName) {
        let copies = self.replicas.get(&name).map(|rs| rs.iter().map(|r| self.copy_at(r)).collect()).unwrap_or_default();
        self.out.push(Effect::Send { to: from, msg: Msg::CopyHeld { name, copies } });
    }

    /// `from` holds these copies of `name` (the answer to this node's ask).
    pub(super) fn copy_held(&mut self, from: String, name: WorkerName, copies: Vec<CopyAt>) {
        let Some(ask) = self.orphans.get_mut(&name).and_then(|o| o.ask.as_mut()) else { return };
        if !ask.waiting.remove(&from) {
            return;
        }
        ask.told.insert(from, copies);
        if ask.waiting.is_empty() {
            self.replan();
        }
    }

    /// The ask of `name` that is `round`: its answers are not waited for longer, or (a
    /// member still heard the node a copy came from) it is time to ask again.
    pub(super) fn ask_over(&mut self, name: WorkerName, round: u32) {
        let Some(ask) = self.orphans.get_mut(&name).and_then(|o| o.ask.as_mut()).filter(|a| a.round == round) else { return };
        if ask.again {
            *ask = Ask { round: round + 1, ..Ask::default() };
        } else {
            ask.over = true;
            if !ask.waiting.is_empty() {
                info!(worker = %name, "no answer within {} ms from {:?} on the copies of {name} they hold: not waited for", ASK_WAIT.as_millis(), ask.waiting);
            }
        }
        self.replan();
    }
}

#[cfg(test)]
mod tests {
    use super::CopyAt;

    #[test]
    fn a_later_copy_is_one_further_along_its_line_or_from_a_state_that_went_further() {
        let at = |line, seq, height| CopyAt { line, seq, height, live: false };
        assert!(at(Some(1), 5, Some(3)).later_than(&at(Some(1), 4, Some(3))), "same line: the higher number");
        assert!(!at(Some(1), 4, Some(9)).later_than(&at(Some(1), 5, Some(3))), "same line: heights do not count");
        assert!(!at(Some(1), 5, None).later_than(&at(Some(1), 5, None)), "the same copy");
        assert!(at(Some(2), 1, Some(4)).later_than(&at(Some(1), 9, Some(3))), "other lines: the greater height");
        assert!(!at(Some(2), 9, Some(3)).later_than(&at(Some(1), 1, Some(3))), "other lines, equal heights: neither");
        assert!(!at(None, 9, Some(5)).later_than(&at(None, 1, None)), "a height unknown (a node before heights): neither");
    }
}
