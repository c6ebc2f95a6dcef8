//! Test fixture: a worker that shows the host's behaviour from the inside.
//!
//! | message | what it does |
//! |---|---|
//! | `events` | replies the info events seen so far, one per line (`up NODE`, `down NODE: REASON`, `timer PAYLOAD`) |
//! | `whoami` | replies `KIND/KEY@NODE` |
//! | `members` | replies the member list, comma-separated |
//! | `call KIND/KEY MSG` | calls that worker (2 s timeout) and replies its reply, or `error: …` |
//! | `start KIND/KEY ARGS` | starts that worker (`cluster.start`); replies `started on NODE` or `error: …` |
//! | `timer MS PAYLOAD` | sets a timer; replies `ok` |
//! | `bench N KIND/KEY [MSG]` | makes N calls to that worker (16 bytes, or MSG), replies `MEDIAN_NS P99_NS` |
//! | `crash` | traps |
//! | `bomb` | allocates until the host's memory cap stops it |
//! | `spin` | logs `spinning`, then loops until the host's deadline stops it |
//! | `slow-add MS` | adds one to its count, logs `slow-add N applied`, sleeps MS ms, replies N |
//! | `count` | replies its count (the state `snapshot` copies: `COUNT`, then `\n` and the ballast if any) |
//! | `big MIB` | replies MIB MiB of `x` |
//! | `ballast MIB` | holds MIB MiB of bytes in its state (what `snapshot` copies, and `terminate` hands over: without a ballast it hands over nothing); replies `ok` |
//! | `call-once ID KIND/KEY MSG` | calls that worker with call id ID (`cluster.call-once`, 15 s timeout), replies as `call` |
//! | `http-get URL` | GETs URL through `wasi:http`; replies `STATUS BODY`, or `error: …` (the error code) |
//! | `http-post URL BODY` | the same with a POST of BODY |
//! | `http-spin MS URL` | for MS ms, keeps a GET of URL in flight while it computes, never blocking (it asks whether the answer came, then sends the next); replies `answered N` |
//! | `host-spin MS` | for MS ms, has the host do the work: asks it for 64 KiB of random bytes at a time (`wasi:random`), computing nothing itself; replies `asked N` |
//! | `http-bench N URL` | N sequential GETs of URL, replies `MEDIAN_NS P99_NS` |
//! | `config KEY` | replies the kind's `[worker.KIND.config]` value of KEY (`wasi:config/store`), or `none` |
//! | `casts N KIND/KEY BYTES` | casts N messages of BYTES bytes to that worker; replies `sent S` when all went, or `sent S, then: error: …` at the first refused |
//! | `hold N KIB` | creates N `wasi:http` header maps of one KIB-KiB header each and keeps them (host resources it never drops); replies `held N`, or `error at I: …` |
//! | `casts-received` | replies how many casts it has handled |
//! | `spam N` | writes N numbered lines to stdout and logs N more at INFO; replies `ok` |
//! | `print TEXT` | writes TEXT and a newline to stdout and to stderr; replies `ok` |
//! | anything else | replies it back |

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

wit_bindgen::generate!({ world: "durable-worker", path: "../../../wit/worker@0.1.0", generate_all });

/// `wasi:config/store`, the kind's configuration.
mod config {
    wit_bindgen::generate!({ world: "imports", path: "../../../wit/wasi-config@0.2.0-rc.1" });
}

use exports::wasmnode::worker::handler::Guest;
use wasmnode::worker::cluster;
use wasmnode::worker::log::{log, Level};
use wasmnode::worker::types::{CallError, Info, Name, StartError};

static EVENTS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static COUNT: AtomicU64 = AtomicU64::new(0);
static CASTS: AtomicU64 = AtomicU64::new(0);
static HELD: Mutex<Vec<wasi::http::types::Fields>> = Mutex::new(Vec::new());
static BALLAST: Mutex<Vec<u8>> = Mutex::new(Vec::new());

fn reply_text(r: Result<Vec<u8>, CallError>) -> String {
    match r {
        Ok(r) => String::from_utf8_lossy(&r).to_string(),
        Err(CallError::NotFound) => "error: not found".into(),
        Err(CallError::Timeout) => "error: timeout".into(),
        Err(CallError::Failed(f)) => format!("error: failed: {f}"),
        Err(CallError::Unavailable(u)) => format!("error: unavailable: {u}"),
    }
}

struct Probe;

