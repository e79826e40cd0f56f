//! `cgroup/connect4`, `connect6`, `sendmsg4` and `sendmsg6`: the programs that run in the task
//! context of the calling process.
//!
//! `sendmsg4/6` run only for UDP sends that carry a destination address, and `connect4/6` for
//! TCP and UDP `connect()`, so together they see every socket that sends to a peer. They always
//! allow the call.

use aya_ebpf::{EbpfContext as _, macros::cgroup_sock_addr, programs::SockAddrContext};

use crate::owner::record_socket_owner;

/// Return value that lets the system call go on.
const ALLOW: i32 = 1;

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    record_socket_owner(ctx.as_ptr());
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    record_socket_owner(ctx.as_ptr());
    ALLOW
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    record_socket_owner(ctx.as_ptr());
    ALLOW
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    record_socket_owner(ctx.as_ptr());
    ALLOW
}
