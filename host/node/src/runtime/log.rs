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

// The most of one message a plugin's `log` writes, as of a line of its output: a longer
// one is cut there, with the count of what was left out (a guest's 60 MiB string is not
// a log line).
use super::egress::MAX_LINE as MAX_MESSAGE;

/// `message`, cut to [`MAX_MESSAGE`] bytes (at a character's boundary) when longer.
fn cut(mut message: String) -> String {
    if message.len() > MAX_MESSAGE {
        let end = (0..=MAX_MESSAGE).rev().find(|&i| message.is_char_boundary(i)).unwrap_or(0);
        let more = message.len() - end;
        message.truncate(end);
        message.push_str(&format!("… ({more} bytes more)"));
    }
    message
}

impl wit::Host for LogCtx {
    fn log(&mut self, level: Level, message: String) {
        let message = cut(message);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_message_is_cut_at_a_character_and_says_how_much_is_left_out() {
        assert_eq!(cut("short".into()), "short");
        let exact = "x".repeat(MAX_MESSAGE);
        assert_eq!(cut(exact.clone()), exact);
        // A two-byte character straddling the cut is left out whole.
        let long = format!("{}é{}", "x".repeat(MAX_MESSAGE - 1), "y".repeat(60 << 20));
        let out = cut(long.clone());
        assert_eq!(out, format!("{}… ({} bytes more)", "x".repeat(MAX_MESSAGE - 1), long.len() - (MAX_MESSAGE - 1)));
    }
}
