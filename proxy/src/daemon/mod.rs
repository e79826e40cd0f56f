//! The daemon: accepts diverted TCP connections, holds them until a verdict, relays or resets
//! them, and serves the control socket. UDP flows go through the same verdicts in [`crate::udp`].
//!
//! [`rule_requests`] carries out the control requests that change or read rules, and
//! [`maintenance`] removes rules whose lifetime ended and saves hit counts.

mod local_stub;
mod maintenance;
mod rule_requests;

use std::{
    future::Future,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Instant, SystemTime},
};

use anyhow::Context as _;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{broadcast, oneshot},
};
use tollgate_classifier::Classifier;
use tollgate_resolver::{
    DnsServer, Hooks, NameMap, UpstreamConfig, resolv_conf, sockets::ListenConfig,
};
use tollgate_rules::{Action, AddressMatch, Lifetime, PortMatch, Protocol, ProtocolMatch, RuleSet};
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::{
    attribution::{KernelAttribution, NoAttribution, OwnerLookup},
    audit::{FlowIdentity, FlowLog},
    clock,
    config::{Config, Mode},
    control::{self, ControlListener},
    counting::CountingStream,
    fast_path::{self, FastPath},
    firewall::{DnsSpec, HEARTBEAT_INTERVAL, Interception, KernelAllow},
    holding::{NewHold, PendingTable, Verdict, unix_ms},
    naming::{self, DaemonAskers, Naming},
    policy::{FlowFacts, Policy},
    protocol::{
        ConnectionInfo, DecidedBy, ErrorCode, Event, EventKind, Expected, NameMapStatus,
        PendingInfo, ProcessInfo, Response, StatusInfo,
    },
    rule_book::RuleBook,
    tracking::{ByteCounters, ConnectionTable},
    transparent, udp,
};
use rule_requests::connection_facts;

/// Number of events buffered for each watcher before it starts missing some.
const EVENT_BUFFER: usize = 4096;

/// How often the attribution counters are checked.
const COUNTER_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// Size of each relay buffer, per direction.
const RELAY_BUFFER: usize = 64 * 1024;

/// Runs the daemon until `shutdown` completes, then removes the interception and the control
/// socket.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let rules_path = config.rules_db_path();
    let book = RuleBook::open(&rules_path, clock::boot_id().as_deref(), &clock::now())
        .with_context(|| format!("failed to load rules from {}", rules_path.display()))?;
    info!(rules = book.rules().len(), path = %rules_path.display(), "rules loaded");
    let policy = match &config.policy {
        Some(path) => {
            let policy = Policy::load(path)?;
            info!(entries = policy.entries().len(), path = %path.display(), "policy loaded");
            Some(policy)
        }
        None => None,
    };
    let flow_log = match config.flow_log_path() {
        Some(path) => {
            let log = FlowLog::open(&path)
                .with_context(|| format!("failed to open flow log {}", path.display()))?;
            info!(path = %path.display(), "writing flow log");
            Some(log)
        }
        None => None,
    };
    info!(mode = %config.mode, "deciding flows");

    let allowed_uids = control::allowed_uids(config.desktop_user.as_deref())?;
    let listeners = bind_listeners(&config)?;
    let udp_listeners = udp::bind_listeners(&config)?;
    let attribution = load_attribution(&config);
    let owners = attribution.owners;
    let classifier_counters = attribution.counters;
    let refusals = Arc::new(RefusalPolicy::default());
    let dns = start_resolver(&config, Arc::clone(&owners), Arc::clone(&refusals))?;
    let dns_spec = dns
        .as_ref()
        .map(|(_, upstreams)| dns_spec(&config, upstreams));
    let dns = dns.map(|(server, _)| server);
    // In enforce mode only the policy allows, so no rule may let traffic pass on its own.
    let allowed = match config.mode {
        Mode::Enforce => Vec::new(),
        Mode::Interactive | Mode::Audit => kernel_allows(book.rules()),
    };
    let interception = if config.interception.enabled {
        Some(
            Interception::install(&config.interception, dns_spec.clone(), &allowed)
                .await
                .context("failed to install interception")?,
        )
    } else {
        warn!("interception disabled in config; only connections sent to the listeners are seen");
        None
    };
    // The control socket appears last, so a client that reaches it finds traffic intercepted.
    let control = match ControlListener::bind(&config.control_socket, allowed_uids) {
        Ok(control) => control,
        Err(err) => {
            if let Some(interception) = interception
                && let Err(remove_err) = interception.remove().await
            {
                error!(error = %error_chain(&remove_err), "failed to remove interception");
            }
            return Err(err);
        }
    };

    let (fast_path, flow_events) =
        start_fast_path(&config, attribution.kernel, &interception, &book);
    let names = dns.as_ref().map(DnsServer::names);
    let decisions = Decisions { policy, flow_log };
    let shared = Arc::new(Shared::new(
        config,
        book,
        interception,
        owners,
        decisions,
        (names, dns_spec),
        fast_path,
    ));
    refusals.bind(&shared);
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(counters) = classifier_counters {
        tasks.spawn(counters);
    }
    if let Some((events, attribution)) = flow_events {
        tasks.spawn(fast_path::serve_events(
            Arc::clone(&shared),
            events,
            attribution,
        ));
    }
    for listener in listeners {
        tasks.spawn(accept_loop(Arc::clone(&shared), listener));
    }
    for listener in udp_listeners {
        tasks.spawn(udp::serve(Arc::clone(&shared), listener));
    }
    tasks.spawn(control.serve(Arc::clone(&shared)));
    tasks.spawn(keep_kernel_state(Arc::clone(&shared)));
    tasks.spawn(maintenance::remove_ended_rules(Arc::clone(&shared)));
    tasks.spawn(maintenance::save_hits(Arc::clone(&shared)));

    shutdown.await;
    info!("shutting down");
    if let Some(fast_path) = &shared.fast_path {
        fast_path.stop();
    }
    tasks.abort_all();
    shared.flush_hits();
    if let Some(interception) = shared.interception.lock().await.take()
        && let Err(err) = interception.remove().await
    {
        error!(error = %error_chain(&err), "failed to remove interception");
    }
    // The resolver stops only now, so no diverted query found its socket missing.
    drop(dns);
    if let Some(flow_log) = &shared.decisions.flow_log {
        write_summary(&shared.config, flow_log);
    }
    Ok(())
}

