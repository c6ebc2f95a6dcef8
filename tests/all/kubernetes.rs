//! The Kubernetes strategy, through the real kube client inside a real node process,
//! against an HTTP stand-in for the API server. No API server can run on this machine,
//! so the stand-in answers what one would: PodList and EndpointSliceList JSON of the
//! real shapes (phases, Ready conditions, ready/serving/terminating endpoint conditions,
//! deletionTimestamp) and a 403 `Status` for a namespace the service account may not
//! read. All pod IPs are loopback addresses where real node processes listen.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use wasmnode_testkit::*;

const FORM: Duration = Duration::from_secs(10);

const PODS: &str = r#"{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"41"},"items":[
 {"metadata":{"name":"myapp-0","namespace":"default","labels":{"app":"myapp"}},
  "spec":{"containers":[{"name":"app","image":"wasmnode"}],"hostname":"myapp-0","subdomain":"myapp"},
  "status":{"phase":"Running","podIP":"127.0.45.2","podIPs":[{"ip":"127.0.45.2"}],"conditions":[{"type":"Ready","status":"True"}]}},
 {"metadata":{"name":"myapp-1","namespace":"default","labels":{"app":"myapp"}},
  "spec":{"containers":[{"name":"app","image":"wasmnode"}]},
  "status":{"phase":"Running","podIP":"127.0.45.3","conditions":[{"type":"Initialized","status":"True"},{"type":"Ready","status":"True"}]}},
 {"metadata":{"name":"myapp-2","namespace":"default","labels":{"app":"myapp"},"deletionTimestamp":"2026-11-21T09:00:00Z","deletionGracePeriodSeconds":30},
  "spec":{"containers":[{"name":"app","image":"wasmnode"}]},
  "status":{"phase":"Running","podIP":"127.0.45.4","conditions":[{"type":"Ready","status":"True"}]}},
 {"metadata":{"name":"myapp-3","namespace":"default","labels":{"app":"myapp"}},
  "spec":{"containers":[{"name":"app","image":"wasmnode"}]},
  "status":{"phase":"Running","podIP":"127.0.45.5","conditions":[{"type":"Ready","status":"False","reason":"ContainersNotReady"}]}},
 {"metadata":{"name":"myapp-4","namespace":"default","labels":{"app":"myapp"}},
  "spec":{"containers":[{"name":"app","image":"wasmnode"}]},
  "status":{"phase":"Pending","conditions":[{"type":"PodScheduled","status":"False"}]}}
]}"#;

const SLICES: &str = r#"{"kind":"EndpointSliceList","apiVersion":"discovery.k8s.io/v1","metadata":{"resourceVersion":"42"},"items":[
 {"metadata":{"name":"myapp-x7k2p","namespace":"default","labels":{"kubernetes.io/service-name":"myapp","endpointslice.kubernetes.io/managed-by":"endpointslice-controller.k8s.io"}},
  "addressType":"IPv4",
  "endpoints":[
   {"addresses":["127.0.45.2"],"conditions":{"ready":true,"serving":true,"terminating":false},"hostname":"myapp-0","targetRef":{"kind":"Pod","namespace":"default","name":"myapp-0","uid":"1"},"nodeName":"worker-1"},
   {"addresses":["127.0.45.3"],"conditions":{"ready":true,"serving":true,"terminating":false},"targetRef":{"kind":"Pod","namespace":"default","name":"myapp-1","uid":"2"}},
   {"addresses":["127.0.45.4"],"conditions":{"ready":false,"serving":true,"terminating":true},"targetRef":{"kind":"Pod","namespace":"default","name":"myapp-2","uid":"3"}},
   {"addresses":["127.0.45.5"],"conditions":{"ready":false,"serving":false,"terminating":false},"targetRef":{"kind":"Pod","namespace":"default","name":"myapp-3","uid":"4"}}
  ],
  "ports":[{"name":"dist","port":4370,"protocol":"TCP"}]}
]}"#;

