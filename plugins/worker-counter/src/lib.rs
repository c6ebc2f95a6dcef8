//! `worker-counter`: seed 002's Counter as a wasmnode worker.
//!
//! | message | reply |
//! |---|---|
//! | `value` | the value, as decimal text |
//! | `increment` | the new value (also accepted as a cast) |
//!
//! `init` takes an optional start value (decimal text); the state handed over between
//! nodes, and copied to replicas when the kind is durable (`snapshot`), is the value as
//! decimal text.
//!
//! ```toml
//! [worker.counter]
//! component = "../plugins/dist/worker_counter.wasm"
//! ```
//! `wasmnode start --node a@127.0.0.1 counter c1` then
//! `wasmnode call --node b@127.0.0.2 counter/c1 increment`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

wit_bindgen::generate!({ world: "durable-worker", path: "../../wit/worker@0.1.0", generate_all });

use exports::wasmnode::worker::handler::Guest;
use wasmnode::worker::types::Info;

static VALUE: AtomicU64 = AtomicU64::new(0);

fn parse(bytes: &[u8], what: &str) -> Result<u64, String> {
    std::str::from_utf8(bytes).ok().and_then(|s| s.trim().parse().ok()).ok_or_else(|| format!("{what} is not a decimal number"))
}

struct Counter;

impl Guest for Counter {
    fn init(args: Vec<u8>, handoff_state: Option<Vec<u8>>) -> Result<(), String> {
        let start = match (handoff_state, args.is_empty()) {
            (Some(state), _) => parse(&state, "the handed-over state")?,
            (None, false) => parse(&args, "the start value")?,
            (None, true) => 0,
        };
        VALUE.store(start, Relaxed);
        Ok(())
    }

    fn handle_call(msg: Vec<u8>) -> Result<Vec<u8>, String> {
        match msg.as_slice() {
            b"value" => Ok(VALUE.load(Relaxed).to_string().into_bytes()),
            b"increment" => Ok((VALUE.fetch_add(1, Relaxed) + 1).to_string().into_bytes()),
            other => Err(format!("unknown message {:?}: send `value` or `increment`", String::from_utf8_lossy(other))),
        }
    }

    fn handle_cast(msg: Vec<u8>) {
        if msg == b"increment" {
            VALUE.fetch_add(1, Relaxed);
        }
    }

    fn handle_info(_event: Info) {}

    fn terminate(_reason: String) -> Option<Vec<u8>> {
        Some(VALUE.load(Relaxed).to_string().into_bytes())
    }
}

impl exports::wasmnode::worker::snapshot::Guest for Counter {
    fn snapshot() -> Vec<u8> {
        VALUE.load(Relaxed).to_string().into_bytes()
    }
}

export!(Counter);
