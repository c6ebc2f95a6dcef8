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
//! it stops, says whether its state is still those bytes.
//!
//! The same for durable kinds' take-overs: a node cut off from the one running a name
//! takes it over from a replica's copy while the instance it was copied from goes on
//! (its callers still reach it). Every instance has a line id that its copies carry;
//! the states it hands over hold all of its line, and a take-over remembers which copy
//! of which line it started from. Left as it was, the take-over gives way to a state
//! that holds all of that line or a later copy of it, and adds nothing to them.
//!
//! Pure: the table calls [`keep`] and [`related`].

use sha2::{Digest, Sha256};

pub use super::wire::{Holds, Origin};

/// What this node knows of the states an instance here holds: its id on this node, its
/// line (an id of its own, unlike any other instance's: every copy it sends its replicas
/// carries it), the handed-over state it started from (its id and a digest of its
/// bytes), the ids of every state it holds all of (that one, those merged into it, and
/// theirs, and the lines of the instances whose final states those were), and, when it
/// started from a replica's copy of an instance's state, that instance's line and the
/// copy's number; and the handed-over states merged into it, each its id and digest.
#[derive(Debug, Clone)]
pub struct Base {
    pub id: u64,
    pub line: u64,
    pub start: Option<(u64, [u8; 32])>,
    pub holds: Vec<u64>,
    pub copy_of: Option<(u64, u64)>,
    /// The copy of a line it holds all of, changed since or not: `copy_of`, or the one
    /// the state it started from holds ([`Origin::from_copy`]), or else one a state
    /// merged into it holds. A copy of another line is not held, whatever its lineage.
    pub from_copy: Option<(u64, u64)>,
    /// An instance whose final state is one of these byte for byte holds that state and
    /// nothing more: it is that state (an instance restarted empty that merged a
    /// yielded state and took nothing since). Not copies: those have a line of their own.
    pub merged: Vec<(u64, [u8; 32])>,
    /// How far the state it started from went: the copies sent along its history, by
    /// this instance's forerunners (each instance counts from 0, and a copy taken over
    /// carries its instance's start and number). Durable kinds only; 0 otherwise.
    pub height: u64,
    /// The copies this instance sent of states that changed it ([`Replicator::changes`](super::durable::Replicator::changes)).
    pub copies: u64,
}

impl Base {
    /// An instance `id` of line `line` started from `state`, whose origin is `origin` (if
    /// known).
    pub fn new(id: u64, line: u64, state: Option<&[u8]>, origin: Option<&Origin>) -> Base {
        let start = origin.zip(state).map(|(o, s)| (o.state, digest(s)));
        // Without the state, the origin says nothing of what the instance holds.
        let origin = origin.filter(|_| state.is_some());
        let copy_of = origin.and_then(|o| o.copy_of);
        let from_copy = origin.and_then(|o| o.copy_of.or(o.from_copy));
        let height = origin.and_then(|o| o.height).unwrap_or(0);
        let holds = origin.map(|o| o.holds.clone()).unwrap_or_default();
        Base { id, line, start, holds, copy_of, from_copy, merged: Vec::new(), height, copies: 0 }
    }

    /// How far this instance's state went: its start's height and the copies it sent.
    pub fn reached(&self) -> u64 {
        self.height.saturating_add(self.copies)
    }

    /// Whether `state`, the instance's final state, is the very state it started from,
    /// or the very state of one merged into it: then it is that state's id.
    pub fn unchanged(&self, state: Option<&[u8]>) -> Option<u64> {
        self.state_of(state?)
    }

    /// The id of the state this instance started from, or of one merged into it, whose
    /// bytes are `state`.
    fn state_of(&self, state: &[u8]) -> Option<u64> {
        if self.start.is_none() && self.merged.is_empty() {
            return None;
        }
        let d = digest(state);
        let start = self.start.filter(|(_, s)| *s == d).map(|(id, _)| id);
        start.or_else(|| self.merged.iter().find(|(_, m)| *m == d).map(|(id, _)| *id))
    }