const FORBIDDEN: &str = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"pods is forbidden: User \"system:serviceaccount:locked:default\" cannot list resource \"pods\" in API group \"\" in the namespace \"locked\"","reason":"Forbidden","details":{"kind":"pods"},"code":403}"#;

const BROKEN: &str =
    r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"etcdserver: request timed out","reason":"InternalError","code":500}"#;

const NOT_FOUND: &str = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"the server could not find the requested resource","reason":"NotFound","code":404}"#;

/// The stand-in API server and the kubeconfig that points at it.
struct ApiServer {
    failing: Arc<AtomicBool>,
    kubeconfig: std::path::PathBuf,
    _dir: TempDir,
}

impl ApiServer {
    fn start(tag: &str) -> ApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let failing = Arc::new(AtomicBool::new(false));
        let f = failing.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let f = f.clone();
                std::thread::spawn(move || serve(conn, &f));
            }
        });
        let dir = TempDir::new(&format!("kube-{tag}"));
        let kubeconfig = dir.write(
            "kubeconfig",
            &format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: http://127.0.0.1:{port}\nusers:\n- name: standin\n  user: {{}}\ncontexts:\n- name: standin\n  context:\n    cluster: standin\n    user: standin\n    namespace: default\ncurrent-context: standin\n"
            ),
        );
        ApiServer { failing, kubeconfig, _dir: dir }
    }
}

/// HTTP/1.1 with keep-alive, GET only: enough for kube's list calls.
fn serve(conn: TcpStream, failing: &AtomicBool) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut out = conn;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut content_length = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                content_length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; content_length];
        let _ = reader.read_exact(&mut body);
        let path = request_line.split_whitespace().nth(1).unwrap_or("").to_string();
        let (code, json) = if failing.load(Ordering::SeqCst) {
            (500, BROKEN)
        } else if path.starts_with("/api/v1/namespaces/locked/") {
            (403, FORBIDDEN)
        } else if path.starts_with("/api/v1/namespaces/default/pods") && path.contains("app%3Dmyapp") {
            (200, PODS)
        } else if path.starts_with("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices") && path.contains("kubernetes.io%2Fservice-name%3Dmyapp") {
            (200, SLICES)
        } else {
            (404, NOT_FOUND)
        };
        let reason = match code {
            200 => "OK",
            403 => "Forbidden",
            404 => "Not Found",
            _ => "Internal Server Error",
        };
        let response = format!("HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}", json.len());
        if out.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

fn k8s_topology(name: &str, options: &str) -> String {
    format!(
        "[topology.{name}]\nstrategy = \"{}\"\npolling_interval_ms = 200\n[topology.{name}.config]\nkubernetes_node_basename = \"myapp\"\n{options}\n",
        plugin("strategy_kubernetes.wasm").display()
    )
}

