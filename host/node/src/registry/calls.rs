//! Call ids: a call that carries an id is applied at most once by a name.
//!
//! A caller that did not hear back (a timeout, the node that ran the name killed in
//! the middle, a lost connection) cannot tell whether its call was applied; retried with
//! the same id, it gets the first outcome back instead of a second application. Each
//! instance keeps the outcomes of its last [`REMEMBERED`] calls that carried an id, and
//! the log travels with the name's state: in every copy a durable kind replicates, and
//! in the state a handoff moves. So a call applied and acknowledged by the replicas
//! before its node died answers its retry from the log on the new owner, and a call
//! whose state died with the node (never acknowledged) is applied by its retry.
//!
//! Each outcome says which instance applied it (a random id drawn when the instance
//! starts). Two instances of one name meet after a partition, or after a node was
//! declared down while it still ran: when both logs hold an id, applied by different
//! instances, a retry that crossed from one side to the other was applied on both, and
//! the merge says so ([`CallLog::merge`]): each side of a partition serves, and neither
//! can know what the other applied.
//!
//! The log rides behind the worker's own state, which stays byte for byte what the
//! worker wrote (a worker never sees the log, and a delta of the worker's part is the
//! same as without it): `state ‖ log ‖ log length (u32, little-endian) ‖ MARK`. A state
//! without the mark is the worker's alone, as every state was before call ids.

use serde::{Deserialize, Serialize};

/// How many calls with ids an instance remembers (the oldest is forgotten first).
pub const REMEMBERED: usize = 256;
/// The largest reply (or error text) the log keeps for a retry: a larger one is
/// remembered as applied without it, so an instance's log holds 16 MiB at most however
/// large its replies (each one is copied to its replicas with its state, too).
pub const MAX_KEPT_REPLY: usize = 64 << 10;
/// The longest id a call may carry, in bytes.
pub const MAX_ID_LEN: usize = 256;
/// Ends a state that carries a call log.
const MARK: &[u8; 8] = b"\xffwncall1";

/// What a call returned: its reply, or the worker's error.
pub type Outcome = Result<Vec<u8>, String>;

/// The outcomes of an instance's last calls with ids.
///
/// A ring in slot order: recording one outcome rewrites one slot, so a replica's delta
/// carries that slot, not the whole log shifted by one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallLog {
    /// The slot the next id takes once all [`REMEMBERED`] are used.
    next: u32,
    slots: Vec<(String, Outcome)>,
    /// Which instance applied each slot's call ([`UNKNOWN`] when a node from before
    /// instance ids wrote it). Last, so a node from before reads the log without it.
    by: Vec<u64>,
}

/// The applier of an outcome recorded by a node from before instance ids.
pub const UNKNOWN: u64 = 0;

/// The log as nodes from before instance ids wrote it.
#[derive(Deserialize)]
struct Unsigned {
    next: u32,
    slots: Vec<(String, Outcome)>,
}

/// Why a call id is refused.
pub fn check_id(id: &str) -> Result<(), String> {
    match id.len() {
        0 => Err("a call id is empty".into()),
        n if n > MAX_ID_LEN => Err(format!("a call id is {n} bytes; at most {MAX_ID_LEN}")),
        // It is logged when a retry is answered from the log: it may not break the line.
        _ if !super::name::fits_a_line(id) => Err("a call id may not hold control characters or line breaks".into()),
        _ => Ok(()),
    }
}

