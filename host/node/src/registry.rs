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
use tokio::sync::oneshot;
use tracing::{debug, info, warn};
use wasmnode_proto::Frame;

use crate::dist::Peer;
use crate::membership::{MemberEvent, Membership};

/// First byte of a registry request body (control-plane JSON starts with `{`).
pub const RPC_TAG: u8 = 0x01;

/// How long a leaving node may take to hand its names over before the names it still
/// holds are restarted elsewhere without state.
const LEAVER_GRACE: Duration = Duration::from_secs(30);
/// How long a call or start waits for members that came up to list their names.
const SYNC_WAIT: Duration = Duration::from_secs(2);
/// How long a call or start on a node that just started waits for it to find its cluster.
const READY_WAIT: Duration = Duration::from_secs(10);

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

/// What an instance's mailbox carries; it handles one at a time, in order. Kept to 40
/// bytes (the rare, larger variants boxed): a queue holds its messages inline.
pub enum Envelope {
    Call { msg: Vec<u8>, reply: ReplyTo },
    Cast { msg: Vec<u8> },
    Info(Box<Info>),
    /// Stop after `terminate(reason)`; the returned state goes back on `reply`.
    Stop { reason: String, reply: oneshot::Sender<Option<Vec<u8>>> },
    /// The state of another instance of this name that stopped in favour of this one.
    Conflict(Box<(String, Vec<u8>)>),
}

/// Where a call's reply goes.
pub enum ReplyTo {
    /// A caller on this node, waiting.
    Local(oneshot::Sender<Result<Vec<u8>, CallError>>),
    /// A caller on another node: the instance writes the reply straight to the
    /// connection the request came on, with no task in between.
    Remote(Box<RemoteReply>),
}

/// The reply owed to a caller on another node. Dropped unsent (the instance trapped or
/// stopped with the call still queued), it answers that the instance stopped, as a
/// local caller's dropped channel does, so the caller does not wait for its timeout.
pub struct RemoteReply {
    peer: Peer,
    id: u64,
    name: String,
    sent: bool,
}

impl RemoteReply {
    fn send(&mut self, reply: Result<Vec<u8>, CallError>) {
        self.sent = true;
        let reply = match reply {
            Ok(r) => RpcReply::Reply(r),
            Err(e) => RpcReply::CallFailed(e),
        };
        send_reply(&self.peer, self.id, &reply);
    }
}

impl Drop for RemoteReply {
    fn drop(&mut self) {
        if !self.sent {
            let stopped = CallError::Failed(format!("{} stopped before replying", self.name));
            self.send(Err(stopped));
        }
    }
}

impl ReplyTo {
    /// Delivers the reply; a caller that gave up meanwhile is not an error.
    pub fn send(self, reply: Result<Vec<u8>, CallError>) {
        match self {
            ReplyTo::Local(tx) => {
                let _ = tx.send(reply);
            }
            ReplyTo::Remote(mut to) => to.send(reply),
        }
    }
}

/// A running instance, as the registry knows it.
#[derive(Clone)]
pub struct Mailbox {
    pub tx: crate::mailbox::Sender<Envelope>,
    /// Tells this instance from an earlier or later one of the same name.
    pub id: u64,
}

/// Where a name stands on this node.
enum Here {
    Mailbox(Mailbox),
    MovedTo(String),
    Nothing,
}

/// A boxed future, for the object-safe [`Spawner`].
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// How the registry creates instances; implemented by the runtime.
pub trait Spawner: Send + Sync + 'static {
    /// Whether this node can run workers of `kind`.
    fn has_kind(&self, kind: &str) -> bool;
    /// Whether a call to a name of `kind` that runs nowhere starts it.
    fn activate_on_call(&self, kind: &str) -> bool;
    /// Whether an instance of `kind` whose node went down is started again elsewhere.
    fn restart(&self, kind: &str) -> Restart;
    /// Whether instances move to a node that joins and owns them (else they stay until
    /// they next restart).
    fn rebalance_on_join(&self) -> bool;
    /// Starts an instance with mailbox id `id`; resolves when its `init` has returned.
    /// Instantiation and `init` run on the task that awaits this.
    fn spawn(&self, registry: Registry, kind: String, key: String, args: Vec<u8>, handoff: Option<Vec<u8>>, id: u64) -> BoxFuture<Result<Mailbox, String>>;
}

/// What happens to an instance whose node went down (OTP's restart types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Restart {
    /// Always started again on the name's new owner.
    #[default]
    Permanent,
    /// Started again after an abnormal end: a node going down is one.
    Transient,
    /// Never started again.
    Temporary,
}

enum Slot {
    /// `init` is running; callers wait here for the outcome.
    Starting(Vec<oneshot::Sender<Option<Mailbox>>>),
    Running(Mailbox),
    /// Handing over to another node: callers wait here and then follow the name.
    Moving(Vec<oneshot::Sender<Option<String>>>),
}

