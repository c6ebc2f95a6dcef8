//! Faults tried from outside, as a user would, on real node processes: a node paused
//! (SIGSTOP) past its peers' heartbeat timeout, two nodes killed at once, a partition
//! healed while names move. Each asserts the state of every worker and that every name
//! runs exactly once. The deterministic simulation (`./dev sim`) tries many more
//! interleavings of the same faults on the same state machine.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmnode_testkit::*;

const FORM: Duration = Duration::from_secs(10);
const SETTLE: Duration = Duration::from_secs(30);

/// Starts `n` counters through `via` and increments counter/cK K % 4 + 1 times; the
/// values, by name.
fn counters(via: &str, n: usize) -> BTreeMap<String, u64> {
    let mut want = BTreeMap::new();
    for k in 0..n {
        let (ok, out) = start_worker(via, "counter", &format!("c{k}"));
        assert!(ok, "{out}");
        let times = k as u64 % 4 + 1;
        for _ in 0..times {
            assert!(call(via, &format!("counter/c{k}"), "increment").0);
        }
        want.insert(format!("counter/c{k}"), times);
    }
    want
}

/// The node with the smallest name is paused until its peers declare it down, then
/// woken. Before, it declared its peers down on waking, restarted their names empty,
/// and its empty instances won over the healthy ones: counters went back to 0. Now it
/// reads its sockets first, and an instance restarted empty never wins over one with
/// state: every counter keeps its value, wherever it ran, and runs once.
#[test]
fn a_paused_node_wakes_without_wiping_anyones_state() {
    let (_dir, names, nodes) = three_nodes("f-pause", 80, &[("counter", "worker_counter.wasm", "")], false);
    let want = counters(&names[1], 24);
    let before = placement(&names[1]);
    assert!(before.values().any(|n| n[0] != names[0]), "some counters run on the other nodes: {before:?}");

    nodes[0].signal(libc::SIGSTOP);
    for n in &nodes[1..] {
        n.wait_log(&format!("node down {}: heartbeat timeout", names[0]), FORM);
    }
    // Its peers restarted its names; they answer (from zero) meanwhile.
    wait_until(FORM, "the paused node's counters to answer elsewhere", || want.keys().all(|n| call(&names[1], n, "value").0), String::new);
    nodes[0].signal(libc::SIGCONT);
    wait_mesh(&nodes.iter().collect::<Vec<_>>(), &names.iter().map(String::as_str).collect::<Vec<_>>(), SETTLE);
    wait_exactly_once_with(&names[2], &want, SETTLE, "every counter once, with its value, after the wake-up");
    // It heard its peers close the connections they timed out; it never timed them out.
    assert_eq!(nodes[0].count("heartbeat timeout"), 0, "the woken node declared its live peers down:\n{}", nodes[0].log());
}

/// A pause that ends just after the heartbeat timeout: the woken node's timers fire
/// before its runtime has heard what its sockets hold (its peers' closes, their last
/// heartbeats). It asks the kernel before it declares a peer silent, and so learns of
/// the closes as closes. Before, it timed both peers out and restarted their names.
#[test]
fn a_node_woken_just_after_the_heartbeat_timeout_reads_before_it_judges() {
    let (_dir, names, nodes) = three_nodes("f-pause-edge", 137, &[("counter", "worker_counter.wasm", "")], false);
    counters(&names[0], 12);
    nodes[1].signal(libc::SIGSTOP);
    nodes[2].wait_log(&format!("node down {}: heartbeat timeout", names[1]), FORM);
    nodes[1].signal(libc::SIGCONT);
    wait_mesh(&nodes.iter().collect::<Vec<_>>(), &names.iter().map(String::as_str).collect::<Vec<_>>(), SETTLE);
    assert_eq!(nodes[1].count("heartbeat timeout"), 0, "the woken node timed its peers out unread:\n{}", nodes[1].log());
}

