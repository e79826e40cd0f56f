//! Types shared by Tollgate's BPF programs and their user-space loader.
//!
//! Every type here is `#[repr(C)]` with explicit padding fields, because the kernel hashes map
//! keys byte for byte and both sides must agree on each byte. The `user` feature adds the
//! `aya::Pod` impls the loader needs to read and write the maps.
#![no_std]
#![warn(missing_docs)]

mod fast_path;

pub use fast_path::*;

/// Address family of an IPv4 flow (`AF_INET`).
pub const AF_INET: u8 = 2;
/// Address family of an IPv6 flow (`AF_INET6`).
pub const AF_INET6: u8 = 10;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;

/// Name of the LRU map from [`FlowKey`] to [`OwnerRecord`].
pub const FLOW_OWNER_MAP: &str = "FLOW_OWNER";
/// Name of the LRU map from socket cookie (`u64`) to [`OwnerRecord`].
pub const SOCKET_OWNER_MAP: &str = "SOCKET_OWNER";
/// Name of the per-CPU array of `u64` event counters, indexed by [`Counter`].
pub const COUNTERS_MAP: &str = "COUNTERS";
/// Name of the one-element array that contains [`KernelOffsets`].
pub const KERNEL_OFFSETS_MAP: &str = "KERNEL_OFFSETS";

/// Capacity of the flow map. The oldest entries are evicted first when it is full.
pub const FLOW_OWNER_CAPACITY: u32 = 16_384;
/// Capacity of the socket map. Sockets are removed when they are released.
pub const SOCKET_OWNER_CAPACITY: u32 = 16_384;

/// Size of [`OwnerRecord::exe`].
pub const EXE_BUF_LEN: usize = 512;
/// Offset in [`OwnerRecord::exe`] at or past which no further component is stored.
///
/// A component starts below this offset and is at most [`EXE_COMPONENT_MAX`] bytes long, so it
/// always fits in [`EXE_BUF_LEN`] bytes. The BPF verifier needs that bound to accept the write.
pub const EXE_OFFSET_LIMIT: u32 = 256;
/// Maximum bytes of one path component including its NUL (`NAME_MAX` is 255 on Linux).
pub const EXE_COMPONENT_MAX: u32 = 256;
/// Maximum steps of the path walk. Each step stores a component or crosses a mount point.
pub const EXE_WALK_STEPS: u32 = 40;

/// Set in [`OwnerRecord::flags`] when `ppid` and `start_time_ns` were read from the task.
pub const OWNER_TASK_FIELDS: u32 = 1 << 0;
/// Set in [`OwnerRecord::flags`] when the walk reached the root and [`OwnerRecord::exe`]
/// contains the whole executable path.
pub const OWNER_EXE_COMPLETE: u32 = 1 << 1;
/// Set in [`OwnerRecord::flags`] when the path did not fit or had more steps than
/// [`EXE_WALK_STEPS`].
pub const OWNER_EXE_TRUNCATED: u32 = 1 << 2;
/// Set in [`OwnerRecord::flags`] when the executable's directory entry was unhashed, as it is
/// after the file was deleted or replaced, or for an anonymous file such as a memfd.
pub const OWNER_EXE_UNLINKED: u32 = 1 << 3;

/// Set in [`KernelOffsets::flags`] when the `task_struct` offsets for `ppid` and start time
/// are valid.
pub const OFFSETS_TASK: u32 = 1 << 0;
/// Set in [`KernelOffsets::flags`] when every offset of the executable path walk is valid.
pub const OFFSETS_EXE_PATH: u32 = 1 << 1;
/// Set in [`KernelOffsets::flags`] when the offsets for the unlinked check are valid.
pub const OFFSETS_EXE_UNLINKED: u32 = 1 << 2;

/// Key of the flow map: one TCP connection or one UDP source/destination pair.
///
/// IPv4 addresses fill the first four bytes of the address fields and the rest stays zero.
/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are stored as IPv4, because the packet on the
/// wire is IPv4 and the proxy may see either form.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Network namespace cookie of the socket (`SO_NETNS_COOKIE`).
    pub netns_cookie: u64,
    /// Source address in network byte order.
    pub src_addr: [u8; 16],
    /// Destination address in network byte order.
    pub dst_addr: [u8; 16],
    /// Source port in host byte order.
    pub src_port: u16,
    /// Destination port in host byte order.
    pub dst_port: u16,
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u8,
    /// [`IPPROTO_TCP`] or [`IPPROTO_UDP`].
    pub protocol: u8,
    /// Always zero, so that equal flows hash equally.
    pub padding: [u8; 2],
}

/// Ports of a flow in host byte order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ports {
    /// Source port.
    pub src: u16,
    /// Destination port.
    pub dst: u16,
}

