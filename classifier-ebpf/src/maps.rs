//! Maps shared with the user-space loader, and helpers that update them.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use tollgate_classifier_common::{
    COUNTER_COUNT, Counter, DENIED_SENDS_CAPACITY, DeniedSend, EXECUTABLES_CAPACITY, ExeEntry,
    FAST_SOCKETS_CAPACITY, FLOW_EVENTS_SIZE, FLOW_OWNER_CAPACITY, FastPathConfig, FastSocket,
    FlowKey, KernelOffsets, OwnerRecord, SOCKET_OWNER_CAPACITY, VERDICTS_CAPACITY, VerdictKey,
    VerdictValue,
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

/// Settings of the fast path, written by the daemon.
#[map]
pub static FAST_PATH_CONFIG: Array<FastPathConfig> = Array::with_max_entries(1, 0);

/// Verdicts of the daemon's rules, applied at `connect()` and `sendmsg()`. When it is full the
/// least recently used verdicts go first, so that verdicts of retired generations, which no
/// lookup uses, make room for current ones.
#[map]
pub static VERDICTS: LruHashMap<VerdictKey, VerdictValue> =
    LruHashMap::with_max_entries(VERDICTS_CAPACITY, 0);

/// Executables that rules name, keyed by the hash of their path.
#[map]
pub static EXECUTABLES: HashMap<u64, ExeEntry> = HashMap::with_max_entries(EXECUTABLES_CAPACITY, 0);

/// Sockets that a verdict allowed at `connect()`, keyed by socket cookie. An entry is removed
/// when its socket closes; a full map makes later sockets take the path through the proxy.
#[map]
pub static FAST_SOCKETS: HashMap<u64, FastSocket> =
    HashMap::with_max_entries(FAST_SOCKETS_CAPACITY, 0);

/// UDP sends already reported as denied, so a flood of denied datagrams makes one event.
#[map]
pub static DENIED_SENDS: LruHashMap<DeniedSend, u8> =
    LruHashMap::with_max_entries(DENIED_SENDS_CAPACITY, 0);

/// Events of the flows the fast path decided, read by the daemon.
#[map]
pub static FLOW_EVENTS: RingBuf = RingBuf::with_byte_size(FLOW_EVENTS_SIZE, 0);

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