/// The resolver's query policy: a name is refused at DNS time when the rules deny every
/// connection of the asking program to it, on any port and protocol, so programs fail fast.
/// It reads the rules through the daemon's state, which exists only after the resolver
/// started, hence the late binding.
#[derive(Default)]
struct RefusalPolicy {
    shared: std::sync::OnceLock<std::sync::Weak<Shared>>,
}

impl RefusalPolicy {
    fn bind(&self, shared: &Arc<Shared>) {
        // Bound once at start; a second call changes nothing.
        let _ = self.shared.set(Arc::downgrade(shared));
    }
}

impl tollgate_resolver::QueryPolicy for RefusalPolicy {
    fn is_refused(
        &self,
        asker: tollgate_resolver::Asker,
        name: &tollgate_resolver::DomainName,
    ) -> bool {
        let Some(shared) = self.shared.get().and_then(std::sync::Weak::upgrade) else {
            return false;
        };
        if shared.config.mode != Mode::Interactive {
            return false;
        }
        let executable = match asker {
            tollgate_resolver::Asker::Process { pid } => {
                std::fs::read_link(format!("/proc/{pid}/exe")).ok()
            }
            tollgate_resolver::Asker::Address(_) => None,
        };
        let now = clock::now();
        let state = shared.lock();
        // Port 0 and the unspecified address match only rules for any port and any address.
        [Protocol::Tcp, Protocol::Udp].into_iter().all(|protocol| {
            let mut facts =
                tollgate_rules::ConnectionFacts::to(Ipv4Addr::UNSPECIFIED.into(), 0, protocol);
            facts.executable = executable.clone();
            facts.hosts = vec![name.to_string()];
            matches!(state.book.decide(&facts, &now), Some((_, Action::Deny)))
        })
    }
}

/// Takes the lock that lets one daemon protect a network namespace, held until the returned
/// file is closed (also when the process dies). A second daemon would replace the first one's
/// table and, on exit, remove it while the first still believes it intercepts.
pub fn lock_network_namespace() -> anyhow::Result<std::fs::File> {
    use std::os::{fd::AsRawFd as _, unix::fs::MetadataExt as _};

    let namespace = std::fs::metadata("/proc/self/ns/net")
        .context("failed to identify the network namespace")?
        .ino();
    let dir = std::path::Path::new(LOCK_DIR);
    std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    let path = dir.join(format!("netns-{namespace}.lock"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("failed to open {}", path.display()))?;
    // SAFETY: flock on a descriptor this function owns; no memory is passed.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if locked != 0 {
        let err = std::io::Error::last_os_error();
        if err.kind() == std::io::ErrorKind::WouldBlock {
            anyhow::bail!(
                "another tollgated already protects this network namespace (it holds {}); \
                 stop it first",
                path.display()
            );
        }
        return Err(err).with_context(|| format!("failed to lock {}", path.display()));
    }
    Ok(file)
}

/// Formats an error with each of its causes, as `{:#}` does for `anyhow` errors.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Directory of the per-namespace daemon locks.
const LOCK_DIR: &str = "/run/tollgate";

/// Starts the local resolver on the loopback addresses, unless the config disables it, and
/// returns it with its upstreams.
fn start_resolver(
    config: &Config,
    owners: Arc<dyn OwnerLookup>,
    refusals: Arc<RefusalPolicy>,
) -> anyhow::Result<Option<(DnsServer, Vec<UpstreamConfig>)>> {
    let dns = &config.dns;
    if !dns.enabled {
        info!("DNS resolver disabled in config; connections are named by their first bytes only");
        return Ok(None);
    }
    let listen = ListenConfig {
        addresses: vec![
            SocketAddr::from((Ipv4Addr::LOCALHOST, dns.port)),
            SocketAddr::from((Ipv6Addr::LOCALHOST, dns.port)),
        ],
        transparent: true,
        mark: Some(config.interception.bypass_mark),
    };
    let upstreams = upstreams(config, &listen.addresses)?;
    let addresses: Vec<String> = upstreams.iter().map(|u| u.address.to_string()).collect();
    info!(upstreams = ?addresses, "DNS upstreams");
    let hooks = Hooks {
        askers: Arc::new(DaemonAskers::new(owners)),
        policy: refusals,
    };
    let server = DnsServer::start(dns, &upstreams, &listen, hooks)
        .context("failed to start the DNS resolver (needs CAP_NET_ADMIN)")?;
    Ok(Some((server, upstreams)))
}

/// Returns the configured upstreams, or the nameservers of resolv.conf without the resolver's
/// own addresses.
fn upstreams(config: &Config, own: &[SocketAddr]) -> anyhow::Result<Vec<UpstreamConfig>> {
    if !config.dns.upstreams.is_empty() {
        return Ok(config.dns.upstreams.clone());
    }
    let path = &config.dns.resolv_conf_path;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("failed to read {} for the DNS upstreams", path.display()))?;
    Ok(resolv_conf::default_upstreams(&text, own))
}

