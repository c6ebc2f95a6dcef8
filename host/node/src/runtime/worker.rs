//! Workers: components of the `wasmnode:worker/worker` world, run as actors.
//!
//! A [`WorkerKind`] is compiled once (through the compiled-code cache) and
//! type-checked into an `InstancePre`; every instance is instantiated from it, and its
//! `init` run, on the task that starts it. Then each instance is one task on the node's
//! multi-threaded runtime, beside the networking (a message read from a socket runs its
//! worker on the thread that read it), that owns its `Store` and drains its mailbox one
//! message at a time. A guest that computes for long yields its thread at every epoch
//! tick, so heartbeats keep time.
//!
//! Calls into the guest are async (wasmtime's async support), so a worker awaiting
//! `cluster.call` gives its thread to others instead of blocking it. Every message
//! runs under a deadline that counts the time it runs ([`OwnTime`]), its host calls'
//! work included, not the time it waits (in `cluster.call`, for an outbound answer, in
//! a sleep, for its turn after a yield), and the instance under a memory cap. A trap
//! ends that instance only: the message that trapped is answered `failed`, the callers
//! still queued get an error when the mailbox drops, and the registry forgets the name.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tracing::{info, warn};
use wasmtime::component::{ComponentExportIndex, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_config::{WasiConfig, WasiConfigVariables};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::egress::{Egress, LineLog, Reach};

use super::{describe_trap, first_line, LoadError};
use crate::config::WorkerConfig;
use crate::mailbox;
use crate::registry::calls::CallLog;
use crate::registry::durable::Replicator;
use crate::registry::table::Kinds;
use crate::registry::{BoxFuture, CallError, CallWith, Conflict, Envelope, Info, Mailbox, Merges, Registry, Reply, Restart, SpawnError, Spawner, WorkerName};
use crate::telemetry::{self, TraceContext};

/// The generated bindings; the one `bindgen!` of this world.
pub mod bindings {
    wasmtime::component::bindgen!({
        world: "worker",
        path: "../../wit/worker@0.1.0",
        // `send-after` may trap: an instance past its timers' cap is stopped and named.
        imports: { "wasmnode:worker/cluster.send-after": async | trappable, default: async },
        exports: { default: async },
    });
}

use bindings::wasmnode::worker::types as wit;
use bindings::{Worker, WorkerIndices, WorkerPre};

/// One `[worker.KIND]`: compiled, checked, ready to instantiate.
pub struct WorkerKind {
    pub name: String,
    pub config: WorkerConfig,
    pre: WorkerPre<WorkerState>,
    /// The world's exports, found and type-checked once.
    indices: WorkerIndices,
    /// The optional `wasmnode:worker/conflict` export's `resolve-conflict`, when the
    /// component has it.
    conflict: Option<ComponentExportIndex>,
    /// The `wasmnode:worker/snapshot` export's `snapshot`, for a durable kind (which
    /// must have it).
    snapshot: Option<ComponentExportIndex>,
    /// Its outbound HTTP grants, timeout and cap on requests in flight.
    reach: Reach,
    /// `[worker.KIND.config]`, for `wasi:config/store`.
    config_vars: Arc<WasiConfigVariables>,
}

/// Everything an instance's store holds: WASI for the guest's std, the memory limiter,
/// the `cluster` and `log` capabilities, and the clock of the current message; outbound
/// HTTP to its kind's granted hosts and its kind's configuration.
pub struct WorkerState {
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    limits: super::Limits,
    pub cluster: ClusterCtx,
    pub log: super::log::LogCtx,
    http: WasiHttpCtx,
    egress: Egress,
    config: Arc<WasiConfigVariables>,
}

impl WasiView for WorkerState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for WorkerState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        // The same table as WASI's: bodies are wasi:io streams.
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.egress }
    }
}

/// The `cluster` capability of one instance.
pub struct ClusterCtx {
    registry: Registry,
    kind: String,
    key: String,
    /// This instance's own mailbox, for timers.
    mailbox: mailbox::Sender<Envelope>,
    /// The guest's own time on the current message: what its deadline counts. Shared
    /// with [`timed`], which runs the guest's calls outside the store.
    pub time: Clock,
    /// The span of the message being handled, when it is traced: the calls the guest
    /// makes meanwhile are its children.
    trace: Option<TraceContext>,
    /// The timers this instance set that have not fired: dropped with the instance (its
    /// mailbox goes with it), which aborts them.
    timers: tokio::task::JoinSet<()>,
    /// Their payloads' bytes.
    timer_held: Arc<AtomicUsize>,
    /// The most bytes of payload its pending timers may hold: its memory limit.
    timer_bytes: usize,
    /// Ends its waits when this node, leaving, runs short of time to hand it over.
    pub(super) hurry: crate::registry::Hurry,
}

/// Timers one instance may have pending at once. Each is a task holding its payload, so
/// without a cap a guest that sets timers in a loop would grow the node's memory and
/// tasks, not its own, for as long as the timers' delays (up to 49 days).
pub const MAX_TIMERS: usize = 10_000;

