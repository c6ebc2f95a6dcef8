//! Placement: which member owns a name. Pure functions of the member set and the name.
//!
//! A name's owner is the member with the highest rendezvous score (FNV-1a of
//! `member ‖ name`, finalized), ties to the smaller member name: every node that sees
//! the same members agrees, and a member joining or leaving moves only the names it
//! wins or held.

use serde::{Deserialize, Serialize};

use super::WorkerName;

/// The member that owns `name`: highest rendezvous score, ties to the smaller name.
pub fn owner<'a>(members: impl IntoIterator<Item = &'a str>, name: &WorkerName) -> Option<&'a str> {
    members.into_iter().max_by_key(|m| (score(m, name), std::cmp::Reverse(*m)))
}

/// `members` from the name's owner down, by the same scores: the owner first, then the
/// nodes that would own it next, in order (a durable name's replicas).
pub fn ranked<'a>(members: impl IntoIterator<Item = &'a str>, name: &WorkerName) -> Vec<&'a str> {
    let mut all: Vec<(u64, &str)> = members.into_iter().map(|m| (score(m, name), m)).collect();
    all.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    all.into_iter().map(|(_, m)| m).collect()
}

fn score(member: &str, name: &WorkerName) -> u64 {
    // The bytes of `member \0 kind/key`, as when names were strings.
    hash(member.bytes().chain([0u8]).chain(name.kind.bytes()).chain([b'/']).chain(name.key.bytes()))
}

/// FNV-1a, finalized with splitmix64 so similar inputs spread: stable across builds and
/// platforms, so mixed versions agree on owners.
fn hash(bytes: impl Iterator<Item = u8>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Where an instance comes from: how often its line of instances was restarted without
/// state (a node went down under it), how often it moved with its state (handoffs,
/// failovers), and how much of the previous instance's state it started from.
/// Every instance announces its lineage with its name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lineage {
    pub restarts: u32,
    pub moves: u32,
    /// Started from a replica's copy of the previous instance's state (a failover): that
    /// copy's number. The previous instance may have gone on after it, cut off or paused
    /// while this one started: its later copies hold updates this one lacks, and merge
    /// into it; copies up to this number hold nothing it lacks. [`u64::MAX`] when the
    /// whole state was handed over (a handoff), 0 when none was.
    pub from_copy: u64,
}

impl Lineage {
    /// The lineage of an instance restarted without state after this one was lost.
    pub fn restarted(self) -> Lineage {
        Lineage { restarts: self.restarts.saturating_add(1), moves: self.moves.saturating_add(1), from_copy: 0 }
    }

    /// The lineage of an instance started from this one's whole state (handed over).
    pub fn moved(self) -> Lineage {
        Lineage { restarts: self.restarts, moves: self.moves.saturating_add(1), from_copy: u64::MAX }
    }

    /// The lineage of an instance started from copy `seq` of this one's state, which a
    /// replica held when this one's node went down.
    pub fn failed_over(self, seq: u64) -> Lineage {
        Lineage { restarts: self.restarts, moves: self.moves.saturating_add(1), from_copy: seq }
    }

    /// Whether an instance of this lineage holds everything copy `seq` of an instance of
    /// `line` held: it was started from that copy or a later one of that instance (or
    /// from its whole state). A copy it does not hold all of merges into it.
    pub fn continues(self, line: Lineage, seq: u64) -> bool {
        self.restarts == line.restarts && line.moves.checked_add(1) == Some(self.moves) && seq <= self.from_copy
    }

    /// The lineage of an instance that absorbed `handed`'s state through a handoff (it
    /// was starting or moving here when that state arrived): the later end of that
    /// handoff, unless its own line ranks better still. Announced, it beats the sender's
    /// announcement wherever the two meet, whatever order they arrive in.
    pub fn absorbing(self, handed: Lineage) -> Lineage {
        self.better(handed.moved())
    }

    /// Of this lineage and `other`, the one that ranks better (this one when they rank
    /// the same): the lineage of a state that holds all of a state of each.
    pub fn better(self, other: Lineage) -> Lineage {
        if other.rank() < self.rank() {
            other
        } else {
            self
        }
    }

    fn rank(self) -> (u32, std::cmp::Reverse<u32>) {
        (self.restarts, std::cmp::Reverse(self.moves))
    }
}

