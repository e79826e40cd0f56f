//! The fast path: the daemon's verdicts applied at `connect()` and `sendmsg()`, and the events
//! and byte counts of the sockets they allowed.
//!
//! An allowed `connect()` puts the daemon's bypass mark on the socket, so nftables lets its
//! packets pass without the detour through the proxy, and adds the socket to the fast socket
//! map. A denied one fails with `EPERM`. `sock_ops`, `egress`, `ingress` and `sock_release`
//! report the start and end of each fast socket's flow on the event ring, with its bytes.
//! Events wake no reader: the daemon drains the ring on a timer, so a busy machine does not
//! wake it for each connection.

use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_xadd},
};

use aya_ebpf::{
    EbpfContext as _,
    bindings::BPF_RB_NO_WAKEUP,
    helpers::generated::{bpf_probe_read_kernel, bpf_setsockopt},
    programs::SockAddrContext,
};
use tollgate_classifier_common::{
    AF_INET, AF_INET6, Counter, DeniedSend, EVENT_CLOSED, EVENT_DENIED, EVENT_FLAG_FAILED,
    EVENT_OPENED, EXE_HASH_SEED, EXE_WORDS, FastSocket, FlowEvent, FlowEventWithOwner, FlowKey,
    IPPROTO_TCP, IPPROTO_UDP, OWNER_EXE_COMPLETE, OWNER_EXE_TRUNCATED, OwnerRecord, VERDICT_ALLOW,
    VERDICT_DENY, VerdictKey, VerdictValue, exe_hash_word,
};

use crate::{
    maps::{
        DENIED_SENDS, EXECUTABLES, FAST_PATH_CONFIG, FAST_SOCKETS, FLOW_EVENTS, VERDICTS, count,
    },
    owner::RecordedSocket,
};

/// Return value of a `cgroup/connect*` or `cgroup/sendmsg*` program that lets the call go on.
pub const ALLOW: i32 = 1;
/// Return value that makes the call fail with `EPERM`.
const DENY: i32 = 0;

const SOL_SOCKET: i32 = 1;
const SO_MARK: i32 = 36;

/// Address family of a `cgroup/connect*` or `cgroup/sendmsg*` program. The verifier lets the
/// IPv4 programs read only the IPv4 address of the context and the IPv6 programs only the IPv6
/// one, so each program passes its own family as a constant.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// Applies the verdict for a `connect()`: marks an allowed socket, rejects a denied one, and
/// ends the fast flow of a socket that connects again. Returns the program's return value.
#[inline(always)]
pub fn decide_connect(ctx: &SockAddrContext, socket: &RecordedSocket, family: Family) -> i32 {
    let Some(request) = Request::read(ctx, socket, family) else {
        return ALLOW;
    };
    let verdict = request.verdict();

    // A UDP socket may connect again: its earlier flow ends here.
    if let Some(socket) = request.fast {
        finish(request.cookie, socket);
        if verdict.action != VERDICT_ALLOW {
            let _ = set_mark(request.ctx, request.mark & !request.bypass_mark);
        }
    }

    match verdict.action {
        VERDICT_DENY => {
            count(Counter::KernelDenied);
            emit_denied(&request, verdict.rule_id);
            DENY
        }
        VERDICT_ALLOW => {
            begin(&request, verdict.rule_id);
            ALLOW
        }
        _ => ALLOW,
    }
}

