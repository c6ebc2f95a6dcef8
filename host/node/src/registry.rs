//! The registry: one live instance per worker name, cluster-wide, and calls by name.
//!
//! - Placement: a name's owner is chosen among the live members by rendezvous hashing
//!   (highest FNV-1a score of `member ‖ name`), so every node that sees the same members
//!   agrees, and a member joining or leaving moves only the names it wins or held.
//! - Start: answered `already-started` with the node when the name runs here; started
//!   here when this node owns it (the name is reserved before `init` runs, so concurrent
//!   starts arriving here serialize); otherwise forwarded to the owner.
//! - Call and cast: to the local instance when it runs here, else to the owner; a name
//!   running nowhere answers `not-found`, unless its kind activates on call, in which
//!   case the owner starts it first (virtual actors).
//! - Node-up and node-down reach every local instance as `info` events.
//!
//! Nodes talk through `Request`/`Reply` frames whose body starts with [`RPC_TAG`] and
//! continues in postcard. The registry knows nothing of WebAssembly: the runtime
//! creates instances through the [`Spawner`] it is given, and each instance is a
//! [`Mailbox`] here.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info};
use wasmnode_proto::Frame;

use crate::dist::Peer;
use crate::membership::{MemberEvent, Membership};

/// First byte of a registry request body (control-plane JSON starts with `{`).
pub const RPC_TAG: u8 = 0x01;

/// Why a call or cast got no answer (the WIT `call-error`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum CallError {
    #[error("not found")]
    NotFound,
    #[error("timed out")]
    Timeout,
    #[error("failed: {0}")]
    Failed(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// Why a start started nothing (the WIT `start-error`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum StartError {
    #[error("already started on {0}")]
    AlreadyStarted(String),
    #[error("unknown worker kind {0}")]
    UnknownKind(String),
    #[error("failed: {0}")]
    Failed(String),
}

/// An event delivered to instances' `handle-info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Info {
    NodeUp(String),
    NodeDown { node: String, reason: String },
    Timer(Vec<u8>),
}

/// What an instance's mailbox carries; it handles one at a time, in order.
pub enum Envelope {
    Call { msg: Vec<u8>, reply: oneshot::Sender<Result<Vec<u8>, CallError>> },
    Cast { msg: Vec<u8> },
    Info(Info),
    /// Stop after `terminate(reason)`; the returned state goes back on `reply`.
    Stop { reason: String, reply: oneshot::Sender<Option<Vec<u8>>> },
}

/// A running instance, as the registry knows it.
#[derive(Clone)]
pub struct Mailbox {
    pub tx: mpsc::UnboundedSender<Envelope>,
    /// Tells this instance from an earlier or later one of the same name.
    pub id: u64,
}

/// A boxed future, for the object-safe [`Spawner`].
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// How the registry creates instances; implemented by the runtime.
pub trait Spawner: Send + Sync + 'static {
    /// Whether this node can run workers of `kind`.
    fn has_kind(&self, kind: &str) -> bool;
    /// Whether a call to a name of `kind` that runs nowhere starts it.
    fn activate_on_call(&self, kind: &str) -> bool;
    /// Starts an instance with mailbox id `id`; resolves when its `init` has returned.
    fn spawn(&self, registry: Registry, kind: String, key: String, args: Vec<u8>, handoff: Option<Vec<u8>>, id: u64) -> BoxFuture<Result<Mailbox, String>>;
}

enum Slot {
    /// `init` is running; callers wait here for the outcome.
    Starting(Vec<oneshot::Sender<Option<Mailbox>>>),
    Running(Mailbox),
}

#[derive(Serialize, Deserialize)]
enum Rpc {
    Start { kind: String, key: String, args: Vec<u8> },
    Call { kind: String, key: String, msg: Vec<u8>, timeout_ms: u64 },
    Cast { kind: String, key: String, msg: Vec<u8> },
    List,
}

#[derive(Serialize, Deserialize)]
enum RpcReply {
    Started(String),
    StartFailed(StartError),
    Reply(Vec<u8>),
    CallFailed(CallError),
    Done,
    List(Vec<String>),
}

struct Inner {
    membership: Membership,
    spawner: Arc<dyn Spawner>,
    local: Mutex<HashMap<String, Slot>>,
    next_id: AtomicU64,
}

