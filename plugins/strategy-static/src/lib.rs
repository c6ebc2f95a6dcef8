//! `strategy-static`: a fixed list of node names — libcluster's `Cluster.Strategy.Epmd`.
//!
//! Options (`[topology.NAME.config]`):
//!
//! | key | type | meaning |
//! |---|---|---|
//! | `hosts` | list of strings | the node names to connect to, `basename@host[:port]` |
//!
//! ```toml
//! [topology.local]
//! strategy = "../plugins/dist/strategy_static.wasm"
//! polling_interval_ms = 5000
//! [topology.local.config]
//! hosts = ["a@127.0.0.1", "b@127.0.0.2", "c@127.0.0.3"]
//! ```

use std::cell::RefCell;

wit_bindgen::generate!({
    generate_all,
    world: "strategy",
    path: "../../wit/discovery@0.1.0",
});

use wasmnode::discovery::log::{log, Level};
use wasmnode::discovery::types::{ConfigEntry, ConfigValue};

thread_local! {
    static HOSTS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

struct Static;

impl exports::wasmnode::discovery::discover::Guest for Static {
    fn init(config: Vec<ConfigEntry>) -> Result<(), String> {
        let mut hosts = None;
        for entry in config {
            match (entry.key.as_str(), entry.value) {
                ("hosts", ConfigValue::TextList(list)) => hosts = Some(list),
                ("hosts", _) => return Err("`hosts` must be a list of node names".into()),
                (other, _) => return Err(format!("unknown option `{other}` (known: hosts)")),
            }
        }
        let hosts = hosts.ok_or("missing option `hosts`, a list of node names")?;
        if let Some(bad) = hosts.iter().find(|h| !h.contains('@')) {
            return Err(format!("`hosts` entry `{bad}` is not a node name (basename@host)"));
        }
        log(Level::Debug, &format!("static strategy with {} hosts", hosts.len()));
        HOSTS.with(|h| *h.borrow_mut() = hosts);
        Ok(())
    }

    fn poll() -> Result<Vec<String>, String> {
        Ok(HOSTS.with(|h| h.borrow().clone()))
    }
}

export!(Static);