impl Guest for Probe {
    fn init(args: Vec<u8>, handoff_state: Option<Vec<u8>>) -> Result<(), String> {
        let state = handoff_state.unwrap_or_default();
        let (count, ballast) = match state.iter().position(|b| *b == b'\n') {
            Some(at) => (&state[..at], &state[at + 1..]),
            None => (&state[..], &[][..]),
        };
        COUNT.store(std::str::from_utf8(count).ok().and_then(|c| c.parse().ok()).unwrap_or(0), Relaxed);
        *BALLAST.lock().unwrap() = ballast.to_vec();
        match args.as_slice() {
            b"refuse" => Err("refusing to start on purpose".into()),
            b"trap" => panic!("trapping in init on purpose"),
            _ => Ok(()),
        }
    }

    fn handle_call(msg: Vec<u8>) -> Result<Vec<u8>, String> {
        let text = String::from_utf8_lossy(&msg).to_string();
        let mut words = text.splitn(3, ' ');
        let reply = match words.next().unwrap_or("") {
            "events" => EVENTS.lock().unwrap().join("\n"),
            "whoami" => {
                let me = cluster::whoami();
                format!("{}/{}@{}", me.kind, me.key, cluster::node())
            }
            "members" => cluster::members().join(","),
            "call" => {
                let target = words.next().unwrap_or("");
                let (kind, key) = target.split_once('/').ok_or("call KIND/KEY MSG")?;
                let msg = words.next().unwrap_or("").as_bytes().to_vec();
                reply_text(cluster::call(&Name { kind: kind.into(), key: key.into() }, &msg, 2000))
            }
            "call-once" => {
                let id = words.next().unwrap_or("");
                let (target, msg) = words.next().unwrap_or("").split_once(' ').ok_or("call-once ID KIND/KEY MSG")?;
                let (kind, key) = target.split_once('/').ok_or("call-once ID KIND/KEY MSG")?;
                reply_text(cluster::call_once(&Name { kind: kind.into(), key: key.into() }, msg.as_bytes(), 15000, id))
            }
            "slow-add" => {
                let ms: u64 = words.next().and_then(|w| w.parse().ok()).ok_or("slow-add MS")?;
                let n = COUNT.fetch_add(1, Relaxed) + 1;
                log(Level::Info, &format!("slow-add {n} applied"));
                std::thread::sleep(std::time::Duration::from_millis(ms));
                n.to_string()
            }
            "count" => COUNT.load(Relaxed).to_string(),
            "http-get" => http("GET", words.next().unwrap_or(""), b""),
            "http-bench" => {
                // http-bench N URL: N sequential GETs, timed here, in the guest.
                let n: usize = words.next().and_then(|w| w.parse().ok()).ok_or("http-bench N URL")?;
                let url = words.next().unwrap_or("");
                let mut ns: Vec<u64> = Vec::with_capacity(n);
                for _ in 0..n {
                    let t = std::time::Instant::now();
                    let (status, _) = try_http("GET", url, b"")?;
                    if status != 200 {
                        return Err(format!("HTTP {status}"));
                    }
                    ns.push(t.elapsed().as_nanos() as u64);
                }
                ns.sort_unstable();
                format!("{} {}", ns[n / 2], ns[n * 99 / 100])
            }
            "http-spin" => {
                // http-spin MS URL: for MS ms, keeps one GET of URL in flight and
                // computes meanwhile, never blocking: it only asks whether the answer
                // has come (each time it has, it sends the next).
                let ms: u64 = words.next().and_then(|w| w.parse().ok()).ok_or("http-spin MS URL")?;
                let url = words.next().unwrap_or("");
                log(Level::Info, "computing while requests are under way");
                let (t, mut answered, mut x) = (std::time::Instant::now(), 0u64, 1u64);
                while t.elapsed() < std::time::Duration::from_millis(ms) {
                    let response = send("GET", url, b"")?;
                    let ready = response.subscribe();
                    while !ready.ready() {
                        for _ in 0..10_000 {
                            x = std::hint::black_box(x.wrapping_mul(3).wrapping_add(1));
                        }
                    }
                    drop(ready);
                    response.get().ok_or("no response")?.map_err(|()| "response taken")?.map_err(|e| format!("{e:?}"))?;
                    answered += 1;
                }
                format!("answered {answered}")
            }
            "host-spin" => {
                // host-spin MS: for MS ms, only asks the host for random bytes, so
                // that nearly all its time is spent in host calls that never wait.
                let ms: u64 = words.next().and_then(|w| w.parse().ok()).ok_or("host-spin MS")?;
                log(Level::Info, "having the host work");
                let (t, mut asked) = (std::time::Instant::now(), 0u64);
                while t.elapsed() < std::time::Duration::from_millis(ms) {
                    std::hint::black_box(wasi::random::random::get_random_bytes(64 << 10));
                    asked += 1;
                }
                format!("asked {asked}")
            }
            "http-post" => http("POST", words.next().unwrap_or(""), words.next().unwrap_or("").as_bytes()),
            "config" => match config::wasi::config::store::get(words.next().unwrap_or("")) {
                Ok(Some(v)) => v,
                Ok(None) => "none".into(),
                Err(e) => format!("error: {e:?}"),
            },
            "spam" => {
                let n: usize = words.next().and_then(|w| w.parse().ok()).ok_or("spam N")?;
                for i in 0..n {
                    println!("spam line {i}");
                    log(Level::Info, &format!("spam log {i}"));
                }
                "ok".into()
            }
            "print" => {
                let text = words.collect::<Vec<_>>().join(" ");
                println!("{text}");
                eprintln!("{text}");
                "ok".into()
            }
            "big" => {
                let mib: usize = words.next().and_then(|w| w.parse().ok()).ok_or("big MIB")?;
                "x".repeat(mib << 20)
            }
            "ballast" => {
                let mib: usize = words.next().and_then(|w| w.parse().ok()).ok_or("ballast MIB")?;
                let mut x = 0x9e37_79b9_7f4a_7c15u64;
                let bytes = (0..mib << 20)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect();
                *BALLAST.lock().unwrap() = bytes;
                "ok".into()
            }
            "start" => {
                let (kind, key) = words.next().unwrap_or("").split_once('/').ok_or("start KIND/KEY ARGS")?;
                match cluster::start(kind, key, words.next().unwrap_or("").as_bytes()) {
                    Ok(node) => format!("started on {node}"),
                    Err(StartError::AlreadyStarted(n)) => format!("error: already-started on {n}"),
                    Err(StartError::UnknownKind(k)) => format!("error: unknown-kind {k}"),
                    Err(StartError::Failed(f)) => format!("error: failed: {f}"),
                }
            }
            "bench" => {
                // bench N KIND/KEY: N sequential 16-byte calls, timed here, in the guest.
                let n: usize = words.next().and_then(|w| w.parse().ok()).ok_or("bench N KIND/KEY")?;
                // The rest of the words: `KIND/KEY` or `KIND/KEY MSG`.
                let rest = words.next().unwrap_or("");
                let (target, msg) = rest.split_once(' ').unwrap_or((rest, "0123456789abcdef"));
                let (kind, key) = target.split_once('/').ok_or("bench N KIND/KEY")?;
                let target = Name { kind: kind.into(), key: key.into() };
                let msg = msg.as_bytes();
                let mut ns: Vec<u64> = Vec::with_capacity(n);
                for _ in 0..n {
                    let t = std::time::Instant::now();
                    cluster::call(&target, msg, 5000).map_err(|e| format!("{e:?}"))?;
                    ns.push(t.elapsed().as_nanos() as u64);
                }
                ns.sort_unstable();
                format!("{} {}", ns[n / 2], ns[n * 99 / 100])
            }
            "timer" => {
                let ms: u32 = words.next().and_then(|w| w.parse().ok()).ok_or("timer MS PAYLOAD")?;
                cluster::send_after(ms, words.next().unwrap_or("").as_bytes());
                "ok".into()
            }
            "timers" => {
                // timers N MS BYTES: N timers of MS, each with a payload of BYTES bytes.
                // (`words` splits off two words at most: the rest is split here.)
                let args: Vec<usize> = words.flat_map(|w| w.split(' ')).map(|w| w.parse().map_err(|_| "timers N MS BYTES")).collect::<Result<_, _>>()?;
                let [count, ms, bytes] = args[..] else { return Err("timers N MS BYTES".into()) };
                let ms = ms as u32;
                let payload = vec![b't'; bytes];
                for _ in 0..count {
                    cluster::send_after(ms, &payload);
                }
                "ok".into()
            }
            "casts" => {
                let n: usize = words.next().and_then(|w| w.parse().ok()).ok_or("casts N KIND/KEY BYTES")?;
                let (target, bytes) = words.next().unwrap_or("").split_once(' ').ok_or("casts N KIND/KEY BYTES")?;
                let (kind, key) = target.split_once('/').ok_or("casts N KIND/KEY BYTES")?;
                let bytes: usize = bytes.parse().map_err(|_| "casts N KIND/KEY BYTES")?;
                let (target, payload) = (Name { kind: kind.into(), key: key.into() }, vec![b'c'; bytes]);
                let mut sent = 0;
                let mut refused = None;
                for _ in 0..n {
                    match cluster::cast(&target, &payload) {
                        Ok(()) => sent += 1,
                        Err(e) => {
                            refused = Some(reply_text(Err(e)));
                            break;
                        }
                    }
                }
                match refused {
                    None => format!("sent {sent}"),
                    Some(why) => format!("sent {sent}, then: {why}"),
                }
            }
            "hold" => {
                let n: usize = words.next().and_then(|w| w.parse().ok()).ok_or("hold N KIB")?;
                let kib: usize = words.next().and_then(|w| w.parse().ok()).ok_or("hold N KIB")?;
                let value = vec![b'v'; kib << 10];
                let mut held = HELD.lock().unwrap();
                for i in 0..n {
                    match wasi::http::types::Fields::from_list(&[("x-hold".to_string(), value.clone())]) {
                        Ok(f) => held.push(f),
                        Err(e) => return Ok(format!("error at {i}: {e:?}").into_bytes()),
                    }
                }
                format!("held {n}")
            }
            "casts-received" => CASTS.load(Relaxed).to_string(),
            "crash" => panic!("crashing on purpose"),
            "bomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "spin" => {
                log(Level::Info, "spinning");
                let mut x = 1u64;
                loop {
                    x = std::hint::black_box(x.wrapping_mul(3).wrapping_add(1));
                }
            }
            _ => text,
        };
        Ok(reply.into_bytes())
    }

    fn handle_cast(_msg: Vec<u8>) {
        CASTS.fetch_add(1, Relaxed);
    }

    fn handle_info(event: Info) {
        let line = match event {
            Info::NodeUp(n) => format!("up {n}"),
            Info::NodeDown(d) => format!("down {}: {}", d.node, d.reason),
            Info::Timer(p) => format!("timer {}", String::from_utf8_lossy(&p)),
        };
        EVENTS.lock().unwrap().push(line);
    }

    fn terminate(_reason: String) -> Option<Vec<u8>> {
        // Hands over no state, unless it holds a ballast: then its whole state.
        let ballast = !BALLAST.lock().unwrap().is_empty();
        ballast.then(<Probe as exports::wasmnode::worker::snapshot::Guest>::snapshot)
    }
}