impl FlowKey {
    /// Creates the key of an IPv4 flow.
    #[inline(always)]
    pub fn ipv4(
        netns_cookie: u64,
        protocol: u8,
        src_addr: [u8; 4],
        dst_addr: [u8; 4],
        ports: Ports,
    ) -> Self {
        let mut key = Self {
            netns_cookie,
            src_addr: [0; 16],
            dst_addr: [0; 16],
            src_port: ports.src,
            dst_port: ports.dst,
            family: AF_INET,
            protocol,
            padding: [0; 2],
        };
        key.src_addr[..4].copy_from_slice(&src_addr);
        key.dst_addr[..4].copy_from_slice(&dst_addr);
        key
    }

    /// Creates the key of an IPv6 flow, or of an IPv4 flow if both addresses are IPv4-mapped.
    #[inline(always)]
    pub fn ipv6(
        netns_cookie: u64,
        protocol: u8,
        src_addr: [u8; 16],
        dst_addr: [u8; 16],
        ports: Ports,
    ) -> Self {
        if let (Some(src), Some(dst)) = (ipv4_mapped(&src_addr), ipv4_mapped(&dst_addr)) {
            return Self::ipv4(netns_cookie, protocol, src, dst, ports);
        }
        Self {
            netns_cookie,
            src_addr,
            dst_addr,
            src_port: ports.src,
            dst_port: ports.dst,
            family: AF_INET6,
            protocol,
            padding: [0; 2],
        }
    }
}

/// Returns the IPv4 address inside an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`).
#[inline(always)]
pub fn ipv4_mapped(addr: &[u8; 16]) -> Option<[u8; 4]> {
    let is_mapped =
        addr[..10].iter().all(|&byte| byte == 0) && addr[10] == 0xff && addr[11] == 0xff;
    if is_mapped {
        Some([addr[12], addr[13], addr[14], addr[15]])
    } else {
        None
    }
}

/// The process that created a socket, captured in the task context of `connect()` or
/// `sendmsg()`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OwnerRecord {
    /// Process id (the kernel's tgid).
    pub pid: u32,
    /// Thread id (the kernel's pid).
    pub tid: u32,
    /// Parent process id, valid if [`OWNER_TASK_FIELDS`] is set.
    pub ppid: u32,
    /// Real user id.
    pub uid: u32,
    /// Real group id.
    pub gid: u32,
    /// `OWNER_*` bits.
    pub flags: u32,
    /// Id of the cgroup2 cgroup of the task.
    pub cgroup_id: u64,
    /// Cookie of the socket the record was made for.
    pub socket_cookie: u64,
    /// Network namespace cookie of that socket.
    pub netns_cookie: u64,
    /// Process start in nanoseconds since boot, including suspend (`start_boottime` of the
    /// thread group leader), valid if [`OWNER_TASK_FIELDS`] is set.
    pub start_time_ns: u64,
    /// Name of the calling thread, NUL-padded (`TASK_COMM_LEN` is 16).
    pub comm: [u8; 16],
    /// Bytes of [`Self::exe`] in use.
    pub exe_len: u32,
    /// Always zero.
    pub padding: u32,
    /// Executable path components from the file name up to the root, each ending in NUL.
    /// `/usr/bin/python3.11` is stored as `python3.11\0bin\0usr\0`.
    pub exe: [u8; EXE_BUF_LEN],
}

/// Offsets of kernel struct fields in bytes, found in the running kernel's BTF by the loader.
///
/// The programs read `task_struct` and the structs it points to with `bpf_probe_read_kernel`
/// at these offsets. Rust emits no CO-RE relocations, so offsets compiled into the object would
/// only be right for one kernel build.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `OFFSETS_*` bits naming which groups of fields below are valid.
    pub flags: u32,
    /// `task_struct.real_parent`.
    pub task_real_parent: u32,
    /// `task_struct.group_leader`.
    pub task_group_leader: u32,
    /// `task_struct.tgid`.
    pub task_tgid: u32,
    /// `task_struct.start_boottime`.
    pub task_start_boottime: u32,
    /// `task_struct.mm`.
    pub task_mm: u32,
    /// `mm_struct.exe_file`.
    pub mm_exe_file: u32,
    /// `file.f_path`.
    pub file_f_path: u32,
    /// `path.mnt`.
    pub path_mnt: u32,
    /// `path.dentry`.
    pub path_dentry: u32,
    /// `dentry.d_parent`.
    pub dentry_d_parent: u32,
    /// `dentry.d_name` plus `qstr.name`: the pointer to the component's bytes.
    pub dentry_d_name_name: u32,
    /// `vfsmount.mnt_root`.
    pub vfsmount_mnt_root: u32,
    /// `mount.mnt`: the `vfsmount` embedded in `struct mount`.
    pub mount_mnt: u32,
    /// `mount.mnt_parent`.
    pub mount_mnt_parent: u32,
    /// `mount.mnt_mountpoint`.
    pub mount_mnt_mountpoint: u32,
    /// `dentry.d_hash` plus `hlist_bl_node.pprev`, which is null for an unhashed dentry.
    pub dentry_d_hash_pprev: u32,
    /// Always zero.
    pub padding: u32,
}

