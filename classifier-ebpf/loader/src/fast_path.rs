//! The fast path: verdicts that the BPF programs apply at `connect()` and `sendmsg()`, and the
//! events of the flows they decided.
//!
//! [`FastPath`] writes the verdicts and settings the programs read. A socket that connects to
//! a destination with an allow verdict gets the bypass mark, so the daemon's nftables table
//! lets it pass without diverting it. A connect to a destination with a deny verdict fails
//! with `EPERM`.
//! [`FlowEvents`] reads what the programs report about these sockets: the start of each
//! allowed flow, its end with the bytes it moved, and each denial.

use std::{
    collections::{HashMap as StdHashMap, HashSet},
    ffi::OsStr,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Component, Path, PathBuf},
};

use aya::maps::{Array, HashMap, MapData, MapError, RingBuf};
use tollgate_classifier_common::{
    AF_INET, AF_INET6, EVENT_CLOSED, EVENT_DENIED, EVENT_FLAG_FAILED, EVENT_OPENED, EXE_BUF_LEN,
    EXE_COMPONENT_MAX, EXE_OFFSET_LIMIT, EXE_WALK_STEPS, EXECUTABLES_MAP, ExeEntry,
    FAST_PATH_CONFIG_MAP, FastPathConfig, FlowEvent, FlowEventWithOwner, IPPROTO_TCP, IPPROTO_UDP,
    VERDICT_ALLOW, VERDICT_DENY, VERDICTS_MAP, VerdictKey, VerdictValue, exe_hash,
};

use crate::{ClassifierError, Owner, Protocol};

pub use tollgate_classifier_common::FAST_SOCKETS_CAPACITY;

/// The maps through which the daemon hands its verdicts to the BPF programs.
///
/// Verdicts belong to a generation: [`FastPath::reset`] starts a new one, which retires every
/// earlier verdict at once, because the programs ignore verdicts of other generations.
pub struct FastPath {
    config_map: Array<MapData, FastPathConfig>,
    config: FastPathConfig,
    verdicts: HashMap<MapData, VerdictKey, VerdictValue>,
    executables: HashMap<MapData, u64, ExeEntry>,
    /// Executables the last reset named, including those the programs cannot record whole.
    named: HashSet<PathBuf>,
    /// Executables in the executable map: id and path hash.
    executable_ids: StdHashMap<PathBuf, (u32, u64)>,
    next_executable_id: u32,
}

/// A verdict for the flows of one executable to one destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelVerdict {
    /// [`FastPath::executable_id`] of the executable, or zero for every executable the
    /// executable map does not contain, including unknown ones.
    pub executable_id: u32,
    /// Transport protocol.
    pub protocol: Protocol,
    /// Destination address and port.
    pub destination: SocketAddr,
    /// Whether the flows are allowed; `false` denies them.
    pub allow: bool,
    /// Id of the rule that decided, reported in the events.
    pub rule_id: u64,
}

impl FastPath {
    pub(crate) fn new(
        config_map: Array<MapData, FastPathConfig>,
        verdicts: HashMap<MapData, VerdictKey, VerdictValue>,
        executables: HashMap<MapData, u64, ExeEntry>,
    ) -> Self {
        Self {
            config_map,
            config: FastPathConfig::default(),
            verdicts,
            executables,
            named: HashSet::new(),
            executable_ids: StdHashMap::new(),
            next_executable_id: 1,
        }
    }

    /// Starts applying verdicts to sockets of the network namespace `netns_cookie`. Allowed
    /// sockets get `bypass_mark` added to their mark.
    pub fn enable(&mut self, bypass_mark: u32, netns_cookie: u64) -> Result<(), ClassifierError> {
        self.config.enabled = 1;
        self.config.bypass_mark = bypass_mark;
        self.config.netns_cookie = netns_cookie;
        self.write_config()
    }

    /// Stops applying verdicts. Sockets allowed earlier keep their mark, and their events still
    /// come.
    pub fn disable(&mut self) -> Result<(), ClassifierError> {
        self.config.enabled = 0;
        self.write_config()
    }

