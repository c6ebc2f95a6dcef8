//! Workers and the registry, on real node processes: start, call and already-started
//! from every node, a dead owner, trap isolation, busy guests and heartbeats, deadlines
//! that count host calls doing a guest's work, concurrent starts, starts and
//! activations by a guest, member events and timers in `handle-info`, bounded
//! mailboxes, and the HTTP gateway.

use std::time::{Duration, Instant};

use wasmnode_testkit::*;

const FORM: Duration = Duration::from_secs(10);

#[test]
fn start_call_and_already_started_from_every_node() {
    let (_dir, names, _nodes) = three_nodes("w-basic", 60, &[("counter", "worker_counter.wasm", "")], false);
    let (ok, out) = start_worker(&names[0], "counter", "c1");
    assert!(ok, "{out}");
    let owner = started_on(&out);
    assert!(names.contains(&owner), "{out}");
    for n in &names {
        let (ok, out) = start_worker(n, "counter", "c1");
        assert!(!ok);
        assert!(out.contains(&format!("counter/c1: already_started on {owner}")), "{out}");
    }
    for n in &names {
        assert!(call(n, "counter/c1", "increment").0);
    }
    for n in &names {
        assert_eq!(call(n, "counter/c1", "value"), (true, "3".to_string()), "through {n}");
    }
    let (ok, out) = call(&names[1], "counter/none", "value");
    assert!(!ok && out.contains("counter/none: not_found"), "{out}");
    // `workers` shows it once, on its owner.
    let holders: Vec<String> = workers_by_node(&names[2]).into_iter().filter(|(_, w)| w.iter().any(|w| w == "counter/c1")).map(|(n, _)| n).collect();
    assert_eq!(holders, vec![owner.clone()]);
}

#[test]
fn a_guest_starts_workers_and_activates_them_by_calling() {
    // A guest's `cluster.start`, and a guest's call that starts its target
    // (`activate_on_call`), the guest's own node included: both run the new instance's
    // instantiation and `init` on a task of their own, not on the calling guest's fiber.
    let kinds = [("probe", "worker_probe.wasm", ""), ("counter", "worker_counter.wasm", ""), ("order", "worker_order.wasm", "activate_on_call = true")];
    let (_dir, names, _nodes) = three_nodes("w-guest-start", 79, &kinds, false);
    let (ok, out) = start_worker(&names[0], "probe", "g");
    assert!(ok, "{out}");
    let home = started_on(&out);

    let (ok, out) = call(&names[1], "probe/g", "start counter/c9 41");
    assert!(ok && out.starts_with("started on "), "{out}");
    let counter_node = started_on(&out);
    assert!(names.contains(&counter_node), "{out}");
    assert_eq!(call(&names[2], "probe/g", "start counter/c9 7"), (true, format!("error: already-started on {counter_node}")));
    assert_eq!(call(&names[2], "counter/c9", "increment"), (true, "42".to_string()), "started with the guest's args");
    let (ok, out) = call(&names[0], "probe/g", "start nokind/x");
    assert!(ok && out.starts_with("error: unknown-kind nokind"), "{out}");

    for i in 0..10 {
        let reply = call(&names[i % 3], "probe/g", &format!("call order/k{i} {{\"add\":[{i}]}}"));
        assert_eq!(reply, (true, format!("[{i}]")), "order/k{i}, activated by the guest");
    }
    let on_home: Vec<String> =
        workers_by_node(&names[1]).into_iter().filter(|(n, _)| *n == home).flat_map(|(_, w)| w).filter(|w| w.starts_with("order/")).collect();
    assert!(!on_home.is_empty(), "no order/kN runs on the guest's own node {home}: choose keys so that one does");
}

#[test]
fn a_call_whose_owner_died_fails_within_its_timeout() {
    // Temporary: not restarted elsewhere when its node dies (that is tests/all/handoff.rs).
    let (_dir, names, nodes) = three_nodes("w-dead", 61, &[("probe", "worker_probe.wasm", "restart = \"temporary\"")], false);
    let (ok, out) = start_worker(&names[0], "probe", "p");
    assert!(ok, "{out}");
    let owner = started_on(&out);
    let owner_node = nodes.iter().find(|n| n.name == owner).unwrap();
    let other = names.iter().find(|n| **n != owner).unwrap();
    assert_eq!(call(other, "probe/p", "hello"), (true, "hello".to_string()));

    // A hung owner: the call gives up at its timeout.
    owner_node.signal(libc::SIGSTOP);
    let t = Instant::now();
    let out = cli(&["call", "--node", other, "probe/p", "hello", "--timeout-ms", "800"], COOKIE);
    let took = t.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("timeout"), "{err}");
    assert!(took >= Duration::from_millis(800) && took < Duration::from_millis(2500), "answered after {took:?}");

    // A dead owner: an error at once, well within the timeout.
    owner_node.signal(libc::SIGKILL);
    let t = Instant::now();
    let out = cli(&["call", "--node", other, "probe/p", "hello", "--timeout-ms", "3000"], COOKIE);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && (err.contains("unavailable") || err.contains("not_found")), "{err}");
    assert!(t.elapsed() < Duration::from_secs(3), "answered after {:?}", t.elapsed());
}

