//! The registry: one live instance per worker name, cluster-wide, and calls by name.
//!
//! The decisions are a state machine without I/O ([`table::Table`]: events in, effects
//! out), split by what it decides about: [`placement`] (who owns a name), `directory`
//! (what others run; two instances meeting), `supervise` (members up, leaving, down;
//! restarts), `handoff` (moves with state; stops) and [`route`] (where a call goes).
//! This file is the thin driver around it: it holds the table behind one lock, feeds it
//! membership changes, registry messages and instances' outcomes, and carries out its
//! effects — sends on the connections, instances created through the runtime's
//! [`Spawner`], timers. The call and cast loops live here too: they ask the table where
//! a name is, and follow the answer.
//!
//! - Start: answered `already-started` with the node when the name runs; started here
//!   when this node owns it; otherwise forwarded to the owner.
//! - Call and cast: to the local instance when it runs here, else to the node that
//!   runs it or owns it; a name running nowhere answers `not-found`, unless its kind
//!   activates on call, in which case the owner starts it first (virtual actors).
//! - Node-up and node-down reach every local instance as `info` events.

mod actor;
pub mod calls;
mod directory;
pub mod durable;
mod error;
mod handoff;
mod latest;
mod name;
mod origin;
pub mod placement;
pub mod pulse;
mod replica;
pub mod route;
mod supervise;
pub mod table;
#[cfg(test)]
mod tests;
pub mod wire;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;
use tracing::{debug, info, warn};
use wasmnode_proto::{Frame, Service, TraceContext};

pub use actor::{start_apart, BoxFuture, CallWith, Conflict, Envelope, Info, Mailbox, Merges, RemoteReply, ReplyTo, Restart, Spawner, Stop, Traced};
pub use error::{CallError, SpawnError, StartError};
pub use name::{check_kind, WorkerName, MAX_KEY_BYTES, MAX_KIND_BYTES};
pub use placement::owner;
pub use replica::Replication;
pub use wire::DurableReport;

/// A reply owed to a caller, with where it goes.
pub type Reply = (ReplyTo, Result<Vec<u8>, CallError>);

use crate::dist::{DownReason, Peer};
use crate::membership::{MemberChange, Membership};
use crate::telemetry;
use durable::Replicator;
use route::Route;
use table::{Effect, Event, Table};
use wire::{CallFields, CastFields, Msg, Replicate, Rpc, RpcReply, RPC_CALL, RPC_CAST};

/// How long a call or start waits for members that came up to list their names.
const SYNC_WAIT: Duration = Duration::from_secs(2);
/// How long a call or start on a node that just started waits for it to find its cluster.
const READY_WAIT: Duration = Duration::from_secs(10);
/// How many nodes a call follows a moving name through before giving up.
const MAX_HOPS: usize = 4;
/// How long a durable instance waits for a replica to take a copy of its state before
/// it no longer counts that replica (a replica that went down fails at once).
const REPLICATE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the calls and casts queued for an instance that moved on wait to learn where
/// it went, and a call made again for a caller here waits for its reply.
const FORWARD_WAIT: Duration = Duration::from_secs(30);

/// The most bytes of start args a worker may have. They go to every member with the
/// name's registration and with every copy and handoff of its state, so they are held
/// once per member (a Kubernetes object is capped at 1.5 MiB for the same reason).
pub const MAX_ARGS: usize = 1 << 20;

/// Why start args of `len` bytes are refused.
pub fn args_too_large(len: usize) -> String {
    format!("start args are {len} bytes, over the {} MiB a worker's args may be (every member holds them)", MAX_ARGS >> 20)
}

/// Whom the table's answer to a start or a stop goes to.
#[derive(Debug)]
pub enum Waiter {
    Start(oneshot::Sender<Result<String, StartError>>),
    Stop(oneshot::Sender<bool>),
}

type Core = Table<Mailbox, Waiter>;

struct Inner {
    membership: Membership,
    spawner: Arc<dyn Spawner>,
    table: Mutex<Core>,
    /// Woken whenever the table says where names run changed.
    changed: Notify,
    /// Woken when a leaving node's last instance is handed over (one wake-up, where
    /// `changed` would wake the leave once per handoff: 10,000 wake-ups and as many
    /// lock acquisitions for 10,000 instances).
    drained: Notify,
    /// Opened once this node has found its cluster: before that, alone, it would own
    /// every name and answer `not-found` for names running elsewhere.
    ready: tokio::sync::watch::Sender<bool>,
    /// Durable instances whose state is too large to copy: logged once per window each.
    too_large: Mutex<crate::refusals::RefusalLog<WorkerName>>,
    /// Instances whose mailbox refused a call or cast: logged once per window each.
    full: Mutex<crate::refusals::RefusalLog<WorkerName>>,
    /// Queues of instances that moved on, still being sent after their names
    /// ([`Registry::forward_queued`]): a leaving node waits for them.
    forwarding: std::sync::atomic::AtomicUsize,
    /// Set once this node, leaving, has used part of its handoff deadline
    /// ([`hurry_after`]): the waits of the instances still here end then ([`Hurry`]), so
    /// that each finishes its message and hands its state over before the deadline
    /// instead of being lost at it.
    hurry: tokio::sync::watch::Sender<bool>,
    /// Whether this process was just paused ([`pulse`]).
    pulse: pulse::Pulse,
    /// Whether the table is settling after a pause ([`Table::settling`]): durable
    /// instances take no message meanwhile ([`Registry::settled`]).
    settling: tokio::sync::watch::Sender<bool>,
}

/// Time a leaving node keeps for its instances' handoffs once their messages end:
/// sending the states and hearing them acknowledged.
const HANDOFF_TIME: Duration = Duration::from_secs(1);

/// When a leaving node, with `deadline` to hand its instances over, cuts their waits
/// short ([`Hurry`]): at half the deadline; earlier when a message then computing for
/// all of `longest_message` (its own-time budget, which waits do not count) and the
/// handoff would not end by the deadline; but not before a quarter of it, so that the
/// short waits under way at SIGTERM (an outbound request of a few milliseconds) end as
/// they would.
pub fn hurry_after(deadline: Duration, longest_message: Duration) -> Duration {
    (deadline / 2).min(deadline.saturating_sub(longest_message + HANDOFF_TIME)).max(deadline / 4)
}

/// What an instance's waits (its calls, outbound requests, sleeps) race against: this
/// node, leaving, cutting them short so that the instance can stop and hand its state
/// over ([`Registry::hand_off_all`]).
#[derive(Clone)]
pub struct Hurry(tokio::sync::watch::Receiver<bool>);

impl Hurry {
    /// Resolves once the waits are to end (at once, when they already are); never, on a
    /// node that is not leaving.
    pub async fn now(mut self) {
        if self.0.wait_for(|h| *h).await.is_err() {
            std::future::pending::<()>().await
        }
    }

