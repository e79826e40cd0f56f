//! The daemon: accepts diverted TCP connections, holds them until a verdict, relays or resets
//! them, and serves the control socket. UDP flows go through the same verdicts in [`crate::udp`].

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
use tollgate_rules::{
    Action, AddressMatch, Connection, Destination, Lifetime, PortMatch, Protocol, ProtocolMatch,
    Rule, RuleId, RuleSet, RuleStore, Subject,
};
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::{
    attribution::{KernelAttribution, NoAttribution, OwnerLookup},
    audit::{FlowIdentity, FlowLog},
    config::{Config, Mode},
    control::{self, ControlListener},
    firewall::{HEARTBEAT_INTERVAL, Interception, KernelAllow},
    holding::{NewHold, PendingTable, Verdict, unix_ms},
    policy::{FlowFacts, Policy},
    protocol::{
        DecidedBy, ErrorCode, Event, EventKind, Expected, NewRule, PendingInfo, ProcessInfo,
        Response, StatusInfo,
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
    let control = ControlListener::bind(&config.control_socket, allowed_uids)?;
    let listeners = bind_listeners(&config)?;
    let udp_listeners = udp::bind_listeners(&config)?;
    // In enforce mode only the policy allows, so no rule may let traffic pass on its own.
    let allowed = match config.mode {
        Mode::Enforce => Vec::new(),
        Mode::Interactive | Mode::Audit => kernel_allows(&rules),
    };
    let interception = if config.interception.enabled {
        Some(
            Interception::install(&config.interception, &allowed)
                .await
                .context("failed to install interception")?,
        )
    } else {
        warn!("interception disabled in config; only connections sent to the listeners are seen");
        None
    };

    let (owners, classifier_counters) = load_attribution(&config);
    let decisions = Decisions { policy, flow_log };
    let shared = Arc::new(Shared::new(
        config,
        store,
        rules,
        interception,
        owners,
        decisions,
    ));
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(counters) = classifier_counters {
        tasks.spawn(counters);
    }
    for listener in listeners {
        tasks.spawn(accept_loop(Arc::clone(&shared), listener));
    }
    for listener in udp_listeners {
        tasks.spawn(udp::serve(Arc::clone(&shared), listener));
    }
    tasks.spawn(control.serve(Arc::clone(&shared)));
    tasks.spawn(keep_kernel_state(Arc::clone(&shared)));

    shutdown.await;
    info!("shutting down");
    tasks.abort_all();
    if let Some(interception) = shared.interception.lock().await.take()
        && let Err(err) = interception.remove().await
    {
        error!(error = %format!("{err:#}"), "failed to remove interception");
    }
    if let Some(flow_log) = &shared.decisions.flow_log {
        write_summary(&shared.config, flow_log);
    }
    Ok(())
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

/// Loads the BPF programs that name each flow's process. Without them the daemon still works,
/// but every flow shows as "unknown process", so a failure is logged as an error.
fn load_attribution(config: &Config) -> (Arc<dyn OwnerLookup>, Option<CountersTask>) {
    if !config.attribution.enabled {
        warn!("process attribution disabled in config; flows show as unknown process");
        return (Arc::new(NoAttribution), None);
    }
    if let Some(release) = kernel_too_old() {
        error!(
            kernel = %release,
            "process attribution needs Linux {}.{} or newer; flows show as unknown process",
            MIN_KERNEL.0,
            MIN_KERNEL.1
        );
        return (Arc::new(NoAttribution), None);
    }
    let cgroup = match &config.attribution.cgroup {
        Some(path) => path.clone(),
        None => match tollgate_classifier::cgroup2_root() {
            Ok(path) => path,
            Err(err) => {
                error!(error = %err, "process attribution unavailable; flows show as unknown process");
                return (Arc::new(NoAttribution), None);
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
            let attribution = Arc::new(KernelAttribution::new(classifier));
            let counters = Box::pin(watch_counters(Arc::clone(&attribution)));
            (attribution, Some(counters))
        }
        Err(err) => {
            error!(
                cgroup = %cgroup.display(),
                error = %format!("{err:#}"),
                "process attribution unavailable; flows show as unknown process"
            );
            (Arc::new(NoAttribution), None)
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
    /// Second of uptime in which the held-connection limit was last logged.
    limit_reported: AtomicU64,
    /// The installed interception, `None` while it is off.
    interception: tokio::sync::Mutex<Option<Interception>>,
    /// Wakes the task that copies forever-allow rules into the kernel.
    rules_changed: tokio::sync::Notify,
    pub(crate) owners: Arc<dyn OwnerLookup>,
    decisions: Decisions,
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
        interception: Option<Interception>,
        owners: Arc<dyn OwnerLookup>,
        decisions: Decisions,
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
            limit_reported: AtomicU64::new(u64::MAX),
            interception: tokio::sync::Mutex::new(interception),
            rules_changed: tokio::sync::Notify::new(),
            owners,
            decisions,
        }
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
            rules: state.rules.len(),
            active_connections: self.active.load(Ordering::Relaxed),
            prompt_timeout_secs: self.config.prompt_timeout_secs,
            default_action: self.config.default_action,
            mode: self.config.mode,
        }
    }

    /// Installs or removes the interception, leaving the daemon running. Held connections keep
    /// waiting for their verdicts either way.
    pub async fn set_interception(&self, enabled: bool) -> Result<Response, RequestError> {
        let mut interception = self.interception.lock().await;
        match (enabled, interception.take()) {
            (true, None) => {
                let allowed = self.kernel_allows();
                let installed = Interception::install(&self.config.interception, &allowed)
                    .await
                    .map_err(|err| {
                        error!(error = %format!("{err:#}"), "failed to install interception");
                        (
                            ErrorCode::Internal,
                            format!("failed to enable interception: {err:#}"),
                        )
                    })?;
                *interception = Some(installed);
                warn!("interception enabled by control request");
            }
            (false, Some(installed)) => {
                if let Err(err) = installed.remove().await {
                    error!(error = %format!("{err:#}"), "failed to remove interception");
                    // Whatever is left still diverts traffic, so report it as installed.
                    let allowed = self.kernel_allows();
                    *interception = Interception::install(&self.config.interception, &allowed)
                        .await
                        .ok();
                    return Err((
                        ErrorCode::Internal,
                        format!("failed to disable interception: {err:#}"),
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
        self.rules_changed.notify_one();
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
        self.rules_changed.notify_one();
        Ok(())
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

    /// Returns the destinations the kernel lets pass while the daemon is down: none in enforce
    /// mode, where only the policy allows.
    fn kernel_allows(&self) -> Vec<KernelAllow> {
        match self.config.mode {
            Mode::Enforce => Vec::new(),
            Mode::Interactive | Mode::Audit => kernel_allows(&self.lock().rules),
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
                process: flow.process.as_ref(),
                source: flow.source,
                destination: flow.destination,
                protocol: flow.protocol,
            };
            flow_log.observe(&identity, &kind, time_unix_ms);
        }
        // Sending fails only when nobody is watching, which is fine.
        let _ = self.events.send(Event {
            time_unix_ms,
            connection: flow.connection,
            process: flow.process.clone(),
            source: flow.source,
            destination: flow.destination,
            protocol: flow.protocol,
            kind,
        });
    }
}

/// Keeps the kernel's copy of the daemon's state current: refreshes the `alive` element that
/// tells the table the daemon runs, and copies forever-allow rules into it after each change.
async fn keep_kernel_state(shared: Arc<Shared>) {
    let mut interval = tokio::time::interval(HEARTBEAT_INTERVAL);
    let mut failing = false;
    loop {
        let rules_changed = tokio::select! {
            _ = interval.tick() => false,
            () = shared.rules_changed.notified() => true,
        };
        let interception = shared.interception.lock().await;
        let Some(interception) = interception.as_ref() else {
            continue;
        };
        let result = if rules_changed {
            let allowed = shared.kernel_allows();
            debug!(
                destinations = allowed.len(),
                "updating forever-allowed destinations"
            );
            interception.replace_allowed(&allowed)
        } else {
            interception.heartbeat()
        };
        match result {
            Ok(()) => failing = false,
            // Logged once per run of failures, since it repeats every second.
            Err(err) if !failing => {
                failing = true;
                error!(error = %format!("{err:#}"), "failed to update the kernel's state");
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
    rules
        .iter()
        .filter(|rule| {
            rule.enabled
                && rule.action == Action::Allow
                && rule.lifetime == Lifetime::Forever
                && rule.subject == Subject::Any
        })
        .map(|rule| KernelAllow {
            network: match rule.destination.address {
                AddressMatch::Any => None,
                AddressMatch::Ip(IpAddr::V4(ip)) => Some((IpAddr::V4(ip), 32)),
                AddressMatch::Ip(IpAddr::V6(ip)) => match ip.to_ipv4_mapped() {
                    Some(v4) => Some((IpAddr::V4(v4), 32)),
                    None => Some((IpAddr::V6(ip), 128)),
                },
                AddressMatch::Cidr(cidr) => Some((cidr.addr, cidr.prefix)),
            },
            protocol: match rule.destination.protocol {
                ProtocolMatch::Any => None,
                ProtocolMatch::Tcp => Some(libc::IPPROTO_TCP as u8),
                ProtocolMatch::Udp => Some(libc::IPPROTO_UDP as u8),
            },
            port: match rule.destination.port {
                PortMatch::Any => None,
                PortMatch::Port(port) => Some(port),
            },
        })
        .collect()
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

/// Returns the verdict for a new connection. In interactive mode it comes from a rule at once,
/// or after holding the connection as a pending request until someone decides or the prompt
/// times out. Audit mode allows everything, and in enforce mode the policy decides.
pub(crate) async fn verdict_for(shared: &Shared, flow: &Flow) -> Verdict {
    match shared.config.mode {
        Mode::Interactive => {}
        Mode::Audit => return audit_verdict(shared, flow),
        Mode::Enforce => return enforce_verdict(shared, flow),
    }
    let (pending_id, mut receiver) = {
        let mut state = shared.lock();
        if let Some(rule) = state.rules.decide(&connection_of_flow(flow)) {
            return Verdict {
                action: rule.action,
                by: DecidedBy::Rule { rule: rule.id },
            };
        }
        if state.pending.held_connections() >= shared.config.max_held_connections {
            shared.report_limit();
            return Verdict {
                action: shared.config.default_action,
                by: DecidedBy::Limit,
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

/// Allows the flow and notes, for the flow log, what the policy (or without one, the rules)
/// would do with it.
fn audit_verdict(shared: &Shared, flow: &Flow) -> Verdict {
    let (expected, reason) = match &shared.decisions.policy {
        Some(policy) => match policy.check(&facts_of(flow)) {
            Ok(_) => (Expected::Allow, None),
            Err(denial) => (Expected::Deny, Some(denial.to_string())),
        },
        None => match shared.lock().rules.decide(&connection_of_flow(flow)) {
            Some(rule) if rule.action == Action::Allow => (Expected::Allow, None),
            Some(rule) => (Expected::Deny, Some(format!("rule {} denies it", rule.id))),
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
        // NOTE: names are not known to the daemon yet, so domain entries match no flow.
        host: None,
        ip: flow.destination.ip(),
        port: flow.destination.port(),
        protocol: flow.protocol,
    }
}

fn connection_of_flow(flow: &Flow) -> Connection<'_> {
    Connection {
        executable: flow
            .process
            .as_ref()
            .and_then(|process| process.executable.as_deref()),
        ip: flow.destination.ip(),
        port: flow.destination.port(),
        protocol: flow.protocol,
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