#[test]
fn a_trap_stops_only_that_instance_and_fails_its_callers() {
    let kinds = [("probe", "worker_probe.wasm", "call_timeout_ms = 500\nmemory_limit_mb = 16")];
    let (_dir, names, nodes) = three_nodes("w-trap", 62, &kinds, false);
    for key in ["p1", "p2", "p3"] {
        assert!(start_worker(&names[0], "probe", key).0);
    }
    // The trapping message is answered `failed`; the instance is gone; others go on.
    let (ok, out) = call(&names[1], "probe/p1", "crash");
    // It says which trap (not only that the guest has a backtrace).
    assert!(!ok && out.contains("failed") && out.contains("trapped: wasm trap: wasm `unreachable` instruction executed"), "{out}");
    wait_until(FORM, "probe/p1 to be gone", || call(&names[2], "probe/p1", "hello").1.contains("not_found"), String::new);
    assert_eq!(call(&names[2], "probe/p2", "hello"), (true, "hello".to_string()));
    assert!(start_worker(&names[1], "probe", "p1").0, "the name can start again");
    // A memory bomb is stopped at the instance's cap.
    let (ok, out) = call(&names[0], "probe/p2", "bomb");
    assert!(!ok && out.contains("exceeded its memory limit of 16 MiB"), "{out}");

    // A caller queued behind a message that blows its deadline gets an error too.
    let (_, out) = start_worker(&names[0], "probe", "p3");
    let owner = nodes.iter().find(|n| n.name == started_on(&out.replace("already_started on ", "x "))).unwrap();
    let spinner = {
        let node = names[0].clone();
        std::thread::spawn(move || call(&node, "probe/p3", "spin"))
    };
    owner.wait_log("spinning plugin=\"worker probe/p3\"", FORM);
    // Queued callers on the owner and on another node (whose call waits in the owner's
    // mailbox with its reply owed over the connection) both hear that it stopped.
    let other = names.iter().find(|n| **n != owner.name).unwrap().clone();
    let queued: Vec<_> = [owner.name.clone(), other].into_iter().map(|node| std::thread::spawn(move || call(&node, "probe/p3", "hello"))).collect();
    for q in queued {
        let (ok, out) = q.join().unwrap();
        assert!(!ok && out.contains("probe/p3 stopped"), "{out}");
    }
    let (ok, spun) = spinner.join().unwrap();
    assert!(!ok && spun.contains("exceeded its deadline of 500 ms"), "{spun}");
    owner.wait_log("worker probe/p3 trapped: exceeded its deadline of 500 ms; instance stopped", FORM);
    // The node itself never noticed.
    for n in &nodes {
        assert_eq!(n.count("node down"), 0, "{}", n.log());
    }
}

