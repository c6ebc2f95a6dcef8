//! Durable kinds: an instance's state copied to its replicas after every message, as
//! whole states or as the bytes that changed since the previous copy. Pure: the
//! encoding of a copy ([`Update`], [`diff`], [`Update::apply`]); the owner's record of
//! which replica holds which copy ([`Replicator`]). The sending lives in the driver
//! (`Registry::replicate`), the replicas' side in the table (`Table::replica_in`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The granularity of a delta: states are compared this many bytes at a time.
const BLOCK: usize = 64;

/// One copy of a state, as it crosses the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Update {
    /// The whole state.
    Full(Vec<u8>),
    /// What changed since copy `base`: the new length, and runs of new bytes at offsets.
    Delta { base: u64, len: u64, runs: Vec<(u64, Vec<u8>)> },
}

impl Update {
    /// The bytes this copy carries (for the metrics and the benchmark).
    pub fn payload_len(&self) -> usize {
        match self {
            Update::Full(s) => s.len(),
            Update::Delta { runs, .. } => runs.iter().map(|(_, r)| r.len()).sum(),
        }
    }

    /// The state this copy makes of `old` (copy `seq`); `None` when it is a delta from
    /// another copy (the replica then needs the whole state) or does not fit.
    pub fn apply(self, old: Option<(u64, &[u8])>) -> Option<Vec<u8>> {
        match self {
            Update::Full(s) => Some(s),
            Update::Delta { base, len, runs } => {
                let (seq, old) = old?;
                if seq != base {
                    return None;
                }
                // A state grows only by the bytes a delta carries ([`diff`] sends every
                // byte past the old length): a length beyond that, or a run past it, is
                // not a copy any owner made, and is refused before anything is allocated
                // for it (a few bytes on the wire must not reserve a terabyte).
                let len = usize::try_from(len).ok()?;
                let carried: usize = runs.iter().map(|(_, r)| r.len()).sum();
                if len > old.len().saturating_add(carried) {
                    return None;
                }
                let mut state = old.to_vec();
                state.resize(len, 0);
                for (at, run) in runs {
                    let at = usize::try_from(at).ok()?;
                    state.get_mut(at..at.checked_add(run.len())?)?.copy_from_slice(&run);
                }
                Some(state)
            }
        }
    }
}

/// The copy that turns `old` (copy `base`) into `new`: the blocks that differ, joined
/// into runs, or the whole state when that is not larger than half of it.
pub fn diff(base: u64, old: &[u8], new: &[u8]) -> Update {
    let mut runs: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut total = 0;
    let common = old.len().min(new.len());
    let mut at = 0;
    while at < common {
        let end = (at + BLOCK).min(common);
        if old[at..end] != new[at..end] {
            total += end - at;
            match runs.last_mut() {
                Some((start, run)) if *start as usize + run.len() == at => run.extend_from_slice(&new[at..end]),
                _ => runs.push((at as u64, new[at..end].to_vec())),
            }
        }
        at = end;
    }
    if new.len() > common {
        total += new.len() - common;
        match runs.last_mut() {
            Some((start, run)) if *start as usize + run.len() == common => run.extend_from_slice(&new[common..]),
            _ => runs.push((common as u64, new[common..].to_vec())),
        }
    }
    if total * 2 >= new.len() && !new.is_empty() {
        return Update::Full(new.to_vec());
    }
    Update::Delta { base, len: new.len() as u64, runs }
}

/// The owner's side of one durable instance: its last copied state, that copy's number,
/// and which node holds which copy of it.
#[derive(Debug, Default)]
pub struct Replicator {
    /// The instance's state as last copied (what deltas are taken against).
    pub last: Vec<u8>,
    /// The number of that copy; 0 before the first.
    pub seq: u64,
    /// The copy each replica acknowledged, and on which connection to it: a node that
    /// restarted (a new connection) holds nothing, whatever its previous life took.
    pub holds: BTreeMap<String, (u64, u64)>,
    /// How many copies after the first held a changed state: how far the instance went
    /// since it started (copies again of the same state, to new replicas, do not count).
    pub changes: u64,
}

/// A replica: a node, and the connection to it that the copies go on.
pub type Target = (String, u64);

impl Replicator {
    fn current(&self, (node, conn): &Target) -> bool {
        self.holds.get(node) == Some(&(*conn, self.seq))
    }

    /// What to send each of `targets` so that they hold `state`, and its number; `None`
    /// when every target holds it already (a message that changed nothing).
    pub fn plan(&self, targets: &[Target], state: &[u8]) -> Option<(u64, Vec<(String, Update)>)> {
        if self.seq > 0 && state == self.last.as_slice() && targets.iter().all(|t| self.current(t)) {
            return None;
        }
        let seq = self.seq + 1;
        let delta = (self.seq > 0).then(|| diff(self.seq, &self.last, state));
        let sends = targets
            .iter()
            .map(|t| {
                let update = match &delta {
                    Some(d) if self.current(t) => d.clone(),
                    _ => Update::Full(state.to_vec()),
                };
                (t.0.clone(), update)
            })
            .collect();
        Some((seq, sends))
    }

    /// [`Replicator::changes`] once `state` is copied.
    pub fn changes_with(&self, state: &[u8]) -> u64 {
        self.changes + u64::from(self.seq > 0 && state != self.last.as_slice())
    }

