//! Tests of the lab itself, without the firewall: reachability, data integrity, isolation
//! between labs and cleanup. They need root, like the lab.

use std::{
    error::Error,
    fs,
    io::{ErrorKind, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener},
    panic::{self, AssertUnwindSafe},
    path::Path,
    process::{Command, Output},
    thread,
    time::Duration,
};

use nix::sys::socket::{setsockopt, sockopt::Linger};
use tollgate_integration::{
    INDEX_MARKER, Lab,
    client::{self, TransferError, pattern_payload},
    pattern::fill_pattern,
    topology::{SERVER_A_V4, SERVER_A_V6, SERVER_ADDRS},
};

#[test]
fn curl_reaches_http_over_ipv4() {
    let lab = start_lab();

    let page = curl_in_desk(&lab, SERVER_A_V4.into());

    assert!(
        page.contains(INDEX_MARKER),
        "page over IPv4 lacks the marker: {page}"
    );
}

#[test]
fn curl_reaches_http_over_ipv6() {
    let lab = start_lab();

    let page = curl_in_desk(&lab, SERVER_A_V6.into());

    assert!(
        page.contains(INDEX_MARKER),
        "page over IPv6 lacks the marker: {page}"
    );
}

#[test]
fn echo_round_trips_on_every_address() {
    let lab = start_lab();
    // Larger than the socket buffers, so sending and receiving must overlap.
    let payload = pattern_payload(4 << 20);

    for server in SERVER_ADDRS {
        if let Err(err) = lab.echo(server, &payload) {
            panic!("echo via {server} failed: {}", chain(&err));
        }
    }
}

#[test]
fn bulk_64_mib_arrives_exact() {
    let lab = start_lab();
    let len = 64 << 20;

    for server in [IpAddr::from(SERVER_A_V4), IpAddr::from(SERVER_A_V6)] {
        let transfer = lab
            .bulk_download(server, len)
            .unwrap_or_else(|err| panic!("bulk download via {server} failed: {}", chain(&err)));

        assert_eq!(transfer.bytes, len, "bytes received via {server}");
    }
}

#[test]
fn two_labs_do_not_collide() {
    let (first, second) = thread::scope(|scope| {
        let first = scope.spawn(start_lab);
        let second = scope.spawn(start_lab);
        (first.join().unwrap(), second.join().unwrap())
    });

    assert_ne!(first.name(), second.name(), "both labs got the same name");
    assert_ne!(first.desk().name(), second.desk().name());
    for lab in [&first, &second] {
        let page = curl_in_desk(lab, SERVER_A_V4.into());
        assert!(
            page.contains(lab.name()),
            "desk of lab {} got another lab's page: {page}",
            lab.name()
        );
    }
}

#[test]
fn dropped_lab_leaves_nothing_behind() {
    let lab = start_lab();
    let namespaces = [lab.desk().name().to_owned(), lab.net().name().to_owned()];
    let pids = [lab.http_server().pid(), lab.lab_server().pid()];
    let work_dir = lab.work_dir().to_owned();

    drop(lab);

    assert_namespaces_gone(&namespaces);
    for pid in pids {
        assert_process_gone(pid);
    }
    assert!(
        !work_dir.exists(),
        "work directory {} still exists",
        work_dir.display()
    );
}

#[test]
fn lab_dropped_by_panic_is_removed() {
    let mut namespaces = Vec::new();

    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        let lab = start_lab();
        namespaces.push(lab.desk().name().to_owned());
        namespaces.push(lab.net().name().to_owned());
        panic!("deliberate panic while the lab is up");
    }));

    assert!(result.is_err(), "the closure did not panic");
    assert_eq!(
        namespaces.len(),
        2,
        "the lab did not start before the panic"
    );
    assert_namespaces_gone(&namespaces);
}

#[test]
fn setns_command_runs_in_desk() {
    let lab = start_lab();
    let mut command = lab
        .desk()
        .setns_command("ip")
        .unwrap_or_else(|err| panic!("setns_command failed: {}", chain(&err)));
    command.args(["-brief", "address", "show", "veth0"]);

    let output = run(&mut command);

    assert!(
        output.contains("10.77.0.2"),
        "desk's veth0 lacks 10.77.0.2: {output}"
    );
}

#[test]
fn netns_run_enters_namespace() {
    let lab = start_lab();
    let own_netns = fs::read_link("/proc/thread-self/ns/net").unwrap();

    let desk_netns = lab
        .desk()
        .run(|| fs::read_link("/proc/thread-self/ns/net").unwrap())
        .unwrap_or_else(|err| panic!("failed to enter desk: {}", chain(&err)));

    assert_ne!(
        desk_netns, own_netns,
        "the thread stayed in the test's namespace"
    );
}

#[test]
fn bulk_reports_refused_connect() {
    let lab = start_lab();
    let server = SocketAddr::new(SERVER_A_V4.into(), UNUSED_PORT);

    let err = download_in_desk(&lab, server, 1024).unwrap_err();

    match err {
        TransferError::Connect { source, .. } => {
            assert_eq!(
                source.kind(),
                ErrorKind::ConnectionRefused,
                "connect error {source}"
            );
        }
        other => panic!("expected a refused connect, got: {}", chain(&other)),
    }
}