/// Returns the DNS diversion: the resolver's port and the uids of the exempt users that exist,
/// with those of the local stub resolvers among `upstreams`. Queries to a local stub
/// (127.0.0.53) are diverted too, and the stub's own queries pass when it runs as an exempt
/// user, so that they do not loop back to the resolver that forwards to it.
fn dns_spec(config: &Config, upstreams: &[UpstreamConfig]) -> DnsSpec {
    let mut exempt_uids: Vec<u32> = config
        .interception
        .dns_exempt_users
        .iter()
        .filter_map(|user| match nix::unistd::User::from_name(user) {
            Ok(Some(found)) => Some(found.uid.as_raw()),
            Ok(None) => None,
            Err(err) => {
                warn!(%user, error = %err, "failed to look up DNS-exempt user; not exempted");
                None
            }
        })
        .collect();
    for uid in local_stub::stub_uids(upstreams) {
        if exempt_uids.contains(&uid) {
            continue;
        }
        if uid == 0 {
            // Exempting root would leave the DNS of every root program undiverted.
            warn!(
                "a local DNS stub resolver among the upstreams runs as root, so its own \
                 queries are diverted back to the resolver and loop; run it as another user"
            );
            continue;
        }
        info!(
            uid,
            "local DNS stub resolver's user exempted from DNS diversion"
        );
        exempt_uids.push(uid);
    }
    DnsSpec {
        port: config.dns.port,
        exempt_uids,
    }
}

/// Writes the summary of the flows of this run to the configured file or to stderr.
fn write_summary(config: &Config, flow_log: &FlowLog) {
    let summary = flow_log.finish();
    let text = format!(
        "tollgated flow summary ({} mode, log {})\n{summary}",
        config.mode,
        flow_log.path().display()
    );
    match &config.audit_summary {
        Some(path) => match std::fs::write(path, text) {
            Ok(()) => info!(path = %path.display(), "flow summary written"),
            Err(err) => {
                error!(path = %path.display(), error = %err, "failed to write flow summary");
            }
        },
        None => eprint!("{text}"),
    }
}

/// A task that watches the classifier's counters.
type CountersTask = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// The parts of process attribution that [`load_attribution`] loaded.
struct Attribution {
    owners: Arc<dyn OwnerLookup>,
    counters: Option<CountersTask>,
    /// The BPF programs' fast path, when they loaded.
    kernel: Option<KernelFastPath>,
}

/// The classifier's fast path maps and event ring, with the attribution that names the
/// processes in its events.
struct KernelFastPath {
    fast_path: tollgate_classifier::FastPath,
    events: tollgate_classifier::FlowEvents,
    attribution: Arc<KernelAttribution>,
}

impl Attribution {
    fn none() -> Self {
        Self {
            owners: Arc::new(NoAttribution),
            counters: None,
            kernel: None,
        }
    }
}

/// The fast path and its event ring with the attribution that names their processes.
type FastPathParts = (
    Option<FastPath>,
    Option<(tollgate_classifier::FlowEvents, Arc<KernelAttribution>)>,
);

/// Starts the fast path when the config enables it, the mode is interactive, the table is
/// installed and the BPF programs loaded. Without it every flow goes through the proxy.
fn start_fast_path(
    config: &Config,
    kernel: Option<KernelFastPath>,
    interception: &Option<Interception>,
    book: &RuleBook,
) -> FastPathParts {
    let Some(kernel) = kernel else {
        return (None, None);
    };
    if !config.interception.fast_path || config.mode != Mode::Interactive || interception.is_none()
    {
        info!("fast path off; every flow goes through the proxy");
        return (None, None);
    }
    let bypass_mark = config.interception.bypass_mark;
    match FastPath::start(kernel.fast_path, bypass_mark, book.rules()) {
        Ok(fast_path) => (Some(fast_path), Some((kernel.events, kernel.attribution))),
        Err(err) => {
            warn!(error = %format!("{err:#}"), "fast path unavailable; every flow goes through the proxy");
            (None, None)
        }
    }
}

/// Loads the BPF programs that name each flow's process. Without them the daemon still works,
/// but every flow shows as "unknown process", so a failure is logged as an error.
fn load_attribution(config: &Config) -> Attribution {
    if !config.attribution.enabled {
        warn!("process attribution disabled in config; flows show as unknown process");
        return Attribution::none();
    }
    if let Some(release) = kernel_too_old() {
        error!(
            kernel = %release,
            "process attribution needs Linux {}.{} or newer; flows show as unknown process",
            MIN_KERNEL.0,
            MIN_KERNEL.1
        );
        return Attribution::none();
    }
    let cgroup = match &config.attribution.cgroup {
        Some(path) => path.clone(),
        None => match tollgate_classifier::cgroup2_root() {
            Ok(path) => path,
            Err(err) => {
                error!(error = %err, "process attribution unavailable; flows show as unknown process");
                return Attribution::none();
            }
        },
    };
    match Classifier::load_and_attach(&cgroup) {
        Ok(classifier) => {
            info!(
                cgroup = %cgroup.display(),
                executable_paths = classifier.has_exe_paths(),
                "process attribution attached"
            );
            let mut attribution = KernelAttribution::new(classifier);
            let fast_path = attribution.take_fast_path();
            let attribution = Arc::new(attribution);
            let counters = Box::pin(watch_counters(Arc::clone(&attribution)));
            Attribution {
                owners: Arc::clone(&attribution) as Arc<dyn OwnerLookup>,
                counters: Some(counters),
                kernel: fast_path.map(|(fast_path, events)| KernelFastPath {
                    fast_path,
                    events,
                    attribution,
                }),
            }
        }
        Err(err) => {
            error!(
                cgroup = %cgroup.display(),
                error = %format!("{err:#}"),
                "process attribution unavailable; flows show as unknown process"
            );
            Attribution::none()
        }
    }
}

