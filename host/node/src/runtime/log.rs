//! The `log` capability: a plugin's lines go to the node's log, tagged with the plugin.

use tracing::{debug, error, info, trace, warn};

use super::discovery::bindings::wasmnode::discovery::log::{Host, Level};
use super::PluginState;

impl Host for PluginState {
    fn log(&mut self, level: Level, message: String) {
        let plugin = &*self.label;
        match level {
            Level::Trace => trace!(plugin, "{message}"),
            Level::Debug => debug!(plugin, "{message}"),
            Level::Info => info!(plugin, "{message}"),
            Level::Warn => warn!(plugin, "{message}"),
            Level::Error => error!(plugin, "{message}"),
        }
    }
}
