// Returns the names in its `peers` option, plus a log line on each poll.
wit_bindgen::generate!({ world: "strategy", path: "../../../wit/discovery@0.1.0", generate_all });

use std::sync::Mutex;

use exports::wasmnode::discovery::discover::Guest;
use wasmnode::discovery::log::{log, Level};
use wasmnode::discovery::types::{ConfigEntry, ConfigValue};

static PEERS: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Minimal;

impl Guest for Minimal {
    fn init(config: Vec<ConfigEntry>) -> Result<(), String> {
        for entry in config {
            match (entry.key.as_str(), entry.value) {
                ("peers", ConfigValue::TextList(names)) => *PEERS.lock().unwrap() = names,
                (key, _) => return Err(format!("unknown option `{key}`")),
            }
        }
        Ok(())
    }

    fn poll() -> Result<Vec<String>, String> {
        let peers = PEERS.lock().unwrap().clone();
        log(Level::Info, &format!("minimal strategy sees {} peers", peers.len()));
        Ok(peers)
    }
}

export!(Minimal);
