//! The node's log: text for a terminal, or one JSON object per line
//! (`WASMNODE_LOG_FORMAT=json`) for a log pipeline, with the node and every field of the
//! event (`peer`, `worker`, `reason`, …) at the top level beside `message`.
//!
//! Either way an event is one line: JSON escapes what it carries, and the text format
//! is written through [`OneLine`], which escapes any line break or control character
//! inside an event (a guest's `\r`, a reason a peer or a server sent), so no text from
//! outside can start a line of its own or, on a terminal, write over one.

use std::borrow::Cow;
use std::fmt;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// The environment variable that picks the format: `json`, or `text` (the default).
pub const FORMAT_ENV: &str = "WASMNODE_LOG_FORMAT";

static NODE: OnceLock<String> = OnceLock::new();

/// Names the node in every JSON line from now on (its name is known once the topology
/// is loaded; lines before it have no `node`).
pub fn set_node(name: &str) {
    let _ = NODE.set(name.to_string());
}

/// Panics go to the log as one ERROR line (where, and what, with `reason="panic"`), not
/// as the standard library's lines on stderr that a log pipeline splits and leaves
/// unparsed: an operator finds them with the rest. With `RUST_BACKTRACE` set, the
/// standard report, backtrace included, follows the line.
pub fn log_panics() {
    let standard = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let at = info.location().map_or_else(|| "an unknown place".to_string(), |l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
        let payload = info.payload();
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        let thread = std::thread::current().name().unwrap_or("unnamed").to_string();
        tracing::error!(reason = "panic", %thread, "panicked at {at}: {what}");
        if std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0") {
            standard(info);
        }
    }));
}

/// Installs the log on stderr, filtered by `RUST_LOG` (default `info`), in the format
/// [`FORMAT_ENV`] names; an unknown format is an error naming the ones there are.
pub fn init() -> Result<(), String> {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match std::env::var(FORMAT_ENV).as_deref() {
        Ok("json") => builder.with_writer(std::io::stderr).event_format(Json).init(),
        Ok("text") | Err(_) => builder.with_writer(OneLine).with_target(false).with_ansi(std::io::stderr().is_terminal()).init(),
        Ok(other) => return Err(format!("{FORMAT_ENV}={other}: the log formats are `text` and `json`")),
    }
    Ok(())
}

/// Stderr, one line per event: the formatter hands over each event whole, and
/// [`one_line`] escapes what would break it.
pub struct OneLine;

impl<'a> MakeWriter<'a> for OneLine {
    type Writer = OneLine;
    fn make_writer(&'a self) -> OneLine {
        OneLine
    }
}

impl std::io::Write for OneLine {
    fn write(&mut self, event: &[u8]) -> std::io::Result<usize> {
        std::io::stderr().lock().write_all(&one_line(event))?;
        Ok(event.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// `event` (one formatted event, ending in its newline) with every line break and
/// control character before that newline escaped: `\r`, `\n`, `\x0b`, `\u{9b}`, `\u{2028}`, ….
/// Tabs stay, and so does ESC: the formatter's own colours use it, and it escapes an
/// ESC in a field itself. Text with nothing to escape is not copied.
pub fn one_line(event: &[u8]) -> Cow<'_, [u8]> {
    let body = event.strip_suffix(b"\n").unwrap_or(event);
    // C0 controls but tab and ESC, and DEL, one byte each; the C1 controls U+0080 to
    // U+009F (C2 80 to C2 9F: NEL, and CSI, which some terminals take as ESC [) and the
    // line and paragraph separators U+2028 and U+2029 (E2 80 A8/A9), two and three.
    let control = |c: u8| (c < 0x20 && c != b'\t' && c != 0x1b) || c == 0x7f;
    let wide = |w: &[u8]| match w {
        [0xc2, 0x80..=0x9f, ..] => 2,
        [0xe2, 0x80, 0xa8 | 0xa9, ..] => 3,
        _ => 0,
    };
    if !body.iter().enumerate().any(|(i, &c)| control(c) || ((c == 0xc2 || c == 0xe2) && wide(&body[i..]) > 0)) {
        return Cow::Borrowed(event);
    }
    let mut out = Vec::with_capacity(event.len() + 16);
    let mut i = 0;
    while i < body.len() {
        let n = wide(&body[i..]);
        if n > 0 {
            let ch = std::str::from_utf8(&body[i..i + n]).expect("a whole UTF-8 sequence").chars().next().expect("one char");
            out.extend_from_slice(ch.escape_unicode().to_string().as_bytes());
            i += n;
            continue;
        }
        match body[i] {
            b'\r' => out.extend_from_slice(br"\r"),
            b'\n' => out.extend_from_slice(br"\n"),
            c if control(c) => out.extend_from_slice(format!(r"\x{c:02x}").as_bytes()),
            c => out.push(c),
        }
        i += 1;
    }
    out.extend_from_slice(&event[body.len()..]);
    Cow::Owned(out)
}

/// One JSON object per event: `timestamp`, `level`, `node`, `target`, `message` and the
/// event's own fields.
pub struct Json;

impl<S, N> FormatEvent<S, N> for Json
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        writeln!(w, "{}", Value::Object(json_fields(event)))
    }
}

