//! One client per test: each protocol and address family is attributed to the right process,
//! with every owner field checked, after the client has exited.

mod support;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use support::{
    ClientLauncher, Fixture, Received, TCP_CLIENT, TcpServer, TestDir, UDP_CLIENT, UdpServer,
    comm_of, exchange, python_path_cached,
};
use tollgate_classifier::{FlowLookup, Owner};

/// Runs one Python client with `script` and returns its pid and the flow the server received.
fn one_python_flow(
    fixture: &Fixture,
    script: &str,
    target: SocketAddr,
    extra: &[&str],
    receive: impl FnOnce(usize) -> Vec<Received> + Send,
) -> (u32, Received) {
    let (pids, mut received) = exchange(
        1,
        1,
        |_| fixture.python_client(script, target, extra),
        receive,
    );
    (pids[0], received.pop().expect("nothing received"))
}

/// Looks up `received` and checks the owner against the client that sent it.
fn owner_of(fixture: &Fixture, received: &Received, pid: u32) -> Owner {
    assert_eq!(received.reported_pid, pid, "payload names another client");
    fixture
        .classifier
        .lookup(&received.lookup)
        .unwrap_or_else(|| panic!("no owner for {:?}", received.lookup))
}

fn assert_python_owner(fixture: &Fixture, owner: &Owner, pid: u32) {
    let python = python_path_cached();
    assert_eq!(owner.pid, pid);
    assert_eq!(
        owner.tid, pid,
        "a single-threaded client connects from its main thread"
    );
    assert_eq!(owner.exe.as_deref(), Some(python));
    assert!(!owner.exe_unlinked);
    assert_eq!(owner.comm, comm_of(python));
    assert_eq!(owner.uid, 0);
    assert_eq!(owner.gid, 0);
    assert_eq!(owner.cgroup_id, fixture.cgroup.id());
    assert_eq!(owner.ppid, Some(std::process::id()));
}

#[test]
fn tcp_ipv4_owner_has_all_fields() {
    let fixture = Fixture::new();
    let server = TcpServer::bind(&fixture.netns, "127.0.0.1:0");

    let (pid, received) = one_python_flow(&fixture, TCP_CLIENT, server.address(), &[], |n| {
        server.receive(n)
    });

    let owner = owner_of(&fixture, &received, pid);
    assert_python_owner(&fixture, &owner, pid);
    let start_time = owner.start_time.expect("start time missing");
    assert!(
        start_time >= process_start_time(std::process::id()),
        "client older than the test"
    );
    assert!(
        start_time <= boot_time_now(),
        "client start time in the future"
    );
    assert!(fixture.classifier.has_exe_paths());
}

#[test]
fn tcp_ipv6_owner_found() {
    let fixture = Fixture::new();
    let server = TcpServer::bind(&fixture.netns, "[::1]:0");

    let (pid, received) = one_python_flow(&fixture, TCP_CLIENT, server.address(), &[], |n| {
        server.receive(n)
    });

    let owner = owner_of(&fixture, &received, pid);
    assert_python_owner(&fixture, &owner, pid);
}

#[test]
fn tcp_mapped_ipv4_owner_found_by_both_forms() {
    let fixture = Fixture::new();
    let server = TcpServer::bind(&fixture.netns, "127.0.0.1:0");
    let mapped_target = SocketAddr::new(
        IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped()),
        server.address().port(),
    );

    // The client uses an AF_INET6 socket, but the packets on the wire are IPv4.
    let (pid, received) = one_python_flow(&fixture, TCP_CLIENT, mapped_target, &[], |n| {
        server.receive(n)
    });

    let owner = owner_of(&fixture, &received, pid);
    assert_python_owner(&fixture, &owner, pid);
    let as_mapped = FlowLookup {
        src: to_mapped(received.lookup.src),
        dst: to_mapped(received.lookup.dst),
        ..received.lookup
    };
    let mapped_owner = fixture
        .classifier
        .lookup(&as_mapped)
        .expect("no owner for mapped form");
    assert_eq!(mapped_owner.pid, pid);
}

#[test]
fn udp_ipv4_sendto_owner_found() {
    let fixture = Fixture::new();
    let server = UdpServer::bind(&fixture.netns, "127.0.0.1:0");

    let (pid, received) = one_python_flow(&fixture, UDP_CLIENT, server.address(), &[], |n| {
        server.receive(n)
    });

    let owner = owner_of(&fixture, &received, pid);
    assert_python_owner(&fixture, &owner, pid);
}

#[test]
fn udp_ipv6_sendto_owner_found() {
    let fixture = Fixture::new();
    let server = UdpServer::bind(&fixture.netns, "[::1]:0");

    let (pid, received) = one_python_flow(&fixture, UDP_CLIENT, server.address(), &[], |n| {
        server.receive(n)
    });

    let owner = owner_of(&fixture, &received, pid);
    assert_python_owner(&fixture, &owner, pid);
}

