//! Loading, attaching and querying the BPF programs.

use std::{
    fs::File,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, SockOps,
        cgroup_skb::CgroupSkbLink, cgroup_sock::CgroupSockLink,
        cgroup_sock_addr::CgroupSockAddrLink, links::Link as _, sock_ops::SockOpsLink,
    },
};
use tollgate_classifier_common::{
    COUNTERS_MAP, Counter, EXECUTABLES_MAP, FAST_PATH_CONFIG_MAP, FLOW_EVENTS_MAP, FLOW_OWNER_MAP,
    FlowKey, KERNEL_OFFSETS_MAP, KernelOffsets, OFFSETS_EXE_PATH, OwnerRecord, SOCKET_OWNER_MAP,
    VERDICTS_MAP,
};
use tracing::{debug, warn};

use crate::{
    ClassifierError, FlowLookup, Owner,
    fast_path::{FastPath, FlowEvents},
    flow::current_netns_cookie,
    offsets,
};

/// The BPF object built by this crate's build script.
#[cfg(not(tollgate_ebpf_skipped))]
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/classifier-ebpf"));
/// No object: the build script ran with `AYA_BUILD_SKIP` set.
#[cfg(tollgate_ebpf_skipped)]
static EBPF_OBJECT: &[u8] = &[];

/// The `cgroup/connect*` and `cgroup/sendmsg*` programs, which record socket owners.
const SOCK_ADDR_PROGRAMS: [&str; 4] = ["connect4", "connect6", "sendmsg4", "sendmsg6"];
const SOCK_OPS_PROGRAM: &str = "sock_ops";
const EGRESS_PROGRAM: &str = "egress";
const INGRESS_PROGRAM: &str = "ingress";
const SOCK_RELEASE_PROGRAM: &str = "sock_release";

/// Tollgate's BPF programs attached to one cgroup, and the maps they fill.
///
/// Every TCP connection and UDP datagram sent by a socket created in that cgroup or below it
/// gets a flow entry naming its process. A socket created before the programs were attached,
/// or while its process was in another cgroup, is not covered, and neither are sockets in
/// other cgroups. Dropping the value detaches all programs, and the kernel frees the maps once no
/// other file descriptor refers to them.
///
/// Needs Linux 5.14 or later (`SO_NETNS_COOKIE`) and root. Running with only `CAP_BPF`,
/// `CAP_NET_ADMIN` and `CAP_PERFMON` may work but is untested.
pub struct Classifier {
    links: Vec<(&'static str, AttachedLink)>,
    flow_owner: HashMap<MapData, FlowKey, OwnerRecord>,
    socket_owner: HashMap<MapData, u64, OwnerRecord>,
    counters: PerCpuArray<MapData, u64>,
    fast_path: Option<FastPath>,
    flow_events: Option<FlowEvents>,
    lookup_misses: AtomicU64,
    offsets: KernelOffsets,
    cgroup_path: PathBuf,
}

impl Classifier {
    /// Loads the embedded BPF object, gives it the running kernel's struct offsets and attaches
    /// its programs to the cgroup2 directory `cgroup_path`.
    ///
    /// Attach to [`cgroup2_root`](crate::cgroup2_root) to cover the whole machine. If the
    /// kernel's BTF is unavailable the programs still record pid, uid, gid, comm and cgroup,
    /// and [`Owner::exe`] is `None`. A warning is logged.
    pub fn load_and_attach(cgroup_path: &Path) -> Result<Self, ClassifierError> {
        if EBPF_OBJECT.is_empty() {
            return Err(ClassifierError::ObjectNotBuilt);
        }
        let offsets = offsets::running_kernel_offsets();
        let mut ebpf = EbpfLoader::new()
            .load(EBPF_OBJECT)
            .map_err(ClassifierError::LoadObject)?;
        write_offsets(&mut ebpf, offsets)?;

        let cgroup = File::open(cgroup_path).map_err(|source| ClassifierError::OpenCgroup {
            path: cgroup_path.to_owned(),
            source,
        })?;
        let links = attach_programs(&mut ebpf, &cgroup, cgroup_path)?;
        debug!(cgroup = %cgroup_path.display(), offsets = offsets.flags, "classifier attached");

        // The links hold the programs in the kernel, so `ebpf` may go once the maps are out.
        let fast_path = FastPath::new(
            take_map(&mut ebpf, FAST_PATH_CONFIG_MAP)?,
            take_map(&mut ebpf, VERDICTS_MAP)?,
            take_map(&mut ebpf, EXECUTABLES_MAP)?,
        );
        Ok(Self {
            links,
            flow_owner: take_map(&mut ebpf, FLOW_OWNER_MAP)?,
            socket_owner: take_map(&mut ebpf, SOCKET_OWNER_MAP)?,
            counters: take_map(&mut ebpf, COUNTERS_MAP)?,
            fast_path: Some(fast_path),
            flow_events: Some(FlowEvents::new(take_map(&mut ebpf, FLOW_EVENTS_MAP)?)),
            lookup_misses: AtomicU64::new(0),
            offsets,
            cgroup_path: cgroup_path.to_owned(),
        })
    }

