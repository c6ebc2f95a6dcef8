//! `worker-order`: seed 004's Order, one instance per customer (`order/John`).
//!
//! | message (JSON) | reply (JSON) |
//! |---|---|
//! | `{"add": [1, 2]}` | the contents after adding |
//! | `"contents"` (or the bare word `contents`) | the contents, e.g. `[1,2,3]` |
//!
//! The state handed over between nodes is the contents as JSON. After a partition heals,
//! the order that stays appends the other instance's items (`resolve-conflict`).
//!
//! ```toml
//! [worker.order]
//! component = "../plugins/dist/worker_order.wasm"
//! activate_on_call = true   # an order exists as soon as someone adds to it
//! ```

use std::sync::Mutex;

use serde_json::Value;

wit_bindgen::generate!({ world: "merging-worker", path: "../../wit/worker@0.1.0", generate_all });

use exports::wasmnode::worker::handler::Guest;
use wasmnode::worker::types::Info;

static ITEMS: Mutex<Vec<Value>> = Mutex::new(Vec::new());

fn contents() -> Vec<u8> {
    serde_json::to_vec(&*ITEMS.lock().unwrap()).expect("a JSON list serializes")
}

struct Order;

impl Guest for Order {
    fn init(_args: Vec<u8>, handoff_state: Option<Vec<u8>>) -> Result<(), String> {
        let items = match handoff_state {
            Some(state) => serde_json::from_slice(&state).map_err(|e| format!("bad handed-over state: {e}"))?,
            None => Vec::new(),
        };
        *ITEMS.lock().unwrap() = items;
        Ok(())
    }

    fn handle_call(msg: Vec<u8>) -> Result<Vec<u8>, String> {
        if msg == b"contents" {
            return Ok(contents());
        }
        match serde_json::from_slice::<Value>(&msg).map_err(|e| format!("not JSON: {e}"))? {
            Value::String(s) if s == "contents" => Ok(contents()),
            Value::Object(o) => match o.get("add") {
                Some(Value::Array(add)) => {
                    ITEMS.lock().unwrap().extend(add.iter().cloned());
                    Ok(contents())
                }
                _ => Err("expected {\"add\": [...]} or \"contents\"".into()),
            },
            _ => Err("expected {\"add\": [...]} or \"contents\"".into()),
        }
    }

    fn handle_cast(msg: Vec<u8>) {
        let _ = Self::handle_call(msg);
    }

    fn handle_info(_event: Info) {}

    fn terminate(_reason: String) -> Option<Vec<u8>> {
        Some(contents())
    }
}

impl exports::wasmnode::worker::conflict::Guest for Order {
    fn resolve_conflict(other_state: Vec<u8>) {
        if let Ok(Value::Array(items)) = serde_json::from_slice::<Value>(&other_state) {
            ITEMS.lock().unwrap().extend(items);
        }
    }
}

export!(Order);