/// This node's part of the cluster-wide registry.
#[derive(Clone)]
pub struct Registry(Arc<Inner>);

/// `kind/key`.
pub fn full_name(kind: &str, key: &str) -> String {
    format!("{kind}/{key}")
}

/// The member that owns `name`: highest rendezvous score, ties to the smaller name.
pub fn owner<'a>(members: impl IntoIterator<Item = &'a str>, name: &str) -> Option<&'a str> {
    members.into_iter().max_by_key(|m| (score(m, name), std::cmp::Reverse(*m)))
}

fn score(member: &str, name: &str) -> u64 {
    // FNV-1a: stable across builds and platforms, so mixed versions agree on owners.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in member.bytes().chain([0u8]).chain(name.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // Finalize (splitmix64) so similar inputs spread.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

impl Registry {
    /// A registry over `membership`, creating instances with `spawner`.
    pub fn start(membership: Membership, spawner: Arc<dyn Spawner>) -> Registry {
        let r = Registry(Arc::new(Inner { membership, spawner, local: Mutex::new(HashMap::new()), next_id: AtomicU64::new(1) }));
        tokio::spawn(r.clone().forward_member_events());
        r
    }

    pub fn node(&self) -> &str {
        self.0.membership.dist().name()
    }

    pub fn membership(&self) -> &Membership {
        &self.0.membership
    }

    /// The node that should run `name` now.
    pub fn owner_of(&self, name: &str) -> String {
        let members = self.0.membership.members();
        owner(members.iter().map(|m| m.name.as_str()), name).unwrap_or(self.node()).to_string()
    }

    /// Names running on this node, sorted.
    pub fn local_names(&self) -> Vec<String> {
        let local = self.0.local.lock().unwrap();
        let mut names: Vec<String> = local.iter().filter(|(_, s)| matches!(s, Slot::Running(_))).map(|(n, _)| n.clone()).collect();
        names.sort();
        names
    }

    /// Starts `kind/key` on its owner; the node it runs on.
    pub async fn start_worker(&self, kind: &str, key: &str, args: Vec<u8>) -> Result<String, StartError> {
        let name = full_name(kind, key);
        if self.0.local.lock().unwrap().contains_key(&name) {
            return Err(StartError::AlreadyStarted(self.node().to_string()));
        }
        let owner = self.owner_of(&name);
        if owner == self.node() {
            return self.start_local(kind, key, args, None).await;
        }
        let rpc = Rpc::Start { kind: kind.into(), key: key.into(), args };
        match self.rpc(&owner, &rpc, Duration::from_secs(30)).await {
            Ok(RpcReply::Started(node)) => Ok(node),
            Ok(RpcReply::StartFailed(e)) => Err(e),
            Ok(_) => Err(StartError::Failed("unexpected reply".into())),
            Err(e) => Err(StartError::Failed(format!("owner {owner}: {e}"))),
        }
    }

    /// Starts `kind/key` here, whoever owns it (with the state a previous instance handed over).
    pub async fn start_local(&self, kind: &str, key: &str, args: Vec<u8>, handoff: Option<Vec<u8>>) -> Result<String, StartError> {
        let name = full_name(kind, key);
        if !self.0.spawner.has_kind(kind) {
            return Err(StartError::UnknownKind(format!("{kind} (on {})", self.node())));
        }
        {
            let mut local = self.0.local.lock().unwrap();
            if local.contains_key(&name) {
                return Err(StartError::AlreadyStarted(self.node().to_string()));
            }
            local.insert(name.clone(), Slot::Starting(Vec::new()));
        }
        let id = self.0.next_id.fetch_add(1, Ordering::Relaxed);
        let result = self.0.spawner.spawn(self.clone(), kind.into(), key.into(), args, handoff, id).await;
        let waiters = {
            let mut local = self.0.local.lock().unwrap();
            let waiters = match local.remove(&name) {
                Some(Slot::Starting(w)) => w,
                _ => Vec::new(),
            };
            if let Ok(mb) = &result {
                local.insert(name.clone(), Slot::Running(mb.clone()));
            }
            waiters
        };
        for w in waiters {
            let _ = w.send(result.as_ref().ok().cloned());
        }
        match result {
            Ok(_) => {
                info!("started {name}");
                Ok(self.node().to_string())
            }
            Err(e) => Err(StartError::Failed(e)),
        }
    }

    /// The local instance of `name`, waiting for its `init` if it is starting.
    async fn local_mailbox(&self, name: &str) -> Option<Mailbox> {
        let rx = {
            let mut local = self.0.local.lock().unwrap();
            match local.get_mut(name) {
                None => return None,
                Some(Slot::Running(mb)) => return Some(mb.clone()),
                Some(Slot::Starting(waiters)) => {
                    let (tx, rx) = oneshot::channel();
                    waiters.push(tx);
                    rx
                }
            }
        };
        rx.await.ok().flatten()
    }

    /// Calls `kind/key` wherever it runs; its reply.
    pub async fn call(&self, kind: &str, key: &str, msg: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, CallError> {
        let name = full_name(kind, key);
        let owner = self.owner_of(&name);
        if owner != self.node() && !self.0.local.lock().unwrap().contains_key(&name) {
            let rpc = Rpc::Call { kind: kind.into(), key: key.into(), msg, timeout_ms: timeout.as_millis() as u64 };
            // A little beyond the callee's own deadline, so its `timeout` answer wins the race.
            return match self.rpc(&owner, &rpc, timeout + Duration::from_millis(250)).await {
                Ok(RpcReply::Reply(r)) => Ok(r),
                Ok(RpcReply::CallFailed(e)) => Err(e),
                Ok(_) => Err(CallError::Failed("unexpected reply".into())),
                Err(e) => Err(e),
            };
        }
        self.call_local(kind, key, msg, timeout).await
    }

    async fn call_local(&self, kind: &str, key: &str, msg: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, CallError> {
        let name = full_name(kind, key);
        let mailbox = match self.local_mailbox(&name).await {
            Some(mb) => mb,
            None if self.0.spawner.activate_on_call(kind) => {
                match self.start_local(kind, key, Vec::new(), None).await {
                    Ok(_) | Err(StartError::AlreadyStarted(_)) => {}
                    Err(e) => return Err(CallError::Failed(format!("activating {name}: {e}"))),
                }
                self.local_mailbox(&name).await.ok_or(CallError::NotFound)?
            }
            None => return Err(CallError::NotFound),
        };
        let (tx, rx) = oneshot::channel();
        if mailbox.tx.send(Envelope::Call { msg, reply: tx }).is_err() {
            return Err(CallError::Failed(format!("{name} stopped")));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(CallError::Failed(format!("{name} stopped before replying"))),
            Err(_) => Err(CallError::Timeout),
        }
    }

    /// Sends `msg` to `kind/key` without waiting for it to be handled.
    pub async fn cast(&self, kind: &str, key: &str, msg: Vec<u8>) -> Result<(), CallError> {
        let name = full_name(kind, key);
        let owner = self.owner_of(&name);
        if owner != self.node() && !self.0.local.lock().unwrap().contains_key(&name) {
            let rpc = Rpc::Cast { kind: kind.into(), key: key.into(), msg };
            return match self.rpc(&owner, &rpc, Duration::from_secs(5)).await {
                Ok(RpcReply::Done) => Ok(()),
                Ok(RpcReply::CallFailed(e)) => Err(e),
                Ok(_) => Err(CallError::Failed("unexpected reply".into())),
                Err(e) => Err(e),
            };
        }
        self.cast_local(&name, msg).await
    }

    async fn cast_local(&self, name: &str, msg: Vec<u8>) -> Result<(), CallError> {
        let mailbox = self.local_mailbox(name).await.ok_or(CallError::NotFound)?;
        mailbox.tx.send(Envelope::Cast { msg }).map_err(|_| CallError::Failed(format!("{name} stopped")))
    }

    /// Every node's running names, asking each member.
    pub async fn list_all(&self) -> Vec<(String, Vec<String>)> {
        let mut out = Vec::new();
        for m in self.0.membership.members() {
            if m.is_self {
                out.push((m.name, self.local_names()));
            } else if let Ok(RpcReply::List(names)) = self.rpc(&m.name, &Rpc::List, Duration::from_secs(5)).await {
                out.push((m.name, names));
            }
        }
        out
    }

    /// Forgets instance `id` of `name` (it stopped or trapped).
    pub fn unregister(&self, name: &str, id: u64) {
        let mut local = self.0.local.lock().unwrap();
        if matches!(local.get(name), Some(Slot::Running(mb)) if mb.id == id) {
            local.remove(name);
        }
    }

    async fn rpc(&self, node: &str, rpc: &Rpc, timeout: Duration) -> Result<RpcReply, CallError> {
        let peer = self.0.membership.dist().peer(node).ok_or_else(|| CallError::Unavailable(format!("{node} is not connected")))?;
        let mut body = vec![RPC_TAG];
        body.extend(postcard::to_stdvec(rpc).expect("registry requests serialize"));
        match peer.request(Bytes::from(body), timeout).await {
            Ok(reply) => postcard::from_bytes(&reply).map_err(|e| CallError::Failed(format!("bad reply from {node}: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Err(CallError::Timeout),
            Err(_) => Err(CallError::Unavailable(format!("{node} went down"))),
        }
    }

    /// Answers a registry request from another node (the body after [`RPC_TAG`]).
    pub fn handle_rpc(&self, peer: Peer, id: u64, body: Bytes) {
        let registry = self.clone();
        tokio::spawn(async move {
            let reply = match postcard::from_bytes::<Rpc>(&body[1..]) {
                Err(e) => RpcReply::CallFailed(CallError::Failed(format!("bad request: {e}"))),
                Ok(Rpc::Start { kind, key, args }) => match registry.start_local(&kind, &key, args, None).await {
                    Ok(node) => RpcReply::Started(node),
                    Err(e) => RpcReply::StartFailed(e),
                },
                Ok(Rpc::Call { kind, key, msg, timeout_ms }) => {
                    match registry.call_local(&kind, &key, msg, Duration::from_millis(timeout_ms)).await {
                        Ok(r) => RpcReply::Reply(r),
                        Err(e) => RpcReply::CallFailed(e),
                    }
                }
                Ok(Rpc::Cast { kind, key, msg }) => match registry.cast_local(&full_name(&kind, &key), msg).await {
                    Ok(()) => RpcReply::Done,
                    Err(e) => RpcReply::CallFailed(e),
                },
                Ok(Rpc::List) => RpcReply::List(registry.local_names()),
            };
            let body = postcard::to_stdvec(&reply).expect("registry replies serialize");
            peer.send(Frame::Reply { id, body: Bytes::from(body) });
        });
    }

    /// Delivers node-up and node-down to every local instance.
    async fn forward_member_events(self) {
        let mut events = self.0.membership.subscribe();
        loop {
            let info = match events.recv().await {
                Ok(MemberEvent::Up { node, .. }) => Info::NodeUp(node),
                Ok(MemberEvent::Down { node, reason, .. }) => Info::NodeDown { node, reason },
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    debug!("registry missed {n} member events");
                    continue;
                }
                Err(_) => return,
            };
            let mailboxes: Vec<Mailbox> = self
                .0
                .local
                .lock()
                .unwrap()
                .values()
                .filter_map(|s| match s {
                    Slot::Running(mb) => Some(mb.clone()),
                    Slot::Starting(_) => None,
                })
                .collect();
            for mb in mailboxes {
                let _ = mb.tx.send(Envelope::Info(info.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_view_of_the_same_members_agrees_on_owners() {
        let a = ["a@h", "b@h", "c@h"];
        let b = ["c@h", "a@h", "b@h"];
        for i in 0..1000 {
            let name = format!("order/{i}");
            assert_eq!(owner(a, &name), owner(b, &name));
        }
    }

    #[test]
    fn owners_spread_and_a_leaving_member_moves_only_its_names() {
        let three = ["a@h", "b@h", "c@h"];
        let two = ["a@h", "b@h"];
        let mut counts = HashMap::new();
        let mut moved = 0;
        for i in 0..3000 {
            let name = format!("counter/{i}");
            let o3 = owner(three, &name).unwrap();
            *counts.entry(o3).or_insert(0) += 1;
            let o2 = owner(two, &name).unwrap();
            if o3 != "c@h" {
                assert_eq!(o2, o3, "{name} moved although its owner stayed");
            } else {
                moved += 1;
            }
        }
        for (m, n) in counts {
            assert!((800..1200).contains(&n), "{m} owns {n} of 3000");
        }
        assert!((800..1200).contains(&moved));
    }
}
