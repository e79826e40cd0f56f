//! The daemon: accepts diverted connections, holds them until a verdict, relays or resets them,
//! and serves the control socket.

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
use tollgate_resolver::{
    DnsServer, Hooks, NameMap, RefuseNothing, UpstreamConfig, resolv_conf, sockets::ListenConfig,
};
use tollgate_rules::{
    Action, AddressMatch, Connection, Destination, Lifetime, PortMatch, Protocol, ProtocolMatch,
    Rule, RuleId, RuleSet, RuleStore, Subject,
};
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::{
    attribution::{NoAttribution, OwnerLookup},
    config::Config,
    control::{self, ControlListener},
    firewall::{DnsSpec, Interception},
    holding::{NewHold, PendingTable, Verdict, unix_ms},
    naming::{self, DaemonAskers, Naming},
    protocol::{
        DecidedBy, ErrorCode, Event, EventKind, NameMapStatus, NewRule, PendingInfo, ProcessInfo,
        Response, StatusInfo,
    },
    transparent,
};

/// Number of events buffered for each watcher before it starts missing some.
const EVENT_BUFFER: usize = 4096;

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
    let owners: Arc<dyn OwnerLookup> = Arc::new(NoAttribution);
    let dns = start_resolver(&config, Arc::clone(&owners))?;
    let interception = if config.interception.enabled {
        let diversion = dns.as_ref().map(|_| dns_spec(&config));
        Some(
            Interception::install(&config.interception, diversion)
                .await
                .context("failed to install interception")?,
        )
    } else {
        warn!("interception disabled in config; only connections sent to the listeners are seen");
        None
    };

    let names = dns.as_ref().map(DnsServer::names);
    let mut shared = Shared::new(config, store, rules, interception.is_some());
    shared.owners = owners;
    shared.names = names;
    let shared = Arc::new(shared);
    let mut tasks = tokio::task::JoinSet::new();
    for listener in listeners {
        tasks.spawn(accept_loop(Arc::clone(&shared), listener));
    }
    tasks.spawn(control.serve(Arc::clone(&shared)));

    shutdown.await;
    info!("shutting down");
    tasks.abort_all();
    if let Some(interception) = interception
        && let Err(err) = interception.remove().await
    {
        error!(error = %format!("{err:#}"), "failed to remove interception");
    }
    // The resolver stops only now, so no diverted query found its socket missing.
    drop(dns);
    Ok(())
}

/// Starts the local resolver on the loopback addresses, unless the config disables it.
fn start_resolver(
    config: &Config,
    owners: Arc<dyn OwnerLookup>,
) -> anyhow::Result<Option<DnsServer>> {
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
        policy: Arc::new(RefuseNothing),
    };
    let server = DnsServer::start(dns, &upstreams, &listen, hooks)
        .context("failed to start the DNS resolver (needs CAP_NET_ADMIN)")?;
    Ok(Some(server))
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

/// Returns the DNS diversion: the resolver's port and the uids of the exempt users that exist.
///
/// NOTE: queries to a local stub (127.0.0.53) are not diverted, because the `fib daddr type
/// local` rule returns first, so programs behind such a stub are named by their first bytes.
fn dns_spec(config: &Config) -> DnsSpec {
    let exempt_uids = config
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
    DnsSpec {
        port: config.dns.port,
        exempt_uids,
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
    config: Config,
    state: Mutex<State>,
    store: RuleStore,
    events: broadcast::Sender<Event>,
    next_connection: AtomicU64,
    active: AtomicUsize,
    started: Instant,
    intercepting: bool,
    owners: Arc<dyn OwnerLookup>,
    /// Names resolved through the local resolver, when it runs.
    names: Option<Arc<NameMap>>,
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
    fn new(config: Config, store: RuleStore, rules: RuleSet, intercepting: bool) -> Self {
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
            owners: Arc::new(NoAttribution),
            names: None,
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
            names: self.names.as_deref().map(|names| {
                let stats = names.stats();
                NameMapStatus {
                    entries: stats.entries,
                    evictions: stats.evictions,
                    expirations: stats.expirations,
                }
            }),
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
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data: every critical section
        // either completes its change or makes none, so the poison flag is ignored.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn emit(&self, flow: &Flow, kind: EventKind) {
        // Sending fails only when nobody is watching, which is fine.
        let _ = self.events.send(Event {
            time_unix_ms: unix_ms(SystemTime::now()),
            connection: flow.connection,
            process: flow.process.clone(),
            source: flow.source,
            destination: flow.destination,
            host: flow.naming.host.clone(),
            name_source: flow.naming.source,
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

/// The identity of one diverted connection.
struct Flow {
    connection: u64,
    process: Option<ProcessInfo>,
    source: SocketAddr,
    destination: SocketAddr,
    protocol: Protocol,
    /// The destination's host name, from DNS at first and from the first bytes once peeked.
    naming: Naming,
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
    let naming = shared
        .names
        .as_deref()
        .and_then(|names| {
            let asker = naming::asker_for(process.as_ref(), source);
            naming::from_dns(names, asker, destination.ip())
        })
        .unwrap_or_default();
    let mut flow = Flow {
        connection: shared.next_connection.fetch_add(1, Ordering::Relaxed),
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
        let verdict = verdict_for(&shared, &mut flow, &stream).await;
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

/// Returns the verdict for a new connection: from a rule at once, or after holding it as a
/// pending request until someone decides or the prompt times out. A connection about to be held
/// without a DNS name is named from its first bytes first.
async fn verdict_for(shared: &Shared, flow: &mut Flow, stream: &TcpStream) -> Verdict {
    if let Some(verdict) = rule_verdict(shared, flow) {
        return verdict;
    }
    if flow.naming.host.is_none()
        && let Some(naming) = naming::peek_name(stream, shared.config.dns.peek_timeout()).await
    {
        debug!(host = ?naming.host, source = %naming.source, "named from first bytes");
        flow.naming = naming;
    }

    let (pending_id, mut receiver) = {
        let mut state = shared.lock();
        // A rule may have been added while the first bytes were awaited.
        if let Some(rule) = state.rules.decide(&connection_of_flow(flow)) {
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
            host: flow.naming.host.clone(),
            name_source: flow.naming.source,
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

/// Returns the verdict of the first matching rule, if any.
fn rule_verdict(shared: &Shared, flow: &Flow) -> Option<Verdict> {
    let state = shared.lock();
    let rule = state.rules.decide(&connection_of_flow(flow))?;
    Some(Verdict {
        action: rule.action,
        by: DecidedBy::Rule { rule: rule.id },
    })
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

fn closed(bytes_up: u64, bytes_down: u64, error: Option<String>) -> EventKind {
    EventKind::Closed {
        bytes_up,
        bytes_down,
        error,
    }
}

/// Turns an IPv4-mapped IPv6 address into the IPv4 address it carries.
fn unmap(address: SocketAddr) -> SocketAddr {
    match address {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => address,
        },
        SocketAddr::V4(_) => address,
    }
}
