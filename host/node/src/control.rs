//! The control plane that hidden nodes (the `wasmnode` CLI) talk to: JSON requests in
//! `Request` frames, JSON answers in `Reply` frames.
//!
//! | request | answer |
//! |---|---|
//! | `{"op":"nodes"}` | `{"node": NAME, "members": [{"name", "since_ms", "self"}]}` |
//! | `{"op":"watch"}` | the `nodes` answer, then one [`MemberEvent`] per reply until the connection closes |
//! | `{"op":"start","kind","key","args"}` | `{"started": NODE}`, or `{"error":"already_started","node"}` … |
//! | `{"op":"call","kind","key","msg","timeout_ms"}` | `{"reply": TEXT}` (or `reply_hex` when not UTF-8), or `{"error": "not_found" \| "timeout" \| "failed" \| "unavailable" \| "in_doubt", "reason"}` |
//! | `{"op":"heard","node"}` | `{"node", "silent_ms"}`: how long since this node last read from `node` (`null`: not connected); a member asks when its own connection to `node` is silent |
//! | `{"op":"workers"}` | `{"nodes": [{"node", "workers": ["kind/key", …]}], "durable": [{"name", "owner", "copy", "replicas": [{"node", "copy", "bytes", "current"}]}]}` |
//!
//! Worker messages and replies are text here (the CLI's); the HTTP gateway and workers
//! themselves carry bytes.
//!
//! [`MemberEvent`]: crate::membership::MemberEvent

use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use wasmnode_proto::Frame;

use std::time::Duration;

use crate::dist::Peer;
use crate::membership::Membership;
use crate::registry::{CallError, Registry, StartError, WorkerName};
use crate::telemetry::{self, TraceContext};

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Request {
    Nodes,
    Watch,
    Start {
        kind: String,
        key: String,
        #[serde(default)]
        args: String,
    },
    Call {
        kind: String,
        key: String,
        msg: String,
        #[serde(default = "default_timeout")]
        timeout_ms: u64,
        /// A call id: applied once however often the call is retried with it.
        #[serde(default)]
        id: Option<String>,
    },
    Workers,
    /// When this node last heard `node` (another member's connection to it is silent).
    Heard {
        node: String,
    },
}

fn default_timeout() -> u64 {
    5000
}

/// JSON for a start error (shared with the HTTP gateway).
pub fn start_error_json(e: &StartError) -> serde_json::Value {
    match e {
        StartError::AlreadyStarted(node) => json!({ "error": "already_started", "node": node }),
        StartError::UnknownKind(k) => json!({ "error": "unknown_kind", "reason": k }),
        StartError::Failed(f) => json!({ "error": "failed", "reason": f }),
    }
}

/// JSON for a call error (shared with the HTTP gateway).
pub fn call_error_json(e: &CallError, name: &str) -> serde_json::Value {
    match e {
        CallError::NotFound => json!({ "error": "not_found", "name": name }),
        CallError::Timeout => json!({ "error": "timeout", "name": name }),
        CallError::Failed(r) => json!({ "error": "failed", "name": name, "reason": r }),
        CallError::Unavailable(r) if e.in_doubt() => json!({
            "error": "in_doubt",
            "name": name,
            "reason": format!("{r} while the call was under way: it may have been applied; a retry with the same call id applies it at most once"),
        }),
        CallError::Unavailable(r) => json!({ "error": "unavailable", "name": name, "reason": r }),
    }
}

fn nodes(m: &Membership) -> Bytes {
    Bytes::from(json!({ "node": m.dist().name(), "members": m.members() }).to_string())
}

/// Answers one request from `peer`.
/// A call under `trace` (the CLI's `TRACEPARENT`) is a server span of that trace, and a
/// new trace's root without one, when tracing is on.
pub fn handle(m: &Membership, registry: &Registry, peer: Peer, id: u64, trace: Option<TraceContext>, body: Bytes) {
    let reply = move |peer: &Peer, v: serde_json::Value| {
        let mut body = v.to_string();
        if body.len() > crate::dist::MAX_BODY {
            // Too large for one message (a worker's reply, hex-encoded doubles): said instead.
            body = json!({ "error": "failed", "reason": crate::dist::too_large("the answer", body.len()) }).to_string();
        }
        peer.send(Frame::Reply { id, body: Bytes::from(body) })
    };
    match serde_json::from_slice::<Request>(&body) {
        Ok(Request::Start { kind, key, args }) => {
            let registry = registry.clone();
            tokio::spawn(async move {
                let v = match registry.start_worker(&kind, &key, args.into_bytes()).await {
                    Ok(node) => json!({ "started": node, "name": WorkerName::new(&kind, &key).to_string() }),
                    Err(e) => start_error_json(&e),
                };
                reply(&peer, v);
            });
        }
        Ok(Request::Call { kind, key, msg, timeout_ms, id }) => {
            let registry = registry.clone();
            tokio::spawn(async move {
                let name = WorkerName::new(&kind, &key).to_string();
                let timeout = Duration::from_millis(timeout_ms);
                let mut span = telemetry::span("call", telemetry::Kind::Server, trace, Some(&name), None);
                let result = registry.call_traced(&kind, &key, msg.into_bytes(), id.as_deref(), span.as_ref().map(telemetry::Span::context), timeout).await;
                if let (Some(span), Err(e)) = (span.as_mut(), &result) {
                    span.fail(e.to_string());
                }
                drop(span);
                let v = match result {
                    Ok(r) => match String::from_utf8(r) {
                        Ok(text) => json!({ "reply": text }),
                        Err(e) => json!({ "reply_hex": e.as_bytes().iter().map(|b| format!("{b:02x}")).collect::<String>() }),
                    },
                    Err(e) => call_error_json(&e, &name),
                };
                reply(&peer, v);
            });
        }
        Ok(Request::Workers) => {
            let registry = registry.clone();
            tokio::spawn(async move {
                let nodes: Vec<_> = registry.list_all().await.into_iter().map(|(node, workers)| json!({ "node": node, "workers": workers })).collect();
                let durable = registry.durable_all().await;
                reply(&peer, json!({ "nodes": nodes, "durable": durable }));
            });
        }
        Ok(Request::Heard { node }) => {
            let silent_ms = m.dist().peer(&node).map(|p| p.silent_for().as_millis() as u64);
            peer.send(Frame::Reply { id, body: Bytes::from(json!({ "node": node, "silent_ms": silent_ms }).to_string()) });
        }
        Ok(Request::Nodes) => {
            peer.send(Frame::Reply { id, body: nodes(m) });
        }
        Ok(Request::Watch) => {
            // Subscribe before the snapshot so no event falls between the two.
            let mut events = m.subscribe();
            peer.send(Frame::Reply { id, body: nodes(m) });
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        ev = events.recv() => match ev {
                            Ok(ev) => {
                                let body = Bytes::from(serde_json::to_string(&ev).expect("events serialize"));
                                if !peer.send(Frame::Reply { id, body }) {
                                    return;
                                }
                            }
                            Err(RecvError::Lagged(_)) => continue,
                            Err(RecvError::Closed) => return,
                        },
                        _ = peer.closed() => return,
                    }
                }
            });
        }
        Err(e) => {
            let body = Bytes::from(json!({ "error": format!("bad request: {e}") }).to_string());
            peer.send(Frame::Reply { id, body });
        }
    }
}
