//! The node's log: text for a terminal, or one JSON object per line
//! (`WASMNODE_LOG_FORMAT=json`) for a log pipeline, with the node and every field of the
//! event (`peer`, `worker`, `reason`, …) at the top level beside `message`.

use std::fmt;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
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

/// Installs the log on stderr, filtered by `RUST_LOG` (default `info`), in the format
/// [`FORMAT_ENV`] names; an unknown format is an error naming the ones there are.
pub fn init() -> Result<(), String> {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match std::env::var(FORMAT_ENV).as_deref() {
        Ok("json") => builder.event_format(Json).init(),
        Ok("text") | Err(_) => builder.with_target(false).with_ansi(std::io::stderr().is_terminal()).init(),
        Ok(other) => return Err(format!("{FORMAT_ENV}={other}: the log formats are `text` and `json`")),
    }
    Ok(())
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
