//! A real network partition: iptables rules drop every packet between one node's
//! loopback address and the others' (nodes dial from their own addresses, so the cut is
//! exact). While cut off, each side goes on serving (availability over consistency, as
//! Horde and Swarm do): the side that lost a name restarts it. When the cut heals,
//! exactly one instance of each name is left; the other's state goes to the worker's
//! `resolve-conflict` export when it has one (the order merges both sides' items) or is
//! dropped with a warning naming it (the counter has none).
//! Needs root for iptables, as CI has; it fails (never skips) otherwise.

use std::time::Duration;

use wasmnode_testkit::*;

const FORM: Duration = Duration::from_secs(10);

fn contents(node: &str) -> (bool, String) {
    call(node, "order/John", r#""contents""#)
}

#[test]
fn a_partition_serves_both_sides_and_heals_to_one_instance() {
    let dir = TempDir::new("partition");
    let names = ["a@127.0.76.1", "b@127.0.76.2", "c@127.0.76.3"];
    let kinds = [("order", "worker_order.wasm", ""), ("counter", "worker_counter.wasm", "")];
    let config = dir.write("t.toml", &worker_topology(&names, &kinds, None));
    let nodes: Vec<Node> = names.iter().map(|n| Node::start(n, &config)).collect();
    wait_mesh(&nodes.iter().collect::<Vec<_>>(), &names, FORM);
    assert!(start_worker(names[0], "order", "John").0);
    assert!(start_worker(names[0], "counter", "x").0);
    assert_eq!(call(names[1], "order/John", r#"{"add":[1,2,3]}"#), (true, "[1,2,3]".to_string()));

    let cut = Cut::new("127.0.76.3", &["127.0.76.1", "127.0.76.2"]);
    // Each side sees the other go silent, and both sides serve order/John again.
    nodes[0].wait_log("node down c@127.0.76.3: heartbeat timeout", FORM);
    nodes[2].wait_log("node down a@127.0.76.1: heartbeat timeout", FORM);
    wait_until(
        FORM,
        "order/John and counter/x served on both sides",
        || contents(names[0]).0 && contents(names[2]).0 && call(names[0], "counter/x", "value").0 && call(names[2], "counter/x", "value").0,
        String::new,
    );
    let (_, left) = call(names[1], "order/John", r#"{"add":[4]}"#);
    let (_, right) = call(names[2], "order/John", r#"{"add":[9]}"#);
    assert_ne!(left, right, "two instances, one per side, each with its own writes");
    assert!(call(names[1], "counter/x", "increment").0 && call(names[2], "counter/x", "increment").0);

    drop(cut);
    wait_mesh(&nodes.iter().collect::<Vec<_>>(), &names, Duration::from_secs(30));
    // Exactly one instance of each name is left. The order merged both sides' items
    // (resolve-conflict); the counter, which cannot merge, kept one side's value and the
    // other's was dropped with a warning naming it.
    let holders = |name: &str| workers_by_node(names[0]).iter().filter(|(_, w)| w.iter().any(|w| w == name)).count();
    let merged = |s: &str| {
        let mut items: Vec<i64> = serde_json::from_str(s).unwrap_or_default();
        items.sort();
        items == vec![1, 2, 3, 4, 9]
    };
    wait_until(
        Duration::from_secs(10),
        "one order/John with both sides' items, the same from every node",
        || holders("order/John") == 1 && holders("counter/x") == 1 && names.iter().all(|n| merged(&contents(n).1)),
        || names.iter().map(|n| format!("{n}: {:?}", contents(n))).collect::<Vec<_>>().join("\n"),
    );
    let logs: String = nodes.iter().map(|n| n.log()).collect();
    assert!(logs.contains("merged the state of order/John from "), "{logs}");
    assert!(logs.contains("dropped the state of counter/x from ") && logs.contains("the worker exports no resolve-conflict"), "{logs}");
    let values: Vec<String> = names.iter().map(|n| call(n, "counter/x", "value").1).collect();
    assert!(values.iter().all(|v| *v == values[0]) && values[0] == "1", "one side's value, from every node: {values:?}");
}