    /// Returns the process that sent `flow`, or `None` if no entry exists.
    ///
    /// The entry exists from the moment the client's SYN or datagram left its socket, before
    /// `accept()` or `recvmsg()` returns, and outlives the process and the socket until the
    /// flow map evicts it (least recently used first, after
    /// [`FLOW_OWNER_CAPACITY`](tollgate_classifier_common::FLOW_OWNER_CAPACITY) newer flows).
    /// A later flow with the same addresses, ports and namespace replaces the entry, as when a
    /// new UDP socket gets the source port of an earlier one, so look a flow up when it is
    /// accepted or received. Each `None` adds one to [`Counters::lookup_misses`].
    pub fn lookup(&self, flow: &FlowLookup) -> Option<Owner> {
        let netns_cookie = match flow.netns_cookie {
            Some(cookie) => cookie,
            None => match current_netns_cookie() {
                Ok(cookie) => cookie,
                Err(error) => {
                    debug!(%error, "failed to read the network namespace cookie");
                    self.lookup_misses.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
            },
        };
        match self.flow_owner.get(&flow.key(netns_cookie), 0) {
            Ok(record) => Some(Owner::from_record(&record)),
            Err(error) => {
                if !matches!(error, MapError::KeyNotFound) {
                    debug!(%error, ?flow, "flow map lookup failed");
                }
                self.lookup_misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Takes the fast path's verdict maps, which the programs leave alone until
    /// [`FastPath::enable`] is called. Returns `None` after the first call.
    pub fn take_fast_path(&mut self) -> Option<FastPath> {
        self.fast_path.take()
    }

    /// Takes the fast path's event ring. Returns `None` after the first call.
    pub fn take_flow_events(&mut self) -> Option<FlowEvents> {
        self.flow_events.take()
    }

    /// Returns the event counters, summed over all CPUs.
    pub fn counters(&self) -> Result<Counters, ClassifierError> {
        let read = |counter: Counter| -> Result<u64, ClassifierError> {
            let values =
                self.counters
                    .get(&(counter as u32), 0)
                    .map_err(|source| ClassifierError::Map {
                        name: COUNTERS_MAP,
                        source,
                    })?;
            Ok(values.iter().sum())
        };
        Ok(Counters {
            sockets_recorded: read(Counter::SocketRecorded)?,
            flows_recorded: read(Counter::FlowRecorded)?,
            socket_record_missing: read(Counter::SocketRecordMissing)?,
            socket_update_failed: read(Counter::SocketUpdateFailed)?,
            flow_update_failed: read(Counter::FlowUpdateFailed)?,
            packets_unparsed: read(Counter::PacketUnparsed)?,
            exe_paths_truncated: read(Counter::ExePathTruncated)?,
            kernel_allowed: read(Counter::KernelAllowed)?,
            kernel_denied: read(Counter::KernelDenied)?,
            flow_events_lost: read(Counter::FlowEventLost)?,
            fast_sockets_rejected: read(Counter::FastSocketRejected)?,
            lookup_misses: self.lookup_misses.load(Ordering::Relaxed),
        })
    }

    /// Returns how many open sockets currently have an owner record.
    ///
    /// Records are deleted when their socket is released, so this falls back to its previous
    /// value once the sockets are closed.
    pub fn tracked_socket_count(&self) -> usize {
        self.socket_owner.keys().filter(Result::is_ok).count()
    }

    /// Returns whether the programs can read executable paths, which needs the kernel's BTF.
    pub fn has_exe_paths(&self) -> bool {
        self.offsets.flags & OFFSETS_EXE_PATH != 0
    }

    /// Returns the cgroup the programs are attached to.
    pub fn cgroup_path(&self) -> &Path {
        &self.cgroup_path
    }
}

impl Drop for Classifier {
    fn drop(&mut self) {
        for (name, link) in self.links.drain(..) {
            if let Err(error) = link.detach() {
                warn!(program = name, %error, "failed to detach program");
            }
        }
        debug!(cgroup = %self.cgroup_path.display(), "classifier detached");
    }
}

/// Event counters of the BPF programs, summed over all CPUs since loading.
///
/// The flow and socket maps are LRU maps, which evict silently when full: more than
/// [`FLOW_OWNER_CAPACITY`](tollgate_classifier_common::FLOW_OWNER_CAPACITY) flows recorded
/// between a flow's packet and its lookup shows up only as a lookup miss.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Socket owner records written.
    pub sockets_recorded: u64,
    /// Flow entries written.
    pub flows_recorded: u64,
    /// Flows whose socket had no owner record: it was created before the programs were
    /// attached or outside the cgroup, or its record was evicted.
    pub socket_record_missing: u64,
    /// Failed socket map updates.
    pub socket_update_failed: u64,
    /// Failed flow map updates.
    pub flow_update_failed: u64,
    /// Outgoing packets whose IP or transport header could not be read.
    pub packets_unparsed: u64,
    /// Executable paths that did not fit in a record. Their owners have no `exe`.
    pub exe_paths_truncated: u64,
    /// `connect()` calls that a fast path verdict allowed.
    pub kernel_allowed: u64,
    /// `connect()` calls and UDP sends that a fast path verdict denied.
    pub kernel_denied: u64,
    /// Fast path events lost because the event ring was full.
    pub flow_events_lost: u64,
    /// `connect()` calls that a verdict allowed but that took the path through the proxy,
    /// because the fast socket map was full or the mark could not be set.
    pub fast_sockets_rejected: u64,
    /// Calls of [`Classifier::lookup`] that returned `None`.
    pub lookup_misses: u64,
}

/// A link owned by the classifier, which detaches its program when dropped or detached.
enum AttachedLink {
    SockAddr(CgroupSockAddrLink),
    SockOps(SockOpsLink),
    Skb(CgroupSkbLink),
    Sock(CgroupSockLink),
}

impl AttachedLink {
    fn detach(self) -> Result<(), aya::programs::ProgramError> {
        match self {
            Self::SockAddr(link) => link.detach(),
            Self::SockOps(link) => link.detach(),
            Self::Skb(link) => link.detach(),
            Self::Sock(link) => link.detach(),
        }
    }
}

fn write_offsets(ebpf: &mut Ebpf, offsets: KernelOffsets) -> Result<(), ClassifierError> {
    let map_error = |source| ClassifierError::Map {
        name: KERNEL_OFFSETS_MAP,
        source,
    };
    let map = ebpf
        .map_mut(KERNEL_OFFSETS_MAP)
        .ok_or(ClassifierError::MapNotFound {
            name: KERNEL_OFFSETS_MAP,
        })?;
    let mut array: Array<_, KernelOffsets> = Array::try_from(map).map_err(map_error)?;
    array.set(0, offsets, 0).map_err(map_error)
}

fn take_map<M>(ebpf: &mut Ebpf, name: &'static str) -> Result<M, ClassifierError>
where
    M: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(ClassifierError::MapNotFound { name })?;
    M::try_from(map).map_err(|source| ClassifierError::Map { name, source })
}

/// Loads and attaches every program, socket recorders first so that flows find their record.
///
/// On error the links made so far are dropped, which detaches them.
fn attach_programs(
    ebpf: &mut Ebpf,
    cgroup: &File,
    cgroup_path: &Path,
) -> Result<Vec<(&'static str, AttachedLink)>, ClassifierError> {
    let attach_error = |name, source| ClassifierError::AttachProgram {
        name,
        path: cgroup_path.to_owned(),
        source,
    };
    // Cgroup links are always multi-attach, and aya's `Single` mode passes no flags, which is
    // what `bpf_link_create` expects. `AllowMultiple` makes it fail with EINVAL.
    let mode = CgroupAttachMode::Single;
    let mut links = Vec::new();

    let program: &mut CgroupSock = loaded_program(ebpf, SOCK_RELEASE_PROGRAM)?;
    let link = program
        .attach(cgroup, mode)
        .and_then(|id| program.take_link(id))
        .map_err(|source| attach_error(SOCK_RELEASE_PROGRAM, source))?;
    links.push((SOCK_RELEASE_PROGRAM, AttachedLink::Sock(link)));

    for name in SOCK_ADDR_PROGRAMS {
        let program: &mut CgroupSockAddr = loaded_program(ebpf, name)?;
        let link = program
            .attach(cgroup, mode)
            .and_then(|id| program.take_link(id))
            .map_err(|source| attach_error(name, source))?;
        links.push((name, AttachedLink::SockAddr(link)));
    }

    let program: &mut SockOps = loaded_program(ebpf, SOCK_OPS_PROGRAM)?;
    let link = program
        .attach(cgroup, mode)
        .and_then(|id| program.take_link(id))
        .map_err(|source| attach_error(SOCK_OPS_PROGRAM, source))?;
    links.push((SOCK_OPS_PROGRAM, AttachedLink::SockOps(link)));

    let program: &mut CgroupSkb = loaded_program(ebpf, EGRESS_PROGRAM)?;
    let link = program
        .attach(cgroup, CgroupSkbAttachType::Egress, mode)
        .and_then(|id| program.take_link(id))
        .map_err(|source| attach_error(EGRESS_PROGRAM, source))?;
    links.push((EGRESS_PROGRAM, AttachedLink::Skb(link)));

    let program: &mut CgroupSkb = loaded_program(ebpf, INGRESS_PROGRAM)?;
    let link = program
        .attach(cgroup, CgroupSkbAttachType::Ingress, mode)
        .and_then(|id| program.take_link(id))
        .map_err(|source| attach_error(INGRESS_PROGRAM, source))?;
    links.push((INGRESS_PROGRAM, AttachedLink::Skb(link)));

    Ok(links)
}

/// Returns the program `name` as type `P`, loaded into the kernel.
fn loaded_program<'a, P>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut P, ClassifierError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
    P: LoadProgram + 'a,
{
    let program = ebpf
        .program_mut(name)
        .ok_or(ClassifierError::ProgramNotFound { name })?;
    let program: &mut P = program
        .try_into()
        .map_err(|source| ClassifierError::LoadProgram { name, source })?;
    program
        .load()
        .map_err(|source| ClassifierError::LoadProgram { name, source })?;
    Ok(program)
}

/// The `load()` method that aya's program types share without a common trait.
trait LoadProgram {
    fn load(&mut self) -> Result<(), aya::programs::ProgramError>;
}

macro_rules! impl_load_program {
    ($($program:ty),+) => {
        $(impl LoadProgram for $program {
            fn load(&mut self) -> Result<(), aya::programs::ProgramError> {
                <$program>::load(self)
            }
        })+
    };
}

impl_load_program!(CgroupSockAddr, SockOps, CgroupSkb, CgroupSock);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifier_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}

        assert_send_sync::<Classifier>();
    }
}
