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

impl super::worker::bindings::wasmnode::worker::log::Host for LogCtx {
    async fn log(&mut self, level: super::worker::bindings::wasmnode::worker::log::Level, message: String) {
        use super::worker::bindings::wasmnode::worker::log::Level as L;
        let level = match level {
            L::Trace => Level::Trace,
            L::Debug => Level::Debug,
            L::Info => Level::Info,
            L::Warn => Level::Warn,
            L::Error => Level::Error,
        };
        wit::Host::log(self, level, message)
    }
}

/// Links the worker world's `log` to each instance's [`LogCtx`].
pub fn add_worker_log_to_linker(linker: &mut Linker<super::worker::WorkerState>) -> wasmtime::Result<()> {
    super::worker::bindings::wasmnode::worker::log::add_to_linker::<_, HasSelf<LogCtx>>(linker, |s| &mut s.log)
}
