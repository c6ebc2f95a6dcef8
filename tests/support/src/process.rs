//! Child processes: `wasmnode run` nodes, how they are started ([`Launch`]) and each one
//! with its captured log ([`Node`]), and what any child needs ([`Lines`], [`reap`]).
//! The tests and the bench both start their nodes here.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{bin, member_names, wait_every, wait_until, COOKIE};

/// How many of a node's last log lines a failure's message shows (the whole log goes to
/// a file).
const DUMP_LINES: usize = 60;

/// The state letter (`R`, `S`, `T`, …) of each thread of `pid`, from
/// `/proc/<pid>/task/*/stat`; a thread that exits while it is read is left out.
fn thread_states(pid: i32) -> Vec<char> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
        // The name in parentheses may hold spaces and parentheses: the state follows the last `)`.
        .filter_map(|stat| stat.rsplit_once(')')?.1.trim_start().chars().next())
        .collect()
}

/// `program` as a command, on CPU 0 only when `cpu0` (through `taskset -c 0`, so that
/// every thread it starts is pinned from its start).
pub fn command(program: impl AsRef<std::ffi::OsStr>, cpu0: bool) -> Command {
    if cpu0 {
        let mut c = Command::new("taskset");
        c.args(["-c", "0"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// A child's stderr, line by line, each line with when it arrived.
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<(Instant, String)>>>);

impl Lines {
    /// Reads `child`'s stderr (piped) into these lines, on a thread of its own.
    pub fn capture(&self, child: &mut Child) {
        let stderr = child.stderr.take().expect("stderr piped");
        let lines = self.0.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push((Instant::now(), line));
            }
        });
    }

    pub fn push(&self, line: &str) {
        self.0.lock().unwrap().push((Instant::now(), line.to_string()));
    }

    /// Every line so far, each ended by a newline.
    pub fn text(&self) -> String {
        self.0.lock().unwrap().iter().map(|(_, l)| format!("{l}\n")).collect()
    }

    /// How many lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.0.lock().unwrap().iter().filter(|(_, l)| l.contains(needle)).count()
    }

    /// When the first line containing `needle` arrived.
    pub fn first(&self, needle: &str) -> Option<Instant> {
        self.0.lock().unwrap().iter().find(|(_, l)| l.contains(needle)).map(|(t, _)| *t)
    }
}

