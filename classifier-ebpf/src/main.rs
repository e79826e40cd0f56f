//! Tollgate's BPF programs, which record the process behind every outbound TCP connection and
//! UDP datagram while that process is still running.
//!
//! - [`sock_addr`]: `cgroup/connect4`, `connect6`, `sendmsg4`, `sendmsg6` run in the task that
//!   calls `connect()` or `sendmsg()`, store its [`OwnerRecord`] under the socket cookie and
//!   apply the daemon's verdict for the destination, if it has one.
//! - [`sock_ops`]: on `BPF_SOCK_OPS_TCP_CONNECT_CB` copies that record to the flow map, and
//!   reports the start and end of TCP connections the fast path allowed.
//! - [`egress`]: `cgroup_skb/egress` copies it to the flow map for every TCP SYN and UDP
//!   datagram, keyed by the addresses on the wire, and counts fast UDP sockets' bytes sent.
//! - [`ingress`]: `cgroup_skb/ingress` counts fast UDP sockets' bytes received.
//! - [`sock_release`]: `cgroup/sock_release` deletes the socket's record.
//! - [`fast_path`]: the verdicts applied at `connect()` and `sendmsg()`, and the events and
//!   byte counts of the sockets they allowed.
//! - [`owner`]: fills an [`OwnerRecord`] from the current task, including the executable path.
//! - [`packet`]: reads IP and transport headers for the `cgroup_skb` programs.
//! - [`maps`]: the maps shared with user space and the counters.
//!
//! Build with the `bpfel-unknown-none` target, `-Z build-std=core` and bpf-linker. The loader's
//! build script does that.
//!
//! [`OwnerRecord`]: tollgate_classifier_common::OwnerRecord
#![no_std]
#![no_main]
// The atomic add of `fast_path` needs the intrinsic: the BPF target has no atomic
// read-modify-write in `core::sync::atomic`. The build enables unstable features with
// RUSTC_BOOTSTRAP=1 already, for `-Z build-std=core`.
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "atomic_xadd is the only atomic add on the BPF target"
)]

mod egress;
mod fast_path;
mod ingress;
mod maps;
mod owner;
mod packet;
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