/// One pending timer's payload, counted until it fires or is aborted.
struct Pending(Arc<AtomicUsize>, usize);

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Ordering::Relaxed);
    }
}

/// The guest's own time on a message: the time the future that runs it was being polled
/// since the message began, the host calls it made meanwhile included. A guest runs
/// only within a poll (wasmtime resumes its fiber there), and a host call that does
/// work for it — copies, random bytes, a header map — runs there too, so a guest cannot
/// hand its computing to the host to escape its deadline; a host call that waits — for
/// `cluster.call`'s answer, an outbound answer or body, a WASI sleep, its turn after a
/// yield — suspends the fiber and ends the poll, and the time until the next poll is
/// not counted. Kept by [`timed`]; no I/O: the caller gives the time.
#[derive(Debug, Default)]
pub struct OwnTime {
    /// Polls that have ended.
    ran: Duration,
    /// When the poll under way began, if one is.
    since: Option<Instant>,
}

impl OwnTime {
    /// A poll of the guest's call begins.
    pub fn resume(&mut self, now: Instant) {
        self.since.get_or_insert(now);
    }

    /// That poll ends: the guest finished, or waits.
    pub fn pause(&mut self, now: Instant) {
        if let Some(t) = self.since.take() {
            self.ran += now.saturating_duration_since(t);
        }
    }

    /// The guest's own time since the message began.
    pub fn own(&self, now: Instant) -> Duration {
        self.ran + self.since.map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
    }
}

/// An instance's [`OwnTime`], shared by its store (whose epoch callback reads it) and
/// [`timed`] (which keeps it, outside the store that the guest's call borrows).
pub type Clock = Arc<Mutex<OwnTime>>;

fn lock(clock: &Mutex<OwnTime>) -> std::sync::MutexGuard<'_, OwnTime> {
    clock.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `call`, a call into the guest, keeping its time on `clock`: each poll of it is
/// the guest's own time; the time between polls, while it waits, is not.
async fn timed<F: Future>(clock: &Mutex<OwnTime>, call: F) -> F::Output {
    let mut call = std::pin::pin!(call);
    std::future::poll_fn(|cx| {
        lock(clock).resume(Instant::now());
        let r = call.as_mut().poll(cx);
        lock(clock).pause(Instant::now());
        r
    })
    .await
}

fn to_wit_error(e: CallError) -> wit::CallError {
    match e {
        CallError::NotFound => wit::CallError::NotFound,
        CallError::Timeout => wit::CallError::Timeout,
        CallError::Failed(s) => wit::CallError::Failed(s),
        CallError::Unavailable(s) => wit::CallError::Unavailable(s),
    }
}

impl ClusterCtx {
    /// `wait`, one of the guest's waits on the cluster; or, when this node, leaving, cuts
    /// its instances' waits short first ([`crate::registry::Hurry`]), why it ended (and
    /// logged), for the guest to be told: it then finishes its message, and its state is
    /// handed over in time. (A start given up goes on, on a task of its own.)
    async fn unless_leaving<T>(&self, what: &str, target: &wit::Name, wait: impl Future<Output = T>) -> Result<T, String> {
        self.hurry
            .race(async { Ok(wait.await) }, || {
                let (me, node) = (format!("{}/{}", self.kind, self.key), self.registry.node());
                let target = format!("{}/{}", target.kind, target.key);
                info!(worker = %me, target = %target, "{me}'s {what} {target} given up: {node} is leaving and {me} must hand its state over");
                Err(format!("{node} is leaving: {me}'s {what} {target} was given up so that {me} can hand its state over"))
            })
            .await
    }
}

impl bindings::wasmnode::worker::cluster::Host for ClusterCtx {
    async fn whoami(&mut self) -> wit::Name {
        wit::Name { kind: self.kind.clone(), key: self.key.clone() }
    }

    async fn node(&mut self) -> String {
        self.registry.node().to_string()
    }

    async fn members(&mut self) -> Vec<String> {
        self.registry.membership().members().into_iter().map(|m| m.name).collect()
    }

    async fn call(&mut self, target: wit::Name, msg: Vec<u8>, timeout_ms: u32) -> Result<Vec<u8>, wit::CallError> {
        let timeout = Duration::from_millis(timeout_ms as u64);
        let call = self.registry.call_traced(&target.kind, &target.key, msg, None, self.trace, timeout);
        self.unless_leaving("call to", &target, call).await.unwrap_or_else(|why| Err(CallError::Unavailable(why))).map_err(to_wit_error)
    }

    async fn call_once(&mut self, target: wit::Name, msg: Vec<u8>, timeout_ms: u32, id: String) -> Result<Vec<u8>, wit::CallError> {
        let timeout = Duration::from_millis(timeout_ms as u64);
        let call = self.registry.call_traced(&target.kind, &target.key, msg, Some(&id), self.trace, timeout);
        self.unless_leaving("call to", &target, call).await.unwrap_or_else(|why| Err(CallError::Unavailable(why))).map_err(to_wit_error)
    }

