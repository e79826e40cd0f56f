//! A `watch` client of the daemon's control socket: each event with the time it arrived.

use std::{
    io::{self, BufRead, BufReader, Write},
    net::{Shutdown, SocketAddr},
    os::unix::net::UnixStream,
    path::Path,
    sync::mpsc,
    thread::{self, JoinHandle},
    time::Duration,
};

use serde_json::Value;

use crate::bench::clock::monotonic_ns;

/// The request line that starts the event stream (control protocol version 1).
const WATCH_REQUEST: &[u8] = b"{\"version\":1,\"type\":\"watch\"}\n";

/// An event as the watcher received it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedEvent {
    /// The event line, as the control protocol defines it.
    pub event: Value,
    /// `CLOCK_MONOTONIC` in nanoseconds when the line was read.
    pub received_ns: u64,
}

impl ReceivedEvent {
    /// Returns the kind of event: `held`, `decided` or `closed`.
    pub fn kind(&self) -> &str {
        self.event["event"].as_str().unwrap_or_default()
    }

    /// Returns the source address of the connection.
    pub fn source(&self) -> Option<SocketAddr> {
        self.event["source"].as_str()?.parse().ok()
    }
}

/// A connection to the control socket in watch mode, read by a thread of its own.
///
/// Dropping it shuts the connection down and joins the thread.
#[derive(Debug)]
pub struct Watcher {
    stream: UnixStream,
    events: mpsc::Receiver<ReceivedEvent>,
    reader: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Connects to the control socket at `socket_path`, sends the watch request and waits for
    /// the daemon to confirm, so that every connection made afterwards is seen.
    pub fn connect(socket_path: &Path) -> io::Result<Self> {
        let mut stream = UnixStream::connect(socket_path)?;
        stream.set_read_timeout(Some(CONFIRM_TIMEOUT))?;
        stream.write_all(WATCH_REQUEST)?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if !line.contains("\"watching\"") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unexpected reply to watch: {}", line.trim_end()),
            ));
        }
        stream.set_read_timeout(None)?;

        let (sender, events) = mpsc::channel();
        let reader = thread::Builder::new()
            .name("bench watcher".into())
            .spawn(move || read_events(reader, &sender))?;
        Ok(Self {
            stream,
            events,
            reader: Some(reader),
        })
    }

    /// Waits up to `timeout` for the next event.
    pub fn next_event(&self, timeout: Duration) -> Option<ReceivedEvent> {
        self.events.recv_timeout(timeout).ok()
    }

    /// Waits up to `timeout` in all for an event for which `matches` holds, and skips the
    /// events before it.
    pub fn wait_for(
        &self,
        timeout: Duration,
        mut matches: impl FnMut(&ReceivedEvent) -> bool,
    ) -> Option<ReceivedEvent> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let event = self.next_event(left)?;
            if matches(&event) {
                return Some(event);
            }
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        // The reader thread sees the end of the stream and returns.
        let _ = self.stream.shutdown(Shutdown::Both);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// Reads event lines until the stream ends, and sends each event on.
fn read_events(mut reader: BufReader<UnixStream>, sender: &mpsc::Sender<ReceivedEvent>) {
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let received_ns = monotonic_ns();
        if let Some(event) = parse_event(&line) {
            let event = ReceivedEvent { event, received_ns };
            if sender.send(event).is_err() {
                return;
            }
        }
    }
}

/// Returns the event of an `event` line, or `None` for any other line.
fn parse_event(line: &str) -> Option<Value> {
    let message: Value = serde_json::from_str(line).ok()?;
    (message["type"] == "event").then_some(message)
}

/// How long the daemon may take to confirm the watch request.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_line_gives_kind_and_source() {
        let line = r#"{"type":"event","time_unix_ms":1,"connection":3,"process":null,
            "source":"10.77.0.2:40000","destination":"203.0.113.20:80","protocol":"tcp",
            "event":"held","pending_id":1}"#;

        let event = ReceivedEvent {
            event: parse_event(line).unwrap(),
            received_ns: 0,
        };

        assert_eq!(event.kind(), "held");
        assert_eq!(event.source(), Some("10.77.0.2:40000".parse().unwrap()));
    }

    #[test]
    fn other_lines_are_skipped() {
        assert_eq!(parse_event(r#"{"type":"watching"}"#), None);
        assert_eq!(parse_event("not json"), None);
    }
}