/// Kills and waits for the child, if there is one still.
pub fn reap(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// How nodes are started: which binary, with which cookie and log filter, extra
/// arguments and environment, and where they run.
#[derive(Clone, Debug)]
pub struct Launch {
    bin: PathBuf,
    cookie: String,
    log_filter: String,
    cpu0: bool,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Launch {
    /// `bin` with the tests' cookie and debug logs (which the tests read).
    pub fn new(bin: impl Into<PathBuf>) -> Launch {
        Launch { bin: bin.into(), cookie: COOKIE.to_string(), log_filter: "wasmnode=debug".to_string(), cpu0: false, args: Vec::new(), env: Vec::new() }
    }

    /// The binary under test ([`bin`]), as every test starts it.
    pub fn test() -> Launch {
        Launch::new(bin())
    }

    /// In `WASMNODE_COOKIE`.
    pub fn cookie(mut self, cookie: &str) -> Launch {
        self.cookie = cookie.to_string();
        self
    }

    /// In `RUST_LOG`.
    pub fn log_filter(mut self, filter: &str) -> Launch {
        self.log_filter = filter.to_string();
        self
    }

    /// Run on CPU 0 only.
    pub fn cpu0(mut self, cpu0: bool) -> Launch {
        self.cpu0 = cpu0;
        self
    }

    /// More command-line arguments after `run --config CONFIG --name NAME`.
    pub fn args(mut self, args: &[&str]) -> Launch {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// More environment variables.
    pub fn env(mut self, env: &[(&str, &str)]) -> Launch {
        self.env.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self
    }

    /// Starts `wasmnode run --config CONFIG --name NAME`.
    pub fn start(&self, name: &str, config: &Path) -> Node {
        let mut n = Node { name: name.to_string(), config: config.to_path_buf(), launch: self.clone(), child: None, log: Lines::default() };
        n.spawn();
        n
    }

    /// Runs the CLI (`wasmnode ARGS…`) to completion with this cookie and environment.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.bin)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("WASMNODE_COOKIE", &self.cookie)
            .stdin(Stdio::null())
            .output()
            .expect("run wasmnode")
    }
}

/// One `wasmnode run` process and its captured log, each line with when it arrived.
/// Dropping it kills the process (continuing it first if it was stopped); a panicking
/// test prints the log.
pub struct Node {
    pub name: String,
    pub config: PathBuf,
    launch: Launch,
    child: Option<Child>,
    log: Lines,
}

impl Node {
    /// Starts `wasmnode run --config CONFIG --name NAME` with the test cookie.
    pub fn start(name: &str, config: &Path) -> Node {
        Launch::test().start(name, config)
    }

    pub fn start_with_cookie(name: &str, config: &Path, cookie: &str) -> Node {
        Launch::test().cookie(cookie).start(name, config)
    }

    /// Starts a node with extra command-line arguments and environment variables.
    pub fn start_with(name: &str, config: &Path, args: &[&str], env: &[(&str, &str)]) -> Node {
        Launch::test().args(args).env(env).start(name, config)
    }

    fn spawn(&mut self) {
        let l = &self.launch;
        let mut child = command(&l.bin, l.cpu0)
            .args(["run", "--config"])
            .arg(&self.config)
            .args(["--name", &self.name])
            .args(&l.args)
            .envs(l.env.iter().map(|(k, v)| (k, v)))
            .env("WASMNODE_COOKIE", &l.cookie)
            .env("RUST_LOG", &l.log_filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", l.bin.display()));
        self.log.capture(&mut child);
        self.child = Some(child);
    }

    /// Starts the process again after it was killed (same name, config and cookie);
    /// the log keeps the earlier lines.
    pub fn restart(&mut self) {
        reap(&mut self.child);
        self.log.push("---- restarted ----");
        self.spawn();
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// Sends `sig`. For SIGSTOP it returns only once every thread of the process has
    /// stopped: kill(2) returns before they do (a thread must be scheduled to take the
    /// stop), and on a busy machine a thread not yet stopped would still answer a
    /// message sent just after.
    pub fn signal(&self, sig: i32) {
        let pid = self.pid();
        // SAFETY: kill(2) on our own child's pid.
        let r = unsafe { libc::kill(pid, sig) };
        assert_eq!(r, 0, "kill({pid}, {sig})");
        if sig == libc::SIGSTOP {
            wait_every(
                Duration::from_millis(1),
                Duration::from_secs(5),
                &format!("every thread of {} to stop", self.name),
                || thread_states(pid).iter().all(|s| *s == 'T'),
                || format!("thread states {:?}", thread_states(pid)),
            );
        }
    }

    /// Wakes the node (SIGCONT) once `pause` has passed since `paused`, when it was
    /// stopped: a pause of the fault's length, however long the test's checks took
    /// meanwhile. Sleeping here is the fault itself, not a wait for a condition.
    pub fn wake_after(&self, paused: Instant, pause: Duration) {
        std::thread::sleep(pause.saturating_sub(paused.elapsed()));
        self.signal(libc::SIGCONT);
    }

    /// Waits (up to `timeout`) for the process to exit; its exit code. It looks every
    /// millisecond (a cheap look), so the bench can time an exit with it.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut().expect("running");
        let mut status = None;
        wait_every(
            Duration::from_millis(1),
            timeout,
            &format!("{} to exit", self.name),
            || {
                status = child.try_wait().unwrap();
                status.is_some()
            },
            String::new,
        );
        status.unwrap().code()
    }

    /// The whole captured log so far.
    pub fn log(&self) -> String {
        self.log.text()
    }

    /// Lines of the log containing `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.log.count(needle)
    }

    /// Waits until the log has a line containing `needle`; how long that took.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> Duration {
        self.wait_log_count(needle, 1, timeout)
    }

    /// Waits until the log has `n` lines containing `needle`.
    pub fn wait_log_count(&self, needle: &str, n: usize, timeout: Duration) -> Duration {
        wait_until(timeout, &format!("{n} log line(s) with {needle:?} at {}", self.name), || self.count(needle) >= n, || self.dump())
    }

    /// Waits until the log has a line containing `needle`; when that line arrived (which
    /// the bench times launches by).
    pub fn wait_line(&self, needle: &str, timeout: Duration) -> Instant {
        self.wait_log(needle, timeout);
        self.log.first(needle).expect("the line just seen")
    }

    /// The log's last [`DUMP_LINES`] lines, for a failure's message. The whole log is
    /// written to a file beside (named in the message): a test's failure then stays near
    /// the top of what CI prints, not pushed out by its nodes' logs.
    fn dump(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let left = lines.len().saturating_sub(DUMP_LINES);
        if left == 0 {
            return format!("---- log of {} ----\n{log}", self.name);
        }
        let whole = self.save(&log);
        format!("---- log of {} (its last {DUMP_LINES} lines; {left} before them left out, {whole}) ----\n{}", self.name, lines[left..].join("\n"))
    }

    /// The log's lines that name one of the workers `names` (`kind/key`, whole), with
    /// the lines of what happened to the node's members between them (down, left,
    /// connected, a pause, a leave), at most [`DUMP_LINES`] of them, and where the whole
    /// log is saved: what a failure about those workers needs, short enough that CI
    /// prints all of it.
    pub fn about(&self, names: &[&str]) -> String {
        let log = self.log();
        let names_one = |line: &str| {
            names
                .iter()
                .any(|n| line.match_indices(n).any(|(at, _)| !line[at + n.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_')))
        };
        const MEMBERS: [&str; 5] = ["node down ", "node left ", "connected to ", "this node did not run for", "SIGTERM"];
        let lines: Vec<&str> = log.lines().filter(|l| names_one(l) || MEMBERS.iter().any(|m| l.contains(m))).collect();
        let left = lines.len().saturating_sub(DUMP_LINES);
        let whole = self.save(&log);
        format!("---- {} lines of {} about {names:?} ({left} before these left out; {whole}) ----\n{}", lines.len(), self.name, lines[left..].join("\n"))
    }

    /// Writes `log` to a file in the temporary directory; says where, or why not.
    fn save(&self, log: &str) -> String {
        let dir = std::env::temp_dir().join("wasmnode-test-logs");
        // An exited node (`wait_exit` reaped it) has no pid: its log is still saved.
        let pid = self.child.as_ref().map_or_else(|| "exited".to_string(), |c| c.id().to_string());
        let path = dir.join(format!("{}-{pid}.log", self.name.replace(['@', ':'], "_")));
        match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, log)) {
            Ok(()) => format!("the whole log: {}", path.display()),
            Err(e) => format!("the whole log could not be saved to {}: {e}", path.display()),
        }
    }

    /// The process's resident memory (VmRSS) in MiB; NaN once it is gone.
    pub fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let kib: f64 =
            status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
        kib / 1024.0
    }

    /// The node's member names, asked through the CLI as a hidden node.
    pub fn members(&self) -> Vec<String> {
        let out = self.launch.cli(&["nodes", "--node", &self.name, "--json"]);
        if !out.status.success() {
            return Vec::new();
        }
        member_names(&out)
    }

    /// Waits until the member list (this node included) is exactly `expected`.
    pub fn wait_members(&self, expected: &[&str], timeout: Duration) {
        let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        want.sort();
        let mut last = Vec::new();
        wait_until(
            timeout,
            &format!("members of {} to be {want:?}", self.name),
            || {
                last = self.members();
                last == want
            },
            || self.dump(),
        );
    }

    /// The last list of names topology `topology` reported seeing (from the debug log).
    pub fn last_seen(&self, topology: &str) -> Option<Vec<String>> {
        let prefix = format!("strategy {topology} (");
        let log = self.log();
        let line = log.lines().rev().find(|l| l.contains(&prefix) && l.contains(" sees "))?;
        let list = line.rsplit_once('[')?.1.trim_end_matches(']');
        let mut names: Vec<String> = list.split(", ").filter(|s| !s.is_empty()).map(str::to_string).collect();
        names.sort();
        Some(names)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            // A stopped process must be continued to die promptly.
            // SAFETY: signals to our own child.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGCONT);
            }
        }
        reap(&mut self.child);
        if std::thread::panicking() {
            eprintln!("{}", self.dump());
        }
    }
}

/// Waits until every node's member list is exactly `names`.
pub fn wait_mesh(nodes: &[&Node], names: &[&str], timeout: Duration) {
    for n in nodes {
        n.wait_members(names, timeout);
    }
}
