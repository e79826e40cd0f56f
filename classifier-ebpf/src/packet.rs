//! Reading the IP and transport headers of a packet in a `cgroup_skb` program, where the
//! packet starts with its IP header.

use aya_ebpf::programs::SkBuffContext;
use tollgate_classifier_common::{IPPROTO_TCP, IPPROTO_UDP};

/// Length of an IPv6 header without extension headers.
const IPV6_HEADER_LEN: usize = 40;
/// Extension headers skipped before giving up on finding the transport header.
const IPV6_MAX_EXTENSION_HEADERS: usize = 4;

/// Length of a UDP header.
pub const UDP_HEADER_LEN: usize = 8;
/// Offset of the flags byte in a TCP header.
pub const TCP_FLAGS_OFFSET: usize = 13;

/// Addresses and transport of a TCP or UDP packet.
pub struct Flow {
    pub protocol: u8,
    pub addresses: Addresses,
    /// Offset of the transport header from the start of the IP header.
    pub transport_offset: usize,
}

pub enum Addresses {
    V4 { src: [u8; 4], dst: [u8; 4] },
    V6 { src: [u8; 16], dst: [u8; 16] },
}

/// Outcome of reading a packet's headers.
pub enum Parsed {
    /// A TCP or UDP packet that starts its transport header in this packet.
    Flow(Flow),
    /// Some other protocol, or a later fragment, which has no ports.
    Skip,
}

impl Flow {
    /// Returns the UDP payload length of a packet of `packet_len` bytes from its IP header on.
    #[inline(always)]
    pub fn udp_payload_len(&self, packet_len: u32) -> u64 {
        (packet_len as usize).saturating_sub(self.transport_offset + UDP_HEADER_LEN) as u64
    }
}

/// Reads the IP header that starts the packet.
#[inline(always)]
pub fn parse_ip(ctx: &SkBuffContext) -> Result<Parsed, ()> {
    let first = ctx.load::<u8>(0).map_err(|_| ())?;
    match first >> 4 {
        4 => parse_ipv4(ctx),
        6 => parse_ipv6(ctx),
        _ => Err(()),
    }
}

/// Returns the protocol number in the IP header: the transport protocol, or for IPv6 the first
/// extension header. `None` if the header cannot be read.
#[inline(always)]
pub fn ip_protocol(ctx: &SkBuffContext) -> Option<u8> {
    let first = read_byte(ctx, 0)?;
    match first >> 4 {
        4 => read_byte(ctx, 9),
        6 => read_byte(ctx, 6),
        _ => None,
    }
}

/// Returns the UDP payload length of a packet whose [`ip_protocol`] is UDP. The IP header is as
/// long as the IPv4 header length field says, or 40 bytes for IPv6, which has no extension
/// header when its first next header is UDP.
#[inline(always)]
pub fn udp_payload_len(ctx: &SkBuffContext) -> Option<u64> {
    let first = read_byte(ctx, 0)?;
    let header_len = match first >> 4 {
        4 => usize::from(first & 0x0f) * 4,
        6 => IPV6_HEADER_LEN,
        _ => return None,
    };
    Some((ctx.len() as usize).saturating_sub(header_len + UDP_HEADER_LEN) as u64)
}

/// Reads one byte of the packet: straight from its linear data, which costs no helper call,
/// or with `bpf_skb_load_bytes` when the byte lies past it.
#[inline(always)]
pub fn read_byte(ctx: &SkBuffContext, offset: usize) -> Option<u8> {
    let skb = ctx.skb.skb;
    // SAFETY: `data` and `data_end` are readable members of the `__sk_buff` context; the
    // verifier turns them into packet pointers.
    let (data, data_end) = unsafe { ((*skb).data as usize, (*skb).data_end as usize) };
    let address = data + offset;
    // The verifier learns the readable range from a comparison of the end of the read with
    // `data_end`. LLVM would rewrite `address + 1 > data_end` as `address >= data_end`, which
    // the verifier cannot use, so the end goes through a volatile read it cannot see through.
    let end = address + 1;
    // SAFETY: `end` is a live local variable.
    if unsafe { core::ptr::read_volatile(&end) } > data_end {
        return ctx.load::<u8>(offset).ok();
    }
    // SAFETY: the byte lies between `data` and `data_end`, which the comparison above checks
    // for the verifier too.
    Some(unsafe { *(address as *const u8) })
}

/// Returns the flags byte of a TCP segment, assuming an IPv4 header with its length field or
/// an IPv6 header without extension headers.
#[inline(always)]
pub fn tcp_flags(ctx: &SkBuffContext) -> Option<u8> {
    let first = read_byte(ctx, 0)?;
    let header_len = match first >> 4 {
        4 => usize::from(first & 0x0f) * 4,
        6 => IPV6_HEADER_LEN,
        _ => return None,
    };
    read_byte(ctx, header_len + TCP_FLAGS_OFFSET)
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
