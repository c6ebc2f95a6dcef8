//! Figures of the HTTP port: the gateway against nginx under wrk, and calls out to
//! HTTP servers from workers.

use crate::workers::remote_call;
use crate::*;

/// What wrk measured: requests per second, and the 99th percentile of latency in µs.
fn wrk(url: &str, connections: usize, seconds: u64, script: &Path) -> (f64, f64) {
    let threads = connections.min(2);
    let out = Command::new("wrk")
        .args(["-t", &threads.to_string(), "-c", &connections.to_string(), "-d", &format!("{seconds}s"), "--latency", "-s"])
        .arg(script)
        .arg(url)
        .output()
        .unwrap_or_else(|e| panic!("cannot run wrk ({e}): ./dev bench installs it"));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "wrk {url}: {text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(!text.contains("Non-2xx"), "wrk {url} got errors:\n{text}");
    let rps = text.lines().find_map(|l| l.strip_prefix("Requests/sec:")).and_then(|v| v.trim().parse::<f64>().ok()).unwrap_or_else(|| panic!("{text}"));
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| {
            let v = v.trim();
            let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
            let n: f64 = num.parse().unwrap_or(f64::NAN);
            match unit {
                "us" => n,
                "ms" => n * 1e3,
                "s" => n * 1e6,
                _ => f64::NAN,
            }
        })
        .unwrap_or(f64::NAN);
    (rps, p99)
}

/// The worker gateway on keep-alive connections against nginx's `return 200` on the same
/// machine in the same run: requests per second at 16 connections and the p99 at one, for
/// a call answered by a worker on the node itself and one on another node.
pub async fn gateway(args: &Args) -> Value {
    let names = ["g1@127.0.39.1".to_string(), "g2@127.0.39.2".to_string()];
    let base = args.static_topology(&names);
    let counter = args.plugin("worker_counter.wasm");
    let probe = args.plugin("worker_probe.wasm");
    let nodes: Vec<Node> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let http = format!("\n[http]\nlisten = \"127.0.39.{}:8080\"\ngateway = true\n", i + 1);
            let workers = format!("[worker.counter]\ncomponent = \"{}\"\n[worker.probe]\ncomponent = \"{}\"\n", counter.display(), probe.display());
            let config = args.config(&format!("gateway{i}"), &format!("{base}\n{workers}{http}"));
            args.node(n, &config, false)
        })
        .collect();
    for n in &nodes {
        n.wait_line("members (2):", Duration::from_secs(30));
    }
    // A counter on g1 and one on g2, both called through g1's gateway.
    let (mut local, mut remote) = (None, None);
    for i in 0..200 {
        let (status, body) = http("127.0.39.1:8080", "POST", &format!("/v1/workers/counter/k{i}"), b"");
        assert_eq!(status, 201, "{body}");
        let on = serde_json::from_str::<Value>(&body).unwrap()["node"].as_str().unwrap().to_string();
        if on == names[0] && local.is_none() {
            local = Some(format!("k{i}"));
        } else if on == names[1] && remote.is_none() {
            remote = Some(format!("k{i}"));
        }
        if local.is_some() && remote.is_some() {
            break;
        }
    }
    let (local, remote) = (local.unwrap(), remote.unwrap());
    // nginx, one worker process, answering 200 to everything.
    let dir = args.tmp.0.join("nginx");
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nworker_processes 1;\nuser root;\npid {0}/nginx.pid;\nerror_log {0}/error.log;\nevents {{ worker_connections 1024; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {0};\n  server {{ listen 127.0.39.9:8080; location / {{ return 200 \"ok\"; }} }}\n}}\n",
            dir.display()
        ),
    )
    .unwrap();
    let mut nginx =
        Command::new("nginx").arg("-c").arg(&conf).arg("-p").arg(&dir).spawn().unwrap_or_else(|e| panic!("cannot run nginx ({e}): ./dev bench installs it"));
    let start = Instant::now();
    while std::net::TcpStream::connect("127.0.39.9:8080").is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "nginx did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let script = dir.join("increment.lua");
    std::fs::write(&script, "wrk.method = \"POST\"\nwrk.body = \"increment\"\n").unwrap();
    let secs = if args.quick { 3 } else { 10 };
    let url = |key: &str| format!("http://127.0.39.1:8080/v1/workers/counter/{key}/call");
    // Warm up each, then alternate: nginx, local, remote.
    for u in ["http://127.0.39.9:8080/".to_string(), url(&local), url(&remote)] {
        wrk(&u, 16, 1, &script);
    }
    let (nginx16, _) = wrk("http://127.0.39.9:8080/", 16, secs, &script);
    let (local16, _) = wrk(&url(&local), 16, secs, &script);
    let (remote16, _) = wrk(&url(&remote), 16, secs, &script);
    let (_, nginx_p99) = wrk("http://127.0.39.9:8080/", 1, secs, &script);
    let (_, local_p99) = wrk(&url(&local), 1, secs, &script);
    let (_, remote_p99) = wrk(&url(&remote), 1, secs, &script);
    // SIGTERM: nginx's master stops its worker too (SIGKILL left the worker running,
    // holding the bench's stdout open).
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(nginx.id() as i32, libc::SIGTERM) };
    let _ = nginx.wait();
    // The allowance for a gateway call that crosses to another node: nginx's p99 plus
    // three remote calls between these two nodes, measured now (their p99).
    let ctl = client("benchctl@127.0.39.8", &names[0]).await;
    let (_, call_p99) = remote_call(&ctl, &names, if args.quick { 20_000 } else { 100_000 }).await;
    drop(nodes);
    json!({
        "nginx_return_200_c16_per_s": nginx16,
        "gateway_local_call_c16_per_s": local16,
        "gateway_remote_call_c16_per_s": remote16,
        "gateway_local_over_nginx": (local16 / nginx16 * 100.0).round() / 100.0,
        "gateway_remote_over_nginx": (remote16 / nginx16 * 100.0).round() / 100.0,
        "nginx_return_200_c1_p99_us": nginx_p99,
        "gateway_local_call_c1_p99_us": local_p99,
        "gateway_remote_call_c1_p99_us": remote_p99,
        "worker_remote_call_p99_us": call_p99,
        "gateway_remote_c1_p99_allowance_us": nginx_p99 + 3.0 * call_p99,
    })
}

/// A local HTTP server for the outbound figure: answers every request `200 ok` and
/// closes the connection (what the worker's client and the host's both expect: one
/// connection per request).
async fn ok_server(addr: &str, keep_alive: bool) {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new().keep_alive(keep_alive).serve_connection(hyper_util::rt::TokioIo::new(conn), service).await;
            });
        }
    });
}

