//! A running node: config → cookie → listener → dist → membership → topologies, until
//! SIGTERM or SIGINT, then a graceful leave. Also `check`, which does the same up to
//! instantiating each plugin once, and starts nothing.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};
use wasmnode_proto::Service;

use crate::config::{Config, ConfigError, CookieSource};
use crate::control;
use crate::dist::{Dist, DistConfig};
use crate::membership::Membership;
use crate::registry::{Registry, StartError, WorkerName};
use crate::runtime::worker::{WorkerKind, WorkerRuntime};
use crate::runtime::{self, discovery};

/// How long a leaving node waits for its goodbyes to be flushed.
const LEAVE_DEADLINE: Duration = Duration::from_secs(2);
/// How long boot-time workers wait for the cluster to form before starting anyway.
const BOOT_SETTLE_MAX: Duration = Duration::from_secs(10);

/// Checks a topology and its plugins without starting anything; every problem found.
/// `offline`: the secrets a running node reads (cookie, gateway token, TLS files) are
/// not read, since only the pod or container that runs it has them.
pub fn check(cfg: &Config, offline: bool) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    if offline {
        // Nothing of the node's own secrets: see above.
    } else {
        if let Err(e) = cfg.node.cookie.resolve_for_node(cfg.node.allow_insecure_cookie) {
            errors.push(cfg.cookie_error(e));
        }
        if let Some(Err(e)) = cfg.http.token.as_ref().map(|t| t.resolve()) {
            errors.push(ConfigError { file: cfg.file.clone(), at: None, key: Some("http".into()), message: e });
        }
        if let Some(Err(e)) = cfg.node.tls.as_ref().map(|files| crate::tls::Tls::load(files.clone(), &cfg.node.name.host)) {
            errors.push(ConfigError { file: cfg.file.clone(), at: None, key: Some("node.tls".into()), message: e.to_string() });
        }
    }
    let engine = match runtime::engine_with(cfg.pool()) {
        Ok(e) => e,
        Err(e) => {
            errors.push(ConfigError { file: cfg.file.clone(), at: None, key: None, message: format!("cannot start the WebAssembly engine: {e}") });
            return errors;
        }
    };
    runtime::spawn_epoch_ticker(engine.clone());
    for t in &cfg.topologies {
        match discovery::StrategyComponent::load(&engine, t) {
            Ok(c) => {
                if let Err(e) = c.instantiate() {
                    let mut err = cfg.strategy_error(t, format!("the plugin {e}"));
                    err.key = Some(format!("topology.{}.config", t.name));
                    errors.push(err);
                }
            }
            Err(e) => errors.push(cfg.strategy_error(t, e.to_string())),
        }
    }
    for w in &cfg.workers {
        if let Err(e) = WorkerKind::load(&engine, w) {
            errors.push(cfg.worker_error(w, e.to_string()));
        }
    }
    errors
}

/// The runtime a node with this topology runs on.
///
/// With worker kinds: one multi-threaded runtime, a thread per CPU, for networking and
/// workers alike. A request read from a socket wakes its worker on the thread that read
/// it, and the reply goes back to the socket from there: a remote call crosses no thread
/// on its way (a separate worker runtime made four crossings per call, 42 µs instead of
/// 20 µs pinned; docs/benchmarks.md). Guests cannot hold a thread from the heartbeats:
/// a running guest yields to the runtime at every epoch tick (`runtime::worker`).
/// Without worker kinds: one thread, the smallest idle node.
pub fn runtime_for(cfg: &Config) -> std::io::Result<tokio::runtime::Runtime> {
    if cfg.workers.is_empty() {
        return tokio::runtime::Builder::new_current_thread().enable_all().build();
    }
    tokio::runtime::Builder::new_multi_thread().worker_threads(runtime_threads()).thread_name("wasmnode").enable_all().build()
}

/// Threads of a node's multi-threaded runtime: one per CPU the process may use.
pub fn runtime_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
}

