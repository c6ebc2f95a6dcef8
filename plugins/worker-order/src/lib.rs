//! `worker-order`: an order per customer (`order/John`) that collects added items and,
//! once nothing has been added for a quiet period, delivers them all in one POST to a
//! webhook, then starts empty.
//!
//! | message (JSON) | reply (JSON) |
//! |---|---|
//! | `{"add": [1, 2]}` | the contents after adding (the quiet period starts again) |
//! | `"contents"` (or the bare word `contents`) | the contents, e.g. `[1,2,3]` |
//!
//! The delivery is `POST webhook` with `{"customer": "John", "items": [1, 2, 3]}`. A
//! webhook that fails (no answer, or not 2xx) is tried again with backoff (1 s, 2 s, 4 s …
//! up to 60 s), each failure logged; the items stay until one succeeds. Without a
//! `webhook` nothing is delivered and the order only collects.
//!
//! The state handed over between nodes (SIGTERM, rebalance) is the items and when their
//! delivery is due: the new owner delivers them, once, when it is due. After a partition
//! heals, the order that stays appends the other instance's items (`resolve-conflict`).
//!
//! ```toml
//! [worker.order]
//! component = "../plugins/dist/worker_order.wasm"
//! activate_on_call = true   # an order exists as soon as someone adds to it
//! allowed_outbound_hosts = ["http://127.0.0.1:8089"]
//! [worker.order.config]
//! webhook = "http://127.0.0.1:8089/deliveries"
//! quiet_ms = 5000           # the default
//! ```

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

wit_bindgen::generate!({ world: "merging-worker", path: "../../wit/worker@0.1.0", generate_all });

/// `wasi:config/store`: the kind's `[worker.order.config]`.
mod config {
    wit_bindgen::generate!({ world: "imports", path: "../../wit/wasi-config@0.2.0-rc.1" });
}

use exports::wasmnode::worker::handler::Guest;
use wasmnode::worker::cluster;
use wasmnode::worker::log::{log, Level};
use wasmnode::worker::types::Info;

/// The quiet period when the config gives none.
const DEFAULT_QUIET_MS: u64 = 5000;
/// The longest wait between two tries of a failing webhook.
const MAX_BACKOFF_MS: u64 = 60_000;

#[derive(Default)]
struct Order {
    items: Vec<Value>,
    /// When the delivery is due (ms since the epoch); 0: nothing pending.
    due_ms: u64,
    /// Failed tries of the pending delivery.
    failures: u32,
    /// Bumped by every add and every handover: a timer of an older generation is stale.
    generation: u64,
}

static ORDER: Mutex<Order> = Mutex::new(Order { items: Vec::new(), due_ms: 0, failures: 0, generation: 0 });

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn setting(key: &str) -> Option<String> {
    config::wasi::config::store::get(key).ok().flatten().filter(|v| !v.is_empty())
}

fn quiet_ms() -> u64 {
    setting("quiet_ms").and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_QUIET_MS)
}

fn contents(o: &Order) -> Vec<u8> {
    serde_json::to_vec(&o.items).expect("a JSON list serializes")
}

/// Arms the timer that delivers generation `o.generation` in `delay_ms`.
fn arm(o: &Order, delay_ms: u64) {
    cluster::send_after(delay_ms.min(u32::MAX as u64) as u32, o.generation.to_string().as_bytes());
}

fn customer() -> String {
    cluster::whoami().key
}

