//! `cgroup/connect4`, `connect6`, `sendmsg4` and `sendmsg6`: the programs that run in the task
//! context of the calling process.
//!
//! `sendmsg4/6` run only for UDP sends that carry a destination address, and `connect4/6` for
//! TCP and UDP `connect()`, so together they see every socket that sends to a peer. They record
//! the socket's owner, then apply the daemon's verdict for the destination, if it has one
//! ([`crate::fast_path`]): a denied call fails with `EPERM`, the others go on.

use aya_ebpf::{EbpfContext as _, macros::cgroup_sock_addr, programs::SockAddrContext};

use crate::{
    fast_path::{Family, decide_connect, decide_send},
    owner::record_socket_owner,
};

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    let socket = record_socket_owner(ctx.as_ptr());
    decide_connect(&ctx, &socket, Family::V4)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    let socket = record_socket_owner(ctx.as_ptr());
    decide_connect(&ctx, &socket, Family::V6)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    let socket = record_socket_owner(ctx.as_ptr());
    decide_send(&ctx, &socket, Family::V4)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    let socket = record_socket_owner(ctx.as_ptr());
    decide_send(&ctx, &socket, Family::V6)
}
