//! The `log` capability: a plugin's lines go to the node's log, tagged with the plugin.

use std::sync::Arc;

use tracing::{debug, error, info, trace, warn};
use wasmtime::component::{HasSelf, Linker};

use super::discovery::bindings::wasmnode::discovery::log::{self as wit, Level};
use super::PluginState;

/// Which plugin is speaking.
#[derive(Clone)]
pub struct LogCtx {
    /// `topology NAME (path)`, written on every line the plugin emits.
    pub label: Arc<str>,
}

impl wit::Host for LogCtx {
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

pub fn add_to_linker(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    wit::add_to_linker::<PluginState, HasSelf<LogCtx>>(linker, |s| &mut s.log)
}