/// The JSON object for `event`.
pub fn json_fields(event: &Event<'_>) -> Map<String, Value> {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let mut fields = Map::new();
    fields.insert("timestamp".into(), crate::time::rfc3339(ms).into());
    fields.insert("level".into(), event.metadata().level().as_str().into());
    if let Some(node) = NODE.get() {
        fields.insert("node".into(), node.clone().into());
    }
    fields.insert("target".into(), event.metadata().target().into());
    event.record(&mut Fields(&mut fields));
    fields
}

struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::{Context, SubscriberExt};
    use tracing_subscriber::Layer;

    use super::*;

    /// Collects the JSON object of every event.
    struct Collect(Arc<Mutex<Vec<Map<String, Value>>>>);

    impl<S: Subscriber> Layer<S> for Collect {
        fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
            self.0.lock().unwrap().push(json_fields(event));
        }
    }

    #[test]
    fn an_event_is_one_line_whatever_its_text_holds() {
        let plain = b"2026-12-05T01:00:00Z  INFO worker=\"probe/p1\" [probe/p1] hello\tthere \xe2\x80\x94 \x1b[0m\n";
        assert!(matches!(one_line(plain), Cow::Borrowed(_)), "nothing to escape: not copied");
        let forged = "INFO [probe/p1] a\r2026-12-05T00:00:00Z  INFO forged\nWARN b\u{2028}c\u{85}d\u{2029}e\x0b\x00\x7f\u{2026}\n";
        let out = String::from_utf8(one_line(forged.as_bytes()).into_owned()).unwrap();
        assert_eq!(out, "INFO [probe/p1] a\\r2026-12-05T00:00:00Z  INFO forged\\nWARN b\\u{2028}c\\u{85}d\\u{2029}e\\x0b\\x00\\x7f\u{2026}\n");
        assert_eq!(out.lines().count(), 1);
        // Without the final newline, and nothing but escapes.
        assert_eq!(one_line(b"\r\n\r").as_ref(), br"\r\n\r");
        assert_eq!(one_line(b"\n").as_ref(), b"\n");
        assert_eq!(one_line(b"").as_ref(), b"");
        assert_eq!(one_line("a\u{9b}31mb\u{80}\u{9f}\u{a0}\n".as_bytes()).as_ref(), "a\\u{9b}31mb\\u{80}\\u{9f}\u{a0}\n".as_bytes());
    }

    proptest::proptest! {
        /// Whatever an event's text holds, it is written as one line, with nothing a
        /// terminal or a reader could take for a line break or a control sequence but
        /// the formatter's own ESC; and text without any of them is written unchanged.
        #[test]
        fn whatever_an_event_holds_it_is_written_as_one_line(text in proptest::prelude::any::<String>()) {
            let out = String::from_utf8(one_line(format!("{text}\n").as_bytes()).into_owned()).unwrap();
            let body = out.strip_suffix('\n').expect("the newline stays");
            let breaks = |c: char| (c.is_control() && c != '\t' && c != '\u{1b}') || c == '\u{2028}' || c == '\u{2029}';
            proptest::prop_assert!(!body.contains(breaks), "{body:?}");
            if !text.contains(breaks) {
                proptest::prop_assert_eq!(body, text.as_str());
            }
        }
    }

    #[test]
    fn fields_stand_beside_the_message_not_only_inside_it() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(Collect(seen.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let node = "b@10.0.0.2";
            tracing::warn!(peer = %node, reason = "heartbeat_timeout", count = 3u64, "node down {node}: \"no heartbeat\"");
        });
        let seen = seen.lock().unwrap();
        let line = serde_json::to_string(&seen[0]).unwrap();
        let back: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(back["peer"], "b@10.0.0.2");
        assert_eq!(back["reason"], "heartbeat_timeout");
        assert_eq!(back["count"], 3);
        assert_eq!(back["level"], "WARN");
        assert_eq!(back["message"], "node down b@10.0.0.2: \"no heartbeat\"");
        assert!(!line.contains('\n'), "one line: {line}");
    }
}