/// Oldest kernel with every interface attribution uses: `SO_NETNS_COOKIE` (5.14), the cgroup
/// `sock_release` hook (5.9), BPF links for cgroups (5.7) and BTF in `/sys/kernel/btf/vmlinux`.
const MIN_KERNEL: (u32, u32) = (5, 14);

/// Returns the kernel release when it is older than [`MIN_KERNEL`].
fn kernel_too_old() -> Option<String> {
    let release = nix::sys::utsname::uname()
        .ok()?
        .release()
        .to_string_lossy()
        .into_owned();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|part| part.parse::<u32>().ok());
    let version = (numbers.next()?, numbers.next()?);
    (version < MIN_KERNEL).then_some(release)
}

/// Logs the classifier's map failures when they grow, so a full map is never silent.
async fn watch_counters(attribution: Arc<KernelAttribution>) {
    let mut reported = tollgate_classifier::classifier::Counters::default();
    let mut interval = tokio::time::interval(COUNTER_INTERVAL);
    loop {
        interval.tick().await;
        let counters = match attribution.classifier().counters() {
            Ok(counters) => counters,
            Err(err) => {
                warn!(error = %err, "failed to read attribution counters");
                continue;
            }
        };
        let failed = counters.socket_update_failed + counters.flow_update_failed;
        let failed_before = reported.socket_update_failed + reported.flow_update_failed;
        if failed > failed_before {
            warn!(
                socket_update_failed = counters.socket_update_failed,
                flow_update_failed = counters.flow_update_failed,
                "attribution maps rejected updates; some flows will show as unknown process"
            );
        }
        if counters.flow_events_lost > reported.flow_events_lost {
            warn!(
                flow_events_lost = counters.flow_events_lost,
                "fast path events lost; some kernel flows have no events"
            );
        }
        if counters.fast_sockets_rejected > reported.fast_sockets_rejected {
            warn!(
                fast_sockets_rejected = counters.fast_sockets_rejected,
                "fast path full; some allowed flows went through the proxy"
            );
        }
        if counters.socket_record_missing > reported.socket_record_missing {
            debug!(
                socket_record_missing = counters.socket_record_missing,
                lookup_misses = counters.lookup_misses,
                "flows without an owner record"
            );
        }
        reported = counters;
    }
}

