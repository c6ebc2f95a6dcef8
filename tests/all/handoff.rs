//! Supervision and state handoff (issue 5, first part): workers survive SIGTERM with
//! their state and SIGKILL without it, on real node processes.

use std::time::Duration;

use wasmnode_testkit::*;

const FORM: Duration = Duration::from_secs(10);

/// Seed 004: order/John holds [1,2,3]; its node gets SIGTERM; every remaining node
/// reads [1,2,3] from the instance that took over.
#[test]
fn sigterm_hands_the_state_to_the_next_owner() {
    let (_dir, names, mut nodes) = three_nodes("h-term", 70, &[("order", "worker_order.wasm", "")], false);
    let (ok, out) = start_worker(&names[0], "order", "John");
    assert!(ok, "{out}");
    let owner = started_on(&out);
    assert_eq!(call(&names[1], "order/John", r#"{"add":[1,2,3]}"#), (true, "[1,2,3]".to_string()));

    let i = nodes.iter().position(|n| n.name == owner).unwrap();
    nodes[i].signal(libc::SIGTERM);
    assert_eq!(nodes[i].wait_exit(Duration::from_secs(30)), Some(0));
    assert!(nodes[i].log().contains("moved order/John to "), "{}", nodes[i].log());
    // The order's state: its items, when their delivery is due, and its failed tries
    // (`{"due_ms":…,"failures":0,"items":[1,2,3]}`, 53 bytes with a 13-digit time).
    assert!(nodes[i].log().contains("(handoff 53 B)"), "{}", nodes[i].log());
    for n in names.iter().filter(|n| **n != owner) {
        assert_eq!(call(n, "order/John", r#""contents""#), (true, "[1,2,3]".to_string()), "read through {n}");
    }
    for n in nodes.iter().filter(|n| n.name != owner) {
        assert_eq!(n.count("restarted order/John"), 0, "a handed-over name is not also restarted:\n{}", n.log());
    }
}

/// SIGKILL leaves no time for a handoff: the new owner restarts the name, empty, and
/// says that no state came with it.
#[test]
fn sigkill_restarts_elsewhere_without_state_and_says_so() {
    let kinds = [("order", "worker_order.wasm", ""), ("once", "worker_order.wasm", "restart = \"temporary\"")];
    let (_dir, names, nodes) = three_nodes("h-kill", 71, &kinds, false);
    let (ok, out) = start_worker(&names[0], "order", "John");
    assert!(ok, "{out}");
    let owner = started_on(&out);
    assert!(call(&names[1], "order/John", r#"{"add":[1,2,3]}"#).0);
    // A temporary worker on the same node is not restarted.
    let key = (0..50).map(|i| format!("t{i}")).find(|k| started_on(&start_worker(&names[0], "once", k).1) == owner).expect("a key owned by the same node");

    let victim = nodes.iter().find(|n| n.name == owner).unwrap();
    victim.signal(libc::SIGKILL);
    let others: Vec<&Node> = nodes.iter().filter(|n| n.name != owner).collect();
    // Both others must have seen the node go down, not only the one that restarts the
    // name: a call through one that has not yet would still go to the dead node (and be
    // `in_doubt`, as a call in flight at a kill is).
    wait_until(
        FORM,
        "order/John to be restarted on its new owner, and every other node to see its old one down",
        || {
            others.iter().any(|n| n.count("restarted order/John on ") > 0 && n.log().contains("after node down: no handoff state"))
                && others.iter().all(|n| n.count(&format!("node down {owner}")) > 0)
        },
        || others.iter().map(|n| n.log()).collect::<Vec<_>>().join("\n"),
    );
    for n in &others {
        assert_eq!(call(&n.name, "order/John", r#""contents""#), (true, "[]".to_string()));
    }
    assert_eq!(others.iter().map(|n| n.count("restarted order/John on ")).sum::<usize>(), 1, "restarted exactly once");
    let (ok, out) = call(&others[0].name, &format!("once/{key}"), r#""contents""#);
    assert!(!ok && out.contains("not_found"), "{out}");
    assert!(others.iter().any(|n| n.log().contains(&format!("not restarting once/{key}"))));
}

/// A client keeps incrementing counter/c1 through another node while the counter's
/// node leaves: every increment that was acknowledged counts, none twice.
#[test]
fn calls_during_a_move_are_neither_lost_nor_doubled() {
    let (_dir, names, mut nodes) = three_nodes("h-move", 72, &[("counter", "worker_counter.wasm", "")], true);
    let (ok, out) = start_worker(&names[0], "counter", "c1");
    assert!(ok, "{out}");
    let owner = started_on(&out);
    let i = nodes.iter().position(|n| n.name == owner).unwrap();
    let via = (0..3).find(|j| *j != i).unwrap();
    let gateway = format!("127.0.72.{}:8080", via + 1);
    let g = gateway.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopping = stop.clone();
    // Calls without pause until told to stop, then 100 more: some before the move, some
    // while the name moves, some after.
    let client = std::thread::spawn(move || {
        let (mut acked, mut after_stop, mut failed) = (0u64, 0, Vec::new());
        while after_stop < 100 {
            if stopping.load(std::sync::atomic::Ordering::SeqCst) {
                after_stop += 1;
            }
            match http(&g, "POST", "/v1/workers/counter/c1/call?timeout_ms=10000", b"increment") {
                (200, body) => {
                    acked += 1;
                    assert_eq!(body, acked.to_string(), "each acknowledged increment is the next value");
                }
                other => failed.push(other),
            }
        }
        (acked, failed)
    });
    wait_until(FORM, "the client to be under way", || call(&names[via], "counter/c1", "value").1.parse::<u64>().unwrap_or(0) >= 50, String::new);
    nodes[i].signal(libc::SIGTERM);
    assert_eq!(nodes[i].wait_exit(Duration::from_secs(30)), Some(0));
    assert!(nodes[i].log().contains("moved counter/c1 to "), "{}", nodes[i].log());
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (acked, failed) = client.join().unwrap();
    let logs = || {
        nodes
            .iter()
            .map(|n| format!("--- {}\n{}", n.name, n.log().lines().filter(|l| l.contains("c1") || l.contains("node ")).collect::<Vec<_>>().join("\n")))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(failed.is_empty(), "calls failed during the move: {failed:?}\n{}", logs());
    assert!(acked > 150, "only {acked} calls were made");
    eprintln!("{acked} increments acknowledged across the move");
    let (_, value) = call(&names[via], "counter/c1", "value");
    assert_eq!(value, acked.to_string());
}

/// A node joins: the instances it now owns move to it with their state; the others
/// stay where they are.
#[test]
fn a_joining_node_receives_its_instances_with_their_state() {
    let dir = TempDir::new("h-join");
    let names = ["a@127.0.73.1", "b@127.0.73.2", "c@127.0.73.3"];
    let config = dir.write("t.toml", &worker_topology(&names, &[("order", "worker_order.wasm", "")], None));
    let a = Node::start(names[0], &config);
    let b = Node::start(names[1], &config);
    wait_mesh(&[&a, &b], &names[..2], FORM);
    for i in 0..12 {
        assert!(start_worker(names[0], "order", &format!("o{i}")).0);
        assert!(call(names[1], &format!("order/o{i}"), &format!("{{\"add\":[{i}]}}")).0);
    }
    let c = Node::start(names[2], &config);
    wait_mesh(&[&a, &b, &c], &names, FORM);
    // c ends up running the orders it owns, each with its contents.
    wait_until(
        FORM,
        "some orders to move to c",
        || c.count("started order/") > 0 && a.count("moved order/") + b.count("moved order/") == c.count("started order/"),
        || format!("{}\n{}\n{}", a.log(), b.log(), c.log()),
    );
    for i in 0..12 {
        assert_eq!(call(names[2], &format!("order/o{i}"), r#""contents""#), (true, format!("[{i}]")), "order/o{i}");
    }
    let all = all_workers(names[0]);
    assert_eq!(all.len(), 12, "{all:?}");
}

/// Join storms (Swarm hung in 24 % of these): 10 nodes started at the same instant, each
/// with the same boot-time singletons, form one cluster in which each singleton runs
/// exactly once — 20 storms in a row.
#[test]
fn join_storms_run_each_boot_singleton_exactly_once() {
    let dir = TempDir::new("h-storm");
    let names: Vec<String> = (1..=10).map(|i| format!("n{i}@127.0.74.{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let config = dir.write("t.toml", &worker_topology(&refs, &[("probe", "worker_probe.wasm", "boot = [\"s1\", \"s2\", \"s3\", \"s4\", \"s5\"]")], None));
    let want: Vec<String> = (1..=5).map(|i| format!("probe/s{i}")).collect();
    for storm in 0..20 {
        let nodes: Vec<Node> = refs.iter().map(|n| Node::start(n, &config)).collect();
        wait_mesh(&nodes.iter().collect::<Vec<_>>(), &refs, Duration::from_secs(20));
        let last = std::cell::RefCell::new(String::new());
        wait_until(
            Duration::from_secs(20),
            &format!("storm {storm}: each singleton running exactly once"),
            || {
                let listing = workers_by_node(refs[storm % 10]);
                let nodes_listed = listing.len();
                let mut all: Vec<String> = listing.into_iter().flat_map(|(_, w)| w).collect();
                all.sort();
                *last.borrow_mut() = format!("{all:?} from {nodes_listed} nodes");
                nodes_listed == 10 && all == want
            },
            || last.borrow().clone(),
        );
        drop(nodes);
    }
}

/// A rolling restart of all three nodes, one at a time, while a client makes 1,000
/// acknowledged increments to counter/c1 through whichever gateway answers: the final
/// value equals the number of acknowledged increments.
#[test]
fn a_rolling_restart_loses_no_acknowledged_increment() {
    let (_dir, names, mut nodes) = three_nodes("h-roll", 75, &[("counter", "worker_counter.wasm", "")], true);
    assert!(start_worker(&names[0], "counter", "c1").0);
    let gateways: Vec<String> = (1..=3).map(|i| format!("127.0.75.{i}:8080")).collect();
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = progress.clone();
    let client = std::thread::spawn(move || {
        let (mut acked, mut failures, mut turn) = (0u64, Vec::new(), 0usize);
        while acked < 1000 {
            turn += 1;
            let gateway = &gateways[turn % 3];
            match try_http(gateway, "POST", "/v1/workers/counter/c1/call?timeout_ms=10000", b"increment") {
                Some((200, body)) => {
                    acked += 1;
                    assert_eq!(body, acked.to_string(), "acknowledged increments count up by one");
                    seen.store(acked, std::sync::atomic::Ordering::SeqCst);
                }
                // Down (refused) or leaving (503): nothing was done; another gateway.
                None | Some((503, _)) => continue,
                Some(other) => failures.push((gateway.clone(), other)),
            }
        }
        (acked, failures)
    });
    for i in 0..3 {
        let mark = 200 * (i as u64 + 1);
        wait_until(
            Duration::from_secs(30),
            &format!("{mark} increments before restarting node {i}"),
            || progress.load(std::sync::atomic::Ordering::SeqCst) >= mark,
            String::new,
        );
        nodes[i].signal(libc::SIGTERM);
        assert_eq!(nodes[i].wait_exit(Duration::from_secs(30)), Some(0));
        nodes[i].restart();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        wait_mesh(&nodes.iter().collect::<Vec<_>>(), &refs, FORM);
    }
    let (acked, failures) = client.join().unwrap();
    assert!(failures.is_empty(), "failed calls: {failures:?}");
    assert_eq!(acked, 1000);
    assert_eq!(call(&names[0], "counter/c1", "value"), (true, "1000".to_string()));
}

/// With `rebalance = "stay"`, a joining node takes nothing: instances stay where they run.
#[test]
fn with_rebalance_stay_instances_stay_where_they_run() {
    let dir = TempDir::new("h-stay");
    let names = ["a@127.0.77.1", "b@127.0.77.2", "c@127.0.77.3"];
    let config = worker_topology(&names, &[("order", "worker_order.wasm", "")], None).replace("[node]\n", "[node]\nrebalance = \"stay\"\n");
    let config = dir.write("t.toml", &config);
    let a = Node::start(names[0], &config);
    let b = Node::start(names[1], &config);
    wait_mesh(&[&a, &b], &names[..2], FORM);
    for i in 0..12 {
        assert!(start_worker(names[0], "order", &format!("o{i}")).0);
    }
    let c = Node::start(names[2], &config);
    wait_mesh(&[&a, &b, &c], &names, FORM);
    // Every order still answers, from the new node too, and none moved.
    for i in 0..12 {
        assert_eq!(call(names[2], &format!("order/o{i}"), r#""contents""#), (true, "[]".to_string()));
    }
    assert_eq!(a.count("moved order/") + b.count("moved order/"), 0);
    assert_eq!(c.count("started order/"), 0);
}

/// SIGTERM reaches a node whose worker has more work queued than the node's handoff
/// deadline: twenty callers on another node each wait on a call of 400 ms (8 s of work),
/// the deadline is 3 s. The stop goes ahead of the queued calls: the instance finishes
/// the call it is on, hands its state over, and the queued calls follow the name to its
/// next owner (their callers are told where it went and send them there). Every call
/// is applied once, in one count that moved with the state. Before, the instance worked
/// through its queue in order, the deadline passed, its state was lost and the calls
/// still queued failed.
#[test]
fn sigterm_moves_a_busy_worker_ahead_of_its_queue_and_the_queued_calls_follow_it() {
    let dir = TempDir::new("h-queue");
    let names: Vec<String> = (1..=3).map(|i| format!("{}@127.0.143.{i}", ["a", "b", "c"][i - 1])).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let topology = worker_topology(&refs, &[("probe", "worker_probe.wasm", "")], None).replacen("[node]\n", "[node]\nhandoff_deadline_ms = 3000\n", 1);
    let mut nodes: Vec<Node> = names.iter().enumerate().map(|(i, n)| Node::start(n, &dir.write(&format!("{i}.toml"), &topology))).collect();
    wait_mesh(&nodes.iter().collect::<Vec<_>>(), &refs, Duration::from_secs(10));
    let (ok, out) = start_worker(&names[0], "probe", "busy");
    assert!(ok, "{out}");
    let owner = started_on(&out);
    let i = nodes.iter().position(|n| n.name == owner).unwrap();
    let via = names.iter().find(|n| **n != owner).unwrap().clone();
    // With a ballast the probe hands over its whole state: its count, and 1 MiB.
    assert_eq!(call(&via, "probe/busy", "ballast 1"), (true, "ok".to_string()));
    let callers: Vec<_> = (0..20)
        .map(|k| {
            let via = via.clone();
            std::thread::spawn(move || call_once(&via, &format!("slow-{k}"), "probe/busy", "slow-add 400"))
        })
        .collect();
    nodes[i].wait_log("slow-add 2 applied", Duration::from_secs(10));
    nodes[i].signal(libc::SIGTERM);
    assert_eq!(nodes[i].wait_exit(Duration::from_secs(30)), Some(0), "{}", nodes[i].log());
    assert_eq!(nodes[i].count("not handed over by the deadline"), 0, "{}", nodes[i].log());
    // One line an operator sees at the default level says where the queue went.
    let followed = |l: &&str| l.contains(" INFO ") && l.contains("calls and casts queued for probe/busy follow it to");
    assert_eq!(nodes[i].log().lines().filter(followed).count(), 1, "{}", nodes[i].log());
    let mut counts: Vec<u64> = callers
        .into_iter()
        .map(|c| {
            let (ok, out) = c.join().expect("a caller");
            assert!(ok, "a queued call failed: {out}\n{}", nodes[i].log());
            out.parse().unwrap_or_else(|_| panic!("{out}"))
        })
        .collect();
    counts.sort();
    assert_eq!(counts, (1..=20).collect::<Vec<u64>>(), "each call applied once, to the count that moved");
    let after = names.iter().find(|n| **n != owner).unwrap();
    assert_eq!(call(after, "probe/busy", "count"), (true, "20".to_string()));
}

/// SIGTERM reaches a node whose workers each wait, inside a message, on something that
/// outlasts the node's handoff deadline (3 s): one on a `cluster.call` to a worker on
/// another node that takes 20 s, one on an outbound request whose server never answers,
/// one on an outbound response whose body never ends, one in a 20 s sleep. At a quarter
/// of the deadline (its messages may compute for 5 s, longer than the deadline: the
/// cut comes as early as it may) the node ends those waits (the first three with an
/// error); each worker
/// finishes its message (its caller gets what it answers), stops, and its state (its
/// count and 1 MiB) is handed over in time. Before, each stop waited for its message,
/// the deadline passed, and the four states were lost.
#[test]
fn sigterm_cuts_the_long_waits_of_busy_workers_short_and_hands_their_states_over() {
    use std::io::{Read, Write};
    let dir = TempDir::new("h-waits");
    let names: Vec<String> = (1..=3).map(|i| format!("{}@127.0.146.{i}", ["a", "b", "c"][i - 1])).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    // Two real servers: one takes requests and never answers; one answers a head and 2
    // of the 100 bytes it announces, and no more.
    let (silent, trickle) = ("127.0.146.20:8089", "127.0.146.21:8089");
    let (tx, heard) = std::sync::mpsc::channel::<&str>();
    for (addr, reply) in [(silent, &b""[..]), (trickle, &b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nab"[..])] {
        let listener = std::net::TcpListener::bind(addr).expect("bind a test server");
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for mut conn in listener.incoming().flatten() {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(reply);
                let _ = tx.send(addr);
                held.push(conn);
            }
        });
    }
    let grant = format!("allowed_outbound_hosts = [\"http://{silent}\", \"http://{trickle}\"]");
    let topology = worker_topology(&refs, &[("probe", "worker_probe.wasm", &grant)], None).replacen("[node]\n", "[node]\nhandoff_deadline_ms = 3000\n", 1);
    let mut nodes: Vec<Node> = names.iter().enumerate().map(|(i, n)| Node::start(n, &dir.write(&format!("{i}.toml"), &topology))).collect();
    wait_mesh(&nodes.iter().collect::<Vec<_>>(), &refs, FORM);
    // Four holders on a, and the slow target elsewhere.
    let (mut holders, mut slow) = (Vec::new(), None);
    for k in 0..60 {
        let key = format!("w{k}");
        let (ok, out) = start_worker(&names[1], "probe", &key);
        assert!(ok, "{out}");
        let on = started_on(&out);
        match on == names[0] {
            true if holders.len() < 4 => holders.push(key),
            false if slow.is_none() => slow = Some((key, on)),
            _ => {}
        }
        if holders.len() == 4 && slow.is_some() {
            break;
        }
    }
    let (slow, slow_on) = slow.expect("a worker placed off a");
    assert_eq!(holders.len(), 4, "four of 60 workers placed on a");
    for h in &holders {
        let name = format!("probe/{h}");
        assert_eq!(call(&names[1], &name, "ballast 1"), (true, "ok".to_string()));
        for n in 1..=3 {
            assert_eq!(call(&names[1], &name, "slow-add 0"), (true, n.to_string()));
        }
    }
    let asks = [
        format!("call-once c1 probe/{slow} slow-add 20000"),
        format!("http-get http://{silent}/"),
        format!("http-get http://{trickle}/"),
        "slow-add 20000".to_string(),
    ];
    let callers: Vec<_> = holders
        .iter()
        .zip(asks)
        .map(|(h, ask)| {
            let (via, name) = (names[1].clone(), format!("probe/{h}"));
            std::thread::spawn(move || call_once(&via, &format!("ask-{name}"), &name, &ask))
        })
        .collect();
    // Each holder is in its wait: the target applied its call, each server took its
    // request, the sleeper counted its fourth.
    nodes[0].wait_log("slow-add 4 applied", FORM);
    nodes.iter().find(|n| n.name == slow_on).expect("the slow target's node").wait_log("slow-add 1 applied", FORM);
    let mut servers: Vec<&str> = (0..2).map(|_| heard.recv_timeout(FORM).expect("a request reached a test server")).collect();
    servers.sort();
    assert_eq!(servers, [silent, trickle]);

    nodes[0].signal(libc::SIGTERM);
    assert_eq!(nodes[0].wait_exit(Duration::from_secs(10)), Some(0), "{}", nodes[0].log());
    let log = nodes[0].log();
    assert_eq!(nodes[0].count("not handed over by the deadline"), 0, "{log}");
    assert_eq!(nodes[0].count("4 instances not handed over"), 1, "{log}");
    assert_eq!(nodes[0].count("given up: a@127.0.146.1 is leaving"), 1, "{log}");
    assert_eq!(nodes[0].count("outbound request to http://"), 2, "{log}");
    for h in &holders {
        assert!(log.contains(&format!("moved probe/{h} to ")), "{log}");
    }
    let replies: Vec<String> =
        callers.into_iter().map(|c| c.join().expect("a caller")).map(|(ok, out)| if ok { out } else { format!("failed: {out}") }).collect();
    assert!(replies[0].starts_with("error: unavailable: a@127.0.146.1 is leaving"), "{replies:?}");
    assert!(replies[1].contains("this node is leaving"), "{replies:?}");
    assert!(replies[2].starts_with("error: reading the body"), "{replies:?}");
    assert_eq!(replies[3], "4", "the sleep ended, and the message with it");
    // Each state moved whole: its count, and its ballast (else it would hand over none).
    for (h, count) in holders.iter().zip(["3", "3", "3", "4"]) {
        assert_eq!(call(&names[1], &format!("probe/{h}"), "count"), (true, count.to_string()), "{h}");
    }
}

/// Two of three nodes get SIGTERM at the same instant (a scale-down by two, a `docker
/// compose down` of two services) while a client keeps incrementing 24 counters through
/// the third. Each leaver learns the other leaves too, so what either hands over lands
/// on the node that stays: every counter ends there with every increment it
/// acknowledged, and no state is lost on the way.
#[test]
fn two_nodes_leaving_at_once_hand_every_state_to_the_node_that_stays() {
    let (_dir, names, mut nodes) = three_nodes("h-two", 147, &[("counter", "worker_counter.wasm", "")], true);
    const N: usize = 24;
    for k in 0..N {
        assert!(start_worker(&names[2], "counter", &format!("c{k}")).0);
        assert_eq!(call(&names[2], &format!("counter/c{k}"), "increment"), (true, "1".to_string()));
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (done, progress) = (stop.clone(), std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)));
    let seen = progress.clone();
    let client = std::thread::spawn(move || {
        // Per counter: increments acknowledged, and calls that failed (applied or not).
        let (mut acked, mut unsure) = (vec![1u64; N], vec![0u64; N]);
        let mut turn = 0;
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            let k = turn % N;
            turn += 1;
            match try_http("127.0.147.3:8080", "POST", &format!("/v1/workers/counter/c{k}/call?timeout_ms=10000"), b"increment") {
                Some((200, _)) => acked[k] += 1,
                // Refused before anything was done.
                Some((503, _)) => {}
                _ => unsure[k] += 1,
            }
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        (acked, unsure)
    });
    wait_until(FORM, "the client under way", || progress.load(std::sync::atomic::Ordering::SeqCst) >= 50, String::new);
    nodes[0].signal(libc::SIGTERM);
    nodes[1].signal(libc::SIGTERM);
    for node in &mut nodes[..2] {
        assert_eq!(node.wait_exit(Duration::from_secs(30)), Some(0), "{}", node.log());
    }
    let mark = progress.load(std::sync::atomic::Ordering::SeqCst);
    wait_until(FORM, "more increments after both left", || progress.load(std::sync::atomic::Ordering::SeqCst) >= mark + 50, String::new);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (acked, unsure) = client.join().unwrap();
    for node in &nodes[..2] {
        assert_eq!(node.count("state is lost"), 0, "{}", node.log());
        assert_eq!(node.count("not handed over by the deadline"), 0, "{}", node.log());
    }
    for k in 0..N {
        let (ok, value) = call(&names[2], &format!("counter/c{k}"), "value");
        assert!(ok, "{value}\n{}", nodes[2].log());
        let value: u64 = value.parse().unwrap();
        assert!(
            value >= acked[k] && value <= acked[k] + unsure[k],
            "counter/c{k}: {value}, acknowledged {}, unsure {}\n{}",
            acked[k],
            unsure[k],
            nodes[2].log()
        );
    }
}

/// A node joins, takes its share of 24 counters from the two that ran them (each moves
/// with its state), and gets SIGTERM while those moves are under way (a scale-up undone
/// at once). What it received goes back with its state, what was still on its way to it
/// finds its owner, and every counter keeps every increment it acknowledged.
#[test]
fn a_node_that_leaves_while_its_share_moves_to_it_loses_no_increment() {
    let dir = TempDir::new("h-flap");
    let names: Vec<String> = (1..=3).map(|i| format!("{}@127.0.148.{i}", ["a", "b", "c"][i - 1])).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let topology = worker_topology(&refs, &[("counter", "worker_counter.wasm", "")], None);
    let configs: Vec<_> = (0..3).map(|i| dir.write(&format!("{i}.toml"), &topology)).collect();
    let mut nodes: Vec<Node> = (0..2).map(|i| Node::start(&names[i], &configs[i])).collect();
    wait_mesh(&nodes.iter().collect::<Vec<_>>(), &refs[..2], FORM);
    const N: usize = 24;
    for k in 0..N {
        assert!(start_worker(&names[0], "counter", &format!("c{k}")).0);
        for n in 1..=3 {
            assert_eq!(call(&names[0], &format!("counter/c{k}"), "increment"), (true, n.to_string()));
        }
    }
    nodes.push(Node::start(&names[2], &configs[2]));
    nodes[2].wait_log("started counter/", FORM);
    nodes[2].signal(libc::SIGTERM);
    assert_eq!(nodes[2].wait_exit(Duration::from_secs(30)), Some(0), "{}", nodes[2].log());
    // It ran some, and handed each of them on.
    let (ran, moved) = (nodes[2].count("started counter/"), nodes[2].count("moved counter/"));
    assert!(ran >= 1 && moved == ran, "ran {ran}, moved {moved}\n{}", nodes[2].log());
    for node in &nodes {
        assert_eq!(node.count("state is lost"), 0, "{}", node.log());
    }
    for k in 0..N {
        assert_eq!(call(&names[0], &format!("counter/c{k}"), "value"), (true, "3".to_string()), "counter/c{k}\n{}\n{}", nodes[0].log(), nodes[2].log());
    }
}