/// Applies the verdict for a UDP send with a destination address. A denied send fails, and is
/// reported once per socket and destination. A fast socket's packets carry the bypass mark, so
/// its send to a destination without a verdict fails too, and the socket leaves the fast path.
/// Its later sends go through the proxy, which keeps them waiting for a decision.
#[inline(always)]
pub fn decide_send(ctx: &SockAddrContext, socket: &RecordedSocket, family: Family) -> i32 {
    let Some(request) = Request::read(ctx, socket, family) else {
        return ALLOW;
    };
    let verdict = request.verdict();
    match verdict.action {
        VERDICT_DENY => {
            count(Counter::KernelDenied);
            let send = DeniedSend {
                socket_cookie: request.cookie,
                destination: request.key,
            };
            if DENIED_SENDS.get_ptr(send).is_none() {
                let _ = DENIED_SENDS.insert(send, 1, 0);
                emit_denied(&request, verdict.rule_id);
            }
            DENY
        }
        VERDICT_ALLOW => ALLOW,
        _ => match request.fast {
            Some(socket) => {
                finish(request.cookie, socket);
                let _ = set_mark(request.ctx, request.mark & !request.bypass_mark);
                DENY
            }
            None => ALLOW,
        },
    }
}

/// Reports the start of a fast TCP socket's flow once its addresses are known. Returns whether
/// the socket is a fast socket.
#[inline(always)]
pub fn announce_tcp(cookie: u64, key: &FlowKey, owner: *const OwnerRecord) -> bool {
    let Some(socket) = FAST_SOCKETS.get_ptr_mut(cookie) else {
        return false;
    };
    // SAFETY: the pointer comes from a successful map lookup and stays valid for this run.
    let rule_id = unsafe {
        (*socket).announced = 1;
        (*socket).rule_id
    };
    emit_with_owner(&flow_event(EVENT_OPENED, cookie, rule_id, key), owner);
    true
}

/// The counters of a TCP socket when it closes, from its `bpf_sock_ops` context.
pub struct TcpCounters {
    /// `bytes_acked`: sequence numbers the peer acknowledged, SYN and FIN included.
    pub bytes_acked: u64,
    /// `bytes_received`: sequence numbers received in order, FIN included.
    pub bytes_received: u64,
    pub snd_una: u32,
    pub snd_nxt: u32,
    /// Whether the connection closed before it was established.
    pub failed: bool,
}

/// Notes that a fast TCP socket sent (`sent`) or received a segment with FIN.
#[inline(always)]
pub fn note_fin(cookie: u64, sent: bool) {
    if let Some(socket) = FAST_SOCKETS.get_ptr_mut(cookie) {
        // SAFETY: the pointer comes from a successful map lookup and stays valid for this run.
        // Each flag is one byte that only one direction of traffic writes.
        unsafe {
            if sent {
                (*socket).fin_sent = 1;
            } else {
                (*socket).fin_received = 1;
            }
        }
    }
}

/// Reports the end of a fast TCP socket's flow with the payload bytes it moved, and removes
/// the socket from the fast socket map.
///
/// The socket's counters count sequence numbers: the SYN once the connection is established,
/// the FIN it sent once acknowledged, which leaves nothing unacknowledged, and the FIN it
/// received. These are taken off to get payload bytes, as the relay counts them.
#[inline(always)]
pub fn close_tcp(cookie: u64, counters: &TcpCounters) {
    let Some(socket) = FAST_SOCKETS.get_ptr(cookie) else {
        return;
    };
    // SAFETY: the pointer comes from a successful map lookup and stays valid for this run.
    let socket = unsafe { *socket };
    if socket.announced != 0 {
        let syn = u64::from(!counters.failed);
        let fin_acked = socket.fin_sent != 0 && counters.snd_una == counters.snd_nxt;
        let bytes_up = counters
            .bytes_acked
            .saturating_sub(syn + u64::from(fin_acked));
        let bytes_down = counters
            .bytes_received
            .saturating_sub(u64::from(socket.fin_received != 0));
        let event = FlowEvent {
            kind: EVENT_CLOSED,
            flags: if counters.failed {
                EVENT_FLAG_FAILED
            } else {
                0
            },
            socket_cookie: cookie,
            rule_id: socket.rule_id,
            bytes_up,
            bytes_down,
            protocol: IPPROTO_TCP,
            ..FlowEvent::default()
        };
        emit(&event);
    }
    let _ = FAST_SOCKETS.remove(cookie);
}