/// Two of three nodes are killed within milliseconds: the survivor restarts every name
/// the two ran, including those whose next owner was the other dead node.
#[test]
fn two_nodes_killed_at_once_leave_every_name_running_on_the_survivor() {
    let (_dir, names, nodes) = three_nodes("f-kill2", 81, &[("counter", "worker_counter.wasm", "")], false);
    let want = counters(&names[0], 30);
    let kept: BTreeMap<String, u64> =
        placement(&names[0]).into_iter().filter(|(_, at)| at == &[names[0].clone()]).map(|(n, _)| (n.clone(), want[&n])).collect();
    nodes[1].signal(libc::SIGKILL);
    nodes[2].signal(libc::SIGKILL);
    let mut after = want.clone();
    for (n, v) in after.iter_mut() {
        // What ran on the killed nodes restarts empty; what ran on the survivor keeps its value.
        *v = kept.get(n).copied().unwrap_or(0);
    }
    wait_exactly_once_with(&names[0], &after, SETTLE, "every counter restarted on the survivor");
    let restarted = nodes[0].count("restarted counter/");
    assert_eq!(restarted, want.len() - kept.len(), "each lost counter restarted once:\n{}", nodes[0].log());
}

/// One node is cut off while names are started and moved on both sides; when the cut
/// heals, names move to their owners (rebalancing) while the two sides' instances meet.
/// Every name ends running exactly once, and every order holds the items that either
/// side acknowledged (the order merges the other instance's state).
#[test]
fn a_partition_healed_while_names_move_leaves_every_name_once_with_every_item() {
    let (_dir, names, nodes) = three_nodes("f-heal", 82, &[("order", "worker_order.wasm", "")], false);
    let mut items: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for k in 0..20 {
        assert!(start_worker(&names[0], "order", &format!("o{k}")).0);
        assert!(call(&names[0], &format!("order/o{k}"), &format!("{{\"add\":[{k}]}}")).0);
        items.insert(format!("order/o{k}"), vec![k]);
    }
    let cut = Cut::new("127.0.82.3", &["127.0.82.1", "127.0.82.2"]);
    nodes[0].wait_log(&format!("node down {}: heartbeat timeout", names[2]), FORM);
    nodes[2].wait_log(&format!("node down {}: heartbeat timeout", names[0]), FORM);
    // Both sides serve every order and add to it.
    for (n, list) in items.iter_mut() {
        for (via, add) in [(&names[1], 100), (&names[2], 200)] {
            let item = add + list[0];
            let ok = wait_call(via, n, &format!("{{\"add\":[{item}]}}"));
            assert!(ok, "{n} through {via} during the cut");
            list.push(item);
        }
    }
    drop(cut);
    wait_mesh(&nodes.iter().collect::<Vec<_>>(), &names.iter().map(String::as_str).collect::<Vec<_>>(), SETTLE);
    wait_until(
        SETTLE,
        "every order once, with both sides' items",
        || {
            let at = placement(&names[1]);
            items.iter().all(|(n, want)| {
                let mut want = want.clone();
                want.sort();
                at.get(n).is_some_and(|nodes| nodes.len() == 1) && contents(&names[1], n) == want
            })
        },
        || {
            let at = placement(&names[1]);
            items.iter().map(|(n, want)| format!("{n}: on {:?}, {:?}, want {want:?}", at.get(n), contents(&names[1], n))).collect::<Vec<_>>().join("\n")
        },
    );
}

