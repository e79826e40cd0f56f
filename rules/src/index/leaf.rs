//! Leaves of the index: the rules filed under one subject class and one address key, in
//! precedence order.

use crate::{
    index::address_table::Probe, matching::subject_matches, model::Rule, precedence::Precedence,
};

/// Storage of the rules, indexed by slot number. A `None` slot is free.
pub(crate) type Slots = Vec<Option<Rule>>;

/// A rule in a leaf: its sort key and its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Entry {
    pub(crate) key: Precedence,
    pub(crate) slot: u32,
}

/// Entries sorted by key, so that the first entry whose remaining conditions hold wins.
#[derive(Debug, Clone, Default)]
pub(crate) struct Leaf(Vec<Entry>);

impl Leaf {
    pub(crate) fn insert(&mut self, entry: Entry) {
        // Most leaves hold one or two entries, so small leaves grow one entry at a time
        // instead of by the default minimum of four.
        if self.0.len() < 4 {
            self.0.reserve_exact(1);
        }
        let position = self.0.partition_point(|existing| *existing < entry);
        self.0.insert(position, entry);
    }

    pub(crate) fn remove(&mut self, slot: u32) {
        self.0.retain(|entry| entry.slot != slot);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Returns the first entry, in precedence order, whose rule is in force at the probe's
    /// time and whose subject, port and protocol conditions hold. The address condition holds
    /// for every entry of the leaf.
    pub(crate) fn first_match(&self, probe: &Probe<'_, '_>) -> Option<Entry> {
        self.0.iter().copied().find(|entry| {
            let Some(Some(rule)) = probe.slots.get(entry.slot as usize) else {
                return false;
            };
            let connection = probe.connection;
            !rule.lifetime.is_expired(probe.now)
                && rule.destination.port.contains(connection.port)
                && rule.destination.protocol.contains(connection.protocol)
                && subject_matches(&rule.subject, connection, probe.executable_checked)
        })
    }
}
