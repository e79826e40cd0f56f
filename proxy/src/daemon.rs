//! The daemon: accepts diverted connections, holds them until a verdict, relays or resets them,
//! and serves the control socket.

use std::{
    collections::HashMap,
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
use tollgate_rules::{Action, Connection, Protocol, RuleId, RuleSet, RuleStore};
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::{
    attribution::{NoAttribution, OwnerLookup},
    config::Config,
    control::{self, ControlListener},
    counting::CountingStream,
    expiry::Expiry,
    firewall::Interception,
    holding::{NewHold, PendingTable, Verdict, unix_ms},
    protocol::{
        ConnectionInfo, ConnectionState, DecidedBy, ErrorCode, Event, EventKind, PendingInfo,
        ProcessInfo, StatusInfo,
    },
    tracking::{ByteCounters, ConnectionTable},
    transparent,
};

mod requests;

/// Number of events buffered for each watcher before it starts missing some.
const EVENT_BUFFER: usize = 4096;

/// Size of each relay buffer, per direction.
const RELAY_BUFFER: usize = 64 * 1024;

/// How often rules with an expiry are checked.
const EXPIRY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

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
    tasks.spawn(expire_loop(Arc::clone(&shared)));

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

/// Removes expired rules every [`EXPIRY_INTERVAL`].
async fn expire_loop(shared: Arc<Shared>) {
    let mut interval = tokio::time::interval(EXPIRY_INTERVAL);
    loop {
        interval.tick().await;
        shared.expire_rules();
    }
}

/// State shared by the connection tasks and the control socket.
pub struct Shared {
    config: Config,
    state: Mutex<State>,
    connections: Mutex<ConnectionTable>,
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
    /// Conditions that remove until-restart rules early, by rule.
    expiries: HashMap<RuleId, Expiry>,
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
                expiries: HashMap::new(),
            }),
            connections: Mutex::new(ConnectionTable::new()),
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

    /// Returns the connections in progress and the most recently ended ones.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        self.track().list()
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

    fn track(&self) -> MutexGuard<'_, ConnectionTable> {
        // Every change to the table is a single insert, update or move, so a panic cannot
        // leave it half-changed and the poison flag is ignored.
        self.connections
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

/// The identity of one diverted connection.
struct Flow {
    connection: u64,
    process: Option<ProcessInfo>,
    source: SocketAddr,
    destination: SocketAddr,
    protocol: Protocol,
}

impl Flow {
    fn info(&self) -> ConnectionInfo {
        ConnectionInfo {
            connection: self.connection,
            process: self.process.clone(),
            source: self.source,
            destination: self.destination,
            protocol: self.protocol,
            domain: None,
            state: ConnectionState::Pending,
            pending_id: None,
            decided_by: None,
            started_unix_ms: unix_ms(SystemTime::now()),
            ended_unix_ms: None,
            bytes_up: 0,
            bytes_down: 0,
            error: None,
        }
    }
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
    let bytes = shared.track().open(flow.info());
    async move {
        let verdict = verdict_for(&shared, &flow).await;
        debug!(action = %verdict.action, by = ?verdict.by, "verdict");
        shared
            .track()
            .decide(flow.connection, verdict.action, verdict.by);
        shared.emit(
            &flow,
            EventKind::Decided {
                action: verdict.action,
                by: verdict.by,
            },
        );
        let error = match verdict.action {
            Action::Allow => relay(&shared, &flow, stream, bytes).await,
            Action::Deny => {
                transparent::reset(stream);
                None
            }
        };
        let now = unix_ms(SystemTime::now());
        shared.track().end(flow.connection, now, error);
    }
    .instrument(span)
    .await;
}

/// Returns the verdict for a new connection: from a rule at once, or after holding it as a
/// pending request until someone decides or the prompt times out.
async fn verdict_for(shared: &Shared, flow: &Flow) -> Verdict {
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
    shared.track().hold(flow.connection, pending_id);
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

/// Relays an allowed connection and returns the reason it failed, if it did.
async fn relay(
    shared: &Shared,
    flow: &Flow,
    client: TcpStream,
    bytes: ByteCounters,
) -> Option<String> {
    let timeout = shared.config.upstream_connect_timeout();
    let mark = shared.config.interception.bypass_mark;
    let upstream = match transparent::connect_upstream(flow.destination, mark, timeout).await {
        Ok(upstream) => upstream,
        Err(err) => {
            info!(error = %err, "upstream connect failed; resetting client");
            transparent::reset(client);
            let error = format!("upstream connect failed: {err}");
            shared.emit(flow, closed(0, 0, Some(error.clone())));
            return Some(error);
        }
    };

    let mut client = CountingStream::new(client, Arc::clone(&bytes.up));
    let mut upstream = CountingStream::new(upstream, Arc::clone(&bytes.down));
    shared.active.fetch_add(1, Ordering::Relaxed);
    let result = tokio::io::copy_bidirectional_with_sizes(
        &mut client,
        &mut upstream,
        RELAY_BUFFER,
        RELAY_BUFFER,
    )
    .await;
    shared.active.fetch_sub(1, Ordering::Relaxed);

    let up = bytes.up.load(Ordering::Relaxed);
    let down = bytes.down.load(Ordering::Relaxed);
    match result {
        Ok(_) => {
            debug!(bytes_up = up, bytes_down = down, "relay finished");
            shared.emit(flow, closed(up, down, None));
            None
        }
        Err(err) => {
            // Mirror a reset or failure on either side as a reset of both.
            debug!(error = %err, "relay failed; resetting both sides");
            transparent::reset(client.into_inner());
            transparent::reset(upstream.into_inner());
            let error = format!("relay failed: {err}");
            shared.emit(flow, closed(up, down, Some(error.clone())));
            Some(error)
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
