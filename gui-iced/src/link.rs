//! The link to `tollgated`: a task that connects to the control socket, reconnects when the
//! daemon restarts, keeps the interface's lists fresh and sends its requests.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use iced::{
    futures::{SinkExt, Stream, channel::mpsc},
    stream,
};
use tokio::sync::mpsc as tokio_mpsc;
use tollgate_proxy::{
    client::{Client, ClientError},
    protocol::{
        ConnectionInfo, ErrorCode, Event, EventKind, PendingInfo, Request, Response, StatusInfo,
    },
};
use tollgate_rules::Rule;
use tracing::{debug, info, warn};

/// How often the pending requests and connections are listed again.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// How long to wait before connecting again after a failure.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Sends requests to the daemon through the link task.
#[derive(Debug, Clone)]
pub struct RequestSender(tokio_mpsc::UnboundedSender<Request>);

impl RequestSender {
    /// Queues a request; returns `false` when the link task has ended.
    pub fn send(&self, request: Request) -> bool {
        self.0.send(request).is_ok()
    }
}

/// Report of the link task to the interface.
#[derive(Debug, Clone)]
pub enum LinkEvent {
    /// Connected; requests go through this sender until the next `Disconnected`.
    Connected(RequestSender),
    /// The daemon cannot be reached, for the reason given. The task keeps retrying.
    Disconnected(String),
    /// The daemon's status.
    Status(StatusInfo),
    /// The pending requests.
    Pending(Vec<PendingInfo>),
    /// The rules.
    Rules(Vec<Rule>),
    /// The connections.
    Connections(Vec<ConnectionInfo>),
    /// A connection event.
    Event(Box<Event>),
    /// A request failed.
    Failed {
        /// The request.
        request: Request,
        /// The daemon's error code.
        code: ErrorCode,
        /// The daemon's explanation.
        message: String,
    },
}

/// Returns the stream of link events for the control socket at `socket`. It never ends.
#[expect(
    clippy::ptr_arg,
    reason = "Subscription::run_with passes its data as &PathBuf"
)]
pub fn connect(socket: &PathBuf) -> impl Stream<Item = LinkEvent> + use<> {
    let socket = socket.clone();
    stream::channel(64, async move |mut output: mpsc::Sender<LinkEvent>| {
        let mut last_error = None;
        loop {
            let reason = match serve(&socket, &mut output).await {
                Ok(()) => return,
                Err(err) => err.to_string(),
            };
            if last_error.as_ref() != Some(&reason) {
                let path = socket.display();
                warn!(socket = %path, error = %reason, "tollgated unreachable; retrying");
                last_error = Some(reason.clone());
            }
            if output.send(LinkEvent::Disconnected(reason)).await.is_err() {
                return;
            }
            tokio::time::sleep(RETRY_INTERVAL).await;
        }
    })
}

/// Serves one connection to the daemon until it fails. Returns `Ok` only when the interface
/// stopped listening.
async fn serve(socket: &Path, output: &mut mpsc::Sender<LinkEvent>) -> Result<(), ClientError> {
    let mut control = Client::connect(socket).await?;
    let mut watch = Client::connect(socket).await?;
    expect_watching(watch.request(Request::Watch).await?)?;
    let (sender, mut requests) = tokio_mpsc::unbounded_channel();
    info!(socket = %socket.display(), "connected to tollgated");
    if output
        .send(LinkEvent::Connected(RequestSender(sender)))
        .await
        .is_err()
    {
        return Ok(());
    }

    // Reading a line is not cancel-safe, so the watch stream is read by its own task and
    // select! waits on a channel instead.
    let (event_sender, mut events) = tokio_mpsc::channel(256);
    let reader = tokio::spawn(read_events(watch, event_sender));
    let result = exchange(&mut control, &mut requests, &mut events, output).await;
    reader.abort();
    result
}

async fn read_events(mut watch: Client, events: tokio_mpsc::Sender<Result<Event, ClientError>>) {
    loop {
        let item = match watch.next_response().await {
            Ok(Some(Response::Event(event))) => Ok(event),
            Ok(Some(other)) => {
                debug!(reply = ?other, "unexpected line on the watch stream");
                continue;
            }
            Ok(None) => Err(ClientError::Closed),
            Err(err) => Err(err),
        };
        let failed = item.is_err();
        if events.send(item).await.is_err() || failed {
            return;
        }
    }
}

/// Sends the interface's requests and the periodic listings, and relays events, until the
/// connection fails.
async fn exchange(
    control: &mut Client,
    requests: &mut tokio_mpsc::UnboundedReceiver<Request>,
    events: &mut tokio_mpsc::Receiver<Result<Event, ClientError>>,
    output: &mut mpsc::Sender<LinkEvent>,
) -> Result<(), ClientError> {
    let mut poll = tokio::time::interval(POLL_INTERVAL);
    for request in [Request::Status, Request::ListRules] {
        forward(control, request, output).await?;
    }
    loop {
        let request = tokio::select! {
            _ = poll.tick() => None,
            Some(request) = requests.recv() => Some(request),
            event = events.recv() => {
                let event = event.ok_or(ClientError::Closed)??;
                // A held or decided connection changes the pending list: list it now rather
                // than at the next poll, so prompts appear and close at once. A burst of events
                // is listed once, after its last event.
                let changes_pending =
                    !matches!(event.kind, EventKind::Closed { .. }) && events.is_empty();
                if output.send(LinkEvent::Event(Box::new(event))).await.is_err() {
                    return Ok(());
                }
                if changes_pending {
                    forward(control, Request::ListPending, output).await?;
                }
                continue;
            }
        };
        let changes_rules = request.as_ref().is_some_and(changes_rules);
        if let Some(request) = request {
            forward(control, request, output).await?;
        }
        if changes_rules {
            forward(control, Request::ListRules, output).await?;
        }
        for refresh in [Request::ListPending, Request::ListConnections] {
            forward(control, refresh, output).await?;
        }
    }
}

fn expect_watching(reply: Response) -> Result<(), ClientError> {
    match reply {
        Response::Watching => Ok(()),
        other => Err(ClientError::InvalidReply(format!("{other:?}"))),
    }
}

fn changes_rules(request: &Request) -> bool {
    matches!(
        request,
        Request::Decide { .. }
            | Request::AddRule { .. }
            | Request::RemoveRule { .. }
            | Request::EditRule { .. }
    )
}

/// Sends `request` and reports its reply. An error reply is reported, not returned: only a
/// broken connection ends the link.
async fn forward(
    control: &mut Client,
    request: Request,
    output: &mut mpsc::Sender<LinkEvent>,
) -> Result<(), ClientError> {
    let reply = control.request(request.clone()).await?;
    let event = match reply {
        Response::Status(status) => LinkEvent::Status(status),
        Response::Pending { requests } => LinkEvent::Pending(requests),
        Response::Rules { rules, .. } => LinkEvent::Rules(rules),
        Response::Connections { connections } => LinkEvent::Connections(connections),
        Response::Error { code, message } => LinkEvent::Failed {
            request,
            code,
            message,
        },
        // Replies to changes carry nothing the lists that follow do not show.
        _ => return Ok(()),
    };
    // The interface has gone away when the channel is closed; the caller stops on its next
    // send.
    let _ = output.send(event).await;
    Ok(())
}
