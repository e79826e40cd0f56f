//! Background work on rules: removing rules whose lifetime ended, and saving hit counts.

use std::{sync::Arc, time::Duration};

use tracing::{error, info};

use super::Shared;
use crate::{clock, process::is_running};

/// How often ended rules are looked for. A rule that lasts until a process exits can outlive
/// the process by this much. Timed rules stop matching in the daemon on time regardless, and
/// their kernel verdicts go with the sweep that removes them.
const SWEEP_INTERVAL: Duration = Duration::from_millis(500);

/// How often changed hit counts are written to the rule store.
const HIT_SAVE_INTERVAL: Duration = Duration::from_secs(5);

/// Removes ended rules every [`SWEEP_INTERVAL`] until the task is aborted.
pub(super) async fn remove_ended_rules(shared: Arc<Shared>) {
    let mut interval = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        interval.tick().await;
        shared.remove_ended_rules();
    }
}

/// Saves hit counts every [`HIT_SAVE_INTERVAL`] until the task is aborted.
pub(super) async fn save_hits(shared: Arc<Shared>) {
    let mut interval = tokio::time::interval(HIT_SAVE_INTERVAL);
    loop {
        interval.tick().await;
        shared.flush_hits();
    }
}

impl Shared {
    /// Removes the rules whose lifetime ended by the clock or by their process's exit.
    pub(super) fn remove_ended_rules(&self) {
        let now = clock::now();
        let mut state = self.lock();
        match state.book.remove_ended(&now, is_running) {
            Ok(removed) => {
                for rule in &removed {
                    info!(rule = %rule.id, lifetime = %rule.lifetime, "rule ended");
                }
                if !removed.is_empty() {
                    self.rules_changed(&state);
                }
            }
            Err(err) => error!(error = %err, "failed to remove ended rules"),
        }
    }

    /// Writes changed hit counts to the rule store.
    pub(super) fn flush_hits(&self) {
        if let Err(err) = self.lock().book.flush_hits() {
            error!(error = %err, "failed to save hit counts; they stay in memory and are retried");
        }
    }
}
