//! Many short-lived clients, 16 at a time: every flow must name the client that sent it.
//!
//! Each flow is looked up as soon as its client has exited, as a proxy would on `accept()` or
//! `recvmsg()`. Waiting until all clients are done would let a later client reuse an earlier
//! one's UDP source port and overwrite its flow entry.

mod support;

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{Condvar, Mutex},
    thread,
    time::Instant,
};

use support::{
    Fixture, RECEIVE_TIMEOUT, Received, TCP_CLIENT, TcpServer, UDP_CLIENT, UdpServer,
    python_path_cached, run_clients,
};
use tollgate_classifier::Owner;

const PARALLEL: usize = 16;

/// One client's flow and what the lookup returned for it.
#[derive(Debug)]
struct Check {
    pid: u32,
    #[expect(
        dead_code,
        reason = "read only by the Debug output of a failed assertion"
    )]
    src: SocketAddr,
    owner: Option<Owner>,
}

/// Attribution results of one run.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    correct: usize,
    wrong_pid: usize,
    wrong_exe: usize,
    missing: usize,
}

/// Flows received so far, by the pid their client reported.
#[derive(Default)]
struct Arrivals {
    flows: Mutex<HashMap<u32, Received>>,
    changed: Condvar,
}

impl Arrivals {
    fn add(&self, flow: Received) {
        self.flows.lock().unwrap().insert(flow.reported_pid, flow);
        self.changed.notify_all();
    }

    /// Waits for the flow of client `pid`.
    fn take(&self, pid: u32) -> Received {
        let deadline = Instant::now() + RECEIVE_TIMEOUT;
        let mut flows = self.flows.lock().unwrap();
        loop {
            if let Some(flow) = flows.remove(&pid) {
                return flow;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "flow of client {pid} not received");
            flows = self.changed.wait_timeout(flows, left).unwrap().0;
        }
    }
}

/// Runs `count` clients of `script` against `target`, looks up each client's flow right after
/// it exits and checks pid and executable.
fn run_stress(
    fixture: &Fixture,
    script: &str,
    target: SocketAddr,
    count: usize,
    receive_each: impl FnOnce(usize, &mut dyn FnMut(Received)) + Send,
) {
    let arrivals = Arrivals::default();
    let checks = Mutex::new(Vec::with_capacity(count));

    let pids = thread::scope(|scope| {
        scope.spawn(|| receive_each(count, &mut |flow| arrivals.add(flow)));
        run_clients(
            count,
            PARALLEL,
            |_| fixture.python_client(script, target, &[]),
            |_, pid| {
                let flow = arrivals.take(pid);
                let owner = fixture.classifier.lookup(&flow.lookup);
                checks.lock().unwrap().push(Check {
                    pid,
                    src: flow.lookup.src,
                    owner,
                });
            },
        )
    });

    let checks = checks.into_inner().unwrap();
    let spawned: HashSet<u32> = pids.iter().copied().collect();
    assert_eq!(spawned.len(), count, "pids repeated among the clients");
    assert_eq!(checks.len(), count);
    let (tally, failures) = tally(&checks);
    assert_eq!(
        tally,
        Tally {
            correct: count,
            ..Tally::default()
        },
        "failed checks: {failures:#?}"
    );
    let counters = fixture.classifier.counters().expect("counters unreadable");
    assert_eq!(counters.socket_record_missing, 0, "{counters:?}");
    assert_eq!(counters.flow_update_failed, 0, "{counters:?}");
    assert_eq!(counters.socket_update_failed, 0, "{counters:?}");
    assert_eq!(counters.packets_unparsed, 0, "{counters:?}");
    assert_eq!(counters.lookup_misses, 0, "{counters:?}");
}

fn tally(checks: &[Check]) -> (Tally, Vec<&Check>) {
    let python = python_path_cached();
    let mut tally = Tally::default();
    let mut failures = Vec::new();
    for check in checks {
        match &check.owner {
            None => tally.missing += 1,
            Some(owner) if owner.pid != check.pid => tally.wrong_pid += 1,
            Some(owner) if owner.exe.as_deref() != Some(python) => tally.wrong_exe += 1,
            Some(_) => {
                tally.correct += 1;
                continue;
            }
        }
        failures.push(check);
    }
    (tally, failures)
}

#[test]
fn two_hundred_tcp_ipv4_clients() {
    let fixture = Fixture::new();
    let server = TcpServer::bind(&fixture.netns, "127.0.0.1:0");

    run_stress(&fixture, TCP_CLIENT, server.address(), 200, |n, handle| {
        server.receive_each(n, handle);
    });
}

#[test]
fn two_hundred_tcp_ipv6_clients() {
    let fixture = Fixture::new();
    let server = TcpServer::bind(&fixture.netns, "[::1]:0");

    run_stress(&fixture, TCP_CLIENT, server.address(), 200, |n, handle| {
        server.receive_each(n, handle);
    });
}

#[test]
fn two_hundred_udp_ipv4_clients() {
    let fixture = Fixture::new();
    let server = UdpServer::bind(&fixture.netns, "127.0.0.1:0");

    run_stress(&fixture, UDP_CLIENT, server.address(), 200, |n, handle| {
        server.receive_each(n, handle);
    });
}

#[test]
fn two_hundred_udp_ipv6_clients() {
    let fixture = Fixture::new();
    let server = UdpServer::bind(&fixture.netns, "[::1]:0");

    run_stress(&fixture, UDP_CLIENT, server.address(), 200, |n, handle| {
        server.receive_each(n, handle);
    });
}

#[test]
fn thousand_tcp_ipv4_clients() {
    let fixture = Fixture::new();
    let server = TcpServer::bind(&fixture.netns, "127.0.0.1:0");

    run_stress(&fixture, TCP_CLIENT, server.address(), 1000, |n, handle| {
        server.receive_each(n, handle);
    });
}

#[test]
fn thousand_udp_ipv4_clients() {
    let fixture = Fixture::new();
    let server = UdpServer::bind(&fixture.netns, "127.0.0.1:0");

    run_stress(&fixture, UDP_CLIENT, server.address(), 1000, |n, handle| {
        server.receive_each(n, handle);
    });
}
