//! The image on real containers (Docker Engine, no registry): docker-compose.yml starts
//! the nodes on a private network, the DNS strategy asks Docker's own DNS for the
//! Compose service name, and every check runs from inside the network (`docker exec`
//! of the image's own `wasmnode nodes` / `wasmnode probe`). `./dev test` builds the
//! image first (`./dev image`); a missing image or Docker daemon fails with that command.
//!
//! The k8s/ manifests and the Swarm stack are validated offline here too: no API server
//! can run on this machine, so the Kubernetes checks are the API's own schemas
//! (kubernetes-validate) plus the image running `check` on each ConfigMap's topology.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Once;
use std::time::Duration;

use wasmnode_testkit::*;

/// The image `./dev image` builds: wasmnode:<workspace version>.
fn image() -> String {
    let manifest = std::fs::read_to_string(repo_root().join("Cargo.toml")).unwrap();
    let version = manifest.lines().find_map(|l| l.strip_prefix("version = \"").and_then(|v| v.strip_suffix('"'))).expect("workspace version in Cargo.toml");
    format!("wasmnode:{version}")
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (is Docker installed? ./dev test installs docker-compose)"))
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?} failed:\n{}", output_text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// One container test at a time (they share the two cores with the rest of the suite),
/// after leftovers of an interrupted earlier run are removed and the image is checked.
/// Held until the test ends, after its containers are down: a lock on a file, which
/// serialises the tests' threads and processes alike (`cargo nextest` runs each test in
/// a process of its own), and is let go when the file closes.
fn exclusive() -> std::fs::File {
    static CLEAN: Once = Once::new();
    let path = std::env::temp_dir().join("wasmnode-container-tests.lock");
    let file = std::fs::File::options().create(true).truncate(false).write(true).open(&path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    file.lock().unwrap_or_else(|e| panic!("cannot lock {}: {e}", path.display()));
    CLEAN.call_once(|| {
        let info = run(Command::new("docker").arg("info"));
        assert!(info.status.success(), "the Docker daemon does not answer `docker info`: start it (systemctl start docker)");
        let img = run(Command::new("docker").args(["image", "inspect", &image()]));
        assert!(img.status.success(), "image {} is missing: build it with ./dev image (./dev test does)", image());
        // Leftovers of an interrupted run: its process is gone, its project name (which
        // ends in that process's id) stays.
        let format = ["--format", "{{.ID}} {{.Label \"com.docker.compose.project\"}}"];
        for (list, remove) in [(vec!["ps", "-a"], vec!["rm", "-f"]), (vec!["network", "ls"], vec!["network", "rm"])] {
            for line in ok(Command::new("docker").args(&list).args(format)).lines() {
                if let Some((id, project)) = line.split_once(' ') {
                    if leftover(project) {
                        let _ = run(Command::new("docker").args(&remove).arg(id));
                    }
                }
            }
        }
    });
    file
}

/// Whether a Compose project is a test's whose process has ended (see [`Compose::up`]).
fn leftover(project: &str) -> bool {
    let Some(rest) = project.strip_prefix("wasmnode-test-") else { return false };
    match rest.rsplit('-').next().and_then(|pid| pid.parse::<u32>().ok()) {
        Some(pid) => !std::path::Path::new("/proc").join(pid.to_string()).exists(),
        None => true,
    }
}

/// A docker-compose project of the repository's docker-compose.yml on its own subnet,
/// taken down (containers and network) when dropped.
struct Compose {
    project: String,
    subnet: String,
}

impl Compose {
    fn up(tag: &str, octet: u8, nodes: usize) -> Compose {
        let c = Compose { project: format!("wasmnode-test-{tag}-{}", std::process::id()), subnet: format!("172.31.{octet}.0/24") };
        c.scale(nodes);
        c
    }

    fn compose(&self) -> Command {
        let mut cmd = Command::new("docker-compose");
        cmd.arg("-f")
            .arg(repo_root().join("docker-compose.yml"))
            .args(["-p", &self.project])
            .env("WASMNODE_COOKIE", COOKIE)
            .env("WASMNODE_GATEWAY_TOKEN", GATEWAY_TOKEN)
            .env("WASMNODE_SUBNET", &self.subnet)
            .env("WASMNODE_IMAGE", image())
            .env("RUST_LOG", "info");
        cmd
    }

    fn scale(&self, n: usize) {
        ok(self.compose().args(["up", "-d", "--no-recreate", "--scale", &format!("node={n}")]));
        wait_until(Duration::from_secs(30), &format!("{n} running containers"), || self.containers().len() == n, || self.logs_all());
    }

    fn network(&self) -> String {
        format!("{}_cluster", self.project)
    }

    /// The running containers of the service, oldest first.
    fn containers(&self) -> Vec<String> {
        let ids = ok(self.compose().args(["ps", "-q", "node"]));
        let mut running: Vec<(String, String)> = ids
            .lines()
            .filter_map(|id| {
                let s = ok(Command::new("docker").args(["inspect", "-f", "{{.State.Running}} {{.Name}}", id]));
                let (state, name) = s.split_once(' ')?;
                (state == "true").then(|| (name.trim_start_matches('/').to_string(), id.to_string()))
            })
            .collect();
        running.sort_by_key(|(name, _)| name.rsplit('_').next().and_then(|n| n.parse::<u32>().ok()).unwrap_or(0));
        running.into_iter().map(|(name, _)| name).collect()
    }

    /// The container's address on the cluster network ("" when it is not attached).
    fn ip(&self, container: &str) -> String {
        let f = format!("{{{{with index .NetworkSettings.Networks \"{}\"}}}}{{{{.IPAddress}}}}{{{{end}}}}", self.network());
        ok(Command::new("docker").args(["inspect", "-f", &f, container]))
    }

    fn node_name(&self, container: &str) -> String {
        format!("myapp@{}", self.ip(container))
    }

    /// `wasmnode ARGS` inside the container (the image's own binary, its own cookie).
    fn exec(&self, container: &str, args: &[&str]) -> Output {
        run(Command::new("docker").args(["exec", container, "wasmnode"]).args(args))
    }

    /// The members `container`'s node sees, asked with the CLI inside the container.
    fn members(&self, container: &str, node: &str) -> Vec<String> {
        member_names(&self.exec(container, &["nodes", "--node", node, "--json"]))
    }

    /// Waits until every running container sees exactly the running containers.
    fn wait_mesh(&self, timeout: Duration) -> Vec<String> {
        let mut expected = Vec::new();
        wait_until(
            timeout,
            "every container sees every running container (the full mesh)",
            || {
                let cs = self.containers();
                let names: Vec<String> = cs.iter().map(|c| self.node_name(c)).collect();
                expected = names.clone();
                expected.sort();
                cs.iter().zip(&names).all(|(c, n)| self.members(c, n) == expected)
            },
            || self.logs_all(),
        );
        expected
    }

    /// GET a node's HTTP port from inside `from` (the image has no curl: `wasmnode probe`).
    fn probe(&self, from: &str, url: &str) -> (bool, String) {
        let out = self.exec(from, &["probe", url]);
        (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string())
    }

    /// One sample of a Prometheus text page: the value of the line that starts `series `.
    fn metric(&self, from: &str, ip: &str, series: &str) -> Option<f64> {
        let (_, body) = self.probe(from, &format!("http://{ip}:9090/metrics"));
        body.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
    }

    fn logs(&self, container: &str) -> String {
        output_text(&run(Command::new("docker").args(["logs", container])))
    }

    /// Waits until `container`'s log holds `line`.
    fn wait_log(&self, container: &str, line: &str, timeout: Duration) {
        wait_until(timeout, line, || self.logs(container).contains(line), || self.logs(container));
    }

    fn logs_all(&self) -> String {
        let out = run(self.compose().args(["logs", "--no-color"]));
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        // The end of each container's log is what tells why a wait failed.
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(120)..].join("\n")
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        let _ = run(self.compose().args(["down", "--volumes", "--timeout", "2"]));
    }
}

