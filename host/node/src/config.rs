//! The topology file: one TOML document with `[node]` and any number of `[topology.NAME]`.
//!
//! Parsing keeps every value's span so that each error — an unknown key, a wrong type,
//! a strategy path that does not exist — is reported as `FILE:LINE:COL: key K: what`.
//! `${VAR}` and `${VAR:-default}` are expanded in the node name, listen address and
//! cookie file path, so one file serves every pod (`name = "myapp@${POD_IP}"`).
//!
//! # Example
//! ```
//! let text = r#"
//! [node]
//! name = "a@127.0.0.1"
//! cookie = "dev-only"
//! allow_insecure_cookie = true
//! "#;
//! let cfg = wasmnode::config::Config::parse(text, "inline.toml".as_ref()).unwrap();
//! assert_eq!(cfg.node.name.to_string(), "a@127.0.0.1");
//! assert_eq!(cfg.node.listen.to_string(), "127.0.0.1:4370");
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::name::NodeName;
use crate::registry::WorkerName;

/// Environment variable the cookie comes from unless the config says otherwise.
pub const DEFAULT_COOKIE_ENV: &str = "WASMNODE_COOKIE";
/// The shortest cookie a node accepts unless `allow_insecure_cookie = true`: 16 bytes
/// (128 bits when random) keep guessing it out of reach.
pub const MIN_COOKIE_LEN: usize = 16;

/// A config error, located in its file.
#[derive(Debug)]
pub struct ConfigError {
    /// The config file.
    pub file: PathBuf,
    /// 1-based line and column, when the error has a place.
    pub at: Option<(usize, usize)>,
    /// The dotted key the error is about (`topology.local.strategy`), when known.
    pub key: Option<String>,
    /// What is wrong, in a sentence.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, col)) = self.at {
            write!(f, ":{line}:{col}")?;
        }
        write!(f, ": ")?;
        if let Some(key) = &self.key {
            write!(f, "key `{key}`: ")?;
        }
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Where the cookie comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CookieSource {
    /// An environment variable (default `WASMNODE_COOKIE`).
    Env(String),
    /// A file whose contents, trimmed, are the cookie (a mounted Secret).
    File(PathBuf),
    /// A literal in the config; only with `allow_insecure_cookie = true`.
    Literal(String),
}

impl CookieSource {
    /// Reads the cookie; the error says which source was empty.
    pub fn resolve(&self) -> Result<Vec<u8>, String> {
        let cookie = match self {
            CookieSource::Env(var) => std::env::var(var).map_err(|_| {
                format!("no cookie: environment variable {var} is not set (set it, or name another source with cookie_env / cookie_file in [node])")
            })?,
            CookieSource::File(path) => {
                crate::files::read_text(path, crate::files::SECRET_LIMIT).map_err(|e| format!("no cookie: cookie_file {} {e}", path.display()))?
            }
            CookieSource::Literal(c) => c.clone(),
        };
        let cookie = cookie.trim();
        if cookie.is_empty() {
            return Err(format!("no cookie: {} is empty", self.describe()));
        }
        Ok(cookie.as_bytes().to_vec())
    }

    /// Reads the cookie as a node uses it: shorter than [`MIN_COOKIE_LEN`] is refused
    /// unless `allow_insecure`.
    pub fn resolve_for_node(&self, allow_insecure: bool) -> Result<Vec<u8>, String> {
        let cookie = self.resolve()?;
        if cookie.len() < MIN_COOKIE_LEN && !allow_insecure {
            return Err(format!(
                "the cookie ({}) is {} bytes; at least {MIN_COOKIE_LEN} are needed (make one with `head -c 32 /dev/urandom | base64`), or set allow_insecure_cookie = true for local experiments",
                self.describe(),
                cookie.len()
            ));
        }
        Ok(cookie)
    }

    /// A cookie file that users other than its owner and group can read.
    pub fn world_readable(&self) -> Option<&Path> {
        match self {
            CookieSource::File(p) if crate::files::readable_by_others(p) => Some(p),
            _ => None,
        }
    }

    /// The warning for a cookie file that [`world_readable`](Self::world_readable) found.
    pub fn readable_warning(file: &Path) -> String {
        format!("the cookie file {} can be read by every user of this machine: chmod o-r it", file.display())
    }

    fn describe(&self) -> String {
        match self {
            CookieSource::Env(v) => format!("environment variable {v}"),
            CookieSource::File(p) => format!("cookie_file {}", p.display()),
            CookieSource::Literal(_) => "the literal cookie".into(),
        }
    }
}

/// `[node]`: who this node is and how it talks.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: NodeName,
    pub listen: SocketAddr,
    pub cookie: CookieSource,
    /// Accept a cookie shorter than [`MIN_COOKIE_LEN`] (and a literal one).
    pub allow_insecure_cookie: bool,
    /// How often a heartbeat goes out on every connection.
    pub heartbeat_interval: Duration,
    /// How long a silent peer lives before it is declared down.
    pub heartbeat_timeout: Duration,
    /// Connect to the peers of our peers (Erlang's default); off keeps only discovered links.
    pub full_mesh: bool,
    /// How long a dial plus handshake may take.
    pub connect_timeout: Duration,
    /// DNS server for peers' host names (default: the system resolver).
    pub nameserver: Option<SocketAddr>,
    /// Size of the pooling allocator (instances at once); none: allocate on demand.
    pub instance_pool: Option<u32>,
    /// How long a leaving node may take to hand its workers to their next owners
    /// (default 25 s, under Kubernetes' 30 s grace period).
    pub handoff_deadline: Duration,
    /// Bytes of answers (replies, pongs) that may wait to be sent to one peer before it
    /// is disconnected as not reading (`max_backlog_mb`, default 128).
    pub max_backlog: usize,
    /// When a node joins and owns some names: move them now (`move`, default) or leave
    /// them where they run until they next restart (`stay`).
    pub rebalance_on_join: bool,
    /// `[node.tls]`: mutual TLS under the handshake, with these files.
    pub tls: Option<crate::tls::TlsFiles>,
}

/// `[topology.NAME]`: one discovery strategy plugin and how to run it.
#[derive(Debug, Clone)]
pub struct TopologyConfig {
    pub name: String,
    /// The component's path, resolved against the config file's folder.
    pub strategy: PathBuf,
    pub polling_interval: Duration,
    /// Deadline for one plugin call (init or poll).
    pub call_timeout: Duration,
    /// Memory cap for the plugin's linear memories.
    pub memory_limit: usize,
    /// The `config` table handed to the plugin.
    pub config: Vec<(String, PluginValue)>,
    /// Where `strategy` is written, for errors found later (a bad component).
    pub strategy_at: (usize, usize),
    /// DNS server for the plugin's lookups instead of /etc/resolv.conf's.
    pub nameserver: Option<SocketAddr>,
    /// Environment variables the plugin may read (none by default).
    pub env: Vec<String>,
}

/// One value of a plugin's config table (the WIT `config-value`).
#[derive(Debug, Clone, PartialEq)]
pub enum PluginValue {
    Text(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    TextList(Vec<String>),
}

/// `[worker.KIND]`: a worker kind and how its instances run.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub kind: String,
    /// The component's path, resolved against the config file's folder.
    pub component: PathBuf,
    /// Keys started when the node boots (once the cluster has formed).
    pub boot: Vec<String>,
    /// A call to a name that runs nowhere starts it on its owner (virtual actors).
    pub activate_on_call: bool,
    /// Whether instances are started again elsewhere when their node goes down.
    pub restart: Restart,
    /// Deadline of one message, counting the guest's own time.
    pub call_timeout: Duration,
    pub memory_limit: usize,
    /// Calls and casts waiting in one instance's mailbox at most; their messages' bytes
    /// are bounded by `memory_limit`. One more is refused (`unavailable`).
    pub mailbox_limit: usize,
    /// Instances of the kind this node runs at most before it refuses to start a new
    /// name (`max_instances`); names that move here are taken all the same. None: no bound.
    pub max_instances: Option<usize>,
    /// How many other nodes hold each instance's state after every message it handles
    /// (`durability = "replicated"`, `replicas = N`); 0 for `durability = "none"`.
    pub replicas: usize,
    /// Where `component` is written, for errors found when loading it.
    pub component_at: (usize, usize),
    /// What its instances may reach outside the cluster (`allowed_outbound_hosts`):
    /// nothing unless granted.
    pub grants: crate::outbound::Grants,
    /// How long one outbound request may take, from connect to the last byte.
    pub outbound_timeout: Duration,
    /// Outbound requests of all its instances on this node at once; one more waits.
    pub outbound_max_in_flight: usize,
    /// `[worker.KIND.config]`: what `wasi:config/store` answers its instances, `${VAR}`
    /// expanded (secrets come from the environment, not the file).
    pub config: Vec<(String, String)>,
}

impl WorkerConfig {
    /// Kind `kind` from `component` with every other key at its default, as a topology
    /// that names only the component gets (for embedding: the benchmark, tests).
    pub fn new(kind: impl Into<String>, component: PathBuf) -> WorkerConfig {
        WorkerConfig {
            kind: kind.into(),
            component,
            boot: Vec::new(),
            activate_on_call: false,
            restart: Default::default(),
            call_timeout: Duration::from_millis(DEFAULT_WORKER_CALL_TIMEOUT_MS),
            memory_limit: (DEFAULT_WORKER_MEMORY_MB as usize) << 20,
            mailbox_limit: DEFAULT_MAILBOX_LIMIT,
            max_instances: None,
            replicas: 0,
            component_at: (0, 0),
            grants: Default::default(),
            outbound_timeout: Duration::from_millis(DEFAULT_OUTBOUND_TIMEOUT_MS),
            outbound_max_in_flight: DEFAULT_OUTBOUND_MAX_IN_FLIGHT,
            config: Vec::new(),
        }
    }
}

