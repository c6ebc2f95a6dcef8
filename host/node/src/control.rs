//! The control plane that hidden nodes (the `wasmnode` CLI) talk to: JSON requests in
//! `Request` frames, JSON answers in `Reply` frames.
//!
//! | request | answer |
//! |---|---|
//! | `{"op":"nodes"}` | `{"node": NAME, "members": [{"name", "since_ms", "self"}]}` |
//! | `{"op":"watch"}` | the `nodes` answer, then one [`MemberEvent`] per reply until the connection closes |
//!
//! [`MemberEvent`]: crate::membership::MemberEvent

use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use wasmnode_proto::Frame;

use crate::dist::Peer;
use crate::membership::Membership;

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Request {
    Nodes,
    Watch,
}

fn nodes(m: &Membership) -> Bytes {
    Bytes::from(json!({ "node": m.dist().name(), "members": m.members() }).to_string())
}

/// Answers one request from `peer`.
pub fn handle(m: &Membership, peer: Peer, id: u64, body: Bytes) {
    match serde_json::from_slice::<Request>(&body) {
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
