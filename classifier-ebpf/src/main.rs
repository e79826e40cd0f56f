//! Tollgate's BPF programs, which record the process behind every outbound TCP connection and
//! UDP datagram while that process is still running.
//!
//! - [`sock_addr`]: `cgroup/connect4`, `connect6`, `sendmsg4`, `sendmsg6` run in the task that
//!   calls `connect()` or `sendmsg()` and store its [`OwnerRecord`] under the socket cookie.
//! - [`sock_ops`]: on `BPF_SOCK_OPS_TCP_CONNECT_CB` copies that record to the flow map.
//! - [`egress`]: `cgroup_skb/egress` copies it to the flow map for every TCP SYN and UDP
//!   datagram, keyed by the addresses on the wire.
//! - [`sock_release`]: `cgroup/sock_release` deletes the socket's record.
//! - [`owner`]: fills an [`OwnerRecord`] from the current task, including the executable path.
//! - [`maps`]: the maps shared with user space and the counters.
//!
//! Build with the `bpfel-unknown-none` target, `-Z build-std=core` and bpf-linker. The loader's
//! build script does that.
//!
//! [`OwnerRecord`]: tollgate_classifier_common::OwnerRecord
#![no_std]
#![no_main]

mod egress;
mod maps;
mod owner;
mod sock_addr;
mod sock_ops;
mod sock_release;

/// License declared to the kernel. `bpf_probe_read_kernel` and `bpf_get_current_task` are
/// GPL-only helpers, and the kernel accepts "Dual MIT/GPL" as GPL-compatible.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
