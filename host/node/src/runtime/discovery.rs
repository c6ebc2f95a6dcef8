//! Discovery strategies: components of the `wasmnode:discovery/strategy` world.
//!
//! A [`StrategyComponent`] is compiled and type-checked once (`wasmnode check` does
//! exactly this, plus one `init`); [`spawn_topology`] runs one `[topology.NAME]`: it
//! instantiates the component, hands it its config table, polls it every interval, and
//! passes the names it sees to membership. A plugin error is logged and the next poll
//! comes at the next interval; a trap (including a blown deadline or memory cap) also
//! drops the instance, which is created afresh for the next poll, with backoff while
//! it keeps trapping. No outcome of a poll disconnects anyone.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, warn};
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Engine, Store};

use super::dns::DnsCtx;
use super::kubernetes::KubeCtx;
use super::{deadline_ticks, describe_trap, first_line, Capabilities, LoadError, PluginError, PluginState};
use crate::config::{PluginValue, TopologyConfig};
use crate::membership::Membership;
use crate::name::NodeName;

/// The generated bindings; the one `bindgen!` of this world.
pub mod bindings {
    wasmtime::component::bindgen!({
        world: "strategy",
        path: "../../wit/discovery@0.1.0",
    });
}

use bindings::wasmnode::discovery::types::{ConfigEntry, ConfigValue};
use bindings::{Strategy, StrategyPre};

/// The `types` interface has only types; nothing to implement.
impl bindings::wasmnode::discovery::types::Host for PluginState {}

// (log, dns and kubernetes are implemented in their own modules, on their own contexts.)

/// Longest pause between polls of a strategy that keeps trapping, in intervals.
const MAX_TRAP_BACKOFF: u32 = 8;

/// The most names one poll may return. Each new one is a connection to dial, so a list
/// from a misbehaving plugin or an API that answers with every pod of a large cluster
/// would have the node dial them all at once; no full mesh holds this many nodes.
pub const MAX_NAMES: usize = 10_000;
/// How many of a poll's malformed names its warning shows.
const BAD_NAMES_SHOWN: usize = 3;

/// A poll's names, screened: refused whole when there are more than [`MAX_NAMES`]
/// (nothing changes: the last good answer's connections are kept), else the names that
/// are `basename@host` and a warning about the others, showing a few of them.
fn screen(names: Vec<String>) -> Result<(Vec<String>, Option<String>), String> {
    if names.len() > MAX_NAMES {
        return Err(format!("returned {} names, more than the {MAX_NAMES} a poll may list", names.len()));
    }
    let (good, bad): (Vec<String>, Vec<String>) = names.into_iter().partition(|n| NodeName::parse(n).is_ok());
    let warning = (!bad.is_empty()).then(|| {
        // (Debug-quoted: a name's control characters are escaped, and only the start of
        // a long one is shown.)
        let shown: Vec<String> = bad.iter().take(BAD_NAMES_SHOWN).map(|n| format!("{:?}", n.chars().take(300).collect::<String>())).collect();
        let more = bad.len().saturating_sub(BAD_NAMES_SHOWN);
        let more = if more > 0 { format!(" and {more} more") } else { String::new() };
        format!("returned {} names that are not basename@host, ignored: {}{more}", bad.len(), shown.join(", "))
    });
    Ok((good, warning))
}

/// A compiled, type-checked strategy component with its topology's settings.
pub struct StrategyComponent {
    pub topology: String,
    pub path: PathBuf,
    pre: StrategyPre<PluginState>,
    caps: Capabilities,
    config: Vec<ConfigEntry>,
    call_timeout: Duration,
}

/// A live instance of a strategy.
pub struct Running {
    store: Store<PluginState>,
    strategy: Strategy,
}

impl StrategyComponent {
    /// Compiles the component at `t.strategy` and checks it is a discovery strategy.
    pub fn load(engine: &Engine, t: &TopologyConfig) -> Result<StrategyComponent, LoadError> {
        let path = t.strategy.display().to_string();
        let component = super::cache::load(engine, &t.strategy).map_err(|e| LoadError::NotAComponent { path: path.clone(), why: first_line(&e) })?;
        let mut linker = Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(LoadError::host)?;
        bindings::wasmnode::discovery::types::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(LoadError::host)?;
        super::log::add_to_linker(&mut linker).map_err(LoadError::host)?;
        super::dns::add_to_linker(&mut linker).map_err(LoadError::host)?;
        super::kubernetes::add_to_linker(&mut linker).map_err(LoadError::host)?;
        let pre = linker.instantiate_pre(&component).map_err(|e| LoadError::Imports { path: path.clone(), why: first_line(&e) })?;
        let pre = StrategyPre::new(pre).map_err(|e| LoadError::WrongWorld {
            path: path.clone(),
            world: "discovery",
            wit: "wasmnode:discovery/strategy@0.1.0",
            why: first_line(&e),
        })?;
        // Host calls (DNS, API) must end before the plugin call's own deadline does.
        let host_timeout = t.call_timeout * 3 / 4;
        let caps = Capabilities {
            label: format!("topology {} ({})", t.name, t.strategy.display()).into(),
            dns: DnsCtx::new(t.nameserver, host_timeout),
            kubernetes: KubeCtx::new(host_timeout),
            env: t.env.iter().filter_map(|k| std::env::var(k).ok().map(|v| (k.clone(), v))).collect(),
            memory_limit: t.memory_limit,
        };
        Ok(StrategyComponent {
            topology: t.name.clone(),
            path: t.strategy.clone(),
            pre,
            caps,
            config: t.config.iter().map(|(k, v)| ConfigEntry { key: k.clone(), value: to_wit(v) }).collect(),
            call_timeout: t.call_timeout,
        })
    }

