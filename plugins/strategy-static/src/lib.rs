//! `strategy-static`: a fixed list of node names — libcluster's `Cluster.Strategy.Epmd`.
//!
//! | option | type | default | meaning |
//! |---|---|---|---|
//! | `hosts` | list of strings | (required) | the node names to connect to, `basename@host[:port]` |
//!
//! ```toml
//! [topology.local]
//! strategy = "../plugins/dist/strategy_static.wasm"
//! polling_interval_ms = 5000
//! [topology.local.config]
//! hosts = ["a@127.0.0.1", "b@127.0.0.2", "c@127.0.0.3"]
//! ```

use discovery_guest::{log, ConfigEntry, Guest, Level, Options, State};

static HOSTS: State<Vec<String>> = State::new();

struct Static;

impl Guest for Static {
    fn init(config: Vec<ConfigEntry>) -> Result<(), String> {
        let opts = Options::new(config, &["hosts"])?;
        let hosts = opts.list("hosts")?.ok_or("missing option `hosts`, a list of node names")?;
        if let Some(bad) = hosts.iter().find(|h| !h.contains('@')) {
            return Err(format!("`hosts` entry `{bad}` is not a node name (basename@host)"));
        }
        log(Level::Debug, &format!("static strategy with {} hosts", hosts.len()));
        HOSTS.set(hosts);
        Ok(())
    }

    fn poll() -> Result<Vec<String>, String> {
        HOSTS.get()
    }
}

discovery_guest::export!(Static with_types_in discovery_guest);