    async fn cast(&mut self, target: wit::Name, msg: Vec<u8>) -> Result<(), wit::CallError> {
        let cast = self.registry.cast(&target.kind, &target.key, msg);
        self.unless_leaving("cast to", &target, cast).await.unwrap_or_else(|why| Err(CallError::Unavailable(why))).map_err(to_wit_error)
    }

    async fn start(&mut self, kind: String, key: String, args: Vec<u8>) -> Result<String, wit::StartError> {
        let registry = self.registry.clone();
        let target = wit::Name { kind: kind.clone(), key: key.clone() };
        let start = crate::registry::start_apart(async move { registry.start_worker(&kind, &key, args).await });
        let started = self.unless_leaving("start of", &target, start).await.map_err(wit::StartError::Failed)?;
        started.map_err(|e| match e {
            crate::registry::StartError::AlreadyStarted(n) => wit::StartError::AlreadyStarted(n),
            crate::registry::StartError::UnknownKind(k) => wit::StartError::UnknownKind(k),
            crate::registry::StartError::Failed(f) => wit::StartError::Failed(f),
        })
    }

    async fn send_after(&mut self, delay_ms: u32, payload: Vec<u8>) -> wasmtime::Result<()> {
        // (Fired timers' tasks are collected here, so what is left is pending.)
        while self.timers.try_join_next().is_some() {}
        let (count, bytes) = (self.timers.len(), self.timer_held.load(Ordering::Relaxed));
        if count >= MAX_TIMERS || bytes.saturating_add(payload.len()) > self.timer_bytes {
            wasmtime::bail!(
                "set a timer past its cap: {count} pending timers holding {bytes} bytes of payload, of {MAX_TIMERS} timers and {} MiB (its memory limit) at most",
                self.timer_bytes >> 20
            );
        }
        self.timer_held.fetch_add(payload.len(), Ordering::Relaxed);
        let pending = Pending(self.timer_held.clone(), payload.len());
        let mailbox = self.mailbox.clone();
        self.timers.spawn(async move {
            let _pending = pending;
            tokio::time::sleep(Duration::from_millis(delay_ms as u64)).await;
            let _ = mailbox.send(Envelope::Info(Box::new(Info::Timer(payload))));
        });
        Ok(())
    }
}

impl bindings::wasmnode::worker::types::Host for WorkerState {}

/// Every worker kind of the topology, and the runtime instances run on.
pub struct WorkerRuntime {
    kinds: HashMap<String, Arc<WorkerKind>>,
    runtime: tokio::runtime::Handle,
    /// `[node] rebalance = "move"`: instances move to a joining node that owns them.
    pub rebalance: bool,
}

impl WorkerRuntime {
    /// Compiles and checks every kind; an error names the kind and what is wrong.
    pub fn load(engine: &Engine, workers: &[WorkerConfig], runtime: tokio::runtime::Handle) -> Result<WorkerRuntime, (String, LoadError)> {
        let mut kinds = HashMap::new();
        for w in workers {
            let kind = WorkerKind::load(engine, w).map_err(|e| (w.kind.clone(), e))?;
            kinds.insert(w.kind.clone(), Arc::new(kind));
        }
        Ok(WorkerRuntime { kinds, runtime, rebalance: true })
    }

    /// The kinds and their boot keys.
    pub fn boot_keys(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self.kinds.values().flat_map(|k| k.config.boot.iter().map(|key| (k.name.clone(), key.clone()))).collect();
        out.sort();
        out
    }

    /// For the benchmark: the parts of a spawn that are wasmtime's alone, timed apart
    /// (a new store with its WASI context; the component instantiated in it; `init`),
    /// for an instance of `kind` that is then dropped unregistered.
    pub async fn time_spawn_parts(&self, registry: &Registry, kind: &str) -> Result<[Duration; 3], String> {
        let k = self.kinds.get(kind).ok_or_else(|| format!("unknown worker kind {kind}"))?;
        let (tx, _rx) = mailbox::channel(mailbox::Bounds::NONE);
        let t = Instant::now();
        let mut store = new_store(k, registry.clone(), "bench".into(), tx, "bench");
        let store_made = t.elapsed();
        let t = Instant::now();
        let (worker, ..) = instantiate(k, &mut store).await.map_err(|e| e.to_string())?;
        let instantiated = t.elapsed();
        let t = Instant::now();
        let clock = begin(&mut store);
        timed(&clock, worker.wasmnode_worker_handler().call_init(&mut store, &[], None)).await.map_err(|e| e.to_string())??;
        Ok([store_made, instantiated, t.elapsed()])
    }
}

