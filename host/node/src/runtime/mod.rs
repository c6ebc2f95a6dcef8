//! The WebAssembly runtime: one wasmtime [`Engine`] per node and one module per WIT
//! package or capability, each with its own linker wiring (wasmtime's `crates/wasi`
//! layout):
//! - [`discovery`]: the `wasmnode:discovery/strategy` world — loading, type-checking,
//!   instantiating and polling strategy components;
//! - [`worker`]: the `wasmnode:worker/worker` world — worker kinds and their instances;
//! - [`log`], [`dns`], [`kubernetes`]: the host capabilities, each with its own context
//!   and linker wiring (`add_to_linker`), so no one type implements every interface.
//!
//! Every plugin call runs under a deadline (epoch interruption: a ticker advances the
//! engine's epoch every [`EPOCH_TICK`]) and a memory cap ([`PluginState::limits`]).
//! A plugin that overruns either traps; the trap is reported with the plugin's path.
//! Compiled components are kept in an on-disk [`cache`], so a restart does not recompile.

pub mod cache;
pub mod discovery;
pub mod dns;
pub mod egress;
pub mod kubernetes;
pub mod log;
pub mod sleep;
pub mod worker;

use std::time::Duration;

use wasmtime::component::{ResourceTable, ResourceTableError};
use wasmtime::{Engine, ResourceLimiter};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Granularity of plugin deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The node's engine, for strategies and workers: epoch interruption on, and memory
/// allocated on demand, or from a pool when [`Pool`] is given.
pub fn engine() -> anyhow::Result<Engine> {
    engine_with(None)
}

pub use crate::config::Pool;

pub fn engine_with(pool: Option<Pool>) -> anyhow::Result<Engine> {
    let mut config = wasmtime::Config::new();
    config.epoch_interruption(true);
    if let Some(p) = pool {
        let mut pc = wasmtime::PoolingAllocationConfig::default();
        pc.total_component_instances(p.instances)
            .total_core_instances(p.instances.saturating_mul(8))
            .total_memories(p.instances.saturating_mul(2))
            .total_tables(p.instances.saturating_mul(4))
            // An async store keeps its fiber stack between calls: one per instance.
            .total_stacks(p.instances)
            .max_memory_size(p.max_memory)
            .max_core_instances_per_component(64)
            .max_memories_per_component(16)
            .max_tables_per_component(64)
            // A slot freed by a stopped instance keeps up to this much of its memory
            // resident (reset in place instead of returned to the kernel), so the next
            // instance of the same kind starts without faulting it in again.
            .linear_memory_keep_resident(64 << 10)
            .table_keep_resident(16 << 10)
            .async_stack_keep_resident(16 << 10)
            // Which pages to reset: with Linux's PAGEMAP_SCAN (6.7+), the pages the
            // instance wrote, wherever they are. Without it wasmtime resets the slot's
            // first 64 KiB, which a Rust guest never touches (its stack ends at 1 MiB),
            // and returns the rest: every spawn then faulted its stack and data pages
            // in again (spawn after a stop 9.8 → 4.4 µs, docs/benchmarks.md). Where
            // the scan is missing (older kernels), the old reset is used.
            .pagemap_scan(wasmtime::Enabled::Auto);
        config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pc));
        // A slot is as large as the memory reservation: keep it to the memory cap (with
        // explicit bounds checks) so that the slots fit the address space.
        config.memory_reservation(p.max_memory as u64);
        config.memory_guard_size(64 << 10);
        config.memory_reservation_for_growth(0);
    }
    Engine::new(&config).map_err(|e| match pool {
        Some(p) => {
            let limit = std::fs::read_to_string("/proc/sys/vm/max_map_count").unwrap_or_default();
            anyhow::anyhow!(
                "{e:#}: a pool of {} instances needs about {} memory mappings, and vm.max_map_count is {} \
                 (raise it, e.g. sysctl -w vm.max_map_count=1048576, or lower instance_pool)",
                p.instances,
                p.instances as u64 * 2 + 10_000,
                limit.trim()
            )
        }
        None => anyhow::anyhow!("{e:#}"),
    })
}