/// IP mode by label selector: ready Running pods are connected; the terminating, the
/// not-ready and the pending pod never are. A 403 names the RBAC rule; a 500 later
/// disconnects nobody.
#[test]
fn kubernetes_selector_connects_ready_pods_and_reports_rbac() {
    let dir = TempDir::new("k8s-ip");
    let api = ApiServer::start("ip");
    let kubeconfig = api.kubeconfig.to_str().unwrap().to_string();
    let config = format!(
        "[node]\nheartbeat_interval_ms = 250\n\n{}\n{}",
        k8s_topology("k8s", "kubernetes_selector = \"app=myapp\"\nmode = \"ip\""),
        k8s_topology("locked", "kubernetes_selector = \"app=myapp\"\nkubernetes_namespace = \"locked\"")
    );
    let a = Node::start_with("myapp@127.0.45.1", &dir.write("a.toml", &config), &[], &[("KUBECONFIG", &kubeconfig)]);
    // The pods' nodes, discovering nobody themselves.
    let quiet = dir.write("quiet.toml", "[node]\n");
    let pods: Vec<Node> = (2..=5).map(|i| Node::start(&format!("myapp@127.0.45.{i}"), &quiet)).collect();

    wait_mesh(&[&a, &pods[0], &pods[1]], &["myapp@127.0.45.1", "myapp@127.0.45.2", "myapp@127.0.45.3"], FORM);
    assert_eq!(a.last_seen("k8s").unwrap(), vec!["myapp@127.0.45.2".to_string(), "myapp@127.0.45.3".to_string()]);
    a.wait_log(
        "add to the Role bound to this pod's ServiceAccount in namespace locked the rule {apiGroups: [\"\"], resources: [\"pods\"], verbs: [\"list\"]}",
        FORM,
    );
    a.wait_log("kubernetes API refused (403): pods is forbidden", FORM);

    // Ten more polls: the terminating (.4) and not-ready (.5) pods were never dialled.
    let polls = a.count("strategy k8s (");
    a.wait_log_count("strategy k8s (", polls + 10, FORM);
    for ip in ["127.0.45.4", "127.0.45.5"] {
        assert!(!a.log().contains(&format!("connected to myapp@{ip}")), "dialled {ip}:\n{}", a.log());
        assert!(!a.log().contains(&format!("cannot connect to myapp@{ip}")), "dialled {ip}:\n{}", a.log());
    }
    assert_eq!(pods[2].members(), vec!["myapp@127.0.45.4".to_string()]);

    // The API server breaks: every poll fails, nobody is disconnected.
    api.failing.store(true, Ordering::SeqCst);
    a.wait_log_count("kubernetes API unavailable: 500 etcdserver: request timed out", 3, FORM);
    assert_eq!(a.members(), vec!["myapp@127.0.45.1".to_string(), "myapp@127.0.45.2".to_string(), "myapp@127.0.45.3".to_string()]);
    assert_eq!(a.count("node down"), 0, "{}", a.log());
}

/// The naming modes, and EndpointSlices: `dns` and `hostname` names, a configurable
/// cluster domain, and `include_not_ready` (which still never includes terminating
/// endpoints). Peer host names resolve through a dead local nameserver, so these
/// names are recorded but never resolved anywhere outside this machine.
#[test]
fn kubernetes_naming_modes_and_endpoint_conditions() {
    let dir = TempDir::new("k8s-modes");
    let api = ApiServer::start("modes");
    let kubeconfig = api.kubeconfig.to_str().unwrap().to_string();
    let config = format!(
        "[node]\nnameserver = \"127.0.0.1:9\"\n\n{}\n{}\n{}",
        k8s_topology("bydns", "kubernetes_selector = \"app=myapp\"\nmode = \"dns\""),
        k8s_topology("byhost", "kubernetes_service_name = \"myapp\"\nmode = \"hostname\""),
        k8s_topology("notready", "kubernetes_service_name = \"myapp\"\nmode = \"dns\"\ncluster_domain = \"example.internal\"\ninclude_not_ready = true"),
    );
    let a = Node::start_with("myapp@127.0.46.1", &dir.write("a.toml", &config), &[], &[("KUBECONFIG", &kubeconfig)]);
    let seen = |t: &str, want: &[&str]| {
        let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        wait_until(FORM, &format!("topology {t} to see {want:?}"), || a.last_seen(t).as_ref() == Some(&want), || a.log());
    };
    seen("bydns", &["myapp@127-0-45-2.default.pod.cluster.local", "myapp@127-0-45-3.default.pod.cluster.local"]);
    seen("byhost", &["myapp@myapp-0.myapp.default.svc.cluster.local", "myapp@myapp-1.myapp.default.svc.cluster.local"]);
    seen(
        "notready",
        &["myapp@127-0-45-2.default.pod.example.internal", "myapp@127-0-45-3.default.pod.example.internal", "myapp@127-0-45-5.default.pod.example.internal"],
    );
}