/// Guests share the node's threads with its networking: more of them computing at once
/// than the node has threads, for twice the heartbeat timeout, must not cost a heartbeat
/// (each yields its thread at every epoch tick), and the node keeps serving calls.
#[test]
fn guests_computing_on_every_thread_do_not_stop_heartbeats() {
    let kinds = [("probe", "worker_probe.wasm", "call_timeout_ms = 3000")];
    let (_dir, names, nodes) = three_nodes("w-busy", 69, &kinds, false);
    // Twice as many spinning probes on one node as it has threads (one per CPU), and one
    // more there to call while they spin; 3 × that many keys give one node enough.
    let spinning = 2 * std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let mut by_node: std::collections::HashMap<String, Vec<String>> = Default::default();
    for i in 0..3 * (spinning + 1) {
        let key = format!("b{i}");
        let (ok, out) = start_worker(&names[0], "probe", &key);
        assert!(ok, "{out}");
        by_node.entry(started_on(&out)).or_default().push(key);
    }
    let (busy, keys) = by_node.into_iter().max_by_key(|(_, k)| k.len()).unwrap();
    assert!(keys.len() > spinning, "{busy} owns only {keys:?}");
    let owner = nodes.iter().find(|n| n.name == busy).unwrap();
    let caller = names.iter().find(|n| **n != busy).unwrap().clone();
    let spinners: Vec<_> = keys[..spinning]
        .iter()
        .map(|key| {
            // Two guests a thread: 3 s of each one's own time take about 6 s.
            let (node, name) = (caller.clone(), format!("probe/{key}"));
            std::thread::spawn(move || {
                let t = Instant::now();
                let out = cli(&["call", "--node", &node, &name, "spin", "--timeout-ms", "20000"], COOKIE);
                (out.status.success(), output_text(&out), t.elapsed())
            })
        })
        .collect();
    owner.wait_log_count("spinning plugin=\"worker probe/", spinning, FORM);
    // While they all spin, one more there answers.
    let t = Instant::now();
    assert_eq!(call(&caller, &format!("probe/{}", keys[spinning]), "hello"), (true, "hello".to_string()));
    let answered = t.elapsed();
    for s in spinners {
        let (ok, out, took) = s.join().unwrap();
        assert!(!ok && out.contains("exceeded its deadline of 3000 ms"), "{out}");
        // Sharing a thread with another, each is paused half the time: the pauses are
        // not its own time, so its 3 s take about 6.
        assert!(took > Duration::from_millis(4500), "stopped after {took:?}: its pauses counted against its deadline");
    }
    assert!(answered < Duration::from_secs(2), "a call during the spin took {answered:?}");
    // About 6 s of spinning on every thread, heartbeat timeout 1.5 s: no node down.
    for n in &nodes {
        assert_eq!(n.count("node down"), 0, "{}", n.log());
    }
}

/// Time a guest spends in host calls that do the work for it, rather than wait, is its
/// own: a guest that only asks the host for random bytes, 64 KiB at a time, meets its
/// deadline as a guest that computes does. A sleep is still a wait, not its own time.
/// (Before, every host call was left out of the deadline, so this guest ran on.)
#[test]
fn a_worker_whose_time_goes_to_host_calls_meets_its_deadline() {
    let dir = TempDir::new("w-host-spin");
    let name = "a@127.0.125.1";
    let kinds = [("probe", "worker_probe.wasm", "activate_on_call = true\ncall_timeout_ms = 1000")];
    let node = Node::start(name, &dir.write("t.toml", &worker_topology(&[name], &kinds, None)));
    node.wait_members(&[name], FORM);
    let t = Instant::now();
    let (ok, out) = call(name, "probe/h", "host-spin 4000");
    let took = t.elapsed();
    assert!(!ok && out.contains("exceeded its deadline of 1000 ms"), "{out}\n{}", node.log());
    assert!(took < Duration::from_secs(3), "stopped after {took:?}, not about 1 s");
    node.wait_log("worker probe/h trapped: exceeded its deadline of 1000 ms", FORM);
    // 2 s asleep within the same 1 s deadline.
    assert_eq!(call(name, "probe/s", "slow-add 2000"), (true, "1".to_string()), "{}", node.log());
    assert_eq!(node.count("trapped"), 1, "{}", node.log());
}

/// Every node starts the same ten names at once: each ends with exactly one instance,
/// and every answer names the same node.
#[test]
fn concurrent_starts_of_one_name_leave_one_instance() {
    let (_dir, names, _nodes) = three_nodes("w-race", 63, &[("probe", "worker_probe.wasm", "")], false);
    let mut threads = Vec::new();
    for i in 0..10 {
        for n in &names {
            let (n, key) = (n.clone(), format!("k{i}"));
            threads.push(std::thread::spawn(move || (key.clone(), start_worker(&n, "probe", &key))));
        }
    }
    let mut by_key: std::collections::BTreeMap<String, Vec<(bool, String)>> = Default::default();
    for t in threads {
        let (key, r) = t.join().unwrap();
        by_key.entry(key).or_default().push(r);
    }
    for (key, answers) in &by_key {
        let started: Vec<&String> = answers.iter().filter(|(ok, _)| *ok).map(|(_, o)| o).collect();
        assert_eq!(started.len(), 1, "{key}: {answers:?}");
        let node = started_on(started[0]);
        for (ok, out) in answers {
            assert!(*ok || out.contains(&format!("already_started on {node}")), "{key}: {out}");
        }
    }
    let all = all_workers(&names[0]);
    let want: Vec<String> = (0..10).map(|i| format!("probe/k{i}")).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    assert_eq!(all, want);
}