/// A store for an instance of `kind`: WASI for the guest's std, its memory cap, and the
/// epoch callback that makes it yield, and stop at its deadline.
fn new_store(kind: &WorkerKind, registry: Registry, key: String, own: mailbox::Sender<Envelope>, name: &str) -> Store<WorkerState> {
    let budget = kind.config.call_timeout;
    let worker: Arc<str> = name.into();
    let gate = super::log::Gate::worker(worker.clone());
    let hurry = registry.hurry();
    let state = WorkerState {
        wasi: WasiCtx::builder().stdout(LineLog::new(false, gate.clone())).stderr(LineLog::new(true, gate.clone())).build(),
        http: WasiHttpCtx::new(),
        egress: Egress { worker, reach: kind.reach.clone(), trace: None, hurry: hurry.clone() },
        config: kind.config_vars.clone(),
        table: super::handle_table(),
        limits: super::Limits::new(kind.config.memory_limit),
        cluster: ClusterCtx {
            registry,
            kind: kind.name.clone(),
            key,
            mailbox: own,
            time: Clock::default(),
            trace: None,
            timers: tokio::task::JoinSet::new(),
            timer_held: Arc::default(),
            timer_bytes: kind.config.memory_limit,
            hurry,
        },
        log: super::log::LogCtx { label: format!("worker {name}").into(), gate },
    };
    let mut store = Store::new(kind.pre.engine(), state);
    store.limiter(|s| &mut s.limits);
    super::limit_copies(&mut store, kind.config.memory_limit);
    // At every epoch tick while the guest runs: past its budget (its own time on this
    // message) it stops; before that it yields, so that a guest that computes for long
    // shares its thread with the networking (heartbeats) and other instances, as the
    // BEAM's reductions make a process share its scheduler. (The yield ends the poll
    // that runs the guest, so its wait for its turn is not its own time.)
    store.epoch_deadline_callback(move |ctx| {
        if lock(&ctx.data().cluster.time).own(Instant::now()) >= budget {
            return Ok(UpdateDeadline::Interrupt);
        }
        Ok(UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now())))
    });
    store
}

impl WorkerKind {
    /// Compiles the component and checks that it is a worker.
    pub fn load(engine: &Engine, w: &WorkerConfig) -> Result<WorkerKind, LoadError> {
        let path = w.component.display().to_string();
        let component = super::cache::load(engine, &w.component).map_err(|e| LoadError::NotAComponent { path: path.clone(), why: first_line(&e) })?;
        let mut linker: Linker<WorkerState> = Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(LoadError::host)?;
        super::sleep::shadow_monotonic_clock(&mut linker).map_err(LoadError::host)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(LoadError::host)?;
        wasmtime_wasi_config::add_to_linker(&mut linker, |s: &mut WorkerState| WasiConfig::new(&s.config)).map_err(LoadError::host)?;
        bindings::wasmnode::worker::types::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(LoadError::host)?;
        bindings::wasmnode::worker::cluster::add_to_linker::<_, HasSelf<ClusterCtx>>(&mut linker, |s| &mut s.cluster).map_err(LoadError::host)?;
        super::log::add_worker_log_to_linker(&mut linker).map_err(LoadError::host)?;
        let pre = linker.instantiate_pre(&component).map_err(|e| LoadError::Imports { path: path.clone(), why: first_line(&e) })?;
        let not_a_worker =
            |e: wasmtime::Error| LoadError::WrongWorld { path: path.clone(), world: "worker", wit: "wasmnode:worker/worker@0.1.0", why: first_line(&e) };
        let indices = WorkerIndices::new(&pre).map_err(not_a_worker)?;
        let pre = WorkerPre::new(pre).map_err(not_a_worker)?;
        let conflict =
            component.get_export_index(None, "wasmnode:worker/conflict@0.1.0").and_then(|iface| component.get_export_index(Some(&iface), "resolve-conflict"));
        let snapshot = match component.get_export_index(None, "wasmnode:worker/snapshot@0.1.0").and_then(|i| component.get_export_index(Some(&i), "snapshot")) {
            Some(s) => Some(s),
            None if w.replicas > 0 => {
                return Err(LoadError::WrongWorld {
                    path,
                    world: "durable-worker",
                    wit: "wasmnode:worker/durable-worker@0.1.0",
                    why: format!(
                        "`durability = \"replicated\"` needs the snapshot export (wasmnode:worker/snapshot), which {} lacks (it exports {})",
                        w.kind,
                        component.component_type().exports(engine).map(|(n, _)| n.to_string()).collect::<Vec<_>>().join(", ")
                    ),
                })
            }
            None => None,
        };
        let reach = Reach {
            pool: super::egress::Pool::new(w.outbound_timeout),
            grants: Arc::new(w.grants.clone()),
            in_flight: Arc::new(Semaphore::new(w.outbound_max_in_flight)),
            timeout: w.outbound_timeout,
            denied: Arc::default(),
        };
        let config_vars = Arc::new(w.config.iter().cloned().collect::<WasiConfigVariables>());
        Ok(WorkerKind { name: w.kind.clone(), config: w.clone(), pre, indices, conflict, snapshot, reach, config_vars })
    }
}