/// `[worker.KIND] outbound_timeout_ms` when not set.
const DEFAULT_OUTBOUND_TIMEOUT_MS: u64 = 30_000;
/// `[worker.KIND] outbound_max_in_flight` when not set.
const DEFAULT_OUTBOUND_MAX_IN_FLIGHT: usize = 64;

/// `[worker.KIND] mailbox_limit` when not set: the burst a worker may fall behind by.
const DEFAULT_MAILBOX_LIMIT: usize = 10_000;

/// `[worker.KIND] call_timeout_ms` when not set.
const DEFAULT_WORKER_CALL_TIMEOUT_MS: u64 = 5000;
/// The most replicas a durable kind can ask for.
const MAX_REPLICAS: i64 = 3;
/// `[worker.KIND] memory_limit_mb` when not set.
const DEFAULT_WORKER_MEMORY_MB: u64 = 64;

/// `[http]`: the node's HTTP port (off unless `listen` is set).
#[derive(Debug, Clone, Default)]
pub struct HttpConfig {
    pub listen: Option<SocketAddr>,
    /// Serve `POST /v1/workers/{kind}/{key}/call` (and start/list): on `listen`, or on
    /// `gateway_listen` when that is set.
    pub gateway: bool,
    /// The gateway's own port, apart from probes and metrics.
    pub gateway_listen: Option<SocketAddr>,
    /// The bearer token gateway requests must carry; required when the gateway listens
    /// beyond loopback.
    pub token: Option<TokenSource>,
    /// What each HTTP port serves with: the defaults, with what `max_connections`,
    /// `header_timeout_ms`, `body_timeout_ms`, `send_timeout_ms`, `max_header_kb`,
    /// `max_body_mb`, `bodies_held_mb` and `answers_held_mb` set.
    pub limits: crate::http::Limits,
}

impl HttpConfig {
    /// Where the gateway listens, if it is on.
    pub fn gateway_addr(&self) -> Option<SocketAddr> {
        if !self.gateway {
            return None;
        }
        self.gateway_listen.or(self.listen)
    }

    /// The gateway's own port, when it is on and listens apart from probes and metrics.
    pub fn gateway_apart(&self) -> Option<SocketAddr> {
        self.gateway_listen.filter(|_| self.gateway)
    }
}

/// The largest `[http] bodies_held_mb` and `answers_held_mb`.
const MAX_BODIES_HELD_MB: u64 = 1 << 16;
/// The largest `[http] max_connections`.
const MAX_HTTP_CONNECTIONS: u64 = 1 << 20;
/// Every other time in the file, in ms: at least a millisecond, at most an hour (the
/// node's timers take no longer, and zero would mean never waiting at all).
const TIMES_MS: std::ops::RangeInclusive<u64> = 1..=3_600_000;
const TIMES_WHY: &str = " (a millisecond to an hour)";
/// An instance's memory, in MiB: a WebAssembly (32-bit) memory holds at most 4 GiB.
const MEMORY_MB: std::ops::RangeInclusive<u64> = 1..=4096;
const MEMORY_WHY: &str = " (a 32-bit WebAssembly memory holds at most 4 GiB)";
/// `[worker.KIND] outbound_max_in_flight`.
const OUTBOUND_IN_FLIGHT: std::ops::RangeInclusive<u64> = 1..=1 << 20;
/// `[worker.KIND] mailbox_limit`.
const MAILBOX_LIMIT: std::ops::RangeInclusive<u64> = 1..=1 << 20;
/// `[worker.KIND] max_instances`.
const MAX_INSTANCES: std::ops::RangeInclusive<u64> = 1..=1 << 24;
/// `[http]` timeouts, in ms: at least a tenth of a second, at most an hour.
const HTTP_TIMEOUTS_MS: std::ops::RangeInclusive<u64> = 100..=3_600_000;
/// `[http] max_header_kb`: hyper reads headers into a buffer of at least 8 KiB.
const HTTP_MAX_HEADER_KB: std::ops::RangeInclusive<u64> = 8..=1024;

/// Where the gateway's bearer token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    Env(String),
    File(PathBuf),
}

impl TokenSource {
    /// Reads the token (trimmed); the error says which source was empty or unreadable.
    pub fn resolve(&self) -> Result<String, String> {
        let token = match self {
            TokenSource::Env(var) => std::env::var(var).map_err(|_| format!("no gateway token: environment variable {var} is not set"))?,
            TokenSource::File(path) => {
                crate::files::read_text(path, crate::files::SECRET_LIMIT).map_err(|e| format!("no gateway token: token_file {} {e}", path.display()))?
            }
        };
        let token = token.trim();
        if token.is_empty() {
            return Err("no gateway token: it is empty".into());
        }
        Ok(token.to_string())
    }
}