    /// Copy `seq` of `state` went to `sent` and `acked` hold it now; nodes that held an
    /// earlier copy and were not sent this one are no longer counted (returned, to be
    /// told to drop theirs).
    pub fn done(&mut self, seq: u64, state: Vec<u8>, sent: &[Target], acked: &[String]) -> Vec<String> {
        self.changes = self.changes_with(&state);
        self.last = state;
        self.seq = seq;
        let was_sent = |n: &str| sent.iter().any(|(t, _)| t == n);
        let dropped: Vec<String> = self.holds.keys().filter(|n| !was_sent(n)).cloned().collect();
        self.holds.retain(|n, _| was_sent(n));
        for (n, conn) in sent {
            if acked.contains(n) {
                self.holds.insert(n.clone(), (*conn, seq));
            } else {
                self.holds.remove(n);
            }
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(old: &[u8], new: &[u8]) -> Update {
        let u = diff(7, old, new);
        assert_eq!(u.clone().apply(Some((7, old))).as_deref(), Some(new), "{old:?} -> {new:?} via {u:?}");
        u
    }

    #[test]
    fn a_small_change_to_a_large_state_crosses_as_a_small_delta() {
        let old = vec![1u8; 1 << 20];
        let mut new = old.clone();
        new[300_000] = 2;
        new[300_001] = 3;
        new[900_000] = 4;
        let u = roundtrip(&old, &new);
        assert!(matches!(&u, Update::Delta { runs, .. } if runs.len() == 2), "{u:?}");
        assert_eq!(u.payload_len(), 2 * BLOCK);
    }

    #[test]
    fn growth_shrinking_and_rewrites_round_trip() {
        roundtrip(b"", b"");
        roundtrip(b"", b"abc");
        roundtrip(&[5; 1000], &[5; 10]);
        roundtrip(&[5; 1000], &[5; 3000]);
        let mut grown = vec![5; 3000];
        grown[999] = 6;
        roundtrip(&[5; 1000], &grown);
        // Most of it changed: the whole state goes.
        assert_eq!(roundtrip(&[1; 100], &[2; 100]), Update::Full(vec![2; 100]));
        assert!(matches!(roundtrip(b"41", b"42"), Update::Full(_)));
    }

    #[test]
    fn a_delta_applies_only_to_its_base() {
        let old = vec![0u8; 4096];
        let mut new = old.clone();
        new[10] = 1;
        let u = diff(3, &old, &new);
        assert!(matches!(u, Update::Delta { .. }));
        assert_eq!(u.clone().apply(Some((2, &old))), None, "another copy");
        assert_eq!(u.clone().apply(None), None, "no copy at all");
        // A run past the state's end is refused, not a panic.
        let bad = Update::Delta { base: 3, len: 4, runs: vec![(2, vec![1, 2, 3])] };
        assert_eq!(bad.apply(Some((3, &old))), None);
        // A length the delta's bytes cannot make is refused before any of it is
        // allocated: a few bytes asking for a terabyte (or for more than usize holds).
        for len in [1 << 40, u64::MAX, 4096 + 2] {
            let huge = Update::Delta { base: 3, len, runs: vec![(4096, vec![7])] };
            assert_eq!(huge.apply(Some((3, &old))), None, "len {len}");
        }
        // Growing by exactly the bytes carried is what a real delta does.
        let grown = Update::Delta { base: 3, len: 4097, runs: vec![(4096, vec![7])] };
        assert_eq!(grown.apply(Some((3, &old))).map(|s| (s.len(), s[4096])), Some((4097, 7)));
    }

    #[test]
    fn the_replicator_sends_deltas_to_current_replicas_and_whole_states_to_new_ones() {
        let t = |n: &str, conn: u64| (n.to_string(), conn);
        let mut r = Replicator::default();
        let targets = vec![t("b", 1), t("c", 2)];
        let names = |ts: &[Target]| ts.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        let s1 = vec![0u8; 4096];
        let (seq, sends) = r.plan(&targets, &s1).unwrap();
        assert_eq!(seq, 1);
        assert!(sends.iter().all(|(_, u)| matches!(u, Update::Full(_))), "nobody holds anything yet");
        assert!(r.done(seq, s1.clone(), &targets, &names(&targets)).is_empty());
        assert!(r.plan(&targets, &s1).is_none(), "nothing changed: nothing to send");
        let mut s2 = s1.clone();
        s2[100] = 9;
        // c did not acknowledge copy 2: it gets the whole state next time.
        let (seq, sends) = r.plan(&targets, &s2).unwrap();
        assert!(sends.iter().all(|(_, u)| matches!(u, Update::Delta { base: 1, .. })));
        r.done(seq, s2.clone(), &targets, &["b".to_string()]);
        let mut s3 = s2.clone();
        s3[200] = 9;
        let (_, sends) = r.plan(&targets, &s3).unwrap();
        assert!(matches!(sends[0].1, Update::Delta { base: 2, .. }));
        assert!(matches!(sends[1].1, Update::Full(_)));
        // b leaves the targets for d: d gets the whole state, b is to drop its copy.
        let moved = vec![t("c", 2), t("d", 3)];
        let (seq, sends) = r.plan(&moved, &s3).unwrap();
        assert!(sends.iter().all(|(_, u)| matches!(u, Update::Full(_))));
        assert_eq!(r.done(seq, s3.clone(), &moved, &names(&moved)), vec!["b".to_string()]);
        assert_eq!(r.holds.keys().cloned().collect::<Vec<_>>(), names(&moved));
        // d restarted (a new connection): it holds nothing, though nothing changed.
        let restarted = vec![t("c", 2), t("d", 4)];
        let (_, sends) = r.plan(&restarted, &s3).expect("a copy for the restarted node");
        assert!(matches!(sends[1].1, Update::Full(_)), "{sends:?}");
    }
}
