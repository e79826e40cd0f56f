//! Test fixtures: a child cgroup, a network namespace, listeners inside it and short-lived
//! client processes moved into both.
//!
//! Everything a fixture creates is removed when it is dropped, also when a test fails. The
//! tests need root.

#![allow(
    dead_code,
    reason = "each test binary uses a different subset of the fixtures"
)]

use std::{
    ffi::CString,
    fs,
    io::{self, Read as _},
    net::{SocketAddr, TcpListener, UdpSocket},
    os::{
        fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
        unix::process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use tollgate_classifier::{Classifier, FlowLookup, Protocol, cgroup2_root, netns_cookie};

/// Maximum time a test waits for its clients' connections or datagrams.
pub const RECEIVE_TIMEOUT: Duration = Duration::from_secs(60);

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// Returns a name unique to this process and call.
fn unique_name(prefix: &str) -> String {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{id}", std::process::id())
}

/// Panics unless the test runs as root, which loading BPF programs needs.
pub fn require_root() {
    // SAFETY: `geteuid` has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests load BPF programs and must run as root"
    );
}

/// A cgroup created below the cgroup2 root, removed on drop.
pub struct TestCgroup {
    path: PathBuf,
    parent: PathBuf,
}

impl TestCgroup {
    /// Creates a fresh child cgroup of the cgroup2 root.
    pub fn new() -> Self {
        require_root();
        let parent = cgroup2_root().expect("cgroup2 mount not found");
        let path = parent.join(unique_name("tollgate-test"));
        fs::create_dir(&path).unwrap_or_else(|error| panic!("failed to create {path:?}: {error}"));
        Self { path, parent }
    }

    /// Returns the cgroup directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Returns the cgroup id, which is the inode number of its directory.
    pub fn id(&self) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        fs::metadata(&self.path)
            .expect("cgroup directory vanished")
            .ino()
    }

    /// Returns the pids currently in the cgroup.
    pub fn pids(&self) -> Vec<u32> {
        fs::read_to_string(self.path.join("cgroup.procs"))
            .expect("failed to read cgroup.procs")
            .lines()
            .filter_map(|line| line.trim().parse().ok())
            .collect()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Leftover processes go back to the parent, or rmdir fails with EBUSY.
        for pid in self.pids() {
            let _ = fs::write(self.parent.join("cgroup.procs"), pid.to_string());
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Err(error) = fs::remove_dir(&self.path) {
            if Instant::now() > deadline {
                eprintln!("failed to remove cgroup {:?}: {error}", self.path);
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A directory under the system's temporary directory, removed on drop.
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    /// Creates an empty directory with a unique name.
    pub fn new() -> Self {
        let path = std::env::temp_dir().join(unique_name("tollgate-test"));
        fs::create_dir(&path).unwrap_or_else(|error| panic!("failed to create {path:?}: {error}"));
        Self { path }
    }

    /// Returns the directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if let Err(error) = fs::remove_dir_all(&self.path) {
            eprintln!("failed to remove {:?}: {error}", self.path);
        }
    }
}

/// A network namespace with `lo` up, referenced by a file descriptor.
///
/// It has no name in `/run/netns`, so the kernel deletes it once the descriptor, its sockets
/// and its processes are gone, also if the test crashes.
pub struct TestNetns {
    fd: OwnedFd,
}

impl TestNetns {
    /// Creates a namespace from a helper thread, so that the test's threads stay where they are.
    pub fn new() -> Self {
        require_root();
        let fd = thread::spawn(|| -> io::Result<OwnedFd> {
            // SAFETY: `unshare` only changes the calling thread, which exits right after.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            set_loopback_up()?;
            Ok(fs::File::open("/proc/thread-self/ns/net")?.into())
        })
        .join()
        .expect("netns thread panicked")
        .expect("failed to create a network namespace");
        Self { fd }
    }

    /// Runs `f` on a thread that has entered the namespace, so sockets it creates live there.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let fd = self
            .fd
            .try_clone()
            .expect("failed to duplicate the netns fd");
        thread::spawn(move || {
            // SAFETY: `fd` is a valid network namespace descriptor, and `setns` only changes the
            // calling thread.
            let result = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(result, 0, "setns failed: {}", io::Error::last_os_error());
            f()
        })
        .join()
        .expect("thread in netns panicked")
    }

    /// Returns the raw descriptor, for `setns` in a child process.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Sets `IFF_UP` on `lo` in the calling thread's network namespace.
fn set_loopback_up() -> io::Result<()> {
    // SAFETY: plain socket creation, and the result is checked before use.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: `ifreq` is plain data, for which all zero bytes are valid.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: `request` is a valid `ifreq` naming `lo`, and both ioctls read and write only it.
    unsafe {
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &raw mut request) != 0 {
            return Err(io::Error::last_os_error());
        }
        request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &raw mut request) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Builds client commands that move themselves into a cgroup and a network namespace before
/// `exec`, so every socket they create is covered by the programs.
pub struct ClientLauncher {
    cgroup_procs: CString,
    netns_fd: RawFd,
    /// User and group to switch to before `exec`, if any.
    credentials: Option<(u32, u32)>,
    /// Whether clients get a mount namespace of their own, where their mounts stay private.
    private_mounts: bool,
}

impl ClientLauncher {
    /// Creates a launcher for `cgroup` and `netns`, which must outlive the clients.
    pub fn new(cgroup: &TestCgroup, netns: &TestNetns) -> Self {
        let procs = cgroup.path().join("cgroup.procs");
        Self {
            cgroup_procs: CString::new(procs.to_str().expect("non-UTF-8 cgroup path"))
                .expect("NUL in cgroup path"),
            netns_fd: netns.raw_fd(),
            credentials: None,
            private_mounts: false,
        }
    }

    /// Gives each client its own mount namespace with private propagation, so mounts it makes
    /// vanish with it and never reach the host.
    pub fn with_private_mounts(mut self) -> Self {
        self.private_mounts = true;
        self
    }

    /// Makes the clients switch to `uid` and `gid` before `exec`.
    pub fn with_credentials(mut self, uid: u32, gid: u32) -> Self {
        self.credentials = Some((uid, gid));
        self
    }

    /// Prepares `command` to enter the cgroup and namespace in the child.
    pub fn prepare(&self, mut command: Command) -> Command {
        let cgroup_procs = self.cgroup_procs.clone();
        let netns_fd = self.netns_fd;
        let credentials = self.credentials;
        let private_mounts = self.private_mounts;
        // SAFETY: the closure runs between fork and exec and calls only async-signal-safe
        // functions (open, write, close, setns, unshare, mount, setgroups, setgid, setuid) on
        // data prepared before the fork.
        unsafe {
            command.pre_exec(move || {
                enter_cgroup(&cgroup_procs)?;
                if libc::setns(netns_fd, libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if private_mounts {
                    let flags = libc::MS_REC | libc::MS_PRIVATE;
                    if libc::unshare(libc::CLONE_NEWNS) != 0
                        || libc::mount(
                            std::ptr::null(),
                            c"/".as_ptr(),
                            std::ptr::null(),
                            flags,
                            std::ptr::null(),
                        ) != 0
                    {
                        return Err(io::Error::last_os_error());
                    }
                }
                if let Some((uid, gid)) = credentials
                    && (libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(gid) != 0
                        || libc::setuid(uid) != 0)
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    }
}

/// Moves the calling process into the cgroup whose `cgroup.procs` path is given.
///
/// # Safety
///
/// Only async-signal-safe calls, so it may run between fork and exec.
unsafe fn enter_cgroup(cgroup_procs: &CString) -> io::Result<()> {
    // SAFETY: `cgroup_procs` is a valid C string, and the descriptor is closed below.
    let fd = unsafe { libc::open(cgroup_procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // Writing "0" moves the writer itself.
    // SAFETY: writes one byte from a static buffer to the descriptor opened above.
    let written = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
    // SAFETY: `fd` is open and owned here.
    unsafe { libc::close(fd) };
    if written != 1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `count` clients, `parallel` at a time, and returns their pids in start order.
///
/// `on_exit(index, pid)` runs on the worker thread right after client `index` has exited.
/// Panics if a client cannot be started or exits unsuccessfully.
pub fn run_clients(
    count: usize,
    parallel: usize,
    command: impl Fn(usize) -> Command + Sync,
    on_exit: impl Fn(usize, u32) + Sync,
) -> Vec<u32> {
    let next = AtomicU32::new(0);
    let pids = Mutex::new(vec![0; count]);
    thread::scope(|scope| {
        for _ in 0..parallel {
            scope.spawn(|| {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if index >= count {
                        break;
                    }
                    let mut child = command(index).spawn().expect("failed to spawn client");
                    let pid = child.id();
                    pids.lock().unwrap()[index] = pid;
                    let mut stderr = String::new();
                    if let Some(mut pipe) = child.stderr.take() {
                        let _ = pipe.read_to_string(&mut stderr);
                    }
                    let status = child.wait().expect("failed to wait for client");
                    assert!(
                        status.success(),
                        "client {index} failed: {status}; stderr: {stderr}"
                    );
                    on_exit(index, pid);
                }
            });
        }
    });
    pids.into_inner().unwrap()
}

/// Returns the resolved path of the Python 3 interpreter, as the kernel records its executable.
pub fn python_path() -> PathBuf {
    let output = Command::new("python3")
        .args([
            "-c",
            "import os, sys; print(os.path.realpath(sys.executable))",
        ])
        .output()
        .expect("python3 not found on PATH");
    assert!(output.status.success(), "python3 failed: {output:?}");
    PathBuf::from(
        String::from_utf8(output.stdout)
            .expect("non-UTF-8 python path")
            .trim(),
    )
}

/// Python client that connects over TCP, sends its pid and closes.
pub const TCP_CLIENT: &str = "
import os, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
family = socket.AF_INET6 if ':' in host else socket.AF_INET
with socket.socket(family, socket.SOCK_STREAM) as s:
    s.connect((host, port))
    s.sendall(str(os.getpid()).encode())
";

/// Python client that sends its pid in one UDP datagram, unconnected (`sendto`), or after
/// `connect()` when a third argument is given.
pub const UDP_CLIENT: &str = "
import os, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
family = socket.AF_INET6 if ':' in host else socket.AF_INET
with socket.socket(family, socket.SOCK_DGRAM) as s:
    payload = str(os.getpid()).encode()
    if len(sys.argv) > 3:
        s.connect((host, port))
        s.send(payload)
    else:
        s.sendto(payload, (host, port))
";

/// A flow received by a listener, with the pid the client wrote into it.
#[derive(Debug)]
pub struct Received {
    /// The lookup key built from the receiving socket.
    pub lookup: FlowLookup,
    /// The pid the client sent as payload.
    pub reported_pid: u32,
}

/// A TCP listener inside a test namespace.
pub struct TcpServer {
    listener: TcpListener,
}

impl TcpServer {
    /// Binds a listener to `address` (port 0 picks one) inside `netns`.
    pub fn bind(netns: &TestNetns, address: &str) -> Self {
        let address: SocketAddr = address.parse().expect("invalid listener address");
        let listener = netns.run(move || TcpListener::bind(address).expect("failed to bind"));
        listener
            .set_nonblocking(true)
            .expect("failed to set non-blocking");
        Self { listener }
    }

    /// Returns the bound address.
    pub fn address(&self) -> SocketAddr {
        self.listener.local_addr().expect("listener has no address")
    }

    /// Accepts `count` connections and returns them with each client's pid.
    pub fn receive(&self, count: usize) -> Vec<Received> {
        let mut received = Vec::with_capacity(count);
        self.receive_each(count, |flow| received.push(flow));
        received
    }

    /// Accepts `count` connections, reading each client's pid, and passes each to `handle`.
    ///
    /// Panics if no connection arrives for [`RECEIVE_TIMEOUT`].
    pub fn receive_each(&self, count: usize, mut handle: impl FnMut(Received)) {
        let mut deadline = Instant::now() + RECEIVE_TIMEOUT;
        let mut accepted = 0;
        while accepted < count {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    stream.set_nonblocking(false).unwrap();
                    stream
                        .set_read_timeout(Some(Duration::from_secs(10)))
                        .unwrap();
                    let lookup =
                        FlowLookup::from_accepted_tcp(&stream).expect("lookup from stream");
                    let mut payload = String::new();
                    stream
                        .read_to_string(&mut payload)
                        .expect("failed to read client pid");
                    handle(Received {
                        lookup,
                        reported_pid: payload.parse().expect("client sent no pid"),
                    });
                    accepted += 1;
                    deadline = Instant::now() + RECEIVE_TIMEOUT;
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    assert!(
                        Instant::now() < deadline,
                        "accepted {accepted} of {count} connections, then none for \
                         {RECEIVE_TIMEOUT:?}"
                    );
                    thread::sleep(Duration::from_millis(2));
                }
                Err(error) => panic!("accept failed: {error}"),
            }
        }
    }
}

/// A UDP socket inside a test namespace.
pub struct UdpServer {
    socket: UdpSocket,
}

impl UdpServer {
    /// Binds to `address` (port 0 picks one) inside `netns`.
    pub fn bind(netns: &TestNetns, address: &str) -> Self {
        let address: SocketAddr = address.parse().expect("invalid listener address");
        let socket = netns.run(move || UdpSocket::bind(address).expect("failed to bind"));
        socket.set_read_timeout(Some(RECEIVE_TIMEOUT)).unwrap();
        Self { socket }
    }

    /// Returns the bound address.
    pub fn address(&self) -> SocketAddr {
        self.socket.local_addr().expect("socket has no address")
    }

    /// Receives `count` datagrams and returns them with each client's pid.
    pub fn receive(&self, count: usize) -> Vec<Received> {
        let mut received = Vec::with_capacity(count);
        self.receive_each(count, |flow| received.push(flow));
        received
    }

    /// Receives `count` datagrams, each carrying a client's pid, and passes each to `handle`.
    ///
    /// Panics if no datagram arrives for [`RECEIVE_TIMEOUT`].
    pub fn receive_each(&self, count: usize, mut handle: impl FnMut(Received)) {
        let netns_cookie = netns_cookie(&self.socket.as_fd()).expect("SO_NETNS_COOKIE failed");
        let dst = self.address();
        let mut buffer = [0; 64];
        for index in 0..count {
            let (len, src) = self.socket.recv_from(&mut buffer).unwrap_or_else(|error| {
                panic!("datagram {index} of {count} not received: {error}")
            });
            let payload = std::str::from_utf8(&buffer[..len]).expect("non-UTF-8 payload");
            handle(Received {
                lookup: FlowLookup {
                    netns_cookie: Some(netns_cookie),
                    protocol: Protocol::Udp,
                    src,
                    dst,
                },
                reported_pid: payload.parse().expect("client sent no pid"),
            });
        }
    }
}

/// A classifier attached to a fresh cgroup, plus a namespace for its clients' traffic.
///
/// Fields drop in order: the programs are detached before the cgroup is removed.
pub struct Fixture {
    pub classifier: Classifier,
    pub launcher: ClientLauncher,
    pub netns: TestNetns,
    pub cgroup: TestCgroup,
}

impl Fixture {
    /// Creates the cgroup and namespace and attaches the classifier to the cgroup.
    pub fn new() -> Self {
        let cgroup = TestCgroup::new();
        let netns = TestNetns::new();
        let classifier = Classifier::load_and_attach(cgroup.path())
            .unwrap_or_else(|error| panic!("failed to attach: {}", error_chain(&error)));
        Self {
            classifier,
            launcher: ClientLauncher::new(&cgroup, &netns),
            netns,
            cgroup,
        }
    }

    /// Returns a Python client command running `script` against `server`.
    pub fn python_client(&self, script: &str, server: SocketAddr, extra: &[&str]) -> Command {
        let mut command = Command::new(python_path_cached());
        // `-S` skips the site module, which cut the interpreter's start-up from about 37 ms to
        // 16 ms on the 2-core machine the tests were written on.
        command.args([
            "-S",
            "-c",
            script,
            &server.ip().to_string(),
            &server.port().to_string(),
        ]);
        command.args(extra);
        self.launcher.prepare(command)
    }
}

/// Returns [`python_path`], computed once per test binary.
pub fn python_path_cached() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(python_path)
}

/// Formats an error with all its causes, which include the verifier log of a rejected program.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    message
}

/// Runs `count` clients built by `command`, `parallel` at a time, while `receive` collects
/// their flows. Returns the client pids and the received flows.
pub fn exchange(
    count: usize,
    parallel: usize,
    command: impl Fn(usize) -> Command + Sync,
    receive: impl FnOnce(usize) -> Vec<Received> + Send,
) -> (Vec<u32>, Vec<Received>) {
    thread::scope(|scope| {
        let receiver = scope.spawn(move || receive(count));
        let pids = run_clients(count, parallel, command, |_, _| {});
        let received = receiver.join().expect("receiver panicked");
        (pids, received)
    })
}

/// Returns the kernel's `comm` for an executable: its file name cut to 15 bytes.
pub fn comm_of(exe: &Path) -> String {
    use std::os::unix::ffi::OsStrExt as _;
    let name = exe
        .file_name()
        .expect("executable has no file name")
        .as_bytes();
    String::from_utf8_lossy(&name[..name.len().min(15)]).into_owned()
}