/// Advances `engine`'s epoch every [`EPOCH_TICK`], for as long as the process runs, from
/// a thread of its own: guests share the node's runtime threads with everything else,
/// and the ticks that make them yield (or stop them at their deadline) must come even
/// when every one of those threads is running a guest.
pub fn spawn_epoch_ticker(engine: Engine) {
    std::thread::Builder::new()
        .name("wasmnode-epoch".into())
        .stack_size(64 << 10)
        .spawn(move || loop {
            std::thread::sleep(EPOCH_TICK);
            engine.increment_epoch();
        })
        .expect("start the epoch ticker thread");
}

/// Table elements one instance may hold, over all its tables (16 MiB of references).
pub const MAX_TABLE_ELEMENTS: usize = 1 << 20;
/// Linear memories and tables one instance may declare (wasmtime's default is 10,000
/// each, every memory reserving its own address space).
const MAX_MEMORIES: usize = 64;
const MAX_TABLES: usize = 1024;

/// What one instance may hold: its memory limit over **all** its linear memories together
/// (wasmtime's `StoreLimits` caps each memory alone, so a component that declares many
/// could take the limit many times over), its tables' elements together, and how many
/// memories and tables it declares. Growing past a limit traps — the instance is stopped
/// and named (`exceeded its memory limit of N MiB`) — rather than failing the guest's
/// `memory.grow` quietly.
///
/// What is held is counted from the growths allowed (a memory's creation is its first).
/// One allowed that the system then fails to make (out of address space) stays counted:
/// wasmtime's failure callback does not say which growth failed, and such an instance is
/// near its end anyway.
pub struct Limits {
    memory: usize,
    memory_held: usize,
    elements_held: usize,
}

impl Limits {
    pub fn new(memory: usize) -> Limits {
        Limits { memory, memory_held: 0, elements_held: 0 }
    }
}

impl ResourceLimiter for Limits {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|m| desired > m) {
            // Past the memory's own maximum: `memory.grow` fails (-1), as the spec says.
            return Ok(false);
        }
        let more = desired.saturating_sub(current);
        let total = self.memory_held.saturating_add(more);
        if total > self.memory {
            // (`describe_trap` knows a memory bomb by these words.)
            wasmtime::bail!(
                "forcing trap when growing memory to {desired} bytes: the instance's memories would hold {total} bytes, over its limit of {}",
                self.memory
            );
        }
        self.memory_held = total;
        Ok(true)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|m| desired > m) {
            return Ok(false);
        }
        let more = desired.saturating_sub(current);
        let total = self.elements_held.saturating_add(more);
        if total > MAX_TABLE_ELEMENTS {
            wasmtime::bail!("forcing trap when growing a table to {desired} elements: the instance's tables would hold {total}, over {MAX_TABLE_ELEMENTS}");
        }
        self.elements_held = total;
        Ok(true)
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }
}

