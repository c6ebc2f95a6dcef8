//! OpenTelemetry traces: a call that crosses nodes is one trace at the collector, each
//! node's spans under the span of the node that sent it the call. The collector is a
//! stand-in that speaks OTLP/HTTP as a real one does (protobuf `ExportTraceServiceRequest`
//! on `POST /v1/traces`), decoded with the OpenTelemetry project's own message types.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use wasmnode_testkit::*;

const FORM: Duration = Duration::from_secs(10);

/// One span as the collector got it.
#[derive(Debug, Clone)]
struct Got {
    node: String,
    name: String,
    kind: SpanKind,
    trace: String,
    span: String,
    parent: String,
    worker: String,
    peer: String,
    failed: bool,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// An OTLP/HTTP collector on `addr`: decodes every export and keeps its spans.
fn collector(addr: &str) -> Arc<Mutex<Vec<Got>>> {
    let spans = Arc::new(Mutex::new(Vec::new()));
    let keep = spans.clone();
    http_server(addr, true, move |http| {
        assert!(http.line.starts_with("POST /v1/traces "), "the exporter posts to /v1/traces: {}", http.line);
        assert_eq!(http.header("content-type"), Some("application/x-protobuf"));
        let body = http.body;
        let request = ExportTraceServiceRequest::decode(body.as_slice()).expect("an OTLP trace export");
        let mut got = keep.lock().unwrap();
        for rs in request.resource_spans {
            let attr = |attrs: &[opentelemetry_proto::tonic::common::v1::KeyValue], key: &str| {
                attrs
                    .iter()
                    .find(|kv| kv.key == key)
                    .and_then(|kv| kv.value.as_ref()?.value.clone())
                    .map(|v| match v {
                        Value::StringValue(s) => s,
                        other => format!("{other:?}"),
                    })
                    .unwrap_or_default()
            };
            let resource = rs.resource.map(|r| r.attributes).unwrap_or_default();
            assert_eq!(attr(&resource, "service.name"), "wasmnode");
            let node = attr(&resource, "service.instance.id");
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                got.push(Got {
                    node: node.clone(),
                    kind: SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified),
                    trace: hex(&span.trace_id),
                    span: hex(&span.span_id),
                    parent: hex(&span.parent_span_id),
                    worker: attr(&span.attributes, "wasmnode.worker"),
                    peer: attr(&span.attributes, "wasmnode.peer"),
                    failed: span.status.is_some_and(|s| s.code == 2),
                    name: span.name,
                });
            }
        }
        ("200 OK", "application/x-protobuf", Vec::new())
    });
    spans
}

/// An HTTP server on `addr` that answers `200 ok` and keeps each request's
/// `traceparent` header.
fn traceparents(addr: &str) -> Arc<Mutex<Vec<String>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let keep = seen.clone();
    http_server(addr, false, move |request| {
        keep.lock().unwrap().push(request.header("traceparent").unwrap_or("").to_string());
        ("200 OK", "text/plain", b"ok".to_vec())
    });
    seen
}

/// The span of `trace` named `name` on `node`, once the collector has it.
fn find(spans: &Arc<Mutex<Vec<Got>>>, trace: &str, node: &str, name: &str, parent: &str) -> Got {
    let pick = || spans.lock().unwrap().iter().find(|s| s.trace == trace && s.node == node && s.name == name && s.parent == parent).cloned();
    wait_until(FORM, &format!("span {name} of {node} under {parent}"), || pick().is_some(), || format!("{:#?}", spans.lock().unwrap()));
    pick().unwrap()
}

