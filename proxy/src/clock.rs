//! Reading the clocks that rules expire by.

use std::time::SystemTime;

use nix::time::{ClockId, clock_gettime};
use tollgate_rules::Clock;

use crate::holding::unix_ms;

/// Returns the current wall-clock and boot-clock readings.
pub fn now() -> Clock {
    Clock {
        unix_ms: unix_ms(SystemTime::now()),
        boottime_ms: boottime_ms(),
    }
}

/// Returns milliseconds since boot on `CLOCK_BOOTTIME`, which keeps counting while the machine
/// is suspended.
pub fn boottime_ms() -> u64 {
    // CLOCK_BOOTTIME exists since Linux 2.6.39, so reading it fails only on an older kernel.
    match clock_gettime(ClockId::CLOCK_BOOTTIME) {
        Ok(time) => {
            let secs = u64::try_from(time.tv_sec()).unwrap_or(0);
            let millis = u64::try_from(time.tv_nsec() / 1_000_000).unwrap_or(0);
            secs.saturating_mul(1000).saturating_add(millis)
        }
        Err(_) => 0,
    }
}