    /// `wait`, unless the waits are cut first: then `cut()`.
    pub async fn race<T>(&self, wait: impl Future<Output = T>, cut: impl FnOnce() -> T) -> T {
        tokio::select! {
            biased;
            r = wait => r,
            () = self.clone().now() => cut(),
        }
    }
}

/// One queue being forwarded, counted while it lives.
struct Forwarding(Registry);

impl Forwarding {
    fn new(r: &Registry) -> Forwarding {
        r.0.forwarding.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Forwarding(r.clone())
    }
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        if self.0 .0.forwarding.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            self.0 .0.drained.notify_waiters();
        }
    }
}

/// This node's part of the cluster-wide registry.
#[derive(Clone)]
pub struct Registry(Arc<Inner>);

/// Where a call goes once the table has answered.
enum Target {
    Here(Mailbox),
    Remote(String),
}

/// Where a queued call's reply goes; none for what is not a call.
fn reply_of(e: Envelope) -> Option<ReplyTo> {
    match e {
        Envelope::Call { reply, .. } => Some(reply),
        Envelope::CallWith(c) => Some(c.reply),
        _ => None,
    }
}

/// The envelope of a call, with its id and its trace when it has them (boxed: rare).
fn call_envelope(msg: Vec<u8>, id: Option<String>, trace: Option<Traced>, reply: ReplyTo) -> Envelope {
    match (id, trace) {
        (None, None) => Envelope::Call { msg, reply },
        (id, trace) => Envelope::CallWith(Box::new(CallWith { id, msg, reply, trace })),
    }
}

