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

/// Returns the boot id of the running kernel, which changes at every boot, or `None` when
/// `/proc/sys/kernel/random/boot_id` cannot be read.
pub fn boot_id() -> Option<String> {
    let text = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(text.trim().to_owned())
}

/// Returns milliseconds since boot on `CLOCK_BOOTTIME`, which keeps counting while the machine
/// is suspended.
pub fn boottime_ms() -> u64 {
    // Linux has CLOCK_BOOTTIME since 2.6.39. Without it, the monotonic clock is the closest
    // one, though it stops during suspend.
    let time =
        clock_gettime(ClockId::CLOCK_BOOTTIME).or_else(|_| clock_gettime(ClockId::CLOCK_MONOTONIC));
    match time {
        Ok(time) => {
            let secs = u64::try_from(time.tv_sec()).unwrap_or(0);
            let millis = u64::try_from(time.tv_nsec() / 1_000_000).unwrap_or(0);
            secs.saturating_mul(1000).saturating_add(millis)
        }
        Err(_) => 0,
    }
}
