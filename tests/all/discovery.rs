//! Discovery through plugins: a strategy that errors or traps is logged with its path
//! and polled again, and the node keeps its connections and its other topologies.

use std::time::Duration;

use wasmnode_testkit::*;

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

# Writes a line break and a forged log line to its stderr at every poll.
[topology.forging]
strategy = "{broken}"
polling_interval_ms = 100
[topology.forging.config]
mode = "forge"

# Lists one name more than a poll may: nothing of it is dialled.
[topology.crowd]
strategy = "{broken}"
polling_interval_ms = 100
[topology.crowd.config]
mode = "many"
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
    // A strategy's stderr goes through the log, line by line behind its label: what it
    // wrote after its line break is not a line of its own.
    a.wait_log_count(&format!("[topology forging ({path})] 2026-12-05T00:00:00.000000Z  INFO node forged@"), 3, FORM);
    assert!(!a.log().lines().any(|l| l.starts_with("2026-12-05T00:00:00.000000Z")), "{}", a.log());
    a.wait_log_count(&format!("strategy crowd ({path}) returned 10001 names, more than the 10000 a poll may list; connections kept"), 3, FORM);
    assert_eq!(a.count("127.0.200.1"), 0, "a name of the crowd was dialled: {}", a.log());
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

/// A plugin that loops forever is stopped at its deadline; one that allocates without
/// bound is stopped at its memory cap; one that returns more bytes than its memory holds
/// (100 names of 1 MiB that are the same bytes, each copied anew) is stopped at its
/// memory cap too. Each is named in the log and polled again, and the node keeps its
/// connections and its other topology.
#[test]
fn runaway_plugins_are_stopped_at_their_limits() {
    let dir = TempDir::new("runaway");
    let names = ["a@127.0.25.1", "b@127.0.25.2"];
    let broken = plugin("strategy_broken.wasm");
    let topology = format!(
        r#"{static_part}
[topology.spinner]
strategy = "{broken}"
polling_interval_ms = 100
call_timeout_ms = 300
[topology.spinner.config]
mode = "loop"

[topology.hog]
strategy = "{broken}"
polling_interval_ms = 100
memory_limit_mb = 16
[topology.hog.config]
mode = "bomb"

[topology.aliasing]
strategy = "{broken}"
polling_interval_ms = 100
memory_limit_mb = 16
[topology.aliasing.config]
mode = "alias"
"#,
        static_part = static_topology(&names, 100),
        broken = broken.display(),
    );
    let a = Node::start(names[0], &dir.write("a.toml", &topology));
    let b = Node::start(names[1], &dir.write("b.toml", &static_topology(&names, 100)));
    wait_mesh(&[&a, &b], &names, FORM);
    let path = broken.display().to_string();
    a.wait_log_count(&format!("strategy spinner ({path}) trapped: exceeded its deadline of 300 ms; stopped"), 2, FORM);
    a.wait_log_count(&format!("strategy hog ({path}) trapped: exceeded its memory limit of 16 MiB; stopped"), 2, FORM);
    a.wait_log_count(&format!("strategy aliasing ({path}) trapped: had the host copy more than its memory limit of 16 MiB in one call"), 2, FORM);
    let polls = a.count("strategy local");
    a.wait_log_count("strategy local", polls + 5, FORM);
    assert_eq!(a.count("node down"), 0, "{}", a.log());
    assert_eq!(a.members(), names.iter().map(|s| s.to_string()).collect::<Vec<_>>());
}

/// A strategy built outside plugins/ with nothing but wit-bindgen and the WIT
/// (tests/plugins/strategy-minimal, the one docs/writing-a-strategy.md builds), copied
/// anywhere and named by path: the host, built without knowing it, runs it.
#[test]
fn a_strategy_from_elsewhere_is_dropped_in_by_path() {
    let dir = TempDir::new("minimal");
    let names = ["a@127.0.26.1", "b@127.0.26.2"];
    let dropped = dir.0.join("my_strategy.wasm");
    std::fs::copy(plugin("strategy_minimal.wasm"), &dropped).unwrap();
    let topology = format!(
        "[topology.mine]\nstrategy = \"{}\"\npolling_interval_ms = 200\n[topology.mine.config]\npeers = [\"{}\", \"{}\"]\n",
        dropped.display(),
        names[0],
        names[1]
    );
    let config = dir.write("t.toml", &topology);
    let out = cli(&["check", "--config", config.to_str().unwrap()], COOKIE);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let a = Node::start(names[0], &config);
    let b = Node::start(names[1], &config);
    wait_mesh(&[&a, &b], &names, FORM);
    a.wait_log(&format!("minimal strategy sees 2 peers plugin=\"topology mine ({})\"", dropped.display()), FORM);
}

/// The env strategy reads only the variables its topology passes through.
#[test]
fn env_strategy_reads_the_variable_it_is_given() {
    let dir = TempDir::new("envstrat");
    let names = ["a@127.0.27.1", "b@127.0.27.2"];
    let env_plugin = plugin("strategy_env.wasm");
    let topology = |env: &str| {
        format!("[topology.env]\nstrategy = \"{}\"\npolling_interval_ms = 200\n{env}\n[topology.env.config]\nvariable = \"NODES\"\n", env_plugin.display())
    };
    let nodes = format!("{} {}", names[0], names[1]);
    let config = dir.write("t.toml", &topology("env = [\"NODES\"]"));
    let a = Node::start_with(names[0], &config, &[], &[("NODES", &nodes)]);
    let b = Node::start_with(names[1], &config, &[], &[("NODES", &nodes)]);
    wait_mesh(&[&a, &b], &names, FORM);

    // Without `env`, the plugin sees nothing and says how to fix it.
    let closed = dir.write("closed.toml", &topology(""));
    let c = Node::start_with("c@127.0.27.3", &closed, &[], &[("NODES", &nodes)]);
    c.wait_log("environment variable NODES is not visible to the plugin: set it, and list it in the topology's env = [\"NODES\"]", FORM);
}
