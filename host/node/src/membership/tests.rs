//! The membership's state machine, without sockets: one test per family of transitions.

use super::view::{DialResult, Input, Names, Output, View, BACKOFF_MAX_MS, BACKOFF_START_MS};
use super::MemberChange;
use crate::dist::DownReason;

fn view(full_mesh: bool) -> View {
    View::new("a@h", full_mesh)
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn list(l: &[&str]) -> Names {
    names(l).into()
}

fn up(v: &mut View, node: &str, conn: u64) -> Vec<Output> {
    v.handle(Input::Connected { node: node.into(), conn, since_ms: 7 })
}

fn dials(out: &[Output]) -> Vec<String> {
    out.iter().filter_map(|o| if let Output::Dial(n) = o { Some(n.clone()) } else { None }).collect()
}

fn changes(out: &[Output]) -> Vec<MemberChange> {
    out.iter().filter_map(|o| if let Output::Changed(c) = o { Some(c.clone()) } else { None }).collect()
}

fn failed(error: &str) -> DialResult {
    DialResult::Failed { error: error.into(), refused: false }
}

#[test]
fn a_connection_makes_a_member_and_its_list_is_gossiped() {
    let mut v = view(true);
    let out = up(&mut v, "b@h", 1);
    assert_eq!(out, vec![Output::Changed(MemberChange::Up { node: "b@h".into(), conn: 1 }), Output::Gossip(list(&["a@h", "b@h"]))]);
    assert_eq!(v.members().get("b@h").map(|m| (m.conn, m.since_ms)), Some((1, 7)));
}

#[test]
fn a_down_of_an_earlier_connection_changes_nothing() {
    let mut v = view(true);
    up(&mut v, "b@h", 1);
    up(&mut v, "b@h", 2);
    assert!(v.handle(Input::Disconnected { node: "b@h".into(), conn: 1, reason: DownReason::ConnectionClosed }).is_empty());
    assert!(v.members().contains_key("b@h"));
    let out = v.handle(Input::Disconnected { node: "b@h".into(), conn: 2, reason: DownReason::HeartbeatTimeout });
    assert_eq!(changes(&out), vec![MemberChange::Down { node: "b@h".into(), conn: 2, reason: DownReason::HeartbeatTimeout }]);
    assert_eq!(out.last(), Some(&Output::Gossip(list(&["a@h"]))));
    assert!(v.members().is_empty());
}

#[test]
fn a_leaver_stops_being_a_member_at_once_and_its_close_is_gone() {
    let mut v = view(true);
    v.handle(Input::Discovered { topology: "t".into(), names: names(&["b@h"]) });
    up(&mut v, "b@h", 3);
    // A leave on a stale connection is nothing.
    assert!(v.handle(Input::Leaving { node: "b@h".into(), conn: 2 }).is_empty());
    let out = v.handle(Input::Leaving { node: "b@h".into(), conn: 3 });
    assert_eq!(changes(&out), vec![MemberChange::Leaving { node: "b@h".into(), conn: 3 }]);
    assert!(v.has_left("b@h") && v.members().is_empty());
    let out = v.handle(Input::Disconnected { node: "b@h".into(), conn: 3, reason: DownReason::ConnectionClosed });
    assert_eq!(out, vec![Output::Changed(MemberChange::Gone { node: "b@h".into(), conn: 3 })]);
    // It is not re-dialled though discovery lists it...
    assert!(dials(&v.handle(Input::Tick { now_ms: 10_000 })).is_empty());
    // ...until it connects again on its own.
    up(&mut v, "b@h", 4);
    assert!(!v.has_left("b@h"));
}

#[test]
fn a_down_that_says_left_is_not_redialled() {
    let mut v = view(true);
    v.handle(Input::Discovered { topology: "t".into(), names: names(&["b@h"]) });
    up(&mut v, "b@h", 1);
    v.handle(Input::Disconnected { node: "b@h".into(), conn: 1, reason: DownReason::Left });
    assert!(v.has_left("b@h"));
    assert!(dials(&v.handle(Input::Tick { now_ms: 0 })).is_empty());
}

#[test]
fn a_failed_dial_backs_off_doubling_up_to_the_maximum() {
    let mut v = view(false);
    v.handle(Input::Discovered { topology: "t".into(), names: names(&["b@h"]) });
    let mut now = 0;
    let mut waits = Vec::new();
    for _ in 0..10 {
        assert_eq!(dials(&v.handle(Input::Tick { now_ms: now })), names(&["b@h"]));
        // Dialling: not again until it ends.
        assert!(dials(&v.handle(Input::Tick { now_ms: now + 100_000 })).is_empty());
        let out = v.handle(Input::Dialled { node: "b@h".into(), result: failed("refused"), now_ms: now });
        let Some(Output::Unreachable { retry_in_ms, .. }) = out.first() else { panic!("{out:?}") };
        waits.push(*retry_in_ms);
        assert!(dials(&v.handle(Input::Tick { now_ms: now + retry_in_ms - 1 })).is_empty());
        now += retry_in_ms;
    }
    assert_eq!(waits[..4], [BACKOFF_START_MS, 2 * BACKOFF_START_MS, 4 * BACKOFF_START_MS, 8 * BACKOFF_START_MS]);
    assert_eq!(*waits.last().unwrap(), BACKOFF_MAX_MS);
}

#[test]
fn a_repeated_error_is_flagged_and_a_new_one_is_not() {
    let mut v = view(false);
    v.handle(Input::Discovered { topology: "t".into(), names: names(&["b@h"]) });
    let mut flags = Vec::new();
    for (i, e) in ["refused", "refused", "cookie", "cookie"].iter().enumerate() {
        let now = i as u64 * 10_000;
        v.handle(Input::Tick { now_ms: now });
        let out = v.handle(Input::Dialled { node: "b@h".into(), result: failed(e), now_ms: now });
        let Some(Output::Unreachable { repeated, .. }) = out.first() else { panic!("{out:?}") };
        flags.push(*repeated);
    }
    assert_eq!(flags, [false, true, false, true]);
}

#[test]
fn a_simultaneous_connect_is_looked_at_again_shortly_without_counting_as_a_failure() {
    let mut v = view(false);
    v.handle(Input::Discovered { topology: "t".into(), names: names(&["b@h"]) });
    v.handle(Input::Tick { now_ms: 0 });
    assert!(v.handle(Input::Dialled { node: "b@h".into(), result: DialResult::Busy, now_ms: 0 }).is_empty());
    assert!(!v.settled(1), "a busy dial is not a try that ended");
    assert!(dials(&v.handle(Input::Tick { now_ms: BACKOFF_START_MS - 1 })).is_empty());
    assert_eq!(dials(&v.handle(Input::Tick { now_ms: BACKOFF_START_MS })), names(&["b@h"]));
}

#[test]
fn with_full_mesh_the_names_members_list_are_dialled_and_without_they_are_not() {
    for full_mesh in [true, false] {
        let mut v = view(full_mesh);
        v.handle(Input::Discovered { topology: "t".into(), names: names(&["b@h"]) });
        up(&mut v, "b@h", 1);
        v.handle(Input::Gossip { from: "b@h".into(), names: list(&["b@h", "a@h", "c@h"]) });
        // A list from a node that is not a member is not taken.
        v.handle(Input::Gossip { from: "x@h".into(), names: list(&["d@h"]) });
        let want = if full_mesh { names(&["c@h"]) } else { Vec::new() };
        assert_eq!(dials(&v.handle(Input::Tick { now_ms: 0 })), want, "full_mesh = {full_mesh}");
    }
}

#[test]
fn a_poll_that_finds_fewer_names_disconnects_nobody() {
    let mut v = view(false);
    v.handle(Input::Discovered { topology: "t".into(), names: names(&["b@h", "c@h"]) });
    up(&mut v, "b@h", 1);
    let out = v.handle(Input::Discovered { topology: "t".into(), names: Vec::new() });
    assert!(out.is_empty());
    assert!(v.members().contains_key("b@h"));
}

#[test]
fn a_leaving_node_dials_nobody() {
    let mut v = view(true);
    v.handle(Input::Discovered { topology: "t".into(), names: names(&["b@h", "c@h"]) });
    v.handle(Input::Leave);
    assert!(v.leaving());
    assert!(v.handle(Input::Tick { now_ms: 0 }).is_empty());
}

#[test]
fn settled_waits_for_every_topology_and_a_try_of_every_name() {
    let mut v = view(false);
    assert!(!v.settled(1), "no topology answered");
    v.handle(Input::Discovered { topology: "t".into(), names: names(&["a@h", "b@h", "c@h"]) });
    assert!(!v.settled(2), "one of two topologies answered");
    assert!(!v.settled(1));
    up(&mut v, "b@h", 1);
    assert!(!v.settled(1), "c@h not tried yet");
    v.handle(Input::Tick { now_ms: 0 });
    v.handle(Input::Dialled { node: "c@h".into(), result: failed("refused"), now_ms: 0 });
    assert!(v.settled(1));
}

/// A core loop that panics, or returns, is reported as stopped, with which one and how;
/// one still running is not.
#[tokio::test]
async fn a_core_loop_that_panics_or_ends_is_reported_stopped() {
    use std::sync::Arc;
    use std::time::Duration;

    use super::CoreStop;

    let core = Arc::new(CoreStop::default());
    let waiting = tokio::spawn({
        let core = core.clone();
        async move { core.stopped().await }
    });
    let running = core.watch("still running");
    // (The test's runtime has one thread: each yield lets the waiter run.)
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(!waiting.is_finished(), "nothing has stopped yet");
    let task = core.watch("event loop");
    let panicked = tokio::spawn(async move {
        let _task = task;
        panic!("a bug under the table's lock");
    });
    assert!(panicked.await.unwrap_err().is_panic());
    let why = tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("the waiter is woken").unwrap();
    assert_eq!(why, "the event loop panicked");
    // The first stop is the one reported; a loop that returns says it ended.
    drop(running);
    assert_eq!(core.stopped().await, "the event loop panicked");
    let other = Arc::new(CoreStop::default());
    drop(other.watch("re-dial loop"));
    assert_eq!(other.stopped().await, "the re-dial loop ended");
}