#[test]
fn bulk_reports_pattern_mismatch() {
    let lab = start_lab();
    let server = spawn_rogue_server(&lab, |stream| {
        let mut data = vec![0; 1000];
        fill_pattern(0, &mut data);
        data[700] ^= 0xff;
        stream.write_all(&data).unwrap();
    });

    let err = download_in_desk(&lab, server, 1000).unwrap_err();

    match err {
        TransferError::Mismatch { offset, .. } => assert_eq!(offset, 700, "mismatch offset"),
        other => panic!("expected a mismatch, got: {}", chain(&other)),
    }
}

#[test]
fn bulk_reports_truncated_stream() {
    let lab = start_lab();
    let server = spawn_rogue_server(&lab, |stream| {
        let mut data = vec![0; 300];
        fill_pattern(0, &mut data);
        stream.write_all(&data).unwrap();
    });

    let err = download_in_desk(&lab, server, 1000).unwrap_err();

    match err {
        TransferError::Truncated {
            received, expected, ..
        } => {
            assert_eq!(received, 300, "bytes received before the close");
            assert_eq!(expected, 1000, "bytes expected");
        }
        other => panic!("expected a truncated stream, got: {}", chain(&other)),
    }
}

#[test]
fn bulk_reports_connection_reset() {
    let lab = start_lab();
    let server = spawn_rogue_server(&lab, |stream| {
        // A zero linger time makes close send RST instead of FIN.
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        setsockopt(&*stream, Linger, &linger).unwrap();
    });

    let err = download_in_desk(&lab, server, 1000).unwrap_err();

    assert!(
        matches!(err, TransferError::Reset { received: 0, .. }),
        "expected a reset, got: {}",
        chain(&err)
    );
}

fn start_lab() -> Lab {
    Lab::start().unwrap_or_else(|err| panic!("failed to start the lab: {}", chain(&err)))
}

/// Fetches the index page on `server` with curl from desk and returns it.
fn curl_in_desk(lab: &Lab, server: IpAddr) -> String {
    let mut command = lab.desk_command("curl");
    command
        .args([
            "--silent",
            "--show-error",
            "--noproxy",
            "*",
            "--max-time",
            "10",
        ])
        .arg(Lab::http_url(server));
    run(&mut command)
}

fn download_in_desk(
    lab: &Lab,
    server: SocketAddr,
    len: u64,
) -> Result<client::BulkTransfer, TransferError> {
    lab.desk()
        .run(|| client::bulk_download(server, len, Duration::from_secs(5)))?
}

/// Starts a one-shot server in net on [`UNUSED_PORT`] that reads the 8-byte request, runs
/// `respond` on the connection and closes it. Returns its address on server A.
fn spawn_rogue_server(lab: &Lab, respond: fn(&mut std::net::TcpStream)) -> SocketAddr {
    let listener = lab
        .net()
        .run(|| TcpListener::bind(("::", UNUSED_PORT)))
        .unwrap_or_else(|err| panic!("failed to enter net: {}", chain(&err)))
        .unwrap_or_else(|err| panic!("failed to bind the rogue server: {err}"));

    // The listening socket stays in net, so this thread needs no setns.
    thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut request = [0; 8];
        stream.read_exact(&mut request).unwrap();
        respond(&mut stream);
    });
    SocketAddr::new(SERVER_A_V4.into(), UNUSED_PORT)
}

/// Runs `command`, panics unless it succeeds, and returns its stdout.
fn run(command: &mut Command) -> String {
    let Output {
        status,
        stdout,
        stderr,
    } = command
        .output()
        .unwrap_or_else(|err| panic!("failed to run {command:?}: {err}"));
    assert!(
        status.success(),
        "{command:?} failed with {status}: {}",
        String::from_utf8_lossy(&stderr)
    );
    String::from_utf8_lossy(&stdout).into_owned()
}

fn assert_namespaces_gone(namespaces: &[String]) {
    let listing = run(Command::new("ip").args(["netns", "list"]));
    for name in namespaces {
        let listed = listing.split_whitespace().any(|word| word == name);
        assert!(!listed, "namespace {name} is still listed: {listing}");
        let path = Path::new("/run/netns").join(name);
        assert!(
            !path.exists(),
            "namespace file {} still exists",
            path.display()
        );
    }
}

/// Asserts that `pid` no longer runs a lab server. The pid may belong to a new, unrelated
/// process by now, so only its command line counts.
fn assert_process_gone(pid: u32) {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return;
    };
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(
        !cmdline.contains("lab-server") && !cmdline.contains("http.server"),
        "server process {pid} still runs: {cmdline}"
    );
}

/// Formats an error with its chain of causes, so a panic message shows the root cause.
fn chain(err: &dyn Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A port on which no lab server listens.
const UNUSED_PORT: u16 = 9001;
