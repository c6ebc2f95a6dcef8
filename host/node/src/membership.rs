//! Membership: who is up, who left, and whom to dial next.
//!
//! Consumes the ordered [`DistEvent`]s of `dist` in one task, so the member table
//! changes in one place and in the order connections changed:
//! - node-up and node-down (with its reason) are logged, counted and broadcast as
//!   [`MemberEvent`]s to the CLI's `--watch` and, later, to workers;
//! - every change sends this node's member list to its visible peers, and with
//!   `full_mesh` each node dials the members its peers list (Erlang's transitive
//!   connect), so a node configured with one peer ends up connected to all;
//! - a re-dial loop keeps dialling the names discovery lists (and, with full mesh,
//!   the names peers list) that are not connected, with exponential backoff per name,
//!   forever; discovery only adds, so a poll that returns fewer names disconnects nobody;
//! - a peer that announced it is leaving is logged as a leave, not a failure, and is
//!   not re-dialled until it connects again on its own.
//!
//! Hidden peers (the CLI) are never members and never gossiped.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::sync::{broadcast, mpsc, Notify};
use tracing::{debug, info, warn};
use wasmnode_proto::Frame;

use crate::dist::{DialError, Dist, DistEvent, DownReason, Peer};

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
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

struct Member {
    since: SystemTime,
    conn_id: u64,
}

struct Backoff {
    next: Instant,
    delay: Duration,
    last_error: Option<String>,
}

#[derive(Default)]
struct State {
    members: BTreeMap<String, Member>,
    left: HashSet<String>,
    /// Members that said they are leaving, by the connection still open to them.
    leavers: HashMap<String, u64>,
    /// Latest successful answer of each topology.
    discovered: BTreeMap<String, Vec<String>>,
    /// Latest member list each visible peer sent.
    gossip: HashMap<String, Vec<String>>,
    backoff: HashMap<String, Backoff>,
    leaving: bool,
}

/// Answers `Request` frames: the layers above (control plane, registry) install it.
pub type RequestHandler = Arc<dyn Fn(Peer, u64, bytes::Bytes) + Send + Sync>;

