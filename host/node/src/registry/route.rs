//! Routing: where a call or cast for a name goes from this node. A query of the table,
//! asked again after every change while the answer is [`Route::Wait`]; the driver's
//! call loop (and the simulation's) follow it with a hop limit.

use super::table::{Slot, StopWhy, Table};
use super::WorkerName;

/// Where a call for a name goes next.
#[derive(Debug, PartialEq, Eq)]
pub enum Route<M> {
    /// It runs here: into this mailbox.
    Here(M),
    /// It runs on (or belongs to) that node.
    Remote(String),
    /// It is starting or moving here, or lost and about to start again from a copy of
    /// its state: ask again when the table changes.
    Wait,
    /// It runs nowhere; this node owns it and its kind starts on call: start it here.
    Activate,
    /// It runs nowhere.
    NotFound,
}

impl<M: Clone + std::fmt::Debug, R: std::fmt::Debug> Table<M, R> {
    /// Where a call for `name` that reached this node goes. `from`: the node that sent
    /// it here; a name that runs nowhere this node knows of is not sent back to its
    /// owner when the owner is the sender (it would ask here again).
    pub fn route(&self, name: &WorkerName, from: Option<&str>) -> Route<M> {
        match self.local.get(name) {
            // Waiting for the state of an instance it stays over (see `Table::rival`).
            Some(Slot::Running { id, .. }) if self.rival.get(name).is_some_and(|(_, i)| i == id) => return Route::Wait,
            Some(Slot::Running { handle, .. }) => return Route::Here(handle.clone()),
            Some(Slot::Stopping { why: StopWhy::Duplicate { winner }, .. }) => return Route::Remote(winner.clone()),
            Some(Slot::Stopping { why: StopWhy::Asked(_), .. }) => return Route::NotFound,
            Some(_) => return Route::Wait,
            None => {}
        }
        // Where it moved or runs, by what this node knows — even back to the caller: the
        // caller may be where it went, its own table not there yet.
        let elsewhere = |n: &String| n != &self.me && self.connected(n);
        if let Some(to) = self.moved.get(name).filter(|n| elsewhere(n)) {
            return Route::Remote(to.clone());
        }
        if let Some(c) = self.directory.get(name).filter(|c| elsewhere(&c.node)) {
            return Route::Remote(c.node.clone());
        }
        if self.orphans.get(name).is_some_and(|o| o.pending()) || self.stale.contains_key(name) {
            // Lost, and what becomes of it is being decided here (see `Orphan::pending`);
            // or it runs on a node out of this one's reach (see `Table::runs_on`).
            return Route::Wait;
        }
        let owner = self.owner_of(name);
        if owner != self.me && Some(owner) != from {
            return Route::Remote(owner.to_string());
        }
        if !self.leaving && self.kinds.activate_on_call(&name.kind) {
            Route::Activate
        } else {
            Route::NotFound
        }
    }
}
