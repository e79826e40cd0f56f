//! `cgroup_skb/egress`: records the flow of every outgoing TCP SYN and UDP datagram.
//!
//! The key comes from the IP and transport headers on the wire, so it also covers UDP, which
//! `sock_ops` never handles, and IPv4 packets sent from IPv6 sockets. The program runs before a
//! packet to a local listener loops back through `lo`, so the entry exists before `accept()` or
//! `recvmsg()` returns. For sockets that the fast path allowed it also counts UDP payload bytes
//! sent, reports a UDP flow's start and notes a TCP FIN sent. It always lets the packet pass.

use aya_ebpf::{
    EbpfContext as _, helpers::generated::bpf_get_socket_cookie, macros::cgroup_skb,
    programs::SkBuffContext,
};
use tollgate_classifier_common::{Counter, FlowKey, IPPROTO_TCP, IPPROTO_UDP, Ports};

use crate::{
    fast_path,
    maps::{SOCKET_OWNER, count, record_flow},
    packet::{
        Addresses, Flow, Parsed, TCP_FLAGS_OFFSET, ip_protocol, parse_ip, tcp_flags,
        udp_payload_len,
    },
};

/// Return value that lets the packet pass.
const PASS: i32 = 1;

const TCP_FLAG_FIN: u8 = 0x01;
const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_ACK: u8 = 0x10;

#[cgroup_skb(egress)]
pub fn egress(ctx: SkBuffContext) -> i32 {
    match ip_protocol(&ctx) {
        // Most packets are TCP segments without SYN or FIN, which need nothing: they leave
        // after two reads of the packet.
        Some(IPPROTO_TCP)
            if tcp_flags(&ctx).is_some_and(|flags| flags & (TCP_FLAG_SYN | TCP_FLAG_FIN) == 0) =>
        {
            return PASS;
        }
        // A fast UDP socket's flow is recorded at its first datagram; later ones are counted.
        Some(IPPROTO_UDP) => {
            // SAFETY: `ctx` is the program's own context pointer, which the helper takes.
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            if let Some(len) = udp_payload_len(&ctx)
                && fast_path::count_udp_sent_again(cookie, len)
            {
                return PASS;
            }
        }
        _ => {}
    }
    match parse_ip(&ctx) {
        Ok(Parsed::Flow(flow)) => record_packet(&ctx, &flow),
        Ok(Parsed::Skip) => {}
        Err(()) => count(Counter::PacketUnparsed),
    }
    PASS
}

#[inline(always)]
fn record_packet(ctx: &SkBuffContext, flow: &Flow) {
    let Ok(ports) = ctx.load::<[u8; 4]>(flow.transport_offset) else {
        count(Counter::PacketUnparsed);
        return;
    };
    if flow.protocol == IPPROTO_TCP {
        let Ok(flags) = ctx.load::<u8>(flow.transport_offset + TCP_FLAGS_OFFSET) else {
            count(Counter::PacketUnparsed);
            return;
        };
        if flags & TCP_FLAG_FIN != 0 {
            // SAFETY: `ctx` is the program's own context pointer, which the helper takes.
            fast_path::note_fin(unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }, true);
        }
        if flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) != TCP_FLAG_SYN {
            return;
        }
    }

    // SAFETY: `ctx` is the program's own context pointer, which the helper takes.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(owner_ptr) = SOCKET_OWNER.get_ptr(cookie) else {
        count(Counter::SocketRecordMissing);
        return;
    };
    // SAFETY: the pointer comes from a successful map lookup and stays valid for this run.
    let owner = unsafe { &*owner_ptr };

    let ports = Ports {
        src: u16::from_be_bytes([ports[0], ports[1]]),
        dst: u16::from_be_bytes([ports[2], ports[3]]),
    };
    let key = match flow.addresses {
        Addresses::V4 { src, dst } => {
            FlowKey::ipv4(owner.netns_cookie, flow.protocol, src, dst, ports)
        }
        Addresses::V6 { src, dst } => {
            FlowKey::ipv6(owner.netns_cookie, flow.protocol, src, dst, ports)
        }
    };
    record_flow(&key, owner);
    if flow.protocol == IPPROTO_UDP {
        fast_path::count_udp_sent(cookie, &key, flow.udp_payload_len(ctx.len()), owner_ptr);
    }
}
