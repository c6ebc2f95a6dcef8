//! The `log` capability: a plugin's lines go to the node's log, tagged with the plugin;
//! and the [`Gate`] every line of an instance's output and log passes, which keeps one
//! instance from flooding the node's log.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{debug, error, info, trace, warn};
use wasmtime::component::{HasSelf, Linker};

use super::discovery::bindings::wasmnode::discovery::log::{self as wit, Level};
use super::PluginState;
use crate::refusals::{Admit, Window};

/// Which plugin is speaking, and the gate its lines pass.
#[derive(Clone)]
pub struct LogCtx {
    /// `topology NAME (path)` or `worker KIND/KEY`, written on every line the plugin emits.
    pub label: Arc<str>,
    pub gate: Arc<Gate>,
}

/// Lines of output and log one instance may write in a [`BURST_WINDOW`]; past them its
/// lines are counted and left out until the next window, which starts by saying how
/// many. Erlang's logger drops past 500 events a second per handler by default, for the
/// same reason: one guest's `println!` in a loop wrote 550,000 lines (44 MB) a second to
/// the node's log, filling the disk under it and burying every other line, and each
/// line is a write to stderr on a thread the node's networking shares.
pub const BURST_LINES: u32 = 500;
/// See [`BURST_LINES`].
pub const BURST_WINDOW: Duration = Duration::from_secs(1);

/// One instance's lines in windows of [`BURST_WINDOW`], shared by its stdout, its stderr
/// and its `log`; when the instance is gone it says how many of its last lines were left
/// out, if any.
pub struct Gate {
    /// A worker's name, or (`plugin`) a strategy's `topology NAME (path)`: what the
    /// instance's lines are tagged with.
    pub(super) label: Arc<str>,
    pub(super) plugin: bool,
    burst: Mutex<Window>,
}

impl Gate {
    /// A worker's, labelled with its name.
    pub fn worker(name: Arc<str>) -> Arc<Gate> {
        Arc::new(Gate { label: name, plugin: false, burst: Mutex::default() })
    }

    /// A strategy's, labelled `topology NAME (path)`.
    pub fn plugin(label: Arc<str>) -> Arc<Gate> {
        Arc::new(Gate { label, plugin: true, burst: Mutex::default() })
    }

    /// Whether a line may be written now.
    pub fn pass(&self) -> bool {
        let admitted = self.burst.lock().unwrap().admit(Instant::now(), BURST_WINDOW, BURST_LINES);
        match admitted {
            Admit::Pass { left_out: 0 } => true,
            Admit::Pass { left_out } => {
                self.say(&format!("left out {left_out} lines of its output and log"), left_out);
                true
            }
            Admit::FirstLeftOut => {
                self.say(&format!("wrote more than {BURST_LINES} lines in a second: the rest of this second's are left out, and counted"), 0);
                false
            }
            Admit::LeftOut => false,
        }
    }

    fn say(&self, what: &str, left_out: u64) {
        let label = &*self.label;
        if self.plugin {
            warn!(plugin = label, reason = "log_burst", left_out, "[{label}] {what}");
        } else {
            warn!(worker = label, reason = "log_burst", left_out, "[{label}] {what}");
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let left_out = self.burst.get_mut().unwrap().left_out();
        if left_out > 0 {
            self.say(&format!("left out {left_out} lines of its output and log"), left_out);
        }
    }
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
        // Only what the node's log would write counts against the gate: a node at `info`
        // drops a guest's debug lines at no cost.
        let enabled = match level {
            Level::Trace => tracing::enabled!(tracing::Level::TRACE),
            Level::Debug => tracing::enabled!(tracing::Level::DEBUG),
            Level::Info => tracing::enabled!(tracing::Level::INFO),
            Level::Warn => tracing::enabled!(tracing::Level::WARN),
            Level::Error => tracing::enabled!(tracing::Level::ERROR),
        };
        if !enabled || !self.gate.pass() {
            return;
        }
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
    fn an_instance_writes_at_most_its_burst_a_window_and_the_next_window_says_what_was_left_out() {
        let admit = |w: &mut Window, at| w.admit(at, BURST_WINDOW, BURST_LINES);
        let mut b = Window::default();
        let t0 = Instant::now();
        for i in 0..BURST_LINES {
            assert_eq!(admit(&mut b, t0 + Duration::from_micros(i.into())), Admit::Pass { left_out: 0 });
        }
        // The rest of the window is left out and counted; the first is said at once.
        assert_eq!(admit(&mut b, t0 + Duration::from_millis(500)), Admit::FirstLeftOut);
        for _ in 1..1234 {
            assert_eq!(admit(&mut b, t0 + Duration::from_millis(999)), Admit::LeftOut);
        }
        // The next window's first line is written after saying how many, once.
        assert_eq!(admit(&mut b, t0 + BURST_WINDOW), Admit::Pass { left_out: 1234 });
        assert_eq!(admit(&mut b, t0 + BURST_WINDOW), Admit::Pass { left_out: 0 });
        // A quiet instance is never held back: a window opens at its next line.
        let mut quiet = Window::default();
        for i in 0..10 * BURST_LINES {
            assert_eq!(admit(&mut quiet, t0 + BURST_WINDOW * i / BURST_LINES), Admit::Pass { left_out: 0 });
        }
    }

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