    /// Retires every verdict and makes `executables` the executables that verdicts may name.
    ///
    /// Paths the programs cannot record whole (more than 40 components, a component longer
    /// than 255 bytes, or components that start past byte 255 of the record) are left out:
    /// the programs see such executables as unknown. [`FastPath::executable_id`] returns
    /// `None` for them.
    pub fn reset<'a>(
        &mut self,
        executables: impl IntoIterator<Item = &'a Path>,
    ) -> Result<(), ClassifierError> {
        let named: Vec<&Path> = executables.into_iter().collect();
        self.named = named.iter().map(|path| path.to_path_buf()).collect();

        // New executables first: until the generation changes, their ids have no verdicts,
        // so their flows take the path through the proxy, as they should.
        for &path in &named {
            if self.executable_ids.contains_key(path) {
                continue;
            }
            let Some(record) = exe_record(path) else {
                continue;
            };
            let id = self.next_executable_id;
            let hash = exe_hash(&record.exe);
            let entry = ExeEntry { id, ..record };
            self.executables
                .insert(hash, entry, 0)
                .map_err(map_error(EXECUTABLES_MAP))?;
            self.next_executable_id += 1;
            self.executable_ids.insert(path.to_owned(), (id, hash));
        }

        self.config.generation = self.config.generation.wrapping_add(1);
        self.config.executables = self.executable_ids.len() as u32;
        self.write_config()?;

        // Executables no longer named go last, once no current verdict names their ids.
        let stale: Vec<PathBuf> = self
            .executable_ids
            .keys()
            .filter(|path| !named.contains(&path.as_path()))
            .cloned()
            .collect();
        for path in stale {
            if let Some((_, hash)) = self.executable_ids.remove(&path) {
                match self.executables.remove(&hash) {
                    Ok(()) | Err(MapError::KeyNotFound) => {}
                    Err(source) => return Err(map_error(EXECUTABLES_MAP)(source)),
                }
            }
        }
        self.config.executables = self.executable_ids.len() as u32;
        self.write_config()
    }

    /// Returns the id of `executable` in verdicts: its own id if the last
    /// [`FastPath::reset`] named it, or `None` if it named it but the programs cannot record
    /// the path whole, so no verdict can name it. Returns `Some(0)` for every other executable
    /// and for an unknown one.
    pub fn executable_id(&self, executable: Option<&Path>) -> Option<u32> {
        match executable {
            Some(path) if self.named.contains(path) => {
                self.executable_ids.get(path).map(|(id, _)| *id)
            }
            _ => Some(0),
        }
    }

    /// Adds `verdict` to the current generation. The map evicts the least recently used
    /// verdicts when it is full; their flows then take the path through the proxy.
    pub fn insert(&mut self, verdict: &KernelVerdict) -> Result<(), ClassifierError> {
        let key = verdict_key(verdict);
        let value = VerdictValue {
            rule_id: verdict.rule_id,
            generation: self.config.generation,
            action: if verdict.allow {
                VERDICT_ALLOW
            } else {
                VERDICT_DENY
            },
            padding: [0; 3],
        };
        self.verdicts
            .insert(key, value, 0)
            .map_err(map_error(VERDICTS_MAP))
    }

    /// Returns the number of verdicts in the map, of all generations.
    pub fn verdict_count(&self) -> usize {
        self.verdicts.keys().filter(Result::is_ok).count()
    }

    fn write_config(&mut self) -> Result<(), ClassifierError> {
        self.config_map
            .set(0, self.config, 0)
            .map_err(map_error(FAST_PATH_CONFIG_MAP))
    }
}

/// The event ring of the fast path.
///
/// Wait for its descriptor to become readable, as with `tokio::io::unix::AsyncFd`, then call
/// [`FlowEvents::next_event`] until it returns `None`.
pub struct FlowEvents {
    ring: RingBuf<MapData>,
}

/// An event of a flow that the fast path decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelEvent {
    /// A verdict allowed the flow, whose addresses are now known.
    Opened {
        /// Cookie of the socket, which the closed event repeats.
        socket_cookie: u64,
        /// Transport protocol.
        protocol: Protocol,
        /// Source address and port.
        source: SocketAddr,
        /// Destination address and port.
        destination: SocketAddr,
        /// Id of the rule whose verdict allowed it.
        rule_id: u64,
        /// The process that owns the socket.
        owner: Owner,
    },
    /// An opened flow ended.
    Closed {
        /// Cookie of the socket.
        socket_cookie: u64,
        /// Payload bytes from the client to the destination.
        bytes_up: u64,
        /// Payload bytes from the destination to the client.
        bytes_down: u64,
        /// Whether the TCP connection ended before it was established.
        failed: bool,
    },
    /// A verdict denied a `connect()` or a UDP send. UDP denials are reported once per socket
    /// and destination.
    Denied {
        /// Transport protocol.
        protocol: Protocol,
        /// Destination address and port.
        destination: SocketAddr,
        /// Id of the rule whose verdict denied it.
        rule_id: u64,
        /// The process that owns the socket.
        owner: Owner,
    },
}

impl FlowEvents {
    pub(crate) fn new(ring: RingBuf<MapData>) -> Self {
        Self { ring }
    }

    /// Returns the next event, `None` when the ring is empty. A record that cannot be parsed,
    /// which only a mismatch between the programs and this crate could cause, is skipped.
    pub fn next_event(&mut self) -> Option<KernelEvent> {
        loop {
            let item = self.ring.next()?;
            if let Some(event) = parse_event(&item) {
                return Some(event);
            }
            tracing::debug!(len = item.len(), "skipped an unknown fast path event");
        }
    }
}