impl Kinds for WorkerRuntime {
    fn has_kind(&self, kind: &str) -> bool {
        self.kinds.contains_key(kind)
    }

    fn declared(&self) -> Vec<String> {
        self.kinds.keys().cloned().collect()
    }

    fn activate_on_call(&self, kind: &str) -> bool {
        self.kinds.get(kind).is_some_and(|k| k.config.activate_on_call)
    }

    fn restart(&self, kind: &str) -> Restart {
        self.kinds.get(kind).map(|k| k.config.restart).unwrap_or_default()
    }

    fn rebalance_on_join(&self) -> bool {
        self.rebalance
    }

    fn replicas(&self, kind: &str) -> usize {
        self.kinds.get(kind).map_or(0, |k| k.config.replicas)
    }

    fn max_instances(&self, kind: &str) -> Option<usize> {
        self.kinds.get(kind).and_then(|k| k.config.max_instances)
    }
}

impl Spawner for WorkerRuntime {
    fn spawn(
        &self,
        registry: Registry,
        name: WorkerName,
        args: Vec<u8>,
        handoff: Option<Vec<u8>>,
        merges: Merges,
        id: u64,
    ) -> BoxFuture<Result<Mailbox, SpawnError>> {
        let Some(k) = self.kinds.get(&name.kind).cloned() else {
            return Box::pin(async move { Err(SpawnError::UnknownKind(name.kind)) });
        };
        let runtime = self.runtime.clone();
        // Instantiation and `init` run on the task that starts the instance; only the
        // mailbox loop gets a task of its own. Handing the whole start to a new task cost
        // two wake-ups across threads per spawn (the task's start, then `init`'s answer).
        Box::pin(async move {
            let (tx, rx) = mailbox::channel(mailbox::Bounds { messages: k.config.mailbox_limit, bytes: k.config.memory_limit });
            let instance = Instance::start(k, registry, name, &args, handoff.as_deref(), merges, id, tx.clone()).await?;
            runtime.spawn(instance.serve(rx));
            Ok(Mailbox { tx, id })
        })
    }
}

/// A started instance: its store and exports, and what its messages need.
struct Instance {
    name: WorkerName,
    id: u64,
    store: Store<WorkerState>,
    worker: Worker,
    resolve_conflict: Option<ResolveConflict>,
    /// For a durable kind: its state copied to its replicas after every message.
    durable: Option<Durable>,
    /// The outcomes of its last calls with ids; they move with its state.
    calls: CallLog,
    /// This instance's id in the call log, drawn at random: which instance applied a
    /// call, when two instances' logs meet.
    applier: u64,
    budget: Duration,
    memory_limit: usize,
}

/// A durable instance's `snapshot` export and the record of its copies.
struct Durable {
    replicas: usize,
    snapshot: Snapshot,
    replicator: Replicator,
}

/// The `wasmnode:worker/snapshot` export.
type Snapshot = wasmtime::component::TypedFunc<(), (Vec<u8>,)>;

/// The component instantiated in `store`, and its exports: the world's, found and
/// checked once at load (here only fetched), and the optional `resolve-conflict`.
async fn instantiate(kind: &WorkerKind, store: &mut Store<WorkerState>) -> wasmtime::Result<(Worker, Option<ResolveConflict>, Option<Snapshot>)> {
    let instance = kind.pre.instance_pre().instantiate_async(&mut *store).await?;
    let worker = kind.indices.load(&mut *store, &instance)?;
    let resolve_conflict = kind.conflict.as_ref().and_then(|i| instance.get_typed_func(&mut *store, i).ok());
    let snapshot = match &kind.snapshot {
        Some(i) if kind.config.replicas > 0 => Some(instance.get_typed_func(&mut *store, i)?),
        _ => None,
    };
    Ok((worker, resolve_conflict, snapshot))
}

/// What to do when instantiation could not reserve memory. Without `[node]
/// instance_pool` every instance reserves its own 4 GiB of address space and memory
/// mappings, so a process holds about 32,000 of them (fewer under a low
/// vm.max_map_count); a pool reserves everything once, at start.
fn address_space_hint(e: &wasmtime::Error) -> &'static str {
    if format!("{e:#}").contains("mmap failed") {
        " (without [node] instance_pool each instance reserves 4 GiB of address space: about 32,000 fit in a process; \
         set instance_pool for more)"
    } else {
        ""
    }
}

/// The `wasmnode:worker/conflict` export.
type ResolveConflict = wasmtime::component::TypedFunc<(Vec<u8>,), ()>;

/// Starts the clock of a message: the deadline counts the guest's time from here, in
/// the calls run through [`timed`] with the clock returned.
fn begin(store: &mut Store<WorkerState>) -> Clock {
    store.set_epoch_deadline(1);
    let clock = store.data().cluster.time.clone();
    *lock(&clock) = OwnTime::default();
    clock
}