/// Counts a UDP datagram that a fast socket sends, and reports the flow's start at the first.
#[inline(always)]
pub fn count_udp_sent(cookie: u64, key: &FlowKey, payload_len: u64, owner: *const OwnerRecord) {
    let Some(socket) = FAST_SOCKETS.get_ptr_mut(cookie) else {
        return;
    };
    // SAFETY: the pointer comes from a successful map lookup and stays valid for this run.
    let (rule_id, announced) = unsafe {
        add_atomically(&raw mut (*socket).bytes_up, payload_len);
        ((*socket).rule_id, (*socket).announced)
    };
    if announced == 0 {
        // NOTE: two threads that send the first datagrams of one socket at once may both get
        // here. The daemon ignores the second opened event of a socket.
        // SAFETY: as above.
        unsafe { (*socket).announced = 1 };
        emit_with_owner(&flow_event(EVENT_OPENED, cookie, rule_id, key), owner);
    }
}

/// Counts a UDP datagram that a fast socket sends after its first, and returns whether it did:
/// the flow is known then, so nothing else about the datagram needs recording. Returns `false`
/// for other sockets and for a fast socket's first datagram, which [`count_udp_sent`] handles.
#[inline(always)]
pub fn count_udp_sent_again(cookie: u64, payload_len: u64) -> bool {
    let Some(socket) = FAST_SOCKETS.get_ptr_mut(cookie) else {
        return false;
    };
    // SAFETY: the pointer comes from a successful map lookup and stays valid for this run.
    unsafe {
        if (*socket).announced == 0 {
            return false;
        }
        add_atomically(&raw mut (*socket).bytes_up, payload_len);
    }
    true
}

/// Counts a UDP datagram that a fast socket receives.
#[inline(always)]
pub fn count_udp_received(cookie: u64, payload_len: u64) {
    if let Some(socket) = FAST_SOCKETS.get_ptr_mut(cookie) {
        // SAFETY: the pointer comes from a successful map lookup and stays valid for this run.
        unsafe { add_atomically(&raw mut (*socket).bytes_down, payload_len) };
    }
}

/// Ends the fast flow of a socket being released, unless it is a TCP connection that has
/// started: that one ends when its state becomes `TCP_CLOSE`, which can come after the release.
#[inline(always)]
pub fn release(cookie: u64) {
    let Some(socket) = FAST_SOCKETS.get_ptr_mut(cookie) else {
        return;
    };
    // SAFETY: the pointer comes from a successful map lookup and stays valid for this run.
    let (protocol, announced) = unsafe { ((*socket).protocol, (*socket).announced) };
    if protocol == IPPROTO_TCP && announced != 0 {
        return;
    }
    finish(cookie, socket);
}

/// A `connect()` or `sendmsg()` the fast path may decide.
struct Request {
    ctx: *mut c_void,
    cookie: u64,
    /// The socket's mark before the call.
    mark: u32,
    bypass_mark: u32,
    generation: u32,
    owner: *const OwnerRecord,
    key: VerdictKey,
    /// Whether the daemon's table diverts the destination, so a verdict may apply to it.
    diverted: bool,
    /// The socket's entry if a verdict allowed it earlier.
    fast: Option<*mut FastSocket>,
}