impl Registry {
    /// A registry over `membership`, creating instances with `spawner`. It hears of
    /// membership changes in their order, from the membership's own task.
    pub fn start(membership: Membership, spawner: Arc<dyn Spawner>) -> Registry {
        let kinds: Arc<dyn table::Kinds> = spawner.clone();
        let me = membership.dist().name().to_string();
        let r = Registry(Arc::new(Inner {
            membership: membership.clone(),
            spawner,
            table: Mutex::new({
                let mut table = Table::new(me, kinds);
                table.set_incarnation(rand::random());
                table
            }),
            changed: Notify::new(),
            drained: Notify::new(),
            ready: tokio::sync::watch::Sender::new(false),
            too_large: Mutex::default(),
            full: Mutex::default(),
            forwarding: Default::default(),
            hurry: tokio::sync::watch::Sender::new(false),
            pulse: pulse::Pulse::new(membership.dist().heartbeat_interval() * 2, std::time::Instant::now()),
            settling: tokio::sync::watch::Sender::new(false),
        }));
        let weak = Arc::downgrade(&r.0);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(pulse::TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                if let Some(gap) = inner.pulse.tick(std::time::Instant::now()) {
                    Registry(inner).woke(gap);
                }
            }
        });
        let weak = Arc::downgrade(&r.0);
        membership.set_member_hook(Arc::new(move |change: &MemberChange| {
            if let Some(inner) = weak.upgrade() {
                Registry(inner).member_changed(change);
            }
        }));
        r
    }

    /// Queues a call in an instance's mailbox and waits for its reply, until `deadline`.
    async fn call_mailbox(
        &self,
        name: &WorkerName,
        mailbox: Mailbox,
        msg: Vec<u8>,
        id: Option<String>,
        trace: Option<Traced>,
        deadline: Instant,
    ) -> Result<Vec<u8>, CallError> {
        let (tx, rx) = oneshot::channel();
        if let Err(refused) = mailbox.tx.send(call_envelope(msg, id, trace, ReplyTo::Local(tx))) {
            return Err(self.not_queued(name, &refused));
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(CallError::Failed(format!("{name} stopped before replying"))),
            Err(_) => Err(CallError::Timeout),
        }
    }

    /// Queues a cast in an instance's mailbox.
    fn cast_mailbox(&self, name: &WorkerName, mailbox: &Mailbox, msg: Vec<u8>) -> Result<(), CallError> {
        mailbox.tx.send(Envelope::Cast { msg }).map_err(|refused| self.not_queued(name, &refused))
    }

    /// What the sender of a call or cast that `name`'s mailbox refused hears: the
    /// instance stopped, or its mailbox is full — `unavailable`, as for a node that
    /// cannot be reached now: nothing was delivered, and a later try may be. A full
    /// mailbox is logged once per window per name and counted by kind.
    fn not_queued(&self, name: &WorkerName, refused: &crate::mailbox::Refused<Envelope>) -> CallError {
        let &crate::mailbox::Refused::Full { messages, bytes, bounds, .. } = refused else {
            return CallError::Failed(format!("{name} stopped"));
        };
        let why = format!(
            "{name}'s mailbox is full: {messages} calls and casts ({bytes} bytes) wait for it, and it holds at most {} messages and {} MiB; not delivered",
            bounds.messages,
            bounds.bytes >> 20
        );
        crate::metrics::global().mailbox_refused(&name.kind);
        if let Some(left_out) = self.0.full.lock().unwrap().refused(name.clone(), std::time::Instant::now()) {
            warn!(worker = %name, reason = "mailbox_full", left_out, "{why}: calls and casts to it are refused until it catches up");
        }
        CallError::Unavailable(why)
    }

    pub fn node(&self) -> &str {
        self.0.membership.dist().name()
    }

    pub fn membership(&self) -> &Membership {
        &self.0.membership
    }

    /// The node that should run `name` now.
    pub fn owner_of(&self, name: &WorkerName) -> String {
        self.0.table.lock().unwrap().owner_of(name).to_string()
    }

    /// Names running on this node, sorted.
    pub fn local_names(&self) -> Vec<String> {
        self.0.table.lock().unwrap().running().iter().map(WorkerName::to_string).collect()
    }

    /// Instances running here, by kind.
    pub fn instances_by_kind(&self) -> std::collections::BTreeMap<String, usize> {
        let mut by_kind = std::collections::BTreeMap::new();
        for name in self.0.table.lock().unwrap().running() {
            *by_kind.entry(name.kind).or_insert(0) += 1;
        }
        by_kind
    }

    /// Opens the gate: this node has found its cluster (see [`Membership::settled`]).
    pub fn set_ready(&self) {
        self.0.ready.send_replace(true);
    }

    /// Ready for work (`/readyz`): the gate is open and the node is not leaving.
    pub fn is_ready(&self) -> bool {
        *self.0.ready.borrow() && !self.0.table.lock().unwrap().is_leaving()
    }

    // ---- the driver: events in, effects carried out ----

    /// Feeds one event to the table and carries out its effects. Spawns are started
    /// on tasks of their own unless `inline`, when they are returned for the caller to
    /// await (a start asked here runs `init` on the task that asked).
    fn apply(&self, event: Event<Mailbox, Waiter>, inline: bool) -> Vec<BoxFuture<()>> {
        let mut table = self.0.table.lock().unwrap();
        let effects = table.handle(event);
        self.carry_out(table, effects, inline)
    }

    /// Carries out `effects`, which `table` called for, under its lock (see
    /// [`Registry::apply`]).
    fn carry_out(&self, table: std::sync::MutexGuard<'_, Table<Mailbox, Waiter>>, effects: Vec<Effect<Mailbox, Waiter>>, inline: bool) -> Vec<BoxFuture<()>> {
        let settling = table.settling();
        self.0.settling.send_if_modified(|s| std::mem::replace(s, settling) != settling);
        // Effects run under the lock, in order (two threads' sends never swap), except
        // what feeds the table again, which runs after it.
        let mut later = Vec::new();
        let mut spawns = Vec::new();
        for effect in effects {
            match effect {
                Effect::Send { to, msg } => {
                    if let Err(why) = self.send(&to, &msg) {
                        // A handoff too large to send is refused, as if by its target: the
                        // next target is tried, and with none the instance runs here again.
                        if let Msg::Handoff { name, .. } = msg {
                            warn!(worker = %name, peer = %to, reason = "too_large", "cannot hand {name} to {to}: {why}");
                            later.push(Event::Received { from: to, msg: Msg::HandoffAck { name, at: None } });
                        } else {
                            warn!(peer = %to, reason = "too_large", "not sending a registry message to {to}: {why}");
                        }
                    }
                }
                Effect::Spawn { name, id, args, state, merges } => {
                    let r = self.clone();
                    let job: BoxFuture<()> = Box::pin(async move {
                        let result = r.0.spawner.spawn(r.clone(), name.clone(), args, state, merges, id).await;
                        r.apply(Event::Spawned { name, id, result }, false);
                    });
                    if inline {
                        spawns.push(job);
                    } else {
                        tokio::spawn(job);
                    }
                }
                Effect::Stop { name, id, handle, reason, moves } => {
                    let (tx, rx) = oneshot::channel();
                    let stop = Envelope::Stop(Box::new(Stop { reason, reply: tx, moves }));
                    let sent = if moves { handle.tx.send_ahead(stop) } else { handle.tx.send(stop) };
                    if sent.is_err() {
                        later.push(Event::Stopped { name, id, state: None });
                    } else {
                        let r = self.clone();
                        tokio::spawn(async move {
                            let state = rx.await.ok().flatten();
                            r.apply(Event::Stopped { name, id, state }, false);
                        });
                    }
                }
                Effect::Merge { handle, from, state, acks, .. } => {
                    // The handoffs' answers wait until the merged state is safe.
                    let done = (!acks.is_empty()).then(|| {
                        let (tx, rx) = oneshot::channel();
                        let r = self.clone();
                        tokio::spawn(async move {
                            let _ = rx.await;
                            for (to, msg) in acks {
                                let _ = r.send(&to, &msg);
                            }
                        });
                        tx
                    });
                    let _ = handle.tx.send(Envelope::Conflict(Box::new(Conflict { from, state, done })));
                }
                Effect::ForwardStart { to, name, args, reply } => {
                    let r = self.clone();
                    tokio::spawn(async move {
                        let result = match r.rpc(&to, &Rpc::Start { name, args }, Duration::from_secs(30)).await {
                            Ok(RpcReply::Started(node)) => Ok(node),
                            Ok(RpcReply::StartFailed(e)) => Err(e),
                            Ok(_) => Err(StartError::Failed("unexpected reply".into())),
                            Err(e) => Err(StartError::Failed(format!("owner {to}: {e}"))),
                        };
                        if let Waiter::Start(tx) = reply {
                            let _ = tx.send(result);
                        }
                    });
                }
                Effect::Started { reply, result } => {
                    if let Waiter::Start(tx) = reply {
                        let _ = tx.send(result);
                    }
                }
                Effect::StopDone { reply, stopped } => {
                    if let Waiter::Stop(tx) = reply {
                        let _ = tx.send(stopped);
                    }
                }
                Effect::SetTimer { after, timer } => {
                    let r = self.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(after).await;
                        r.apply(Event::Timer(timer), false);
                    });
                }
                // Logged where it was decided.
                Effect::Lost { .. } => {}
                Effect::Changed => self.0.changed.notify_waiters(),
            }
        }
        if table.is_leaving() && table.local_count() == 0 {
            self.0.drained.notify_waiters();
        }
        drop(table);
        for event in later {
            spawns.extend(self.apply(event, inline));
        }
        spawns
    }

    /// Applies an event whose spawns run on this task.
    async fn apply_here(&self, event: Event<Mailbox, Waiter>) {
        for job in self.apply(event, true) {
            job.await;
        }
    }

    /// Sends `msg` to `to` if it is connected; an error, and nothing sent, when the
    /// message is too large for one message between nodes.
    fn send(&self, to: &str, msg: &Msg) -> Result<(), String> {
        let body = wire::encode(&Rpc::Tell(msg.clone()));
        if body.len() > crate::dist::MAX_BODY {
            return Err(crate::dist::too_large("the message", body.len()));
        }
        if let Some(peer) = self.0.membership.dist().peer(to) {
            peer.send(Frame::Request { id: 0, service: Service::Registry, trace: None, body });
        }
        Ok(())
    }

    /// A membership change: to the table, and to every local instance as `info`.
    fn member_changed(&self, change: &MemberChange) {
        let Some(event) = Event::member(change) else { return };
        // A peer's close read on waking from a pause, before the pulse ticked: the pause
        // first (its peers declared this node down; they are not down).
        // Ticked here, so that the pulse's own tick does not tell the same pause again.
        if let (Event::MemberDown { .. }, Some(gap)) = (&event, self.0.pulse.tick(std::time::Instant::now())) {
            self.woke(gap);
        }
        self.apply(event, false);
        let info = match change {
            MemberChange::Up { node, .. } => Info::NodeUp(node.clone()),
            MemberChange::Leaving { node, .. } => Info::NodeDown { node: node.clone(), reason: DownReason::Left.to_string() },
            MemberChange::Down { node, reason, .. } => Info::NodeDown { node: node.clone(), reason: reason.to_string() },
            // A leaver's connection closing: nothing for the instances (they heard it leave).
            MemberChange::Gone { .. } => return,
        };
        let mailboxes: Vec<Mailbox> = self.0.table.lock().unwrap().running_handles();
        for mb in mailboxes {
            let _ = mb.tx.send(Envelope::Info(Box::new(info.clone())));
        }
    }

    /// This process did not run for `gap` ([`Event::Woke`]).
    fn woke(&self, gap: Duration) {
        self.apply(Event::Woke { paused_ms: gap.as_millis() as u64 }, false);
    }

    /// Returns once this node is not settling after a pause ([`Table::settling`]): a
    /// durable instance waits for it before it takes a message, so that it acknowledges
    /// nothing while its name may run elsewhere. A pause the pulse has not ticked for
    /// yet (this task ran first on waking) is told to the table here.
    pub async fn settled(&self) {
        if let Some(gap) = self.0.pulse.tick(std::time::Instant::now()) {
            self.woke(gap);
        }
        if !*self.0.settling.borrow() {
            return;
        }
        let _ = self.0.settling.subscribe().wait_for(|s| !*s).await;
    }

    // ---- starts and stops ----

    /// Starts `kind/key` on its owner; the node it runs on.
    pub async fn start_worker(&self, kind: &str, key: &str, args: Vec<u8>) -> Result<String, StartError> {
        let name = WorkerName::checked(kind, key).map_err(|e| StartError::Failed(e.to_string()))?;
        if args.len() > MAX_ARGS {
            return Err(StartError::Failed(args_too_large(args.len())));
        }
        self.wait_synced_unless_known(&name).await;
        self.start_with(name, args, false).await
    }

    /// Starts `kind/key` here, whoever owns it.
    pub async fn start_local(&self, kind: &str, key: &str, args: Vec<u8>) -> Result<String, StartError> {
        let name = WorkerName::checked(kind, key).map_err(|e| StartError::Failed(e.to_string()))?;
        if args.len() > MAX_ARGS {
            return Err(StartError::Failed(args_too_large(args.len())));
        }
        self.start_with(name, args, true).await
    }

    async fn start_with(&self, name: WorkerName, args: Vec<u8>, here: bool) -> Result<String, StartError> {
        let (tx, rx) = oneshot::channel();
        self.apply_here(Event::Start { name, args, here, reply: Waiter::Start(tx) }).await;
        rx.await.unwrap_or_else(|_| Err(StartError::Failed("the registry dropped the start".into())))
    }

    /// Stops the local instance of `kind/key` after its `terminate(reason)`; false if
    /// none runs here. Its state is dropped: this is an end, not a handoff. Answered
    /// once the instance's memory is free.
    pub async fn stop_local(&self, kind: &str, key: &str, reason: &str) -> bool {
        let (tx, rx) = oneshot::channel();
        let event = Event::Stop { name: WorkerName::new(kind, key), reason: reason.into(), reply: Waiter::Stop(tx) };
        self.apply(event, false);
        rx.await.unwrap_or(false)
    }

    /// The calls and casts that were queued for an instance of `name` that stopped to go
    /// on elsewhere (a handoff, a duplicate giving way, a new instance here): none was
    /// handled, so each follows the name, in order, once the table knows where it went.
    /// Back here, they go into the new instance's mailbox as they were. Elsewhere, a call
    /// from another node is answered `moved` and its caller sends it there, so that a
    /// node that closes in order has answered every call it took (the caller would
    /// otherwise send it again); a call from this node is made again and its reply
    /// delivered; casts are sent on. A leaving node waits for them (`hand_off_all`).
    pub fn forward_queued(&self, name: WorkerName, queued: std::collections::VecDeque<Envelope>) {
        use crate::mailbox::Weigh;
        let queued: Vec<Envelope> = queued.into_iter().filter(|e| e.weight().is_some()).collect();
        if queued.is_empty() {
            return;
        }
        let guard = Forwarding::new(self);
        let r = self.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let count = queued.len();
            let deadline = Instant::now() + FORWARD_WAIT;
            let to = match r.resolve(&name, None, deadline).await {
                Ok(Target::Here(mailbox)) => {
                    info!(worker = %name, count, "{count} calls and casts queued for {name} go to its new instance here");
                    for e in queued {
                        // Refused (it stopped again, or its queue is full): the callers hear it.
                        if let Err(refused) = mailbox.tx.send(e) {
                            let e = r.not_queued(&name, &refused);
                            if let Some(reply) = reply_of(refused.into_inner()) {
                                reply.deliver(Err(e)).await;
                            }
                        }
                    }
                    return;
                }
                Ok(Target::Remote(to)) => to,
                Err(e) => {
                    warn!(worker = %name, count, reason = %e, "{count} calls and casts queued for {name} found it nowhere after it moved: {e}");
                    for reply in queued.into_iter().filter_map(reply_of) {
                        reply.deliver(Err(e.clone())).await;
                    }
                    return;
                }
            };
            info!(worker = %name, peer = %to, count, "{count} calls and casts queued for {name} follow it to {to}");
            for e in queued {
                let (msg, id, trace, reply) = match e {
                    Envelope::Call { msg, reply } => (msg, None, None, reply),
                    Envelope::CallWith(c) => {
                        let CallWith { id, msg, reply, trace } = *c;
                        (msg, id, trace, reply)
                    }
                    Envelope::Cast { msg } => {
                        // In order: a cast goes before whatever its sender sent next.
                        if let Err(e) = r.cast(&name.kind, &name.key, msg).await {
                            debug!(worker = %name, peer = %to, "a cast queued for {name} did not follow it to {to}: {e}");
                        }
                        continue;
                    }
                    Envelope::Info(_) | Envelope::Stop(_) | Envelope::Conflict(_) => continue,
                };
                match reply {
                    ReplyTo::Remote(caller) => caller.moved(to.clone()).await,
                    ReplyTo::Local(tx) => {
                        let (r, name) = (r.clone(), name.clone());
                        let guard = Forwarding::new(&r);
                        tokio::spawn(async move {
                            let _guard = guard;
                            let trace = trace.map(|t| t.parent);
                            let _ = tx.send(r.call_traced(&name.kind, &name.key, msg, id.as_deref(), trace, FORWARD_WAIT).await);
                        });
                    }
                }
            }
        });
    }

    /// Forgets instance `id` of `name`: it ended by itself (a trap). A stop the
    /// registry asked for is answered on its own channel instead.
    pub fn unregister(&self, name: &WorkerName, id: u64) {
        self.apply(Event::Exited { name: name.clone(), id }, false);
    }

    /// Hands every local instance to its next owner (this node excluded): `terminate`
    /// state out, `init(…, state)` there, acknowledged; within `deadline`. Calls that
    /// arrive meanwhile wait and then follow the name.
    ///
    /// At [`hurry_after`] the instances still here have their waits cut short
    /// ([`Hurry`]): a message waiting on a slow call, outbound request or sleep would
    /// otherwise hold its instance's stop, and its state, past the deadline.
    /// `longest_message` is the longest any message may compute (the kinds' largest
    /// `call_timeout_ms`).
    pub async fn hand_off_all(&self, deadline: Duration, longest_message: Duration) {
        self.apply(Event::Leave, false);
        let began = Instant::now();
        let (hurry_at, deadline) = (began + hurry_after(deadline, longest_message), began + deadline);
        loop {
            let drained = self.0.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            let forwarding = self.0.forwarding.load(std::sync::atomic::Ordering::SeqCst);
            if self.0.table.lock().unwrap().local_count() == 0 && forwarding == 0 {
                break;
            }
            let hurried = *self.0.hurry.borrow();
            if tokio::time::timeout_at(if hurried { deadline } else { hurry_at }, drained).await.is_err() {
                if hurried {
                    break;
                }
                let (left, ms) = (self.0.table.lock().unwrap().local_count(), began.elapsed().as_millis());
                if left > 0 {
                    warn!(
                        count = left,
                        "{left} instances not handed over {ms} ms into the handoff deadline: ending their waits on calls, outbound requests and sleeps, \
                         so that they finish their messages and hand their states over in the time left"
                    );
                }
                self.0.hurry.send_replace(true);
            }
        }
        let left = self.0.table.lock().unwrap().held();
        if !left.is_empty() {
            warn!(count = left.len(), "leaving with {} instances not handed over by the deadline; their state is lost", left.len());
        }
        let forwarding = self.0.forwarding.load(std::sync::atomic::Ordering::SeqCst);
        if forwarding > 0 {
            warn!(
                count = forwarding,
                "leaving with calls and casts of {forwarding} queues still following their names at the deadline; their callers hear the node went"
            );
        }
    }

    /// What this node's instances' waits race against ([`Hurry`]).
    pub fn hurry(&self) -> Hurry {
        Hurry(self.0.hurry.subscribe())
    }

    /// Waits until `done` holds of the table (looking again at every change), or
    /// `deadline`; whether it holds.
    async fn wait_for(&self, deadline: Instant, done: impl Fn(&Core) -> bool) -> bool {
        loop {
            let changed = self.0.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if done(&self.0.table.lock().unwrap()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return false;
            }
        }
    }

    async fn wait_synced_unless_known(&self, name: &WorkerName) {
        if self.0.table.lock().unwrap().knows(name) {
            return;
        }
        let mut ready = self.0.ready.subscribe();
        let _ = tokio::time::timeout(READY_WAIT, ready.wait_for(|r| *r)).await;
        // Members that came up list their names first, so a new node does not answer
        // `not-found` for a name running elsewhere.
        self.wait_for(Instant::now() + SYNC_WAIT, |t| t.synced()).await;
    }

    // ---- calls ----

    /// Calls `kind/key` wherever it runs; its reply.
    pub async fn call(&self, kind: &str, key: &str, msg: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, CallError> {
        self.call_with_id(kind, key, msg, None, timeout).await
    }

    /// [`Registry::call`], with a call id when one is given: applied once by the name
    /// however often it is retried with that id (see [`calls`]); a retry gets the first
    /// outcome.
    pub async fn call_with_id(&self, kind: &str, key: &str, msg: Vec<u8>, id: Option<&str>, timeout: Duration) -> Result<Vec<u8>, CallError> {
        self.call_traced(kind, key, msg, id, None, timeout).await
    }

    /// [`Registry::call_with_id`] as part of the trace whose span is `trace` (see
    /// [`crate::telemetry`]): the call's spans, here and on the nodes it crosses, are
    /// that span's descendants.
    pub async fn call_traced(
        &self,
        kind: &str,
        key: &str,
        msg: Vec<u8>,
        id: Option<&str>,
        trace: Option<TraceContext>,
        timeout: Duration,
    ) -> Result<Vec<u8>, CallError> {
        if let Some(id) = id {
            calls::check_id(id).map_err(CallError::Failed)?;
        }
        let name = WorkerName::new(kind, key);
        let id = id.map(str::to_string);
        let started = std::time::Instant::now();
        let deadline = Instant::now() + timeout;
        // The common case first, with one lookup: the instance runs here (and so its
        // name was checked when it started).
        let running = self.0.table.lock().unwrap().handle_of(&name).cloned();
        let result = match running {
            Some(mailbox) => self.call_mailbox(&name, mailbox, msg, id, trace.map(|parent| Traced { parent, remote: false }), deadline).await,
            None => {
                WorkerName::check(kind, key).map_err(|e| CallError::Failed(e.to_string()))?;
                self.wait_synced_unless_known(&name).await;
                self.call_routed(&name, msg, id, trace, deadline).await
            }
        };
        crate::metrics::global().called(started.elapsed(), result.is_ok());
        result
    }

    /// Follows the table's answers for `name` (and the nodes' `moved` answers), at most
    /// [`MAX_HOPS`] nodes.
    async fn call_routed(
        &self,
        name: &WorkerName,
        msg: Vec<u8>,
        id: Option<String>,
        trace: Option<TraceContext>,
        deadline: Instant,
    ) -> Result<Vec<u8>, CallError> {
        let mut next = None;
        for _ in 0..MAX_HOPS {
            let node = match next.take() {
                Some(node) if node != self.node() => node,
                _ => match self.resolve(name, None, deadline).await? {
                    Target::Here(mailbox) => {
                        return self.call_mailbox(name, mailbox, msg, id, trace.map(|parent| Traced { parent, remote: false }), deadline).await
                    }
                    Target::Remote(node) => node,
                },
            };
            let timeout_ms = deadline.saturating_duration_since(Instant::now()).as_millis() as u64;
            let rpc = Rpc::Call { name: name.clone(), msg: msg.clone(), timeout_ms, call_id: id.clone() };
            // Each node the call is sent to is a client span, whose context the request carries.
            let mut span =
                trace.and_then(|t| telemetry::span(format!("call {}", name.kind), telemetry::Kind::Client, Some(t), Some(&name.to_string()), Some(&node)));
            // The caller's deadline bounds the call: an instance running on `node` answers
            // from its mailbox with no timer of its own (`handle_rpc_fast`).
            let peer = self.0.membership.dist().peer(&node);
            let answer = match &peer {
                Some(peer) => self.rpc_on(peer, &rpc, span.as_ref().map(telemetry::Span::context), deadline.saturating_duration_since(Instant::now())).await,
                None => Err(CallError::Unavailable(format!("{node} is not connected"))),
            };
            if let (Some(span), Ok(RpcReply::CallFailed(e)) | Err(e)) = (span.as_mut(), &answer) {
                span.fail(e.to_string());
            }
            drop(span);
            match answer {
                Ok(RpcReply::Reply(r)) => return Ok(r),
                Ok(RpcReply::CallFailed(e)) => return Err(e),
                Ok(RpcReply::Moved(to)) => next = Some(to),
                Ok(_) => return Err(CallError::Failed("unexpected reply".into())),
                // `node` left and closed in order before answering: the call was not
                // handled there. (A call its instance handled was answered before the
                // instance stopped for the handoff, and the node closes only once the
                // handoff is acknowledged, so that reply is ahead of the close on the
                // wire.) It goes where the name is now. A connection that ended any other
                // way (a reset, a heartbeat timeout: this node may have been paused while
                // the reply was due) may have cut off a reply to a call that was handled:
                // `unavailable`, for the caller to retry with an id. Not connected to a
                // node that left: the call was never sent, and goes on too.
                Err(CallError::Unavailable(_)) if peer.as_ref().map_or_else(|| self.0.membership.has_left(&node), Peer::closed_in_order) => {}
                Err(e) => return Err(e),
            }
        }
        Err(CallError::Unavailable(format!("{name} keeps moving")))
    }

    /// Where a call for `name` that reached this node goes (from `from`, for a call
    /// another node sent): waits while it starts or moves here, and starts it first
    /// when its kind activates on call.
    async fn resolve(&self, name: &WorkerName, from: Option<&str>, deadline: Instant) -> Result<Target, CallError> {
        loop {
            let changed = self.0.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let route = self.0.table.lock().unwrap().route(name, from);
            match route {
                Route::Here(mailbox) => return Ok(Target::Here(mailbox)),
                Route::Remote(node) => return Ok(Target::Remote(node)),
                Route::NotFound => {
                    debug!(worker = %name, "a call for {name} (from {}) finds it nowhere", from.unwrap_or("here"));
                    return Err(CallError::NotFound);
                }
                Route::Wait => {
                    if tokio::time::timeout_at(deadline, changed).await.is_err() {
                        return Err(CallError::Timeout);
                    }
                }
                Route::Activate => {
                    // The caller may be a guest: its start runs apart (see `start_apart`).
                    let (r, n) = (self.clone(), name.clone());
                    match start_apart(async move { r.start_with(n, Vec::new(), true).await }).await {
                        Ok(_) | Err(StartError::AlreadyStarted(_)) => {}
                        Err(e) => return Err(CallError::Failed(format!("activating {name}: {e}"))),
                    }
                }
            }
        }
    }

    /// Sends `msg` to `kind/key` without waiting for it to be handled.
    pub async fn cast(&self, kind: &str, key: &str, msg: Vec<u8>) -> Result<(), CallError> {
        let name = WorkerName::checked(kind, key).map_err(|e| CallError::Failed(e.to_string()))?;
        self.wait_synced_unless_known(&name).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        match self.resolve(&name, None, deadline).await? {
            Target::Here(mailbox) => self.cast_mailbox(&name, &mailbox, msg),
            Target::Remote(node) => match self.rpc(&node, &Rpc::Cast { name, msg }, Duration::from_secs(5)).await {
                Ok(RpcReply::Done) => Ok(()),
                Ok(RpcReply::CallFailed(e)) => Err(e),
                Ok(_) => Err(CallError::Failed("unexpected reply".into())),
                Err(e) => Err(e),
            },
        }
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

    async fn rpc(&self, node: &str, rpc: &Rpc, timeout: Duration) -> Result<RpcReply, CallError> {
        self.rpc_traced(node, rpc, None, timeout).await
    }

    async fn rpc_traced(&self, node: &str, rpc: &Rpc, trace: Option<TraceContext>, timeout: Duration) -> Result<RpcReply, CallError> {
        self.rpc_body_to(node, wire::encode(rpc), trace, timeout).await
    }

    async fn rpc_on(&self, peer: &Peer, rpc: &Rpc, trace: Option<TraceContext>, timeout: Duration) -> Result<RpcReply, CallError> {
        self.rpc_body(peer, wire::encode(rpc), trace, timeout).await
    }

    /// [`Registry::rpc_body`] to `node` by name.
    async fn rpc_body_to(&self, node: &str, body: Bytes, trace: Option<TraceContext>, timeout: Duration) -> Result<RpcReply, CallError> {
        let peer = self.0.membership.dist().peer(node).ok_or_else(|| CallError::Unavailable(format!("{node} is not connected")))?;
        self.rpc_body(&peer, body, trace, timeout).await
    }

    /// [`Registry::rpc_on`] with the request already encoded.
    async fn rpc_body(&self, peer: &Peer, body: Bytes, trace: Option<TraceContext>, timeout: Duration) -> Result<RpcReply, CallError> {
        let node = peer.name();
        match peer.request_traced(Service::Registry, body, trace, timeout).await {
            Ok(reply) => postcard::from_bytes(&reply).map_err(|e| CallError::Failed(format!("bad reply from {node}: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Err(CallError::Timeout),
            // Too large to send: not sent, and the connection is fine.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => Err(CallError::Failed(e.to_string())),
            Err(_) => Err(CallError::went_down(node)),
        }
    }

    // ---- durable kinds ----

    /// Copies `state`, the new state of the durable instance of `name` running here, to
    /// its `replicas` (the members that rank next for it) and waits until every one
    /// that is up holds it: a delta to a replica that holds the previous copy, the whole
    /// state to one that does not. A node that is down or does not answer within
    /// [`REPLICATE_TIMEOUT`] is not counted (it gets the whole state next time); nodes
    /// that are no longer among the replicas are told to drop their copy.
    ///
    /// `reply` is the reply this state answers, if any. When its caller is on the one
    /// node the copy goes to, it rides with the copy ([`Rpc::ReplicateThenReply`]): that
    /// node takes the copy and then answers its own caller, one hop instead of two
    /// (copy, acknowledgement, reply). Returned when it did not ride, for the caller of
    /// this to send; a reply that rode but was not delivered (the replica refused the
    /// copy or did not answer) is sent here, the usual way.
    pub async fn replicate(&self, name: &WorkerName, replicas: usize, rep: &mut Replicator, state: Vec<u8>, reply: Option<Reply>) -> Option<Reply> {
        let Some(Replication { targets, args, lineage, line, start, holds }) = self.0.table.lock().unwrap().replication_of(name, replicas) else {
            return reply;
        };
        let Some((seq, sends)) = rep.plan(&targets, &state) else { return reply };
        let changes = rep.changes_with(&state);
        let height = Some(start.saturating_add(changes));
        let holders: Vec<String> = targets.iter().map(|(t, _)| t.clone()).collect();
        let (riding, reply) = match (reply, sends.as_slice()) {
            (Some((ReplyTo::Remote(r), result)), [(to, _)]) if r.peer.name() == to && targets.iter().any(|(t, conn)| t == to && *conn == r.peer.conn_id()) => {
                (Some((r, RemoteReply::encode(result))), None)
            }
            (reply, _) => (None, reply),
        };
        let carried = riding.as_ref().map(|(r, body)| (r.id, body.clone()));
        let copies = sends.into_iter().map(|(to, update)| {
            let copy = Replicate { name: name.clone(), args: args.clone(), lineage, seq, update, holders: holders.clone(), line, height, holds: holds.clone() };
            let state = &state;
            let carried = &carried;
            let rpc = move |copy: Replicate| match carried {
                Some((id, reply)) => Rpc::ReplicateThenReply { copy: Box::new(copy), id: *id, reply: reply.to_vec() },
                None => Rpc::Replicate(Box::new(copy)),
            };
            async move {
                let bytes = copy.update.payload_len();
                // One try: `Err` when the copy is too large to send (nothing is sent).
                let to_ref = &to;
                let send = |copy: Replicate| async move {
                    let body = wire::encode(&rpc(copy));
                    if body.len() > crate::dist::MAX_BODY {
                        return Err(body.len());
                    }
                    Ok(matches!(self.rpc_body_to(to_ref, body, None, REPLICATE_TIMEOUT).await, Ok(RpcReply::Done)))
                };
                let mut held = send(copy.clone()).await;
                if held != Ok(true) && matches!(copy.update, durable::Update::Delta { .. }) {
                    // Most likely a replica that lost the previous copy: the whole state.
                    let full = Replicate { update: durable::Update::Full(state.clone()), ..copy };
                    held = send(full).await;
                }
                crate::metrics::global().replicated(bytes, held == Ok(true));
                match held {
                    Ok(true) => {}
                    Ok(false) => debug!(worker = %name, peer = %to, "{to} did not take the copy of {name}'s state"),
                    Err(len) => {
                        if let Some(left_out) = self.0.too_large.lock().unwrap().refused(name.clone(), std::time::Instant::now()) {
                            let why = crate::dist::too_large("the copy", len);
                            warn!(worker = %name, peer = %to, reason = "too_large", left_out, "cannot copy {name}'s state ({} bytes) to {to}: {why}; it is not durable until it fits", state.len());
                        }
                    }
                }
                let held = held == Ok(true);
                (to, held)
            }
        });
        let results = futures_util::future::join_all(copies).await;
        let acked: Vec<String> = results.into_iter().filter(|(_, held)| *held).map(|(to, _)| to).collect();
        if let Some((mut r, body)) = riding {
            if acked.is_empty() {
                // Not delivered with the copy: answered as any reply is.
                r.deliver_encoded(body).await;
            } else {
                r.sent = true;
            }
        }
        {
            let mut t = self.0.table.lock().unwrap();
            t.copied(name, seq, acked.clone());
            t.went_on(name, line, changes);
        }
        for dropped in rep.done(seq, state, &targets, &acked) {
            let _ = self.send(&dropped, &Msg::ReplicaDropped { name: name.clone() });
        }
        reply
    }

    /// What this node knows of durable names: the copies it holds (name, the node that
    /// runs it, copy number, size) and, for those running here, the last copy's number
    /// and which replicas hold it.
    pub fn durable_here(&self) -> DurableReport {
        let t = self.0.table.lock().unwrap();
        DurableReport { held: t.replicas_held(), sent: t.copies_sent() }
    }

    /// [`Registry::durable_here`] of every member, this node included, for `workers
    /// --json`: each durable name with where it runs, the replicas that hold its state,
    /// and whether each holds the latest copy.
    pub async fn durable_all(&self) -> Vec<serde_json::Value> {
        let mut reports = Vec::new();
        for m in self.0.membership.members() {
            if m.is_self {
                reports.push((m.name, self.durable_here()));
            } else if let Ok(RpcReply::Durable(r)) = self.rpc(&m.name, &Rpc::Durable, Duration::from_secs(5)).await {
                reports.push((m.name, r));
            }
        }
        let mut out = Vec::new();
        for (owner, report) in &reports {
            for (name, seq, acked) in &report.sent {
                let replicas: Vec<serde_json::Value> = reports
                    .iter()
                    .filter_map(|(node, r)| {
                        let (_, _, held, bytes) = r.held.iter().find(|(n, from, _, _)| n == name && from == owner)?;
                        // Current: it took the owner's last copy (the owner may have sent another
                        // since this node was asked).
                        Some(serde_json::json!({ "node": node, "copy": held, "bytes": bytes, "current": acked.contains(node) && held <= seq }))
                    })
                    .collect();
                out.push(serde_json::json!({ "name": name.to_string(), "owner": owner, "copy": seq, "replicas": replicas }));
            }
        }
        out
    }

    // ---- requests from other nodes ----

    /// Answers, on the reader of the connection it came on, a call or cast from another
    /// node to an instance running here: into its mailbox at once, and for a call the
    /// instance writes the reply to that connection itself. False for every other
    /// request, and for a name that is not running here (starting, moving, gone): those
    /// take [`Registry::handle_rpc`]'s path, in order with the connection's other events.
    ///
    /// A call and a cast from one node to one running instance both come this way, so
    /// they reach its mailbox in the order they were sent. The callee sets no timer of
    /// its own: the caller's deadline bounds the call.
    pub fn handle_rpc_fast(&self, peer: &Peer, id: u64, trace: Option<TraceContext>, body: &Bytes) -> bool {
        let (kind, key, msg, call, call_id) = match body.first().copied() {
            Some(RPC_CALL) => match postcard::from_bytes::<CallFields<'_>>(&body[1..]) {
                // A call id the ordered path would refuse is refused there, with its reason.
                Ok((_, _, _, _, Some(id))) if calls::check_id(id).is_err() => return false,
                Ok((kind, key, msg, _timeout_ms, call_id)) => (kind, key, msg, true, call_id),
                Err(_) => return false,
            },
            Some(RPC_CAST) => match postcard::from_bytes::<CastFields<'_>>(&body[1..]) {
                Ok((kind, key, msg)) => (kind, key, msg, false, None),
                Err(_) => return false,
            },
            _ => return false,
        };
        let name = WorkerName::new(kind, key);
        let table = self.0.table.lock().unwrap();
        let Some(mb) = table.handle_of(&name) else { return false };
        let envelope = if call {
            let reply = RemoteReply { peer: peer.clone(), id, name, sent: false };
            call_envelope(msg.to_vec(), call_id.map(str::to_string), trace.map(|parent| Traced { parent, remote: true }), ReplyTo::Remote(Box::new(reply)))
        } else {
            Envelope::Cast { msg: msg.to_vec() }
        };
        let sent = mb.tx.send(envelope);
        drop(table);
        match sent {
            Ok(()) => {
                if !call {
                    peer.send(Frame::Reply { id, body: wire::encode_reply(&RpcReply::Done) });
                }
                true
            }
            // The instance is gone: this request takes the ordered path, unanswered here.
            Err(crate::mailbox::Refused::Closed(envelope)) => {
                match envelope {
                    Envelope::Call { reply: ReplyTo::Remote(mut r), .. } => r.sent = true,
                    Envelope::CallWith(mut c) => {
                        if let ReplyTo::Remote(r) = &mut c.reply {
                            r.sent = true;
                        }
                    }
                    _ => {}
                }
                false
            }
            // Full: answered here, as the ordered path would find it.
            Err(full) => {
                let e = self.not_queued(&WorkerName::new(kind, key), &full);
                match full.into_inner() {
                    Envelope::Call { reply, .. } => reply.send(Err(e)),
                    Envelope::CallWith(c) => c.reply.send(Err(e)),
                    _ => {
                        peer.send(Frame::Reply { id, body: wire::encode_reply(&RpcReply::CallFailed(e)) });
                    }
                }
                true
            }
        }
    }

    /// Takes a copy `peer` sent as request `id` and answers it; true when it is held.
    fn replica_in(&self, peer: &Peer, id: u64, copy: Replicate) -> bool {
        let mut table = self.0.table.lock().unwrap();
        let held = table.replica_in(peer.name(), copy);
        // What the copy called for (a dead copy it settles goes where the name runs),
        // now rather than with the next event.
        let effects = table.take_effects();
        if effects.is_empty() {
            drop(table);
        } else {
            self.carry_out(table, effects, false);
        }
        let reply = match held {
            Ok(()) => RpcReply::Done,
            Err(replica::NotHeld::NeedFull) => RpcReply::NeedFull,
        };
        peer.send(Frame::Reply { id, body: wire::encode_reply(&reply) });
        held.is_ok()
    }

    /// Answers a registry request from another node.
    ///
    /// Called for each request in the order the connections delivered them. The
    /// one-way messages of the state machine take effect here, at once and in that
    /// order: a task each could run them out of order on the multi-threaded runtime, and
    /// a `Registered` overtaken by the `Handoff` its node sent next would stop the
    /// instance just handed over. Everything that waits runs in a task.
    pub fn handle_rpc(&self, peer: Peer, id: u64, trace: Option<TraceContext>, body: Bytes) {
        let rpc = match wire::decode(&body) {
            Ok(Rpc::Tell(msg)) => {
                self.apply(Event::Received { from: peer.name().to_string(), msg }, false);
                return;
            }
            // In the connection's order, with nothing to wait for: answered at once.
            Ok(Rpc::Replicate(copy)) => {
                self.replica_in(&peer, id, *copy);
                return;
            }
            // The same, then this node's caller has its reply: it is acknowledged.
            Ok(Rpc::ReplicateThenReply { copy, id: call, reply }) => {
                if self.replica_in(&peer, id, *copy) {
                    peer.deliver_reply(call, Bytes::from(reply));
                }
                return;
            }
            Ok(rpc) => rpc,
            Err(e) => {
                debug!(peer = %peer.name(), "bad registry request: {e}");
                let reply = RpcReply::CallFailed(CallError::Failed(format!("bad request: {e}")));
                peer.send(Frame::Reply { id, body: wire::encode_reply(&reply) });
                return;
            }
        };
        let registry = self.clone();
        tokio::spawn(async move {
            let reply = match rpc {
                Rpc::Start { name, args } => match registry.start_with(name, args, true).await {
                    Ok(node) => RpcReply::Started(node),
                    Err(e) => RpcReply::StartFailed(e),
                },
                Rpc::Call { name, msg, timeout_ms, call_id } => {
                    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
                    match registry.resolve(&name, Some(peer.name()), deadline).await {
                        // Not relayed (this node may be about to close): the caller is
                        // told where it went and calls there itself.
                        Ok(Target::Remote(node)) => RpcReply::Moved(node),
                        Ok(Target::Here(mailbox)) => {
                            match registry.call_mailbox(&name, mailbox, msg, call_id, trace.map(|parent| Traced { parent, remote: true }), deadline).await {
                                Ok(r) => RpcReply::Reply(r),
                                Err(e) => RpcReply::CallFailed(e),
                            }
                        }
                        Err(e) => RpcReply::CallFailed(e),
                    }
                }
                Rpc::Cast { name, msg } => match registry.resolve(&name, Some(peer.name()), Instant::now() + Duration::from_secs(5)).await {
                    Ok(Target::Here(mailbox)) => match registry.cast_mailbox(&name, &mailbox, msg) {
                        Ok(()) => RpcReply::Done,
                        Err(e) => RpcReply::CallFailed(e),
                    },
                    Ok(Target::Remote(_)) => RpcReply::CallFailed(CallError::NotFound),
                    Err(e) => RpcReply::CallFailed(e),
                },
                Rpc::List => RpcReply::List(registry.local_names()),
                Rpc::Durable => RpcReply::Durable(registry.durable_here()),
                Rpc::Tell(_) | Rpc::Replicate(_) | Rpc::ReplicateThenReply { .. } => return,
            };
            peer.send_answer(Frame::Reply { id, body: wire::encode_reply(&reply) }).await;
        });
    }
}

#[cfg(test)]
mod hurry_tests {
    use super::Hurry;

    #[tokio::test]
    async fn a_wait_ends_when_the_leaving_node_hurries_and_later_waits_end_at_once() {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let hurry = Hurry(rx);
        // Not hurried: the wait's own outcome.
        assert_eq!(hurry.race(async { 1 }, || 2).await, 1);
        let h = hurry.clone();
        let waiting = tokio::spawn(async move { h.race(std::future::pending::<i32>(), || 2).await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "a wait goes on until the node hurries");
        tx.send_replace(true);
        assert_eq!(waiting.await.unwrap(), 2);
        // Hurried: a new wait ends at once, but one already done keeps its outcome.
        assert_eq!(hurry.race(std::future::pending::<i32>(), || 3).await, 3);
        assert_eq!(hurry.race(async { 1 }, || 3).await, 1);
    }

    #[test]
    fn the_waits_are_cut_at_half_the_deadline_or_in_time_for_a_whole_message_and_the_handoff() {
        let s = std::time::Duration::from_secs;
        // The defaults: 25 s to hand over, messages of 5 s at most.
        assert_eq!(super::hurry_after(s(25), s(5)), s(25) / 2);
        // 8 s to hand over: a message computing for 5 s after the cut, and 1 s to hand
        // its state over, leave 2 s.
        assert_eq!(super::hurry_after(s(8), s(5)), s(2));
        // Messages longer than the deadline: a quarter of it, for the short waits.
        assert_eq!(super::hurry_after(s(3), s(5)), s(3) / 4);
    }

    #[tokio::test]
    async fn a_registry_gone_never_cuts_a_wait() {
        let (tx, rx) = tokio::sync::watch::channel(false);
        drop(tx);
        let cut = tokio::time::timeout(std::time::Duration::from_millis(50), Hurry(rx).race(std::future::pending::<i32>(), || 2)).await;
        assert!(cut.is_err(), "a closed channel is not a hurry");
    }
}
