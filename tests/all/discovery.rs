//! Discovery through plugins: a strategy that errors or traps is logged with its path
//! and polled again, and the node keeps its connections and its other topologies.

use std::time::Duration;

use wasmnode_tests::*;

const FORM: Duration = Duration::from_secs(10);

#[test]
fn broken_strategies_are_logged_retried_and_harm_nobody() {
    let dir = TempDir::new("broken");
    let names = ["a@127.0.13.1", "b@127.0.13.2", "c@127.0.13.3"];
    let broken = plugin("strategy_broken.wasm");
    let topology = format!(
        r#"{static_part}
[topology.trapping]
strategy = "{broken}"
polling_interval_ms = 100
[topology.trapping.config]
mode = "trap"

[topology.failing]
strategy = "{broken}"
polling_interval_ms = 100
[topology.failing.config]
mode = "error"

# Finds c on one poll, traps on the next: c must stay connected through the traps.
[topology.flaky]
strategy = "{broken}"
polling_interval_ms = 100
[topology.flaky.config]
mode = "flaky"
hosts = ["{c}"]
"#,
        static_part = static_topology(&names[..2], 100),
        broken = broken.display(),
        c = names[2],
    );
    let a_config = dir.write("a.toml", &topology);
    let others = dir.write("others.toml", &static_topology(&names[..2], 100));
    let a = Node::start(names[0], &a_config);
    let b = Node::start(names[1], &others);
    let c = Node::start(names[2], &others);
    wait_mesh(&[&a, &b, &c], &names, FORM);

    let path = broken.display().to_string();
    // Each failure names the topology and the plugin's path, and comes back poll after poll.
    a.wait_log_count(&format!("strategy failing ({path}) returned an error: failing on purpose"), 3, FORM);
    a.wait_log_count(&format!("strategy trapping ({path}) trapped:"), 3, FORM);
    a.wait_log_count(&format!("strategy flaky ({path}) trapped:"), 3, FORM);
    // The static topology kept polling alongside.
    let polls = a.count("strategy local");
    a.wait_log_count("strategy local", polls + 5, FORM);
    // Nobody was disconnected by any of it.
    assert_eq!(a.count("node down"), 0, "{}", a.log());
    assert_eq!(a.members(), names.iter().map(|s| s.to_string()).collect::<Vec<_>>());
}

/// A strategy whose `init` refuses its config is logged and retried; the node runs on.
#[test]
fn init_refusal_is_logged_and_the_node_runs() {
    let dir = TempDir::new("initerr");
    let names = ["a@127.0.18.1", "b@127.0.18.2"];
    let broken = plugin("strategy_broken.wasm");
    let topology = format!(
        "{}\n[topology.picky]\nstrategy = \"{}\"\npolling_interval_ms = 100\n[topology.picky.config]\nmode = \"init-error\"\n",
        static_topology(&names, 100),
        broken.display()
    );
    let config = dir.write("t.toml", &topology);
    let a = Node::start(names[0], &config);
    let b = Node::start(names[1], &config);
    wait_mesh(&[&a, &b], &names, FORM);
    a.wait_log_count("init refused its config: refusing the config on purpose", 2, FORM);
}
