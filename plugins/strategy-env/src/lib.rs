//! `strategy-env`: node names from an environment variable, for local work (the
//! seeds' `LocalStrategy` with `NODES=a@127.0.0.1,b@127.0.0.2`).
//!
//! Plugins see no environment unless the topology lets them: list the variable in the
//! topology's `env`.
//!
//! | option | type | default | meaning |
//! |---|---|---|---|
//! | `variable` | string | `NODES` | the variable holding names separated by commas or spaces |
//!
//! ```toml
//! [topology.env]
//! strategy = "../plugins/dist/strategy_env.wasm"
//! polling_interval_ms = 5000
//! env = ["NODES"]                 # the host passes only these variables to the plugin
//! [topology.env.config]
//! variable = "NODES"
//! ```

use discovery_guest::{ConfigEntry, Guest, Options, State};

static VARIABLE: State<String> = State::new();

struct Env;

impl Guest for Env {
    fn init(config: Vec<ConfigEntry>) -> Result<(), String> {
        let o = Options::new(config, &["variable"])?;
        let var = o.text("variable")?.unwrap_or_else(|| "NODES".into());
        if std::env::var(&var).is_err() {
            return Err(format!("environment variable {var} is not visible to the plugin: set it, and list it in the topology's env = [\"{var}\"]"));
        }
        VARIABLE.set(var);
        Ok(())
    }

    fn poll() -> Result<Vec<String>, String> {
        let var = VARIABLE.get()?;
        let value = std::env::var(&var).map_err(|_| format!("environment variable {var} is not set"))?;
        Ok(value.split(|c: char| c == ',' || c.is_whitespace()).filter(|s| !s.is_empty()).map(str::to_string).collect())
    }
}

discovery_guest::export!(Env with_types_in discovery_guest);