#[test]
fn udp_connected_owner_found() {
    let fixture = Fixture::new();
    let server = UdpServer::bind(&fixture.netns, "127.0.0.1:0");

    let (pid, received) =
        one_python_flow(&fixture, UDP_CLIENT, server.address(), &["connect"], |n| {
            server.receive(n)
        });

    let owner = owner_of(&fixture, &received, pid);
    assert_python_owner(&fixture, &owner, pid);
}

#[test]
fn shell_client_owner_is_bash_with_its_credentials() {
    let fixture = Fixture::new();
    let server = TcpServer::bind(&fixture.netns, "127.0.0.1:0");
    let bash = Path::new("/bin/bash")
        .canonicalize()
        .expect("bash not found");
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{}; printf %s $$ >&3",
        server.address().port()
    );
    let launcher =
        ClientLauncher::new(&fixture.cgroup, &fixture.netns).with_credentials(65534, 65534);

    let (pids, received) = exchange(
        1,
        1,
        |_| {
            let mut command = Command::new(&bash);
            command.args(["-c", &script]);
            launcher.prepare(command)
        },
        |n| server.receive(n),
    );

    let owner = owner_of(&fixture, &received[0], pids[0]);
    assert_eq!(owner.pid, pids[0]);
    assert_eq!(owner.exe.as_deref(), Some(bash.as_path()));
    assert_eq!(owner.comm, "bash");
    assert_eq!(owner.uid, 65534);
    assert_eq!(owner.gid, 65534);
}

/// Runs a copy of bash from a tmpfs that the client mounts on `dir` in its own mount
/// namespace, optionally deleting the copy before it connects, and returns the owner.
fn owner_of_bash_copy_on_tmpfs(delete_before_connect: bool) -> (Owner, PathBuf) {
    let fixture = Fixture::new();
    let server = TcpServer::bind(&fixture.netns, "127.0.0.1:0");
    let dir = TestDir::new();
    let exe = dir.path().join("bash-copy");
    let delete = if delete_before_connect {
        "rm -f \"$0\"; "
    } else {
        ""
    };
    let client_script = format!(
        "{delete}exec 3<>/dev/tcp/127.0.0.1/{}; printf %s $$ >&3",
        server.address().port()
    );
    let setup_script = concat!(
        r#"mount -t tmpfs tollgate-test "$1" && cp /bin/bash "$1/bash-copy" && "#,
        r#"exec "$1/bash-copy" -c "$2""#
    );
    let launcher = ClientLauncher::new(&fixture.cgroup, &fixture.netns).with_private_mounts();

    let (pids, received) = exchange(
        1,
        1,
        |_| {
            let mut command = Command::new("/bin/sh");
            command.args(["-c", setup_script, "sh"]);
            command.arg(dir.path()).arg(&client_script);
            launcher.prepare(command)
        },
        |n| server.receive(n),
    );

    (owner_of(&fixture, &received[0], pids[0]), exe)
}

#[test]
fn exe_path_crosses_mount_point() {
    let (owner, exe) = owner_of_bash_copy_on_tmpfs(false);

    assert_eq!(owner.exe.as_deref(), Some(exe.as_path()));
    assert!(!owner.exe_unlinked);
}

#[test]
fn deleted_exe_marked_unlinked() {
    let (owner, exe) = owner_of_bash_copy_on_tmpfs(true);

    assert_eq!(owner.exe.as_deref(), Some(exe.as_path()));
    assert!(owner.exe_unlinked);
}

#[test]
fn long_exe_path_has_no_exe() {
    let fixture = Fixture::new();
    let server = TcpServer::bind(&fixture.netns, "127.0.0.1:0");
    let dir = TestDir::new();
    // Three 100-byte directory names put the parent directories past the 256-byte limit.
    let deep_dir = (0..3).fold(dir.path().to_owned(), |path, index| {
        path.join(format!("{index}{}", "d".repeat(99)))
    });
    std::fs::create_dir_all(&deep_dir).expect("failed to create deep directory");
    let exe = deep_dir.join("bash-copy");
    std::fs::copy("/bin/bash", &exe).expect("failed to copy bash");
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{}; printf %s $$ >&3",
        server.address().port()
    );

    let (pids, received) = exchange(
        1,
        1,
        |_| {
            let mut command = Command::new(&exe);
            command.args(["-c", &script]);
            fixture.launcher.prepare(command)
        },
        |n| server.receive(n),
    );

    let owner = owner_of(&fixture, &received[0], pids[0]);
    assert_eq!(owner.pid, pids[0]);
    assert_eq!(owner.exe, None);
    assert_eq!(
        fixture.classifier.counters().unwrap().exe_paths_truncated,
        1
    );
}

/// Python client that copies bash into a memfd and executes it, so the process's executable
/// has no path. Bash then connects and sends its pid.
const MEMFD_CLIENT: &str = "
import os, sys
host, port = sys.argv[1], sys.argv[2]
fd = os.memfd_create('tollgate-test', 0)
with open('/bin/bash', 'rb') as f:
    data = memoryview(f.read())
while data:
    data = data[os.write(fd, data):]