/// A call from the HTTP gateway on a, to a worker on b that calls a worker on a: five
/// spans in one trace under the caller's `traceparent`, each node's under the span that
/// sent it the call. The CLI's `TRACEPARENT` does the same for `wasmnode call`.
#[test]
fn a_call_across_nodes_is_one_trace_at_the_collector() {
    let dir = TempDir::new("traces");
    let spans = collector("127.0.109.100:4318");
    let names = ["a@127.0.109.1", "b@127.0.109.2"];
    let kinds = [("probe", "worker_probe.wasm", "activate_on_call = true\nallowed_outbound_hosts = [\"http://127.0.109.102:8089\"]")];
    let server = traceparents("127.0.109.102:8089");
    // The gateway on a only.
    let config_a = dir.write("a.toml", &worker_topology(&names, &kinds, Some("127.0.109.1:8080")));
    let config_b = dir.write("b.toml", &worker_topology(&names, &kinds, None));
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.109.100:4318"), ("OTEL_BSP_SCHEDULE_DELAY", "100")];
    let a = Node::start_with(names[0], &config_a, &[], &env);
    let b = Node::start_with(names[1], &config_b, &[], &env);
    for n in [&a, &b] {
        n.wait_members(&names, FORM);
        n.wait_log("traces go to http://127.0.109.100:4318/v1/traces", FORM);
    }
    // One instance on each node.
    let on = |node: &str| (0..50).map(|i| format!("p{i}")).find(|k| start_worker(names[0], "probe", k).1.ends_with(node)).expect("a key owned by each node");
    let (far, near) = (on(names[1]), on(names[0]));

    let root = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = "00f067aa0ba902b7";
    let traceparent = format!("00-{root}-{caller}-01");
    let (status, body) = http_with(
        "127.0.109.1:8080",
        "POST",
        &format!("/v1/workers/probe/{far}/call"),
        &[("traceparent", &traceparent)],
        format!("call probe/{near} whoami").as_bytes(),
    );
    assert_eq!((status, body.as_str()), (200, format!("probe/{near}@{}", names[0]).as_str()));

    let gateway = find(&spans, root, names[0], "POST /v1/workers/{kind}/{key}/call", caller);
    assert_eq!((gateway.kind, gateway.worker.as_str()), (SpanKind::Server, format!("probe/{far}").as_str()));
    let to_b = find(&spans, root, names[0], "call probe", &gateway.span);
    assert_eq!((to_b.kind, to_b.peer.as_str()), (SpanKind::Client, names[1]));
    let on_b = find(&spans, root, names[1], "handle_call probe", &to_b.span);
    assert_eq!((on_b.kind, on_b.worker.as_str()), (SpanKind::Server, format!("probe/{far}").as_str()));
    let back = find(&spans, root, names[1], "call probe", &on_b.span);
    assert_eq!((back.kind, back.peer.as_str()), (SpanKind::Client, names[0]));
    let on_a = find(&spans, root, names[0], "handle_call probe", &back.span);
    assert_eq!((on_a.kind, on_a.worker.as_str()), (SpanKind::Server, format!("probe/{near}").as_str()));
    assert!(![&gateway, &to_b, &on_b, &back, &on_a].iter().any(|s| s.failed), "{:#?}", spans.lock().unwrap());

    // A worker's outbound HTTP request is a client span of its call, and the server gets
    // the trace in a `traceparent` header.
    let out = Launch::test().env(&[("TRACEPARENT", "00-33333333333333333333333333333333-4444444444444444-01")]).cli(&[
        "call",
        "--node",
        names[0],
        &format!("probe/{far}"),
        "http-post http://127.0.109.102:8089/hook hi",
    ]);
    assert_eq!(output_text(&out).trim(), "200 ok", "{}", output_text(&out));
    let entry = find(&spans, "33333333333333333333333333333333", names[0], "call", "4444444444444444");
    let hop = find(&spans, "33333333333333333333333333333333", names[0], "call probe", &entry.span);
    let handled = find(&spans, "33333333333333333333333333333333", names[1], "handle_call probe", &hop.span);
    let post = find(&spans, "33333333333333333333333333333333", names[1], "POST", &handled.span);
    assert_eq!(post.kind, SpanKind::Client);
    let seen = server.lock().unwrap().clone();
    assert_eq!(seen, [format!("00-33333333333333333333333333333333-{}-01", post.span)], "the server's traceparent names the POST span");

    // The CLI's call joins the trace its TRACEPARENT names; a failing call's spans say so.
    let script = "11111111111111111111111111111111";
    let out = Launch::test().env(&[("TRACEPARENT", &format!("00-{script}-2222222222222222-01"))]).cli(&[
        "call",
        "--node",
        names[1],
        &format!("probe/{near}"),
        "crash",
    ]);
    assert!(!out.status.success(), "the crash is the caller's error");
    let cli = find(&spans, script, names[1], "call", "2222222222222222");
    assert!(cli.kind == SpanKind::Server && cli.failed, "{cli:?}");
    let hop = find(&spans, script, names[1], "call probe", &cli.span);
    let crashed = find(&spans, script, names[0], "handle_call probe", &hop.span);
    assert!(crashed.failed, "{crashed:?}");
}

/// Tracing stays off while `OTEL_SDK_DISABLED=true`, even with an endpoint: no exporter
/// (no line saying where traces go), and nothing at the collector once the node has
/// stopped (a running exporter sends its last spans when its node stops).
#[test]
fn disabled_tracing_exports_nothing() {
    let dir = TempDir::new("traces-off");
    let spans = collector("127.0.109.101:4318");
    let names = ["a@127.0.109.3"];
    let config = dir.write("t.toml", &worker_topology(&names, &[("probe", "worker_probe.wasm", "activate_on_call = true")], None));
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.109.101:4318"), ("OTEL_SDK_DISABLED", "true"), ("OTEL_BSP_SCHEDULE_DELAY", "100")];
    let mut a = Node::start_with(names[0], &config, &[], &env);
    a.wait_members(&names, FORM);
    assert_eq!(call(names[0], "probe/p1", "hello"), (true, "hello".to_string()));
    a.signal(libc::SIGTERM);
    assert_eq!(a.wait_exit(FORM), Some(0));
    assert_eq!(a.count("traces go to"), 0, "{}", a.log());
    assert!(spans.lock().unwrap().is_empty(), "{:#?}", spans.lock().unwrap());
}