impl AsFd for FlowEvents {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }
}

impl AsRawFd for FlowEvents {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}

fn parse_event(bytes: &[u8]) -> Option<KernelEvent> {
    let event: FlowEvent = read_record(bytes)?;
    let protocol = match event.protocol {
        IPPROTO_TCP => Protocol::Tcp,
        IPPROTO_UDP => Protocol::Udp,
        _ => return None,
    };
    match event.kind {
        EVENT_CLOSED => Some(KernelEvent::Closed {
            socket_cookie: event.socket_cookie,
            bytes_up: event.bytes_up,
            bytes_down: event.bytes_down,
            failed: event.flags & EVENT_FLAG_FAILED != 0,
        }),
        EVENT_OPENED => {
            let record: FlowEventWithOwner = read_record(bytes)?;
            Some(KernelEvent::Opened {
                socket_cookie: event.socket_cookie,
                protocol,
                source: socket_address(event.family, &event.src_addr, event.src_port)?,
                destination: socket_address(event.family, &event.dst_addr, event.dst_port)?,
                rule_id: event.rule_id,
                owner: Owner::from_record(&record.owner),
            })
        }
        EVENT_DENIED => {
            let record: FlowEventWithOwner = read_record(bytes)?;
            Some(KernelEvent::Denied {
                protocol,
                destination: socket_address(event.family, &event.dst_addr, event.dst_port)?,
                rule_id: event.rule_id,
                owner: Owner::from_record(&record.owner),
            })
        }
        _ => None,
    }
}

/// Copies a `T` from the start of `bytes`, or returns `None` if `bytes` is shorter.
fn read_record<T: aya::Pod>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: `bytes` contains at least `size_of::<T>()` bytes, `T` is plain data that accepts
    // every bit pattern, and the read makes no alignment assumption.
    Some(unsafe { bytes.as_ptr().cast::<T>().read_unaligned() })
}