impl CallLog {
    /// The outcome of the call with this id, when it was applied here.
    pub fn get(&self, id: &str) -> Option<&Outcome> {
        self.slots.iter().find(|(i, _)| i == id).map(|(_, o)| o)
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Remembers the outcome of the call with this id, applied by instance `by`
    /// (forgetting the oldest when full); one over [`MAX_KEPT_REPLY`] as applied, its
    /// reply not kept.
    pub fn record(&mut self, id: String, outcome: Outcome, by: u64) {
        let len = match &outcome {
            Ok(reply) => reply.len(),
            Err(why) => why.len(),
        };
        let outcome = if len > MAX_KEPT_REPLY {
            Err(format!(
                "call {id} was applied once already; its {} ({len} bytes, over the {} KiB a call log keeps for retries) was not kept",
                if outcome.is_ok() { "reply" } else { "error" },
                MAX_KEPT_REPLY >> 10
            ))
        } else {
            outcome
        };
        if self.slots.len() < REMEMBERED {
            self.slots.push((id, outcome));
            self.by.push(by);
        } else {
            self.slots[self.next as usize] = (id, outcome);
            self.by[self.next as usize] = by;
            self.next = (self.next + 1) % REMEMBERED as u32;
        }
    }

    /// Takes in another instance's log (one that stopped in favour of this one): the
    /// ids this one does not know, so that neither instance's calls apply again. Answers
    /// the ids both logs hold as applied by two different instances: calls applied
    /// twice, once on each side (this log keeps its own outcome of each).
    pub fn merge(&mut self, other: CallLog) -> Vec<String> {
        let mut twice = Vec::new();
        for (id, outcome, by) in other.in_order() {
            match self.slots.iter().position(|(i, _)| *i == id) {
                None => self.record(id, outcome, by),
                Some(at) if self.by[at] != by && self.by[at] != UNKNOWN && by != UNKNOWN => twice.push(id),
                Some(_) => {}
            }
        }
        twice
    }

    /// Whether this log could have been written by [`CallLog::record`]: at most
    /// [`REMEMBERED`] slots, the next one among them, ids that [`check_id`] takes. A log
    /// read from a state that moved is taken only then (one from a peer or a worker could
    /// say anything, and an index past the ring would stop the instance at its next call).
    fn fits(&self) -> bool {
        self.slots.len() <= REMEMBERED
            && self.by.len() == self.slots.len()
            && (self.next as usize) < REMEMBERED
            && self.slots.iter().all(|(id, _)| check_id(id).is_ok())
    }

    /// Oldest first.
    fn in_order(self) -> impl Iterator<Item = (String, Outcome, u64)> {
        let next = if self.slots.len() < REMEMBERED { 0 } else { self.next as usize };
        let (mut slots, mut by) = (self.slots, self.by);
        slots.rotate_left(next);
        by.rotate_left(next);
        slots.into_iter().zip(by).map(|((id, outcome), by)| (id, outcome, by))
    }

    /// The state that moves (a replicated copy, a handoff): the worker's `state` with
    /// this log behind it; the worker's state unchanged while the log is empty.
    pub fn wrap(&self, state: Option<Vec<u8>>) -> Option<Vec<u8>> {
        if self.is_empty() {
            return state;
        }
        let present = state.is_some();
        let mut out = state.unwrap_or_default();
        let start = out.len();
        out = postcard::to_extend(&(present, self), out).expect("a call log serializes");
        let len = (out.len() - start) as u32;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(MARK);
        Some(out)
    }

    /// The worker's state and the call log out of a state that moved ([`CallLog::wrap`]);
    /// a state without a log is the worker's alone.
    pub fn split(state: Option<&[u8]>) -> (Option<&[u8]>, CallLog) {
        let Some(bytes) = state else { return (None, CallLog::default()) };
        let alone = (Some(bytes), CallLog::default());
        let Some(log_end) = bytes.len().checked_sub(MARK.len() + 4) else { return alone };
        if &bytes[log_end + 4..] != MARK {
            return alone;
        }
        let len = u32::from_le_bytes(bytes[log_end..log_end + 4].try_into().expect("four bytes")) as usize;
        let Some(start) = log_end.checked_sub(len) else { return alone };
        let log = &bytes[start..log_end];
        // A log a node from before instance ids wrote ends before `by`.
        let read = postcard::from_bytes::<(bool, CallLog)>(log).or_else(|_| {
            postcard::from_bytes::<(bool, Unsigned)>(log)
                .map(|(present, Unsigned { next, slots })| (present, CallLog { next, by: vec![UNKNOWN; slots.len()], slots }))
        });
        match read {
            Ok((present, log)) if log.fits() => (present.then_some(&bytes[..start]), log),
            // Not a log this host wrote (a forged copy, or a worker's own state that
            // happens to end like one): the state is the worker's alone.
            _ => alone,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log of these slots, each applied by instance 1.
    fn signed(next: u32, slots: Vec<(String, Outcome)>) -> CallLog {
        CallLog { next, by: vec![1; slots.len()], slots }
    }

    #[test]
    fn an_applied_call_answers_its_retry_from_the_log() {
        let mut log = CallLog::default();
        assert_eq!(log.get("a"), None);
        log.record("a".into(), Ok(b"1".to_vec()), 1);
        log.record("b".into(), Err("no".into()), 1);
        assert_eq!(log.get("a"), Some(&Ok(b"1".to_vec())));
        assert_eq!(log.get("b"), Some(&Err("no".into())));
        assert_eq!(log.get("c"), None);
    }

    #[test]
    fn the_oldest_id_is_forgotten_first_and_one_slot_changes_per_call() {
        let mut log = CallLog::default();
        for i in 0..REMEMBERED + 3 {
            log.record(format!("id-{i:04}"), Ok(vec![1]), 1);
        }
        assert_eq!(log.len(), REMEMBERED);
        for i in 0..3 {
            assert_eq!(log.get(&format!("id-{i:04}")), None, "id-{i} is forgotten");
        }
        assert!(log.get("id-0003").is_some() && log.get(&format!("id-{:04}", REMEMBERED + 2)).is_some());
        // A call rewrites one slot: the bytes of the log differ in one place only (a
        // replica's delta is that slot), not shifted.
        let before = log.wrap(Some(vec![0; 100])).unwrap();
        log.record(format!("id-{:04}", REMEMBERED + 3), Ok(vec![1]), 1);
        let after = log.wrap(Some(vec![0; 100])).unwrap();
        assert_eq!(before.len(), after.len());
        let differ: Vec<usize> = (0..before.len()).filter(|&i| before[i] != after[i]).collect();
        assert!(!differ.is_empty() && differ.len() <= 8, "{} bytes changed: {differ:?}", differ.len());
    }

    #[test]
    fn a_state_carries_its_log_and_splits_back() {
        let mut log = CallLog::default();
        // Nothing is added while the log is empty.
        assert_eq!(log.wrap(Some(b"state".to_vec())), Some(b"state".to_vec()));
        assert_eq!(log.wrap(None), None);
        log.record("a".into(), Ok(b"7".to_vec()), 1);
        let wrapped = log.wrap(Some(b"state".to_vec())).unwrap();
        assert!(wrapped.starts_with(b"state"), "the worker's part leads, unchanged");
        assert_eq!(CallLog::split(Some(&wrapped)), (Some(&b"state"[..]), log.clone()));
        // No state from the worker (terminate returned none), a log all the same.
        assert_eq!(CallLog::split(log.wrap(None).as_deref()), (None, log.clone()));
        assert_eq!(CallLog::split(log.wrap(Some(vec![])).as_deref()), (Some(&[][..]), log));
        // Worker states without a log, however they end, are the worker's alone.
        for raw in [vec![], b"x".to_vec(), MARK.to_vec(), [&[9, 0, 0, 0][..], MARK].concat(), [&[0, 0, 0, 0][..], MARK].concat()] {
            assert_eq!(CallLog::split(Some(&raw)), (Some(&raw[..]), CallLog::default()));
        }
        assert_eq!(CallLog::split(None), (None, CallLog::default()));
    }

    #[test]
    fn merging_keeps_both_instances_ids_and_this_ones_outcomes() {
        let mut mine = CallLog::default();
        mine.record("a".into(), Ok(b"mine".to_vec()), 1);
        let mut theirs = CallLog::default();
        theirs.record("a".into(), Ok(b"theirs".to_vec()), 1);
        theirs.record("b".into(), Ok(b"2".to_vec()), 1);
        mine.merge(theirs);
        assert_eq!(mine.get("a"), Some(&Ok(b"mine".to_vec())));
        assert_eq!(mine.get("b"), Some(&Ok(b"2".to_vec())));
        assert_eq!(mine.len(), 2);
    }

    #[test]
    fn an_id_both_instances_applied_is_told_and_shared_history_is_not() {
        // The instance on one side applied a, b and c; the one that took the name over
        // on the other side started from a copy holding a, then applied c (a retry that
        // crossed) and d itself.
        let mut kept = CallLog::default();
        for id in ["a", "b", "c"] {
            kept.record(id.into(), Ok(b"kept".to_vec()), 7);
        }
        let mut took_over = CallLog::default();
        took_over.record("a".into(), Ok(b"kept".to_vec()), 7);
        took_over.record("c".into(), Ok(b"other".to_vec()), 9);
        took_over.record("d".into(), Ok(b"other".to_vec()), 9);
        assert_eq!(kept.clone().merge(took_over.clone()), vec!["c".to_string()], "a is shared history, c was applied twice");
        assert_eq!(took_over.merge(kept.clone()), vec!["c".to_string()], "the same the other way");
        kept.merge(took_over.clone());
        assert_eq!(kept.get("c"), Some(&Ok(b"kept".to_vec())), "the log keeps its own outcome");
        assert_eq!(kept.get("d"), Some(&Ok(b"other".to_vec())));
        // An outcome whose applier is unknown (a node from before) is never told.
        let mut old = CallLog::default();
        old.record("c".into(), Ok(vec![]), UNKNOWN);
        assert_eq!(kept.merge(old), Vec::<String>::new());
    }

    #[test]
    fn a_log_from_a_node_before_instance_ids_is_read_with_unknown_appliers() {
        // As nodes before instance ids wrote it: (present, next, slots), no appliers.
        let slots: Vec<(String, Outcome)> = vec![("a".into(), Ok(b"1".to_vec())), ("b".into(), Err("no".into()))];
        let mut bytes = b"state".to_vec();
        let log = postcard::to_stdvec(&(true, 0u32, &slots)).unwrap();
        bytes.extend_from_slice(&log);
        bytes.extend_from_slice(&(log.len() as u32).to_le_bytes());
        bytes.extend_from_slice(MARK);
        let (state, read) = CallLog::split(Some(&bytes));
        assert_eq!(state, Some(&b"state"[..]));
        assert_eq!(read, CallLog { next: 0, slots, by: vec![UNKNOWN; 2] });
        // And such a node reads what this one writes: the appliers come last.
        let wrapped = read.wrap(Some(b"state".to_vec())).unwrap();
        let end = wrapped.len() - MARK.len() - 4;
        let len = u32::from_le_bytes(wrapped[end..end + 4].try_into().unwrap()) as usize;
        let (present, before): (bool, Unsigned) = postcard::from_bytes(&wrapped[end - len..end]).unwrap();
        assert!(present);
        assert_eq!((before.next, before.slots), (read.next, read.slots));
    }

    #[test]
    fn a_log_no_instance_could_have_written_is_not_taken() {
        // Wrapped by hand as `wrap` does, but with what `record` never writes.
        let forge = |log: &CallLog| {
            let mut out = postcard::to_stdvec(&(true, log)).unwrap();
            out.extend_from_slice(&(out.len() as u32).to_le_bytes());
            out.extend_from_slice(MARK);
            [b"state".to_vec(), out].concat()
        };
        let full: Vec<(String, Outcome)> = (0..REMEMBERED).map(|i| (format!("id-{i}"), Ok(vec![]))).collect();
        let forged = [
            signed(1000, full.clone()),
            signed(REMEMBERED as u32, full.clone()),
            signed(0, [full.clone(), full.clone()].concat()),
            signed(0, vec![("a\nforged log line".into(), Ok(vec![]))]),
            signed(0, vec![(String::new(), Ok(vec![]))]),
            // An applier for each slot, or none.
            CallLog { next: 0, slots: vec![("a".into(), Ok(vec![]))], by: vec![1, 2] },
        ];
        for log in forged {
            let bytes = forge(&log);
            assert_eq!(CallLog::split(Some(&bytes)), (Some(&bytes[..]), CallLog::default()), "next {}, {} slots", log.next, log.slots.len());
        }
        // What `record` writes is taken: a full ring whose next slot is its last.
        let ring = signed(REMEMBERED as u32 - 1, full);
        let (_, mut back) = CallLog::split(Some(&forge(&ring)));
        assert_eq!(back, ring);
        back.record("new".into(), Ok(vec![]), 1);
        back.merge(ring);
        assert_eq!(back.len(), REMEMBERED);
    }

    proptest::proptest! {
        /// Whatever ring a moved state claims (any next slot, any number of slots), the
        /// log taken from it records and merges without a panic, and holds at most
        /// [`REMEMBERED`] outcomes after.
        #[test]
        fn any_claimed_log_records_and_merges(next in proptest::prelude::any::<u32>(), slots in 0usize..600, id_len in 0usize..300) {
            let id = |i: usize| format!("{i:0>width$}", width = id_len);
            let log = signed(next, (0..slots).map(|i| (id(i), Ok(vec![1]))).collect());
            let mut wrapped = postcard::to_stdvec(&(true, &log)).unwrap();
            wrapped.extend_from_slice(&(wrapped.len() as u32).to_le_bytes());
            wrapped.extend_from_slice(MARK);
            let (_, mut back) = CallLog::split(Some(&wrapped));
            let other = back.clone();
            back.record("new".into(), Ok(vec![]), 1);
            back.merge(other.clone());
            back.merge(other);
            proptest::prop_assert!(back.len() <= REMEMBERED);
        }
    }

    #[test]
    fn a_reply_too_large_to_keep_is_remembered_as_applied_without_it() {
        let mut log = CallLog::default();
        log.record("small".into(), Ok(vec![1; MAX_KEPT_REPLY]), 1);
        log.record("large".into(), Ok(vec![1; MAX_KEPT_REPLY + 1]), 1);
        log.record("wordy".into(), Err("e".repeat(1 << 20)), 1);
        assert_eq!(log.get("small"), Some(&Ok(vec![1; MAX_KEPT_REPLY])));
        let why = log.get("large").unwrap().clone().unwrap_err();
        assert!(why.starts_with("call large was applied once already; its reply (65537 bytes, over the 64 KiB"), "{why}");
        assert!(log.get("wordy").unwrap().clone().unwrap_err().contains("its error (1048576 bytes"));
        // However large the replies, a full log holds 256 of at most 64 KiB.
        for i in 0..REMEMBERED {
            log.record(format!("id-{i}"), Ok(vec![0; 1 << 20]), 1);
        }
        let held: usize = log.slots.iter().map(|(_, o)| o.as_ref().map_or_else(String::len, Vec::len)).sum();
        assert!(held <= REMEMBERED * 300, "{held} bytes held");
    }

    #[test]
    fn ids_are_bounded() {
        assert!(check_id("").is_err());
        assert!(check_id(&"x".repeat(MAX_ID_LEN)).is_ok());
        assert!(check_id(&"x".repeat(MAX_ID_LEN + 1)).unwrap_err().contains("at most 256"));
    }
}