/// POSTs `body` as JSON to `url` (`http://host:port/path`); Ok on a 2xx answer.
fn post(url: &str, body: &[u8]) -> Result<(), String> {
    use wasi::http::outgoing_handler;
    use wasi::http::types::{Fields, Method, OutgoingBody, OutgoingRequest, Scheme};
    let (scheme, rest) = url.split_once("://").ok_or_else(|| format!("webhook `{url}` has no scheme"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let headers = Fields::from_list(&[
        ("content-type".to_string(), b"application/json".to_vec()),
        // With its length, so the body goes as one (not chunked): any server reads it.
        ("content-length".to_string(), body.len().to_string().into_bytes()),
    ])
    .map_err(|e| format!("{e:?}"))?;
    let request = OutgoingRequest::new(headers);
    request.set_method(&Method::Post).map_err(|()| "method")?;
    request.set_scheme(Some(&if scheme == "https" { Scheme::Https } else { Scheme::Http })).map_err(|()| "scheme")?;
    request.set_authority(Some(authority)).map_err(|()| "authority")?;
    request.set_path_with_query(Some(path)).map_err(|()| "path")?;
    let out = request.body().map_err(|()| "body")?;
    out.write().map_err(|()| "body stream")?.blocking_write_and_flush(body).map_err(|e| format!("sending: {e:?}"))?;
    OutgoingBody::finish(out, None).map_err(|e| format!("{e:?}"))?;
    let response = outgoing_handler::handle(request, None).map_err(|e| format!("{e:?}"))?;
    response.subscribe().block();
    let response = response.get().ok_or("no response")?.map_err(|()| "response taken")?.map_err(|e| format!("{e:?}"))?;
    match response.status() {
        200..=299 => Ok(()),
        status => Err(format!("HTTP {status}")),
    }
}

/// The timer of generation `generation` fired: deliver, or try again later.
fn deliver(generation: u64) {
    let mut o = ORDER.lock().unwrap();
    if generation != o.generation || o.items.is_empty() {
        return;
    }
    let Some(webhook) = setting("webhook") else { return };
    let who = customer();
    let body = serde_json::to_vec(&json!({ "customer": who, "items": o.items })).expect("JSON serializes");
    match post(&webhook, &body) {
        Ok(()) => {
            log(Level::Info, &format!("delivered {} items for {who} to {webhook}", o.items.len()));
            *o = Order { generation: o.generation + 1, ..Order::default() };
        }
        Err(e) => {
            o.failures += 1;
            let backoff = (1000u64 << (o.failures - 1).min(16)).min(MAX_BACKOFF_MS);
            o.due_ms = now_ms() + backoff;
            log(Level::Warn, &format!("delivery of {} items for {who} to {webhook} failed ({e}); try {} in {backoff} ms", o.items.len(), o.failures + 1));
            arm(&o, backoff);
        }
    }
}

struct Worker;

impl Guest for Worker {
    fn init(_args: Vec<u8>, handoff_state: Option<Vec<u8>>) -> Result<(), String> {
        let mut o = ORDER.lock().unwrap();
        *o = Order { generation: o.generation + 1, ..Order::default() };
        if let Some(state) = handoff_state {
            match serde_json::from_slice::<Value>(&state).map_err(|e| format!("bad handed-over state: {e}"))? {
                // The format before deliveries: the items alone.
                Value::Array(items) => o.items = items,
                Value::Object(s) => {
                    o.items = s.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
                    o.due_ms = s.get("due_ms").and_then(Value::as_u64).unwrap_or(0);
                    o.failures = s.get("failures").and_then(Value::as_u64).unwrap_or(0) as u32;
                }
                _ => return Err("bad handed-over state: not a JSON list or object".into()),
            }
        }
        // What was pending on the last node is due here, when it was due there.
        if !o.items.is_empty() {
            if o.due_ms == 0 {
                o.due_ms = now_ms() + quiet_ms();
            }
            arm(&o, o.due_ms.saturating_sub(now_ms()));
        }
        Ok(())
    }

    fn handle_call(msg: Vec<u8>) -> Result<Vec<u8>, String> {
        if msg == b"contents" {
            return Ok(contents(&ORDER.lock().unwrap()));
        }
        match serde_json::from_slice::<Value>(&msg).map_err(|e| format!("not JSON: {e}"))? {
            Value::String(s) if s == "contents" => Ok(contents(&ORDER.lock().unwrap())),
            Value::Object(m) => match m.get("add") {
                Some(Value::Array(add)) => {
                    let mut o = ORDER.lock().unwrap();
                    o.items.extend(add.iter().cloned());
                    // The quiet period starts again.
                    o.generation += 1;
                    o.failures = 0;
                    let quiet = quiet_ms();
                    o.due_ms = now_ms() + quiet;
                    arm(&o, quiet);
                    Ok(contents(&o))
                }
                _ => Err("expected {\"add\": [...]} or \"contents\"".into()),
            },
            _ => Err("expected {\"add\": [...]} or \"contents\"".into()),
        }
    }

    fn handle_cast(msg: Vec<u8>) {
        let _ = Self::handle_call(msg);
    }

    fn handle_info(event: Info) {
        if let Info::Timer(payload) = event {
            if let Some(generation) = std::str::from_utf8(&payload).ok().and_then(|g| g.parse().ok()) {
                deliver(generation);
            }
        }
    }

    fn terminate(_reason: String) -> Option<Vec<u8>> {
        let o = ORDER.lock().unwrap();
        Some(serde_json::to_vec(&json!({ "items": o.items, "due_ms": o.due_ms, "failures": o.failures })).expect("JSON serializes"))
    }
}

impl exports::wasmnode::worker::conflict::Guest for Worker {
    fn resolve_conflict(other_state: Vec<u8>) {
        let items = match serde_json::from_slice::<Value>(&other_state) {
            Ok(Value::Array(items)) => items,
            Ok(Value::Object(s)) => s.get("items").and_then(Value::as_array).cloned().unwrap_or_default(),
            _ => return,
        };
        if items.is_empty() {
            return;
        }
        let mut o = ORDER.lock().unwrap();
        o.items.extend(items);
        if o.due_ms == 0 {
            o.generation += 1;
            let quiet = quiet_ms();
            o.due_ms = now_ms() + quiet;
            arm(&o, quiet);
        }
    }
}

export!(Worker);