/// Which of two instances of one name stays when they meet (after a partition, a pause
/// or a join that raced a start), and which announcement a directory keeps: the one
/// whose lineage was restarted without state fewer times — an instance that kept its
/// state never loses to one restarted empty in its absence — then the one that moved
/// more (the later of a handoff's two ends), then the one on the smaller node name.
/// Every node computes the same answer from the same two claims.
pub fn stays(a: (Lineage, &str), b: (Lineage, &str)) -> bool {
    (a.0.rank(), a.1) < (b.0.rank(), b.1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn n(i: usize) -> WorkerName {
        WorkerName::new("counter", i.to_string())
    }

    #[test]
    fn the_better_lineage_has_fewer_empty_restarts_then_more_moves() {
        let kept = Lineage::default().moved().failed_over(3);
        let restarted = Lineage::default().restarted().moved().moved();
        assert_eq!(restarted.better(kept), kept, "kept its state");
        assert_eq!(kept.better(restarted), kept);
        let later = kept.moved();
        assert_eq!(kept.better(later), later, "moved more");
        let same = Lineage { from_copy: 9, ..kept };
        assert_eq!(kept.better(same), kept, "ranked the same: this one");
    }

    #[test]
    fn every_view_of_the_same_members_agrees_on_owners() {
        let a = ["a@h", "b@h", "c@h"];
        let b = ["c@h", "a@h", "b@h"];
        for i in 0..1000 {
            assert_eq!(owner(a, &n(i)), owner(b, &n(i)));
        }
    }

    #[test]
    fn the_ranking_starts_with_the_owner_and_drops_a_member_in_place() {
        let four = ["a@h", "b@h", "c@h", "d@h"];
        for i in 0..500 {
            let r = ranked(four, &n(i));
            assert_eq!(r.len(), 4);
            assert_eq!(Some(r[0]), owner(four, &n(i)));
            // Without its owner, the name's next owner is the ranking's second: a
            // durable name's first replica.
            let rest: Vec<&str> = four.iter().copied().filter(|m| *m != r[0]).collect();
            assert_eq!(owner(rest.iter().copied(), &n(i)), Some(r[1]));
            assert_eq!(ranked(rest.iter().copied(), &n(i)), r[1..].to_vec());
        }
    }

    #[test]
    fn owners_spread_and_a_leaving_member_moves_only_its_names() {
        let three = ["a@h", "b@h", "c@h"];
        let two = ["a@h", "b@h"];
        let mut counts = HashMap::new();
        let mut moved = 0;
        for i in 0..3000 {
            let o3 = owner(three, &n(i)).unwrap();
            *counts.entry(o3).or_insert(0) += 1;
            let o2 = owner(two, &n(i)).unwrap();
            if o3 != "c@h" {
                assert_eq!(o2, o3, "{} moved although its owner stayed", n(i));
            } else {
                moved += 1;
            }
        }
        for (m, c) in counts {
            assert!((800..1200).contains(&c), "{m} owns {c} of 3000");
        }
        assert!((800..1200).contains(&moved));
    }

    #[test]
    fn scores_are_those_of_the_kind_slash_key_string() {
        // Owners must not change across versions: the score hashes `member \0 kind/key`
        // as the string-named registry did (which gave order/John to a@h of these three).
        for i in 0..100 {
            let name = WorkerName::new("order", format!("k/{i}"));
            assert_eq!(score("a@h", &name), hash(format!("a@h\0{name}").bytes()));
        }
        assert_eq!(owner(["a@h", "b@h", "c@h"], &WorkerName::new("order", "John")), Some("a@h"));
    }

    #[test]
    fn the_instance_that_kept_its_state_stays() {
        let original = Lineage::default();
        let restarted = original.restarted();
        assert!(stays((original, "z@h"), (restarted, "a@h")), "an original beats a restart on a smaller node");
        assert!(!stays((restarted.restarted(), "a@h"), (restarted, "z@h")));
        assert!(stays((original.moved(), "z@h"), (original, "a@h")), "the later end of a handoff");
        assert!(stays((restarted, "a@h"), (restarted, "b@h")), "between equals, the smaller node name");
        assert!(!stays((restarted, "a@h"), (restarted, "a@h")), "an instance does not beat itself");
    }

    #[test]
    fn an_instance_that_absorbs_a_handoff_beats_its_sender() {
        // Two restarts of one lost name (equal lineages): the one on the smaller node
        // hands its state to the other, still starting; the other must win every
        // directory, the sender's late announcement included (seed 736,783).
        let restart = Lineage::default().restarted();
        let absorbed = restart.absorbing(restart);
        assert!(stays((absorbed, "z@h"), (restart, "a@h")));
        // An original line absorbing a restart keeps its own rank, better than both.
        let original = Lineage::default();
        assert_eq!(original.absorbing(restart), original);
        assert!(stays((original.absorbing(restart), "z@h"), (restart, "a@h")));
        // A restart absorbing an original's state is that original's successor.
        assert_eq!(restart.absorbing(original), original.moved());
    }
}