impl exports::wasmnode::worker::snapshot::Guest for Probe {
    fn snapshot() -> Vec<u8> {
        let ballast = BALLAST.lock().unwrap();
        if ballast.is_empty() {
            return COUNT.load(Relaxed).to_string().into_bytes();
        }
        // Fixed width: a count that gains a digit does not shift the ballast (a replica
        // gets the block that changed, not the whole state).
        let mut state = format!("{:020}\n", COUNT.load(Relaxed)).into_bytes();
        state.extend_from_slice(&ballast);
        state
    }
}

export!(Probe);

/// One request through `wasi:http`: `STATUS BODY`, or `error: …`.
fn http(method: &str, url: &str, body: &[u8]) -> String {
    match try_http(method, url, body) {
        Ok((status, body)) => format!("{status} {}", String::from_utf8_lossy(&body)),
        Err(e) => format!("error: {e}"),
    }
}

fn try_http(method: &str, url: &str, body: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let response = send(method, url, body)?;
    response.subscribe().block();
    let response = response.get().ok_or("no response")?.map_err(|()| "response taken")?.map_err(|e| format!("{e:?}"))?;
    let status = response.status();
    let incoming = response.consume().map_err(|()| "consume")?;
    let stream = incoming.stream().map_err(|()| "response stream")?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(wasi::io::streams::StreamError::Closed) => break,
            Err(e) => return Err(format!("reading the body: {e:?}")),
        }
    }
    Ok((status, bytes))
}

