//! `sock_ops`: records the flow of a TCP connection once its source port is chosen, and reports
//! the start and end of the connections that the fast path allowed.
//!
//! `BPF_SOCK_OPS_TCP_CONNECT_CB` runs inside `connect()` after the source port is bound and
//! before the SYN is sent, so the flow entry exists before the peer can accept the connection.
//! For a fast socket it also turns on `BPF_SOCK_OPS_STATE_CB`, which reports the change to
//! `TCP_CLOSE` with the socket's byte counts.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
        BPF_TCP_CLOSE, BPF_TCP_SYN_SENT,
    },
    helpers::generated::bpf_get_socket_cookie,
    macros::sock_ops,
    programs::SockOpsContext,
};
use tollgate_classifier_common::{AF_INET, AF_INET6, Counter, FlowKey, IPPROTO_TCP, Ports};

use crate::{
    fast_path,
    maps::{SOCKET_OWNER, count, record_flow},
};

#[sock_ops]
pub fn sock_ops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => record_connect(&ctx),
        BPF_SOCK_OPS_STATE_CB => state_changed(&ctx),
        _ => {}
    }
    1
}

/// Ends a fast socket's flow when the connection closes. `args[0]` is the old state and
/// `args[1]` the new one.
#[inline(always)]
fn state_changed(ctx: &SockOpsContext) {
    if ctx.arg(1) != BPF_TCP_CLOSE {
        return;
    }
    // SAFETY: `ctx` is the program's own context pointer, which the helper takes.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let ops = ctx.ops;
    // SAFETY: these are readable members of the `bpf_sock_ops` context, each read with one
    // load of its own size.
    let counters = unsafe {
        fast_path::TcpCounters {
            bytes_acked: core::ptr::read_volatile(&raw const (*ops).bytes_acked),
            bytes_received: core::ptr::read_volatile(&raw const (*ops).bytes_received),
            snd_una: read_field(&raw const (*ops).snd_una),
            snd_nxt: read_field(&raw const (*ops).snd_nxt),
            failed: ctx.arg(0) == BPF_TCP_SYN_SENT,
        }
    };
    fast_path::close_tcp(cookie, &counters);
}

#[inline(always)]
fn record_connect(ctx: &SockOpsContext) {
    // SAFETY: `ctx` is the program's own context pointer, which the helper takes.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(owner) = SOCKET_OWNER.get_ptr(cookie) else {
        count(Counter::SocketRecordMissing);
        return;
    };
    let owner_ptr = owner;
    // SAFETY: the pointer comes from a successful map lookup and stays valid for this run.
    let owner = unsafe { &*owner };

    let ops = ctx.ops;
    // SAFETY: every field below is a readable member of the `bpf_sock_ops` context. Each is
    // read with its own 4-byte volatile load, because the verifier rejects wider context
    // accesses that the compiler could merge them into.
    let (family, local_port, remote_port) = unsafe {
        (
            read_field(&raw const (*ops).family),
            read_field(&raw const (*ops).local_port),
            read_field(&raw const (*ops).remote_port),
        )
    };
    // `local_port` is in host byte order. `remote_port` contains the network-order port in its
    // upper 16 bits on little-endian machines, which `from_be` undoes.
    let ports = Ports {
        src: local_port as u16,
        dst: u32::from_be(remote_port) as u16,
    };

    let key = match family {
        family if family == u32::from(AF_INET) => {
            // SAFETY: as above.
            let (src, dst) = unsafe {
                (
                    read_field(&raw const (*ops).local_ip4),
                    read_field(&raw const (*ops).remote_ip4),
                )
            };
            FlowKey::ipv4(
                owner.netns_cookie,
                IPPROTO_TCP,
                src.to_ne_bytes(),
                dst.to_ne_bytes(),
                ports,
            )
        }
        family if family == u32::from(AF_INET6) => {
            // SAFETY: as above.
            let (src, dst) = unsafe {
                (
                    read_ipv6(&raw const (*ops).local_ip6),
                    read_ipv6(&raw const (*ops).remote_ip6),
                )
            };
            FlowKey::ipv6(owner.netns_cookie, IPPROTO_TCP, src, dst, ports)
        }
        _ => return,
    };
    record_flow(&key, owner);
    if fast_path::announce_tcp(cookie, &key, owner_ptr) {
        // The closed event needs the change to TCP_CLOSE, which only comes with this flag.
        let flags = ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG;
        let _ = ctx.set_cb_flags(flags as i32);
    }
}

/// Reads one `u32` context field.
///
/// # Safety
///
/// `field` must point into the program's `bpf_sock_ops` context.
#[inline(always)]
unsafe fn read_field(field: *const u32) -> u32 {
    // SAFETY: guaranteed by the caller.
    unsafe { core::ptr::read_volatile(field) }
}

/// Reads an IPv6 address context field, stored as four `u32` in network byte order.
///
/// # Safety
///
/// `field` must point to `local_ip6` or `remote_ip6` of the program's `bpf_sock_ops` context.
#[inline(always)]
unsafe fn read_ipv6(field: *const [u32; 4]) -> [u8; 16] {
    let words = field.cast::<u32>();
    let mut address = [0; 16];
    for (index, chunk) in address.chunks_exact_mut(4).enumerate() {
        // SAFETY: `index < 4`, so the word lies inside the field the caller vouched for.
        let word = unsafe { read_field(words.add(index)) };
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    address
}