    /// Whether the state of id `id` is the one this instance started from.
    fn started_from(&self, id: u64) -> bool {
        self.start.is_some_and(|(s, _)| s == id)
    }

    /// Whether this instance holds all of the state `id` (or all of every state of the
    /// instance whose line is `id`): its own line, or one it took in.
    fn holds_all(&self, id: u64) -> bool {
        self.line == id || self.holds.contains(&id)
    }

    /// Whether this instance holds all of copy `seq` of the instance of line `line`: it
    /// holds all of that line, or started from that copy or a later one of it.
    fn holds_copy(&self, copy: (u64, u64)) -> bool {
        self.line == copy.0 || super::wire::holds_copy(&self.holds, self.from_copy, copy)
    }

    /// What this instance's state holds all of besides its line, as its copies say.
    pub fn holds(&self) -> Holds {
        Holds { ids: self.holds.clone(), copy: self.from_copy }
    }

    /// The instance merged the handed-over state `theirs`, of bytes `state`, alone (see
    /// [`Base::merged`]); and it holds all of it.
    pub fn absorb_alone(&mut self, theirs: Option<&Origin>, state: &[u8]) {
        if let Some(o) = theirs.filter(|o| o.copy_of.is_none()) {
            if self.merged.len() < Origin::HOLDS {
                self.merged.push((o.state, digest(state)));
            }
        }
        self.absorb(theirs);
    }

    /// The instance took in the state `theirs` (merged, or it started again from it).
    pub fn absorb(&mut self, theirs: Option<&Origin>) {
        if let Some(o) = theirs {
            let mut holds = o.holds.clone();
            holds.extend(self.holds.iter().filter(|h| !o.holds.contains(h)));
            holds.truncate(Origin::HOLDS);
            self.holds = holds;
            self.from_copy = self.from_copy.or(o.copy_of).or(o.from_copy);
            // It holds what theirs holds: at least as far as that went.
            if let Some(h) = o.height {
                self.height = self.height.max(h.saturating_sub(self.copies));
            }
        }
    }

    /// The origin of the instance's final state, as it hands it over: `unchanged` (what
    /// [`Base::unchanged`] said of it) when it is still the state it started from, else
    /// `fresh`. It holds all of this instance's line (every copy it sent); unchanged, it
    /// is still the copy it started from, if it started from one.
    pub fn handing(&self, unchanged: Option<u64>, fresh: u64) -> Origin {
        let id = unchanged.unwrap_or(fresh);
        let holds = final_holds(id, self.line, &self.holds);
        let copy_of = self.copy_of.filter(|_| unchanged.is_some_and(|id| self.started_from(id)));
        Origin { state: id, holds, copy_of, height: Some(self.reached()), from_copy: self.from_copy }
    }

    /// The origin of copy `seq` of the state of an instance of line `line`, which a
    /// replica starts the name from (a failover) or hands on, under the new id `id`;
    /// `height`, the copy's (when its sender said).
    pub fn copy(id: u64, line: u64, seq: u64, height: Option<u64>) -> Origin {
        Origin { state: id, holds: vec![id], copy_of: Some((line, seq)), height, from_copy: None }
    }
}

