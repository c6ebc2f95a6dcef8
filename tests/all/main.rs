//! wasmnode's integration tests: one binary, one module per area (wasmtime's
//! `tests/all` layout). Every cluster test runs real `wasmnode` processes talking real
//! TCP on its own loopback subnet; fixtures are built by `./dev test` and a missing one
//! fails with the command that builds it.

mod check;
mod cluster;
mod containers;
mod discovery;
mod dns;
mod docs;
mod durable;
mod faults;
mod handoff;
mod http;
mod kubernetes;
mod ops;
mod outbound;
mod partition;
mod tls;
mod traces;
mod wire;
mod workers;