impl Instance {
    /// A new store, the component instantiated in it, `init` run and `merges` merged:
    /// ready for messages.
    #[allow(clippy::too_many_arguments)]
    async fn start(
        kind: Arc<WorkerKind>,
        registry: Registry,
        name: WorkerName,
        args: &[u8],
        handoff: Option<&[u8]>,
        merges: Merges,
        id: u64,
        own: mailbox::Sender<Envelope>,
    ) -> Result<Instance, SpawnError> {
        let budget = kind.config.call_timeout;
        let memory_limit = kind.config.memory_limit;
        let began = Instant::now();
        let mut store = new_store(&kind, registry, name.key.clone(), own, &name.to_string());
        let trap = |e: &wasmtime::Error| describe_trap(e, budget, memory_limit);

        let clock = begin(&mut store);
        let (worker, resolve_conflict, snapshot) = timed(&clock, instantiate(&kind, &mut store))
            .await
            .map_err(|e| SpawnError::Instantiate { name: name.clone(), why: format!("{}{}", trap(&e), address_space_hint(&e)) })?;
        // The state that moved carries the call log behind the worker's own state.
        let (handoff, calls) = CallLog::split(handoff);
        let clock = begin(&mut store);
        match timed(&clock, worker.wasmnode_worker_handler().call_init(&mut store, args, handoff)).await {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => return Err(SpawnError::Refused { name, reason }),
            Err(e) => return Err(SpawnError::Trapped { why: trap(&e), name }),
        }
        if let Some(state) = handoff.filter(|s| s.len() >= 1 << 20) {
            let (mib, ms) = (state.len() as f64 / (1 << 20) as f64, began.elapsed().as_secs_f64() * 1e3);
            info!(worker = %name, "restored {name} from {mib:.1} MiB of state in {ms:.1} ms");
        }
        let durable = snapshot.map(|snapshot| Durable { replicas: kind.config.replicas, snapshot, replicator: Replicator::default() });
        let applier = rand::random::<u64>().max(1);
        let mut instance = Instance { name, id, store, worker, resolve_conflict, durable, calls, applier, budget, memory_limit };
        // Other instances' states merge in before the first copy: a replica never holds
        // a state of this instance without them.
        for (from, state) in merges {
            if let Err(End::Trapped(why)) = instance.handle(Envelope::Conflict(Box::new(Conflict { from, state, done: None }))).await {
                return Err(SpawnError::Trapped { why, name: instance.name });
            }
        }
        // A durable instance's replicas hold its first state before it takes messages.
        if let Err(End::Trapped(why)) = instance.replicate(None).await {
            return Err(SpawnError::Trapped { why, name: instance.name });
        }
        Ok(instance)
    }

    /// For a durable kind: asks the instance for its state and copies it to its
    /// replicas, waiting until they hold it, with `reply`, the reply that state answers
    /// (see [`Registry::replicate`]); returns the reply when it is still to be sent. A
    /// trap in `snapshot` ends the instance, and the reply's caller is told.
    async fn replicate(&mut self, reply: Option<Reply>) -> Result<Option<Reply>, End> {
        let Some(d) = &mut self.durable else { return Ok(reply) };
        let clock = begin(&mut self.store);
        let state = match timed(&clock, Box::pin(d.snapshot.call_async(&mut self.store, ()))).await {
            Ok((state,)) => state,
            Err(e) => {
                if let Some((to, _)) = reply {
                    to.send(Err(CallError::Failed(format!("{} trapped while its state was copied", self.name))));
                }
                return Err(End::Trapped(format!("in snapshot: {}", describe_trap(&e, self.budget, self.memory_limit))));
            }
        };
        let state = self.calls.wrap(Some(state)).unwrap_or_default();
        let registry = self.store.data().cluster.registry.clone();
        Ok(registry.replicate(&self.name, d.replicas, &mut d.replicator, state, reply).await)
    }

