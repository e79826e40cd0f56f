//! Maps shared with the user-space loader, and helpers that update them.

use aya_ebpf::{
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray},
};
use tollgate_classifier_common::{
    COUNTER_COUNT, Counter, FLOW_OWNER_CAPACITY, FlowKey, KernelOffsets, OwnerRecord,
    SOCKET_OWNER_CAPACITY,
};

/// Owner of each flow, keyed by the flow's addresses as they appear on the wire.
#[map]
pub static FLOW_OWNER: LruHashMap<FlowKey, OwnerRecord> =
    LruHashMap::with_max_entries(FLOW_OWNER_CAPACITY, 0);

/// Owner of each open socket that called `connect()` or `sendmsg()`, keyed by socket cookie.
#[map]
pub static SOCKET_OWNER: LruHashMap<u64, OwnerRecord> =
    LruHashMap::with_max_entries(SOCKET_OWNER_CAPACITY, 0);

/// Event counters indexed by [`Counter`].
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

/// Kernel struct offsets written by the loader before it attaches the programs.
#[map]
pub static KERNEL_OFFSETS: Array<KernelOffsets> = Array::with_max_entries(1, 0);

/// One all-zero [`OwnerRecord`] that is never written. A new socket entry is inserted as a copy
/// of it and then filled in place, because the record does not fit on the 512-byte BPF stack.
#[map]
pub static EMPTY_OWNER: Array<OwnerRecord> = Array::with_max_entries(1, 0);

/// Adds one to `counter` on the current CPU.
#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(value) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: the pointer comes from a successful lookup in a per-CPU array, so it is valid
        // and only this CPU writes it, because BPF programs do not migrate while they run.
        unsafe { *value += 1 };
    }
}

/// Stores `owner` as the owner of `key`, unless the entry already names the same socket and
/// process.
///
/// Skipping the identical update keeps the cost of a busy UDP socket at one lookup per
/// datagram.
#[inline(always)]
pub fn record_flow(key: &FlowKey, owner: &OwnerRecord) {
    if let Some(existing) = FLOW_OWNER.get_ptr(key) {
        // SAFETY: the pointer comes from a successful map lookup and is valid for this
        // program run. A concurrent update can only change the value read, not its validity.
        let (existing_cookie, existing_pid) =
            unsafe { ((*existing).socket_cookie, (*existing).pid) };
        if existing_cookie == owner.socket_cookie && existing_pid == owner.pid {
            return;
        }
    }
    match FLOW_OWNER.insert(key, owner, 0) {
        Ok(()) => count(Counter::FlowRecorded),
        Err(_) => count(Counter::FlowUpdateFailed),
    }
}