/// Runs a node until SIGTERM or SIGINT, on the runtime [`runtime_for`] made.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    // From the start: a SIGTERM while the node boots is a leave once it has booted, not
    // the default action's kill.
    let shutdown = shutdown_signal();
    crate::logging::set_node(&cfg.node.name.to_string());
    crate::telemetry::init(&cfg.node.name.to_string(), tokio::runtime::Handle::current())?;
    for w in &cfg.warnings {
        warn!("{w}");
    }
    open_files_for(&cfg);
    let cookie = cfg.node.cookie.resolve_for_node(cfg.node.allow_insecure_cookie).map_err(|e| anyhow::anyhow!("{}", cfg.cookie_error(e)))?;
    if let Some(p) = cfg.node.cookie.world_readable() {
        warn!(file = %p.display(), "{}", CookieSource::readable_warning(p));
    }
    let token = cfg.http.token.as_ref().map(|t| t.resolve()).transpose().map_err(|e| anyhow::anyhow!("{}: {e}", cfg.file.display()))?;
    let name = cfg.node.name.to_string();
    let tls = match &cfg.node.tls {
        None => None,
        Some(files) => {
            let tls = Arc::new(crate::tls::Tls::load(files.clone(), &cfg.node.name.host).map_err(|e| anyhow::anyhow!("{}: {e}", cfg.file.display()))?);
            crate::tls::spawn_reload(tls.clone());
            Some(tls)
        }
    };

    // Load every plugin before listening: a bad plugin fails the start, loudly.
    let engine = runtime::engine_with(cfg.pool())?;
    runtime::spawn_epoch_ticker(engine.clone());
    let topology_names: Vec<String> = cfg.topologies.iter().map(|t| t.name.clone()).collect();
    let kind_names: Vec<String> = cfg.workers.iter().map(|w| w.kind.clone()).collect();
    crate::metrics::global().declare(&topology_names, &kind_names);
    let mut strategies = Vec::new();
    for t in &cfg.topologies {
        let c = discovery::StrategyComponent::load(&engine, t).map_err(|e| anyhow::anyhow!("{}", cfg.strategy_error(t, e.to_string())))?;
        strategies.push((c, t.polling_interval));
    }
    // Workers run on the node's own runtime (see `runtime_for`).
    let workers = WorkerRuntime::load(&engine, &cfg.workers, tokio::runtime::Handle::current()).map_err(|(kind, e)| {
        let w = cfg.workers.iter().find(|w| w.kind == kind).expect("the failing kind is configured");
        anyhow::anyhow!("{}", cfg.worker_error(w, e.to_string()))
    })?;
    let boot = workers.boot_keys();
    let mut workers = workers;
    workers.rebalance = cfg.node.rebalance_on_join;

    let listener = crate::dist::listen(cfg.node.listen).with_context(|| format!("cannot listen on {}", cfg.node.listen))?;
    let (tx, rx) = mpsc::unbounded_channel();
    let dist = Dist::new(
        DistConfig {
            heartbeat_interval: cfg.node.heartbeat_interval,
            heartbeat_timeout: cfg.node.heartbeat_timeout,
            connect_timeout: cfg.node.connect_timeout,
            source_ip: Some(cfg.node.listen.ip()).filter(|ip| !ip.is_unspecified()),
            nameserver: cfg.node.nameserver,
            max_backlog: cfg.node.max_backlog,
            tls,
            ..DistConfig::new(name.clone(), cookie)
        },
        tx,
    );
    let membership = Membership::start(dist.clone(), rx, cfg.node.full_mesh);
    let registry = Registry::start(membership.clone(), Arc::new(workers));
    let (m, r) = (membership.clone(), registry.clone());
    membership.set_request_handler(Arc::new(move |peer, id, service, trace, body| match service {
        Service::Registry => r.handle_rpc(peer, id, trace, body),
        Service::Control => control::handle(&m, &r, peer, id, trace, body),
    }));
    let fast = registry.clone();
    dist.set_fast_requests(Arc::new(move |peer, id, trace, body| fast.handle_rpc_fast(peer, id, trace, body)));
    tokio::spawn(dist.serve(listener));
    info!("node {name} listening on {}", cfg.node.listen);
    let drain = crate::http::Drain::default();
    let token: Option<Arc<str>> = token.map(Into::into);
    let apart = cfg.http.gateway_apart();
    let limits = cfg.http.limits;
    if let Some(addr) = cfg.http.listen {
        let http = crate::dist::listen(addr).with_context(|| format!("cannot listen for HTTP on {addr}"))?;
        let gateway = cfg.http.gateway && apart.is_none();
        info!("HTTP on {addr}{}", if gateway { " (worker gateway on)" } else { "" });
        let routes = crate::http::Routes { probes: true, gateway, token: token.clone() };
        tokio::spawn(crate::http::serve(http, registry.clone(), routes, drain.clone(), limits));
    }
    if let Some(addr) = apart {
        let http = crate::dist::listen(addr).with_context(|| format!("cannot listen for the worker gateway on {addr}"))?;
        info!("worker gateway on {addr}");
        let routes = crate::http::Routes { probes: false, gateway: true, token };
        tokio::spawn(crate::http::serve(http, registry.clone(), routes, drain.clone(), limits));
    }
    let topologies = strategies.len();
    for (c, interval) in strategies {
        discovery::spawn_topology(c, interval, membership.clone());
    }
    tokio::spawn(settle_then_boot(membership.clone(), registry.clone(), topologies, boot));

    let signal = tokio::select! {
        signal = shutdown => signal,
        why = membership.core_stopped() => {
            // Not a node any more (see `CoreStop`): it goes, so that its peers take its
            // workers over and its supervisor starts it again.
            error!(reason = "core_stopped", "{why}: this node can track no member and answer no peer, so it exits (its peers take its workers over; its supervisor starts it again)");
            anyhow::bail!("{why}");
        }
    };
    info!("{signal}: leaving the cluster");
    membership.announce_leave();
    let longest_message = cfg.workers.iter().map(|w| w.call_timeout).max().unwrap_or_default();
    registry.hand_off_all(cfg.node.handoff_deadline, longest_message).await;
    // Calls under way through this node finish (they follow moved names) before it goes.
    drain.close(cfg.node.handoff_deadline).await;
    membership.leave(LEAVE_DEADLINE).await;
    crate::telemetry::shutdown().await;
    info!("node {name} stopped");
    Ok(())
}