    /// Handles the mailbox's messages one at a time until a stop, a trap, or every
    /// sender gone; then frees the instance's memory (its pool slot) and only then lets
    /// the registry forget it and the stop's caller have the state, so that whoever
    /// starts an instance next, knowing this one gone, finds its slot free.
    async fn serve(mut self, mut rx: mailbox::Receiver<Envelope>) {
        let mut stopped = None;
        let registry = self.store.data().cluster.registry.clone();
        loop {
            // A durable instance on a node that woke from a pause takes nothing until its
            // peers have said where their names run (`Registry::settled`): its name may
            // run elsewhere now, and a stop that follows from that comes first.
            if self.durable.is_some() {
                registry.settled().await;
            }
            let Some(mut envelope) = rx.recv().await else { break };
            // A merge's sender hears once the merged state is copied (below).
            let merged = match &mut envelope {
                Envelope::Conflict(c) => c.done.take(),
                _ => None,
            };
            let handled = match self.handle(envelope).await {
                // A durable instance's replicas hold the state this message made before
                // a call's reply goes out: an acknowledged call outlives this node.
                Ok(reply) if self.durable.is_some() => self.replicate(reply).await,
                other => other,
            };
            match handled {
                Ok(reply) => {
                    if let Some((to, r)) = reply {
                        to.deliver(r).await;
                    }
                    if let Some(done) = merged {
                        let _ = done.send(());
                    }
                }
                Err(End::Trapped(why)) => {
                    warn!(worker = %self.name, reason = %why, "worker {} trapped: {why}; instance stopped, its waiting callers get an error", self.name);
                    break;
                }
                Err(End::Stopped { reply, state, moves }) => {
                    stopped = Some((reply, state, moves));
                    break;
                }
            }
        }
        // What is still queued follows the name when it moves on; else the callers hear
        // that it stopped (the mailbox closes as it drops).
        let queued = match &stopped {
            Some((_, _, true)) => rx.close(),
            _ => Default::default(),
        };
        let Instance { name, id, store, .. } = self;
        drop(store);
        registry.unregister(&name, id);
        if let Some((reply, state, _)) = stopped {
            let _ = reply.send(state);
        }
        registry.forward_queued(name, queued);
    }

    /// One message; an `End` when the instance ends with it.
    ///
    /// Every guest call's future is boxed: it exists only while the call runs, so the
    /// task an idle instance keeps stays small.
    async fn handle(&mut self, envelope: Envelope) -> Result<Option<Reply>, End> {
        let Instance { name, store, worker, resolve_conflict, calls, applier, budget, memory_limit, .. } = self;
        let trap = |e: &wasmtime::Error| End::Trapped(describe_trap(e, *budget, *memory_limit));
        let handler = worker.wasmnode_worker_handler();
        let clock = begin(store);
        // A call with an id is a call whose outcome the call log keeps (and answers its
        // retries from).
        let (call_id, trace, envelope) = match envelope {
            Envelope::CallWith(call) => {
                let CallWith { id, msg, reply, trace } = *call;
                if let Some(first) = id.as_deref().and_then(|id| calls.get(id)) {
                    let id = id.as_deref().unwrap_or_default();
                    info!(worker = %name, call_id = %id, "call {id} to {name} was applied before: answered from the call log");
                    return Ok(Some((reply, first.clone().map_err(CallError::Failed))));
                }
                (id, trace, Envelope::Call { msg, reply })
            }
            other => (None, None, other),
        };
        // A traced call is a span of its own (the server side when it came from another
        // node); the calls the guest makes while handling it are its children.
        let mut span = trace.and_then(|t| {
            let kind = if t.remote { telemetry::Kind::Server } else { telemetry::Kind::Internal };
            telemetry::span(format!("handle_call {}", name.kind), kind, Some(t.parent), Some(&name.to_string()), None)
        });
        let context = span.as_ref().map(telemetry::Span::context);
        store.data_mut().cluster.trace = context;
        store.data_mut().egress.trace = context;
        match envelope {
            Envelope::Call { msg, reply } => match timed(&clock, Box::pin(handler.call_handle_call(&mut *store, &msg))).await {
                // Sent by the caller of `handle`, once a durable state is copied.
                Ok(r) => {
                    if let (Some(span), Err(why)) = (span.as_mut(), &r) {
                        span.fail(why.clone());
                    }
                    if let Some(id) = call_id {
                        calls.record(id, r.clone(), *applier);
                    }
                    Ok(Some((reply, r.map_err(CallError::Failed))))
                }
                Err(e) => {
                    let why = describe_trap(&e, *budget, *memory_limit);
                    if let Some(span) = span.as_mut() {
                        span.fail(format!("trapped: {why}"));
                    }
                    reply.send(Err(CallError::Failed(format!("{name} trapped: {why}"))));
                    Err(End::Trapped(why))
                }
            },
            // Turned into a call above.
            Envelope::CallWith(_) => unreachable!("a call with an id or a trace is handled as a call"),
            Envelope::Cast { msg } => timed(&clock, Box::pin(handler.call_handle_cast(&mut *store, &msg))).await.map(|()| None).map_err(|e| trap(&e)),
            Envelope::Info(i) => timed(&clock, Box::pin(handler.call_handle_info(&mut *store, &to_wit_info(*i)))).await.map(|()| None).map_err(|e| trap(&e)),
            Envelope::Conflict(conflict) => {
                // The other instance's call log joins this one's: neither's calls apply twice.
                let Conflict { from, state, .. } = *conflict;
                let (state, log) = CallLog::split(Some(&state));
                for id in calls.merge(log) {
                    crate::metrics::global().applied_twice();
                    // Each side of a partition (or of a node declared down that still ran)
                    // applied this call: a retry crossed from one to the other.
                    warn!(
                        worker = %name, peer = %from, call_id = %id,
                        "call {id} to {name} was applied by both instances, once on each side: the merged state may count it twice"
                    );
                }
                match (&*resolve_conflict, state) {
                    // Only a call log came (the other instance's terminate returned no state).
                    (_, None) => Ok(None),
                    (Some(f), Some(state)) => {
                        let r = timed(&clock, Box::pin(f.call_async(&mut *store, (state.to_vec(),)))).await.map_err(|e| trap(&e));
                        if r.is_ok() {
                            info!(worker = %name, peer = %from, "merged the state of {name} from {from} (resolve-conflict)");
                        }
                        r.map(|()| None)
                    }
                    (None, Some(_)) => {
                        warn!(worker = %name, peer = %from, "dropped the state of {name} from {from}: the worker exports no resolve-conflict");
                        Ok(None)
                    }
                }
            }
            Envelope::Stop(stop) => {
                let crate::registry::Stop { reason, reply, moves } = *stop;
                let state = match timed(&clock, Box::pin(handler.call_terminate(&mut *store, &reason))).await {
                    Ok(s) => s,
                    Err(e) => {
                        warn!(worker = %name, "worker {name} trapped in terminate: {}", describe_trap(&e, *budget, *memory_limit));
                        None
                    }
                };
                info!(worker = %name, reason = %reason, "stopped {name}: {reason}");
                Err(End::Stopped { reply, state: calls.wrap(state), moves })
            }
        }
    }
}