/// Epoch ticks in `timeout` (at least one).
pub fn deadline_ticks(timeout: Duration) -> u64 {
    (timeout.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64
}

/// Host resources (`wasi:http` header maps, requests and bodies, streams, pollables) one
/// instance may hold at once. wasmtime allows a million per store, and each may hold
/// host memory the instance's `memory_limit_mb` does not count (a header map up to
/// 128 KiB, a request body's buffer 1 MiB): a guest that leaks its handles — a
/// forgotten drop is a common bug in C — would grow the node until it is killed with
/// every other worker on it. One more past the cap traps the instance, which names it.
pub const MAX_HANDLES: usize = 10_000;

/// What a guest may have the host copy out of its memory in one call, its results
/// included: what fits in its memory. wasmtime's own bound is 128 MiB a call, which a
/// guest with less memory reaches only with list entries that point at the same bytes,
/// each copied anew (a strategy's names, a header map's entries).
pub fn limit_copies<T>(store: &mut wasmtime::Store<T>, memory_limit: usize) {
    store.set_hostcall_fuel(memory_limit);
}

/// A resource table holding at most [`MAX_HANDLES`].
pub fn handle_table() -> ResourceTable {
    let mut table = ResourceTable::new();
    table.set_max_capacity(MAX_HANDLES);
    table
}

/// What every plugin store holds: WASI (Rust's std links a few interfaces even when
/// unused: no files, no network, stderr, and only the environment variables the
/// topology lists), the memory limiter, and one context per capability.
pub struct PluginState {
    wasi: WasiCtx,
    table: ResourceTable,
    /// Caps linear memory; growing past it traps, so a memory bomb is named in the log.
    pub limits: Limits,
    pub log: log::LogCtx,
    pub dns: dns::DnsCtx,
    pub kubernetes: kubernetes::KubeCtx,
}

/// The capabilities one topology's plugin gets; cloned into each new instance.
#[derive(Clone)]
pub struct Capabilities {
    /// `topology NAME (path)`, on every line the plugin writes or logs.
    pub label: std::sync::Arc<str>,
    pub dns: dns::DnsCtx,
    pub kubernetes: kubernetes::KubeCtx,
    /// Environment variables passed through to the plugin (the topology's `env`).
    pub env: Vec<(String, String)>,
    pub memory_limit: usize,
}

impl PluginState {
    pub fn new(caps: &Capabilities) -> PluginState {
        let mut wasi = WasiCtx::builder();
        // Through the node's log, line by line with the plugin's label: written to the
        // node's stderr as is, a plugin's bytes could forge log lines of their own.
        // One gate per instance, for its stderr and its `log` alike.
        let gate = log::Gate::plugin(caps.label.clone());
        wasi.stderr(egress::LineLog::plugin(gate.clone()));
        for (k, v) in &caps.env {
            wasi.env(k, v);
        }
        PluginState {
            wasi: wasi.build(),
            table: handle_table(),
            limits: Limits::new(caps.memory_limit),
            log: log::LogCtx { label: caps.label.clone(), gate },
            dns: caps.dns.clone(),
            kubernetes: caps.kubernetes.clone(),
        }
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Why a component could not be loaded, by who is at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// The file is missing, unreadable or not a component: the configured path or the
    /// plugin's build.
    #[error("{path} is not a WebAssembly component: {why}")]
    NotAComponent { path: String, why: String },
    /// The component imports what this host does not provide: built for another host.
    #[error("{path} imports something the host does not provide: {why}")]
    Imports { path: String, why: String },
    /// The component does not export the world its role needs (a worker configured as
    /// a strategy, or the other way round).
    #[error("{path} does not export the {world} world {wit}: {why}")]
    WrongWorld { path: String, world: &'static str, wit: &'static str, why: String },
    /// The host could not set up the imports it offers: the host's fault.
    #[error("the host could not link its imports: {0}")]
    Host(String),
}

impl LoadError {
    pub(crate) fn host(e: wasmtime::Error) -> LoadError {
        LoadError::Host(e.to_string())
    }
}

/// A plugin call's failure, as the host reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginError {
    /// The plugin answered with an error (a WIT `result` error): expected, not its fault alone.
    Refused(String),
    /// The plugin trapped, overran its deadline or its memory cap: it is instantiated again.
    Trapped(String),
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PluginError::Refused(e) => write!(f, "returned an error: {e}"),
            PluginError::Trapped(e) => write!(f, "trapped: {e}"),
        }
    }
}

/// Describes a trap for an operator: a deadline, a memory cap or the guest's own trap.
pub fn describe_trap(e: &wasmtime::Error, timeout: Duration, memory_limit: usize) -> String {
    if let Some(wasmtime::Trap::Interrupt) = e.downcast_ref::<wasmtime::Trap>() {
        return format!("exceeded its deadline of {} ms", timeout.as_millis());
    }
    let chain = format!("{e:#}");
    if chain.contains("forcing trap when growing memory") {
        return format!("exceeded its memory limit of {} MiB", memory_limit >> 20);
    }
    if chain.contains("fuel allocated for hostcalls has been exhausted") {
        return format!("had the host copy more than its memory limit of {} MiB in one call (list entries that point at the same bytes?)", memory_limit >> 20);
    }
    if matches!(e.root_cause().downcast_ref::<ResourceTableError>(), Some(ResourceTableError::Full)) {
        return format!("held more than {MAX_HANDLES} host resources at once (handles it never dropped?), its cap");
    }
    what_stopped(e)
}

/// The first line of an error: the failure and where, not the whole chain.
pub(crate) fn first_line(e: &wasmtime::Error) -> String {
    format!("{e:#}").lines().next().unwrap_or("trap").to_string()
}

