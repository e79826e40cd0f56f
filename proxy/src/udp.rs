//! UDP flows, keyed by client address and original destination.
//!
//! The first datagrams of a new flow wait in a bounded queue until a verdict. Allowed flows are
//! relayed both ways through a reply socket bound to the original destination. Denied flows
//! are dropped. A flow ends after it has been idle for the configured time.

use std::{
    collections::{HashMap, hash_map::Entry},
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex, MutexGuard, atomic::Ordering},
    time::Duration,
};

use anyhow::Context as _;
use tokio::{net::UdpSocket, sync::mpsc, time::Instant};
use tollgate_rules::{Action, Protocol};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::{
    config::Config,
    daemon::{Flow, Shared, closed, unmap, verdict_for},
    protocol::EventKind,
    tracking::ByteCounters,
    transparent, unreachable,
};

/// Largest UDP payload over IPv6 without jumbograms; every datagram fits.
const MAX_DATAGRAM: usize = 65_535;

/// Opens the transparent UDP listeners on 127.0.0.1 and ::1.
pub fn bind_listeners(config: &Config) -> anyhow::Result<Vec<UdpSocket>> {
    let port = config.interception.udp_port;
    let mark = config.interception.bypass_mark;
    let mut listeners = Vec::new();
    for address in [
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
    ] {
        let listener = transparent::transparent_udp_listener(address, mark).with_context(|| {
            format!("failed to open transparent UDP listener on {address} (needs CAP_NET_ADMIN)")
        })?;
        info!(%address, "listening for diverted datagrams");
        listeners.push(listener);
    }
    Ok(listeners)
}

/// A flow: client address and the original destination.
type FlowKey = (SocketAddr, SocketAddr);

/// State of a known flow, which decides the fate of its next datagram at the listener.
enum FlowState {
    /// Waiting for a verdict; datagrams queue up to the configured limit.
    Pending { queue: Vec<Vec<u8>>, dropped: u64 },
    /// Allowed: datagrams that still reach the listener go to the relay task.
    Relaying(mpsc::Sender<Vec<u8>>),
    /// Denied: datagrams are dropped until the flow has been idle for the idle timeout.
    Denied { last_seen: Instant },
}

/// The flows of one listener.
#[derive(Default)]
struct FlowTable {
    flows: Mutex<HashMap<FlowKey, FlowState>>,
    /// Bytes queued across all pending flows, kept below [`MAX_QUEUED_BYTES`].
    queued_bytes: std::sync::atomic::AtomicUsize,
}

/// Bytes of datagrams queued across all flows that wait for a verdict. Beyond it new datagrams
/// of pending flows are dropped, so a flood of large datagrams cannot exhaust memory.
const MAX_QUEUED_BYTES: usize = 32 * 1024 * 1024;