/// A whole topology file.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub node: NodeConfig,
    pub topologies: Vec<TopologyConfig>,
    pub workers: Vec<WorkerConfig>,
    pub http: HttpConfig,
    /// Warnings to log once the logger is up (an insecure cookie).
    pub warnings: Vec<String>,
    /// Where the cookie source is written (key and line:col), for "no cookie" errors.
    cookie_at: (String, Option<(usize, usize)>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    node: Option<Spanned<RawNode>>,
    #[serde(default)]
    topology: BTreeMap<String, Spanned<RawTopology>>,
    #[serde(default)]
    worker: BTreeMap<String, Spanned<RawWorker>>,
    http: Option<RawHttp>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorker {
    component: Spanned<String>,
    #[serde(default)]
    boot: Vec<Spanned<String>>,
    #[serde(default)]
    activate_on_call: bool,
    restart: Option<Spanned<String>>,
    call_timeout_ms: Option<Spanned<u64>>,
    memory_limit_mb: Option<Spanned<u64>>,
    durability: Option<Spanned<String>>,
    replicas: Option<Spanned<i64>>,
    allowed_outbound_hosts: Option<Spanned<Vec<String>>>,
    outbound_timeout_ms: Option<Spanned<u64>>,
    outbound_max_in_flight: Option<Spanned<u64>>,
    mailbox_limit: Option<Spanned<u64>>,
    max_instances: Option<Spanned<u64>>,
    config: Option<Spanned<toml::Table>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: Option<Spanned<String>>,
    gateway: Option<Spanned<bool>>,
    gateway_listen: Option<Spanned<String>>,
    token_env: Option<Spanned<String>>,
    token_file: Option<Spanned<String>>,
    max_body_mb: Option<Spanned<u64>>,
    bodies_held_mb: Option<Spanned<u64>>,
    answers_held_mb: Option<Spanned<u64>>,
    max_connections: Option<Spanned<u64>>,
    header_timeout_ms: Option<Spanned<u64>>,
    body_timeout_ms: Option<Spanned<u64>>,
    send_timeout_ms: Option<Spanned<u64>>,
    max_header_kb: Option<Spanned<u64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: Option<Spanned<String>>,
    listen: Option<Spanned<String>>,
    cookie_env: Option<Spanned<String>>,
    cookie_file: Option<Spanned<String>>,
    cookie: Option<Spanned<String>>,
    #[serde(default)]
    allow_insecure_cookie: bool,
    heartbeat_interval_ms: Option<Spanned<u64>>,
    heartbeat_timeout_ms: Option<Spanned<u64>>,
    full_mesh: Option<bool>,
    connect_timeout_ms: Option<Spanned<u64>>,
    nameserver: Option<Spanned<String>>,
    instance_pool: Option<u32>,
    handoff_deadline_ms: Option<Spanned<u64>>,
    max_backlog_mb: Option<Spanned<u64>>,
    rebalance: Option<Spanned<String>>,
    tls: Option<Spanned<RawTls>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Spanned<String>,
    key: Spanned<String>,
    ca: Spanned<String>,
    reload_interval_ms: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTopology {
    strategy: Spanned<String>,
    polling_interval_ms: Option<Spanned<u64>>,
    call_timeout_ms: Option<Spanned<u64>>,
    memory_limit_mb: Option<Spanned<u64>>,
    nameserver: Option<Spanned<String>>,
    #[serde(default)]
    env: Vec<String>,
    config: Option<Spanned<toml::Table>>,
}

/// Overrides from the command line, which win over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub name: Option<String>,
    pub listen: Option<String>,
    /// Validate without the environment only a running node has (`check --offline`):
    /// an unset `${VAR}` stands for a placeholder ([`placeholder`]) instead of an error.
    pub offline: bool,
}

impl Config {
    /// Reads and validates a topology file (plugins are checked separately, by loading them).
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
        Config::load_all(path, overrides).map_err(|mut all| all.remove(0))
    }

    /// [`Config::load`], with every error found (`wasmnode check`), not only the first.
    pub fn load_all(path: &Path, overrides: &Overrides) -> Result<Config, Vec<ConfigError>> {
        let text = crate::files::read_text(path, crate::files::CONFIG_LIMIT)
            .map_err(|e| ConfigError { file: path.to_path_buf(), at: None, key: None, message: e.to_string() })
            .map_err(|e| vec![e])?;
        Config::parse_with(&text, path, overrides)
    }

    /// Parses a topology from text; `path` names it in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Config::parse_with(text, path, &Overrides::default()).map_err(|mut all| all.remove(0))
    }

    /// Every error found, in file order within each section; the parse goes on past an
    /// error with a stand-in value, so that one run reports them all.
    fn parse_with(text: &str, path: &Path, overrides: &Overrides) -> Result<Config, Vec<ConfigError>> {
        let err = |span: Option<Range<usize>>, key: Option<String>, message: String| ConfigError {
            file: path.to_path_buf(),
            at: span.map(|s| line_col(text, s.start)),
            key,
            message,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let key = e.span().and_then(|s| key_at(text, s.clone()));
            vec![err(e.span(), key, e.message().trim().to_string())]
        })?;
        let mut errors: Vec<ConfigError> = Vec::new();
        // The value, or the error noted and `$fallback` in its place.
        macro_rules! noted {
            ($r:expr, $fallback:expr) => {
                match $r {
                    Ok(v) => v,
                    Err(e) => {
                        errors.push(e);
                        $fallback
                    }
                }
            };
        }
        // A number that must lie in `range`: `None` when not set. The error names the key
        // and what to give (`unit` follows the value, `why` the range).
        let ranged = |v: &Option<Spanned<u64>>, key: &str, range: std::ops::RangeInclusive<u64>, unit: &str, why: &str| match v {
            Some(m) if !range.contains(m.get_ref()) => {
                let (lo, hi) = (range.start(), range.end());
                Err(err(Some(m.span()), Some(key.to_string()), format!("{}{unit}: give {lo} to {hi}{why}", m.get_ref())))
            }
            m => Ok(m.as_ref().map(|m| *m.get_ref())),
        };
        let ms = |v: &Option<Spanned<u64>>, key: &str| ranged(v, key, TIMES_MS, " ms", TIMES_WHY);
        let offline = overrides.offline;
        let expand = |s: &str| expand_with(s, offline);
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let node_span = raw.node.as_ref().map(|n| n.span());
        let rn = raw.node.map(Spanned::into_inner).unwrap_or_default();

        // Name: --name, else [node].name (expanded), else detected.
        let (name_text, name_span) = match (&overrides.name, &rn.name) {
            (Some(n), _) => (n.clone(), None),
            (None, Some(n)) => {
                (noted!(expand(n.get_ref()).map_err(|m| err(Some(n.span()), Some("node.name".into()), m)), "wasmnode".to_string()), Some(n.span()))
            }
            (None, None) => ("wasmnode".to_string(), None),
        };
        let name = noted!(
            NodeName::parse_or_detect(&name_text).map_err(|m| err(name_span.clone(), Some("node.name".into()), m.to_string())),
            NodeName::parse_or_detect("wasmnode").expect("the default name parses")
        );
        let any = SocketAddr::new(IpAddr::from([0, 0, 0, 0]), name.port);

        let listen = match (&overrides.listen, &rn.listen) {
            (Some(l), _) => noted!(l.parse().map_err(|e| err(None, Some("--listen".into()), format!("`{l}` is not ip:port: {e}"))), any),
            (None, Some(l)) => {
                let s = noted!(expand(l.get_ref()).map_err(|m| err(Some(l.span()), Some("node.listen".into()), m)), "0.0.0.0:0".into());
                noted!(s.parse().map_err(|e| err(Some(l.span()), Some("node.listen".into()), format!("`{s}` is not ip:port: {e}"))), any)
            }
            (None, None) => match name.host.parse::<IpAddr>() {
                Ok(ip) => SocketAddr::new(ip, name.port),
                Err(_) => SocketAddr::new(IpAddr::from([0, 0, 0, 0]), name.port),
            },
        };

        let mut warnings = Vec::new();
        let sources = [rn.cookie_env.is_some(), rn.cookie_file.is_some(), rn.cookie.is_some()];
        if sources.iter().filter(|s| **s).count() > 1 {
            errors.push(err(node_span.clone(), Some("node".into()), "give only one of cookie_env, cookie_file, cookie".into()));
        }
        let cookie = if let Some(c) = &rn.cookie {
            if !rn.allow_insecure_cookie {
                errors.push(err(
                    Some(c.span()),
                    Some("node.cookie".into()),
                    "a literal cookie in the config is refused: use cookie_env or cookie_file, or set allow_insecure_cookie = true for local experiments"
                        .into(),
                ));
            }
            warnings.push(format!("{}: the cookie is a literal in the config (allow_insecure_cookie = true); do not use this in production", path.display()));
            CookieSource::Literal(c.get_ref().clone())
        } else if let Some(f) = &rn.cookie_file {
            let p = noted!(expand(f.get_ref()).map_err(|m| err(Some(f.span()), Some("node.cookie_file".into()), m)), f.get_ref().clone());
            CookieSource::File(base.join(p))
        } else if let Some(v) = &rn.cookie_env {
            CookieSource::Env(v.get_ref().clone())
        } else {
            CookieSource::Env(DEFAULT_COOKIE_ENV.into())
        };

        let cookie_at = [("node.cookie", &rn.cookie), ("node.cookie_file", &rn.cookie_file), ("node.cookie_env", &rn.cookie_env)]
            .into_iter()
            .find_map(|(k, v)| v.as_ref().map(|v| (k.to_string(), Some(line_col(text, v.span().start)))))
            .unwrap_or_else(|| ("node".to_string(), node_span.as_ref().map(|s| line_col(text, s.start))));

        let mut hb_interval = noted!(ms(&rn.heartbeat_interval_ms, "node.heartbeat_interval_ms"), None).unwrap_or(250);
        let mut hb_timeout = noted!(ms(&rn.heartbeat_timeout_ms, "node.heartbeat_timeout_ms"), None).unwrap_or(1500);
        if hb_timeout <= hb_interval {
            let span = rn.heartbeat_timeout_ms.as_ref().or(rn.heartbeat_interval_ms.as_ref()).map(|s| s.span());
            errors.push(err(
                span,
                Some("node.heartbeat_timeout_ms".into()),
                format!("heartbeat_timeout_ms ({hb_timeout}) must be larger than heartbeat_interval_ms ({hb_interval})"),
            ));
            (hb_interval, hb_timeout) = (250, 1500);
        }

        let nameserver = noted!(
            rn.nameserver
                .as_ref()
                .map(|ns| parse_nameserver(ns.get_ref(), offline).map_err(|m| err(Some(ns.span()), Some("node.nameserver".into()), m)))
                .transpose(),
            None
        );
        let rebalance_on_join = match rn.rebalance.as_ref().map(|r| (r.get_ref().as_str(), r.span())) {
            None | Some(("move", _)) => true,
            Some(("stay", _)) => false,
            Some((other, span)) => {
                errors.push(err(Some(span), Some("node.rebalance".into()), format!("`{other}` is not `move` or `stay`")));
                true
            }
        };
        let max_backlog = match &rn.max_backlog_mb {
            None => crate::dist::DEFAULT_MAX_BACKLOG,
            Some(m) if *m.get_ref() == 0 => {
                errors.push(err(Some(m.span()), Some("node.max_backlog_mb".into()), "must be above 0".into()));
                crate::dist::DEFAULT_MAX_BACKLOG
            }
            Some(m) => (*m.get_ref() as usize).saturating_mul(1 << 20),
        };
        let tls = match &rn.tls {
            None => None,
            Some(t) => {
                let t = t.get_ref();
                let file =
                    |k: &str, v: &Spanned<String>| expand(v.get_ref()).map(|p| base.join(p)).map_err(|m| err(Some(v.span()), Some(format!("node.tls.{k}")), m));
                let reload = noted!(ms(&t.reload_interval_ms, "node.tls.reload_interval_ms"), None).unwrap_or(10_000);
                Some(crate::tls::TlsFiles {
                    cert: noted!(file("cert", &t.cert), PathBuf::new()),
                    key: noted!(file("key", &t.key), PathBuf::new()),
                    ca: noted!(file("ca", &t.ca), PathBuf::new()),
                    reload_interval: Duration::from_millis(reload),
                })
            }
        };
        let node = NodeConfig {
            tls,
            name,
            listen,
            cookie,
            allow_insecure_cookie: rn.allow_insecure_cookie,
            heartbeat_interval: Duration::from_millis(hb_interval),
            heartbeat_timeout: Duration::from_millis(hb_timeout),
            full_mesh: rn.full_mesh.unwrap_or(true),
            connect_timeout: Duration::from_millis(noted!(ms(&rn.connect_timeout_ms, "node.connect_timeout_ms"), None).unwrap_or(3000)),
            nameserver,
            instance_pool: rn.instance_pool.filter(|n| *n > 0),
            handoff_deadline: Duration::from_millis(noted!(ms(&rn.handoff_deadline_ms, "node.handoff_deadline_ms"), None).unwrap_or(25_000)),
            max_backlog,
            rebalance_on_join,
        };

        let mut topologies = Vec::new();
        for (tname, t) in raw.topology {
            let t = t.into_inner();
            let before = errors.len();
            let key = |k: &str| Some(format!("topology.{tname}.{k}"));
            let strategy = base.join(t.strategy.get_ref());
            if !strategy.is_file() {
                errors.push(err(Some(t.strategy.span()), key("strategy"), format!("strategy component {}", not_a_component(&strategy))));
            }
            let interval = noted!(ms(&t.polling_interval_ms, &format!("topology.{tname}.polling_interval_ms")), None).unwrap_or(5000);
            let call_timeout = noted!(ms(&t.call_timeout_ms, &format!("topology.{tname}.call_timeout_ms")), None).unwrap_or(2000);
            let memory_mb = noted!(ranged(&t.memory_limit_mb, &format!("topology.{tname}.memory_limit_mb"), MEMORY_MB, " MiB", MEMORY_WHY), None).unwrap_or(64);
            let (config_span, table) = match t.config {
                Some(c) => (c.span(), c.into_inner()),
                None => (0..0, toml::Table::new()),
            };
            let mut config = Vec::new();
            for (k, v) in table {
                let at = || find_key(text, config_span.clone(), &k).or(Some(config_span.clone()));
                let Some(value) = plugin_value(&v) else {
                    errors.push(err(
                        at(),
                        key(&format!("config.{k}")),
                        format!("plugin config values must be strings, integers, floats, booleans or lists of strings, not {}", v.type_str()),
                    ));
                    continue;
                };
                // `${VAR}` expands in plugin strings too (`kubernetes_namespace = "${NAMESPACE}"`).
                let value = match value {
                    PluginValue::Text(t) => PluginValue::Text(noted!(expand(&t).map_err(|m| err(at(), key(&format!("config.{k}")), m)), t)),
                    PluginValue::TextList(l) => PluginValue::TextList(noted!(
                        l.iter().map(|t| expand(t)).collect::<Result<_, _>>().map_err(|m| err(at(), key(&format!("config.{k}")), m)),
                        l
                    )),
                    other => other,
                };
                config.push((k, value));
            }
            let nameserver = noted!(
                t.nameserver.as_ref().map(|ns| parse_nameserver(ns.get_ref(), offline).map_err(|m| err(Some(ns.span()), key("nameserver"), m))).transpose(),
                None
            );
            if errors.len() > before {
                continue;
            }
            topologies.push(TopologyConfig {
                strategy_at: line_col(text, t.strategy.span().start),
                name: tname,
                strategy,
                polling_interval: Duration::from_millis(interval),
                call_timeout: Duration::from_millis(call_timeout),
                memory_limit: (memory_mb as usize) << 20,
                config,
                nameserver,
                env: t.env,
            });
        }
        let mut workers = Vec::new();
        for (kind, w) in raw.worker {
            let before = errors.len();
            if let Err(e) = crate::registry::check_kind(&kind) {
                errors.push(err(Some(w.span()), Some("worker".into()), e.to_string()));
                continue;
            }
            let w = w.into_inner();
            let mut boot = Vec::new();
            for key in &w.boot {
                match WorkerName::check(&kind, key.get_ref()) {
                    Ok(()) => boot.push(key.get_ref().clone()),
                    Err(e) => errors.push(err(Some(key.span()), Some(format!("worker.{kind}.boot")), e.to_string())),
                }
            }
            let component = base.join(w.component.get_ref());
            if !component.is_file() {
                errors.push(err(
                    Some(w.component.span()),
                    Some(format!("worker.{kind}.component")),
                    format!("worker component {}", not_a_component(&component)),
                ));
            }
            let restart = match w.restart.as_ref().map(|r| (r.get_ref().as_str(), r.span())) {
                None | Some(("permanent", _)) => Restart::Permanent,
                Some(("transient", _)) => Restart::Transient,
                Some(("temporary", _)) => Restart::Temporary,
                Some((other, span)) => {
                    errors.push(err(
                        Some(span),
                        Some(format!("worker.{kind}.restart")),
                        format!("`{other}` is not a restart policy: permanent, transient or temporary"),
                    ));
                    Restart::Permanent
                }
            };
            let replicas = match (w.durability.as_ref().map(|d| (d.get_ref().as_str(), d.span())), &w.replicas) {
                (None | Some(("none", _)), None) => 0,
                (None | Some(("none", _)), Some(r)) => {
                    errors.push(err(Some(r.span()), Some(format!("worker.{kind}.replicas")), "replicas needs `durability = \"replicated\"`".into()));
                    0
                }
                (Some(("replicated", _)), None) => 1,
                (Some(("replicated", _)), Some(r)) => match *r.get_ref() {
                    n @ 1..=MAX_REPLICAS => n as usize,
                    n => {
                        errors.push(err(
                            Some(r.span()),
                            Some(format!("worker.{kind}.replicas")),
                            format!("{n} replicas: give 1 to {MAX_REPLICAS} (each is a node that holds every instance's state)"),
                        ));
                        0
                    }
                },
                (Some((other, span)), _) => {
                    errors.push(err(Some(span), Some(format!("worker.{kind}.durability")), format!("`{other}` is not a durability: none or replicated")));
                    0
                }
            };
            let mut grants = Vec::new();
            if let Some(hosts) = &w.allowed_outbound_hosts {
                for h in hosts.get_ref() {
                    match crate::outbound::HostPattern::parse(h) {
                        Ok(p) => grants.push(p),
                        Err(m) => errors.push(err(Some(hosts.span()), Some(format!("worker.{kind}.allowed_outbound_hosts")), m)),
                    }
                }
            }
            let call_timeout = noted!(ms(&w.call_timeout_ms, &format!("worker.{kind}.call_timeout_ms")), None).unwrap_or(DEFAULT_WORKER_CALL_TIMEOUT_MS);
            let memory_limit_mb = noted!(ranged(&w.memory_limit_mb, &format!("worker.{kind}.memory_limit_mb"), MEMORY_MB, " MiB", MEMORY_WHY), None)
                .unwrap_or(DEFAULT_WORKER_MEMORY_MB);
            let outbound_timeout =
                noted!(ms(&w.outbound_timeout_ms, &format!("worker.{kind}.outbound_timeout_ms")), None).unwrap_or(DEFAULT_OUTBOUND_TIMEOUT_MS);
            let outbound_max_in_flight =
                noted!(ranged(&w.outbound_max_in_flight, &format!("worker.{kind}.outbound_max_in_flight"), OUTBOUND_IN_FLIGHT, " requests", ""), None)
                    .map_or(DEFAULT_OUTBOUND_MAX_IN_FLIGHT, |n| n as usize);
            let mailbox_limit = noted!(ranged(&w.mailbox_limit, &format!("worker.{kind}.mailbox_limit"), MAILBOX_LIMIT, " messages", ""), None)
                .map_or(DEFAULT_MAILBOX_LIMIT, |n| n as usize);
            let max_instances =
                noted!(ranged(&w.max_instances, &format!("worker.{kind}.max_instances"), MAX_INSTANCES, " instances", ""), None).map(|n| n as usize);
            let mut config = Vec::new();
            if let Some(table) = &w.config {
                let span = table.span();
                for (k, v) in table.get_ref() {
                    let at = find_key(text, span.clone(), k).or(Some(span.clone()));
                    let key = Some(format!("worker.{kind}.config.{k}"));
                    let value = match v {
                        toml::Value::String(s) => noted!(expand(s).map_err(|m| err(at.clone(), key.clone(), m)), s.clone()),
                        toml::Value::Integer(i) => i.to_string(),
                        toml::Value::Float(f) => f.to_string(),
                        toml::Value::Boolean(b) => b.to_string(),
                        other => {
                            errors.push(err(at, key, format!("config values are strings, numbers or booleans, not {}", other.type_str())));
                            continue;
                        }
                    };
                    config.push((k.clone(), value));
                }
            }
            let most = wasmnode_proto::frame::MAX_MESSAGE >> 20;
            if let Some(m) = w.memory_limit_mb.as_ref().filter(|_| replicas > 0 && memory_limit_mb > most as u64) {
                // Not an error: such a state is still served, only not copied. But whoever
                // asked for durability should hear it before it happens, not at the first copy.
                warnings.push(
                    err(
                        Some(m.span()),
                        Some(format!("worker.{kind}.memory_limit_mb")),
                        format!(
                            "a durable instance's state may grow to {memory_limit_mb} MiB here, but one copy between nodes carries at most {most} MiB: \
                             a larger state is neither copied to replicas nor handed over, so it is not durable until it fits (keep this at {most} or less)"
                        ),
                    )
                    .to_string(),
                );
            }
            if errors.len() > before {
                continue;
            }
            workers.push(WorkerConfig {
                grants: crate::outbound::Grants(grants),
                outbound_timeout: Duration::from_millis(outbound_timeout),
                outbound_max_in_flight,
                config,
                replicas,
                component_at: line_col(text, w.component.span().start),
                kind,
                component,
                boot,
                activate_on_call: w.activate_on_call,
                restart,
                call_timeout: Duration::from_millis(call_timeout),
                memory_limit: (memory_limit_mb as usize) << 20,
                mailbox_limit,
                max_instances,
            });
        }
        let http = match raw.http {
            None => HttpConfig::default(),
            Some(h) => {
                let addr = |v: &Option<Spanned<String>>, key: &str| -> Result<Option<SocketAddr>, ConfigError> {
                    let Some(l) = v else { return Ok(None) };
                    let s = expand(l.get_ref()).map_err(|m| err(Some(l.span()), Some(key.into()), m))?;
                    Ok(Some(s.parse().map_err(|e| err(Some(l.span()), Some(key.into()), format!("`{s}` is not ip:port: {e}")))?))
                };
                let listen = noted!(addr(&h.listen, "http.listen"), None);
                let gateway_listen = noted!(addr(&h.gateway_listen, "http.gateway_listen"), None);
                let token = match (&h.token_env, &h.token_file) {
                    (Some(v), Some(f)) => {
                        errors.push(err(Some(f.span()), Some("http.token_file".into()), "give only one of token_env, token_file".into()));
                        Some(TokenSource::Env(v.get_ref().clone()))
                    }
                    (Some(v), None) => Some(TokenSource::Env(v.get_ref().clone())),
                    (None, Some(f)) => {
                        let p = noted!(expand(f.get_ref()).map_err(|m| err(Some(f.span()), Some("http.token_file".into()), m)), f.get_ref().clone());
                        Some(TokenSource::File(base.join(p)))
                    }
                    (None, None) => None,
                };
                // A body crosses between nodes in one message: a larger one could never be
                // called with. The budget must hold at least one body of the largest size.
                let most = (wasmnode_proto::frame::MAX_MESSAGE >> 20) as u64;
                let why = format!(" (a call's message crosses between nodes in one message of at most {most} MiB)");
                let d = crate::http::Limits::default();
                let ranged = |v: &Option<Spanned<u64>>, key: &str, range: std::ops::RangeInclusive<u64>, unit: &str, why: &str| {
                    ranged(v, &format!("http.{key}"), range, unit, why)
                };
                let max_body_mb = noted!(ranged(&h.max_body_mb, "max_body_mb", 1..=most, " MiB", &why), None);
                let body = max_body_mb.unwrap_or(d.max_body as u64 >> 20);
                let why = " (max_body_mb: one body of the largest size)";
                let bodies_held_mb = noted!(ranged(&h.bodies_held_mb, "bodies_held_mb", body..=MAX_BODIES_HELD_MB, " MiB", why), None);
                let why = format!(" (a reply crosses between nodes in one message of at most {most} MiB: one answer of the largest size)");
                let answers_held_mb = noted!(ranged(&h.answers_held_mb, "answers_held_mb", most..=MAX_BODIES_HELD_MB, " MiB", &why), None);
                let max_connections = noted!(ranged(&h.max_connections, "max_connections", 1..=MAX_HTTP_CONNECTIONS, " connections", ""), None);
                let max_header_kb = noted!(ranged(&h.max_header_kb, "max_header_kb", HTTP_MAX_HEADER_KB, " KiB", ""), None);
                let ms = |v: &Option<Spanned<u64>>, key: &str| ranged(v, key, HTTP_TIMEOUTS_MS, " ms", " (a tenth of a second to an hour)");
                let header_timeout_ms = noted!(ms(&h.header_timeout_ms, "header_timeout_ms"), None);
                let body_timeout_ms = noted!(ms(&h.body_timeout_ms, "body_timeout_ms"), None);
                let send_timeout_ms = noted!(ms(&h.send_timeout_ms, "send_timeout_ms"), None);
                let limits = crate::http::Limits {
                    max_header: max_header_kb.map_or(d.max_header, |k| (k as usize) << 10),
                    max_body: max_body_mb.map_or(d.max_body, |m| (m as usize) << 20),
                    header_timeout: header_timeout_ms.map_or(d.header_timeout, Duration::from_millis),
                    body_timeout: body_timeout_ms.map_or(d.body_timeout, Duration::from_millis),
                    max_connections: max_connections.map_or(d.max_connections, |n| n as usize),
                    send_timeout: send_timeout_ms.map_or(d.send_timeout, Duration::from_millis),
                    max_bodies_held: bodies_held_mb.map_or(d.max_bodies_held, |m| (m as usize) << 20),
                    max_answers_held: answers_held_mb.map_or(d.max_answers_held, |m| (m as usize) << 20),
                };
                let gateway = h.gateway.as_ref().is_some_and(|g| *g.get_ref());
                let http = HttpConfig { listen, gateway, gateway_listen, token, limits };
                if let Some(g) = &h.gateway_listen {
                    if !http.gateway {
                        errors.push(err(Some(g.span()), Some("http.gateway_listen".into()), "gateway_listen is set but gateway is not true".into()));
                    }
                }
                // Anyone who reaches the gateway can start and call any worker: beyond
                // loopback, only with a token.
                if let Some(a) = http.gateway_addr().filter(|a| !a.ip().is_loopback()) {
                    if http.token.is_none() {
                        errors.push(err(
                            h.gateway.as_ref().map(|g| g.span()),
                            Some("http.gateway".into()),
                            format!("the worker gateway listens beyond loopback ({a}): set token_env or token_file in [http] (clients send `Authorization: Bearer TOKEN`)"),
                        ));
                    }
                }
                http
            }
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Config { file: path.to_path_buf(), node, topologies, workers, http, warnings, cookie_at })
    }

    /// An error about topology `t`'s strategy component, located at its `strategy` key.
    pub fn strategy_error(&self, t: &TopologyConfig, message: String) -> ConfigError {
        ConfigError { file: self.file.clone(), at: Some(t.strategy_at), key: Some(format!("topology.{}.strategy", t.name)), message }
    }

    /// The pooling settings, when `[node] instance_pool` asks for them: slots as large
    /// as the largest memory cap of any worker kind or topology.
    pub fn pool(&self) -> Option<Pool> {
        let max_memory = self.workers.iter().map(|w| w.memory_limit).chain(self.topologies.iter().map(|t| t.memory_limit)).max().unwrap_or(64 << 20);
        self.node.instance_pool.map(|instances| Pool { instances, max_memory })
    }

    /// An error about worker kind `w`'s component, located at its `component` key.
    pub fn worker_error(&self, w: &WorkerConfig, message: String) -> ConfigError {
        ConfigError { file: self.file.clone(), at: Some(w.component_at), key: Some(format!("worker.{}.component", w.kind)), message }
    }

    /// An error about the cookie, located at its source's key (or `[node]`).
    pub fn cookie_error(&self, message: String) -> ConfigError {
        ConfigError { file: self.file.clone(), at: self.cookie_at.1, key: Some(self.cookie_at.0.clone()), message }
    }
}

