//! A worker's sleeps: `wasi:clocks/monotonic-clock` as wasmtime-wasi serves it, except
//! that a sleep ends early once this node, leaving, cuts its instances' waits short
//! ([`Hurry`]). A guest that sleeps inside a message would otherwise hold its stop, and
//! so its state, past the handoff deadline. `now` and `resolution` are wasmtime-wasi's,
//! and so is a sleep that is already due (which yields once, so that a guest polling in
//! a loop does not starve the node's sockets).

use std::time::Duration;

use wasmtime::component::{HasData, Linker, Resource};
use wasmtime_wasi::clocks::WasiClocksCtxView;
use wasmtime_wasi::p2::bindings::clocks::monotonic_clock::{self, Host};
use wasmtime_wasi::p2::{subscribe, DynPollable, Pollable};

use super::worker::WorkerState;
use crate::registry::Hurry;

/// The monotonic clock of one instance: its WASI clocks and table, and its [`Hurry`].
struct Sleeps<'a> {
    clocks: WasiClocksCtxView<'a>,
    hurry: &'a Hurry,
}

struct HasSleeps;

impl HasData for HasSleeps {
    type Data<'a> = Sleeps<'a>;
}

/// Replaces the monotonic clock that `wasmtime_wasi::p2::add_to_linker_async` added to
/// `linker` with [`Sleeps`].
pub fn shadow_monotonic_clock(linker: &mut Linker<WorkerState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let added = monotonic_clock::add_to_linker::<WorkerState, HasSleeps>(linker, |s| {
        let hurry = &s.cluster.hurry;
        let clocks = WasiClocksCtxView { ctx: s.wasi.clocks(), table: &mut s.table };
        Sleeps { clocks, hurry }
    });
    linker.allow_shadowing(false);
    added
}

/// A sleep of a guest, until `until` or until its node hurries.
struct Sleep {
    until: tokio::time::Instant,
    hurry: Hurry,
}

#[wasmtime_wasi::async_trait]
impl Pollable for Sleep {
    async fn ready(&mut self) {
        self.hurry.race(tokio::time::sleep_until(self.until), || ()).await
    }
}

impl Sleeps<'_> {
    fn sleep(&mut self, d: Duration) -> wasmtime::Result<Resource<DynPollable>> {
        // Due now: wasmtime-wasi's, which yields once.
        if d.is_zero() {
            return self.clocks.subscribe_duration(0);
        }
        // Beyond what an Instant holds: a century, where wasmtime-wasi's waits forever.
        let now = tokio::time::Instant::now();
        let until = now.checked_add(d).unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400));
        let sleep = self.clocks.table.push(Sleep { until, hurry: self.hurry.clone() })?;
        subscribe(self.clocks.table, sleep)
    }
}

impl Host for Sleeps<'_> {
    fn now(&mut self) -> wasmtime::Result<monotonic_clock::Instant> {
        self.clocks.now()
    }

    fn resolution(&mut self) -> wasmtime::Result<monotonic_clock::Duration> {
        self.clocks.resolution()
    }

    fn subscribe_instant(&mut self, when: monotonic_clock::Instant) -> wasmtime::Result<Resource<DynPollable>> {
        let now = self.clocks.now()?;
        self.sleep(Duration::from_nanos(when.saturating_sub(now)))
    }

    fn subscribe_duration(&mut self, duration: monotonic_clock::Duration) -> wasmtime::Result<Resource<DynPollable>> {
        self.sleep(Duration::from_nanos(duration))
    }
}
