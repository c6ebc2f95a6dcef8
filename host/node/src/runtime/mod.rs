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
pub mod worker;

use std::time::Duration;

use wasmtime::component::ResourceTable;
use wasmtime::{Engine, StoreLimits, StoreLimitsBuilder};
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

/// Epoch ticks in `timeout` (at least one).
pub fn deadline_ticks(timeout: Duration) -> u64 {
    (timeout.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64
}

/// What every plugin store holds: WASI (Rust's std links a few interfaces even when
/// unused: no files, no network, stderr, and only the environment variables the
/// topology lists), the memory limiter, and one context per capability.
pub struct PluginState {
    wasi: WasiCtx,
    table: ResourceTable,
    /// Caps linear memory; growing past it traps, so a memory bomb is named in the log.
    pub limits: StoreLimits,
    pub log: log::LogCtx,
    pub dns: dns::DnsCtx,
    pub kubernetes: kubernetes::KubeCtx,
}

/// The capabilities one topology's plugin gets; cloned into each new instance.
#[derive(Clone)]
pub struct Capabilities {
    pub log: log::LogCtx,
    pub dns: dns::DnsCtx,
    pub kubernetes: kubernetes::KubeCtx,
    /// Environment variables passed through to the plugin (the topology's `env`).
    pub env: Vec<(String, String)>,
    pub memory_limit: usize,
}

impl PluginState {
    pub fn new(caps: &Capabilities) -> PluginState {
        let mut wasi = WasiCtx::builder();
        wasi.inherit_stderr();
        for (k, v) in &caps.env {
            wasi.env(k, v);
        }
        PluginState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new().memory_size(caps.memory_limit).trap_on_grow_failure(true).build(),
            log: caps.log.clone(),
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
    if format!("{e:#}").contains("forcing trap when growing memory") {
        return format!("exceeded its memory limit of {} MiB", memory_limit >> 20);
    }
    first_line(e)
}

/// The first line of an error: the trap or failure and where, not the whole backtrace.
pub(crate) fn first_line(e: &wasmtime::Error) -> String {
    format!("{e:#}").lines().next().unwrap_or("trap").to_string()
}
