//! A `watch` client of the daemon's control socket that notes when each `held` event arrives.

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

/// A `held` event as the watcher received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldEvent {
    /// Source address of the held connection.
    pub source: SocketAddr,
    /// `CLOCK_MONOTONIC` in nanoseconds when the event's line was read.
    pub received_ns: u64,
}

/// A connection to the control socket in watch mode, read by a thread of its own.
///
/// Dropping it shuts the connection down and joins the thread.
#[derive(Debug)]
pub struct Watcher {
    stream: UnixStream,
    events: mpsc::Receiver<HeldEvent>,
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
            .spawn(move || read_held_events(reader, &sender))?;
        Ok(Self {
            stream,
            events,
            reader: Some(reader),
        })
    }

    /// Waits up to `timeout` for the next `held` event.
    pub fn next_held(&self, timeout: Duration) -> Option<HeldEvent> {
        self.events.recv_timeout(timeout).ok()
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

/// Reads event lines until the stream ends, and sends each `held` event on.
fn read_held_events(mut reader: BufReader<UnixStream>, sender: &mpsc::Sender<HeldEvent>) {
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let received_ns = monotonic_ns();
        if let Some(source) = held_source(&line) {
            let event = HeldEvent {
                source,
                received_ns,
            };
            if sender.send(event).is_err() {
                return;
            }
        }
    }
}

/// Returns the source address of a `held` event line, or `None` for any other line.
fn held_source(line: &str) -> Option<SocketAddr> {
    let message: Value = serde_json::from_str(line).ok()?;
    if message["type"] != "event" || message["event"] != "held" {
        return None;
    }
    message["source"].as_str()?.parse().ok()
}

/// How long the daemon may take to confirm the watch request.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_event_gives_source() {
        let line = r#"{"type":"event","time_unix_ms":1,"connection":3,"process":null,
            "source":"10.77.0.2:40000","destination":"203.0.113.20:80","protocol":"tcp",
            "event":"held","pending_id":1}"#;

        assert_eq!(held_source(line), Some("10.77.0.2:40000".parse().unwrap()));
    }

    #[test]
    fn other_events_are_skipped() {
        let line = r#"{"type":"event","source":"10.77.0.2:40000","event":"decided"}"#;

        assert_eq!(held_source(line), None);
        assert_eq!(held_source("not json"), None);
    }
}