struct Shared {
    dist: Dist,
    requests: std::sync::OnceLock<RequestHandler>,
    member_hook: std::sync::OnceLock<MemberHook>,
    full_mesh: bool,
    started: SystemTime,
    state: Mutex<State>,
    events: broadcast::Sender<MemberEvent>,
    kick: Notify,
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
            dist,
            requests: std::sync::OnceLock::new(),
            member_hook: std::sync::OnceLock::new(),
            full_mesh,
            started: SystemTime::now(),
            state: Mutex::new(State::default()),
            events: broadcast::channel(1024).0,
            kick: Notify::new(),
        }));
        tokio::spawn(m.clone().event_loop(events));
        tokio::spawn(m.clone().redial_loop());
        m
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

    fn tell(&self, change: MemberChange) {
        if let Some(hook) = self.0.member_hook.get() {
            hook(&change);
        }
    }

    /// Every member, this node first.
    pub fn members(&self) -> Vec<MemberInfo> {
        let st = self.0.state.lock().unwrap();
        let me = MemberInfo { name: self.0.dist.name().to_string(), since_ms: ms(self.0.started), is_self: true };
        std::iter::once(me)
            .chain(st.members.iter().map(|(n, m)| MemberInfo { name: n.clone(), since_ms: ms(m.since), is_self: false }))
            .collect()
    }

    /// Member events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<MemberEvent> {
        self.0.events.subscribe()
    }

    /// Records what topology `topology` sees now; new names are dialled at once.
    /// Names only accumulate into the wanted set: nobody is disconnected here.
    pub fn discovered(&self, topology: &str, names: Vec<String>) {
        self.0.state.lock().unwrap().discovered.insert(topology.to_string(), names);
        self.0.kick.notify_one();
    }

    /// Whether discovery has answered for `topologies` topologies and every name it
    /// found is connected or has been tried once: the cluster as this node can see it
    /// has formed (boot-time workers wait for this).
    pub fn settled(&self, topologies: usize) -> bool {
        let st = self.0.state.lock().unwrap();
        let me = self.0.dist.name();
        st.discovered.len() >= topologies
            && st
                .discovered
                .values()
                .flatten()
                .chain(if self.0.full_mesh { st.gossip.values().flatten().collect::<Vec<_>>() } else { Vec::new() })
                .filter(|n| n.as_str() != me && !st.left.contains(*n))
                .all(|n| st.members.contains_key(n) || st.backoff.get(n).is_some_and(|b| b.last_error.is_some()))
    }

    /// Whether `node` said it is leaving (and has not come back since).
    pub fn has_left(&self, node: &str) -> bool {
        self.0.state.lock().unwrap().left.contains(node)
    }

    /// Announces that this node is leaving: no more dialling, peers stop counting on it,
    /// connections stay up for handing work over.
    pub fn announce_leave(&self) {
        self.0.state.lock().unwrap().leaving = true;
        self.0.kick.notify_one();
        self.0.dist.announce_leaving();
    }

    /// Leaves the cluster: stops dialling, tells every peer, closes every connection
    /// and waits for them (at most `deadline`).
    pub async fn leave(&self, deadline: Duration) {
        self.0.state.lock().unwrap().leaving = true;
        self.0.kick.notify_one();
        self.0.dist.leave(deadline).await;
    }

    async fn event_loop(self, mut events: mpsc::UnboundedReceiver<DistEvent>) {
        while let Some(ev) = events.recv().await {
            match ev {
                DistEvent::Up(peer) if peer.hidden() => debug!("hidden node {} connected from {}", peer.name(), peer.addr()),
                DistEvent::Up(peer) => self.on_up(&peer),
                DistEvent::Down(peer, reason) if peer.hidden() => debug!("hidden node {} disconnected: {reason}", peer.name()),
                DistEvent::Down(peer, reason) => self.on_down(&peer, reason),
                // A leave counts from the announcement: placement stops counting on the
                // node while it hands its work over; its later disconnect is `Gone`.
                DistEvent::Leaving(peer) if !peer.hidden() => self.on_leaving(&peer),
                DistEvent::Leaving(_) => {}
                DistEvent::Frame(peer, Frame::Members(names)) if !peer.hidden() => {
                    self.0.state.lock().unwrap().gossip.insert(peer.name().to_string(), names);
                    self.0.kick.notify_one();
                }
                DistEvent::Frame(peer, Frame::Request { id, body }) => match self.0.requests.get() {
                    Some(handle) => handle(peer, id, body),
                    None => {
                        peer.send(Frame::Reply { id, body: bytes::Bytes::from_static(br#"{"error":"this node answers no requests yet"}"#) });
                    }
                },
                DistEvent::Frame(_, _) => {}
            }
        }
    }

    fn on_up(&self, peer: &Peer) {
        {
            let mut st = self.0.state.lock().unwrap();
            st.members.insert(peer.name().to_string(), Member { since: peer.since(), conn_id: peer.conn_id() });
            st.left.remove(peer.name());
            st.leavers.remove(peer.name());
            st.backoff.remove(peer.name());
        }
        info!("connected to {}", peer.name());
        self.tell(MemberChange::Up { node: peer.name().to_string(), conn: peer.conn_id() });
        let _ = self.0.events.send(MemberEvent::Up { node: peer.name().to_string(), at_ms: ms(SystemTime::now()) });
        self.changed();
    }

    /// A leave counts from the announcement: placement stops counting on the node while
    /// it hands its work over; its connection closing later is [`MemberChange::Gone`].
    fn on_leaving(&self, peer: &Peer) {
        {
            let mut st = self.0.state.lock().unwrap();
            if st.members.get(peer.name()).is_none_or(|m| m.conn_id != peer.conn_id()) {
                return;
            }
            st.members.remove(peer.name());
            st.gossip.remove(peer.name());
            st.left.insert(peer.name().to_string());
            st.leavers.insert(peer.name().to_string(), peer.conn_id());
        }
        self.tell(MemberChange::Leaving { node: peer.name().to_string(), conn: peer.conn_id() });
        self.announce_down(peer, DownReason::Left);
    }

    fn on_down(&self, peer: &Peer, reason: DownReason) {
        {
            let mut st = self.0.state.lock().unwrap();
            if st.leavers.get(peer.name()) == Some(&peer.conn_id()) {
                st.leavers.remove(peer.name());
                drop(st);
                debug!("node {} closed its connection after leaving", peer.name());
                self.tell(MemberChange::Gone { node: peer.name().to_string(), conn: peer.conn_id() });
                return;
            }
            if st.members.get(peer.name()).is_none_or(|m| m.conn_id != peer.conn_id()) {
                return;
            }
            st.members.remove(peer.name());
            st.gossip.remove(peer.name());
            if reason == DownReason::Left {
                st.left.insert(peer.name().to_string());
            }
        }
        self.tell(MemberChange::Down { node: peer.name().to_string(), conn: peer.conn_id(), reason: reason.clone() });
        self.announce_down(peer, reason);
    }

    /// Logs, counts and broadcasts a member's down (or leave).
    fn announce_down(&self, peer: &Peer, reason: DownReason) {
        match &reason {
            DownReason::Left => info!("node left {}: it said it is leaving; not re-dialling it", peer.name()),
            DownReason::LocalShutdown => info!("node down {}: {reason}", peer.name()),
            _ => warn!("node down {}: {reason}", peer.name()),
        }
        let _ = self.0.events.send(MemberEvent::Down {
            node: peer.name().to_string(),
            reason: reason.to_string(),
            code: reason.code().to_string(),
            at_ms: ms(SystemTime::now()),
        });
        self.changed();
    }

    /// Logs the member list and sends it to every visible peer.
    fn changed(&self) {
        let names: Vec<String> = self.members().into_iter().map(|m| m.name).collect();
        info!("members ({}): {}", names.len(), names.join(", "));
        for peer in self.0.dist.peers() {
            if !peer.hidden() {
                peer.send(Frame::Members(names.clone()));
            }
        }
        self.0.kick.notify_one();
    }

    /// Names to dial now: wanted, not connected, not left, not dialling, backoff expired.
    fn due(&self) -> Vec<String> {
        let mut st = self.0.state.lock().unwrap();
        if st.leaving {
            return Vec::new();
        }
        let me = self.0.dist.name();
        let mut wanted: HashSet<&String> = st.discovered.values().flatten().collect();
        if self.0.full_mesh {
            wanted.extend(st.gossip.values().flatten());
        }
        let now = Instant::now();
        let due: Vec<String> = wanted
            .into_iter()
            .filter(|n| n.as_str() != me && !st.members.contains_key(*n) && !st.left.contains(*n))
            .filter(|n| st.backoff.get(*n).is_none_or(|b| b.next <= now))
            .filter(|n| !self.0.dist.is_dialing(n))
            .cloned()
            .collect();
        for n in &due {
            // Not again until this attempt ends and sets the real time.
            let b = st.backoff.entry(n.clone()).or_insert(Backoff { next: now, delay: BACKOFF_START, last_error: None });
            b.next = now + Duration::from_secs(3600);
        }
        due
    }

    async fn redial_loop(self) {
        loop {
            tokio::select! {
                _ = self.0.kick.notified() => {}
                _ = tokio::time::sleep(REDIAL_TICK) => {}
            }
            if self.0.state.lock().unwrap().leaving {
                return;
            }
            for name in self.due() {
                let m = self.clone();
                tokio::spawn(async move {
                    let result = m.0.dist.connect(&name).await;
                    m.dialled(&name, result.err());
                });
            }
        }
    }

    fn dialled(&self, name: &str, error: Option<DialError>) {
        let mut st = self.0.state.lock().unwrap();
        let Some(e) = error else {
            st.backoff.remove(name);
            return;
        };
        let now = Instant::now();
        let b = st.backoff.entry(name.to_string()).or_insert(Backoff { next: now, delay: BACKOFF_START, last_error: None });
        if e.is_tie_break() || matches!(e, DialError::InProgress) {
            // The other direction's connection is coming up; look again shortly.
            b.next = now + BACKOFF_START;
            return;
        }
        let msg = e.to_string();
        if matches!(e, DialError::Handshake(_)) {
            crate::metrics::global().handshake_failed(e.cause());
        }
        if b.last_error.as_deref() != Some(msg.as_str()) {
            match &e {
                DialError::Handshake(_) => warn!("cannot connect to {name}: {msg}; retrying with backoff"),
                _ => info!("cannot connect to {name}: {msg}; retrying with backoff"),
            }
        } else {
            debug!("cannot connect to {name}: {msg}; next try in {:?}", b.delay);
        }
        b.last_error = Some(msg);
        b.next = now + b.delay;
        b.delay = (b.delay * 2).min(BACKOFF_MAX);
    }
}