    /// Instantiates and calls `init` with the config table.
    pub fn instantiate(&self) -> Result<Running, PluginError> {
        let mut store = Store::new(self.pre.engine(), PluginState::new(&self.caps));
        store.limiter(|s| &mut s.limits);
        super::limit_copies(&mut store, self.caps.memory_limit);
        store.set_epoch_deadline(deadline_ticks(self.call_timeout));
        let strategy = self.pre.instantiate(&mut store).map_err(|e| self.trapped(&e))?;
        store.set_epoch_deadline(deadline_ticks(self.call_timeout));
        match strategy.wasmnode_discovery_discover().call_init(&mut store, &self.config) {
            Ok(Ok(())) => Ok(Running { store, strategy }),
            Ok(Err(e)) => Err(PluginError::Refused(format!("init refused its config: {e}"))),
            Err(e) => Err(self.trapped(&e)),
        }
    }

    /// One poll of a running instance.
    pub fn poll(&self, r: &mut Running) -> Result<Vec<String>, PluginError> {
        r.store.set_epoch_deadline(deadline_ticks(self.call_timeout));
        match r.strategy.wasmnode_discovery_discover().call_poll(&mut r.store) {
            Ok(Ok(names)) => Ok(names),
            Ok(Err(e)) => Err(PluginError::Refused(e)),
            Err(e) => Err(self.trapped(&e)),
        }
    }

    fn trapped(&self, e: &wasmtime::Error) -> PluginError {
        PluginError::Trapped(describe_trap(e, self.call_timeout, self.caps.memory_limit))
    }
}

fn to_wit(v: &PluginValue) -> ConfigValue {
    match v {
        PluginValue::Text(s) => ConfigValue::Text(s.clone()),
        PluginValue::Integer(i) => ConfigValue::Integer(*i),
        PluginValue::Float(f) => ConfigValue::Float(*f),
        PluginValue::Boolean(b) => ConfigValue::Boolean(*b),
        PluginValue::TextList(l) => ConfigValue::TextList(l.clone()),
    }
}

/// Runs one topology for the life of the node.
pub fn spawn_topology(component: StrategyComponent, interval: Duration, membership: Membership) {
    let component = Arc::new(component);
    tokio::spawn(async move {
        let mut running: Option<Running> = None;
        let mut traps_in_a_row = 0u32;
        let mut traps = 0u64;
        loop {
            let c = component.clone();
            let (kept, result) = tokio::task::spawn_blocking(move || {
                let mut r = match running {
                    Some(r) => r,
                    None => match c.instantiate() {
                        Ok(r) => r,
                        Err(e) => return (None, Err(e)),
                    },
                };
                let result = c.poll(&mut r);
                let keep = !matches!(result, Err(PluginError::Trapped(_)));
                (keep.then_some(r), result)
            })
            .await
            .unwrap_or_else(|e| (None, Err(PluginError::Trapped(format!("host task failed: {e}")))));
            running = kept;
            let path = component.path.display();
            let topology = &component.topology;
            let mut pause = interval;
            match result.map(screen) {
                Ok(Err(why)) => {
                    crate::metrics::global().polled(topology, crate::metrics::Poll::Error);
                    traps_in_a_row = 0;
                    warn!("strategy {topology} ({path}) {why}; connections kept, polling again in {} ms", interval.as_millis());
                }
                Ok(Ok((good, warning))) => {
                    crate::metrics::global().polled(topology, crate::metrics::Poll::Ok);
                    traps_in_a_row = 0;
                    if let Some(w) = warning {
                        warn!("strategy {topology} ({path}) {w}");
                    }
                    debug!("strategy {topology} ({path}) sees {} nodes: [{}]", good.len(), good.join(", "));
                    membership.discovered(topology, good);
                }
                Err(e @ PluginError::Refused(_)) => {
                    crate::metrics::global().polled(topology, crate::metrics::Poll::Error);
                    traps_in_a_row = 0;
                    warn!("strategy {topology} ({path}) {e}; connections kept, polling again in {} ms", interval.as_millis());
                }
                Err(e @ PluginError::Trapped(_)) => {
                    crate::metrics::global().polled(topology, crate::metrics::Poll::Trap);
                    traps_in_a_row += 1;
                    traps += 1;
                    pause = interval * (1 << (traps_in_a_row - 1).min(MAX_TRAP_BACKOFF.ilog2()));
                    warn!(
                        "strategy {topology} ({path}) {e}; stopped ({traps} traps so far); connections kept, instantiating it again in {} ms",
                        pause.as_millis()
                    );
                }
            }
            tokio::time::sleep(pause).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poll_is_screened_for_its_size_and_its_names() {
        let (good, warning) = screen(vec!["a@h".into(), "b@[::1]:4371".into()]).unwrap();
        assert_eq!((good.len(), warning), (2, None));
        // Malformed names are left out; the warning shows three, escaped, and counts the rest.
        let names = ["a@h", "nope", "x\ny@h", "", "also bad", "c@h"].map(String::from).to_vec();
        let (good, warning) = screen(names).unwrap();
        assert_eq!(good, vec!["a@h".to_string(), "c@h".to_string()]);
        assert_eq!(warning.unwrap(), r#"returned 4 names that are not basename@host, ignored: "nope", "x\ny@h", "" and 1 more"#);
        // More than a poll may list: refused whole (its good names too).
        let many: Vec<String> = (0..=MAX_NAMES).map(|i| format!("n{i}@10.0.0.1")).collect();
        assert_eq!(screen(many).unwrap_err(), "returned 10001 names, more than the 10000 a poll may list");
        let most: Vec<String> = (0..MAX_NAMES).map(|i| format!("n{i}@10.0.0.1")).collect();
        assert_eq!(screen(most).unwrap().0.len(), MAX_NAMES);
    }
}