/// Sends one request through `wasi:http`; its answer is to come.
fn send(method: &str, url: &str, body: &[u8]) -> Result<wasi::http::types::FutureIncomingResponse, String> {
    use wasi::http::outgoing_handler;
    use wasi::http::types::{Fields, Method, OutgoingBody, OutgoingRequest, Scheme};
    let (scheme, rest) = url.split_once("://").ok_or("give scheme://host[:port]/path")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    // With its length, so the body goes as one (not chunked).
    let headers = Fields::from_list(&[("content-length".to_string(), body.len().to_string().into_bytes())]).map_err(|e| format!("{e:?}"))?;
    let request = OutgoingRequest::new(headers);
    request.set_method(&if method == "POST" { Method::Post } else { Method::Get }).map_err(|()| "method")?;
    request.set_scheme(Some(&if scheme == "https" { Scheme::Https } else { Scheme::Http })).map_err(|()| "scheme")?;
    request.set_authority(Some(authority)).map_err(|()| "authority")?;
    request.set_path_with_query(Some(path)).map_err(|()| "path")?;
    let out = request.body().map_err(|()| "body")?;
    {
        let stream = out.write().map_err(|()| "body stream")?;
        if !body.is_empty() {
            stream.blocking_write_and_flush(body).map_err(|e| format!("writing the body: {e:?}"))?;
        }
    }
    OutgoingBody::finish(out, None).map_err(|e| format!("{e:?}"))?;
    outgoing_handler::handle(request, None).map_err(|e| format!("{e:?}"))
}
