//! `cgroup_skb/ingress`: counts the UDP payload bytes that sockets allowed by the fast path
//! receive, and notes a TCP FIN they receive. TCP sockets count their own bytes, which
//! `sock_ops` reads when they close. The count includes the received FIN's sequence number, so
//! `sock_ops` subtracts one once the FIN is noted. It always lets the packet pass.

use aya_ebpf::{
    EbpfContext as _, helpers::generated::bpf_get_socket_cookie, macros::cgroup_skb,
    programs::SkBuffContext,
};
use tollgate_classifier_common::{IPPROTO_TCP, IPPROTO_UDP};

use crate::{
    fast_path,
    packet::{Parsed, ip_protocol, parse_ip, tcp_flags, udp_payload_len},
};

const TCP_FLAG_FIN: u8 = 0x01;

/// Return value that lets the packet pass.
const PASS: i32 = 1;

#[cgroup_skb(ingress)]
pub fn ingress(ctx: SkBuffContext) -> i32 {
    match ip_protocol(&ctx) {
        // TCP is most of the traffic: only a segment with FIN costs a map lookup.
        Some(IPPROTO_TCP) => {
            if tcp_flags(&ctx).is_some_and(|flags| flags & TCP_FLAG_FIN != 0) {
                // SAFETY: `ctx` is the program's own context pointer, which the helper takes.
                fast_path::note_fin(unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }, false);
            }
        }
        Some(IPPROTO_UDP) => {
            if let Some(len) = udp_payload_len(&ctx) {
                // SAFETY: as above.
                let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
                fast_path::count_udp_received(cookie, len);
            }
        }
        // IPv6 with extension headers: the full parse finds the transport header.
        _ => {
            if let Ok(Parsed::Flow(flow)) = parse_ip(&ctx)
                && flow.protocol == IPPROTO_UDP
            {
                // SAFETY: as above.
                let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
                fast_path::count_udp_received(cookie, flow.udp_payload_len(ctx.len()));
            }
        }
    }
    PASS
}