fn bind_listeners(config: &Config) -> anyhow::Result<Vec<TcpListener>> {
    let port = config.interception.tcp_port;
    let mark = config.interception.bypass_mark;
    let addresses = [
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
    ];
    let mut listeners = Vec::new();
    for address in addresses {
        let listener = transparent::transparent_listener(address, mark).with_context(|| {
            format!("failed to open transparent listener on {address} (needs CAP_NET_ADMIN)")
        })?;
        info!(%address, "listening for diverted connections");
        listeners.push(listener);
    }
    Ok(listeners)
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(handle_connection(Arc::clone(&shared), stream));
            }
            Err(err) => {
                // Running out of descriptors is the usual cause; back off instead of spinning.
                warn!(error = %err, "failed to accept diverted connection");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// State shared by the connection tasks and the control socket.
pub struct Shared {
    pub(crate) config: Config,
    state: Mutex<State>,
    events: broadcast::Sender<Event>,
    next_connection: AtomicU64,
    pub(crate) active: AtomicUsize,
    started: Instant,
    /// Second of uptime in which the held-connection limit was last logged.
    limit_reported: AtomicU64,
    /// The installed interception, `None` while it is off.
    interception: tokio::sync::Mutex<Option<Interception>>,
    pub(crate) owners: Arc<dyn OwnerLookup>,
    /// Names resolved through the local resolver, when it runs.
    names: Option<Arc<NameMap>>,
    /// The DNS diversion, kept to install the table again after `tollgate disable`.
    dns_spec: Option<DnsSpec>,
    decisions: Decisions,
    /// Connections in progress and recently ended, for the monitor.
    connections: Mutex<ConnectionTable>,
    /// The kernel's verdicts, when the fast path runs.
    pub(crate) fast_path: Option<FastPath>,
    /// Whether an enabled rule matches host names, so that a connection without a DNS name is
    /// named from its first bytes before the rules decide it.
    name_rules: std::sync::atomic::AtomicBool,
}

/// Policy and flow log of audit and enforce mode.
struct Decisions {
    /// The allowlist, when configured.
    policy: Option<Policy>,
    /// The flow log, when one is written.
    flow_log: Option<FlowLog>,
}

/// Rules and pending requests, behind one lock so that a connection cannot slip between a rule
/// change and the settling of the requests it matches.
struct State {
    book: RuleBook,
    pending: PendingTable,
}

/// A failed control request: the code and message sent back to the client.
pub type RequestError = (ErrorCode, String);

impl Shared {
    fn new(
        config: Config,
        book: RuleBook,
        interception: Option<Interception>,
        owners: Arc<dyn OwnerLookup>,
        decisions: Decisions,
        (names, dns_spec): (Option<Arc<NameMap>>, Option<DnsSpec>),
        fast_path: Option<FastPath>,
    ) -> Self {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let name_rules = has_name_rules(book.rules());
        Self {
            config,
            state: Mutex::new(State {
                book,
                pending: PendingTable::new(),
            }),
            events,
            next_connection: AtomicU64::new(1),
            active: AtomicUsize::new(0),
            started: Instant::now(),
            limit_reported: AtomicU64::new(u64::MAX),
            interception: tokio::sync::Mutex::new(interception),
            owners,
            names,
            dns_spec,
            decisions,
            connections: Mutex::new(ConnectionTable::new()),
            fast_path,
            name_rules: std::sync::atomic::AtomicBool::new(name_rules),
        }
    }

    /// Hands the rules to the kernel after a change. Call it with the state's lock held, so
    /// that no flow decided under the old rules adds a verdict afterwards.
    fn rules_changed(&self, state: &State) {
        let name_rules = has_name_rules(state.book.rules());
        self.name_rules.store(name_rules, Ordering::Relaxed);
        if let Some(fast_path) = &self.fast_path {
            fast_path.sync(state.book.rules());
        }
    }

    /// Counts a flow that the kernel decided by rule `rule_id`.
    pub(crate) fn record_kernel_hit(&self, rule_id: u64) {
        let now = clock::now();
        let id = tollgate_rules::RuleId(rule_id);
        self.lock().book.record_hits(id, 1, now.unix_ms);
    }

    /// Returns the daemon's status.
    pub async fn status(&self) -> StatusInfo {
        let intercepting = self.interception.lock().await.is_some();
        let state = self.lock();
        StatusInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            intercepting,
            pending_requests: state.pending.len(),
            held_connections: state.pending.held_connections(),
            rules: state.book.rules().len(),
            active_connections: self.active.load(Ordering::Relaxed),
            prompt_timeout_secs: self.config.prompt_timeout_secs,
            default_action: self.config.default_action,
            names: self.names.as_deref().map(|names| {
                let stats = names.stats();
                NameMapStatus {
                    entries: stats.entries,
                    evictions: stats.evictions,
                    expirations: stats.expirations,
                }
            }),
            mode: self.config.mode,
            fast_path: self.fast_path.is_some() && intercepting,
        }
    }

    /// Installs or removes the interception, leaving the daemon running. Held connections keep
    /// waiting for their verdicts either way.
    pub async fn set_interception(&self, enabled: bool) -> Result<Response, RequestError> {
        let mut interception = self.interception.lock().await;
        match (enabled, interception.take()) {
            (true, None) => {
                let allowed = self.kernel_allows();
                let installed = Interception::install(
                    &self.config.interception,
                    self.dns_spec.clone(),
                    &allowed,
                )
                .await
                .map_err(|err| {
                    error!(error = %error_chain(&err), "failed to install interception");
                    (
                        ErrorCode::Internal,
                        format!("failed to enable interception: {}", error_chain(&err)),
                    )
                })?;
                *interception = Some(installed);
                if let Some(fast_path) = &self.fast_path {
                    fast_path.resume(self.lock().book.rules());
                }
                warn!("interception enabled by control request");
            }
            (false, Some(installed)) => {
                // Kernel verdicts would go on denying while traffic should pass unfiltered.
                if let Some(fast_path) = &self.fast_path {
                    fast_path.stop();
                }
                if let Err(err) = installed.remove().await {
                    error!(error = %error_chain(&err), "failed to remove interception");
                    // Whatever is left still diverts traffic, so report it as installed.
                    let allowed = self.kernel_allows();
                    *interception = Interception::install(
                        &self.config.interception,
                        self.dns_spec.clone(),
                        &allowed,
                    )
                    .await
                    .ok();
                    return Err((
                        ErrorCode::Internal,
                        format!("failed to disable interception: {}", error_chain(&err)),
                    ));
                }
                warn!("interception disabled by control request; traffic passes unfiltered");
            }
            (_, current) => *interception = current,
        }
        Ok(Response::Interception {
            enabled: interception.is_some(),
        })
    }

    /// Returns the pending requests, oldest first.
    pub fn pending(&self) -> Vec<PendingInfo> {
        self.lock().pending.list()
    }

    /// Subscribes to connection events.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data: every critical section
        // either completes its change or makes none, so the poison flag is ignored.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Logs that the held-connection limit was reached, at most once per second.
    fn report_limit(&self) {
        let now = self.started.elapsed().as_secs();
        if self.limit_reported.swap(now, Ordering::Relaxed) != now {
            warn!(
                limit = self.config.max_held_connections,
                action = %self.config.default_action,
                "too many held connections; applying the default action to new ones"
            );
        }
    }

    /// Returns the name `source`'s process resolved for `destination`, from the resolver's
    /// name map, or no name.
    pub(crate) fn name_for(
        &self,
        process: Option<&ProcessInfo>,
        source: SocketAddr,
        destination: SocketAddr,
    ) -> Naming {
        self.names
            .as_deref()
            .and_then(|names| {
                let asker = naming::asker_for(process, source);
                naming::from_dns(names, asker, destination.ip())
            })
            .unwrap_or_default()
    }

    /// Returns the destinations the kernel lets pass while the daemon is down: none in enforce
    /// mode, where only the policy allows.
    fn kernel_allows(&self) -> Vec<KernelAllow> {
        match self.config.mode {
            Mode::Enforce => Vec::new(),
            Mode::Interactive | Mode::Audit => kernel_allows(self.lock().book.rules()),
        }
    }

    /// Returns a new connection identifier.
    pub(crate) fn next_connection(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn emit(&self, flow: &Flow, kind: EventKind) {
        let time_unix_ms = unix_ms(SystemTime::now());
        if let Some(flow_log) = &self.decisions.flow_log {
            let identity = FlowIdentity {
                connection: flow.connection,
                process: flow.process.as_deref(),
                source: flow.source,
                destination: flow.destination,
                protocol: flow.protocol,
                host: flow.naming.host.as_deref(),
                name_source: flow.naming.source,
            };
            flow_log.observe(&identity, &kind, time_unix_ms);
        }
        let event = Event {
            time_unix_ms,
            connection: flow.connection,
            process: flow.process.as_deref().cloned(),
            source: flow.source,
            destination: flow.destination,
            host: flow.naming.host.clone(),
            name_source: flow.naming.source,
            protocol: flow.protocol,
            kind,
        };
        self.tracked().observe(&event);
        // Sending fails only when nobody is watching, which is fine.
        let _ = self.events.send(event);
    }

    /// Returns the live byte counters of an allowed connection, for its relay.
    pub(crate) fn byte_counters(&self, connection: u64) -> ByteCounters {
        self.tracked().counters(connection)
    }

    /// Returns the held connections, then the others in progress, then the recently ended
    /// ones.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        let mut listed = self.lock().pending.connections();
        listed.extend(self.tracked().list());
        listed
    }

    fn tracked(&self) -> MutexGuard<'_, ConnectionTable> {
        // Every update of the table completes or makes none, so the poison flag is ignored.
        self.connections
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Keeps the kernel's copy of the daemon's state current: refreshes the `alive` element that
/// tells the table the daemon runs, and copies forever-allow rules into it when they changed.
async fn keep_kernel_state(shared: Arc<Shared>) {
    let mut interval = tokio::time::interval(HEARTBEAT_INTERVAL);
    let mut applied: Option<Vec<KernelAllow>> = None;
    let mut failing = false;
    loop {
        interval.tick().await;
        let interception = shared.interception.lock().await;
        let Some(interception) = interception.as_ref() else {
            // Installing the table again also installs the current destinations.
            applied = None;
            continue;
        };
        let allowed = shared.kernel_allows();
        let mut result = interception.heartbeat();
        if result.is_ok() && applied.as_ref() != Some(&allowed) {
            debug!(
                destinations = allowed.len(),
                "updating forever-allowed destinations"
            );
            result = interception.replace_allowed(&allowed);
            if result.is_ok() {
                applied = Some(allowed);
            }
        }
        match result {
            Ok(()) => failing = false,
            // Logged once per run of failures, since it repeats every second.
            Err(err) if !failing => {
                failing = true;
                error!(error = %error_chain(&err), "failed to update the kernel's state");
            }
            Err(_) => {}
        }
    }
}

/// Returns the destinations the kernel lets pass on its own while the daemon is down: those of
/// enabled forever-allow rules for any process. Rules for one executable cannot be checked
/// without the daemon, so their traffic is stopped like the rest.
///
/// NOTE: a deny rule for one executable that overlaps such a destination is not applied while
/// the daemon is down.
fn kernel_allows(rules: &RuleSet) -> Vec<KernelAllow> {
    let mut allowed = Vec::new();
    for rule in rules.iter() {
        if !rule.enabled
            || rule.action != Action::Allow
            || rule.lifetime != Lifetime::Forever
            || !rule.subject.is_any()
        {
            continue;
        }
        let network = match &rule.destination.address {
            AddressMatch::Any => None,
            AddressMatch::Ip(IpAddr::V4(ip)) => Some((IpAddr::V4(*ip), 32)),
            AddressMatch::Ip(IpAddr::V6(ip)) => match ip.to_ipv4_mapped() {
                Some(v4) => Some((IpAddr::V4(v4), 32)),
                None => Some((IpAddr::V6(*ip), 128)),
            },
            AddressMatch::Cidr(cidr) => Some((cidr.addr(), cidr.prefix())),
            // Names and scopes need the daemon's knowledge of the connection.
            _ => continue,
        };
        let protocol = match rule.destination.protocol {
            ProtocolMatch::Any => None,
            ProtocolMatch::Tcp => Some(libc::IPPROTO_TCP as u8),
            ProtocolMatch::Udp => Some(libc::IPPROTO_UDP as u8),
        };
        let ports = match &rule.destination.port {
            PortMatch::Any => vec![None],
            PortMatch::Port(port) => vec![Some((*port, *port))],
            PortMatch::List(ports) => ports.iter().map(|port| Some((*port, *port))).collect(),
            PortMatch::Range { first, last } => vec![Some((*first, *last))],
        };
        for ports in ports {
            allowed.push(KernelAllow {
                network,
                protocol,
                ports,
            });
        }
    }
    allowed
}

/// The identity of one diverted connection or UDP flow.
pub(crate) struct Flow {
    pub(crate) connection: u64,
    pub(crate) process: Option<Arc<ProcessInfo>>,
    pub(crate) source: SocketAddr,
    pub(crate) destination: SocketAddr,
    pub(crate) protocol: Protocol,
    /// The destination's host name, from DNS at first and from the first bytes once peeked.
    pub(crate) naming: Naming,
}

async fn handle_connection(shared: Arc<Shared>, stream: TcpStream) {
    let (source, destination) = match (stream.peer_addr(), stream.local_addr()) {
        (Ok(source), Ok(destination)) => (unmap(source), unmap(destination)),
        (Err(err), _) | (_, Err(err)) => {
            debug!(error = %err, "diverted connection closed before it was read");
            return;
        }
    };
    let process = shared.owners.lookup(Protocol::Tcp, source, destination);
    let naming = shared.name_for(process.as_deref(), source, destination);
    let mut flow = Flow {
        connection: shared.next_connection(),
        process,
        source,
        destination,
        protocol: Protocol::Tcp,
        naming,
    };
    let process = match &flow.process {
        Some(process) => format!("{} ({})", process.comm, process.pid),
        None => "unknown process".to_owned(),
    };
    let host = flow.naming.host.clone().unwrap_or_default();
    let span =
        info_span!("connection", id = flow.connection, %source, %destination, %host, %process);
    async move {
        let verdict = verdict_for(&shared, &mut flow, Some(&stream)).await;
        debug!(action = %verdict.action, by = ?verdict.by, "verdict");
        shared.emit(
            &flow,
            EventKind::Decided {
                action: verdict.action,
                by: verdict.by,
                in_kernel: false,
            },
        );
        match verdict.action {
            Action::Allow => relay(&shared, &flow, stream).await,
            Action::Deny => transparent::reset(stream),
        }
    }
    .instrument(span)
    .await;
}

/// Returns the verdict for a new connection: from a rule at once, or after holding it as a
/// pending request until someone decides or the prompt times out.
///
/// A TCP connection without a DNS name is named from its first bytes, which `stream` gives.
/// Audit and enforce mode, and rules on host names, need the name before the verdict.
/// Otherwise the connection is named while it is held, so that a silent client's pending
/// event does not wait.
pub(crate) async fn verdict_for(
    shared: &Shared,
    flow: &mut Flow,
    stream: Option<&TcpStream>,
) -> Verdict {
    let peek_timeout = shared.config.dns.peek_timeout();
    match shared.config.mode {
        Mode::Interactive => {
            // A rule on a host name must see the name from the first bytes before a broader
            // rule on the address decides.
            if flow.naming.host.is_none()
                && shared.name_rules.load(Ordering::Relaxed)
                && let Some(stream) = stream
                && let Some(naming) = naming::peek_name(stream, peek_timeout).await
            {
                debug!(host = ?naming.host, source = %naming.source, "named from first bytes");
                flow.naming = naming;
            }
            if let Some(verdict) = rule_verdict(shared, flow) {
                return verdict;
            }
        }
        Mode::Audit | Mode::Enforce => {
            if flow.naming.host.is_none()
                && let Some(stream) = stream
                && let Some(naming) = naming::peek_name(stream, peek_timeout).await
            {
                debug!(host = ?naming.host, source = %naming.source, "named from first bytes");
                flow.naming = naming;
            }
            if shared.config.mode == Mode::Audit {
                return audit_verdict(shared, flow);
            }
            return enforce_verdict(shared, flow);
        }
    }
    let (mut pending_id, mut receiver) = {
        let mut state = shared.lock();
        if state.pending.held_connections() >= shared.config.max_held_connections {
            shared.report_limit();
            return Verdict {
                action: shared.config.default_action,
                by: DecidedBy::Limit,
            };
        }
        hold(&mut state, flow)
    };
    debug!(pending = pending_id, "connection held");
    shared.emit(flow, EventKind::Held { pending_id });

    let timed_out = Verdict {
        action: shared.config.default_action,
        by: DecidedBy::Timeout,
    };
    let deadline = tokio::time::sleep(shared.config.prompt_timeout());
    tokio::pin!(deadline);
    let peek_now = !shared.name_rules.load(Ordering::Relaxed);
    let mut peek = match stream {
        Some(stream) if flow.naming.host.is_none() && peek_now => {
            Some(Box::pin(naming::peek_name(stream, peek_timeout)))
        }
        _ => None,
    };
    loop {
        tokio::select! {
            verdict = &mut receiver => return verdict.unwrap_or(timed_out),
            () = &mut deadline => {
                let released = shared.lock().pending.release(pending_id, flow.connection);
                return match released {
                    Some(_) => {
                        info!(pending = pending_id, action = %timed_out.action, "prompt timed out");
                        timed_out
                    }
                    // A verdict took the connection after the timer fired; it is in the channel.
                    None => receiver.await.unwrap_or(timed_out),
                };
            }
            named = async { peek.as_mut().expect("branch enabled only with a peek").await },
                if peek.is_some() =>
            {
                peek = None;
                let Some(naming) = named else { continue };
                debug!(host = ?naming.host, source = %naming.source, "named from first bytes");
                flow.naming = naming;
                let mut state = shared.lock();
                // A verdict may have taken the connection meanwhile; it is in the channel.
                if state.pending.release(pending_id, flow.connection).is_none() {
                    continue;
                }
                // A rule on the name decides at once; otherwise the connection is asked
                // about under its name.
                if let Some(verdict) = rule_verdict_locked(&mut state, flow, shared.fast_path.as_ref()) {
                    return verdict;
                }
                let moved_from = pending_id;
                (pending_id, receiver) = hold(&mut state, flow);
                state.pending.forward(moved_from, pending_id);
                drop(state);
                debug!(pending = pending_id, "connection held under its name");
                shared.emit(flow, EventKind::Held { pending_id });
            }
        }
    }
}

/// Returns whether an enabled rule matches host names or domains.
fn has_name_rules(rules: &RuleSet) -> bool {
    rules.iter().any(|rule| {
        rule.enabled
            && matches!(
                rule.destination.address,
                AddressMatch::Host(_) | AddressMatch::Domain(_)
            )
    })
}

/// Holds `flow` under the pending request of identical connections and returns the request
/// id and the channel its verdict arrives on.
fn hold(state: &mut State, flow: &Flow) -> (u64, oneshot::Receiver<Verdict>) {
    let (sender, receiver) = oneshot::channel();
    let hold = NewHold {
        connection: flow.connection,
        process: flow.process.clone(),
        source: flow.source,
        destination: flow.destination,
        host: flow.naming.host.clone(),
        name_source: flow.naming.source,
        protocol: flow.protocol,
        started: SystemTime::now(),
    };
    let (pending_id, _) = state.pending.hold(hold, sender);
    (pending_id, receiver)
}

/// Returns the verdict of the rule that decides `flow`, if any, counting its hit.
fn rule_verdict(shared: &Shared, flow: &Flow) -> Option<Verdict> {
    rule_verdict_locked(&mut shared.lock(), flow, shared.fast_path.as_ref())
}

/// Returns the verdict of the rule that decides `flow`, counting its hit, and hands the
/// verdict to the kernel's fast path when it can apply it to the next such flow.
fn rule_verdict_locked(
    state: &mut State,
    flow: &Flow,
    fast_path: Option<&FastPath>,
) -> Option<Verdict> {
    let mut facts = connection_facts(flow.process.as_deref(), flow.destination, flow.protocol);
    facts.hosts = flow.naming.chain.clone();
    let now = clock::now();
    let (id, action) = state.book.decide(&facts, &now)?;
    state.book.record_hits(id, 1, now.unix_ms);
    if let Some(fast_path) = fast_path {
        fast_path.learn(flow, state.book.rules());
    }
    Some(Verdict {
        action,
        by: DecidedBy::Rule { rule: id },
    })
}

/// Allows the flow and notes, for the flow log, what the policy (or without one, the rules)
/// would do with it.
fn audit_verdict(shared: &Shared, flow: &Flow) -> Verdict {
    let (expected, reason) = match &shared.decisions.policy {
        Some(policy) => match policy.check(&facts_of(flow)) {
            Ok(_) => (Expected::Allow, None),
            Err(denial) => (Expected::Deny, Some(denial.to_string())),
        },
        None => match rule_verdict(shared, flow) {
            Some(verdict) if verdict.action == Action::Allow => (Expected::Allow, None),
            Some(Verdict {
                by: DecidedBy::Rule { rule },
                ..
            }) => (Expected::Deny, Some(format!("rule {rule} denies it"))),
            Some(_) => (Expected::Deny, None),
            None => (Expected::Prompt, None),
        },
    };
    if let Some(flow_log) = &shared.decisions.flow_log {
        flow_log.expect(flow.connection, expected, reason);
    }
    Verdict {
        action: Action::Allow,
        by: DecidedBy::Audit { expected },
    }
}

/// Allows the flow when a policy entry matches it and denies it otherwise, logging why.
fn enforce_verdict(shared: &Shared, flow: &Flow) -> Verdict {
    let Some(policy) = &shared.decisions.policy else {
        // Config::validate rejects enforce mode without a policy, so this is unreachable;
        // deny to stay closed all the same.
        return Verdict {
            action: Action::Deny,
            by: DecidedBy::Policy { entry: None },
        };
    };
    let (expected, reason, verdict) = match policy.check(&facts_of(flow)) {
        Ok(entry) => (
            Expected::Allow,
            None,
            Verdict {
                action: Action::Allow,
                by: DecidedBy::Policy { entry: Some(entry) },
            },
        ),
        Err(denial) => {
            let reason = denial.to_string();
            warn!(%reason, "denied by policy");
            (
                Expected::Deny,
                Some(reason),
                Verdict {
                    action: Action::Deny,
                    by: DecidedBy::Policy { entry: None },
                },
            )
        }
    };
    if let Some(flow_log) = &shared.decisions.flow_log {
        flow_log.expect(flow.connection, expected, reason);
    }
    verdict
}

fn facts_of(flow: &Flow) -> FlowFacts<'_> {
    let process = flow.process.as_ref();
    FlowFacts {
        executable: process.and_then(|process| process.executable.as_deref()),
        script: process.and_then(|process| process.script.as_deref()),
        host: flow.naming.host.as_deref(),
        ip: flow.destination.ip(),
        port: flow.destination.port(),
        protocol: flow.protocol,
    }
}

