//! The daemon: accepts diverted TCP connections, holds them until a verdict, relays or resets
//! them, and serves the control socket. UDP flows go through the same verdicts in [`crate::udp`].

use std::{
    future::Future,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
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
use tollgate_rules::{
    Action, AddressMatch, Connection, Destination, Lifetime, PortMatch, Protocol, ProtocolMatch,
    Rule, RuleId, RuleSet, RuleStore, Subject,
};
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::{
    attribution::{KernelAttribution, NoAttribution, OwnerLookup},
    config::Config,
    control::{self, ControlListener},
    fast_path::{self, FastPath},
    firewall::Interception,
    holding::{NewHold, PendingTable, Verdict, unix_ms},
    protocol::{
        DecidedBy, ErrorCode, Event, EventKind, NewRule, PendingInfo, ProcessInfo, Response,
        StatusInfo,
    },
    transparent, udp,
};

/// Number of events buffered for each watcher before it starts missing some.
const EVENT_BUFFER: usize = 4096;

/// How often the attribution counters are checked.
const COUNTER_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// Size of each relay buffer, per direction.
const RELAY_BUFFER: usize = 64 * 1024;

/// Runs the daemon until `shutdown` completes, then removes the interception and the control
/// socket.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let store = RuleStore::open(&config.rules_db_path()).with_context(|| {
        format!(
            "failed to open rule store in {}",
            config.state_dir.display()
        )
    })?;
    let rules = RuleSet::from_rules(store.load_all().context("failed to load stored rules")?);
    info!(rules = rules.len(), path = %config.rules_db_path().display(), "rules loaded");

    let allowed_uids = control::allowed_uids(config.desktop_user.as_deref())?;
    let control = ControlListener::bind(&config.control_socket, allowed_uids)?;
    let listeners = bind_listeners(&config)?;
    let udp_listeners = udp::bind_listeners(&config)?;
    let interception = if config.interception.enabled {
        Some(
            Interception::install(&config.interception)
                .await
                .context("failed to install interception")?,
        )
    } else {
        warn!("interception disabled in config; only connections sent to the listeners are seen");
        None
    };

    let attribution = load_attribution(&config);
    let (fast_path, flow_events) = match attribution.kernel {
        Some(kernel) if interception.is_some() && config.interception.fast_path => {
            match FastPath::start(kernel.fast_path, config.interception.bypass_mark, &rules) {
                Ok(fast_path) => (Some(fast_path), Some((kernel.events, kernel.attribution))),
                Err(err) => {
                    warn!(error = %format!("{err:#}"), "fast path unavailable; every flow goes through the proxy");
                    (None, None)
                }
            }
        }
        _ => (None, None),
    };
    let shared = Arc::new(Shared::new(
        config,
        store,
        rules,
        interception.is_some(),
        attribution.owners,
        fast_path,
    ));
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(counters) = attribution.counters {
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

    shutdown.await;
    info!("shutting down");
    if let Some(fast_path) = &shared.fast_path {
        fast_path.stop();
    }
    tasks.abort_all();
    if let Some(interception) = interception
        && let Err(err) = interception.remove().await
    {
        error!(error = %format!("{err:#}"), "failed to remove interception");
    }
    Ok(())
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
    store: RuleStore,
    events: broadcast::Sender<Event>,
    next_connection: AtomicU64,
    pub(crate) active: AtomicUsize,
    started: Instant,
    intercepting: bool,
    pub(crate) owners: Arc<dyn OwnerLookup>,
    pub(crate) fast_path: Option<FastPath>,
}

/// Rules and pending requests, behind one lock so that a connection cannot slip between a rule
/// change and the settling of the requests it matches.
struct State {
    rules: RuleSet,
    pending: PendingTable,
}

/// A failed control request: the code and message sent back to the client.
pub type RequestError = (ErrorCode, String);

impl Shared {
    fn new(
        config: Config,
        store: RuleStore,
        rules: RuleSet,
        intercepting: bool,
        owners: Arc<dyn OwnerLookup>,
        fast_path: Option<FastPath>,
    ) -> Self {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        Self {
            config,
            state: Mutex::new(State {
                rules,
                pending: PendingTable::new(),
            }),
            store,
            events,
            next_connection: AtomicU64::new(1),
            active: AtomicUsize::new(0),
            started: Instant::now(),
            intercepting,
            owners,
            fast_path,
        }
    }

