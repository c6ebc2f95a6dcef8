//! Test fixture: a counter that is durable and merges duplicate instances, the way the
//! worker docs ask a merging worker to: a grow-only counter (a CRDT).
//!
//! | message | reply |
//! |---|---|
//! | `value` | the value, as decimal text |
//! | `increment` | the new value |
//!
//! Each instance counts its own increments under an id of its own, drawn at random when
//! it starts; the value is the sum over all ids. The state (what `snapshot` copies,
//! `terminate` hands over and `resolve-conflict` receives) is every id's count, one
//! `ID COUNT` line each. Merging keeps, for each id, the larger count: what both
//! instances hold (a take-over started from a copy of the other) counts once, and what
//! either added is kept.

use std::collections::BTreeMap;
use std::sync::Mutex;

wit_bindgen::generate!({ world: "durable-merging-worker", path: "../../../wit/worker@0.1.0", generate_all });

use exports::wasmnode::worker::handler::Guest;
use wasmnode::worker::types::Info;

struct Tally {
    /// This instance's id.
    own: u64,
    /// Increments by instance id.
    counts: BTreeMap<u64, u64>,
}

static TALLY: Mutex<Tally> = Mutex::new(Tally { own: 0, counts: BTreeMap::new() });

fn parse(bytes: &[u8]) -> Result<BTreeMap<u64, u64>, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "the state is not UTF-8".to_string())?;
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (id, n) = l.split_once(' ').ok_or_else(|| format!("bad state line {l:?}"))?;
            Ok((id.parse().map_err(|_| format!("bad id in {l:?}"))?, n.parse().map_err(|_| format!("bad count in {l:?}"))?))
        })
        .collect()
}

fn state() -> Vec<u8> {
    let t = TALLY.lock().unwrap();
    t.counts.iter().map(|(id, n)| format!("{id} {n}\n")).collect::<String>().into_bytes()
}

fn value(t: &Tally) -> u64 {
    t.counts.values().sum()
}

struct Worker;

impl Guest for Worker {
    fn init(_args: Vec<u8>, handoff_state: Option<Vec<u8>>) -> Result<(), String> {
        let counts = match handoff_state {
            Some(s) => parse(&s)?,
            None => BTreeMap::new(),
        };
        *TALLY.lock().unwrap() = Tally { own: wasi::random::random::get_random_u64(), counts };
        Ok(())
    }

    fn handle_call(msg: Vec<u8>) -> Result<Vec<u8>, String> {
        let mut t = TALLY.lock().unwrap();
        match msg.as_slice() {
            b"value" => {}
            b"increment" => {
                let own = t.own;
                *t.counts.entry(own).or_default() += 1;
            }
            other => return Err(format!("unknown message {:?}: send `value` or `increment`", String::from_utf8_lossy(other))),
        }
        Ok(value(&t).to_string().into_bytes())
    }

    fn handle_cast(_msg: Vec<u8>) {}

    fn handle_info(_event: Info) {}

    fn terminate(_reason: String) -> Option<Vec<u8>> {
        Some(state())
    }
}

impl exports::wasmnode::worker::snapshot::Guest for Worker {
    fn snapshot() -> Vec<u8> {
        state()
    }
}

impl exports::wasmnode::worker::conflict::Guest for Worker {
    fn resolve_conflict(other_state: Vec<u8>) {
        // A state that does not parse is not ours to merge; the instance keeps its own.
        let Ok(other) = parse(&other_state) else { return };
        let mut t = TALLY.lock().unwrap();
        for (id, n) in other {
            let mine = t.counts.entry(id).or_default();
            *mine = (*mine).max(n);
        }
    }
}

export!(Worker);
