//! `cgroup_skb/egress`: records the flow of every outgoing TCP SYN and UDP datagram.
//!
//! The key comes from the IP and transport headers on the wire, so it also covers UDP, which
//! `sock_ops` never handles, and IPv4 packets sent from IPv6 sockets. The program runs before a
//! packet to a local listener loops back through `lo`, so the entry exists before `accept()` or
//! `recvmsg()` returns. It always lets the packet pass.

use aya_ebpf::{
    EbpfContext as _, helpers::generated::bpf_get_socket_cookie, macros::cgroup_skb,
    programs::SkBuffContext,
};
use tollgate_classifier_common::{Counter, FlowKey, IPPROTO_TCP, IPPROTO_UDP, Ports};

use crate::maps::{SOCKET_OWNER, count, record_flow};

/// Return value that lets the packet pass.
const PASS: i32 = 1;

/// Length of an IPv6 header without extension headers.
const IPV6_HEADER_LEN: usize = 40;
/// Extension headers skipped before giving up on finding the transport header.
const IPV6_MAX_EXTENSION_HEADERS: usize = 4;

const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_ACK: u8 = 0x10;
/// Offset of the flags byte in a TCP header.
const TCP_FLAGS_OFFSET: usize = 13;

/// Addresses and transport of a packet whose flow is recorded.
struct Flow {
    protocol: u8,
    addresses: Addresses,
    /// Offset of the transport header from the start of the IP header.
    transport_offset: usize,
}

enum Addresses {
    V4 { src: [u8; 4], dst: [u8; 4] },
    V6 { src: [u8; 16], dst: [u8; 16] },
}

/// Outcome of reading a packet's headers.
enum Parsed {
    /// A TCP or UDP packet that starts its transport header in this packet.
    Flow(Flow),
    /// Some other protocol, or a later fragment, which has no ports.
    Skip,
}

#[cgroup_skb(egress)]
pub fn egress(ctx: SkBuffContext) -> i32 {
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
        if flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) != TCP_FLAG_SYN {
            return;
        }
    }

    // SAFETY: `ctx` is the program's own context pointer, which the helper takes.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(owner) = SOCKET_OWNER.get_ptr(cookie) else {
        count(Counter::SocketRecordMissing);
        return;
    };
    // SAFETY: the pointer comes from a successful map lookup and stays valid for this run.
    let owner = unsafe { &*owner };

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
}

/// Reads the IP header that starts the packet, as it does for `cgroup_skb` programs.
#[inline(always)]
fn parse_ip(ctx: &SkBuffContext) -> Result<Parsed, ()> {
    let first = ctx.load::<u8>(0).map_err(|_| ())?;
    match first >> 4 {
        4 => parse_ipv4(ctx),
        6 => parse_ipv6(ctx),
        _ => Err(()),
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &SkBuffContext) -> Result<Parsed, ()> {
    let header = ctx.load::<[u8; 20]>(0).map_err(|_| ())?;
    let header_len = usize::from(header[0] & 0x0f) * 4;
    if header_len < 20 {
        return Err(());
    }
    let protocol = header[9];
    let fragment_offset = u16::from_be_bytes([header[6], header[7]]) & 0x1fff;
    if (protocol != IPPROTO_TCP && protocol != IPPROTO_UDP) || fragment_offset != 0 {
        return Ok(Parsed::Skip);
    }
    Ok(Parsed::Flow(Flow {
        protocol,
        addresses: Addresses::V4 {
            src: [header[12], header[13], header[14], header[15]],
            dst: [header[16], header[17], header[18], header[19]],
        },
        transport_offset: header_len,
    }))
}

#[inline(always)]
fn parse_ipv6(ctx: &SkBuffContext) -> Result<Parsed, ()> {
    let header = ctx.load::<[u8; IPV6_HEADER_LEN]>(0).map_err(|_| ())?;
    let mut src = [0; 16];
    let mut dst = [0; 16];
    src.copy_from_slice(&header[8..24]);
    dst.copy_from_slice(&header[24..40]);

    let mut next_header = header[6];
    let mut offset = IPV6_HEADER_LEN;
    for _ in 0..IPV6_MAX_EXTENSION_HEADERS {
        match next_header {
            IPPROTO_TCP | IPPROTO_UDP => {
                return Ok(Parsed::Flow(Flow {
                    protocol: next_header,
                    addresses: Addresses::V6 { src, dst },
                    transport_offset: offset,
                }));
            }
            // Hop-by-hop, routing and destination options: length in 8-byte units after the
            // first 8 bytes.
            0 | 43 | 60 => {
                let extension = ctx.load::<[u8; 2]>(offset).map_err(|_| ())?;
                next_header = extension[0];
                offset += (usize::from(extension[1]) + 1) * 8;
            }
            // Fragment header of 8 bytes. Only the first fragment carries the ports.
            44 => {
                let fragment = ctx.load::<[u8; 4]>(offset).map_err(|_| ())?;
                if u16::from_be_bytes([fragment[2], fragment[3]]) & 0xfff8 != 0 {
                    return Ok(Parsed::Skip);
                }
                next_header = fragment[0];
                offset += 8;
            }
            _ => return Ok(Parsed::Skip),
        }
    }
    Err(())
}