/// Where another node says one of its names runs, and what restarts it.
#[derive(Clone)]
struct Placement {
    node: String,
    args: Vec<u8>,
    /// The connection the announcement came on: a node that restarts under the same
    /// name speaks on a new one, and only the old one's names are orphans.
    conn_id: u64,
}

#[derive(Serialize, Deserialize)]
enum Rpc {
    Start { kind: String, key: String, args: Vec<u8> },
    Call { kind: String, key: String, msg: Vec<u8>, timeout_ms: u64 },
    Cast { kind: String, key: String, msg: Vec<u8> },
    List,
    /// One-way: the sender now runs this name (a start, a restart or a handoff).
    Registered { kind: String, key: String, args: Vec<u8> },
    /// One-way: the sender no longer runs this name.
    Unregistered { kind: String, key: String },
    /// Start this name here with the state its previous instance handed over.
    Handoff { kind: String, key: String, args: Vec<u8>, state: Option<Vec<u8>> },
    /// One-way: the sender has told this node every name it runs.
    Synced,
    /// One-way: the sender's instance of this name stopped in favour of this node's;
    /// here is its state.
    Conflict { kind: String, key: String, state: Vec<u8> },
}

#[derive(Serialize, Deserialize)]
enum RpcReply {
    Started(String),
    StartFailed(StartError),
    Reply(Vec<u8>),
    CallFailed(CallError),
    Done,
    List(Vec<String>),
    /// The name moved to this node: send the call there (it was not handled here).
    Moved(String),
}

struct Inner {
    membership: Membership,
    spawner: Arc<dyn Spawner>,
    local: Mutex<HashMap<String, Slot>>,
    /// The start arguments of local instances, for restarts and handoffs elsewhere.
    local_args: Mutex<HashMap<String, Vec<u8>>>,
    /// Names other nodes run, as they announced them.
    directory: Mutex<HashMap<String, Placement>>,
    /// Names this node handed over while leaving, and to whom: calls follow them.
    moved: Mutex<HashMap<String, String>>,
    /// Set while leaving: no new instances here.
    leaving: std::sync::atomic::AtomicBool,
    /// Members that have told this node all the names they run (since they came up).
    synced: Mutex<std::collections::HashSet<String>>,
    /// Opened once this node has found its cluster: before that, alone, it would own
    /// every name and answer `not-found` for names running elsewhere.
    ready: tokio::sync::watch::Sender<bool>,
    next_id: AtomicU64,
}

/// This node's part of the cluster-wide registry.
#[derive(Clone)]
pub struct Registry(Arc<Inner>);

fn rpc_body(rpc: &Rpc) -> Bytes {
    let mut body = vec![RPC_TAG];
    body.extend(postcard::to_stdvec(rpc).expect("registry requests serialize"));
    Bytes::from(body)
}

fn send_reply(peer: &Peer, id: u64, reply: &RpcReply) {
    let body = postcard::to_stdvec(reply).expect("registry replies serialize");
    peer.send(Frame::Reply { id, body: Bytes::from(body) });
}

/// postcard's variant indexes of [`Rpc::Call`] and [`Rpc::Cast`] (the byte after
/// [`RPC_TAG`]), and their fields borrowed from the request body.
const RPC_CALL: u8 = 1;
const RPC_CAST: u8 = 2;
type CallFields<'a> = (&'a str, &'a str, &'a [u8], u64);
type CastFields<'a> = (&'a str, &'a str, &'a [u8]);

fn human_bytes(n: usize) -> String {
    if n < 1024 {
        format!("{n} B")
    } else {
        format!("{:.1} KiB", n as f64 / 1024.0)
    }
}

/// Queues a call in an instance's mailbox and waits for its reply, at most `timeout`.
async fn call_mailbox(name: &str, mailbox: Mailbox, msg: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, CallError> {
    let (tx, rx) = oneshot::channel();
    if mailbox.tx.send(Envelope::Call { msg, reply: ReplyTo::Local(tx) }).is_err() {
        return Err(CallError::Failed(format!("{name} stopped")));
    }
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(CallError::Failed(format!("{name} stopped before replying"))),
        Err(_) => Err(CallError::Timeout),
    }
}