/// The order's items, sorted (empty when it does not answer).
fn contents(via: &str, name: &str) -> Vec<i64> {
    let mut items: Vec<i64> = serde_json::from_str(&call(via, name, r#""contents""#).1).unwrap_or_default();
    items.sort();
    items
}

/// Calls until it succeeds (a side restarts what it lost a moment after it notices).
fn wait_call(via: &str, name: &str, msg: &str) -> bool {
    let mut ok = false;
    wait_until(
        FORM,
        &format!("{name} to answer through {via}"),
        || {
            ok = call(via, name, msg).0;
            ok
        },
        String::new,
    );
    ok
}

/// A node cut off from its peers when it gets SIGTERM keeps what it cannot hand over
/// and takes connections while it waits: once the cut heals, a peer connects, hears it
/// leaving, and takes every name with its state (merged, by the order's
/// `resolve-conflict`, with the instance the peer restarted meanwhile). Before, the
/// node stopped them at once ("no other node to hand … to; stopped (its state is
/// lost)"), and refused the peer.
#[test]
fn a_node_cut_off_when_it_gets_sigterm_hands_every_state_over_once_the_cut_heals() {
    let dir = TempDir::new("faults-cut-leave");
    let names = ["a@127.0.134.1", "b@127.0.134.2"];
    let gateway = "127.0.134.1:8080";
    let config = worker_topology(&names, &[("order", "worker_order.wasm", "activate_on_call = true")], Some(gateway));
    let a = Node::start(names[0], &dir.write("a.toml", &config));
    let b = Node::start(names[1], &dir.write("b.toml", &config.replace("\n[http]\nlisten = \"127.0.134.1:8080\"\ngateway = true\n", "")));
    wait_mesh(&[&a, &b], &names, FORM);
    let call = |key: &str, msg: &str| http(gateway, "POST", &format!("/v1/workers/order/{key}/call"), msg.as_bytes());
    for i in 0..20 {
        assert_eq!(call(&format!("o{i}"), &format!("{{\"add\":[{i}]}}")), (200, format!("[{i}]")));
    }
    let on_b = b.count("started order/");
    assert!(on_b >= 3, "{on_b} names on b");

    let cut = Cut::new("127.0.134.2", &["127.0.134.1"]);
    b.wait_log("node down a@127.0.134.1: heartbeat timeout", FORM);
    b.signal(libc::SIGTERM);
    // Its own names and those it restarted for `a` while cut off.
    b.wait_log_count("keeping its state until one connects", on_b, FORM);
    drop(cut);
    a.wait_log("node left b@127.0.134.2: it said it is leaving", FORM);
    for i in 0..20 {
        let (status, body) = call(&format!("o{i}"), "\"contents\"");
        assert_eq!((status, body), (200, format!("[{i}]")), "order/o{i} lost its items\n{}\n{}", a.log(), b.log());
    }
    assert_eq!(b.count("its state is lost"), 0, "{}", b.log());
}

/// The pause of the tests below: 3 s, twice the heartbeat timeout, so that the leaver
/// and the third node have both timed the paused node out and moved on well before it
/// wakes.
const PAUSE: Duration = Duration::from_secs(3);

/// A node leaves (SIGTERM) while the next owner of some of its names is paused: the
/// handoffs to the paused node wait in its socket, go unanswered, and go to the third
/// node once the paused one is declared down. When it wakes, it reads them all the
/// same. Every order must end running once, holding its items once.
#[test]
fn a_handoff_to_a_paused_node_that_wakes_after_it_went_elsewhere_runs_once_with_its_items_once() {
    let (_dir, names, mut nodes) = three_nodes("f-pause-handoff", 135, &[("order", "worker_order.wasm", "")], false);
    let mut items: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for k in 0..30 {
        assert!(start_worker(&names[0], "order", &format!("o{k}")).0);
        assert!(call(&names[0], &format!("order/o{k}"), &format!("{{\"add\":[{k}]}}")).0);
        items.insert(format!("order/o{k}"), vec![k]);
    }
    let on_a = placement(&names[2]).values().filter(|at| at == &&vec![names[0].clone()]).count();
    assert!(on_a >= 4, "{on_a} orders on a");
    let paused = Instant::now();
    nodes[1].signal(libc::SIGSTOP);
    nodes[0].signal(libc::SIGTERM);
    assert_eq!(nodes[0].wait_exit(SETTLE), Some(0), "{}", nodes[0].log());
    nodes[2].wait_log(&format!("node down {}: heartbeat timeout", names[1]), FORM);
    nodes[1].wake_after(paused, PAUSE);
    wait_mesh(&[&nodes[1], &nodes[2]], &[&names[1], &names[2]], SETTLE);
    wait_until(
        SETTLE,
        "every order once, with its items once",
        || {
            let at = placement(&names[2]);
            items.iter().all(|(n, want)| at.get(n).is_some_and(|nodes| nodes.len() == 1) && &contents(&names[2], n) == want)
        },
        || {
            let at = placement(&names[2]);
            let orders = items.iter().map(|(n, want)| format!("{n}: on {:?}, {:?}, want {want:?}", at.get(n), contents(&names[2], n)));
            format!("{}\n--- a\n{}\n--- b\n{}", orders.collect::<Vec<_>>().join("\n"), nodes[0].log(), nodes[1].log())
        },
    );
}

/// The counter variant: a counter has no `resolve-conflict`, so of two instances that
/// meet one keeps its state and the other's is dropped. The instance the paused node
/// starts when it wakes still holds the state it was handed; the one that went on from
/// that state on the third node (an increment each) is kept. Before, the woken node's
/// instance stayed (its node name is smaller) and the increments were dropped.
#[test]
fn a_handoff_to_a_paused_node_that_wakes_after_it_went_elsewhere_keeps_every_increment() {
    let (_dir, names, mut nodes) = three_nodes("f-pause-handoff-c", 136, &[("counter", "worker_counter.wasm", "")], false);
    let mut want = counters(&names[0], 30);
    let on_a: Vec<String> = placement(&names[2]).into_iter().filter(|(_, at)| at == &vec![names[0].clone()]).map(|(n, _)| n).collect();
    assert!(on_a.len() >= 4, "{} counters on a", on_a.len());
    let paused = Instant::now();
    nodes[1].signal(libc::SIGSTOP);
    nodes[0].signal(libc::SIGTERM);
    assert_eq!(nodes[0].wait_exit(SETTLE), Some(0), "{}", nodes[0].log());
    nodes[2].wait_log(&format!("node down {}: heartbeat timeout", names[1]), FORM);
    // What a handed over runs on c now (some of it after going to b first); the names
    // that ran on b were restarted empty on c, and are left alone (one side's state is
    // kept when a paused node wakes: docs/supervision.md).
    for n in &on_a {
        assert_eq!(call(&names[2], n, "increment"), (true, (want[n] + 1).to_string()), "{n}");
        *want.get_mut(n).unwrap() += 1;
    }
    nodes[1].wake_after(paused, PAUSE);
    wait_mesh(&[&nodes[1], &nodes[2]], &[&names[1], &names[2]], SETTLE);
    let handed: BTreeMap<String, u64> = want.into_iter().filter(|(n, _)| on_a.contains(n)).collect();
    wait_exactly_once_with(&names[2], &handed, SETTLE, "every counter a handed over once, with every increment");
}

/// A node cut off from the other two keeps serving the callers that reach it (its
/// durable counters take increments), while the other two take its counters over from
/// their copies and leave them as they were. Once the cut heals, the instances that
/// went on are kept: every increment acknowledged during the cut is there. Before, the
/// take-overs stayed (they rank as the later instance) and the cut-off side's
/// increments were dropped, the counter having no `resolve-conflict`.
#[test]
fn a_node_cut_off_keeps_what_it_acknowledged_when_the_take_overs_changed_nothing() {
    let kind = [("counter", "worker_counter.wasm", "durability = \"replicated\"")];
    let (_dir, names, nodes) = three_nodes("f-cutoff", 140, &kind, false);
    let mut want = counters(&names[0], 24);
    let on_c: Vec<String> = placement(&names[0]).into_iter().filter(|(_, at)| at == &vec![names[2].clone()]).map(|(n, _)| n).collect();
    assert!(on_c.len() >= 4, "{} counters on c", on_c.len());
    let ips: Vec<&str> = names.iter().map(|n| &n[2..]).collect();
    {
        let _cut = Cut::new(ips[2], &[ips[0], ips[1]]);
        nodes[0].wait_log(&format!("node down {}: heartbeat timeout", names[2]), FORM);
        nodes[2].wait_log(&format!("node down {}: heartbeat timeout", names[0]), FORM);
        // a and b took c's counters over from their copies (and changed nothing).
        wait_until(FORM, "c's counters answering on a", || on_c.iter().all(|n| call(&names[0], n, "value") == (true, want[n].to_string())), String::new);
        // c's own instances go on: two increments each, acknowledged.
        for n in &on_c {
            for _ in 0..2 {
                let v = want.get_mut(n).unwrap();
                *v += 1;
                assert_eq!(call(&names[2], n, "increment"), (true, v.to_string()), "{n} through c");
            }
        }
    }
    wait_mesh(&nodes.iter().collect::<Vec<_>>(), &names.iter().map(String::as_str).collect::<Vec<_>>(), SETTLE);
    wait_exactly_once_with(&names[0], &want, SETTLE, "every counter once, with what c acknowledged during the cut");
}

/// A one-way cut: what a sends to b is lost, what b sends to a arrives. a and b lose
/// their link while both stay linked to c: a partition that is not transitive. Each
/// keeps the other as a member while c still hears it (a link losing packets recovers),
/// for at most eight heartbeat timeouts; past them each gives the link up and cannot
/// dial it again. b restarts some of a's counters, which still run on a; c knows both
/// and sends its calls to the ones with state. Counters are incremented through c
/// meanwhile. Once the cut ends, every counter runs once and holds every increment.
#[test]
fn a_one_way_cut_between_two_nodes_loses_no_increment() {
    let (_dir, names, nodes) = three_nodes("f-oneway", 139, &[("counter", "worker_counter.wasm", "")], false);
    let mut want = counters(&names[2], 24);
    {
        let _cut = Cut::one_way(&names[0][2..], &[&names[1][2..]]);
        // 8 heartbeat timeouts of 1.5 s, and then some.
        let kept_max = Duration::from_secs(20);
        nodes[1].wait_log(&format!("{} has been silent past the heartbeat timeout, but {} heard it", names[0], names[2]), FORM);
        nodes[1].wait_log(&format!("nothing from {} for", names[0]), kept_max);
        nodes[1].wait_log(&format!("node down {}", names[0]), FORM);
        nodes[0].wait_log(&format!("node down {}", names[1]), kept_max);
        nodes[1].wait_log("restarted counter/", FORM);
        for round in 0..3 {
            for (n, v) in want.iter_mut() {
                let (ok, out) = call(&names[2], n, "increment");
                assert!(ok, "round {round}, {n}: {out}");
                *v += 1;
                assert_eq!(out, v.to_string(), "round {round}, {n}");
            }
        }
    }
    wait_mesh(&nodes.iter().collect::<Vec<_>>(), &names.iter().map(String::as_str).collect::<Vec<_>>(), SETTLE);
    wait_exactly_once_with(&names[2], &want, SETTLE, "every counter once, with every increment, after the cut");
}

/// A link between two members cut both ways for longer than the heartbeat timeout,
/// while a third member hears both: neither declares the other down (before, both did
/// at 1.5 s, and restarted the other's counters empty while the originals ran on).
/// Each asks the third when it last heard the silent one, keeps the connection, and
/// hears it again once TCP retransmits what the cut dropped. Counters are incremented
/// through the third meanwhile, and a's write of a large message to b waits past the
/// timeout rather than being taken for a peer that does not read. Every counter runs
/// once with every increment, nothing was restarted, and each end of the link counted
/// the silence it kept.
#[test]
fn a_link_cut_between_two_members_that_a_third_hears_is_no_node_down() {
    let (_dir, names, nodes) = three_nodes("f-link", 145, &[("counter", "worker_counter.wasm", "")], true);
    let mut want = counters(&names[2], 24);
    let cut = Cut::new(&names[0][2..], &[&names[1][2..]]);
    // Each side's line says the silence outlasted the heartbeat timeout.
    for (i, other) in [(0, 1), (1, 0)] {
        nodes[i].wait_log(&format!("{} has been silent past the heartbeat timeout, but {} heard it", names[other], names[2]), FORM);
    }
    for (n, v) in want.iter_mut() {
        let (ok, out) = call(&names[2], n, "increment");
        assert!(ok, "{n}: {out}");
        *v += 1;
        assert_eq!(out, v.to_string(), "{n}");
    }
    // A 12 MiB message from a to a counter on b fills a's socket on the cut link (a send
    // buffer grows to 4 MiB here): its write waits past the heartbeat timeout without a
    // not-reading disconnect.
    let on_b = placement(&names[2]).into_iter().find(|(_, at)| at == &vec![names[1].clone()]).expect("a counter on b").0;
    let large = std::thread::spawn(move || http("127.0.145.1:8080", "POST", &format!("/v1/workers/{on_b}/call"), &vec![b'x'; 12 << 20]).0);
    nodes[0].wait_log(&format!("a write to {} has not gone out within 1500 ms; waiting on", names[1]), FORM);
    drop(cut);
    for (i, other) in [(0, 1), (1, 0)] {
        nodes[i].wait_log(&format!("heard from {} again after", names[other]), FORM);
    }
    let status = large.join().expect("the large call");
    assert!(status > 0, "the large call got no answer");
    // Counted for operators: a link that loses packets, not a node down.
    let kept: Vec<u64> = (1..=3)
        .map(|i| {
            let (status, text) = http(&format!("127.0.145.{i}:8080"), "GET", "/metrics", b"");
            assert_eq!(status, 200, "{text}");
            text.lines().find_map(|l| l.strip_prefix("wasmnode_silences_kept_total ")?.trim().parse().ok()).unwrap_or_else(|| panic!("{text}"))
        })
        .collect();
    assert!(kept[0] >= 1 && kept[1] >= 1 && kept[2] == 0, "{kept:?}");
    for node in &nodes {
        assert_eq!(node.count("node down"), 0, "{}", node.log());
        assert_eq!(node.count("restarted counter/"), 0, "{}", node.log());
        for line in node.log().lines().filter(|l| l.contains("keeping its connection") || l.contains(" again after ")) {
            println!("{line}");
        }
    }
    wait_exactly_once_with(&names[0], &want, SETTLE, "every counter once, with every increment, after the cut");
}

/// A flaky network: a third of the packets between every two nodes are lost for 15 s,
/// so nodes declare each other down and back again and again while clients on every
/// node keep incrementing durable counters that merge duplicates (grow-only counters),
/// each increment retried with its call id until it is acknowledged. Instances are
/// taken over from copies on one side while the originals go on on the other; when
/// they meet, the merge keeps what either added: every counter runs once and holds
/// every acknowledged increment. A retry that crossed from one side to the other was
/// applied on both (neither side can know what the other applied); the node where the
/// two states merge says so, and a counter is over by no more than it said.
#[test]
fn a_flaky_network_loses_no_increment_of_a_merging_durable_worker_and_tells_each_applied_twice() {
    const TALLIES: usize = 24;
    const PER_TALLY: u64 = 150;
    let kind = [("tally", "worker_tally.wasm", "durability = \"replicated\"")];
    let (_dir, names, nodes) = three_nodes("f-flaky", 141, &kind, false);
    for k in 0..TALLIES {
        let (ok, out) = start_worker(&names[0], "tally", &format!("t{k}"));
        assert!(ok, "{out}");
    }
    let ips: Vec<&str> = names.iter().map(|n| &n[2..]).collect();
    let lossy = Cut::lossy(&ips, 0.33);
    let began = Instant::now();
    // Set when the lossy time is over (and should this thread panic first).
    let stop = Stop(Arc::new(AtomicBool::new(false)));
    let clients: Vec<_> = (0..3)
        .map(|c| {
            let via = names[c].clone();
            let stop = stop.0.clone();
            std::thread::spawn(move || {
                let mut acked: BTreeMap<String, u64> = (0..TALLIES).filter(|k| k % 3 == c).map(|k| (format!("tally/t{k}"), 0)).collect();
                let mut seq = 0;
                // At most PER_TALLY ids each, fewer than a call log remembers: every
                // retry finds its id, and both logs of an id applied twice still hold it.
                while !stop.load(Ordering::Relaxed) && acked.values().any(|&v| v < PER_TALLY) {
                    for (n, v) in acked.iter_mut().filter(|(_, v)| **v < PER_TALLY) {
                        seq += 1;
                        let id = format!("client{c}-{seq}");
                        // Retried with its id until acknowledged.
                        let give_up = Instant::now() + SETTLE;
                        while !call_once(&via, &id, n, "increment").0 {
                            assert!(Instant::now() < give_up, "{n} through {via}: increment {id} unanswered for {SETTLE:?}");
                        }
                        *v += 1;
                    }
                }
                acked
            })
        })
        .collect();
    // 15 s of loss, and on until a node has declared a peer down: a run of luck can let
    // every heartbeat through for longer (once in 18 runs, 15 s passed without one).
    let downs = || -> usize { nodes.iter().map(|n| n.count("node down")).sum() };
    wait_every(
        Duration::from_millis(100),
        Duration::from_secs(60),
        "15 s of a lossy network, and a node that declared a peer down in it (or the test tried nothing)",
        || began.elapsed() >= Duration::from_secs(15) && downs() > 0,
        || format!("{} node-down lines after {:?}", downs(), began.elapsed()),
    );
    stop.0.store(true, Ordering::Relaxed);
    let acked: BTreeMap<String, u64> = clients.into_iter().flat_map(|c| c.join().expect("a client")).collect();
    drop(lossy);
    let downs = downs();
    wait_mesh(&nodes.iter().collect::<Vec<_>>(), &names.iter().map(String::as_str).collect::<Vec<_>>(), SETTLE);
    let told = |n: &str| -> u64 { nodes.iter().map(|node| node.count(&format!(" to {n} was applied by both instances")) as u64).sum() };
    let wrong = || -> Vec<(String, String)> {
        let at = placement(&names[0]);
        acked
            .iter()
            .filter_map(|(n, &want)| {
                let value = call(&names[0], n, "value");
                let ok = at.get(n).is_some_and(|on| on.len() == 1) && value.0 && value.1.parse::<u64>().is_ok_and(|v| v >= want && v - want <= told(n));
                (!ok).then(|| (n.clone(), format!("{n}: on {:?}, value {value:?}, acknowledged {want}, told applied twice {}", at.get(n), told(n))))
            })
            .collect()
    };
    // What every node said of a tally (its INFO and WARN lines, the last 40 in time):
    // a failure here is a lost update, and a node's last lines rarely show its history.
    let history = |n: &str| -> String {
        let field = format!("worker={n}");
        let mut lines: Vec<String> = nodes
            .iter()
            .zip(&names)
            .flat_map(|(node, name)| {
                let log = node.log();
                let ours: Vec<String> =
                    log.lines().filter(|l| !l.contains(" DEBUG ") && l.split_whitespace().any(|w| w == field)).map(|l| format!("{name}: {l}")).collect();
                ours
            })
            .collect();
        // Each line starts with its node's name, then its timestamp: sort by the latter.
        lines.sort_by(|a, b| a.split_once(": ").map(|x| x.1).cmp(&b.split_once(": ").map(|x| x.1)));
        let skip = lines.len().saturating_sub(40);
        lines[skip..].join("\n")
    };
    wait_until(
        SETTLE,
        &format!("every tally once, with every acknowledged increment ({downs} node-down lines)"),
        || wrong().is_empty(),
        || wrong().into_iter().map(|(n, what)| format!("{what}\n---- what the nodes said of {n} ----\n{}", history(&n))).collect::<Vec<_>>().join("\n"),
    );
    let twice: u64 = acked.keys().map(|n| told(n)).sum();
    let over: u64 = acked.iter().map(|(n, want)| call(&names[0], n, "value").1.parse::<u64>().unwrap_or(0).saturating_sub(*want)).sum();
    let stale: usize = nodes.iter().map(|n| n.count("its state is held here as a copy")).sum();
    let merged: usize = nodes.iter().map(|n| n.count("stale instance of") + n.count("its stale instance here")).sum();
    println!(
        "{} increments acknowledged, {over} over, {twice} told applied twice, {downs} node-down lines, \
         {stale} stale instances stopped, {merged} of their states merged on",
        acked.values().sum::<u64>()
    );
}

/// Tells a test's client threads to stop when dropped: when the test says so, or when
/// it panics first (the threads would otherwise go on beside the next tests).
struct Stop(Arc<AtomicBool>);

impl Drop for Stop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}
