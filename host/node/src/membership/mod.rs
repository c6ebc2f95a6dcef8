//! Membership: who is up, who left, and whom to dial next.
//!
//! The decisions are [`view::View`]'s, a state machine without I/O (its rules are in
//! its file). This driver feeds it, in one task and in the order connections changed,
//! the ordered [`DistEvent`]s of `dist`, and carries out what it decides:
//! - node-up and node-down (with its reason) are logged, counted, told to the registry
//!   ([`MemberChange`]) and broadcast as [`MemberEvent`]s to the CLI's `--watch`;
//! - every change sends this node's member list to its visible peers;
//! - a re-dial task feeds it the time and dials the names it says are due.
//!
//! Hidden peers (the CLI) are never members and never gossiped.

#[cfg(test)]
mod tests;
pub mod view;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::sync::{broadcast, mpsc, Notify};
use tracing::{debug, info, warn};
use wasmnode_proto::{Frame, Service};

use crate::dist::{DialError, Dist, DistEvent, DownReason, Peer};
use view::{DialResult, Input, Output, View};

/// The re-dial loop looks for work at least this often (and at once when kicked).
const REDIAL_TICK: Duration = Duration::from_millis(100);

/// A change of membership, as logged, streamed to `wasmnode nodes --watch`, and (later)
/// delivered to workers' `handle-info`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum MemberEvent {
    Up { node: String, at_ms: u64 },
    Down { node: String, reason: String, code: String, at_ms: u64 },
}

/// A change of membership as the registry hears it: typed, with the connection it is
/// about, in the order connections changed (the hook runs on the membership's task).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberChange {
    /// A member connected on connection `conn`.
    Up { node: String, conn: u64 },
    /// A member said it is leaving: it is no longer placed on, its connection stays up
    /// while it hands its work over.
    Leaving { node: String, conn: u64 },
    /// A member's connection is gone (it did not say it was leaving).
    Down { node: String, conn: u64, reason: DownReason },
    /// A leaver's connection is gone: what it still held is lost.
    Gone { node: String, conn: u64 },
}

/// Hears every [`MemberChange`], in order, on the membership's task.
pub type MemberHook = Arc<dyn Fn(&MemberChange) + Send + Sync>;

/// One member as `wasmnode nodes` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct MemberInfo {
    pub name: String,
    /// When it became a member (for this node itself: when it started), ms since the epoch.
    pub since_ms: u64,
    #[serde(rename = "self")]
    pub is_self: bool,
}

/// Answers `Request` frames: the layers above (control plane, registry) install it.
pub type RequestHandler = Arc<dyn Fn(Peer, u64, Service, Option<wasmnode_proto::TraceContext>, bytes::Bytes) + Send + Sync>;

struct Shared {
    dist: Dist,
    requests: std::sync::OnceLock<RequestHandler>,
    member_hook: std::sync::OnceLock<MemberHook>,
    started: SystemTime,
    /// The driver's monotonic clock, as the view's milliseconds.
    epoch: Instant,
    view: Mutex<View>,
    events: broadcast::Sender<MemberEvent>,
    kick: Notify,
    /// Set when a loop of the node's core ends before the node leaves.
    core: Arc<CoreStop>,
}

/// Whether one of the node's core loops (the membership's events, its re-dials) has
/// stopped, and why. A panic there (or under a lock they take, which then panics them)
/// would leave a node that still answers heartbeats and `/healthz` but tracks no member
/// and answers no peer: its workers reachable by no one and taken over by no one. The
/// node waits on this and exits instead, so its peers see it go and take its workers
/// over, and its supervisor (Kubernetes, Docker) starts it again.
#[derive(Default)]
pub struct CoreStop {
    why: std::sync::OnceLock<String>,
    stopped: Notify,
}

impl CoreStop {
    /// Marks `task` running until the returned guard drops: when the task returns, or
    /// unwinds from a panic.
    pub fn watch(self: &Arc<Self>, task: &'static str) -> CoreTask {
        CoreTask { stop: self.clone(), task }
    }

    /// Resolves once a watched task has stopped: which, and how.
    pub async fn stopped(&self) -> String {
        loop {
            let notified = self.stopped.notified();
            if let Some(why) = self.why.get() {
                return why.clone();
            }
            notified.await;
        }
    }
}

/// A watched task's guard (see [`CoreStop::watch`]).
pub struct CoreTask {
    stop: Arc<CoreStop>,
    task: &'static str,
}

impl Drop for CoreTask {
    fn drop(&mut self) {
        let how = if std::thread::panicking() { "panicked" } else { "ended" };
        let _ = self.stop.why.set(format!("the {} {how}", self.task));
        self.stop.stopped.notify_waiters();
    }
}

