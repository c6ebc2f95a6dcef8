//! Which state an instance started from, so that two instances started from one state
//! do not merge it twice when they meet.
//!
//! How two such instances come about: a leaving node hands a name to its next owner,
//! which is paused (or cut off) and does not answer; once it is declared down, the
//! state goes to the node after it. The paused node, when it wakes, still reads the
//! first handoff and starts the name from it. Both instances hold the same state, and
//! one may have gone on from it. Merged whole, a worker whose merge appends (an order's
//! items) would hold that state twice; a worker without a merge would keep one state
//! and drop the other, possibly the one that went on. Each handed-over state carries
//! an [`Origin`]; each instance started from one remembers it ([`Base`]) with a digest
//! of the bytes it started from and the ids of the states it holds all of, and, when
//! it stops, says whether its state is still those bytes. Pure: the table calls [`keep`]
//! and [`related`].

use sha2::{Digest, Sha256};

pub use super::wire::Origin;

/// What this node knows of the states an instance here holds: its id on this node,
/// the handed-over state it started from (its id and a digest of its bytes), and the
/// ids of every state it holds all of (that one, those merged into it, and theirs).
#[derive(Debug, Clone)]
pub struct Base {
    pub id: u64,
    pub start: Option<(u64, [u8; 32])>,
    pub holds: Vec<u64>,
}

impl Base {
    /// An instance `id` started from `state`, whose origin is `origin` (if known).
    pub fn new(id: u64, state: Option<&[u8]>, origin: Option<&Origin>) -> Base {
        let start = origin.zip(state).map(|(o, s)| (o.state, digest(s)));
        Base { id, start, holds: origin.map(|o| o.holds.clone()).unwrap_or_default() }
    }

    /// Whether `state`, the instance's final state, is the very state it started from:
    /// then it is that state's id.
    pub fn unchanged(&self, state: Option<&[u8]>) -> Option<u64> {
        let (id, d) = self.start?;
        (digest(state?) == d).then_some(id)
    }

    /// The instance took in the state `theirs` (merged, or it started again from it).
    pub fn absorb(&mut self, theirs: Option<&Origin>) {
        if let Some(o) = theirs {
            let mut holds = o.holds.clone();
            holds.extend(self.holds.iter().filter(|h| !o.holds.contains(h)));
            holds.truncate(Origin::HOLDS);
            self.holds = holds;
        }
    }

    /// The origin of the instance's final state, as it hands it over: `unchanged` (what
    /// [`Base::unchanged`] said of it) when it is still the state it started from, else
    /// `fresh`.
    pub fn handing(&self, unchanged: Option<u64>, fresh: u64) -> Origin {
        let id = unchanged.unwrap_or(fresh);
        let mut holds = vec![id];
        holds.extend(self.holds.iter().filter(|h| **h != id));
        holds.truncate(Origin::HOLDS);
        Origin { state: id, holds }
    }
}

/// A digest of a state's bytes: two states with the same digest are the same state.
pub fn digest(state: &[u8]) -> [u8; 32] {
    Sha256::digest(state).into()
}

/// Which of two states of one name to keep when an instance here meets a state handed
/// over from another instance (`theirs`): `holds`, the ids of the states the instance
/// here holds all of; `unchanged`, the id of its state when it stopped with the very
/// state it started from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// This instance holds all of theirs already.
    Mine,
    /// Theirs holds all of this instance's state.
    Theirs,
    /// Each may hold what the other lacks: merge.
    Both,
}

/// See [`Keep`].
pub fn keep(holds: &[u64], unchanged: Option<u64>, theirs: Option<&Origin>) -> Keep {
    match theirs {
        Some(o) if holds.contains(&o.state) => Keep::Mine,
        Some(o) if unchanged.is_some_and(|id| o.holds.contains(&id)) => Keep::Theirs,
        _ => Keep::Both,
    }
}

/// Whether a state handed over (`theirs`) and an instance here (holding the states
/// `holds`, started from state `start`) may hold one another, so that [`keep`] may
/// keep one of them once the instance here has stopped.
pub fn related(holds: &[u64], start: Option<u64>, theirs: Option<&Origin>) -> bool {
    theirs.is_some_and(|o| holds.contains(&o.state) || start.is_some_and(|s| o.holds.contains(&s)))
}

/// The id of the `n`th state a node of this `incarnation` hands over: never 0 (no
/// state), and unlike any other node's (incarnations are random).
pub fn state_id(incarnation: u64, n: u64) -> u64 {
    // splitmix64 of the pair: ids of one node spread, and two nodes' do not line up.
    let mut z = incarnation.wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_that_adds_nothing_is_not_kept() {
        let o = |state, holds: &[u64]| Origin { state, holds: holds.to_vec() };
        // Theirs is a state this one holds (started from, or merged): nothing to add.
        assert_eq!(keep(&[5], None, Some(&o(5, &[5]))), Keep::Mine);
        assert_eq!(keep(&[5, 2], Some(5), Some(&o(2, &[2]))), Keep::Mine);
        // Theirs went on from the state this one started from, and this one did not.
        assert_eq!(keep(&[5], Some(5), Some(&o(9, &[9, 5]))), Keep::Theirs);
        // Both went on from it: each holds what the other lacks.
        assert_eq!(keep(&[5], None, Some(&o(9, &[9, 5]))), Keep::Both);
        // Unrelated states, or one whose sender said nothing (a node before origins).
        assert_eq!(keep(&[5], Some(5), Some(&o(9, &[9, 7]))), Keep::Both);
        assert_eq!(keep(&[], None, Some(&o(5, &[5]))), Keep::Both);
        assert_eq!(keep(&[5], Some(5), None), Keep::Both);
        assert!(related(&[5], Some(5), Some(&o(9, &[9, 5]))) && related(&[5], None, Some(&o(5, &[5]))));
        assert!(!related(&[5], Some(5), Some(&o(9, &[9, 7]))) && !related(&[], None, Some(&o(5, &[5]))));
    }

    #[test]
    fn an_instance_hands_on_what_it_holds_under_the_id_of_what_it_is() {
        let handed = Origin { state: 5, holds: vec![5, 3] };
        let mut b = Base::new(1, Some(b"s"), Some(&handed));
        // Stopped as it started: the same state, by the same id.
        assert_eq!(b.handing(b.unchanged(Some(b"s")), 77), handed);
        // Changed: a new id, holding what it held.
        assert_eq!(b.handing(b.unchanged(Some(b"t")), 77), Origin { state: 77, holds: vec![77, 5, 3] });
        b.absorb(Some(&Origin { state: 8, holds: vec![8, 3] }));
        assert_eq!(b.holds, vec![8, 3, 5]);
        // Held to its length, the latest first.
        for i in 100..200 {
            b.absorb(Some(&Origin { state: i, holds: vec![i] }));
        }
        assert_eq!(b.holds.len(), Origin::HOLDS);
        assert_eq!(b.holds[0], 199);
        // Started without a handed state: never unchanged, whatever it holds.
        assert_eq!(Base::new(2, None, None).unchanged(Some(b"s")), None);
    }

    #[test]
    fn state_ids_differ_between_nodes_and_are_never_zero() {
        let mut seen = std::collections::BTreeSet::new();
        for incarnation in [0, 1, 2, u64::MAX, 0x1234_5678] {
            for n in 0..1000 {
                let id = state_id(incarnation, n);
                assert_ne!(id, 0);
                assert!(seen.insert(id), "{incarnation} {n}");
            }
        }
    }
}