/// How an instance ends: a trap, or a stop whose caller is owed the state `terminate`
/// returned (answered once the instance's memory is freed).
enum End {
    Trapped(String),
    Stopped { reply: tokio::sync::oneshot::Sender<Option<Vec<u8>>>, state: Option<Vec<u8>>, moves: bool },
}

fn to_wit_info(i: Info) -> wit::Info {
    match i {
        Info::NodeUp(n) => wit::Info::NodeUp(n),
        Info::NodeDown { node, reason } => wit::Info::NodeDown(wit::NodeDown { node, reason }),
        Info::Timer(p) => wit::Info::Timer(p),
    }
}

#[cfg(test)]
mod tests {
    use super::OwnTime;
    use std::time::{Duration, Instant};

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn own_time_counts_polls_and_not_the_waits_between_them() {
        let t0 = Instant::now();
        let mut time = OwnTime::default();
        assert_eq!(time.own(t0), Duration::ZERO, "nothing before the first poll");
        // 10 ms running (the guest, and host calls that work for it), 100 ms waiting
        // (a host call that suspends it ends the poll), 5 ms running.
        time.resume(t0);
        assert_eq!(time.own(t0 + 4 * MS), 4 * MS, "the poll under way counts");
        time.pause(t0 + 10 * MS);
        assert_eq!(time.own(t0 + 60 * MS), 10 * MS, "a wait is not the guest's own time");
        time.resume(t0 + 110 * MS);
        time.pause(t0 + 115 * MS);
        assert_eq!(time.own(t0 + 200 * MS), 15 * MS);
        // A new message starts from nothing.
        assert_eq!(OwnTime::default().own(t0 + 300 * MS), Duration::ZERO);
    }

    #[test]
    fn own_time_counts_a_guest_whose_time_goes_to_host_calls() {
        // A guest that spends nearly all of a second in quick host calls that work for
        // it, never waiting, runs within one poll: charged the whole second.
        let t0 = Instant::now();
        let mut time = OwnTime::default();
        time.resume(t0);
        assert_eq!(time.own(t0 + 1000 * MS), 1000 * MS);
    }

    #[test]
    fn a_pause_without_a_resume_costs_nothing_and_a_second_resume_keeps_the_first() {
        let t0 = Instant::now();
        let mut time = OwnTime::default();
        time.pause(t0 + MS);
        assert_eq!(time.own(t0 + 2 * MS), Duration::ZERO);
        time.resume(t0 + 2 * MS);
        time.resume(t0 + 3 * MS);
        time.pause(t0 + 4 * MS);
        assert_eq!(time.own(t0 + 5 * MS), 2 * MS);
    }

    #[tokio::test]
    async fn timed_counts_the_polls_of_a_call_and_not_its_waits() {
        // A call that computes 30 ms, waits 300 ms (a sleep: pending until woken), then
        // computes 30 ms more.
        let clock = super::Clock::default();
        let busy = |ms: u64| {
            let t = Instant::now();
            while t.elapsed() < Duration::from_millis(ms) {
                std::hint::spin_loop();
            }
        };
        let t = Instant::now();
        super::timed(&clock, async {
            busy(30);
            tokio::time::sleep(Duration::from_millis(300)).await;
            busy(30);
        })
        .await;
        let (own, wall) = (super::lock(&clock).own(Instant::now()), t.elapsed());
        assert!(wall >= 360 * MS, "{wall:?}");
        assert!(own >= 60 * MS && own < 200 * MS, "own {own:?} of {wall:?}: the wait counted, or the work did not");
    }
}