/// An HTTP/1.1 connection to `addr` (hyper's client), driven on a task of its own.
async fn http_connection(addr: &str) -> hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).ok();
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await.expect("handshake");
    tokio::spawn(conn);
    sender
}

/// `n` GETs of `http://{addr}/` by the host itself, each timed with its body read to the
/// end: on one kept-alive connection (`kept`, made before the first is timed), or on a
/// new connection each (its connecting timed with it).
async fn host_gets(addr: &str, n: usize, kept: bool) -> Vec<f64> {
    use http_body_util::BodyExt;
    let mut one = if kept { Some(http_connection(addr).await) } else { None };
    let mut ns = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let mut fresh;
        let sender = match one.as_mut() {
            Some(s) => s,
            None => {
                fresh = http_connection(addr).await;
                &mut fresh
            }
        };
        sender.ready().await.expect("ready");
        let request = hyper::Request::get("/").header("host", addr).body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap();
        let response = sender.send_request(request).await.expect("send");
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.expect("body");
        ns.push(t.elapsed().as_nanos() as f64);
    }
    ns
}

/// A worker's `n` GETs of `url` (`http-bench`, timed in the guest): median and p99, µs.
async fn worker_gets(ctl: &Peer, n: usize, url: &str) -> (f64, f64) {
    let v = ask(ctl, json!({"op":"call","kind":"probe","key":"o","msg":format!("http-bench {n} {url}"),"timeout_ms":600000})).await;
    let reply = v["reply"].as_str().unwrap_or_else(|| panic!("http-bench failed: {v}")).to_string();
    let mut it = reply.split_whitespace().map(|x| x.parse::<f64>().unwrap() / 1000.0);
    (it.next().unwrap(), it.next().unwrap())
}

/// Outbound HTTP: N GETs of a local server by a worker (`wasi:http`, timed in the
/// guest) against the same GETs made by the host directly (hyper's client, timed in the
/// bench): to a server that closes each connection (a connection per request both
/// ways), then to one that keeps them (the worker's kind reuses its pooled connection,
/// the host one connection).
pub async fn outbound(args: &Args) -> Value {
    let (server, kept) = ("127.0.31.9:8089", "127.0.31.9:8090");
    ok_server(server, false).await;
    ok_server(kept, true).await;
    let names = ["o1@127.0.31.1".to_string()];
    let kinds = format!(
        "{}\n[worker.probe]\ncomponent = \"{}\"\nallowed_outbound_hosts = [\"http://{server}\", \"http://{kept}\"]\n",
        args.static_topology(&names),
        args.plugin("worker_probe.wasm").display()
    );
    let config = args.config("outbound", &kinds);
    let node = args.node(&names[0], &config, false);
    node.wait_line("listening on", Duration::from_secs(60));
    let ctl = client("benchctl@127.0.31.8", &names[0]).await;
    let n = if args.quick { 500 } else { 2_000 };
    let mut out = serde_json::Map::new();
    let v = ask(&ctl, json!({"op": "start", "kind": "probe", "key": "o"})).await;
    assert!(v["started"].is_string(), "start probe/o: {v}");
    for (addr, label, keep) in [(server, "", false), (kept, "_kept", true)] {
        let url = format!("http://{addr}/");
        // Alternated, two rounds each, after a warm-up of each.
        worker_gets(&ctl, 200, &url).await;
        host_gets(addr, 200, keep).await;
        for round in 0..2 {
            let (median, p99) = worker_gets(&ctl, n, &url).await;
            out.insert(format!("worker_get{label}_median_us_round{round}"), json!(median));
            out.insert(format!("worker_get{label}_p99_us_round{round}"), json!(p99));
            let mut ns = host_gets(addr, n, keep).await;
            ns.sort_by(|a, b| a.total_cmp(b));
            out.insert(format!("host_get{label}_median_us_round{round}"), json!(ns[n / 2] / 1000.0));
            out.insert(format!("host_get{label}_p99_us_round{round}"), json!(ns[n * 99 / 100] / 1000.0));
        }
    }
    drop(node);
    Value::Object(out)
}