/// Runs `start` on a task of its own and waits for it. For starts asked from inside a
/// guest's call (`cluster.start`, a guest's call that activates its target): a start
/// runs the new instance's instantiation and `init` on the task that awaits it, and
/// wasmtime would allow that inside the calling guest's fiber, but a task keeps the two
/// instances' stacks and deadlines apart.
pub async fn start_apart(start: impl Future<Output = Result<String, StartError>> + Send + 'static) -> Result<String, StartError> {
    tokio::spawn(start).await.unwrap_or_else(|e| Err(StartError::Failed(e.to_string())))
}

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
        let r = Registry(Arc::new(Inner {
            membership,
            spawner,
            local: Mutex::new(HashMap::new()),
            local_args: Mutex::new(HashMap::new()),
            directory: Mutex::new(HashMap::new()),
            moved: Mutex::new(HashMap::new()),
            leaving: std::sync::atomic::AtomicBool::new(false),
            synced: Mutex::new(Default::default()),
            ready: tokio::sync::watch::Sender::new(false),
            next_id: AtomicU64::new(1),
        }));
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
        self.wait_synced_unless_known(&name).await;
        if self.0.local.lock().unwrap().contains_key(&name) {
            return Err(StartError::AlreadyStarted(self.node().to_string()));
        }
        if let Some(p) = self.0.directory.lock().unwrap().get(&name) {
            if self.0.membership.dist().peer(&p.node).is_some() {
                return Err(StartError::AlreadyStarted(p.node.clone()));
            }
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
        if self.0.leaving.load(Ordering::Relaxed) && handoff.is_none() {
            return Err(StartError::Failed(format!("{} is leaving the cluster", self.node())));
        }
        {
            let mut local = self.0.local.lock().unwrap();
            if local.contains_key(&name) {
                return Err(StartError::AlreadyStarted(self.node().to_string()));
            }
            local.insert(name.clone(), Slot::Starting(Vec::new()));
        }
        let id = self.0.next_id.fetch_add(1, Ordering::Relaxed);
        let result = self.0.spawner.spawn(self.clone(), kind.into(), key.into(), args.clone(), handoff, id).await;
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
                self.0.local_args.lock().unwrap().insert(name.clone(), args.clone());
                self.0.directory.lock().unwrap().remove(&name);
                self.0.moved.lock().unwrap().remove(&name);
                self.tell_all(&Rpc::Registered { kind: kind.into(), key: key.into(), args });
                Ok(self.node().to_string())
            }
            Err(e) => Err(StartError::Failed(e)),
        }
    }

    /// The local instance of `name`, waiting for its `init` if it is starting.
    async fn local_mailbox(&self, name: &str) -> Option<Mailbox> {
        match self.local_or_moved(name).await {
            Here::Mailbox(mb) => Some(mb),
            _ => None,
        }
    }

    /// Where a call for `name` that reached this node should go: the local instance
    /// (waiting for its `init` if it is starting), or the node it moved to (waiting for
    /// the move to finish if it is moving).
    async fn local_or_moved(&self, name: &str) -> Here {
        enum Wait {
            Start(oneshot::Receiver<Option<Mailbox>>),
            Move(oneshot::Receiver<Option<String>>),
        }
        let wait = {
            let mut local = self.0.local.lock().unwrap();
            match local.get_mut(name) {
                None => {
                    return match self.0.moved.lock().unwrap().get(name) {
                        Some(node) => Here::MovedTo(node.clone()),
                        None => Here::Nothing,
                    }
                }
                Some(Slot::Running(mb)) => return Here::Mailbox(mb.clone()),
                Some(Slot::Starting(waiters)) => {
                    let (tx, rx) = oneshot::channel();
                    waiters.push(tx);
                    Wait::Start(rx)
                }
                Some(Slot::Moving(waiters)) => {
                    let (tx, rx) = oneshot::channel();
                    waiters.push(tx);
                    Wait::Move(rx)
                }
            }
        };
        match wait {
            Wait::Start(rx) => rx.await.ok().flatten().map(Here::Mailbox).unwrap_or(Here::Nothing),
            Wait::Move(rx) => rx.await.ok().flatten().map(Here::MovedTo).unwrap_or(Here::Nothing),
        }
    }

    /// Calls `kind/key` wherever it runs; its reply.
    pub async fn call(&self, kind: &str, key: &str, msg: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, CallError> {
        let started = std::time::Instant::now();
        let result = self.call_routed(kind, key, msg, timeout).await;
        crate::metrics::global().called(started.elapsed(), result.is_ok());
        result
    }

    async fn call_routed(&self, kind: &str, key: &str, msg: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, CallError> {
        let name = full_name(kind, key);
        // The common case first, with one lookup: the instance runs here.
        let running = match self.0.local.lock().unwrap().get(&name) {
            Some(Slot::Running(mb)) => Some(mb.clone()),
            _ => None,
        };
        if let Some(mailbox) = running {
            return call_mailbox(&name, mailbox, msg, timeout).await;
        }
        self.wait_synced_unless_known(&name).await;
        let owner = self.route(&name);
        if owner != self.node() {
            return self.call_remote(owner, kind, key, msg, timeout).await;
        }
        self.call_local(kind, key, msg, timeout).await
    }

    /// Calls `kind/key` on `node`, following it if it has moved (at most a few hops).
    async fn call_remote(&self, mut node: String, kind: &str, key: &str, msg: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, CallError> {
        let rpc = Rpc::Call { kind: kind.into(), key: key.into(), msg, timeout_ms: timeout.as_millis() as u64 };
        for _ in 0..4 {
            if node == self.node() {
                let Rpc::Call { msg, .. } = rpc else { unreachable!() };
                return self.call_local(kind, key, msg, timeout).await;
            }
            // The caller's deadline bounds the call: an instance running on `node` answers
            // from its mailbox with no timer of its own (`handle_rpc_fast`).
            match self.rpc(&node, &rpc, timeout).await {
                Ok(RpcReply::Reply(r)) => return Ok(r),
                Ok(RpcReply::CallFailed(e)) => return Err(e),
                Ok(RpcReply::Moved(to)) => node = to,
                Ok(_) => return Err(CallError::Failed("unexpected reply".into())),
                // `node` said it is leaving and closed before answering: the call was not
                // handled there. (A call its instance handled was answered before the
                // instance stopped for the handoff, and the node closes only once the
                // handoff is acknowledged, so that reply is ahead of the close on the
                // wire.) It goes where the name is now.
                Err(CallError::Unavailable(_)) if self.0.membership.has_left(&node) => node = self.route(&full_name(kind, key)),
                Err(e) => return Err(e),
            }
        }
        Err(CallError::Unavailable(format!("{} keeps moving", full_name(kind, key))))
    }

    async fn wait_synced_unless_known(&self, name: &str) {
        let known = self.0.local.lock().unwrap().contains_key(name) || self.0.directory.lock().unwrap().contains_key(name);
        if !known {
            let mut ready = self.0.ready.subscribe();
            let _ = tokio::time::timeout(READY_WAIT, ready.wait_for(|r| *r)).await;
            self.wait_synced().await;
        }
    }

    /// Opens the gate: this node has found its cluster (see [`Membership::settled`]).
    pub fn set_ready(&self) {
        self.0.ready.send_replace(true);
    }

    /// Ready for work (`/readyz`): the gate is open and the node is not leaving.
    pub fn is_ready(&self) -> bool {
        *self.0.ready.borrow() && !self.0.leaving.load(Ordering::Relaxed)
    }

    /// Instances running here, by kind.
    pub fn instances_by_kind(&self) -> std::collections::BTreeMap<String, usize> {
        let mut by_kind = std::collections::BTreeMap::new();
        for name in self.local_names() {
            if let Some((kind, _)) = name.split_once('/') {
                *by_kind.entry(kind.to_string()).or_insert(0) += 1;
            }
        }
        by_kind
    }


    /// The node a call for `name` goes to: this one when it runs (or starts, or moves)
    /// here, else where its node announced it, else its owner.
    fn route(&self, name: &str) -> String {
        if self.0.local.lock().unwrap().contains_key(name) || self.0.moved.lock().unwrap().contains_key(name) {
            return self.node().to_string();
        }
        if let Some(p) = self.0.directory.lock().unwrap().get(name) {
            if self.0.membership.dist().peer(&p.node).is_some() {
                return p.node.clone();
            }
        }
        self.owner_of(name)
    }

    async fn call_local(&self, kind: &str, key: &str, msg: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, CallError> {
        let name = full_name(kind, key);
        let here = self.local_or_moved(&name).await;
        let mailbox = match here {
            Here::Mailbox(mb) => mb,
            Here::MovedTo(node) if node != self.node() => return Box::pin(self.call_remote(node, kind, key, msg, timeout)).await,
            Here::MovedTo(_) => return Err(CallError::NotFound),
            Here::Nothing if self.0.spawner.activate_on_call(kind) => {
                // The caller may be a guest.
                let (r, kind_, key_) = (self.clone(), kind.to_string(), key.to_string());
                match start_apart(async move { r.start_local(&kind_, &key_, Vec::new(), None).await }).await {
                    Ok(_) | Err(StartError::AlreadyStarted(_)) => {}
                    Err(e) => return Err(CallError::Failed(format!("activating {name}: {e}"))),
                }
                self.local_mailbox(&name).await.ok_or(CallError::NotFound)?
            }
            Here::Nothing => return Err(CallError::NotFound),
        };
        call_mailbox(&name, mailbox, msg, timeout).await
    }

    /// Sends `msg` to `kind/key` without waiting for it to be handled.
    pub async fn cast(&self, kind: &str, key: &str, msg: Vec<u8>) -> Result<(), CallError> {
        let name = full_name(kind, key);
        self.wait_synced_unless_known(&name).await;
        let owner = self.route(&name);
        if owner != self.node() {
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

    /// Stops the local instance of `kind/key` after its `terminate(reason)`; false if
    /// none runs here. Its state is dropped: this is an end, not a handoff.
    pub async fn stop_local(&self, kind: &str, key: &str, reason: &str) -> bool {
        let name = full_name(kind, key);
        let mailbox = match self.0.local.lock().unwrap().get(&name) {
            Some(Slot::Running(mb)) => mb.clone(),
            _ => return false,
        };
        let (tx, rx) = oneshot::channel();
        if mailbox.tx.send(Envelope::Stop { reason: reason.into(), reply: tx }).is_err() {
            return false;
        }
        let _ = rx.await;
        true
    }

    /// Forgets instance `id` of `name` (it stopped or trapped).
    pub fn unregister(&self, name: &str, id: u64) {
        let removed = {
            let mut local = self.0.local.lock().unwrap();
            if matches!(local.get(name), Some(Slot::Running(mb)) if mb.id == id) {
                local.remove(name);
                true
            } else {
                false
            }
        };
        if removed {
            self.0.local_args.lock().unwrap().remove(name);
            if let Some((kind, key)) = name.split_once('/') {
                self.tell_all(&Rpc::Unregistered { kind: kind.into(), key: key.into() });
            }
        }
    }

    /// Sends a one-way registry message to every other member (request id 0: no reply).
    fn tell_all(&self, rpc: &Rpc) {
        let body = rpc_body(rpc);
        for m in self.0.membership.members() {
            if !m.is_self {
                if let Some(peer) = self.0.membership.dist().peer(&m.name) {
                    peer.send(Frame::Request { id: 0, body: body.clone() });
                }
            }
        }
    }

    /// Tells `node` (just up) every name this node runs.
    fn tell_names_to(&self, node: &str) {
        let Some(peer) = self.0.membership.dist().peer(node) else { return };
        let args = self.0.local_args.lock().unwrap().clone();
        for name in self.local_names() {
            if let Some((kind, key)) = name.split_once('/') {
                let rpc = Rpc::Registered { kind: kind.into(), key: key.into(), args: args.get(&name).cloned().unwrap_or_default() };
                peer.send(Frame::Request { id: 0, body: rpc_body(&rpc) });
            }
        }
        peer.send(Frame::Request { id: 0, body: rpc_body(&Rpc::Synced) });
    }

    /// Waits (briefly) until every member has told this node the names it runs, so that
    /// a node that just joined does not answer `not-found` for a name running elsewhere.
    async fn wait_synced(&self) {
        let deadline = tokio::time::Instant::now() + SYNC_WAIT;
        loop {
            let pending = {
                let synced = self.0.synced.lock().unwrap();
                self.0.membership.members().iter().any(|m| !m.is_self && !synced.contains(&m.name))
            };
            if !pending || tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// `other` runs `name` too (two nodes started it while their views differed). Both
    /// sides apply the same rule, whatever their views: the instance on the node with the
    /// smaller name stays; the other stops (its state dropped, with a warning). A later
    /// rebalance moves the survivor to its owner with its state.
    fn resolve_duplicate(&self, name: &str, other: &str) {
        let mailbox = match self.0.local.lock().unwrap().get(name) {
            Some(Slot::Running(mb)) => mb.clone(),
            _ => return,
        };
        if other < self.node() {
            warn!("{name} runs on {other} too: keeping that one; stopping this one (its state goes to that one)");
            let (tx, rx) = oneshot::channel();
            let _ = mailbox.tx.send(Envelope::Stop { reason: "duplicate".into(), reply: tx });
            let (r, name, other) = (self.clone(), name.to_string(), other.to_string());
            tokio::spawn(async move {
                if let (Ok(Some(state)), Some((kind, key))) = (rx.await, name.split_once('/')) {
                    if let Some(peer) = r.0.membership.dist().peer(&other) {
                        let rpc = Rpc::Conflict { kind: kind.into(), key: key.into(), state };
                        peer.send(Frame::Request { id: 0, body: rpc_body(&rpc) });
                    }
                }
            });
        } else if let (Some(peer), Some((kind, key))) = (self.0.membership.dist().peer(other), name.split_once('/')) {
            // Tell `other` that this one runs it, so it stops its own.
            let args = self.0.local_args.lock().unwrap().get(name).cloned().unwrap_or_default();
            peer.send(Frame::Request { id: 0, body: rpc_body(&Rpc::Registered { kind: kind.into(), key: key.into(), args }) });
        }
    }

    /// Gives the local instance of `name` the state of a duplicate that stopped on `from`.
    async fn deliver_conflict(&self, name: &str, from: &str, state: Vec<u8>) {
        match self.local_mailbox(name).await {
            Some(mb) => {
                let _ = mb.tx.send(Envelope::Conflict(Box::new((from.to_string(), state))));
            }
            None => warn!("the state of {name} from {from} has no instance here to go to; dropped"),
        }
    }

    /// Moves every local instance that another node now owns to that node, with its
    /// state (after a node joined).
    pub async fn rebalance(&self) {
        if self.0.leaving.load(Ordering::Relaxed) {
            return;
        }
        let misplaced: Vec<String> = self.local_names().into_iter().filter(|n| self.owner_of(n) != self.node()).collect();
        for name in misplaced {
            let r = self.clone();
            tokio::spawn(async move { r.hand_off(name).await });
        }
    }

    /// Starts again, on their new owners, the names `node` ran when it went down (those
    /// it announced on a connection that is gone: if it is back, its new ones stand).
    fn supervise(&self, node: &str) {
        if self.0.leaving.load(Ordering::Relaxed) {
            return;
        }
        let live = self.0.membership.dist().peer(node).map(|p| p.conn_id());
        let orphans: Vec<(String, Placement)> = {
            let mut dir = self.0.directory.lock().unwrap();
            let names: Vec<String> = dir.iter().filter(|(_, p)| p.node == node && Some(p.conn_id) != live).map(|(n, _)| n.clone()).collect();
            names.into_iter().filter_map(|n| dir.remove(&n).map(|p| (n, p))).collect()
        };
        for (name, placement) in orphans {
            let Some((kind, key)) = name.split_once('/') else { continue };
            if self.owner_of(&name) != self.node() {
                continue;
            }
            if self.0.spawner.restart(kind) == Restart::Temporary {
                info!("not restarting {name} after {node} went down: its kind is temporary");
                continue;
            }
            let (r, kind, key, node) = (self.clone(), kind.to_string(), key.to_string(), node.to_string());
            tokio::spawn(async move {
                match r.start_local(&kind, &key, placement.args, None).await {
                    Ok(_) => {
                        crate::metrics::global().restarted();
                        warn!("restarted {name} on {} after node down: no handoff state", r.node())
                    }
                    Err(StartError::AlreadyStarted(_)) => {}
                    Err(e) => warn!("could not restart {name} after {node} went down: {e}"),
                }
            });
        }
    }

    /// Hands every local instance to its next owner (this node excluded): `terminate`
    /// state out, `init(…, state)` there, acknowledged; within `deadline`. Calls that
    /// arrive meanwhile wait and then follow the name.
    pub async fn hand_off_all(&self, deadline: Duration) {
        self.0.leaving.store(true, Ordering::Relaxed);
        let names = self.local_names();
        let moves = names.into_iter().map(|name| {
            let r = self.clone();
            tokio::spawn(async move { r.hand_off(name).await })
        });
        let all: Vec<_> = moves.collect();
        let _ = tokio::time::timeout(deadline, async {
            for m in all {
                let _ = m.await;
            }
        })
        .await;
    }

    async fn hand_off(&self, name: String) {
        let Some((kind, key)) = name.split_once('/').map(|(k, v)| (k.to_string(), v.to_string())) else { return };
        let me = self.node().to_string();
        let members = self.0.membership.members();
        let target = owner(members.iter().map(|m| m.name.as_str()).filter(|m| *m != me), &name).map(str::to_string);
        let mailbox = {
            let mut local = self.0.local.lock().unwrap();
            match local.get(&name) {
                Some(Slot::Running(mb)) => {
                    let mb = mb.clone();
                    local.insert(name.clone(), Slot::Moving(Vec::new()));
                    mb
                }
                _ => return,
            }
        };
        let (tx, rx) = oneshot::channel();
        let reason = if target.is_some() { "handoff" } else { "shutdown" };
        let _ = mailbox.tx.send(Envelope::Stop { reason: reason.into(), reply: tx });
        let state = rx.await.ok().flatten();
        let args = self.0.local_args.lock().unwrap().remove(&name).unwrap_or_default();
        let moved_to = match &target {
            None => {
                warn!("no other node to hand {name} to; stopped (its state is lost)");
                None
            }
            Some(t) => {
                let size = state.as_ref().map(|s| s.len()).unwrap_or(0);
                let rpc = Rpc::Handoff { kind: kind.clone(), key: key.clone(), args, state };
                match self.rpc(t, &rpc, Duration::from_secs(20)).await {
                    Ok(RpcReply::Started(node)) => {
                        crate::metrics::global().handed_off();
                        info!("moved {name} to {node} (handoff {})", human_bytes(size));
                        Some(node)
                    }
                    Ok(RpcReply::StartFailed(StartError::AlreadyStarted(node))) => {
                        warn!("{name} runs on {node} too: keeping that one; the instance handed over from here stops (its state goes to that one)");
                        Some(node)
                    }
                    Ok(_) | Err(_) => {
                        warn!("handoff of {name} to {t} failed; it will be restarted there without state");
                        None
                    }
                }
            }
        };
        let waiters = match self.0.local.lock().unwrap().remove(&name) {
            Some(Slot::Moving(w)) => w,
            _ => Vec::new(),
        };
        if let Some(node) = &moved_to {
            self.0.moved.lock().unwrap().insert(name.clone(), node.clone());
        }
        for w in waiters {
            let _ = w.send(moved_to.clone());
        }
    }

    async fn rpc(&self, node: &str, rpc: &Rpc, timeout: Duration) -> Result<RpcReply, CallError> {
        let peer = self.0.membership.dist().peer(node).ok_or_else(|| CallError::Unavailable(format!("{node} is not connected")))?;
        match peer.request(rpc_body(rpc), timeout).await {
            Ok(reply) => postcard::from_bytes(&reply).map_err(|e| CallError::Failed(format!("bad reply from {node}: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Err(CallError::Timeout),
            Err(_) => Err(CallError::Unavailable(format!("{node} went down"))),
        }
    }

    /// Answers, on the reader of the connection it came on, a call or cast from another
    /// node to an instance running here: into its mailbox at once, and for a call the
    /// instance writes the reply to that connection itself. False for every other
    /// request, and for a name that is not running here (starting, moving, gone): those
    /// take [`Registry::handle_rpc`]'s path, in order with the connection's other events.
    ///
    /// A call and a cast from one node to one running instance both come this way, so
    /// they reach its mailbox in the order they were sent. The callee sets no timer of
    /// its own: the caller's deadline bounds the call.
    pub fn handle_rpc_fast(&self, peer: &Peer, id: u64, body: &Bytes) -> bool {
        if body.len() < 2 || body[0] != RPC_TAG {
            return false;
        }
        let (kind, key, msg, call) = match body[1] {
            RPC_CALL => match postcard::from_bytes::<CallFields>(&body[2..]) {
                Ok((kind, key, msg, _timeout_ms)) => (kind, key, msg, true),
                Err(_) => return false,
            },
            RPC_CAST => match postcard::from_bytes::<CastFields>(&body[2..]) {
                Ok((kind, key, msg)) => (kind, key, msg, false),
                Err(_) => return false,
            },
            _ => return false,
        };
        let name = full_name(kind, key);
        let local = self.0.local.lock().unwrap();
        let Some(Slot::Running(mb)) = local.get(&name) else { return false };
        let envelope = if call {
            let reply = RemoteReply { peer: peer.clone(), id, name, sent: false };
            Envelope::Call { msg: msg.to_vec(), reply: ReplyTo::Remote(Box::new(reply)) }
        } else {
            Envelope::Cast { msg: msg.to_vec() }
        };
        let queued = match mb.tx.send(envelope) {
            Ok(()) => true,
            // The instance is gone: this request takes the ordered path, unanswered here.
            Err(Envelope::Call { reply: ReplyTo::Remote(mut r), .. }) => {
                r.sent = true;
                false
            }
            Err(_) => false,
        };
        drop(local);
        if queued && !call {
            send_reply(peer, id, &RpcReply::Done);
        }
        queued
    }

    /// Answers a registry request from another node (the body after [`RPC_TAG`]).
    ///
    /// Called for each request in the order the connections delivered them. The one-way
    /// announcements (`Registered`, `Unregistered`, `Synced`) take effect here, at once
    /// and in that order: a task each could run them out of order on the multi-threaded
    /// runtime, and a `Registered` overtaken by the `Handoff` its node sent next would
    /// stop the instance just handed over. Everything that waits runs in a task.
    pub fn handle_rpc(&self, peer: Peer, id: u64, body: Bytes) {
        let rpc = postcard::from_bytes::<Rpc>(&body[1..]);
        match &rpc {
            Ok(Rpc::Registered { kind, key, args }) => {
                let name = full_name(kind, key);
                let placement = Placement { node: peer.name().to_string(), args: args.clone(), conn_id: peer.conn_id() };
                self.0.directory.lock().unwrap().insert(name.clone(), placement);
                // Where the name runs now is what its node says, not where we once sent it.
                self.0.moved.lock().unwrap().remove(&name);
                self.resolve_duplicate(&name, peer.name());
                return;
            }
            Ok(Rpc::Synced) => {
                self.0.synced.lock().unwrap().insert(peer.name().to_string());
                return;
            }
            Ok(Rpc::Unregistered { kind, key }) => {
                let name = full_name(kind, key);
                let mut dir = self.0.directory.lock().unwrap();
                if dir.get(&name).is_some_and(|p| p.node == peer.name()) {
                    dir.remove(&name);
                }
                return;
            }
            _ => {}
        }
        let registry = self.clone();
        tokio::spawn(async move {
            let reply = match rpc {
                Err(e) => RpcReply::CallFailed(CallError::Failed(format!("bad request: {e}"))),
                Ok(Rpc::Start { kind, key, args }) => match registry.start_local(&kind, &key, args, None).await {
                    Ok(node) => RpcReply::Started(node),
                    Err(e) => RpcReply::StartFailed(e),
                },
                Ok(Rpc::Call { kind, key, msg, timeout_ms }) => {
                    // A name that moved away is not relayed (this node may be about to
                    // close): the caller is told where it went and calls there itself.
                    let name = full_name(&kind, &key);
                    let elsewhere = || {
                        let dir = registry.0.directory.lock().unwrap();
                        dir.get(&name).map(|p| p.node.clone()).filter(|n| n != registry.node() && n != peer.name())
                    };
                    match registry.local_or_moved(&name).await {
                        Here::MovedTo(node) if node != registry.node() => RpcReply::Moved(node),
                        // Not here, but its node announced it: send the caller there.
                        Here::Nothing if elsewhere().is_some() => RpcReply::Moved(elsewhere().unwrap()),
                        _ => match registry.call_local(&kind, &key, msg, Duration::from_millis(timeout_ms)).await {
                            Ok(r) => RpcReply::Reply(r),
                            Err(e) => RpcReply::CallFailed(e),
                        },
                    }
                }
                Ok(Rpc::Cast { kind, key, msg }) => match registry.cast_local(&full_name(&kind, &key), msg).await {
                    Ok(()) => RpcReply::Done,
                    Err(e) => RpcReply::CallFailed(e),
                },
                Ok(Rpc::List) => RpcReply::List(registry.local_names()),
                Ok(Rpc::Handoff { kind, key, args, state }) => {
                    let handed = state.clone();
                    match registry.start_local(&kind, &key, args, Some(state.unwrap_or_default())).await {
                        Ok(node) => RpcReply::Started(node),
                        Err(e @ StartError::AlreadyStarted(_)) => {
                            // It runs here already (two instances after a partition): the
                            // handed state goes to the one that runs.
                            if let Some(state) = handed {
                                registry.deliver_conflict(&full_name(&kind, &key), peer.name(), state).await;
                            }
                            RpcReply::StartFailed(e)
                        }
                        Err(e) => RpcReply::StartFailed(e),
                    }
                }
                Ok(Rpc::Conflict { kind, key, state }) => {
                    registry.deliver_conflict(&full_name(&kind, &key), peer.name(), state).await;
                    return;
                }
                Ok(Rpc::Registered { .. } | Rpc::Unregistered { .. } | Rpc::Synced) => return,
            };
            send_reply(&peer, id, &reply);
        });
    }

    /// Delivers node-up and node-down to every local instance.
    async fn forward_member_events(self) {
        let mut events = self.0.membership.subscribe();
        loop {
            let info = match events.recv().await {
                Ok(MemberEvent::Up { node, .. }) => {
                    self.tell_names_to(&node);
                    if self.0.spawner.rebalance_on_join() {
                        let r = self.clone();
                        tokio::spawn(async move { r.rebalance().await });
                    }
                    Info::NodeUp(node)
                }
                Ok(MemberEvent::Down { node, reason, code, .. }) => {
                    self.0.synced.lock().unwrap().remove(&node);
                    if code == "left" {
                        // A leaving node hands its names over first; whatever it still
                        // holds when its connection is gone is restarted then.
                        let (r, n) = (self.clone(), node.clone());
                        let leaving_conn = self.0.membership.dist().peer(&node).map(|p| p.conn_id());
                        tokio::spawn(async move {
                            let gone = tokio::time::Instant::now() + LEAVER_GRACE;
                            while r.0.membership.dist().peer(&n).map(|p| p.conn_id()) == leaving_conn
                                && leaving_conn.is_some()
                                && tokio::time::Instant::now() < gone
                            {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            r.supervise(&n);
                        });
                    } else {
                        self.supervise(&node);
                    }
                    Info::NodeDown { node, reason }
                }
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
                    Slot::Starting(_) | Slot::Moving(_) => None,
                })
                .collect();
            for mb in mailboxes {
                let _ = mb.tx.send(Envelope::Info(Box::new(info.clone())));
            }
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn an_envelope_is_small() {
        // Every queued message takes this much; the rare, larger variants are boxed.
        assert!(std::mem::size_of::<Envelope>() <= 40, "Envelope is {} bytes", std::mem::size_of::<Envelope>());
    }
    use super::*;

    /// The reader's fast path reads calls and casts by postcard's variant index and
    /// borrowed fields: they must stay what `Rpc` encodes.
    #[test]
    fn the_fast_path_reads_calls_and_casts_as_rpc_writes_them() {
        let call = rpc_body(&Rpc::Call { kind: "order".into(), key: "John".into(), msg: b"contents".to_vec(), timeout_ms: 1234 });
        assert_eq!((call[0], call[1]), (RPC_TAG, RPC_CALL));
        assert_eq!(postcard::from_bytes::<CallFields>(&call[2..]).unwrap(), ("order", "John", &b"contents"[..], 1234));
        let cast = rpc_body(&Rpc::Cast { kind: "counter".into(), key: "c1".into(), msg: b"increment".to_vec() });
        assert_eq!((cast[0], cast[1]), (RPC_TAG, RPC_CAST));
        assert_eq!(postcard::from_bytes::<CastFields>(&cast[2..]).unwrap(), ("counter", "c1", &b"increment"[..]));
        // Nothing else looks like either.
        let start = rpc_body(&Rpc::Start { kind: "order".into(), key: "John".into(), args: vec![] });
        assert!(![RPC_CALL, RPC_CAST].contains(&start[1]));
    }

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
