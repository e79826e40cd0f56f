//! Types of the fast path: verdicts the programs apply at `connect()` and `sendmsg()`, the
//! sockets they allowed, and the events they report about them.
//!
//! The daemon fills the verdict map with decisions its rules made, keyed by executable,
//! protocol, destination address and port. A connect that finds an allow verdict gets the
//! daemon's bypass mark on its socket, so nftables lets it pass without the detour through
//! the proxy, and one that finds a deny verdict fails with `EPERM`. Sockets allowed this way
//! report their start, their end with the bytes they moved, and each denial on the event
//! ring, so the daemon still reports every flow.

use crate::{EXE_BUF_LEN, IPPROTO_UDP, OwnerRecord, Ports};

/// Name of the one-element array that contains [`FastPathConfig`].
pub const FAST_PATH_CONFIG_MAP: &str = "FAST_PATH_CONFIG";
/// Name of the hash map from [`VerdictKey`] to [`VerdictValue`].
pub const VERDICTS_MAP: &str = "VERDICTS";
/// Name of the hash map from an executable's [`exe_hash`] to its [`ExeEntry`].
pub const EXECUTABLES_MAP: &str = "EXECUTABLES";
/// Name of the hash map from socket cookie (`u64`) to [`FastSocket`].
pub const FAST_SOCKETS_MAP: &str = "FAST_SOCKETS";
/// Name of the LRU map of UDP sends already reported as denied, from [`DeniedSend`] to `u8`.
pub const DENIED_SENDS_MAP: &str = "DENIED_SENDS";
/// Name of the ring buffer of [`FlowEvent`]s and [`FlowEventWithOwner`]s.
pub const FLOW_EVENTS_MAP: &str = "FLOW_EVENTS";

/// Capacity of the verdict map, which evicts the least recently used verdicts when full.
pub const VERDICTS_CAPACITY: u32 = 16_384;
/// Capacity of the executable map: executables that rules name.
pub const EXECUTABLES_CAPACITY: u32 = 1_024;
/// Capacity of the fast socket map. A socket allowed at `connect()` while it is full takes the
/// path through the proxy instead.
pub const FAST_SOCKETS_CAPACITY: u32 = 65_536;
/// Capacity of the map of reported UDP denials.
pub const DENIED_SENDS_CAPACITY: u32 = 4_096;
/// Size of the event ring in bytes, a power of two of pages. It keeps about 6,000 events of
/// the largest kind for the daemon.
pub const FLOW_EVENTS_SIZE: u32 = 4 << 20;

/// [`VerdictValue::action`] of a verdict that allows the flow.
pub const VERDICT_ALLOW: u8 = 1;
/// [`VerdictValue::action`] of a verdict that denies the flow.
pub const VERDICT_DENY: u8 = 2;

/// [`FlowEvent::kind`] of a flow that a verdict allowed, sent once its addresses are known:
/// at the TCP SYN or at the first UDP datagram. Comes as a [`FlowEventWithOwner`].
pub const EVENT_OPENED: u32 = 1;
/// [`FlowEvent::kind`] of the end of a flow reported as opened, with its bytes. Comes as a
/// [`FlowEvent`].
pub const EVENT_CLOSED: u32 = 2;
/// [`FlowEvent::kind`] of a `connect()` or UDP send that a verdict denied. The source address
/// and port are zero, because the socket may not have them yet. Comes as a
/// [`FlowEventWithOwner`].
pub const EVENT_DENIED: u32 = 3;

/// Set in [`FlowEvent::flags`] of a closed TCP flow that was never established, because the
/// destination refused the connection or the handshake timed out.
pub const EVENT_FLAG_FAILED: u32 = 1 << 0;

/// Seed of [`exe_hash`]: the FNV-1a 64-bit offset basis.
pub const EXE_HASH_SEED: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Settings of the fast path, written by the daemon.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FastPathConfig {
    /// Non-zero while the daemon applies verdicts. At zero every call passes unchanged.
    pub enabled: u32,
    /// Verdicts of other generations are ignored, so one write retires all of them.
    pub generation: u32,
    /// Firewall mark that lets a socket's packets pass the daemon's nftables table.
    pub bypass_mark: u32,
    /// Number of entries in the executable map. At zero the programs skip hashing the path.
    pub executables: u32,
    /// Network namespace cookie of the daemon. Sockets of other namespaces are not diverted
    /// by its table, so the programs leave them alone.
    pub netns_cookie: u64,
}