/// The image: FROM scratch (no shell), non-root, at most 40 MB, and its binary answers
/// `--version` and `probe --help`.
#[test]
fn the_image_is_small_static_and_runs_as_non_root() {
    let _g = exclusive();
    let inspect = ok(Command::new("docker").args(["image", "inspect", "-f", "{{.Size}} {{.Config.User}} {{json .Config.Entrypoint}}", &image()]));
    let mut parts = inspect.splitn(3, ' ');
    let size: u64 = parts.next().unwrap().parse().unwrap();
    assert!(size <= 40_000_000, "image {} is {size} bytes, over 40 MB", image());
    assert_eq!(parts.next(), Some("10001:10001"), "the image must run as uid 10001");
    assert_eq!(parts.next(), Some(r#"["wasmnode"]"#));
    let out = ok(Command::new("docker").args(["run", "--rm", &image(), "--version"]));
    assert!(out.starts_with("wasmnode "), "{out}");
    // No shell in a FROM-scratch image: only the binary can run.
    let sh = run(Command::new("docker").args(["run", "--rm", "--entrypoint", "/bin/sh", &image(), "-c", "true"]));
    assert!(!sh.status.success(), "the image has a shell: it is not FROM scratch");
    let help = ok(Command::new("docker").args(["run", "--rm", &image(), "probe", "--help"]));
    assert!(help.contains("Usage"), "{help}");
}

/// `docker build .` in the repository fails at once (nothing is sent: .dockerignore) and
/// its output says to build with `./dev image`, with the classic builder and BuildKit.
#[test]
fn docker_build_in_the_repository_says_to_run_dev_image() {
    let _g = exclusive();
    let out = run(Command::new("docker").args(["build", "."]).current_dir(repo_root()));
    let text = output_text(&out);
    assert!(!out.status.success(), "docker build . in the repository built something:\n{text}");
    assert!(text.contains("run ./dev image"), "docker build . does not say how to build the image:\n{text}");
    assert!(text.contains("rootfs"), "it should stop at the first COPY:\n{text}");
}

/// Three containers mesh through Docker's DNS; scaled to 5 and back to 3 the mesh follows
/// (the two that stop leave); a `docker kill`ed one is reported down with its reason, in
/// the log and in /metrics; probes answer from inside the network.
#[test]
fn compose_cluster_meshes_scales_and_reports_a_kill() {
    let _g = exclusive();
    let c = Compose::up("mesh", 251, 3);
    let three = c.wait_mesh(Duration::from_secs(60));
    assert_eq!(three.len(), 3);
    let cs = c.containers();

    // Probes from another container on the network.
    let ip1 = c.ip(&cs[1]);
    assert_eq!(c.probe(&cs[0], &format!("http://{ip1}:9090/healthz")), (true, "ok\n".to_string()));
    assert_eq!(c.probe(&cs[0], &format!("http://{ip1}:9090/readyz")), (true, "ready\n".to_string()));
    assert_eq!(c.metric(&cs[0], &ip1, "wasmnode_members"), Some(3.0));

    c.scale(5);
    let five = c.wait_mesh(Duration::from_secs(60));
    assert_eq!(five.len(), 5);

    c.scale(3);
    let back = c.wait_mesh(Duration::from_secs(60));
    assert_eq!(back.len(), 3);
    let gone: Vec<&String> = five.iter().filter(|n| !back.contains(n)).collect();
    assert_eq!(gone.len(), 2);
    let survivor = &c.containers()[0];
    let log = c.logs(survivor);
    for n in &gone {
        assert!(log.contains(&format!("node left {n}")), "{survivor} did not log that {n} left:\n{log}");
    }
    let ip0 = c.ip(survivor);
    assert_eq!(c.metric(survivor, &ip0, "wasmnode_disconnects_total{reason=\"left\"}"), Some(2.0));

    // docker kill: SIGKILL, so the peers see the connection close.
    let cs = c.containers();
    let victim = cs[2].clone();
    let victim_name = c.node_name(&victim);
    ok(Command::new("docker").args(["kill", &victim]));
    let want = format!("node down {victim_name}: connection closed");
    for s in &cs[..2] {
        c.wait_log(s, &want, Duration::from_secs(10));
    }
    let ip0 = c.ip(&cs[0]);
    let from = &cs[1];
    assert_eq!(c.metric(from, &ip0, "wasmnode_disconnects_total{reason=\"connection_closed\"}"), Some(1.0));
    wait_until(Duration::from_secs(10), "2 members", || c.metric(from, &ip0, "wasmnode_members") == Some(2.0), || c.logs(&cs[0]));
    let (ready, _) = c.probe(from, &format!("http://{ip0}:9090/readyz"));
    assert!(ready, "a node stays ready when a peer dies");
}

/// `docker network disconnect` cuts one container off: both sides report the others down
/// by heartbeat timeout (counted in /metrics by that reason); `docker network connect`
/// with the same address heals the mesh.
#[test]
fn compose_cluster_partition_by_network_disconnect_heals() {
    let _g = exclusive();
    let c = Compose::up("partition", 252, 3);
    c.wait_mesh(Duration::from_secs(60));
    let cs = c.containers();
    let (cut, cut_ip) = (cs[2].clone(), c.ip(&cs[2]));
    let cut_name = format!("myapp@{cut_ip}");
    ok(Command::new("docker").args(["network", "disconnect", &c.network(), &cut]));
    let want = format!("node down {cut_name}: heartbeat timeout");
    for s in &cs[..2] {
        c.wait_log(s, &want, Duration::from_secs(15));
    }
    let ip0 = c.ip(&cs[0]);
    assert_eq!(c.metric(&cs[1], &ip0, "wasmnode_disconnects_total{reason=\"heartbeat_timeout\"}"), Some(1.0));
    // The cut-off node sees the same from its side.
    let ip1 = c.ip(&cs[1]);
    let cut_side = format!("node down myapp@{ip1}: heartbeat timeout");
    c.wait_log(&cut, &cut_side, Duration::from_secs(15));
    // Its address is gone with the network, so the CLI cannot reach it: its log tells.
    let alone = format!("members (1): {cut_name}\n");
    c.wait_log(&cut, &alone, Duration::from_secs(5));

    ok(Command::new("docker").args(["network", "connect", "--ip", &cut_ip, &c.network(), &cut]));
    let healed = c.wait_mesh(Duration::from_secs(60));
    assert!(healed.contains(&cut_name), "{healed:?}");
}

/// `docker stop` (SIGTERM) of the container that owns order/John hands its contents to
/// the next owner: another container reads [1,2,3] afterwards.
#[test]
fn compose_docker_stop_hands_the_order_over() {
    let _g = exclusive();
    let c = Compose::up("handoff", 253, 3);
    c.wait_mesh(Duration::from_secs(60));
    let cs = c.containers();
    let via = c.node_name(&cs[0]);
    let out = c.exec(&cs[0], &["call", "--node", &via, "order/John", r#"{"add":[1,2,3]}"#]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[1,2,3]");

    // Where does it run? Ask the cluster.
    let w = c.exec(&cs[0], &["workers", "--node", &via, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&w.stdout).unwrap();
    let owner_name = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["workers"].as_array().unwrap().iter().any(|x| x == "order/John"))
        .and_then(|n| n["node"].as_str())
        .expect("order/John runs somewhere")
        .to_string();
    let owner = cs.iter().find(|x| c.node_name(x) == owner_name).unwrap().clone();
    let other = cs.iter().find(|x| **x != owner).unwrap().clone();
    let other_name = c.node_name(&other);

    ok(Command::new("docker").args(["stop", &owner]));
    let log = c.logs(&owner);
    assert!(log.contains("moved order/John to"), "the stopped node did not hand order/John over:\n{log}");
    let out = c.exec(&other, &["call", "--node", &other_name, "order/John", "contents"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[1,2,3]", "the contents survived the stop");
    // Exactly one instance runs, on a survivor, as the survivors' own metrics count it.
    let survivors: Vec<&String> = cs.iter().filter(|x| **x != owner).collect();
    let running: f64 = survivors.iter().map(|x| c.metric(&other, &c.ip(x), "wasmnode_worker_instances{kind=\"order\"}").unwrap_or(0.0)).sum();
    assert_eq!(running, 1.0, "order/John must run once among the survivors (it ran on {owner_name})");
}

/// docker-compose.yml and the Swarm stack parse as their tools read them.
#[test]
fn the_compose_and_stack_files_are_valid() {
    let _g = exclusive();
    let out = ok(Command::new("docker-compose")
        .arg("-f")
        .arg(repo_root().join("docker-compose.yml"))
        .args(["config"])
        .env("WASMNODE_COOKIE", COOKIE)
        .env("WASMNODE_GATEWAY_TOKEN", GATEWAY_TOKEN));
    assert!(out.contains("/wasmnode/config/compose.toml"), "{out}");
    let stack = ok(Command::new("docker").args(["stack", "config", "-c"]).arg(repo_root().join("k8s/swarm-stack.yml")));
    assert!(stack.contains("tasks") || stack.contains("/wasmnode/config/swarm.toml"), "{stack}");
    assert!(stack.contains("endpoint_mode: dnsrr"), "tasks.<service> needs DNS round robin:\n{stack}");
    // Commands that start no node work without the secrets (a node started without the
    // cookie refuses to run, naming WASMNODE_COOKIE: `run_without_a_cookie_fails_clearly`).
    let none = run(Command::new("docker-compose")
        .arg("-f")
        .arg(repo_root().join("docker-compose.yml"))
        .arg("config")
        .env_remove("WASMNODE_COOKIE")
        .env_remove("WASMNODE_GATEWAY_TOKEN"));
    assert!(none.status.success(), "{}", String::from_utf8_lossy(&none.stderr));
    let spec = std::fs::read_to_string(repo_root().join("docker-compose.yml")).unwrap();
    assert!(!spec.lines().any(|l| l.starts_with("version:")), "the Compose spec has no `version:`");
}

fn pyenv() -> PathBuf {
    let p = PathBuf::from(std::env::var("WASMNODE_PYENV").unwrap_or_else(|_| "/var/tmp/wasmnode-pyenv".into()));
    assert!(
        p.join("bin/kubernetes-validate").is_file(),
        "kubernetes-validate is missing from {}: ./dev test installs it (pip install kubernetes-validate==1.37.0)",
        p.display()
    );
    p
}

/// Every manifest in k8s/ matches the Kubernetes 1.33 schemas (strict) and what wasmnode
/// needs of it (tools/validate-k8s.py), and each ConfigMap's topology passes `check` in
/// the image, at the path the workload mounts it, with the downward API's variables.
#[test]
fn the_kubernetes_manifests_validate_and_their_topologies_pass_check_in_the_image() {
    let _g = exclusive();
    let dir = TempDir::new("k8s-topologies");
    let out = run(Command::new(pyenv().join("bin/python")).arg(repo_root().join("tools/validate-k8s.py")).arg("--dump-topologies").arg(&dir.0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "k8s/ does not validate:\n{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("manifests: ") && text.contains(" passed, 0 failed"), "{text}");

    // The StatefulSet's [node.tls] Secret, as docs/operations.md makes it: one wildcard
    // certificate for every pod's name, readable by the image's user.
    let tls = dir.0.join("tls");
    ok(Command::new(bin()).args(["certs", "--dir"]).arg(&tls).arg("*.myapp-headless.default.svc.cluster.local"));
    for (from, to) in [("_.myapp-headless.default.svc.cluster.local.crt", "tls.crt"), ("_.myapp-headless.default.svc.cluster.local.key", "tls.key")] {
        std::fs::rename(tls.join(from), tls.join(to)).unwrap();
    }
    std::fs::remove_file(tls.join("ca.key")).unwrap();
    for f in ["tls.crt", "tls.key", "ca.crt"] {
        std::fs::set_permissions(tls.join(f), std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    }
    for variant in ["deployment", "statefulset"] {
        let topo = dir.0.join(variant);
        assert!(topo.join("topology.toml").is_file(), "{variant}: no topology dumped");
        let mount = format!("{}:/wasmnode/topology:ro", topo.display());
        let tls_mount = format!("{}:/wasmnode/tls:ro", tls.display());
        let out = ok(Command::new("docker").args([
            "run",
            "--rm",
            "-v",
            &mount,
            "-v",
            &tls_mount,
            "-e",
            "POD_IP=10.1.0.65",
            "-e",
            "POD_NAME=myapp-0",
            "-e",
            "NAMESPACE=default",
            "-e",
            &format!("WASMNODE_COOKIE={COOKIE}"),
            "-e",
            &format!("WASMNODE_GATEWAY_TOKEN={GATEWAY_TOKEN}"),
            &image(),
            "check",
            "--config",
            "/wasmnode/topology/topology.toml",
        ]));
        // The image's cache, filled at build time, is where check says it is.
        assert!(out.starts_with("compiled-code cache: /wasmnode/cache ("), "{variant}: {out}");
        assert!(out.ends_with("\n/wasmnode/topology/topology.toml: ok"), "{variant}: {out}");
    }
}

/// A single-node swarm for one test, left (and its bridge removed) when dropped. A swarm
/// this test did not make is not touched: the test fails and says how to leave it.
struct Swarm {
    stack: String,
}

const SWARM_POOL: &str = "172.30.0.0/16";

impl Swarm {
    fn init(stack: &str) -> Swarm {
        let state = ok(Command::new("docker").args(["info", "-f", "{{.Swarm.LocalNodeState}}"]));
        // A swarm the tests made is known by its address pool (set at init, atomically).
        if state == "active" {
            let pool = ok(Command::new("docker").args(["info", "-f", "{{json .Swarm.Cluster.DefaultAddrPool}}"]));
            assert_eq!(
                pool,
                format!("[\"{SWARM_POOL}\"]"),
                "this Docker engine is already in a swarm that the tests did not make: leave it first (docker swarm leave --force)"
            );
            Swarm::leave();
        }
        // Its own address pool, so that the ingress network stays off everyone's 10.0.0.0/8.
        ok(Command::new("docker").args(["swarm", "init", "--advertise-addr", "127.0.0.1", "--default-addr-pool", SWARM_POOL]));
        Swarm { stack: stack.to_string() }
    }

    fn leave() {
        let _ = run(Command::new("docker").args(["swarm", "leave", "--force"]));
        let _ = run(Command::new("docker").args(["network", "rm", "docker_gwbridge"]));
    }

    fn service(&self) -> String {
        format!("{}_myapp", self.stack)
    }

    /// The service's running containers and their addresses on the stack's network.
    fn tasks(&self) -> Vec<(String, String)> {
        let ids = ok(Command::new("docker").args(["ps", "-q", "--filter", &format!("label=com.docker.swarm.service.name={}", self.service())]));
        let net = format!("{}_cluster", self.stack);
        let f = format!("{{{{with index .NetworkSettings.Networks \"{net}\"}}}}{{{{.IPAddress}}}}{{{{end}}}}");
        ids.lines().map(|id| (id.to_string(), ok(Command::new("docker").args(["inspect", "-f", &f, id])))).filter(|(_, ip)| !ip.is_empty()).collect()
    }

    /// The members the task's own node sees: the CLI takes the node (its own address) and
    /// the cookie (the Swarm secret's file) from the topology.
    fn members(&self, id: &str) -> Vec<String> {
        member_names(&run(Command::new("docker").args(["exec", id, "wasmnode", "nodes", "--config", "/wasmnode/config/swarm.toml", "--json"])))
    }

    fn wait_mesh(&self, n: usize, timeout: Duration) {
        wait_until(
            timeout,
            &format!("{n} tasks, each seeing all {n}"),
            || {
                let tasks = self.tasks();
                let mut names: Vec<String> = tasks.iter().map(|(_, ip)| format!("myapp@{ip}")).collect();
                names.sort();
                tasks.len() == n && tasks.iter().all(|(id, _)| self.members(id) == names)
            },
            || output_text(&run(Command::new("docker").args(["service", "logs", "--tail", "40", &self.service()]))),
        );
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        let _ = run(Command::new("docker").args(["stack", "rm", &self.stack]));
        let _ = run(Command::new("docker").args(["secret", "rm", "wasmnode_cookie", "wasmnode_gateway_token"]));
        Swarm::leave();
        // Task containers outlive the stack briefly; remove them so the next run starts clean.
        let ids = ok(Command::new("docker").args(["ps", "-aq", "--filter", &format!("label=com.docker.stack.namespace={}", self.stack)]));
        for id in ids.lines() {
            let _ = run(Command::new("docker").args(["rm", "-f", id]));
        }
    }
}

/// k8s/swarm-stack.yml on a real (single-node) swarm: the cookie from a Swarm secret, the
/// tasks find each other through `tasks.myapp`, and `docker service scale` is followed.
#[test]
fn swarm_stack_meshes_through_tasks_dns_and_follows_a_scale() {
    let _g = exclusive();
    let swarm = Swarm::init(&format!("wnswarm{}", std::process::id()));
    for (secret_name, value) in [("wasmnode_cookie", COOKIE), ("wasmnode_gateway_token", GATEWAY_TOKEN)] {
        let mut secret = Command::new("docker");
        secret.args(["secret", "create", secret_name, "-"]).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::null());
        let mut child = secret.spawn().unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(value.as_bytes()).unwrap();
        assert!(child.wait().unwrap().success(), "docker secret create {secret_name} failed");
    }
    ok(Command::new("docker")
        .args(["stack", "deploy", "--detach=true", "-c"])
        .arg(repo_root().join("k8s/swarm-stack.yml"))
        .arg(&swarm.stack)
        .env("WASMNODE_SUBNET", "172.31.254.0/24"));
    swarm.wait_mesh(3, Duration::from_secs(60));
    ok(Command::new("docker").args(["service", "scale", "--detach=true", &format!("{}=4", swarm.service())]));
    swarm.wait_mesh(4, Duration::from_secs(60));
    // The health check the stack declares passes (it runs `wasmnode probe` in each task).
    let (id, _) = &swarm.tasks()[0];
    wait_until(
        Duration::from_secs(30),
        "the task's health check passes",
        || ok(Command::new("docker").args(["inspect", "-f", "{{.State.Health.Status}}", id])) == "healthy",
        || ok(Command::new("docker").args(["inspect", "-f", "{{json .State.Health}}", id])),
    );
}