impl Request {
    /// Reads the call, or returns `None` when the fast path is off, the socket belongs to
    /// another network namespace or to the daemon, or has no owner record.
    #[inline(always)]
    fn read(ctx: &SockAddrContext, socket: &RecordedSocket, family: Family) -> Option<Self> {
        let config = FAST_PATH_CONFIG.get(0)?;
        if config.enabled == 0 || socket.netns_cookie != config.netns_cookie {
            return None;
        }
        if socket.owner.is_null() {
            return None;
        }
        let (cookie, owner) = (socket.cookie, socket.owner);

        let mark = socket_mark(ctx);
        // A TCP socket is never in the map when it connects: a connection that ended, as
        // before a second `connect()`, left it when it closed.
        let fast = if socket_protocol(ctx) == IPPROTO_TCP {
            None
        } else {
            FAST_SOCKETS.get_ptr_mut(cookie)
        };
        // The daemon's own sockets carry the bypass mark from the start.
        if fast.is_none() && mark & config.bypass_mark == config.bypass_mark {
            return None;
        }
        // SAFETY: the pointer comes from a successful map lookup in this run and stays valid.
        let exe_id = executable_id(unsafe { &*owner }, config.executables);
        let (key, diverted) = destination(ctx, family, exe_id);
        Some(Self {
            ctx: ctx.as_ptr(),
            cookie,
            mark,
            bypass_mark: config.bypass_mark,
            generation: config.generation,
            owner,
            key,
            diverted,
            fast,
        })
    }

    /// Returns the current verdict for the call's executable and destination, with action
    /// zero when there is none.
    ///
    /// An `Option` here would carry uninitialized bytes in its `None`. LLVM may copy them from
    /// a register that a helper call has clobbered, and the verifier rejects such a read.
    #[inline(always)]
    fn verdict(&self) -> VerdictValue {
        let none = VerdictValue {
            rule_id: 0,
            generation: 0,
            action: 0,
            padding: [0; 3],
        };
        if !self.diverted {
            return none;
        }
        let Some(verdict) = VERDICTS.get_ptr(self.key) else {
            return none;
        };
        // SAFETY: the pointer comes from a successful map lookup and stays valid for this run.
        let verdict = unsafe { *verdict };
        if verdict.generation == self.generation {
            verdict
        } else {
            none
        }
    }
}