script = 'exec 3<>/dev/tcp/%s/%s; printf %%s $$ >&3' % (host, port)
os.execv('/proc/self/fd/%d' % fd, ['bash', '-c', script])
";

#[test]
fn memfd_exe_has_no_path() {
    let fixture = Fixture::new();
    let server = TcpServer::bind(&fixture.netns, "127.0.0.1:0");

    let (pid, received) = one_python_flow(&fixture, MEMFD_CLIENT, server.address(), &[], |n| {
        server.receive(n)
    });

    let owner = owner_of(&fixture, &received, pid);
    assert_eq!(owner.pid, pid);
    assert_eq!(owner.exe, None);
    assert!(owner.exe_unlinked);
}

#[test]
fn client_outside_cgroup_not_attributed() {
    let fixture = Fixture::new();
    let server = TcpServer::bind(&fixture.netns, "127.0.0.1:0");
    let netns_fd = fixture.netns.raw_fd();

    let (_, received) = exchange(
        1,
        1,
        |_| {
            // Enters only the namespace, so the socket is created in the test's own cgroup.
            let mut command = Command::new(python_path_cached());
            command.args([
                "-c",
                TCP_CLIENT,
                "127.0.0.1",
                &server.address().port().to_string(),
            ]);
            // SAFETY: `setns` is async-signal-safe and the descriptor outlives the child's exec.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                    if libc::setns(netns_fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            command
        },
        |n| server.receive(n),
    );

    assert_eq!(fixture.classifier.lookup(&received[0].lookup), None);
}

#[test]
fn unknown_flow_counts_lookup_miss() {
    let fixture = Fixture::new();
    let flow = FlowLookup {
        netns_cookie: None,
        protocol: tollgate_classifier::Protocol::Tcp,
        src: "127.0.0.1:1".parse().unwrap(),
        dst: "127.0.0.1:2".parse().unwrap(),
    };

    let owner = fixture.classifier.lookup(&flow);

    assert_eq!(owner, None);
    assert_eq!(fixture.classifier.counters().unwrap().lookup_misses, 1);
}

fn to_mapped(address: SocketAddr) -> SocketAddr {
    match address.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), address.port()),
        IpAddr::V6(_) => address,
    }
}

/// Returns the time since boot, including suspend (`CLOCK_BOOTTIME`).
fn boot_time_now() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &raw mut now) };
    assert_eq!(result, 0, "clock_gettime failed");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// Returns a process's start time since boot from field 22 of `/proc/PID/stat`.
fn process_start_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat unreadable");
    // The command name may contain spaces, so count fields after its closing parenthesis.
    let after_comm = &stat[stat.rfind(')').expect("malformed stat") + 2..];
    let ticks: u64 = after_comm
        .split(' ')
        .nth(19)
        .and_then(|field| field.parse().ok())
        .expect("start time field missing");
    // SAFETY: `sysconf` has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / ticks_per_second)
}

/// Python client that connects from a fixed source port, so two namespaces produce the same
/// 4-tuple, then sends its pid.
const FIXED_PORT_TCP_CLIENT: &str = "
import os, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind((host, 40123))
    s.connect((host, port))
    s.sendall(str(os.getpid()).encode())
";

#[test]
fn same_flow_in_two_namespaces_has_two_owners() {
    support::require_root();
    let fixture = Fixture::new();
    let other_netns = support::TestNetns::new();
    let other_launcher = ClientLauncher::new(&fixture.cgroup, &other_netns);
    let first_server = TcpServer::bind(&fixture.netns, "127.0.0.1:7070");
    let second_server = TcpServer::bind(&other_netns, "127.0.0.1:7070");
    let target: SocketAddr = "127.0.0.1:7070".parse().unwrap();

    let client = |launcher: &ClientLauncher| {
        let mut command = Command::new(python_path_cached());
        command.args(["-S", "-c", FIXED_PORT_TCP_CLIENT, "127.0.0.1", "7070"]);
        launcher.prepare(command)
    };
    // Both flows exist before either is looked up: the same 4-tuple in both namespaces.
    let first_child = client(&fixture.launcher).spawn().unwrap();
    let first = first_server.receive(1).pop().unwrap();
    let second_child = client(&other_launcher).spawn().unwrap();
    let second = second_server.receive(1).pop().unwrap();
    assert_eq!(first.lookup.src, second.lookup.src);
    assert_eq!(first.lookup.dst, target);
    assert_ne!(first.lookup.netns_cookie, second.lookup.netns_cookie);

    let first_owner = fixture
        .classifier
        .lookup(&first.lookup)
        .expect("first owner");
    let second_owner = fixture
        .classifier
        .lookup(&second.lookup)
        .expect("second owner");
    assert_eq!(first_owner.pid, first_child.id());
    assert_eq!(second_owner.pid, second_child.id());
    assert_eq!(first.reported_pid, first_child.id());
    assert_eq!(second.reported_pid, second_child.id());
    for mut child in [first_child, second_child] {
        assert!(child.wait().unwrap().success());
    }
}
