//! `wasmnode`: run a node, check a topology, or act on a running cluster as a hidden
//! node authenticated by the cookie (Erlang's remote console).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use tokio::sync::mpsc;
use wasmnode::config::{Config, CookieSource, Overrides, DEFAULT_COOKIE_ENV};
use wasmnode::dist::{Dist, DistConfig, Peer};
use wasmnode::time::rfc3339;
use wasmnode_proto::Frame;

#[derive(Parser)]
#[command(name = "wasmnode", version, about = "A node host for WebAssembly applications")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node from a topology file.
    Run {
        #[arg(long)]
        config: PathBuf,
        /// Node name (basename@host[:port]); overrides [node].name.
        #[arg(long)]
        name: Option<String>,
        /// Listen address (ip:port); overrides [node].listen.
        #[arg(long)]
        listen: Option<String>,
    },
    /// Validate a topology and its plugins without starting.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Print a running node's members, or stream its node-up / node-down events.
    Nodes {
        /// The node to ask.
        #[arg(long)]
        node: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Keep streaming node-up and node-down events until interrupted.
        #[arg(long)]
        watch: bool,
        /// Take the cookie source from this topology file instead of WASMNODE_COOKIE.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run { config, name, listen } => {
                init_logging();
                let cfg = Config::load(&config, &Overrides { name, listen }).map_err(|e| anyhow!("{e}"))?;
                wasmnode::node::run(cfg).await
            }
            Command::Check { config } => {
                let cfg = Config::load(&config, &Overrides::default()).map_err(|e| anyhow!("{e}"))?;
                let errors = tokio::task::spawn_blocking(move || wasmnode::node::check(&cfg)).await?;
                if errors.is_empty() {
                    println!("{}: ok", config.display());
                    Ok(())
                } else {
                    for e in &errors {
                        eprintln!("error: {e}");
                    }
                    Err(anyhow!("{} problem(s) in {}", errors.len(), config.display()))
                }
            }
            Command::Nodes { node, json, watch, config } => nodes(node, json, watch, config).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_logging() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_ansi(std::io::stderr().is_terminal()).with_writer(std::io::stderr).init();
}

/// Connects to `node` as a hidden node with the cookie.
async fn connect_hidden(node: &str, config: Option<PathBuf>) -> anyhow::Result<Peer> {
    let source = match config {
        Some(path) => Config::load(&path, &Overrides::default()).map_err(|e| anyhow!("{e}"))?.node.cookie,
        None => CookieSource::Env(DEFAULT_COOKIE_ENV.into()),
    };
    let cookie = source.resolve().map_err(|e| anyhow!(e))?;
    let me = format!("wasmnode-cli-{}@127.0.0.1", std::process::id());
    let (tx, _rx) = mpsc::unbounded_channel();
    let dist = Dist::new(DistConfig { hidden: true, ..DistConfig::new(me, cookie) }, tx);
    // The events receiver is dropped: the CLI only reads replies, which dist routes itself.
    dist.connect(node).await.with_context(|| format!("cannot connect to {node}"))
}

async fn nodes(node: String, json: bool, watch: bool, config: Option<PathBuf>) -> anyhow::Result<()> {
    let peer = connect_hidden(&node, config).await?;
    if !watch {
        let body = peer.request(Bytes::from_static(br#"{"op":"nodes"}"#), Duration::from_secs(5)).await?;
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        if json {
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            print_members(&v);
        }
        return Ok(());
    }
    let mut replies = peer.subscribe(Bytes::from_static(br#"{"op":"watch"}"#));
    let mut first = true;
    while let Some(Frame::Reply { body, .. }) = replies.recv().await {
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        if json {
            println!("{}", serde_json::to_string(&v)?);
        } else if first {
            print_members(&v);
        } else {
            let at = rfc3339(v["at_ms"].as_u64().unwrap_or(0));
            let who = v["node"].as_str().unwrap_or("?");
            match v["event"].as_str() {
                Some("up") => println!("{at} node up {who}"),
                Some("down") => println!("{at} node down {who}: {}", v["reason"].as_str().unwrap_or("?")),
                _ => println!("{v}"),
            }
        }
        first = false;
    }
    Err(anyhow!("connection to {node} closed"))
}

fn print_members(v: &serde_json::Value) {
    let empty = Vec::new();
    let members = v["members"].as_array().unwrap_or(&empty);
    println!("{} members of {}:", members.len(), v["node"].as_str().unwrap_or("?"));
    for m in members {
        let since = rfc3339(m["since_ms"].as_u64().unwrap_or(0));
        let me = if m["self"].as_bool() == Some(true) { "  (this node)" } else { "" };
        println!("  {:<40} since {since}{me}", m["name"].as_str().unwrap_or("?"));
    }
}
