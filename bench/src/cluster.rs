//! Figures of the cluster as a whole: forming a mesh, noticing a node down, idle
//! memory, handing names over on SIGTERM and restarting them after kill -9, failover.

use crate::*;

/// Launch to full mesh, 2 to 20 nodes.
pub async fn mesh(args: &Args) -> Value {
    let mut out = serde_json::Map::new();
    for n in [2usize, 5, 10, 20] {
        let reps = if args.quick { 1 } else { 5 };
        let mut times = Vec::new();
        for rep in 0..reps {
            let names: Vec<String> = (1..=n).map(|i| format!("m{i}@127.0.32.{i}")).collect();
            let config = args.config(&format!("mesh{n}-{rep}"), &args.static_topology(&names));
            let t = Instant::now();
            let nodes: Vec<Node> = names.iter().map(|name| args.node(name, &config, false)).collect();
            let needle = format!("members ({n}):");
            let mut last = t;
            for node in &nodes {
                let at = node.wait_line(&needle, Duration::from_secs(30));
                last = last.max(at);
            }
            times.push(last - t);
            drop(nodes);
        }
        times.sort();
        out.insert(format!("launch_to_mesh_{n}_nodes_ms"), json!(times[times.len() / 2].as_secs_f64() * 1e3));
    }
    Value::Object(out)
}

