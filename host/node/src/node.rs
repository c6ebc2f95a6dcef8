//! A running node: config → cookie → listener → dist → membership → topologies, until
//! SIGTERM or SIGINT, then a graceful leave. Also `check`, which does the same up to
//! instantiating each plugin once, and starts nothing.

use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::{Config, ConfigError};
use crate::dist::{Dist, DistConfig};
use crate::membership::Membership;
use crate::runtime::{self, discovery};

/// How long a leaving node waits for its goodbyes to be flushed.
const LEAVE_DEADLINE: Duration = Duration::from_secs(2);

/// Checks a topology and its plugins without starting anything; every problem found.
pub fn check(cfg: &Config) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    if let Err(e) = cfg.node.cookie.resolve() {
        errors.push(cfg.cookie_error(e));
    }
    let engine = match runtime::engine() {
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
            Err(e) => errors.push(cfg.strategy_error(t, e)),
        }
    }
    errors
}

/// Runs a node until SIGTERM or SIGINT.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    for w in &cfg.warnings {
        warn!("{w}");
    }
    let cookie = cfg.node.cookie.resolve().map_err(|e| anyhow::anyhow!("{}", cfg.cookie_error(e)))?;
    let name = cfg.node.name.to_string();

    // Load every plugin before listening: a bad plugin fails the start, loudly.
    let engine = runtime::engine()?;
    runtime::spawn_epoch_ticker(engine.clone());
    let mut strategies = Vec::new();
    for t in &cfg.topologies {
        let c = discovery::StrategyComponent::load(&engine, t).map_err(|e| anyhow::anyhow!("{}", cfg.strategy_error(t, e)))?;
        strategies.push((c, t.polling_interval));
    }

    let listener = TcpListener::bind(cfg.node.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.node.listen))?;
    let (tx, rx) = mpsc::unbounded_channel();
    let dist = Dist::new(
        DistConfig {
            heartbeat_interval: cfg.node.heartbeat_interval,
            heartbeat_timeout: cfg.node.heartbeat_timeout,
            connect_timeout: cfg.node.connect_timeout,
            source_ip: Some(cfg.node.listen.ip()).filter(|ip| !ip.is_unspecified()),
            nameserver: cfg.node.nameserver,
            ..DistConfig::new(name.clone(), cookie)
        },
        tx,
    );
    let membership = Membership::start(dist.clone(), rx, cfg.node.full_mesh);
    tokio::spawn(dist.serve(listener));
    info!("node {name} listening on {}", cfg.node.listen);
    for (c, interval) in strategies {
        discovery::spawn_topology(c, interval, membership.clone());
    }

    let signal = shutdown_signal().await;
    info!("{signal}: leaving the cluster");
    membership.leave(LEAVE_DEADLINE).await;
    info!("node {name} stopped");
    Ok(())
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