impl FlowTable {
    /// Forgets the bytes of a queue that left the pending state.
    fn release_queue(&self, queue: &[Vec<u8>]) {
        let bytes = queue.iter().map(Vec::len).sum::<usize>();
        self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<FlowKey, FlowState>> {
        // Each critical section leaves the map consistent, so a poisoned lock is still usable.
        self.flows
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Receives datagrams on `listener` until the task is aborted, starting a task per new flow.
pub async fn serve(shared: Arc<Shared>, listener: UdpSocket) {
    let table = Arc::new(FlowTable::default());
    let mut buffer = vec![0u8; MAX_DATAGRAM];
    loop {
        let (len, source, destination) =
            match transparent::recv_with_destination(&listener, &mut buffer).await {
                Ok(received) => received,
                Err(err) => {
                    warn!(error = %err, "failed to receive diverted datagram");
                    continue;
                }
            };
        let key = (unmap(source), unmap(destination));
        let payload = buffer[..len].to_vec();
        let outcome = dispatch(&table, key, payload, shared.config.udp_queue_limit);
        if let Dispatch::Denied = outcome {
            refuse(&shared, key, len);
        }
        if let Dispatch::NewFlow(payload) = outcome {
            let process = shared.owners.lookup(Protocol::Udp, key.0, key.1);
            let naming = shared.name_for(process.as_deref(), key.0, key.1);
            let flow = Flow {
                connection: shared.next_connection(),
                process,
                source: key.0,
                destination: key.1,
                protocol: Protocol::Udp,
                naming,
            };
            tokio::spawn(run_flow(
                Arc::clone(&shared),
                Arc::clone(&table),
                flow,
                payload,
            ));
        }
    }
}

/// What the listener did with a datagram.
enum Dispatch {
    /// The datagram starts a new flow, which needs a task.
    NewFlow(Vec<u8>),
    /// The datagram was queued or relayed.
    Taken,
    /// The datagram belongs to a denied flow and was dropped.
    Denied,
}

/// Hands a datagram to its flow.
fn dispatch(table: &FlowTable, key: FlowKey, payload: Vec<u8>, limit: usize) -> Dispatch {
    let mut flows = table.lock();
    match flows.entry(key) {
        Entry::Vacant(entry) => {
            entry.insert(FlowState::Pending {
                queue: Vec::new(),
                dropped: 0,
            });
            Dispatch::NewFlow(payload)
        }
        Entry::Occupied(mut entry) => {
            match entry.get_mut() {
                FlowState::Pending { queue, dropped } => {
                    // The flow task keeps the first datagram, so the queue stores only the later ones.
                    let total = table.queued_bytes.load(Ordering::Relaxed);
                    if queue.len() + 1 < limit && total + payload.len() <= MAX_QUEUED_BYTES {
                        table
                            .queued_bytes
                            .fetch_add(payload.len(), Ordering::Relaxed);
                        queue.push(payload);
                    } else {
                        *dropped += 1;
                    }
                }
                FlowState::Relaying(sender) => {
                    // A full channel means the relay is behind; UDP may drop, so do that.
                    let _ = sender.try_send(payload);
                }
                FlowState::Denied { last_seen } => {
                    *last_seen = Instant::now();
                    return Dispatch::Denied;
                }
            }
            Dispatch::Taken
        }
    }
}

async fn run_flow(shared: Arc<Shared>, table: Arc<FlowTable>, mut flow: Flow, first: Vec<u8>) {
    let key = (flow.source, flow.destination);
    let process = match &flow.process {
        Some(process) => format!("{} ({})", process.comm, process.pid),
        None => "unknown process".to_owned(),
    };
    let span = info_span!(
        "udp_flow",
        id = flow.connection,
        source = %flow.source,
        destination = %flow.destination,
        %process
    );
    async move {
        let verdict = verdict_for(&shared, &mut flow, None).await;
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
            Action::Allow => relay(&shared, &table, &flow, first).await,
            Action::Deny => drop_until_idle(&shared, &table, key, first.len()).await,
        }
    }
    .instrument(span)
    .await;
}

/// Answers a denied datagram with ICMP "port unreachable" when the config asks for it.
fn refuse(shared: &Shared, (client, destination): FlowKey, payload_len: usize) {
    if !shared.config.udp_deny_icmp {
        return;
    }
    let mark = shared.config.interception.bypass_mark;
    if let Err(err) = unreachable::send_port_unreachable(client, destination, payload_len, mark) {
        debug!(%client, %destination, error = %err, "failed to send ICMP port unreachable");
    }
}

/// Keeps dropping a denied flow's datagrams until it has been idle for the idle timeout.
async fn drop_until_idle(shared: &Shared, table: &FlowTable, key: FlowKey, first_len: usize) {
    let idle = shared.config.udp_idle_timeout();
    let dropped = match table.lock().insert(
        key,
        FlowState::Denied {
            last_seen: Instant::now(),
        },
    ) {
        Some(FlowState::Pending { queue, dropped }) => {
            table.release_queue(&queue);
            queue.len() as u64 + dropped + 1
        }
        _ => 1,
    };
    debug!(dropped, "denied flow; dropping its datagrams");
    refuse(shared, key, first_len);
    loop {
        let last_seen = match table.lock().get(&key) {
            Some(FlowState::Denied { last_seen }) => *last_seen,
            _ => return,
        };
        let expires = last_seen + idle;
        if Instant::now() >= expires {
            table.lock().remove(&key);
            return;
        }
        tokio::time::sleep_until(expires).await;
    }
}

async fn relay(shared: &Shared, table: &FlowTable, flow: &Flow, first: Vec<u8>) {
    let key = (flow.source, flow.destination);
    let mark = shared.config.interception.bypass_mark;
    let sockets = async {
        let upstream = transparent::udp_upstream(flow.destination, mark).await?;
        let reply = transparent::udp_reply_socket(flow.destination, flow.source, mark)?;
        io::Result::Ok((upstream, reply))
    };
    let (upstream, reply) = match sockets.await {
        Ok(sockets) => sockets,
        Err(err) => {
            warn!(error = %err, "failed to open sockets for UDP flow");
            if let Some(FlowState::Pending { queue, .. }) = table.lock().remove(&key) {
                table.release_queue(&queue);
            }
            shared.emit(
                flow,
                closed(0, 0, Some(format!("failed to open sockets: {err}"))),
            );
            return;
        }
    };

    // From here on the listener forwards stragglers through the channel.
    let (sender, mut stragglers) = mpsc::channel(shared.config.udp_queue_limit);
    let queued = match table.lock().insert(key, FlowState::Relaying(sender)) {
        Some(FlowState::Pending { queue, dropped }) => {
            table.release_queue(&queue);
            if dropped > 0 {
                info!(
                    dropped,
                    "datagrams dropped while the flow waited for a verdict"
                );
            }
            queue
        }
        _ => Vec::new(),
    };
    let mut counts = Counts(shared.byte_counters(flow.connection));
    for payload in std::iter::once(first).chain(queued) {
        counts.send_up(&upstream, &payload).await;
    }

    shared.active.fetch_add(1, Ordering::Relaxed);
    let error = copy_until_idle(
        &upstream,
        &reply,
        &mut stragglers,
        shared.config.udp_idle_timeout(),
        &mut counts,
    )
    .await;
    shared.active.fetch_sub(1, Ordering::Relaxed);
    table.lock().remove(&key);
    debug!(
        bytes_up = counts.up(),
        bytes_down = counts.down(),
        "UDP flow ended"
    );
    shared.emit(flow, closed(counts.up(), counts.down(), error));
}

/// Bytes relayed each way, which the monitor reads while the flow runs.
struct Counts(ByteCounters);

impl Counts {
    fn up(&self) -> u64 {
        self.0.up.load(Ordering::Relaxed)
    }

    fn down(&self) -> u64 {
        self.0.down.load(Ordering::Relaxed)
    }

    async fn send_up(&mut self, upstream: &UdpSocket, payload: &[u8]) {
        match upstream.send(payload).await {
            Ok(sent) => {
                self.0.up.fetch_add(sent as u64, Ordering::Relaxed);
            }
            // A refused send (ICMP from the destination) is normal for UDP.
            Err(err) => debug!(error = %err, "failed to send datagram upstream"),
        }
    }
}

/// Relays datagrams both ways until neither side has sent anything for `idle`. Returns the
/// reason when the relay failed.
async fn copy_until_idle(
    upstream: &UdpSocket,
    reply: &UdpSocket,
    stragglers: &mut mpsc::Receiver<Vec<u8>>,
    idle: Duration,
    counts: &mut Counts,
) -> Option<String> {
    let mut from_client = vec![0u8; MAX_DATAGRAM];
    let mut from_server = vec![0u8; MAX_DATAGRAM];
    loop {
        tokio::select! {
            received = reply.recv(&mut from_client) => match received {
                Ok(len) => counts.send_up(upstream, &from_client[..len]).await,
                Err(err) => debug!(error = %err, "failed to receive from client"),
            },
            Some(payload) = stragglers.recv() => counts.send_up(upstream, &payload).await,
            received = upstream.recv(&mut from_server) => match received {
                Ok(len) => match reply.send(&from_server[..len]).await {
                    Ok(sent) => {
                        counts.0.down.fetch_add(sent as u64, Ordering::Relaxed);
                    }
                    Err(err) => debug!(error = %err, "failed to send datagram to client"),
                },
                // ECONNREFUSED after an ICMP port unreachable; the flow may still recover.
                Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {
                    debug!("destination port unreachable");
                }
                Err(err) => return Some(format!("receive from destination failed: {err}")),
            },
            () = tokio::time::sleep(idle) => return None,
        }
    }
}