/// Time until a watcher hears a node is down after SIGKILL and SIGSTOP.
pub async fn down(args: &Args) -> Value {
    let names = vec!["d1@127.0.33.1".to_string(), "d2@127.0.33.2".to_string()];
    let config = args.config("down", &args.static_topology(&names));
    let a = args.node(&names[0], &config, false);
    let mut out = serde_json::Map::new();
    for (label, sig, reps) in [("sigkill", libc::SIGKILL, 5), ("sigstop", libc::SIGSTOP, 3)] {
        let mut times = Vec::new();
        for _ in 0..if args.quick { 1 } else { reps } {
            let b = args.node(&names[1], &config, false);
            b.wait_line("members (2):", Duration::from_secs(10));
            let watcher = client("watch@127.0.33.9", &names[0]).await;
            let mut events = watcher.subscribe(Service::Control, Bytes::from_static(br#"{"op":"watch"}"#));
            events.recv().await.expect("snapshot");
            let t = Instant::now();
            b.signal(sig);
            loop {
                let Some(Frame::Reply { body, .. }) = events.recv().await else { panic!("watch ended") };
                let v: Value = serde_json::from_slice(&body).unwrap();
                if v["event"] == "down" && v["node"] == names[1].as_str() {
                    break;
                }
            }
            times.push(t.elapsed());
            watcher.close(wasmnode::dist::DownReason::LocalShutdown);
            drop(b);
        }
        times.sort();
        out.insert(format!("node_down_after_{label}_ms"), json!(times[times.len() / 2].as_secs_f64() * 1e3));
    }
    drop(a);
    Value::Object(out)
}

/// Resident memory of an idle node in a cluster of three.
pub async fn rss(args: &Args) -> Value {
    let names: Vec<String> = (1..=3).map(|i| format!("r{i}@127.0.34.{i}")).collect();
    let config = args.config("rss", &args.static_topology(&names));
    let nodes: Vec<Node> = names.iter().map(|n| args.node(n, &config, false)).collect();
    for n in &nodes {
        n.wait_line("members (3):", Duration::from_secs(10));
    }
    // Idle means: formed, then a few heartbeat intervals and one poll later.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut rss: Vec<f64> = nodes.iter().map(Node::rss_mib).collect();
    rss.sort_by(|a, b| a.partial_cmp(b).unwrap());
    json!({ "idle_node_rss_mib": rss[1] })
}

/// All names served again after SIGTERM, and restarted after kill -9, of the node
/// running them.
pub async fn handoff(args: &Args) -> Value {
    let mut out = serde_json::Map::new();
    for n in [1_000usize, 10_000] {
        let runs = if args.quick { 1 } else { 3 };
        let (mut term, mut kill) = (Vec::new(), Vec::new());
        for run in 0..runs {
            let (t, k) = handoff_run(args, n, run).await;
            term.push(t);
            kill.push(k);
        }
        term.sort();
        kill.sort();
        out.insert(format!("sigterm_all_{n}_serving_again_ms"), json!(term[term.len() / 2].as_secs_f64() * 1e3));
        out.insert(format!("sigkill_all_{n}_restarted_ms"), json!(kill[kill.len() / 2].as_secs_f64() * 1e3));
    }
    Value::Object(out)
}

/// One run of the handoff figure: three nodes, `n` counters; SIGTERM one node and time
/// until it exits (every handoff acknowledged: each moved instance has run `init` on its
/// new owner); then SIGKILL another and time until every instance runs again.
async fn handoff_run(args: &Args, n: usize, run: usize) -> (Duration, Duration) {
    let names: Vec<String> = (1..=3).map(|i| format!("h{i}@127.0.37.{i}")).collect();
    let counter = args.plugin("worker_counter.wasm");
    let base = args.static_topology(&names);
    let config = args.config(
        &format!("handoff-{n}-{run}"),
        &format!("[node]\nhandoff_deadline_ms = 60000\n\n{base}\n[worker.counter]\ncomponent = \"{}\"\n", counter.display()),
    );
    let mut nodes: Vec<Node> = names.iter().map(|name| args.node(name, &config, false)).collect();
    for node in &nodes {
        node.wait_line("members (3):", Duration::from_secs(30));
    }
    let ctl = client(&format!("handoffctl{run}@127.0.37.9"), &names[0]).await;
    let ask = |v: Value| {
        let ctl = ctl.clone();
        async move {
            let body = ctl.request(Service::Control, Bytes::from(v.to_string()), Duration::from_secs(60)).await.expect("control request");
            serde_json::from_slice::<Value>(&body).unwrap()
        }
    };
    for i in 0..n {
        let v = ask(json!({"op": "start", "kind": "counter", "key": format!("k{i}")})).await;
        assert!(v["started"].is_string(), "start: {v}");
    }
    let total = |v: &Value| v["nodes"].as_array().map(|a| a.iter().map(|n| n["workers"].as_array().map(|w| w.len()).unwrap_or(0)).sum::<usize>()).unwrap_or(0);
    assert_eq!(total(&ask(json!({"op": "workers"})).await), n);

    // SIGTERM node 3: it exits once every one of its instances has been handed over.
    let t = Instant::now();
    nodes[2].signal(libc::SIGTERM);
    nodes[2].wait_exit(Duration::from_secs(600));
    let term = t.elapsed();
    assert_eq!(total(&ask(json!({"op": "workers"})).await), n, "every instance runs after the handoff");

    // SIGKILL node 2: its instances are restarted by their new owners.
    let t = Instant::now();
    nodes[1].signal(libc::SIGKILL);
    loop {
        let v = ask(json!({"op": "workers"})).await;
        if v["nodes"].as_array().map(|a| a.len()) == Some(1) && total(&v) == n {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(120), "instances were not all restarted: {}", total(&v));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let kill = t.elapsed();
    nodes.clear();
    (term, kill)
}

/// Durable kinds around a kill -9, on three nodes (replicas = 1): the bytes a call
/// copies to the replica (the Rust and the Python counter, a worker holding 10 MiB), how
/// long after a kill -9 of its node a name holding 10 MiB answers again (its state
/// restored from the replica's copy), and how long each of 1,000 durable names on the
/// killed node takes to answer its first call again.
pub async fn failover(args: &Args) -> Value {
    let names: Vec<String> = (1..=3).map(|i| format!("f{i}@127.0.38.{i}")).collect();
    let base = args.static_topology(&names);
    let durable = "durability = \"replicated\"";
    let kinds = format!(
        "[worker.counter]\ncomponent = \"{}\"\n{durable}\n[worker.counterpy]\ncomponent = \"{}\"\n{durable}\n\
         [worker.big]\ncomponent = \"{}\"\n{durable}\nmemory_limit_mb = 256\ncall_timeout_ms = 20000\n",
        args.plugin("worker_counter.wasm").display(),
        args.plugin("worker_counter_py.wasm").display(),
        args.plugin("worker_probe.wasm").display(),
    );
    let config = |i: usize| args.config(&format!("failover{i}"), &format!("{base}\n{kinds}\n[http]\nlisten = \"127.0.38.{}:9090\"\n", i + 1));
    let mut nodes: Vec<Node> = (0..3).map(|i| args.node(&names[i], &config(i), false)).collect();
    for n in &nodes {
        n.wait_line("members (3):", Duration::from_secs(120));
    }
    let ctl = client("failoverctl@127.0.38.9", &names[0]).await;
    let metrics = |node: usize| format!("127.0.38.{}:9090", node + 1);
    let mut out = serde_json::Map::new();

    // Bytes per call: names on node 1 (index 1), called from node 0.
    let calls = if args.quick { 200 } else { 1_000 };
    for (kind, label, msg) in [("counter", "rust_counter", "increment"), ("counterpy", "python_counter", "increment"), ("big", "10mib_worker", "slow-add 0")] {
        // Each call of the 10 MiB worker snapshots and compares 10 MiB: fewer of them.
        let calls = if kind == "big" { calls / 10 } else { calls };
        let key = start_on(&ctl, kind, "bytes", &names[1], 1).await.remove(0);
        if kind == "big" {
            let v = ask(&ctl, json!({"op": "call", "kind": kind, "key": key, "msg": "ballast 10", "timeout_ms": 60000})).await;
            assert_eq!(v["reply"], "ok", "{v}");
        }
        let before = metric(&metrics(1), "wasmnode_replicated_bytes");
        for _ in 0..calls {
            let v = ask(&ctl, json!({"op": "call", "kind": kind, "key": key, "msg": msg})).await;
            assert!(v["reply"].is_string(), "{kind}/{key}: {v}");
        }
        let after = metric(&metrics(1), "wasmnode_replicated_bytes");
        out.insert(format!("durable_{label}_replicated_bytes_per_call"), json!((after - before) / calls as f64));
    }

    // A 10 MiB state restored: kill -9 of the node running it, to its first answer.
    let key = start_on(&ctl, "big", "restore", &names[2], 1).await.remove(0);
    let v = ask(&ctl, json!({"op": "call", "kind": "big", "key": key, "msg": "ballast 10", "timeout_ms": 60000})).await;
    assert_eq!(v["reply"], "ok", "{v}");
    let t = Instant::now();
    nodes[2].signal(libc::SIGKILL);
    loop {
        let v = ask(&ctl, json!({"op": "call", "kind": "big", "key": key, "msg": "count", "timeout_ms": 2000})).await;
        if v["reply"].is_string() {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "big/{key} did not come back: {v}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    out.insert("durable_10mib_kill9_to_first_call_ms".into(), json!(t.elapsed().as_secs_f64() * 1e3));
    // The restore itself, as the node that took the name over timed it: a new instance,
    // and its `init` with the 10 MiB copy.
    let line = format!("restored big/{key} from ");
    let restored =
        nodes[..2].iter().find_map(|n| n.log().lines().find(|l| l.contains(&line)).map(str::to_string)).unwrap_or_else(|| panic!("no node logged {line:?}"));
    let ms: f64 = restored.split(" in ").last().and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{restored}"));
    out.insert("durable_10mib_restore_ms".into(), json!(ms));
    nodes[2].restart();
    for n in &nodes {
        n.wait_line("members (3):", Duration::from_secs(60));
    }
    // Every name copied to its replicas again (the restarted node among them) before the
    // next kill.
    let settled = Instant::now();
    loop {
        let v = ask(&ctl, json!({"op": "workers"})).await;
        let behind =
            v["durable"].as_array().into_iter().flatten().filter(|d| d["replicas"].as_array().is_none_or(|r| r.iter().all(|r| r["current"] != true))).count();
        if behind == 0 {
            break;
        }
        assert!(settled.elapsed() < Duration::from_secs(60), "{behind} durable names without a current replica");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 1,000 durable names on node 2, killed: each name's first answer after the kill.
    let n = if args.quick { 200 } else { 1_000 };
    let keys = start_on(&ctl, "counter", "f", &names[2], n).await;
    let t = Instant::now();
    nodes[2].signal(libc::SIGKILL);
    let waits = keys.into_iter().map(|key| {
        let ctl = ctl.clone();
        async move {
            loop {
                let v = ask(&ctl, json!({"op": "call", "kind": "counter", "key": key, "msg": "value", "timeout_ms": 2000})).await;
                if v["reply"].is_string() {
                    return t.elapsed();
                }
                assert!(t.elapsed() < Duration::from_secs(60), "counter/{key} did not come back: {v}");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
    let mut times = futures_util::future::join_all(waits).await;
    times.sort();
    out.insert(format!("durable_failover_{n}_names_median_ms"), json!(percentile(&times, 0.5) / 1e3));
    out.insert(format!("durable_failover_{n}_names_p99_ms"), json!(percentile(&times, 0.99) / 1e3));
    drop(nodes);
    Value::Object(out)
}