/// Why `path`, given as a component, is not one: missing, a directory or a special file.
fn not_a_component(path: &Path) -> String {
    match std::fs::metadata(path) {
        Err(_) => format!("{} does not exist (build the plugins first: ./dev plugins)", path.display()),
        Ok(m) if m.is_dir() => format!("{} is a directory, not a component file", path.display()),
        Ok(_) => format!("{} is not a regular file", path.display()),
    }
}

fn plugin_value(v: &toml::Value) -> Option<PluginValue> {
    Some(match v {
        toml::Value::String(s) => PluginValue::Text(s.clone()),
        toml::Value::Integer(i) => PluginValue::Integer(*i),
        toml::Value::Float(f) => PluginValue::Float(*f),
        toml::Value::Boolean(b) => PluginValue::Boolean(*b),
        toml::Value::Array(items) => PluginValue::TextList(items.iter().map(|i| i.as_str().map(str::to_string)).collect::<Option<Vec<_>>>()?),
        _ => return None,
    })
}

/// `ip`, `ip:port` or `[v6]:port` (port 53 when absent), after `${VAR}` expansion.
fn parse_nameserver(raw: &str, offline: bool) -> Result<SocketAddr, String> {
    let text = expand_with(raw, offline)?;
    text.parse::<SocketAddr>().or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53))).map_err(|_| format!("`{text}` is not ip or ip:port"))
}