    /// Returns the daemon's status.
    pub fn status(&self) -> StatusInfo {
        let state = self.lock();
        StatusInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            intercepting: self.intercepting,
            pending_requests: state.pending.len(),
            held_connections: state.pending.held_connections(),
            rules: state.rules.len(),
            active_connections: self.active.load(Ordering::Relaxed),
            prompt_timeout_secs: self.config.prompt_timeout_secs,
            default_action: self.config.default_action,
            fast_path: self.fast_path.is_some(),
        }
    }

    /// Returns the pending requests, oldest first.
    pub fn pending(&self) -> Vec<PendingInfo> {
        self.lock().pending.list()
    }

    /// Returns every rule in precedence order.
    pub fn rules(&self) -> Vec<Rule> {
        self.lock().rules.iter().cloned().collect()
    }

    /// Subscribes to connection events.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Settles pending request `id` with `action`, adding a rule for it unless `lifetime` is
    /// once. A stored rule is on disk before this returns.
    pub fn decide(
        &self,
        id: u64,
        action: Action,
        lifetime: Lifetime,
    ) -> Result<Response, RequestError> {
        let mut state = self.lock();
        let Some(info) = state.pending.list().into_iter().find(|info| info.id == id) else {
            return Err((
                ErrorCode::NotFound,
                format!("no pending request with id {id}; list them with `tollgate pending`"),
            ));
        };
        let rule = match lifetime {
            Lifetime::Once => None,
            _ => {
                let rule = rule_for_pending(&info, action, lifetime, state.rules.next_id());
                self.add_rule_locked(&mut state, rule.clone())?;
                Some(rule)
            }
        };

        let verdict = Verdict {
            action,
            by: DecidedBy::User,
        };
        let mut settled = match state.pending.take(id) {
            Some(group) => group.settle(verdict),
            None => 0,
        };
        settled += settle_decided(&mut state);
        info!(pending = id, %action, %lifetime, settled, "pending request decided");
        Ok(Response::Decided { settled, rule })
    }

    /// Adds a rule from a client and settles the pending requests it decides.
    pub fn add_rule(&self, new: NewRule) -> Result<Response, RequestError> {
        if new.lifetime == Lifetime::Once {
            return Err((
                ErrorCode::Invalid,
                "a rule cannot have lifetime once; use until_restart or forever".into(),
            ));
        }
        let mut state = self.lock();
        let rule = Rule {
            id: state.rules.next_id(),
            subject: new.subject,
            destination: new.destination,
            action: new.action,
            lifetime: new.lifetime,
            enabled: true,
            note: new.note,
            created_unix: unix_ms(SystemTime::now()) / 1000,
        };
        self.add_rule_locked(&mut state, rule.clone())?;
        let settled = settle_decided(&mut state);
        info!(rule = %rule.id, action = %rule.action, lifetime = %rule.lifetime, "rule added");
        Ok(Response::RuleAdded { rule, settled })
    }

    /// Removes a rule, from the store too when it is stored.
    pub fn remove_rule(&self, id: RuleId) -> Result<Response, RequestError> {
        let mut state = self.lock();
        let Some(rule) = state.rules.get(id).cloned() else {
            return Err((
                ErrorCode::NotFound,
                format!("no rule with id {id}; list them with `tollgate rules list`"),
            ));
        };
        if rule.lifetime == Lifetime::Forever {
            self.store.remove(id).map_err(|err| {
                error!(rule = %id, error = %err, "failed to remove stored rule");
                (
                    ErrorCode::Internal,
                    format!("failed to remove rule {id}: {err}"),
                )
            })?;
        }
        state.rules.remove(id);
        if let Some(fast_path) = &self.fast_path {
            fast_path.sync(&state.rules);
        }
        info!(rule = %id, "rule removed");
        Ok(Response::RuleRemoved { id })
    }

    fn add_rule_locked(&self, state: &mut State, rule: Rule) -> Result<(), RequestError> {
        if rule.lifetime == Lifetime::Forever {
            self.store.insert(&rule).map_err(|err| {
                error!(rule = %rule.id, error = %err, "failed to store rule");
                (ErrorCode::Internal, format!("failed to store rule: {err}"))
            })?;
        }
        state.rules.insert(rule);
        if let Some(fast_path) = &self.fast_path {
            fast_path.sync(&state.rules);
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data: every critical section
        // either completes its change or makes none, so the poison flag is ignored.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Returns a new connection identifier.
    pub(crate) fn next_connection(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    /// Returns whether a client watches events, so that building them is worth it.
    pub(crate) fn has_watchers(&self) -> bool {
        self.events.receiver_count() > 0
    }

    pub(crate) fn emit(&self, flow: &Flow, kind: EventKind) {
        if !self.has_watchers() {
            return;
        }
        // Sending fails when the last watcher left since the check above, which is fine.
        let _ = self.events.send(Event {
            time_unix_ms: unix_ms(SystemTime::now()),
            connection: flow.connection,
            process: flow.process.clone(),
            source: flow.source,
            destination: flow.destination,
            protocol: flow.protocol,
            kind,
        });
    }
}

/// Settles every pending request that the current rules decide. Returns the number of
/// connections settled.
fn settle_decided(state: &mut State) -> usize {
    let State { rules, pending } = state;
    let mut verdicts = Vec::new();
    let groups = pending.take_matching(|info| match rules.decide(&connection_of(info)) {
        Some(rule) => {
            verdicts.push(Verdict {
                action: rule.action,
                by: DecidedBy::Rule { rule: rule.id },
            });
            true
        }
        None => false,
    });
    groups
        .into_iter()
        .zip(verdicts)
        .map(|(group, verdict)| group.settle(verdict))
        .sum()
}

fn connection_of(info: &PendingInfo) -> Connection<'_> {
    Connection {
        executable: info
            .process
            .as_ref()
            .and_then(|process| process.executable.as_deref()),
        ip: info.destination.ip(),
        port: info.destination.port(),
        protocol: info.protocol,
    }
}

/// Builds the rule that a decision on a pending request creates: this executable (or any
/// process when unknown), this address, port and protocol.
fn rule_for_pending(info: &PendingInfo, action: Action, lifetime: Lifetime, id: RuleId) -> Rule {
    let subject = match info.process.as_ref().and_then(|p| p.executable.clone()) {
        Some(path) => Subject::Executable(path),
        None => Subject::Any,
    };
    let protocol = match info.protocol {
        Protocol::Tcp => ProtocolMatch::Tcp,
        Protocol::Udp => ProtocolMatch::Udp,
    };
    Rule {
        id,
        subject,
        destination: Destination {
            address: AddressMatch::Ip(info.destination.ip()),
            port: PortMatch::Port(info.destination.port()),
            protocol,
        },
        action,
        lifetime,
        enabled: true,
        note: format!("answer to pending request {}", info.id),
        created_unix: unix_ms(SystemTime::now()) / 1000,
    }
}

/// The identity of one diverted connection or UDP flow.
pub(crate) struct Flow {
    pub(crate) connection: u64,
    pub(crate) process: Option<ProcessInfo>,
    pub(crate) source: SocketAddr,
    pub(crate) destination: SocketAddr,
    pub(crate) protocol: Protocol,
}

async fn handle_connection(shared: Arc<Shared>, stream: TcpStream) {
    let (source, destination) = match (stream.peer_addr(), stream.local_addr()) {
        (Ok(source), Ok(destination)) => (unmap(source), unmap(destination)),
        (Err(err), _) | (_, Err(err)) => {
            debug!(error = %err, "diverted connection closed before it was read");
            return;
        }
    };
    let flow = Flow {
        connection: shared.next_connection(),
        process: shared.owners.lookup(Protocol::Tcp, source, destination),
        source,
        destination,
        protocol: Protocol::Tcp,
    };
    let process = match &flow.process {
        Some(process) => format!("{} ({})", process.comm, process.pid),
        None => "unknown process".to_owned(),
    };
    let span = info_span!("connection", id = flow.connection, %source, %destination, %process);
    async move {
        let verdict = verdict_for(&shared, &flow).await;
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
pub(crate) async fn verdict_for(shared: &Shared, flow: &Flow) -> Verdict {
    let (pending_id, mut receiver) = {
        let mut state = shared.lock();
        let connection = Connection {
            executable: flow
                .process
                .as_ref()
                .and_then(|process| process.executable.as_deref()),
            ip: flow.destination.ip(),
            port: flow.destination.port(),
            protocol: flow.protocol,
        };
        if let Some(rule) = state.rules.decide(&connection) {
            if let Some(fast_path) = &shared.fast_path {
                fast_path.learn(flow, rule);
            }
            return Verdict {
                action: rule.action,
                by: DecidedBy::Rule { rule: rule.id },
            };
        }
        let (sender, receiver) = oneshot::channel();
        let hold = NewHold {
            connection: flow.connection,
            process: flow.process.clone(),
            source: flow.source,
            destination: flow.destination,
            protocol: flow.protocol,
            started: SystemTime::now(),
        };
        let (pending_id, _) = state.pending.hold(hold, sender);
        (pending_id, receiver)
    };
    debug!(pending = pending_id, "connection held");
    shared.emit(flow, EventKind::Held { pending_id });

    let timeout = shared.config.prompt_timeout();
    let timed_out = Verdict {
        action: shared.config.default_action,
        by: DecidedBy::Timeout,
    };
    tokio::select! {
        verdict = &mut receiver => verdict.unwrap_or(timed_out),
        () = tokio::time::sleep(timeout) => {
            let released = shared.lock().pending.release(pending_id, flow.connection);
            match released {
                Some(_) => {
                    info!(pending = pending_id, action = %timed_out.action, "prompt timed out");
                    timed_out
                }
                // A verdict took the connection after the timer fired; it is in the channel.
                None => receiver.await.unwrap_or(timed_out),
            }
        }
    }
}

async fn relay(shared: &Shared, flow: &Flow, mut client: TcpStream) {
    let timeout = shared.config.upstream_connect_timeout();
    let mark = shared.config.interception.bypass_mark;
    let mut upstream = match transparent::connect_upstream(flow.destination, mark, timeout).await {
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
            // Mirror a reset or failure on either side as a reset of both.
            debug!(error = %err, "relay failed; resetting both sides");
            transparent::reset(client);
            transparent::reset(upstream);
            shared.emit(flow, closed(0, 0, Some(format!("relay failed: {err}"))));
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