fn socket_address(family: u8, address: &[u8; 16], port: u16) -> Option<SocketAddr> {
    let ip = match family {
        AF_INET => IpAddr::V4(Ipv4Addr::new(
            address[0], address[1], address[2], address[3],
        )),
        AF_INET6 => IpAddr::V6(Ipv6Addr::from(*address)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

fn verdict_key(verdict: &KernelVerdict) -> VerdictKey {
    let protocol = match verdict.protocol {
        Protocol::Tcp => IPPROTO_TCP,
        Protocol::Udp => IPPROTO_UDP,
    };
    let port = verdict.destination.port();
    match verdict.destination.ip() {
        IpAddr::V4(address) => {
            VerdictKey::ipv4(verdict.executable_id, protocol, address.octets(), port)
        }
        IpAddr::V6(address) => {
            VerdictKey::ipv6(verdict.executable_id, protocol, address.octets(), port)
        }
    }
}

/// Encodes `path` as the programs record an executable: components from the file name up to
/// the root, each followed by NUL. Returns `None` for a path the programs cannot record whole,
/// and for a relative one or one with `..` components, which a recorded path never is.
pub fn exe_record(path: &Path) -> Option<ExeEntry> {
    if !path.is_absolute() {
        return None;
    }
    let mut components = Vec::new();
    for component in path.components() {
        match component {
            Component::RootDir => {}
            Component::Normal(name) => components.push(name),
            Component::Prefix(_) | Component::CurDir | Component::ParentDir => return None,
        }
    }
    if components.is_empty() || components.len() > EXE_WALK_STEPS as usize {
        return None;
    }

    let mut entry = ExeEntry {
        id: 0,
        len: 0,
        exe: [0; EXE_BUF_LEN],
    };
    let mut offset = 0usize;
    for name in components.iter().rev().map(|name: &&OsStr| name.as_bytes()) {
        let stored = name.len() + 1;
        if offset >= EXE_OFFSET_LIMIT as usize || stored > EXE_COMPONENT_MAX as usize {
            return None;
        }
        entry.exe[offset..offset + name.len()].copy_from_slice(name);
        offset += stored;
    }
    entry.len = offset as u32;
    Some(entry)
}

fn map_error(name: &'static str) -> impl Fn(MapError) -> ClassifierError {
    move |source| ClassifierError::Map { name, source }
}

#[cfg(test)]
mod tests {
    use tollgate_classifier_common::{OWNER_EXE_COMPLETE, OWNER_TASK_FIELDS, OwnerRecord};

    use super::*;

    #[test]
    fn record_lists_components_leaf_first() {
        let entry = exe_record(Path::new("/usr/bin/python3.11")).unwrap();

        assert_eq!(&entry.exe[..entry.len as usize], b"python3.11\0bin\0usr\0");
    }

    #[test]
    fn record_matches_owner_path() {
        let entry = exe_record(Path::new("/usr/bin/curl")).unwrap();
        let mut owner = owner_record();
        owner.exe[..entry.len as usize].copy_from_slice(&entry.exe[..entry.len as usize]);
        owner.exe_len = entry.len;

        let path = Owner::from_record(&owner).exe;

        assert_eq!(path.as_deref(), Some(Path::new("/usr/bin/curl")));
    }

    #[test]
    fn record_rejects_parent_components() {
        assert!(exe_record(Path::new("/usr/lib/../bin/curl")).is_none());
        assert!(exe_record(Path::new("relative/curl")).is_none());
    }

    #[test]
    fn record_rejects_path_past_offset_limit() {
        // Leaf first, "z" would start at byte 302.
        let deep = format!("/z/{}/{}", "a".repeat(200), "b".repeat(100));

        assert!(exe_record(Path::new(&deep)).is_none());
        assert!(exe_record(Path::new(&format!("/{}", "c".repeat(256)))).is_none());
        assert!(exe_record(Path::new("/")).is_none());
    }

    #[test]
    fn record_accepts_longest_component() {
        let path = format!("/{}", "c".repeat(255));

        assert_eq!(exe_record(Path::new(&path)).unwrap().len, 256);
    }

    #[test]
    fn verdict_key_maps_ipv4_in_ipv6() {
        let verdict = |destination: &str| KernelVerdict {
            executable_id: 2,
            protocol: Protocol::Udp,
            destination: destination.parse().unwrap(),
            allow: true,
            rule_id: 9,
        };

        assert_eq!(
            verdict_key(&verdict("[::ffff:203.0.113.10]:53")),
            verdict_key(&verdict("203.0.113.10:53"))
        );
        assert_eq!(verdict_key(&verdict("[2001:db8::1]:53")).family, AF_INET6);
    }

    #[test]
    fn closed_event_is_parsed() {
        let event = FlowEvent {
            kind: EVENT_CLOSED,
            flags: EVENT_FLAG_FAILED,
            socket_cookie: 77,
            bytes_up: 5,
            bytes_down: 6,
            protocol: IPPROTO_TCP,
            ..FlowEvent::default()
        };

        let parsed = parse_event(bytes_of(&event));

        assert_eq!(
            parsed,
            Some(KernelEvent::Closed {
                socket_cookie: 77,
                bytes_up: 5,
                bytes_down: 6,
                failed: true,
            })
        );
    }

    #[test]
    fn opened_event_has_addresses_and_owner() {
        let mut event = FlowEventWithOwner {
            event: FlowEvent {
                kind: EVENT_OPENED,
                socket_cookie: 77,
                rule_id: 3,
                src_port: 40000,
                dst_port: 443,
                family: AF_INET,
                protocol: IPPROTO_TCP,
                ..FlowEvent::default()
            },
            owner: owner_record(),
        };
        event.event.src_addr[..4].copy_from_slice(&[10, 77, 0, 2]);
        event.event.dst_addr[..4].copy_from_slice(&[203, 0, 113, 10]);

        let Some(KernelEvent::Opened {
            source,
            destination,
            rule_id,
            owner,
            ..
        }) = parse_event(bytes_of(&event))
        else {
            panic!("not an opened event");
        };

        assert_eq!(source, "10.77.0.2:40000".parse().unwrap());
        assert_eq!(destination, "203.0.113.10:443".parse().unwrap());
        assert_eq!(rule_id, 3);
        assert_eq!(owner.pid, 100);
    }

    #[test]
    fn truncated_opened_event_is_skipped() {
        let event = FlowEvent {
            kind: EVENT_OPENED,
            family: AF_INET,
            protocol: IPPROTO_TCP,
            ..FlowEvent::default()
        };

        assert_eq!(parse_event(bytes_of(&event)), None);
    }

    fn owner_record() -> OwnerRecord {
        OwnerRecord {
            pid: 100,
            tid: 100,
            ppid: 1,
            uid: 0,
            gid: 0,
            flags: OWNER_TASK_FIELDS | OWNER_EXE_COMPLETE,
            cgroup_id: 1,
            socket_cookie: 77,
            netns_cookie: 1,
            start_time_ns: 0,
            comm: [0; 16],
            exe_len: 0,
            padding: 0,
            exe: [0; EXE_BUF_LEN],
        }
    }

    fn bytes_of<T>(value: &T) -> &[u8] {
        // SAFETY: `value` is a live `T`, read as its `size_of::<T>()` bytes; the types used
        // here have no uninitialized padding.
        unsafe { std::slice::from_raw_parts((value as *const T).cast(), size_of::<T>()) }
    }
}