/// Index of an event counter in the counters map.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// A socket record was stored in the socket map.
    SocketRecorded = 0,
    /// A flow was stored in the flow map.
    FlowRecorded = 1,
    /// `sock_ops` or the egress program found no socket record for a socket cookie, because
    /// the socket was created before the programs were attached, in another cgroup, or its
    /// record was evicted.
    SocketRecordMissing = 2,
    /// Updating the socket map failed.
    SocketUpdateFailed = 3,
    /// Updating the flow map failed.
    FlowUpdateFailed = 4,
    /// The egress program could not read the IP or transport header of a packet.
    PacketUnparsed = 5,
    /// An executable path did not fit in [`OwnerRecord::exe`].
    ExePathTruncated = 6,
    /// A verdict allowed a `connect()` and the socket got the bypass mark.
    KernelAllowed = 7,
    /// A verdict denied a `connect()` or a UDP send.
    KernelDenied = 8,
    /// The event ring was full, so an event was lost.
    FlowEventLost = 9,
    /// A verdict allowed a `connect()`, but the fast socket map was full or setting the mark
    /// failed, so the socket took the path through the proxy.
    FastSocketRejected = 10,
}

/// Number of entries in the counters map.
pub const COUNTER_COUNT: u32 = 11;

#[cfg(feature = "user")]
mod pod {
    use super::{
        DeniedSend, ExeEntry, FastPathConfig, FastSocket, FlowEvent, FlowEventWithOwner, FlowKey,
        KernelOffsets, OwnerRecord, VerdictKey, VerdictValue,
    };

    // SAFETY: `FlowKey` is `repr(C)`, `Copy`, has no implicit padding and every bit pattern
    // is a valid value.
    unsafe impl aya::Pod for FlowKey {}
    // SAFETY: `OwnerRecord` is `repr(C)`, `Copy`, has no implicit padding and every bit pattern
    // is a valid value.
    unsafe impl aya::Pod for OwnerRecord {}
    // SAFETY: `KernelOffsets` is `repr(C)`, `Copy`, made of `u32` fields only.
    unsafe impl aya::Pod for KernelOffsets {}
    // SAFETY: each of these types is `repr(C)`, `Copy`, has explicit padding fields instead of
    // implicit padding (checked by the layout tests) and accepts every bit pattern.
    unsafe impl aya::Pod for FastPathConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for VerdictKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for VerdictValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ExeEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FastSocket {}
    // SAFETY: as above.
    unsafe impl aya::Pod for DeniedSend {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowEventWithOwner {}
}

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<FlowKey>(), 8 + 16 + 16 + 2 + 2 + 1 + 1 + 2);
        assert_eq!(
            size_of::<OwnerRecord>(),
            6 * 4 + 4 * 8 + 16 + 2 * 4 + EXE_BUF_LEN
        );
        assert_eq!(size_of::<KernelOffsets>(), 18 * 4);
    }

    #[test]
    fn mapped_ipv6_key_becomes_ipv4() {
        let mut mapped = [0; 16];
        mapped[10..].copy_from_slice(&[0xff, 0xff, 127, 0, 0, 1]);
        let ports = Ports {
            src: 40000,
            dst: 80,
        };

        let key = FlowKey::ipv6(7, IPPROTO_TCP, mapped, mapped, ports);

        assert_eq!(
            key,
            FlowKey::ipv4(7, IPPROTO_TCP, [127, 0, 0, 1], [127, 0, 0, 1], ports)
        );
        assert_eq!(key.family, AF_INET);
    }

    #[test]
    fn plain_ipv6_key_stays_ipv6() {
        let mut loopback = [0; 16];
        loopback[15] = 1;

        let key = FlowKey::ipv6(7, IPPROTO_UDP, loopback, loopback, Ports { src: 1, dst: 2 });

        assert_eq!(key.family, AF_INET6);
        assert_eq!(key.src_addr, loopback);
    }

    #[test]
    fn half_mapped_key_stays_ipv6() {
        let mut mapped = [0; 16];
        mapped[10..].copy_from_slice(&[0xff, 0xff, 10, 0, 0, 1]);
        let mut loopback = [0; 16];
        loopback[15] = 1;

        let key = FlowKey::ipv6(7, IPPROTO_UDP, mapped, loopback, Ports { src: 1, dst: 2 });

        assert_eq!(key.family, AF_INET6);
    }
}
