//! `cgroup/sock_release`: deletes a socket's record when the socket is closed, and ends the
//! fast path flow of a UDP socket ([`crate::fast_path::release`]).

use aya_ebpf::{
    EbpfContext as _, helpers::generated::bpf_get_socket_cookie, macros::cgroup_sock,
    programs::SockContext,
};

use crate::{fast_path, maps::SOCKET_OWNER};

#[cgroup_sock(sock_release)]
pub fn sock_release(ctx: SockContext) -> i32 {
    // SAFETY: `ctx` is the program's own context pointer, which the helper takes.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // Most released sockets never connected or sent, so a missing entry is the normal case.
    let _ = SOCKET_OWNER.remove(cookie);
    fast_path::release(cookie);
    1
}