/// This node's view of the cluster.
#[derive(Clone)]
pub struct Membership(Arc<Shared>);

pub(crate) fn ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Membership {
    /// Starts the event and re-dial tasks over `dist`'s events.
    pub fn start(dist: Dist, events: mpsc::UnboundedReceiver<DistEvent>, full_mesh: bool) -> Membership {
        let m = Membership(Arc::new(Shared {
            view: Mutex::new(View::new(dist.name(), full_mesh)),
            dist,
            requests: std::sync::OnceLock::new(),
            member_hook: std::sync::OnceLock::new(),
            started: SystemTime::now(),
            epoch: Instant::now(),
            events: broadcast::channel(1024).0,
            kick: Notify::new(),
            core: Arc::default(),
        }));
        tokio::spawn(m.clone().event_loop(events));
        tokio::spawn(m.clone().redial_loop());
        m
    }

    /// Resolves once a core loop has stopped (see [`CoreStop`]): which, and how.
    pub async fn core_stopped(&self) -> String {
        self.0.core.stopped().await
    }

    pub fn dist(&self) -> &Dist {
        &self.0.dist
    }

    /// Installs what answers `Request` frames (once, at start-up).
    pub fn set_request_handler(&self, handler: RequestHandler) {
        let _ = self.0.requests.set(handler);
    }

    /// Installs what hears member changes (once, at start-up, before any connection).
    pub fn set_member_hook(&self, hook: MemberHook) {
        let _ = self.0.member_hook.set(hook);
    }

    /// Every member, this node first.
    pub fn members(&self) -> Vec<MemberInfo> {
        let view = self.0.view.lock().unwrap();
        let me = MemberInfo { name: self.0.dist.name().to_string(), since_ms: ms(self.0.started), is_self: true };
        std::iter::once(me).chain(view.members().iter().map(|(n, m)| MemberInfo { name: n.clone(), since_ms: m.since_ms, is_self: false })).collect()
    }

    /// Member events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<MemberEvent> {
        self.0.events.subscribe()
    }

    /// Records what topology `topology` sees now; new names are dialled at once.
    /// Names only accumulate into the wanted set: nobody is disconnected here.
    pub fn discovered(&self, topology: &str, names: Vec<String>) {
        self.apply(Input::Discovered { topology: topology.to_string(), names });
    }

    /// Whether discovery has answered for `topologies` topologies and every name it
    /// found is connected or has been tried once (see [`View::settled`]).
    pub fn settled(&self, topologies: usize) -> bool {
        self.0.view.lock().unwrap().settled(topologies)
    }

    /// Whether `node` said it is leaving (and has not come back since).
    pub fn has_left(&self, node: &str) -> bool {
        self.0.view.lock().unwrap().has_left(node)
    }

    /// Announces that this node is leaving: no more dialling, peers stop counting on it,
    /// connections stay up for handing work over.
    pub fn announce_leave(&self) {
        self.apply(Input::Leave);
        self.0.dist.announce_leaving();
    }

    /// Leaves the cluster: stops dialling, tells every peer, closes every connection
    /// and waits for them (at most `deadline`).
    pub async fn leave(&self, deadline: Duration) {
        self.apply(Input::Leave);
        self.0.dist.leave(deadline).await;
    }

    fn now_ms(&self) -> u64 {
        self.0.epoch.elapsed().as_millis() as u64
    }

    /// Feeds the view and carries out what it decides, outside its lock (the registry's
    /// hook reads the members). Changes come only from the event task, so they are
    /// carried out in the order they happened.
    fn apply(&self, input: Input) {
        let outputs = self.0.view.lock().unwrap().handle(input);
        for output in outputs {
            self.carry_out(output);
        }
        self.0.kick.notify_one();
    }

    fn carry_out(&self, output: Output) {
        match output {
            Output::Changed(change) => self.changed(change),
            Output::Gossip(names) => {
                info!("members ({}): {}", names.len(), names.join(", "));
                for peer in self.0.dist.peers() {
                    if !peer.hidden() {
                        peer.send(Frame::Members(names.to_vec()));
                    }
                }
            }
            Output::Dial(name) => {
                let m = self.clone();
                tokio::spawn(async move {
                    let result = m.0.dist.connect(&name).await;
                    let result = match result {
                        Ok(_) => DialResult::Connected,
                        Err(e) if e.is_tie_break() || matches!(e, DialError::InProgress) => DialResult::Busy,
                        Err(e) => {
                            // Refused (another cookie, another TLS setting or CA): a
                            // misconfiguration, logged as a warning.
                            let refused = matches!(e, DialError::Handshake(_) | DialError::Tls(_));
                            if refused {
                                crate::metrics::global().handshake_failed(e.cause());
                            }
                            DialResult::Failed { error: e.to_string(), refused }
                        }
                    };
                    let now_ms = m.now_ms();
                    m.apply(Input::Dialled { node: name, result, now_ms });
                });
            }
            Output::Unreachable { node, error, refused, repeated, retry_in_ms } => {
                // A refused handshake is a misconfiguration; a refused connection is a
                // node not up yet.
                match (repeated, refused) {
                    (true, _) => debug!(peer = %node, "cannot connect to {node}: {error}; next try in {retry_in_ms} ms"),
                    (false, true) => warn!(peer = %node, "cannot connect to {node}: {error}; retrying with backoff"),
                    (false, false) => info!(peer = %node, "cannot connect to {node}: {error}; retrying with backoff"),
                }
            }
        }
    }

    /// Logs, counts and broadcasts a change, and tells the registry.
    fn changed(&self, change: MemberChange) {
        if let Some(hook) = self.0.member_hook.get() {
            hook(&change);
        }
        let at_ms = ms(SystemTime::now());
        let event = match &change {
            MemberChange::Up { node, .. } => {
                info!(peer = %node, "connected to {node}");
                MemberEvent::Up { node: node.clone(), at_ms }
            }
            MemberChange::Leaving { node, .. } => Self::down_event(node, &DownReason::Left, at_ms),
            MemberChange::Down { node, reason, .. } => Self::down_event(node, reason, at_ms),
            MemberChange::Gone { node, .. } => {
                debug!(peer = %node, "node {node} closed its connection after leaving");
                return;
            }
        };
        let _ = self.0.events.send(event);
    }

    /// Logs a member's down (or leave) and makes its event.
    fn down_event(node: &str, reason: &DownReason, at_ms: u64) -> MemberEvent {
        match reason {
            DownReason::Left => info!(peer = %node, reason = reason.code(), "node left {node}: it said it is leaving; not re-dialling it"),
            DownReason::LocalShutdown => info!(peer = %node, reason = reason.code(), "node down {node}: {reason}"),
            _ => warn!(peer = %node, reason = reason.code(), "node down {node}: {reason}"),
        }
        MemberEvent::Down { node: node.to_string(), reason: reason.to_string(), code: reason.code().to_string(), at_ms }
    }

    async fn event_loop(self, mut events: mpsc::UnboundedReceiver<DistEvent>) {
        let _running = self.0.core.watch("membership's event loop");
        while let Some(ev) = events.recv().await {
            match ev {
                DistEvent::Up(peer) if peer.hidden() => debug!("hidden node {} connected from {}", peer.name(), peer.addr()),
                DistEvent::Up(peer) => self.apply(Input::Connected { node: peer.name().to_string(), conn: peer.conn_id(), since_ms: ms(peer.since()) }),
                DistEvent::Down(peer, reason) if peer.hidden() => debug!("hidden node {} disconnected: {reason}", peer.name()),
                DistEvent::Down(peer, reason) => self.apply(Input::Disconnected { node: peer.name().to_string(), conn: peer.conn_id(), reason }),
                // A leave counts from the announcement: placement stops counting on the
                // node while it hands its work over; its later disconnect is `Gone`.
                DistEvent::Leaving(peer) if !peer.hidden() => self.apply(Input::Leaving { node: peer.name().to_string(), conn: peer.conn_id() }),
                DistEvent::Leaving(_) => {}
                DistEvent::Frame(peer, Frame::Members(names)) if !peer.hidden() => {
                    self.apply(Input::Gossip { from: peer.name().to_string(), names: names.into() })
                }
                DistEvent::Frame(peer, Frame::Request { id, service, trace, body }) => match self.0.requests.get() {
                    Some(handle) => handle(peer, id, service, trace, body),
                    None => {
                        peer.send(Frame::Reply { id, body: bytes::Bytes::from_static(br#"{"error":"this node answers no requests yet"}"#) });
                    }
                },
                DistEvent::Frame(_, _) => {}
            }
        }
    }

    async fn redial_loop(self) {
        let _running = self.0.core.watch("membership's re-dial loop");
        loop {
            tokio::select! {
                _ = self.0.kick.notified() => {}
                _ = tokio::time::sleep(REDIAL_TICK) => {}
            }
            let now_ms = self.now_ms();
            let outputs = {
                let mut view = self.0.view.lock().unwrap();
                if view.leaving() {
                    return;
                }
                view.handle(Input::Tick { now_ms })
            };
            for output in outputs {
                self.carry_out(output);
            }
        }
    }
}