/// What stopped a running guest, in one line: the trap (`wasm trap: wasm `unreachable`
/// instruction executed`) or the host's refusal (`set a timer past its cap: …`).
/// wasmtime wraps either in the guest's backtrace, whose own first line says only that
/// there is one (`error while executing at wasm backtrace:`): what happened is the
/// innermost cause.
fn what_stopped(e: &wasmtime::Error) -> String {
    let cause = e.root_cause().to_string();
    cause.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("trap").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A core module with two linear memories of one page each (no maximum) and two
    /// functions, `grow0` and `grow1`, that grow one of them by N pages (`memory.grow`'s
    /// answer: the old size, or -1). Assembled by hand: `wat` is not among the crate's
    /// wasmtime features.
    const TWO_MEMORIES: &[u8] = &[
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
        0x01, 0x06, 0x01, 0x60, 0x01, 0x7f, 0x01, 0x7f, // types: (i32) -> i32
        0x03, 0x03, 0x02, 0x00, 0x00, // functions: two of type 0
        0x05, 0x05, 0x02, 0x00, 0x01, 0x00, 0x01, // memories: two, min 1 page
        0x07, 0x11, 0x02, 0x05, b'g', b'r', b'o', b'w', b'0', 0x00, 0x00, 0x05, b'g', b'r', b'o', b'w', b'1', 0x00, 0x01, // exports
        0x0a, 0x0f, 0x02, // code: two bodies of 6 bytes
        0x06, 0x00, 0x20, 0x00, 0x40, 0x00, 0x0b, // local.get 0; memory.grow 0; end
        0x06, 0x00, 0x20, 0x00, 0x40, 0x01, 0x0b, // local.get 0; memory.grow 1; end
    ];

    #[test]
    fn the_memory_limit_holds_over_all_of_an_instances_memories_together() {
        let engine = Engine::default();
        let module = wasmtime::Module::new(&engine, TWO_MEMORIES).expect("the module assembles");
        let mut store = wasmtime::Store::new(&engine, Limits::new(4 << 20));
        store.limiter(|l| l);
        let instance = wasmtime::Instance::new(&mut store, &module, &[]).expect("two pages fit in 4 MiB");
        assert_eq!(store.data().memory_held, 2 << 16, "each memory's creation is counted");
        let grow0 = instance.get_typed_func::<i32, i32>(&mut store, "grow0").unwrap();
        let grow1 = instance.get_typed_func::<i32, i32>(&mut store, "grow1").unwrap();
        // 40 pages more in the first: 2.6 MiB in two memories, under 4 MiB.
        assert_eq!(grow0.call(&mut store, 40).unwrap(), 1);
        // 40 more in the second would make 5.1 MiB together, though each memory alone
        // (2.6 MiB) is under the limit, which is all wasmtime's StoreLimits looks at.
        let e = grow1.call(&mut store, 40).unwrap_err();
        assert!(describe_trap(&e, Duration::from_secs(1), 4 << 20).contains("exceeded its memory limit of 4 MiB"), "{e:#}");
        assert_eq!(store.data().memory_held, (41 + 1) << 16, "a refused growth is not counted");
    }

    #[test]
    fn a_growth_past_a_memorys_own_maximum_fails_as_the_spec_says_and_counts_nothing() {
        let mut limits = Limits::new(64 << 20);
        assert!(limits.memory_growing(0, 1 << 16, Some(2 << 16)).unwrap());
        assert!(!limits.memory_growing(1 << 16, 3 << 16, Some(2 << 16)).unwrap());
        assert_eq!(limits.memory_held, 1 << 16);
        assert!(limits.table_growing(0, MAX_TABLE_ELEMENTS, None).unwrap());
        assert!(limits.table_growing(0, 1, None).is_err(), "elements count over all tables");
        assert!(!limits.table_growing(0, 10, Some(5)).unwrap());
    }

    #[test]
    fn an_instance_holds_at_most_its_cap_of_host_resources_and_a_trap_past_it_says_so() {
        let mut table = handle_table();
        for _ in 0..MAX_HANDLES {
            table.push(0u8).expect("within the cap");
        }
        let full = table.push(0u8).unwrap_err();
        assert!(matches!(full, ResourceTableError::Full));
        // As wasi:http's host functions hand it on: with context, as the trap's cause.
        let e = wasmtime::Error::from(full).context("[new_fields] pushing fields");
        assert_eq!(describe_trap(&e, Duration::from_secs(1), 1 << 20), "held more than 10000 host resources at once (handles it never dropped?), its cap");
    }
}