/// Key of the verdict map: what the daemon's rules match on.
///
/// IPv4 addresses fill the first four bytes of `dst_addr`. IPv4-mapped IPv6 destinations are
/// stored as IPv4, as the rules treat them as the same destination.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VerdictKey {
    /// Id of the executable in the executable map, or zero for every executable that no rule
    /// names and for unknown ones.
    pub exe_id: u32,
    /// Destination port in host byte order.
    pub dst_port: u16,
    /// [`AF_INET`](crate::AF_INET) or [`AF_INET6`](crate::AF_INET6).
    pub family: u8,
    /// [`IPPROTO_TCP`](crate::IPPROTO_TCP) or [`IPPROTO_UDP`].
    pub protocol: u8,
    /// Destination address in network byte order.
    pub dst_addr: [u8; 16],
}

impl VerdictKey {
    /// Creates the key of an IPv4 destination.
    #[inline(always)]
    pub fn ipv4(exe_id: u32, protocol: u8, dst_addr: [u8; 4], dst_port: u16) -> Self {
        let mut key = Self {
            exe_id,
            dst_port,
            family: crate::AF_INET,
            protocol,
            dst_addr: [0; 16],
        };
        key.dst_addr[..4].copy_from_slice(&dst_addr);
        key
    }

    /// Creates the key of an IPv6 destination, or of an IPv4 one if it is IPv4-mapped.
    #[inline(always)]
    pub fn ipv6(exe_id: u32, protocol: u8, dst_addr: [u8; 16], dst_port: u16) -> Self {
        if let Some(v4) = crate::ipv4_mapped(&dst_addr) {
            return Self::ipv4(exe_id, protocol, v4, dst_port);
        }
        Self {
            exe_id,
            dst_port,
            family: crate::AF_INET6,
            protocol,
            dst_addr,
        }
    }
}

/// A verdict of the daemon's rules for one [`VerdictKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerdictValue {
    /// Id of the rule that decided.
    pub rule_id: u64,
    /// [`FastPathConfig::generation`] the verdict belongs to.
    pub generation: u32,
    /// [`VERDICT_ALLOW`] or [`VERDICT_DENY`].
    pub action: u8,
    /// Always zero.
    pub padding: [u8; 3],
}

/// An executable that a rule names, in the form of [`OwnerRecord::exe`], keyed by its
/// [`exe_hash`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExeEntry {
    /// Id used in [`VerdictKey::exe_id`], never zero.
    pub id: u32,
    /// Bytes of `exe` in use.
    pub len: u32,
    /// Path components from the file name up to the root, each ending in NUL, zero-padded.
    pub exe: [u8; EXE_BUF_LEN],
}

/// A socket that a verdict allowed at `connect()`, keyed by its cookie.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FastSocket {
    /// Id of the rule that allowed it.
    pub rule_id: u64,
    /// UDP payload bytes sent. TCP counts come from the socket itself.
    pub bytes_up: u64,
    /// UDP payload bytes received.
    pub bytes_down: u64,
    /// [`IPPROTO_TCP`](crate::IPPROTO_TCP) or [`IPPROTO_UDP`].
    pub protocol: u8,
    /// Non-zero once a TCP segment with FIN left the socket.
    pub fin_sent: u8,
    /// Non-zero once a TCP segment with FIN arrived for the socket.
    pub fin_received: u8,
    /// Always zero.
    pub padding: u8,
    /// Non-zero once the opened event was sent, so that a closed event follows it.
    pub announced: u32,
}

/// Key of the map of reported UDP denials: one socket and one destination.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DeniedSend {
    /// Cookie of the sending socket.
    pub socket_cookie: u64,
    /// The destination and its verdict key.
    pub destination: VerdictKey,
}

/// An event of a flow that the fast path decided.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    /// [`EVENT_OPENED`], [`EVENT_CLOSED`] or [`EVENT_DENIED`].
    pub kind: u32,
    /// `EVENT_FLAG_*` bits.
    pub flags: u32,
    /// Cookie of the socket, which ties a closed event to its opened event.
    pub socket_cookie: u64,
    /// Id of the rule whose verdict applied.
    pub rule_id: u64,
    /// Payload bytes from the client to the destination, in closed events.
    pub bytes_up: u64,
    /// Payload bytes from the destination to the client, in closed events.
    pub bytes_down: u64,
    /// Source address in network byte order.
    pub src_addr: [u8; 16],
    /// Destination address in network byte order.
    pub dst_addr: [u8; 16],
    /// Source port in host byte order.
    pub src_port: u16,
    /// Destination port in host byte order.
    pub dst_port: u16,
    /// [`AF_INET`](crate::AF_INET) or [`AF_INET6`](crate::AF_INET6).
    pub family: u8,
    /// [`IPPROTO_TCP`](crate::IPPROTO_TCP) or [`IPPROTO_UDP`].
    pub protocol: u8,
    /// Always zero.
    pub padding: [u8; 2],
}