async fn relay(shared: &Shared, flow: &Flow, client: TcpStream) {
    let timeout = shared.config.upstream_connect_timeout();
    let mark = shared.config.interception.bypass_mark;
    let upstream = match transparent::connect_upstream(flow.destination, mark, timeout).await {
        Ok(upstream) => upstream,
        Err(err) => {
            info!(error = %err, "upstream connect failed; resetting client");
            transparent::reset(client);
            shared.emit(
                flow,
                closed(0, 0, Some(format!("upstream connect failed: {err}"))),
            );
            return;
        }
    };

    let counters = shared.byte_counters(flow.connection);
    let mut client = CountingStream::new(client, Arc::clone(&counters.up));
    let mut upstream = CountingStream::new(upstream, Arc::clone(&counters.down));
    shared.active.fetch_add(1, Ordering::Relaxed);
    let result = tokio::io::copy_bidirectional_with_sizes(
        &mut client,
        &mut upstream,
        RELAY_BUFFER,
        RELAY_BUFFER,
    )
    .await;
    shared.active.fetch_sub(1, Ordering::Relaxed);

    match result {
        Ok((up, down)) => {
            debug!(bytes_up = up, bytes_down = down, "relay finished");
            shared.emit(flow, closed(up, down, None));
        }
        Err(err) => {
            // Mirror a reset or failure on either side as a reset of both. The counts show how
            // far the relay got.
            debug!(error = %err, "relay failed; resetting both sides");
            transparent::reset(client.into_inner());
            transparent::reset(upstream.into_inner());
            let up = counters.up.load(Ordering::Relaxed);
            let down = counters.down.load(Ordering::Relaxed);
            shared.emit(flow, closed(up, down, Some(format!("relay failed: {err}"))));
        }
    }
}

pub(crate) fn closed(bytes_up: u64, bytes_down: u64, error: Option<String>) -> EventKind {
    EventKind::Closed {
        bytes_up,
        bytes_down,
        error,
    }
}

/// Turns an IPv4-mapped IPv6 address into the IPv4 address it carries.
pub(crate) fn unmap(address: SocketAddr) -> SocketAddr {
    match address {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => address,
        },
        SocketAddr::V4(_) => address,
    }
}