/// Expands `${VAR}` and `${VAR:-default}`; an unset variable without default is an error.
pub fn expand(s: &str) -> Result<String, String> {
    expand_with(s, false)
}

/// What an unset `${VAR}` stands for in an offline check: `127.0.0.1` for a variable
/// named for an address (`POD_IP`, `HOST_IP`), else the variable's name in lower case
/// with dashes (`POD_NAME` → `pod-name`), which is a valid DNS label.
pub fn placeholder(var: &str) -> String {
    if var.ends_with("IP") {
        "127.0.0.1".into()
    } else {
        var.to_ascii_lowercase().replace('_', "-")
    }
}

/// [`expand`]; `offline`, an unset variable without default takes its [`placeholder`].
fn expand_with(s: &str, offline: bool) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| format!("unclosed `${{` in `{s}`"))?;
        let expr = &after[..end];
        let (var, default) = match expr.split_once(":-") {
            Some((v, d)) => (v, Some(d)),
            None => (expr, None),
        };
        match (std::env::var(var).ok().filter(|v| !v.is_empty()), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) if offline => out.push_str(&placeholder(var)),
            (None, None) => return Err(format!("environment variable {var} is not set (used in `{s}`)")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, col)
}

/// The dotted key an error span points at: the nearest `[table]` header above it plus
/// the key text on the span's line.
fn key_at(text: &str, span: Range<usize>) -> Option<String> {
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line = text[line_start..].lines().next().unwrap_or("").trim();
    let table =
        text[..line_start].lines().rev().map(str::trim).find(|l| l.starts_with('[')).map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    if line.starts_with('[') {
        return Some(line.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    }
    let key = line.split('=').next()?.trim().trim_matches('"');
    if key.is_empty() {
        return table;
    }
    Some(match table {
        Some(t) => format!("{t}.{key}"),
        None => key.to_string(),
    })
}

/// Finds `key =` in the table that starts at `span` (its header and the lines up to the
/// next header, or its inline braces), for errors about one value of it.
fn find_key(text: &str, span: Range<usize>, key: &str) -> Option<Range<usize>> {
    let mut offset = span.start;
    for (i, line) in text.get(span.start..)?.split_inclusive('\n').enumerate() {
        let t = line.trim_start();
        if i > 0 && t.starts_with('[') {
            break;
        }
        if t.starts_with(key) && t[key.len()..].trim_start().starts_with('=') {
            let lead = line.len() - t.len();
            return Some(offset + lead..offset + lead + key.len());
        }
        offset += line.len();
    }
    None
}

/// What happens to a worker instance whose node went down (OTP's restart types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Restart {
    /// Always started again on the name's new owner.
    #[default]
    Permanent,
    /// Started again after an abnormal end: a node going down is one.
    Transient,
    /// Never started again.
    Temporary,
}

