//! The wasmnode node host.
//!
//! Layers, each depending only on the ones above it:
//! - `wasmnode_proto` (its own crate): frames and the handshake, no I/O;
//! - [`dist`]: TCP connections, handshake I/O, heartbeats, fragments; [`refusals`]: how
//!   often a refused handshake is logged; [`tls`]: optional mutual TLS under the
//!   handshake ([`certs`] makes a development CA for it);
//! - [`membership`]: who is up, gossip for the full mesh, re-dial with backoff;
//! - [`registry`]: one instance per worker name cluster-wide, calls by name;
//! - [`control`]: the JSON control plane the CLI (a hidden node) talks to; [`http`]:
//!   the HTTP port (worker gateway);
//! - [`runtime`]: wasmtime, one module per WIT package (strategies, workers) and per capability;
//! - [`node`]: puts them together for `wasmnode run` and `wasmnode check`;
//! - [`config`] and [`name`]: the topology file and node names; [`resolve`]: uncached DNS;
//!   [`logging`] and [`telemetry`]: log lines, and traces over OTLP (off by default).

pub mod admission;
pub mod certs;
pub mod config;
pub mod control;
pub mod dist;
pub mod files;
pub mod http;
pub mod logging;
pub mod mailbox;
pub mod membership;
pub mod metrics;
pub mod name;
pub mod node;
pub mod outbound;
pub mod refusals;
pub mod registry;
pub mod resolve;
pub mod runtime;
pub mod sim;
pub mod telemetry;
pub mod time;
pub mod tls;