/// What the final state `id` of an instance of line `line` holds all of: itself, its
/// line (every copy the instance sent), then `held` (what the instance held), without
/// those two, cut at [`Origin::HOLDS`]. A state handed over ([`Base::handing`]) and one a
/// node's own stale instance left as a copy both say so.
pub fn final_holds(id: u64, line: u64, held: &[u64]) -> Vec<u64> {
    let mut holds = vec![id, line];
    holds.extend(held.iter().filter(|h| **h != id && **h != line));
    holds.truncate(Origin::HOLDS);
    holds
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

/// See [`Keep`]. `mine`: what the instance here holds; `unchanged`: the id of its state
/// when it stopped with the very state it started from.
pub fn keep(mine: &Base, unchanged: Option<u64>, theirs: Option<&Origin>) -> Keep {
    let Some(o) = theirs else { return Keep::Both };
    // Theirs is a state this one holds, or a copy (left as it was) of this one's line, of
    // one it holds all of, or of the line this one started from a later copy of.
    if mine.holds_all(o.state) || o.copy_of.is_some_and(|c| mine.holds_copy(c)) {
        return Keep::Mine;
    }
    // This one is still the state it started from, and theirs holds all of that: the
    // same state, or (this one started from a copy) the line the copy came from, or
    // that copy or a later one of that line, changed since or not.
    if unchanged.is_some_and(|id| o.holds.contains(&id) || (mine.started_from(id) && mine.copy_of.is_some_and(|c| o.holds_copy(c)))) {
        return Keep::Theirs;
    }
    Keep::Both
}

/// Of two instances that each went on from a state they share ([`Keep::Both`]), whether
/// this one's state is the one the name goes on from, the other merged into it (else
/// the other's is, this one merged into it). The one that went further: copied more
/// changed states along its history ([`Base::reached`], [`Origin::height`]); as far
/// as each other, the one chosen to stay (`stays`: this one). A worker without a merge
/// keeps that state alone: so a take-over that counted on while its original was
/// paused keeps its acknowledged updates over the one update the original had in
/// flight at the pause. Where either cannot say, or neither copied anything (a kind
/// that is not durable), the other's, as before heights.
pub fn goes_on_from_mine(mine: &Base, theirs: Option<&Origin>, stays: bool) -> bool {
    match theirs.and_then(|o| o.height) {
        Some(h) if h != mine.reached() => mine.reached() > h,
        Some(h) if h > 0 => stays,
        _ => false,
    }
}

/// Whether the state handed over (`theirs`) went further than this instance's, by their
/// heights ([`goes_on_from_mine`]): then the name goes on from it, and this instance's
/// merges into it, though the two share nothing this node knows of (a take-over from
/// an earlier copy of the state this one started from says only that it changed).
pub fn further(mine: &Base, theirs: Option<&Origin>) -> bool {
    theirs.and_then(|o| o.height).is_some_and(|h| h > mine.reached())
}

/// [`keep`], knowing the bytes of their state too: bytes that are those of a state this
/// instance holds all of (the one it started from, or one merged into it) are that
/// state, whatever id they came with (a node hands on a state it merged under an id of
/// its own): this instance holds all of them. So too when they are this instance's
/// final state (`last`, once it stopped) byte for byte: the two are one state, however
/// each came about (two instances that merged the same states and took nothing since).
pub fn keep_state(mine: &Base, unchanged: Option<u64>, theirs: Option<&Origin>, state: Option<&[u8]>, last: Option<&[u8]>) -> Keep {
    if state.is_some_and(|s| mine.state_of(s).is_some() || last == Some(s)) {
        return Keep::Mine;
    }
    keep(mine, unchanged, theirs)
}

/// Whether a state handed over (`theirs`) and an instance here (`mine`) may hold one
/// another, so that [`keep`] may keep one of them once the instance here has stopped.
pub fn related(mine: &Base, theirs: Option<&Origin>) -> bool {
    theirs.is_some_and(|o| {
        mine.holds_all(o.state)
            || o.copy_of.is_some_and(|c| mine.holds_copy(c))
            || mine.start.is_some_and(|(s, _)| o.holds.contains(&s))
            || mine.merged.iter().any(|(m, _)| o.holds.contains(m))
            || mine.copy_of.is_some_and(|(l, _)| o.holds.contains(&l) || o.copy_of.is_some_and(|(ol, _)| ol == l))
    })
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

    fn o(state: u64, holds: &[u64]) -> Origin {
        Origin { state, holds: holds.to_vec(), copy_of: None, height: None, from_copy: None }
    }

    /// An instance of line 100 that started from a handed state `start` (bytes `s`)
    /// and holds `holds`.
    fn base(start: Option<u64>, holds: &[u64]) -> Base {
        Base {
            id: 1,
            line: 100,
            start: start.map(|id| (id, digest(b"s"))),
            holds: holds.to_vec(),
            copy_of: None,
            from_copy: None,
            merged: Vec::new(),
            height: 0,
            copies: 0,
        }
    }

    #[test]
    fn a_state_that_adds_nothing_is_not_kept() {
        // Theirs is a state this one holds (started from, or merged): nothing to add.
        assert_eq!(keep(&base(Some(5), &[5]), None, Some(&o(5, &[5]))), Keep::Mine);
        assert_eq!(keep(&base(Some(5), &[5, 2]), Some(5), Some(&o(2, &[2]))), Keep::Mine);
        // Theirs went on from the state this one started from, and this one did not.
        assert_eq!(keep(&base(Some(5), &[5]), Some(5), Some(&o(9, &[9, 5]))), Keep::Theirs);
        // Both went on from it: each holds what the other lacks.
        assert_eq!(keep(&base(Some(5), &[5]), None, Some(&o(9, &[9, 5]))), Keep::Both);
        // Unrelated states, or one whose sender said nothing (a node before origins).
        assert_eq!(keep(&base(Some(5), &[5]), Some(5), Some(&o(9, &[9, 7]))), Keep::Both);
        assert_eq!(keep(&base(None, &[]), None, Some(&o(5, &[5]))), Keep::Both);
        assert_eq!(keep(&base(Some(5), &[5]), Some(5), None), Keep::Both);
        assert!(related(&base(Some(5), &[5]), Some(&o(9, &[9, 5]))) && related(&base(None, &[5]), Some(&o(5, &[5]))));
        assert!(!related(&base(Some(5), &[5]), Some(&o(9, &[9, 7]))) && !related(&base(None, &[]), Some(&o(5, &[5]))));
    }

    /// An instance cut off from its peers goes on; a replica of it takes its name over
    /// from a copy. When the two meet, the one that changed nothing gives way.
    #[test]
    fn a_copy_left_as_it_was_adds_nothing_to_the_line_it_was_copied_from() {
        // The original, line 100 (started empty); the take-over, line 200, from a copy
        // of line 100 (its state id 7).
        let original = base(None, &[]);
        let copy = Base::copy(7, 100, 4, None);
        let taken = Base::new(2, 200, Some(b"s"), Some(&copy));
        assert_eq!((taken.start.map(|s| s.0), taken.copy_of), (Some(7), Some((100, 4))));
        // The original went on and hands its state (fresh id 9) to the take-over, which
        // did not: the take-over gives way; had it gone on, the two merge.
        let went_on = original.handing(None, 9);
        assert!(went_on.holds.contains(&100) && went_on.copy_of.is_none());
        assert!(related(&taken, Some(&went_on)));
        assert_eq!(keep(&taken, taken.unchanged(Some(b"s")), Some(&went_on)), Keep::Theirs);
        assert_eq!(keep(&taken, taken.unchanged(Some(b"t")), Some(&went_on)), Keep::Both);
        // The take-over hands its state to the original: left as it was, it is a copy of
        // line 100, which the original holds all of; changed, it is not.
        let stood_still = taken.handing(taken.unchanged(Some(b"s")), 11);
        assert_eq!(stood_still, Origin { state: 7, holds: vec![7, 200], copy_of: Some((100, 4)), height: Some(0), from_copy: Some((100, 4)) });
        assert!(related(&original, Some(&stood_still)));
        assert_eq!(keep(&original, None, Some(&stood_still)), Keep::Mine);
        let changed = taken.handing(taken.unchanged(Some(b"t")), 11);
        // Changed, it still holds all of that copy: a copy of line 100 up to number 4
        // adds nothing to it, one of another line does, whatever their lineages.
        assert_eq!(changed, Origin { state: 11, holds: vec![11, 200, 7], copy_of: None, height: Some(0), from_copy: Some((100, 4)) });
        assert!(changed.holds_copy((100, 4)) && changed.holds_copy((100, 1)) && changed.holds_copy((200, 9)));
        assert!(!changed.holds_copy((100, 5)) && !changed.holds_copy((101, 1)));
        let again = Base::new(6, 600, Some(b"t"), Some(&changed));
        assert_eq!((again.copy_of, again.from_copy), (None, Some((100, 4))), "handed on along its history");
        assert_eq!(again.holds(), Holds { ids: vec![11, 200, 7], copy: Some((100, 4)) });
        // Another take-over from that same copy, left as it was, gives way to the changed
        // one, which holds all of the copy; changed too, the two merge.
        let twin = Base::new(9, 900, Some(b"s"), Some(&Base::copy(8, 100, 4, None)));
        assert_eq!(keep(&twin, twin.unchanged(Some(b"s")), Some(&changed)), Keep::Theirs);
        assert_eq!(keep(&twin, twin.unchanged(Some(b"u")), Some(&changed)), Keep::Both);
        assert_eq!(keep(&original, None, Some(&changed)), Keep::Both);
        // An instance started from the original's final state holds all of its line;
        // one started from the take-over's unchanged state is a copy of it as well.
        assert_eq!(keep(&Base::new(3, 300, Some(b"u"), Some(&went_on)), None, Some(&stood_still)), Keep::Mine);
        let again = Base::new(4, 400, Some(b"s"), Some(&stood_still));
        assert_eq!(keep(&again, again.unchanged(Some(b"s")), Some(&went_on)), Keep::Theirs);
        // Two copies of one line: the later holds all of the earlier. A take-over from
        // copy 4 that changed nothing gives way to copy 6 (a replica held a later copy
        // than the node that took the name over); one from copy 6 keeps its own, changed
        // or not; a changed one from copy 4 merges.
        let later = Base::copy(8, 100, 6, None);
        assert!(related(&taken, Some(&later)));
        assert_eq!(keep(&taken, taken.unchanged(Some(b"s")), Some(&later)), Keep::Theirs);
        assert_eq!(keep(&taken, taken.unchanged(Some(b"t")), Some(&later)), Keep::Both);
        let from_later = Base::new(5, 500, Some(b"v"), Some(&later));
        assert_eq!(keep(&from_later, None, Some(&stood_still)), Keep::Mine);
        assert_eq!(keep(&from_later, from_later.unchanged(Some(b"v")), Some(&stood_still)), Keep::Mine);
        // Copies of another line: nothing known.
        let elsewhere = Base::copy(9, 101, 50, None);
        assert!(!related(&taken, Some(&elsewhere)));
        assert_eq!(keep(&taken, taken.unchanged(Some(b"s")), Some(&elsewhere)), Keep::Both);
    }

    /// A state handed to two nodes (the first only paused) merges into an instance on
    /// each. One restarted empty holds nothing else: it stops with those very bytes, and
    /// hands them on under that state's id, which the other holds all of. And bytes
    /// that are those of a state an instance merged or started from add nothing to it,
    /// whatever id they come with.
    #[test]
    fn an_instance_whose_state_is_a_state_it_merged_is_that_state() {
        let x = o(5, &[5, 3]);
        let mut empty = base(None, &[]);
        empty.absorb_alone(Some(&x), b"x");
        assert_eq!(empty.holds, vec![5, 3]);
        assert_eq!(empty.unchanged(Some(b"x")), Some(5));
        assert_eq!(empty.unchanged(Some(b"x+1")), None, "it took a call since");
        let handed = empty.handing(empty.unchanged(Some(b"x")), 77);
        assert_eq!(handed, Origin { height: Some(0), ..o(5, &[5, 100, 3]) });
        let mut other = Base::new(2, 200, Some(b"s"), Some(&o(9, &[9])));
        other.absorb_alone(Some(&x), b"x");
        assert_eq!(keep(&other, None, Some(&handed)), Keep::Mine);
        assert!(related(&other, Some(&o(12, &[12, 5]))), "theirs went on from the state this one merged");
        // The same bytes under another id (a node handing on a state it merged).
        assert_eq!(keep_state(&other, None, Some(&o(13, &[13])), Some(b"x"), None), Keep::Mine);
        assert_eq!(keep_state(&other, None, Some(&o(13, &[13])), Some(b"s"), None), Keep::Mine, "the state it started from");
        assert_eq!(keep_state(&other, None, Some(&o(13, &[13])), Some(b"y"), None), Keep::Both);
        assert_eq!(keep_state(&other, None, Some(&o(13, &[13])), Some(b"y"), Some(b"y")), Keep::Mine, "its final state, byte for byte");
        assert_eq!(keep_state(&other, None, Some(&o(13, &[13])), Some(b"y"), Some(b"z")), Keep::Both);
        // A replica's copy has a line of its own: not taken for the state it was.
        let mut c = base(None, &[]);
        c.absorb_alone(Some(&Base::copy(6, 100, 2, None)), b"c");
        assert_eq!(c.unchanged(Some(b"c")), None);
        // A copy_of goes with the state an instance started from only.
        let mut taken = Base::new(3, 300, Some(b"s"), Some(&Base::copy(7, 100, 4, None)));
        taken.absorb_alone(Some(&x), b"x");
        assert_eq!(taken.handing(taken.unchanged(Some(b"x")), 78).copy_of, None);
        assert_eq!(taken.handing(taken.unchanged(Some(b"s")), 78).copy_of, Some((100, 4)));
    }

    /// A take-over from copy 4 of line 100 (height 4) that copied 6 changes since, and
    /// the original it was copied from, paused, with one change more than that copy.
    #[test]
    fn of_two_states_that_went_on_the_one_that_went_further_goes_on() {
        let copy = Base::copy(7, 100, 4, Some(4));
        let mut taken = Base::new(2, 200, Some(b"s"), Some(&copy));
        assert_eq!(taken.reached(), 4);
        taken.copies = 6;
        let mut original = base(None, &[]);
        original.copies = 5;
        let went_on = original.handing(None, 9);
        assert_eq!(went_on.height, Some(5));
        assert_eq!(keep(&taken, None, Some(&went_on)), Keep::Both);
        // 10 against 5: the take-over's state, whichever of the two stays.
        assert!(goes_on_from_mine(&taken, Some(&went_on), false));
        assert!(!goes_on_from_mine(&original, Some(&taken.handing(None, 11)), true));
        // As far as each other: the one that stays. Unknown, or nothing copied: theirs.
        original.copies = 10;
        assert!(goes_on_from_mine(&taken, Some(&original.handing(None, 9)), true));
        assert!(!goes_on_from_mine(&taken, Some(&original.handing(None, 9)), false));
        assert!(!goes_on_from_mine(&taken, Some(&o(9, &[9, 100])), true));
        assert!(!goes_on_from_mine(&base(None, &[]), Some(&base(None, &[]).handing(None, 9)), true));
        // What it merges: at least as far as that went.
        let mut merged = base(None, &[]);
        merged.copies = 2;
        merged.absorb(Some(&went_on));
        assert_eq!(merged.reached(), 5);
        merged.absorb(Some(&Base::copy(8, 100, 1, Some(1))));
        assert_eq!(merged.reached(), 5);
    }

    #[test]
    fn an_instance_hands_on_what_it_holds_under_the_id_of_what_it_is() {
        let handed = o(5, &[5, 3]);
        let mut b = Base::new(1, 100, Some(b"s"), Some(&handed));
        // Stopped as it started: the same state, by the same id, and its own line.
        assert_eq!(b.handing(b.unchanged(Some(b"s")), 77), Origin { height: Some(0), ..o(5, &[5, 100, 3]) });
        // Changed: a new id, holding what it held.
        assert_eq!(b.handing(b.unchanged(Some(b"t")), 77), Origin { height: Some(0), ..o(77, &[77, 100, 5, 3]) });
        b.absorb(Some(&o(8, &[8, 3])));
        assert_eq!(b.holds, vec![8, 3, 5]);
        // Held to its length, the latest first.
        for i in 200..300 {
            b.absorb(Some(&o(i, &[i])));
        }
        assert_eq!(b.holds.len(), Origin::HOLDS);
        assert_eq!(b.holds[0], 299);
        assert_eq!(b.handing(None, 1).holds.len(), Origin::HOLDS);
        // Started without a handed state: never unchanged, whatever it holds.
        assert_eq!(Base::new(2, 200, None, None).unchanged(Some(b"s")), None);
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