/// Pooling-allocator settings (`[node] instance_pool`): where it pays, that is for many
/// instances. One reservation holds every slot, so a hundred thousand instances cost
/// a few mappings instead of several each (Linux allows 65,530 per process), and an
/// instance starts by taking a free slot instead of mapping fresh memory.
#[derive(Debug, Clone, Copy)]
pub struct Pool {
    /// Component instances that can live at once.
    pub instances: u32,
    /// Largest linear memory of any instance (the largest `memory_limit_mb`).
    pub max_memory: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("t.toml")).map_err(|e| e.to_string())
    }

    /// The HTTP limits of a node whose `[http]` holds a listen address and `extra`, from
    /// line 5 (error positions in the tests count on it).
    fn limits(extra: &str) -> Result<crate::http::Limits, String> {
        parse(&format!("[node]\nname = \"a@127.0.0.1\"\n[http]\nlisten = \"127.0.0.1:9090\"\n{extra}")).map(|c| c.http.limits)
    }

    #[test]
    fn a_kinds_outbound_grants_and_config_are_read_and_checked() {
        // A component path that is a file: this source file stands in for it.
        let component = concat!(env!("CARGO_MANIFEST_DIR"), "/src/config.rs");
        std::env::set_var("WASMNODE_TEST_ORDER_KEY", "s3cret");
        let c = parse(&format!(
            "[worker.order]\ncomponent = \"{component}\"\nallowed_outbound_hosts = [\"http://127.0.0.1:8089\", \"https://*.example.com\"]\n\
             outbound_timeout_ms = 2500\n[worker.order.config]\nwebhook = \"http://127.0.0.1:8089/deliveries\"\nquiet_ms = 5000\nkey = \"${{WASMNODE_TEST_ORDER_KEY}}\"\n"
        ))
        .unwrap();
        let w = &c.workers[0];
        assert!(w.grants.allows("http", "127.0.0.1", 8089) && w.grants.allows("https", "a.example.com", 443));
        assert!(!w.grants.allows("http", "127.0.0.1", 8090));
        assert_eq!(w.outbound_timeout, Duration::from_millis(2500));
        assert_eq!(w.outbound_max_in_flight, DEFAULT_OUTBOUND_MAX_IN_FLIGHT);
        assert_eq!(w.mailbox_limit, DEFAULT_MAILBOX_LIMIT);
        let config: BTreeMap<_, _> = w.config.iter().cloned().collect();
        assert_eq!(config["webhook"], "http://127.0.0.1:8089/deliveries");
        assert_eq!(config["quiet_ms"], "5000");
        assert_eq!(config["key"], "s3cret", "${{VAR}} expands");
        // Nothing granted: nothing allowed.
        let c = parse(&format!("[worker.plain]\ncomponent = \"{component}\"\n")).unwrap();
        assert!(!c.workers[0].grants.allows("http", "127.0.0.1", 80) && c.workers[0].config.is_empty());
        // A malformed pattern names file, line and key.
        let e = parse(&format!("[worker.order]\ncomponent = \"{component}\"\nallowed_outbound_hosts = [\"api.example.com\"]\n")).unwrap_err();
        assert!(e.starts_with("t.toml:3:26: key `worker.order.allowed_outbound_hosts`: `api.example.com` is not an outbound host pattern (no scheme)"), "{e}");
        let e = parse(&format!("[worker.order]\ncomponent = \"{component}\"\n[worker.order.config]\nlist = [1]\n")).unwrap_err();
        assert!(e.contains("key `worker.order.config.list`: config values are strings, numbers or booleans, not array"), "{e}");
    }

    #[test]
    fn a_gateway_beyond_loopback_needs_a_token() {
        let e = parse("[node]\nname = \"a@127.0.0.1\"\n[http]\nlisten = \"0.0.0.0:8080\"\ngateway = true\n").unwrap_err();
        assert!(e.starts_with("t.toml:5:11: key `http.gateway`: the worker gateway listens beyond loopback (0.0.0.0:8080)"), "{e}");
        // On loopback, or with a token, or apart on loopback while probes listen wide.
        parse("[node]\nname = \"a@127.0.0.1\"\n[http]\nlisten = \"127.0.0.1:8080\"\ngateway = true\n").unwrap();
        let c = parse("[node]\nname = \"a@127.0.0.1\"\n[http]\nlisten = \"0.0.0.0:8080\"\ngateway = true\ntoken_env = \"T\"\n").unwrap();
        assert_eq!(c.http.token, Some(TokenSource::Env("T".into())));
        let c = parse("[node]\nname = \"a@127.0.0.1\"\n[http]\nlisten = \"0.0.0.0:8080\"\ngateway = true\ngateway_listen = \"127.0.0.1:8081\"\n").unwrap();
        assert_eq!(c.http.gateway_addr(), Some("127.0.0.1:8081".parse().unwrap()));
        // Probes alone may listen anywhere.
        parse("[node]\nname = \"a@127.0.0.1\"\n[http]\nlisten = \"0.0.0.0:8080\"\n").unwrap();
        let e = parse("[node]\nname = \"a@127.0.0.1\"\n[http]\ngateway = true\ntoken_env = \"T\"\ntoken_file = \"t\"\n").unwrap_err();
        assert!(e.contains("key `http.token_file`: give only one of token_env, token_file"), "{e}");
        let e = parse("[node]\nname = \"a@127.0.0.1\"\n[http]\ngateway_listen = \"127.0.0.1:8081\"\n").unwrap_err();
        assert!(e.contains("key `http.gateway_listen`: gateway_listen is set but gateway is not true"), "{e}");
    }

    #[test]
    fn http_body_sizes_default_to_16_and_64_mib_and_are_checked() {
        let d = limits("").unwrap();
        assert_eq!((d.max_body, d.max_bodies_held), (16 << 20, 64 << 20));
        let l = limits("max_body_mb = 32\nbodies_held_mb = 256\n").unwrap();
        assert_eq!((l.max_body, l.max_bodies_held, l.max_connections), (32 << 20, 256 << 20, d.max_connections));
        let e = limits("max_body_mb = 0\n").unwrap_err();
        assert!(e.starts_with("t.toml:5:15: key `http.max_body_mb`: 0 MiB: give 1 to 64"), "{e}");
        let e = limits("max_body_mb = 65\n").unwrap_err();
        assert!(e.contains("key `http.max_body_mb`: 65 MiB: give 1 to 64 (a call's message"), "{e}");
        let e = limits("max_body_mb = 32\nbodies_held_mb = 16\n").unwrap_err();
        assert!(e.starts_with("t.toml:6:18: key `http.bodies_held_mb`: 16 MiB: give 32 to 65536 (max_body_mb"), "{e}");
        let e = limits("bodies_held_mb = 8\n").unwrap_err();
        assert!(e.contains("key `http.bodies_held_mb`: 8 MiB: give 16 to 65536 (max_body_mb"), "{e}");
        let e = limits("max_body_mb = -1\n").unwrap_err();
        assert!(e.contains("max_body_mb"), "{e}");
    }

    #[test]
    fn http_answers_held_default_to_256_mib_and_hold_at_least_the_largest_reply() {
        assert_eq!(limits("").unwrap().max_answers_held, 256 << 20);
        assert_eq!(limits("answers_held_mb = 64\n").unwrap().max_answers_held, 64 << 20);
        let e = limits("answers_held_mb = 63\n").unwrap_err();
        assert!(e.starts_with("t.toml:5:19: key `http.answers_held_mb`: 63 MiB: give 64 to 65536 (a reply crosses"), "{e}");
    }

    #[test]
    fn every_time_memory_and_permit_count_is_within_its_range() {
        let node = |line: &str| parse(&format!("[node]\n{line}\n"));
        let worker = |line: &str| parse(&format!("[worker.c]\ncomponent = \"Cargo.toml\"\n{line}\n"));
        // Each end of each range is taken, with what it says.
        let c = node("connect_timeout_ms = 1\nhandoff_deadline_ms = 3600000\nheartbeat_interval_ms = 1\nheartbeat_timeout_ms = 3600000").unwrap();
        assert_eq!((c.node.connect_timeout, c.node.handoff_deadline), (Duration::from_millis(1), Duration::from_secs(3600)));
        assert_eq!((c.node.heartbeat_interval, c.node.heartbeat_timeout), (Duration::from_millis(1), Duration::from_secs(3600)));
        let w =
            worker("call_timeout_ms = 3600000\nmemory_limit_mb = 4096\noutbound_timeout_ms = 1\noutbound_max_in_flight = 1048576\nmailbox_limit = 1").unwrap();
        let w = &w.workers[0];
        assert_eq!(
            (w.call_timeout, w.memory_limit, w.outbound_timeout, w.outbound_max_in_flight, w.mailbox_limit),
            (Duration::from_secs(3600), 4 << 30, Duration::from_millis(1), 1 << 20, 1)
        );
        assert_eq!(worker("mailbox_limit = 1048576").unwrap().workers[0].mailbox_limit, 1 << 20);
        assert_eq!(worker("max_instances = 3").unwrap().workers[0].max_instances, Some(3));
        assert_eq!(worker("").unwrap().workers[0].max_instances, None);
        // One past either end is refused where it is written, never wrapped or run with:
        // 2^44 MiB shifted to bytes would be a memory limit of 0, and 2^62 permits panic
        // the semaphore that holds them.
        let cases = [
            (node("connect_timeout_ms = 0"), "t.toml:2:22: key `node.connect_timeout_ms`: 0 ms: give 1 to 3600000 (a millisecond to an hour)"),
            (node("handoff_deadline_ms = 3600001"), "t.toml:2:23: key `node.handoff_deadline_ms`: 3600001 ms: give 1 to 3600000"),
            (node("heartbeat_timeout_ms = 9223372036854775807"), "t.toml:2:24: key `node.heartbeat_timeout_ms`: 9223372036854775807 ms"),
            (node("[node.tls]\ncert = \"a\"\nkey = \"b\"\nca = \"c\"\nreload_interval_ms = 3600001"), "key `node.tls.reload_interval_ms`: 3600001 ms"),
            (worker("call_timeout_ms = 0"), "t.toml:3:19: key `worker.c.call_timeout_ms`: 0 ms: give 1 to 3600000"),
            (
                worker("memory_limit_mb = 0"),
                "t.toml:3:19: key `worker.c.memory_limit_mb`: 0 MiB: give 1 to 4096 (a 32-bit WebAssembly memory holds at most 4 GiB)",
            ),
            (worker("memory_limit_mb = 17592186044416"), "t.toml:3:19: key `worker.c.memory_limit_mb`: 17592186044416 MiB: give 1 to 4096"),
            (worker("outbound_timeout_ms = 0"), "t.toml:3:23: key `worker.c.outbound_timeout_ms`: 0 ms: give 1 to 3600000"),
            (
                worker("outbound_max_in_flight = 4611686018427387904"),
                "t.toml:3:26: key `worker.c.outbound_max_in_flight`: 4611686018427387904 requests: give 1 to 1048576",
            ),
            (worker("mailbox_limit = 0"), "t.toml:3:17: key `worker.c.mailbox_limit`: 0 messages: give 1 to 1048576"),
            (worker("mailbox_limit = 1048577"), "t.toml:3:17: key `worker.c.mailbox_limit`: 1048577 messages: give 1 to 1048576"),
            (worker("max_instances = 0"), "t.toml:3:17: key `worker.c.max_instances`: 0 instances: give 1 to 16777216"),
            (
                parse("[topology.t]\nstrategy = \"Cargo.toml\"\nmemory_limit_mb = 4097\n"),
                "t.toml:3:19: key `topology.t.memory_limit_mb`: 4097 MiB: give 1 to 4096",
            ),
            (parse("[topology.t]\nstrategy = \"Cargo.toml\"\ncall_timeout_ms = 0\n"), "t.toml:3:19: key `topology.t.call_timeout_ms`: 0 ms: give 1 to 3600000"),
        ];
        for (got, want) in cases {
            let e = got.unwrap_err();
            assert!(e.contains(want), "{e}\n  wanted: {want}");
        }
    }

    #[test]
    fn http_timeouts_and_connection_cap_are_configurable_and_checked() {
        let d = limits("").unwrap();
        assert_eq!((d.max_connections, d.max_header), (1024, 16 << 10));
        assert_eq!((d.header_timeout, d.body_timeout, d.send_timeout), (Duration::from_secs(10), Duration::from_secs(30), Duration::from_secs(10)));
        let l = limits("max_connections = 64\nheader_timeout_ms = 2500\nbody_timeout_ms = 100\nsend_timeout_ms = 3600000\nmax_header_kb = 64\n").unwrap();
        assert_eq!((l.max_connections, l.max_header, l.max_body), (64, 64 << 10, d.max_body));
        assert_eq!((l.header_timeout, l.body_timeout, l.send_timeout), (Duration::from_millis(2500), Duration::from_millis(100), Duration::from_secs(3600)));
        let e = limits("max_connections = 0\n").unwrap_err();
        assert!(e.starts_with("t.toml:5:19: key `http.max_connections`: 0 connections: give 1 to 1048576"), "{e}");
        let e = limits("header_timeout_ms = 99\n").unwrap_err();
        assert!(e.starts_with("t.toml:5:21: key `http.header_timeout_ms`: 99 ms: give 100 to 3600000 (a tenth of a second to an hour)"), "{e}");
        let e = limits("body_timeout_ms = 3600001\n").unwrap_err();
        assert!(e.contains("key `http.body_timeout_ms`: 3600001 ms: give 100 to 3600000"), "{e}");
        let e = limits("send_timeout_ms = 0\n").unwrap_err();
        assert!(e.contains("key `http.send_timeout_ms`: 0 ms: give 100"), "{e}");
        let e = limits("max_header_kb = 4\n").unwrap_err();
        assert!(e.contains("key `http.max_header_kb`: 4 KiB: give 8 to 1024"), "{e}");
        let e = limits("idle_timeout_ms = 5\n").unwrap_err();
        assert!(e.contains("idle_timeout_ms"), "{e}");
        // Every bad key is reported in one run.
        let all = Config::parse_with(
            "[node]\nname = \"a@127.0.0.1\"\n[http]\nmax_connections = 0\nsend_timeout_ms = 1\n",
            Path::new("t.toml"),
            &Overrides::default(),
        )
        .err()
        .unwrap();
        assert_eq!(all.len(), 2, "{all:?}");
    }

    #[test]
    fn node_tls_paths_are_relative_to_the_file_and_every_key_is_named() {
        let c = parse("[node]\nname = \"a@127.0.0.1\"\n[node.tls]\ncert = \"c/a.crt\"\nkey = \"/k/a.key\"\nca = \"c/ca.crt\"\n").unwrap();
        let tls = c.node.tls.unwrap();
        assert_eq!((tls.cert, tls.key, tls.ca, tls.reload_interval), ("c/a.crt".into(), "/k/a.key".into(), "c/ca.crt".into(), Duration::from_secs(10)));
        let e = parse("[node]\nname = \"a@127.0.0.1\"\n[node.tls]\ncert = \"a.crt\"\nkey = \"a.key\"\n").unwrap_err();
        assert!(e.contains("missing field `ca`"), "{e}");
        let e = parse("[node.tls]\ncert = \"a\"\nkey = \"b\"\nca = \"c\"\nreload_interval_ms = 0\n").unwrap_err();
        assert!(e.starts_with("t.toml:5:22: key `node.tls.reload_interval_ms`: 0 ms: give 1 to 3600000 (a millisecond to an hour)"), "{e}");
        let e = parse("[node.tls]\ncert = \"a\"\nkey = \"b\"\nca = \"c\"\ncrt = \"d\"\n").unwrap_err();
        assert!(e.contains("unknown field `crt`"), "{e}");
    }

    #[test]
    fn durability_and_replicas_are_checked_and_named() {
        // `component` must be a file: this crate's manifest stands in (tests run in its folder).
        let w = |rest: &str| parse(&format!("[worker.c]\ncomponent = \"Cargo.toml\"\n{rest}"));
        assert_eq!(w("").unwrap().workers[0].replicas, 0, "durability is none by default");
        assert_eq!(w("durability = \"none\"\n").unwrap().workers[0].replicas, 0);
        assert_eq!(w("durability = \"replicated\"\n").unwrap().workers[0].replicas, 1, "one replica by default");
        assert_eq!(w("durability = \"replicated\"\nreplicas = 3\n").unwrap().workers[0].replicas, 3);
        let e = w("durability = \"replicated\"\nreplicas = 4\n").unwrap_err();
        assert!(e.starts_with("t.toml:4:12: key `worker.c.replicas`: 4 replicas: give 1 to 3"), "{e}");
        let e = w("durability = \"replicated\"\nreplicas = 0\n").unwrap_err();
        assert!(e.contains("key `worker.c.replicas`: 0 replicas"), "{e}");
        let e = w("replicas = 2\n").unwrap_err();
        assert!(e.starts_with("t.toml:3:12: key `worker.c.replicas`: replicas needs `durability = \"replicated\"`"), "{e}");
        let e = w("durability = \"raft\"\n").unwrap_err();
        assert!(e.starts_with("t.toml:3:14: key `worker.c.durability`: `raft` is not a durability: none or replicated"), "{e}");
    }

    #[test]
    fn a_durable_kind_whose_state_can_outgrow_one_copy_is_warned_about_where_it_is_set() {
        let w = |rest: &str| parse(&format!("[worker.c]\ncomponent = \"Cargo.toml\"\n{rest}")).unwrap();
        // The default (64 MiB) and anything up to it: no warning, since a state lives in
        // the instance's memory and so is smaller than it.
        assert!(w("durability = \"replicated\"\n").warnings.is_empty());
        assert!(w("durability = \"replicated\"\nmemory_limit_mb = 64\n").warnings.is_empty());
        // Larger, but not durable: nothing is copied, so nothing to warn about.
        assert!(w("memory_limit_mb = 512\n").warnings.is_empty());
        let c = w("durability = \"replicated\"\nmemory_limit_mb = 65\n");
        assert_eq!(c.workers[0].memory_limit, 65 << 20, "a warning, not an error: the limit holds");
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        let want = "t.toml:4:19: key `worker.c.memory_limit_mb`: a durable instance's state may grow to 65 MiB here, \
                    but one copy between nodes carries at most 64 MiB";
        assert!(c.warnings[0].starts_with(want), "{}", c.warnings[0]);
        assert!(c.warnings[0].ends_with("so it is not durable until it fits (keep this at 64 or less)"), "{}", c.warnings[0]);
    }

    #[test]
    fn worker_kinds_and_boot_keys_are_names_that_cannot_break_a_log_line() {
        let c = parse("[worker.order-2]\ncomponent = \"Cargo.toml\"\nboot = [\"a/b\", \"Jöhn\"]\n").unwrap();
        assert_eq!((c.workers[0].kind.as_str(), c.workers[0].boot.clone()), ("order-2", vec!["a/b".to_string(), "Jöhn".to_string()]));
        let e = parse("[worker.order]\ncomponent = \"Cargo.toml\"\nboot = [\"ok\", \"x\\n2026-12-04 INFO forged\"]\n").unwrap_err();
        assert!(e.starts_with("t.toml:3:15: key `worker.order.boot`: `x\\n2026-12-04 INFO forged`: a worker key is 1 to 1024 bytes"), "{e}");
        let e = parse("[worker.\"a/b\"]\ncomponent = \"Cargo.toml\"\n").unwrap_err();
        assert!(e.starts_with("t.toml:1:1: key `worker`: `a/b`: a worker kind is 1 to 64 letters, digits"), "{e}");
    }

    /// A topology with every section, as a starting point for altered ones.
    const EVERY_SECTION: &str = "[node]\nname = \"${WASMNODE_T_NAME:-a@127.0.0.1}\"\nheartbeat_interval_ms = 250\nfull_mesh = true\n\
        [node.tls]\ncert = \"a.crt\"\nkey = \"a.key\"\nca = \"ca.crt\"\n\
        [topology.local]\nstrategy = \"Cargo.toml\"\npolling_interval_ms = 5000\n[topology.local.config]\nhosts = [\"a@127.0.0.1\", \"b@[::1]:4371\"]\n\
        [worker.order]\ncomponent = \"Cargo.toml\"\nboot = [\"John\"]\nactivate_on_call = true\ndurability = \"replicated\"\nreplicas = 2\n\
        allowed_outbound_hosts = [\"http://127.0.0.1:8089\"]\n[worker.order.config]\nwebhook = \"${WASMNODE_T_HOOK:-http://x/y}\"\n\
        [http]\nlisten = \"127.0.0.1:9090\"\ngateway = true\n";

    /// However a topology is garbled, reading it answers a config or errors that name
    /// the file, at a line the file has; it never panics.
    fn reads_or_names_the_place(text: &str) -> Result<(), proptest::test_runner::TestCaseError> {
        let lines = text.split('\n').count();
        if let Err(errors) = Config::parse_with(text, Path::new("t.toml"), &Overrides { offline: true, ..Overrides::default() }) {
            proptest::prop_assert!(!errors.is_empty());
            for e in errors {
                proptest::prop_assert_eq!(&e.file, Path::new("t.toml"));
                proptest::prop_assert!(e.at.is_none_or(|(line, col)| line >= 1 && line <= lines && col >= 1), "{e} in {lines} lines");
                proptest::prop_assert!(!e.message.is_empty() && e.to_string().starts_with("t.toml"), "{e}");
            }
        }
        Ok(())
    }

    #[test]
    fn the_topology_garbled_below_reads_as_it_stands() {
        Config::parse_with(EVERY_SECTION, Path::new("t.toml"), &Overrides { offline: true, ..Overrides::default() }).unwrap();
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 1024, ..Default::default() })]

        #[test]
        fn a_garbled_topology_is_refused_with_its_place_named_never_a_panic(
            edits in proptest::collection::vec((0usize..2048, proptest::sample::select(vec!['"', '[', ']', '=', '{', '}', '.', ',', '#', '\n', '\\', '$', '@', ':', '\'', ' ', '0', 'a', '-', '/', 'é', '\u{0}']), 0u8..3), 1..6),
        ) {
            let mut text: Vec<char> = EVERY_SECTION.chars().collect();
            for (at, c, how) in edits {
                let at = at % (text.len() + 1);
                match how {
                    0 => text.insert(at, c),
                    1 if at < text.len() => text[at] = c,
                    _ if at < text.len() => { text.remove(at); }
                    _ => text.push(c),
                }
            }
            reads_or_names_the_place(&text.into_iter().collect::<String>())?;
        }

        #[test]
        fn arbitrary_text_is_refused_with_its_place_named_never_a_panic(text in "[\\[\\]a-z_.=\"'{},#\n0-9@:$ ]{0,200}") {
            reads_or_names_the_place(&text)?;
        }
    }

    #[test]
    fn a_directory_given_as_a_strategy_is_named_a_directory() {
        let e = parse("[topology.k]\nstrategy = \"/tmp\"\n").unwrap_err();
        assert!(e.contains("key `topology.k.strategy`: strategy component /tmp is a directory, not a component file"), "{e}");
    }

    #[test]
    fn a_config_that_is_a_device_or_a_directory_is_named_as_such() {
        let e = Config::load(Path::new("/dev/zero"), &Overrides::default()).unwrap_err().to_string();
        assert_eq!(e, "/dev/zero: is a device, not a regular file");
        let e = Config::load(Path::new("/"), &Overrides::default()).unwrap_err().to_string();
        assert_eq!(e, "/: is a directory, not a file");
    }

    #[test]
    fn a_short_cookie_is_refused_unless_insecure_cookies_are_allowed() {
        let dir = std::env::temp_dir().join(format!("wasmnode-cookie-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let short = dir.join("short");
        std::fs::write(&short, "fifteen-bytes!!\n").unwrap();
        let source = CookieSource::File(short.clone());
        let e = source.resolve_for_node(false).unwrap_err();
        assert!(e.contains("is 15 bytes; at least 16 are needed"), "{e}");
        assert_eq!(source.resolve_for_node(true).unwrap(), b"fifteen-bytes!!");
        std::fs::write(&short, "sixteen-bytes!!!").unwrap();
        assert_eq!(source.resolve_for_node(false).unwrap().len(), 16);
        // A device or a directory given as the cookie file is named as such, not read.
        let e = CookieSource::File("/dev/zero".into()).resolve().unwrap_err();
        assert_eq!(e, "no cookie: cookie_file /dev/zero is a device, not a regular file");
        let e = CookieSource::File(dir.clone()).resolve().unwrap_err();
        assert!(e.ends_with("is a directory, not a file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = parse("[node]\nname = \"a@127.0.0.1\"\ncolour = 1\n").unwrap_err();
        assert!(e.starts_with("t.toml:3:1: key `node.colour`: unknown field `colour`"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let e = parse("[node]\nheartbeat_interval_ms = \"fast\"\n").unwrap_err();
        assert!(e.starts_with("t.toml:2:"), "{e}");
        assert!(e.contains("key `node.heartbeat_interval_ms`"), "{e}");
    }

    #[test]
    fn literal_cookie_needs_the_insecure_switch() {
        let e = parse("[node]\ncookie = \"x\"\n").unwrap_err();
        assert!(e.contains("t.toml:2:10: key `node.cookie`: a literal cookie"), "{e}");
        let c = parse("[node]\ncookie = \"x\"\nallow_insecure_cookie = true\n").unwrap();
        assert_eq!(c.node.cookie, CookieSource::Literal("x".into()));
        assert_eq!(c.warnings.len(), 1);
    }

    #[test]
    fn default_cookie_source_is_the_env_var() {
        let c = parse("[node]\nname = \"a@127.0.0.1\"\n").unwrap();
        assert_eq!(c.node.cookie, CookieSource::Env("WASMNODE_COOKIE".into()));
        let missing = CookieSource::Env("WASMNODE_TEST_SURELY_UNSET".into()).resolve().unwrap_err();
        assert!(missing.contains("WASMNODE_TEST_SURELY_UNSET is not set"), "{missing}");
    }

    #[test]
    fn variables_expand_with_defaults() {
        std::env::set_var("WASMNODE_TEST_IP", "10.1.0.65");
        assert_eq!(expand("myapp@${WASMNODE_TEST_IP}").unwrap(), "myapp@10.1.0.65");
        assert_eq!(expand("${WASMNODE_TEST_NOPE:-x}@y").unwrap(), "x@y");
        assert!(expand("${WASMNODE_TEST_NOPE}").unwrap_err().contains("WASMNODE_TEST_NOPE is not set"));
        let c = parse("[node]\nname = \"myapp@${WASMNODE_TEST_IP}\"\n").unwrap();
        assert_eq!(c.node.listen, "10.1.0.65:4370".parse().unwrap());
    }

    #[test]
    fn missing_strategy_is_reported_at_its_key() {
        let e = parse("[topology.k8s]\nstrategy = \"nope.wasm\"\n").unwrap_err();
        assert!(e.starts_with("t.toml:2:12: key `topology.k8s.strategy`: strategy component nope.wasm does not exist"), "{e}");
    }

    #[test]
    fn nested_plugin_config_is_refused() {
        let dir = std::env::temp_dir().join(format!("wasmnode-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("s.wasm"), b"").unwrap();
        let text = "[topology.t]\nstrategy = \"s.wasm\"\n[topology.t.config]\nhosts = [\"a@h\"]\ndeep = { x = 1 }\n";
        let e = Config::parse(text, &dir.join("t.toml")).unwrap_err().to_string();
        assert!(e.contains(":5:1: key `topology.t.config.deep`"), "{e}");
        let ok = Config::parse(&text.replace("deep = { x = 1 }\n", ""), &dir.join("t.toml")).unwrap();
        assert_eq!(ok.topologies[0].config, vec![("hosts".into(), PluginValue::TextList(vec!["a@h".into()]))]);
    }
}