/// File descriptors the node needs beside its HTTP connections: handshakes in
/// progress, peers, plugin and config files, with room to spare.
const OTHER_FILES: u64 = 1024;

/// Raises the node's soft limit on open files to its hard limit, as Go's runtime and
/// nginx's `worker_rlimit_nofile` do: shells and systemd often start a process at 1,024,
/// below what the HTTP ports' `max_connections` admit, and a process out of descriptors
/// refuses probes, peers and the CLI alike. Warns, naming both numbers, if even the
/// hard limit is below what the ports may hold.
fn open_files_for(cfg: &Config) {
    let ports = u64::from(cfg.http.listen.is_some()) + u64::from(cfg.http.gateway_apart().is_some());
    let wanted = ports * cfg.http.limits.max_connections as u64 + OTHER_FILES;
    match raise_open_files() {
        Ok((before, now)) => {
            if now > before {
                debug!(before, now, "open files: soft limit raised from {before} to {now}");
            }
            if now < wanted {
                warn!(
                    limit = now,
                    wanted,
                    "open files are limited to {now} (ulimit -n), below the {wanted} that [http] max_connections on {ports} port(s) and the node's own files may take: raise the limit or lower max_connections"
                );
            }
        }
        Err(e) => warn!("open files: cannot read or raise the limit: {e}"),
    }
}

/// Sets the soft `RLIMIT_NOFILE` to the hard one (at most 2^20, what Linux's default
/// `nr_open` allows): the limits before and after.
fn raise_open_files() -> std::io::Result<(u64, u64)> {
    let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `l` is a valid rlimit for the call to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = l.rlim_cur;
    let target = l.rlim_max.min(1 << 20);
    if l.rlim_cur >= target {
        return Ok((before, before));
    }
    l.rlim_cur = target;
    // SAFETY: `l` is a valid rlimit whose soft limit is at most its hard one.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &l) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((before, target))
}

/// Once the cluster as discovery sees it has formed (or after [`BOOT_SETTLE_MAX`]):
/// opens the registry (calls for unknown names waited until now) and starts the
/// boot-time workers, so each starts once, on its owner.
async fn settle_then_boot(membership: Membership, registry: Registry, topologies: usize, boot: Vec<(String, String)>) {
    let deadline = tokio::time::Instant::now() + BOOT_SETTLE_MAX;
    while !membership.settled(topologies) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    registry.set_ready();
    for (kind, key) in boot {
        match registry.start_worker(&kind, &key, Vec::new()).await {
            Ok(node) => info!(worker = %WorkerName::new(&kind, &key), "boot worker {kind}/{key} runs on {node}"),
            Err(StartError::AlreadyStarted(node)) => {
                info!(worker = %WorkerName::new(&kind, &key), peer = %node, "boot worker {kind}/{key} already runs on {node}")
            }
            Err(e) => warn!(worker = %WorkerName::new(&kind, &key), reason = %e, "boot worker {kind}/{key} did not start: {e}"),
        }
    }
}

/// Handles SIGTERM and SIGINT from now on; resolves with the first that arrives.
fn shutdown_signal() -> impl std::future::Future<Output = &'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_files() -> libc::rlimit {
        let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: `l` is a valid rlimit for the call to fill.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) }, 0);
        l
    }

    #[test]
    fn the_open_files_soft_limit_is_raised_to_the_hard_one() {
        let l = open_files();
        let target = l.rlim_max.min(1 << 20);
        // Lowered first (not below what other tests may hold open), then raised.
        let lowered = libc::rlimit { rlim_cur: target.min(4096).max(target / 2), rlim_max: l.rlim_max };
        // SAFETY: `lowered` is a valid rlimit whose soft limit is at most its hard one.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lowered) }, 0);
        let (before, now) = raise_open_files().unwrap();
        assert_eq!((before, now), (lowered.rlim_cur, target));
        assert_eq!(open_files().rlim_cur, target);
        // Raised already: nothing to do.
        assert_eq!(raise_open_files().unwrap(), (target, target));
    }
}