#[test]
fn node_up_node_down_and_timers_reach_handle_info() {
    let dir = TempDir::new("w-info");
    let names = ["a@127.0.64.1", "b@127.0.64.2", "d@127.0.64.4"];
    let config = dir.write("t.toml", &worker_topology(&names, &[("probe", "worker_probe.wasm", "")], None));
    let a = Node::start(names[0], &config);
    let b = Node::start(names[1], &config);
    wait_mesh(&[&a, &b], &names[..2], FORM);
    assert!(start_worker(names[0], "probe", "w").0);
    let events = || call(names[0], "probe/w", "events").1;

    let d = Node::start(names[2], &config);
    wait_until(FORM, "probe/w to see d come up", || events().contains("up d@127.0.64.4"), events);
    d.signal(libc::SIGKILL);
    wait_until(FORM, "probe/w to see d go down", || events().contains("down d@127.0.64.4: connection closed"), events);

    assert_eq!(call(names[1], "probe/w", "timer 50 ding"), (true, "ok".to_string()));
    wait_until(FORM, "the timer to fire", || events().contains("timer ding"), events);
}

#[test]
fn the_http_gateway_answers_calls_with_status_codes() {
    let dir = TempDir::new("w-http");
    let names = ["a@127.0.65.1", "b@127.0.65.2"];
    let kinds = [
        ("order", "worker_order.wasm", "activate_on_call = true"),
        ("counter", "worker_counter.wasm", ""),
        ("probe", "worker_probe.wasm", "call_timeout_ms = 2000"),
    ];
    let a = Node::start(names[0], &dir.write("a.toml", &worker_topology(&names, &kinds, Some("127.0.65.1:8080"))));
    let b = Node::start(names[1], &dir.write("b.toml", &worker_topology(&names, &kinds, Some("127.0.65.2:8080"))));
    wait_mesh(&[&a, &b], &names, FORM);
    let (ga, gb) = ("127.0.65.1:8080", "127.0.65.2:8080");

    // order/John exists on first use (activate_on_call) and answers from either node.
    assert_eq!(http(ga, "POST", "/v1/workers/order/John/call", br#"{"add":[1,2]}"#), (200, "[1,2]".into()));
    assert_eq!(http(gb, "POST", "/v1/workers/order/John/call", br#"{"add":[3]}"#), (200, "[1,2,3]".into()));
    assert_eq!(http(ga, "POST", "/v1/workers/order/John/call", br#""contents""#), (200, "[1,2,3]".into()));

    let (status, body) = http(ga, "POST", "/v1/workers/counter/x/call", b"value");
    assert_eq!((status, body.as_str()), (404, r#"{"error":"not_found","name":"counter/x"}"#));
    let (status, body) = http(gb, "POST", "/v1/workers/counter/x", b"41");
    assert_eq!(status, 201, "{body}");
    let node = serde_json::from_str::<serde_json::Value>(&body).unwrap()["node"].as_str().unwrap().to_string();
    let (status, body) = http(ga, "POST", "/v1/workers/counter/x", b"");
    assert_eq!((status, body), (409, format!(r#"{{"error":"already_started","node":"{node}"}}"#)));
    assert_eq!(http(ga, "POST", "/v1/workers/counter/x/call", b"increment"), (200, "42".into()));

    // A call that outlives its timeout: 504.
    assert_eq!(http(ga, "POST", "/v1/workers/probe/slow", b"").0, 201);
    let (status, body) = http(gb, "POST", "/v1/workers/probe/slow/call?timeout_ms=300", b"spin");
    assert_eq!(status, 504, "{body}");
    assert!(body.contains(r#""error":"timeout""#), "{body}");
    // A name that would break a log line is refused before anything starts or logs it
    // (order activates on call: it would start, and say so in the log).
    let forging = "/v1/workers/order/x%0A2026-12-04T00:00:00.000000Z%20%20INFO%20started%20order%2Fforged/call";
    let (status, body) = http(ga, "POST", forging, b"\"contents\"");
    assert_eq!(status, 400, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"], "bad worker name", "{body}");
    assert!(v["reason"].as_str().unwrap().starts_with(r"`x\n2026"), "the reason shows the key escaped: {body}");
    assert!(!a.log().contains("forged"), "{}", a.log());
    // A timeout that is not whole milliseconds is refused, not replaced by the default.
    let (status, body) = http(gb, "POST", "/v1/workers/probe/slow/call?timeout_ms=2s", b"spin");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains(r#""error":"bad timeout_ms""#) && body.contains("`2s`"), "{body}");

    let (status, body) = http(gb, "GET", "/v1/workers", b"");
    assert_eq!(status, 200);
    for w in ["order/John", "counter/x"] {
        assert!(body.contains(w), "{body}");
    }
}

/// Without `[http] gateway = true` the port serves no worker routes.
#[test]
fn the_gateway_is_off_unless_asked_for() {
    let dir = TempDir::new("w-nohttp");
    let config = static_topology(&["a@127.0.66.1"], 5000) + "\n[http]\nlisten = \"127.0.66.1:8080\"\n";
    let a = Node::start("a@127.0.66.1", &dir.write("t.toml", &config));
    a.wait_log("HTTP on 127.0.66.1:8080", FORM);
    assert_eq!(http("127.0.66.1:8080", "GET", "/v1/workers", b"").0, 404);
}

/// The counter in C, in Python, and in Rust built without WASI (wasm32-unknown-unknown),
/// called across nodes; and a Rust worker (the probe) calling the Python one on another
/// node through `cluster.call`.
#[test]
fn workers_in_c_and_python_are_called_across_nodes() {
    let kinds = [
        ("counterc", "worker_counter_c.wasm", ""),
        ("counterpy", "worker_counter_py.wasm", "call_timeout_ms = 10000"),
        ("counternowasi", "worker_counter_nowasi.wasm", ""),
        ("probe", "worker_probe.wasm", ""),
    ];
    let dir = TempDir::new("w-poly");
    let names = ["a@127.0.67.1", "b@127.0.67.2", "c@127.0.67.3"];
    let config = dir.write("t.toml", &worker_topology(&names, &kinds, None));
    // `check` compiles every kind once into the code cache (the Python one takes seconds),
    // so the three nodes start from it.
    let out = cli(&["check", "--config", config.to_str().unwrap()], COOKIE);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let nodes: Vec<Node> = names.iter().map(|n| Node::start(n, &config)).collect();
    wait_mesh(&nodes.iter().collect::<Vec<_>>(), &names, Duration::from_secs(60));

    for kind in ["counterc", "counterpy", "counternowasi"] {
        let name = format!("{kind}/x");
        assert!(start_worker(names[0], kind, "x").0);
        assert_eq!(call(names[1], &name, "increment"), (true, "1".to_string()), "{name}");
        assert_eq!(call(names[2], &name, "increment"), (true, "2".to_string()), "{name}");
        assert_eq!(call(names[0], &name, "value"), (true, "2".to_string()), "{name}");
        let (ok, out) = call(names[1], &name, "bogus");
        assert!(!ok && out.contains("failed") && out.contains("unknown message"), "{name}: {out}");
    }

    // A Rust worker on one node calls the Python worker on another.
    let (_, out) = start_worker(names[0], "counterpy", "y");
    let py_node = started_on(&out);
    let probe = (0..20)
        .map(|i| format!("r{i}"))
        .find(|key| started_on(&start_worker(names[0], "probe", key).1) != py_node)
        .expect("some probe lands on another node than counterpy/y");
    let via = format!("probe/{probe}");
    assert_eq!(call(names[2], &via, "call counterpy/y increment"), (true, "1".to_string()));
    assert_eq!(call(names[1], &via, "call counterpy/y increment"), (true, "2".to_string()));
    assert_eq!(call(names[0], "counterpy/y", "value"), (true, "2".to_string()));
}

/// With `[node] instance_pool`, instances (the Python one too) run from wasmtime's
/// pooling allocator; a full pool refuses one more start with a clear error and the
/// node goes on serving the instances it has. A slot freed by a stopped instance is
/// reset before the next one gets it: nothing of the old instance's memory shows.
#[test]
fn a_pooled_node_runs_workers_and_says_when_the_pool_is_full() {
    let dir = TempDir::new("w-pool");
    let name = "a@127.0.68.1";
    let kinds =
        [("counter", "worker_counter.wasm", ""), ("counterpy", "worker_counter_py.wasm", "call_timeout_ms = 10000"), ("probe", "worker_probe.wasm", "")];
    let config = worker_topology(&[name], &kinds, None).replace("[node]\n", "[node]\ninstance_pool = 7\n");
    let config = dir.write("t.toml", &config);
    let out = cli(&["check", "--config", config.to_str().unwrap()], COOKIE);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let a = Node::start(name, &config);
    a.wait_log("listening on", Duration::from_secs(60));
    assert!(start_worker(name, "counterpy", "p").0);
    assert_eq!(call(name, "counterpy/p", "increment"), (true, "1".to_string()));
    // A probe whose memory holds something: the event of a timer it set.
    assert!(start_worker(name, "probe", "old").0);
    assert_eq!(call(name, "probe/old", "timer 1 left-behind"), (true, "ok".to_string()));
    wait_until(FORM, "the probe's timer event", || call(name, "probe/old", "events").1.contains("timer left-behind"), || a.log());
    // The static strategy's instance holds one slot, the Python counter and the probe two.
    let mut started = 0;
    let refusal = loop {
        let (ok, out) = start_worker(name, "counter", &format!("c{started}"));
        if !ok {
            break out;
        }
        started += 1;
        assert!(started < 10, "the pool of 6 never filled");
    };
    assert!(started >= 3, "only {started} counters fit");
    assert!(refusal.contains("failed") && refusal.contains("limit"), "{refusal}");
    assert_eq!(call(name, "counter/c0", "increment"), (true, "1".to_string()));
    assert_eq!(call(name, "counterpy/p", "value"), (true, "1".to_string()));
    // The probe stops (a trap); the pool is full but for its slot. Its slot is free
    // before its name is forgotten, so once the name is gone a start must succeed; the
    // new probe gets the slot its kind used last, the old probe's, and must start from
    // the component's own memory image.
    let (ok, out) = call(name, "probe/old", "crash");
    assert!(!ok && out.contains("trapped"), "{out}");
    wait_until(FORM, "probe/old to be gone", || call(name, "probe/old", "events").1.contains("not_found"), || a.log());
    let (ok, out) = start_worker(name, "probe", "new");
    assert!(ok, "the freed slot was not free once the name was gone: {out}");
    let fresh = "probe/new";
    assert_eq!(call(name, fresh, "events"), (true, String::new()), "the new probe sees the old one's memory");
    assert_eq!(call(name, fresh, "timer 1 own"), (true, "ok".to_string()));
    wait_until(FORM, "the new probe's own timer event", || call(name, fresh, "events").1 == "timer own", || a.log());
}

/// A guest that sets timers in a loop is stopped and named at its cap (10,000 pending, or
/// payloads past its memory limit) instead of growing the node's tasks and memory for as
/// long as the timers' delays; timers within the cap fire as before.
#[test]
fn a_guest_that_sets_timers_without_end_is_stopped_at_its_cap() {
    let name = "a@127.0.119.1";
    let (_dir, a) = lone_worker("w-timers", name, ("probe", "worker_probe.wasm", "memory_limit_mb = 16"), "t1");
    let before = a.rss_mib();
    // 10,000 pending timers are within the cap; one more is not.
    assert_eq!(call(name, "probe/t1", "timers 10000 600000 8"), (true, "ok".into()));
    let (ok, out) = call(name, "probe/t1", "timers 1 600000 8");
    assert!(!ok && out.contains("set a timer past its cap: 10000 pending timers"), "{out}");
    a.wait_log("worker probe/t1 trapped: set a timer past its cap", FORM);
    // Payloads count too: two of 10 MiB pass an instance's 16 MiB (a fresh instance,
    // started by the call; its predecessor's timers are its predecessor's).
    wait_until(FORM, "probe/t2 started", || start_worker(name, "probe", "t2").0, || a.log());
    let (ok, out) = call(name, "probe/t2", &format!("timers 2 600000 {}", 10 << 20));
    assert!(!ok && out.contains("holding 10485760 bytes of payload, of 10000 timers and 16 MiB"), "{out}");
    let after = a.rss_mib();
    assert!(after < before + 64.0, "RSS grew from {before:.1} MiB to {after:.1} MiB");
    // Timers within the cap fire as before.
    wait_until(FORM, "probe/t3 started", || start_worker(name, "probe", "t3").0, || a.log());
    assert_eq!(call(name, "probe/t3", "timers 3 10 4"), (true, "ok".into()));
    wait_until(FORM, "three timers to fire", || call(name, "probe/t3", "events").1.matches("timer tttt").count() == 3, || call(name, "probe/t3", "events").1);
}

/// A guest that writes without end (a `println!` in a loop) gets 500 lines a second
/// into the node's log, its output and `log` together; the first line left out is said
/// at once, and every line left out is counted in a later line, to the line.
#[test]
fn a_guest_that_floods_the_log_is_held_to_500_lines_a_second_and_told_what_was_left_out() {
    let name = "a@127.0.123.1";
    let (_dir, a) = lone_worker("w-flood", name, ("probe", "worker_probe.wasm", ""), "s1");
    let started = Instant::now();
    assert_eq!(call(name, "probe/s1", "spam 5000"), (true, "ok".into()));
    let seconds = started.elapsed().as_secs() as usize;
    a.wait_log("[probe/s1] wrote more than 500 lines in a second: the rest of this second's are left out, and counted", FORM);
    let written = || a.count("spam line ") + a.count("spam log ");
    assert!(written() <= 500 * (seconds + 2), "{} of 10000 lines written in {seconds} s", written());
    // Each later line first says how many were left out before it: a tick now and then
    // (two lines each, counted too while the window lasts) until every line it wrote is
    // either in the log or in a count.
    let left_out = || -> usize { a.log().lines().filter_map(|l| l.split("left out ").nth(1)?.split(' ').next()?.parse::<usize>().ok()).sum() };
    let mut ticks = 0;
    wait_until(
        FORM,
        "every line written or counted",
        || {
            assert!(call(name, "probe/s1", "print tick").0);
            ticks += 1;
            written() + a.count("[probe/s1] tick") + left_out() == 10_000 + 2 * ticks
        },
        || format!("{} spam lines and {} ticks written, {} counted", written(), a.count("[probe/s1] tick"), left_out()),
    );
}

/// A guest that keeps host resources without end (here `wasi:http` header maps, as a
/// worker that forgets to drop its handles does) is stopped at 10,000 and named, instead
/// of growing the node's memory until it is killed with every other worker on it
/// (wasmtime alone allows a million per instance); the node serves on.
#[test]
fn a_guest_that_holds_host_resources_without_end_is_stopped_at_its_cap() {
    let name = "a@127.0.122.1";
    let (_dir, a) = lone_worker("w-handles", name, ("probe", "worker_probe.wasm", ""), "h1");
    assert_eq!(call(name, "probe/h1", "hold 9000 1"), (true, "held 9000".into()));
    let (ok, out) = call(name, "probe/h1", "hold 2000 1");
    assert!(!ok && out.contains("held more than 10000 host resources at once"), "{out}");
    a.wait_log("worker probe/h1 trapped: held more than 10000 host resources at once", FORM);
    // A fresh instance of the name starts and answers; so does the node.
    wait_until(FORM, "probe/h1 started again", || start_worker(name, "probe", "h1").0, || a.log());
    assert_eq!(call(name, "probe/h1", "hold 9000 1"), (true, "held 9000".into()));
}

/// A worker's mailbox holds at most `mailbox_limit` calls and casts and `memory_limit_mb`
/// of their messages: a sender faster than the worker is refused (`unavailable`, 503 at
/// the gateway), on its own node and from another, instead of growing the node's memory
/// without end; the refusals are logged once and counted, and once the worker has caught
/// up it takes messages again.
#[test]
fn a_full_mailbox_refuses_what_comes_next_until_its_worker_catches_up() {
    let dir = TempDir::new("w-mailbox");
    let names = ["a@127.0.121.1", "b@127.0.121.2"];
    let kinds = [("probe", "worker_probe.wasm", "mailbox_limit = 100\nmemory_limit_mb = 16\ncall_timeout_ms = 60000")];
    let nodes: Vec<Node> = names
        .iter()
        .enumerate()
        .map(|(i, n)| Node::start(n, &dir.write(&format!("{i}.toml"), &worker_topology(&names, &kinds, Some(&format!("127.0.121.{}:8080", i + 1))))))
        .collect();
    wait_mesh(&nodes.iter().collect::<Vec<_>>(), &names, FORM);
    // The slow worker on X, a sender beside it and one on the other node Y.
    let (ok, out) = start_worker(names[0], "probe", "slow");
    assert!(ok, "{out}");
    let x = names.iter().position(|n| *n == started_on(&out)).expect("a node of the two");
    let y = 1 - x;
    let mut senders = [None, None];
    for i in 0..64 {
        let (ok, out) = start_worker(names[0], "probe", &format!("s{i}"));
        assert!(ok, "{out}");
        let at = names.iter().position(|n| *n == started_on(&out)).unwrap();
        senders[at].get_or_insert(format!("probe/s{i}"));
        if senders.iter().all(Option::is_some) {
            break;
        }
    }
    let [Some(s0), Some(s1)] = senders else { panic!("no sender on each node in 64 keys") };
    let (near, far) = if x == 0 { (s0, s1) } else { (s1, s0) };
    let metric = |node: usize| {
        http(&format!("127.0.121.{}:8080", node + 1), "GET", "/metrics", b"")
            .1
            .lines()
            .find(|l| l.starts_with("wasmnode_mailbox_refused_total{kind=\"probe\"}"))
            .map(str::to_string)
    };
    assert_eq!(metric(x).as_deref(), Some("wasmnode_mailbox_refused_total{kind=\"probe\"} 0"), "present at 0");

    // Busy for 8 s: what comes meanwhile waits in its mailbox.
    let busy = |ms: u64| {
        let node = names[x].to_string();
        std::thread::spawn(move || cli(&["call", "--node", &node, "--timeout-ms", "60000", "probe/slow", &format!("slow-add {ms}")], COOKIE))
    };
    let slow = busy(8000);
    nodes[x].wait_log("slow-add 1 applied", FORM);
    let full = "probe/slow's mailbox is full: 100 calls and casts (1600 bytes) wait for it, and it holds at most 100 messages and 16 MiB; not delivered";
    assert_eq!(call(names[x], &near, "casts 150 probe/slow 16"), (true, format!("sent 100, then: error: unavailable: {full}")));
    // From the other node, through the connection's reader; a call likewise, through the
    // gateway and through the CLI on the other node.
    assert_eq!(call(names[y], &far, "casts 5 probe/slow 16"), (true, format!("sent 0, then: error: unavailable: {full}")));
    let (status, head, body) = http_answer(&format!("127.0.121.{}:8080", y + 1), "POST", "/v1/workers/probe/slow/call", &[], b"count");
    assert!(status == 503 && body.contains(full), "{status} {body}");
    assert!(head.to_ascii_lowercase().contains("\r\nretry-after: 1"), "a 503 says when to try again: {head}");
    let (ok, out) = call(names[y], "probe/slow", "count");
    assert!(!ok && out.contains(full), "{out}");
    let out = slow.join().unwrap();
    assert!(out.status.success(), "{}", output_text(&out));

    // Caught up: every cast it took was handled, and it takes messages again.
    wait_until(FORM, "the 100 casts handled", || call(names[x], "probe/slow", "casts-received").1 == "100", || nodes[x].log());
    assert_eq!(call(names[y], &far, "casts 5 probe/slow 16"), (true, "sent 5".into()));
    assert_eq!(metric(x).as_deref(), Some("wasmnode_mailbox_refused_total{kind=\"probe\"} 4"));
    assert_eq!(nodes[x].count("calls and casts to it are refused until it catches up"), 1, "once per window: {}", nodes[x].log());
    assert!(nodes[x].log().contains("reason=\"mailbox_full\""), "{}", nodes[x].log());

    // Bytes count too: 16 messages of 1 MiB fill its 16 MiB.
    let slow = busy(5000);
    nodes[x].wait_log("slow-add 2 applied", FORM);
    let (ok, out) = call(names[x], &near, &format!("casts 40 probe/slow {}", 1 << 20));
    assert!(ok && out.starts_with("sent 16, then: error: unavailable: probe/slow's mailbox is full: 16 calls and casts (16777216 bytes)"), "{out}");
    assert!(slow.join().unwrap().status.success());
    wait_until(FORM, "the 16 large casts handled", || call(names[x], "probe/slow", "casts-received").1 == "121", || nodes[x].log());
}

/// `max_instances = 4`: each node starts at most four counters; a start whose owner runs
/// four already fails and says why, while the others go on. A node that gets SIGTERM
/// hands its counters to the other two, full as they are: names that move are never
/// refused for the bound, so every counter keeps its value.
#[test]
fn max_instances_refuses_new_names_on_a_full_node_and_never_a_handoff() {
    let (_dir, names, mut nodes) = three_nodes("w-max", 142, &[("counter", "worker_counter.wasm", "max_instances = 4")], false);
    let mut want = std::collections::BTreeMap::new();
    let mut refused = 0;
    for k in 0..30 {
        let (ok, out) = start_worker(&names[0], "counter", &format!("c{k}"));
        if ok {
            for _ in 0..=k % 3 {
                assert!(call(&names[0], &format!("counter/c{k}"), "increment").0);
            }
            want.insert(format!("counter/c{k}"), k as u64 % 3 + 1);
        } else {
            assert!(out.contains("instances of counter already, its max_instances"), "{out}");
            refused += 1;
        }
    }
    let at = placement(&names[0]);
    for n in &names {
        assert_eq!(at.values().filter(|on| on.contains(n)).count(), 4, "{n} runs its max_instances: {at:?}");
    }
    assert_eq!((want.len(), refused), (12, 18));
    nodes[2].signal(libc::SIGTERM);
    assert_eq!(nodes[2].wait_exit(Duration::from_secs(30)), Some(0), "{}", nodes[2].log());
    wait_exactly_once_with(&names[0], &want, Duration::from_secs(10), "every counter on the two full nodes, with its value");
}