/// Reads the destination of the call as a verdict key, and whether the daemon's table diverts
/// it: loopback, multicast, broadcast and link-local destinations stay out, as in the table.
#[inline(always)]
fn destination(ctx: &SockAddrContext, family: Family, exe_id: u32) -> (VerdictKey, bool) {
    let addr = ctx.sock_addr;
    // SAFETY: every field below is a readable member of the `bpf_sock_addr` context, each read
    // with its own 4-byte load, as the verifier requires.
    let (protocol, port) = unsafe {
        (
            read_field(&raw const (*addr).protocol),
            read_field(&raw const (*addr).user_port),
        )
    };
    // `user_port` contains the port in network byte order in its low 16 bits.
    let port = u16::from_be(port as u16);
    let protocol = protocol as u8;
    let key = if family == Family::V4 {
        // SAFETY: as above.
        let address = unsafe { read_field(&raw const (*addr).user_ip4) };
        VerdictKey::ipv4(exe_id, protocol, address.to_ne_bytes(), port)
    } else {
        let mut address = [0u8; 16];
        // SAFETY: `user_ip6` is a member of the context; only its address is taken here.
        let words = unsafe { (&raw const (*addr).user_ip6).cast::<u32>() };
        for (index, chunk) in address.chunks_exact_mut(4).enumerate() {
            // SAFETY: `index < 4`, so the word lies inside `user_ip6`.
            let word = unsafe { read_field(words.add(index)) };
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        VerdictKey::ipv6(exe_id, protocol, address, port)
    };
    let diverted = (protocol == IPPROTO_TCP || protocol == IPPROTO_UDP) && is_diverted(&key);
    (key, diverted)
}

/// Returns whether the daemon's table diverts traffic to the key's destination.
#[inline(always)]
fn is_diverted(key: &VerdictKey) -> bool {
    let address = &key.dst_addr;
    if key.family == AF_INET {
        let broadcast = address[..4] == [255; 4];
        // 0.0.0.0/8 means this host to connect().
        let local = address[0] == 127 || address[0] == 0;
        let multicast = address[0] & 0xf0 == 224;
        return !(broadcast || local || multicast);
    }
    if key.family != AF_INET6 {
        return false;
    }
    let mut loopback = [0u8; 16];
    loopback[15] = 1;
    let unspecified = *address == [0; 16];
    let link_local = address[0] == 0xfe && address[1] & 0xc0 == 0x80;
    let multicast = address[0] == 0xff;
    !(*address == loopback || unspecified || link_local || multicast)
}

/// Returns the id of the owner's executable in the executable map, or zero when the map has no
/// entry with the same path or the path is unknown.
///
/// Both loops run over all [`EXE_WORDS`] words with no exit that depends on the data, which
/// the verifier walks once. The record's bytes past `exe_len` are zero
/// ([`crate::owner::record_socket_owner`] clears them), as in the daemon's entries.
#[inline(always)]
fn executable_id(owner: &OwnerRecord, executables: u32) -> u32 {
    let complete = owner.flags & OWNER_EXE_COMPLETE != 0;
    if executables == 0 || !complete || owner.flags & OWNER_EXE_TRUNCATED != 0 {
        return 0;
    }
    let words = owner.exe.as_ptr().cast::<u64>();
    let mut hash = EXE_HASH_SEED;
    for index in 0..EXE_WORDS {
        // SAFETY: `exe` is 8-byte aligned in the record and contains EXE_WORDS words.
        hash = exe_hash_word(hash, unsafe { words.add(index).read() });
    }
    let Some(entry) = EXECUTABLES.get_ptr(hash) else {
        return 0;
    };
    // SAFETY: the pointer comes from a successful map lookup and stays valid for this run.
    let entry = unsafe { &*entry };
    // The hash only finds the entry: another path with the same hash must not get its id.
    let entry_words = entry.exe.as_ptr().cast::<u64>();
    let mut difference = u64::from(entry.len ^ owner.exe_len);
    for index in 0..EXE_WORDS {
        // SAFETY: as above, for both records.
        difference |= unsafe { words.add(index).read() ^ entry_words.add(index).read() };
    }
    if difference == 0 { entry.id } else { 0 }
}

/// Adds the socket to the fast socket map and gives it the bypass mark. A socket that cannot
/// have both stays on the path through the proxy.
#[inline(always)]
fn begin(request: &Request, rule_id: u64) {
    let socket = FastSocket {
        rule_id,
        protocol: request.key.protocol,
        ..FastSocket::default()
    };
    if FAST_SOCKETS.insert(request.cookie, socket, 0).is_err() {
        count(Counter::FastSocketRejected);
        return;
    }
    if set_mark(request.ctx, request.mark | request.bypass_mark).is_err() {
        let _ = FAST_SOCKETS.remove(request.cookie);
        count(Counter::FastSocketRejected);
        return;
    }
    count(Counter::KernelAllowed);
}

/// Reports the end of a fast socket's flow if its start was reported, and removes the socket
/// from the fast socket map.
#[inline(always)]
fn finish(cookie: u64, socket: *mut FastSocket) {
    // SAFETY: the pointer comes from a successful map lookup and stays valid for this run.
    let socket = unsafe { *socket };
    if socket.announced != 0 {
        let event = FlowEvent {
            kind: EVENT_CLOSED,
            socket_cookie: cookie,
            rule_id: socket.rule_id,
            bytes_up: socket.bytes_up,
            bytes_down: socket.bytes_down,
            protocol: socket.protocol,
            ..FlowEvent::default()
        };
        emit(&event);
    }
    let _ = FAST_SOCKETS.remove(cookie);
}

fn emit_denied(request: &Request, rule_id: u64) {
    let key = &request.key;
    let event = FlowEvent {
        kind: EVENT_DENIED,
        socket_cookie: request.cookie,
        rule_id,
        dst_addr: key.dst_addr,
        dst_port: key.dst_port,
        family: key.family,
        protocol: key.protocol,
        ..FlowEvent::default()
    };
    emit_with_owner(&event, request.owner);
}

#[inline(always)]
fn flow_event(kind: u32, cookie: u64, rule_id: u64, key: &FlowKey) -> FlowEvent {
    FlowEvent {
        kind,
        socket_cookie: cookie,
        rule_id,
        src_addr: key.src_addr,
        dst_addr: key.dst_addr,
        src_port: key.src_port,
        dst_port: key.dst_port,
        family: key.family,
        protocol: key.protocol,
        ..FlowEvent::default()
    }
}

/// Puts `event` on the event ring, followed by a copy of `owner`.
fn emit_with_owner(event: &FlowEvent, owner: *const OwnerRecord) {
    let Some(mut entry) = FLOW_EVENTS.reserve::<FlowEventWithOwner>(0) else {
        count(Counter::FlowEventLost);
        return;
    };
    let record = entry.as_mut_ptr();
    // SAFETY: `record` points to ring memory reserved for one `FlowEventWithOwner`, and
    // `owner` to a map value of the socket map that stays valid for this run. The record does
    // not fit on the BPF stack, so the helper copies it from map to ring directly, and zeroes
    // the destination if the copy fails.
    unsafe {
        (&raw mut (*record).event).write(*event);
        bpf_probe_read_kernel(
            (&raw mut (*record).owner).cast(),
            size_of::<OwnerRecord>() as u32,
            owner.cast(),
        );
    }
    entry.submit(BPF_RB_NO_WAKEUP.into());
}

/// Puts `event` on the event ring.
fn emit(event: &FlowEvent) {
    if FLOW_EVENTS
        .output::<FlowEvent>(event, BPF_RB_NO_WAKEUP.into())
        .is_err()
    {
        count(Counter::FlowEventLost);
    }
}

/// Adds `value` to the counter at `counter`, which programs on other CPUs may update at the
/// same time.
///
/// The BPF target offers no atomic read-modify-write through `core::sync::atomic`, so this
/// uses the intrinsic, which LLVM lowers to the BPF atomic add instruction when, as here, the
/// previous value is not used.
///
/// # Safety
///
/// `counter` must point to a `u64` in map memory that stays valid for this run.
#[inline(always)]
unsafe fn add_atomically(counter: *mut u64, value: u64) {
    // SAFETY: guaranteed by the caller.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, value) };
}

/// Sets `SO_MARK` on the socket of a `bpf_sock_addr` context.
#[inline(always)]
fn set_mark(ctx: *mut c_void, mark: u32) -> Result<(), i64> {
    let mut value = mark as i32;
    // SAFETY: `ctx` is the program's context pointer, and `value` a c_int whose size is passed
    // along.
    let result = unsafe {
        bpf_setsockopt(
            ctx,
            SOL_SOCKET,
            SO_MARK,
            (&raw mut value).cast(),
            size_of::<i32>() as i32,
        )
    };
    if result == 0 { Ok(()) } else { Err(result) }
}

/// Returns the transport protocol of the socket of a `bpf_sock_addr` context.
#[inline(always)]
fn socket_protocol(ctx: &SockAddrContext) -> u8 {
    // SAFETY: `protocol` is a readable member of the context.
    unsafe { read_field(&raw const (*ctx.sock_addr).protocol) as u8 }
}

/// Returns the mark of the socket of a `bpf_sock_addr` context.
#[inline(always)]
fn socket_mark(ctx: &SockAddrContext) -> u32 {
    // SAFETY: `sk` is a member of the context that the kernel always sets for these programs,
    // and `mark` a readable member of the `bpf_sock` it points to.
    unsafe {
        let socket = core::ptr::read_volatile(&raw const (*ctx.sock_addr).__bindgen_anon_1.sk);
        read_field(&raw const (*socket).mark)
    }
}

/// Reads one `u32` context field.
///
/// # Safety
///
/// `field` must point into the program's context or a `bpf_sock` it points to.
#[inline(always)]
unsafe fn read_field(field: *const u32) -> u32 {
    // SAFETY: guaranteed by the caller.
    unsafe { core::ptr::read_volatile(field) }
}
