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
use tollgate_rules::{
    Action, AddressMatch, ConnectionFacts, Destination, Lifetime, PortMatch, Protocol,
    ProtocolMatch, Rule, RuleId, RuleSet, RuleStore, Subject,
};
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::{
    attribution::{NoAttribution, OwnerLookup},
    clock,
    config::Config,
    control::{self, ControlListener},
    firewall::Interception,
    holding::{NewHold, PendingTable, Verdict, unix_ms},
    protocol::{
        DecidedBy, ErrorCode, Event, EventKind, NewRule, PendingInfo, ProcessInfo, Response,
        StatusInfo,
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

    let shared = Arc::new(Shared::new(config, store, rules, interception.is_some()));
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
    Ok(())
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
    owners: Box<dyn OwnerLookup>,
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
            owners: Box::new(NoAttribution),
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
        }
    }

    /// Returns the pending requests, oldest first.
    pub fn pending(&self) -> Vec<PendingInfo> {
        self.lock().pending.list()
    }

    /// Returns every rule in precedence order.
    pub fn rules(&self) -> Vec<Rule> {
        let state = self.lock();
        state
            .rules
            .in_precedence_order()
            .into_iter()
            .cloned()
            .collect()
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
    pub fn add_rule(&self, new: Box<NewRule>) -> Result<Response, RequestError> {
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
            created_unix_ms: unix_ms(SystemTime::now()),
            updated_unix_ms: unix_ms(SystemTime::now()),
            priority: false,
            hits: 0,
            last_hit_unix_ms: None,
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
        if rule.lifetime.is_stored() {
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
        if rule.lifetime.is_stored() {
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
    let now = clock::now();
    let groups =
        pending.take_matching(
            |info| match rules.decide(&facts_of(info).as_connection(), &now) {
                Some(rule) => {
                    verdicts.push(Verdict {
                        action: rule.action,
                        by: DecidedBy::Rule { rule: rule.id },
                    });
                    true
                }
                None => false,
            },
        );
    groups
        .into_iter()
        .zip(verdicts)
        .map(|(group, verdict)| group.settle(verdict))
        .sum()
}

fn facts_of(info: &PendingInfo) -> ConnectionFacts {
    connection_facts(info.process.as_ref(), info.destination, info.protocol)
}

/// Returns what the daemon knows about a connection: the process's executable and uid when
/// known, and the destination.
fn connection_facts(
    process: Option<&ProcessInfo>,
    destination: SocketAddr,
    protocol: Protocol,
) -> ConnectionFacts {
    let mut facts = ConnectionFacts::to(destination.ip(), destination.port(), protocol);
    if let Some(process) = process {
        facts.executable = process.executable.clone();
        facts.uid = Some(process.uid);
    }
    facts
}

/// Builds the rule that a decision on a pending request creates: this executable (or any
/// process when unknown), this address, port and protocol.
fn rule_for_pending(info: &PendingInfo, action: Action, lifetime: Lifetime, id: RuleId) -> Rule {
    let subject = match info.process.as_ref().and_then(|p| p.executable.clone()) {
        Some(path) => Subject::executable(path),
        None => Subject::any(),
    };
    let protocol = match info.protocol {
        Protocol::Tcp => ProtocolMatch::Tcp,
        Protocol::Udp => ProtocolMatch::Udp,
    };
    let destination = Destination {
        address: AddressMatch::Ip(info.destination.ip()),
        port: PortMatch::Port(info.destination.port()),
        protocol,
    };
    let mut rule = Rule::new(id, subject, destination, action, lifetime);
    rule.note = format!("answer to pending request {}", info.id);
    rule.created_unix_ms = unix_ms(SystemTime::now());
    rule.updated_unix_ms = rule.created_unix_ms;
    rule
}

/// The identity of one diverted connection.
struct Flow {
    connection: u64,
    process: Option<ProcessInfo>,
    source: SocketAddr,
    destination: SocketAddr,
    protocol: Protocol,
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
        connection: shared.next_connection.fetch_add(1, Ordering::Relaxed),
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

/// Returns the verdict for a new connection: from a rule at once, or after holding it as a
/// pending request until someone decides or the prompt times out.
async fn verdict_for(shared: &Shared, flow: &Flow) -> Verdict {
    let (pending_id, mut receiver) = {
        let mut state = shared.lock();
        let facts = connection_facts(flow.process.as_ref(), flow.destination, flow.protocol);
        if let Some(rule) = state.rules.decide(&facts.as_connection(), &clock::now()) {
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