impl FlowEvent {
    /// Returns the source and destination ports.
    pub fn ports(&self) -> Ports {
        Ports {
            src: self.src_port,
            dst: self.dst_port,
        }
    }

    /// Returns whether the flow is UDP.
    pub fn is_udp(&self) -> bool {
        self.protocol == IPPROTO_UDP
    }
}

/// An event together with the process that owns the socket.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FlowEventWithOwner {
    /// The event.
    pub event: FlowEvent,
    /// The socket's owner, as recorded at `connect()` or `sendmsg()`.
    pub owner: OwnerRecord,
}

/// Number of 8-byte words in [`OwnerRecord::exe`].
pub const EXE_WORDS: usize = EXE_BUF_LEN / 8;

/// Adds one 8-byte word to a hash that starts at [`EXE_HASH_SEED`]: the FNV-1a step, applied to
/// words instead of bytes.
///
/// The programs hash and compare [`OwnerRecord::exe`] as [`EXE_WORDS`] little-endian words,
/// zeros past the path included, because a loop of fixed length with no exit that depends on
/// the data keeps the verifier's work small. The hash only finds an entry of the executable
/// map: the programs compare the whole path before they use it.
#[inline(always)]
pub const fn exe_hash_word(hash: u64, word: u64) -> u64 {
    (hash ^ word).wrapping_mul(FNV_PRIME)
}

/// Returns the hash of an executable path in the form of [`OwnerRecord::exe`], zero-padded to
/// [`EXE_BUF_LEN`] bytes, as the programs compute it.
pub fn exe_hash(exe: &[u8; EXE_BUF_LEN]) -> u64 {
    exe.chunks_exact(8).fold(EXE_HASH_SEED, |hash, chunk| {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        exe_hash_word(hash, u64::from_le_bytes(word))
    })
}

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<FastPathConfig>(), 4 * 4 + 8);
        assert_eq!(size_of::<VerdictKey>(), 4 + 2 + 1 + 1 + 16);
        assert_eq!(size_of::<VerdictValue>(), 8 + 4 + 1 + 3);
        assert_eq!(size_of::<ExeEntry>(), 4 + 4 + EXE_BUF_LEN);
        assert_eq!(size_of::<FastSocket>(), 3 * 8 + 4 + 4);
        assert_eq!(size_of::<DeniedSend>(), 8 + size_of::<VerdictKey>());
        assert_eq!(
            size_of::<FlowEvent>(),
            4 + 4 + 4 * 8 + 2 * 16 + 2 + 2 + 1 + 1 + 2
        );
        assert_eq!(
            size_of::<FlowEventWithOwner>(),
            size_of::<FlowEvent>() + size_of::<OwnerRecord>()
        );
    }

    #[test]
    fn exe_hash_steps_fnv1a_over_words() {
        let mut exe = [0; EXE_BUF_LEN];
        exe[..8].copy_from_slice(b"curl\0bin");
        let mut expected = exe_hash_word(EXE_HASH_SEED, u64::from_le_bytes(*b"curl\0bin"));
        for _ in 1..EXE_WORDS {
            expected = exe_hash_word(expected, 0);
        }

        assert_eq!(exe_hash(&exe), expected);
        assert_eq!(
            exe_hash_word(EXE_HASH_SEED, 0),
            EXE_HASH_SEED.wrapping_mul(FNV_PRIME)
        );
    }

    #[test]
    fn exe_hash_tells_paths_apart() {
        let mut curl = [0; EXE_BUF_LEN];
        curl[..9].copy_from_slice(b"curl\0bin\0");
        let mut wget = curl;
        wget[..4].copy_from_slice(b"wget");

        assert_ne!(exe_hash(&curl), exe_hash(&wget));
    }

    #[test]
    fn mapped_verdict_key_becomes_ipv4() {
        let mut mapped = [0; 16];
        mapped[10..].copy_from_slice(&[0xff, 0xff, 203, 0, 113, 10]);

        let key = VerdictKey::ipv6(3, crate::IPPROTO_TCP, mapped, 443);

        assert_eq!(
            key,
            VerdictKey::ipv4(3, crate::IPPROTO_TCP, [203, 0, 113, 10], 443)
        );
    }
}
