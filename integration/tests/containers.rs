//! End-to-end tests of the container image. Podman builds it from the Dockerfile without a
//! registry, compiling the binaries in its builder stage, and `tollgated` runs in a container
//! attached to the lab's desk namespace. Client containers that share its network namespace
//! resolve names of the lab's zone through the lab's DNS server and make HTTP requests by name
//! and by address. The flow log, the summary and `tollgate report` must name each flow's
//! process and domain.
//!
//! Both containers run below a cgroup the test creates, which is bound into the daemon's
//! container as its attribution cgroup, so the client container's processes are named. The
//! containers, the image and the cgroups are removed on drop, also after a failure. Containers
//! never use podman's default network, which would change the host's firewall.
//!
//! The image build compiles `tollgate-proxy` in release mode. Its cargo target directory is
//! kept between runs (see scripts/container-image.sh), so only the first run on a machine
//! compiles everything.

use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{Mutex, PoisonError},
    thread,
    time::{Duration, Instant},
};

use tollgate_integration::{
    Lab,
    cgroup::TestCgroup,
    dns::{SHOP_NAME, SHORT_TTL_NAME},
    topology::{DNS_V4, SERVER_A_V4, SERVER_B_V4},
};

/// Generous bound on waits for the daemon's container.
const WAIT: Duration = Duration::from_secs(60);

/// Mount points of the attribution cgroup and the test's work directory in the daemon's
/// container.
const CGROUP_IN_CONTAINER: &str = "/run/tollgate/cgroup";
const WORK_IN_CONTAINER: &str = "/var/log/tollgate";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration/ has a parent")
        .to_owned()
}

fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|err| panic!("failed to run {command:?}: {err}"))
}

fn run_ok(command: &mut Command) -> Output {
    let output = run(command);
    assert!(
        output.status.success(),
        "{command:?} failed with {}: {}{}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
    output
}

/// A container removed with `podman rm -f -t 0` on drop.
struct ContainerGuard(String);

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "-f", "-t", "0", &self.0])
            .output();
    }
}

/// Number of live [`ImageGuard`]s. The tests of this binary share one image, and the mutex
/// keeps `podman rmi` from running while a test builds it, because a removal that runs during
/// a build can delete the cached layers that the build is using.
static IMAGE_USERS: Mutex<usize> = Mutex::new(0);

/// A use of the test image, which is built for the first use and removed when the last one
/// drops. The layers it was built from stay in podman's cache.
struct ImageGuard(String);

impl ImageGuard {
    fn acquire() -> Self {
        let mut users = IMAGE_USERS.lock().unwrap_or_else(PoisonError::into_inner);
        let tag = format!("localhost/tollgate-test:{}", std::process::id());
        if *users == 0 {
            build_image(&tag);
        }
        *users += 1;
        Self(tag)
    }
}

impl Drop for ImageGuard {
    fn drop(&mut self) {
        let mut users = IMAGE_USERS.lock().unwrap_or_else(PoisonError::into_inner);
        *users -= 1;
        if *users == 0 {
            let _ = Command::new("podman")
                .args(["rmi", "-f", "--no-prune", &self.0])
                .output();
        }
    }
}

/// The directories podman creates for `--cgroup-parent` in the cgroup v1 hierarchies of a
/// hybrid host (the cgroup2 one is a [`TestCgroup`]), removed deepest first on drop.
struct V1CgroupGuard(String);

impl Drop for V1CgroupGuard {
    fn drop(&mut self) {
        let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") else {
            return;
        };
        for hierarchy in hierarchies.flatten() {
            let dir = hierarchy.path().join(&self.0);
            if dir.is_dir() && hierarchy.file_name() != "unified" {
                remove_cgroup_tree(&dir);
            }
        }
    }
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(children) = fs::read_dir(dir) {
        for child in children.flatten() {
            if child.file_type().is_ok_and(|kind| kind.is_dir()) {
                remove_cgroup_tree(&child.path());
            }
        }
    }
    // conmon may still be leaving its cgroup just after the container is gone, which makes
    // rmdir fail with EBUSY for a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return,
            Err(err) if err.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(100));
            }
            Err(err) => {
                eprintln!("failed to remove cgroup {}: {err}", dir.display());
                return;
            }
        }
    }
}

/// Builds the image from the Dockerfile, compiling the binaries from this checkout, without
/// pulling. Panics when the build fails. A podman build that fails leaves no image behind.
fn build_image(tag: &str) {
    let started = Instant::now();
    run_ok(Command::new(repo_root().join("scripts/container-image.sh")).arg(tag));
    eprintln!("built {tag} in {:.1?}", started.elapsed());
}

/// The lab, the image and the cgroup the containers of one test share.
struct Setup {
    // Fields drop in order: containers go before the cgroups, the image and the namespaces.
    v1_cgroups: V1CgroupGuard,
    cgroup: TestCgroup,
    image: ImageGuard,
    lab: Lab,
}

impl Setup {
    fn new() -> Self {
        let lab = Lab::start().unwrap_or_else(|err| panic!("failed to start the lab: {err:#}"));
        let image = ImageGuard::acquire();
        let cgroup_name = format!("{}-containers", lab.name());
        let cgroup = TestCgroup::create(&cgroup_name)
            .unwrap_or_else(|err| panic!("failed to create cgroup {cgroup_name}: {err}"));
        Self {
            v1_cgroups: V1CgroupGuard(cgroup_name),
            cgroup,
            image,
            lab,
        }
    }

    fn cgroup_parent(&self) -> String {
        format!("/{}", self.v1_cgroups.0)
    }

    /// Starts `tollgated ARGS` in a container on the lab's desk namespace, attributing the
    /// processes of every container below the test's cgroup, and waits until `tollgate
    /// status` succeeds in it.
    fn start_daemon(&self, name: &str, args: &[&str]) -> ContainerGuard {
        let cgroup_mount = format!("{}:{CGROUP_IN_CONTAINER}", self.cgroup.path().display());
        let mut daemon_args = vec!["--attribution-cgroup", CGROUP_IN_CONTAINER];
        daemon_args.extend_from_slice(args);
        self.start_container(name, &["-v", &cgroup_mount], &daemon_args)
    }

    /// Starts `tollgated ARGS` in a container whose entrypoint mounts cgroup2 itself, so the
    /// daemon attributes the processes of its own container only.
    fn start_daemon_own_cgroup(&self, name: &str, args: &[&str]) -> ContainerGuard {
        self.start_container(name, &[], args)
    }

    fn start_container(&self, name: &str, podman_args: &[&str], args: &[&str]) -> ContainerGuard {
        let guard = ContainerGuard(name.to_owned());
        let work_mount = format!("{}:{WORK_IN_CONTAINER}", self.lab.work_dir().display());
        // `--dns` writes the lab's DNS server into the container's resolv.conf, which the
        // client containers share. tollgated forwards to it, and diverts the clients' queries
        // to it into its resolver.
        run_ok(
            Command::new("podman")
                .args(["run", "-d", "--rm", "--name", name])
                .arg(format!("--network=ns:{}", self.lab.desk().path().display()))
                .arg(format!("--dns={DNS_V4}"))
                .arg(format!("--cgroup-parent={}", self.cgroup_parent()))
                .args(["--cgroupns=private", "--cap-add", "NET_ADMIN,BPF,SYS_ADMIN"])
                .args(["-v", &work_mount])
                .args(podman_args)
                .arg(&self.image.0)
                .args(args),
        );
        let deadline = Instant::now() + WAIT;
        loop {
            let status = run(Command::new("podman").args(["exec", name, "tollgate", "status"]));
            if status.status.success() {
                return guard;
            }
            assert!(
                Instant::now() < deadline,
                "tollgated in {name} did not start: {}\n--- container log ---\n{}",
                text(&status.stderr),
                container_log(name)
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs `script` with bash in a new container that shares `daemon`'s network namespace.
    fn run_client(&self, daemon: &str, client: &str, script: &str) -> Output {
        let name = format!("{daemon}-{client}");
        let _guard = ContainerGuard(name.clone());
        run(Command::new("podman")
            .args(["run", "--rm", "--name", &name])
            .arg(format!("--network=container:{daemon}"))
            .arg(format!("--cgroup-parent={}", self.cgroup_parent()))
            .args(["--entrypoint", "bash", &self.image.0, "-c", script]))
    }

    /// Runs an HTTP GET to `server` from a container that shares `daemon`'s network namespace.
    fn http_get(&self, daemon: &str, client: &str, server: Ipv4Addr) -> Output {
        self.run_client(daemon, client, &http_script(&server.to_string()))
    }

    /// Resolves `name` with `getent`, then sends an HTTP GET to `name` from a container that
    /// shares `daemon`'s network namespace. The addresses `getent` found go to stderr.
    fn http_get_by_name(&self, daemon: &str, client: &str, name: &str) -> Output {
        let script = format!("getent hosts {name} >&2 && {}", http_script(name));
        self.run_client(daemon, client, &script)
    }
}

/// Returns a bash script that sends an HTTP GET to `host`, a name or an address, with bash's
/// /dev/tcp, since the image has no HTTP client, and prints the response. Bash resolves a name
/// itself, through the resolv.conf of the container.
fn http_script(host: &str) -> String {
    format!(
        "exec 3<>/dev/tcp/{host}/80 && printf 'GET / HTTP/1.0\\r\\nHost: {host}\\r\\n\\r\\n' >&3 \\
         && timeout 20 cat <&3"
    )
}

impl Setup {
    fn flow_log(&self) -> PathBuf {
        self.lab.work_dir().join("flows.jsonl")
    }
}

fn container_log(name: &str) -> String {
    let output = run(Command::new("podman").args(["logs", name]));
    format!("{}{}", text(&output.stdout), text(&output.stderr))
}

fn wait_for_records(path: &Path, count: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let records: Vec<serde_json::Value> = fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}")))
            .collect();
        if records.len() >= count {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "expected {count} records in {}, found {records:#?}",
            path.display()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

fn assert_page(output: &Output) {
    assert!(
        output.status.success(),
        "request failed with {}: {}",
        output.status,
        text(&output.stderr)
    );
    assert!(
        text(&output.stdout).starts_with("HTTP/1.0 200"),
        "{}",
        text(&output.stdout)
    );
}

/// Returns whether the desk namespace still has an nftables table named tollgate.
fn desk_has_table(lab: &Lab) -> bool {
    let output = run(lab.desk_command("nft").args(["list", "tables"]));
    text(&output.stdout).contains("tollgate")
}

/// Returns the record of the flow to `host`, or to the address `ip` when `host` is null.
fn record_to<'a>(
    records: &'a [serde_json::Value],
    host: Option<&str>,
    ip: Ipv4Addr,
) -> &'a serde_json::Value {
    let ip = ip.to_string();
    records
        .iter()
        .find(|record| record["host"].as_str() == host && record["ip"] == ip.as_str())
        .unwrap_or_else(|| panic!("no record to {host:?} at {ip}: {records:#?}"))
}

/// Asserts that `getent` in the client found `name` at `ip`, through the lab's DNS server.
fn assert_resolved(output: &Output, name: &str, ip: Ipv4Addr) {
    let stderr = text(&output.stderr);
    let line = stderr
        .lines()
        .find(|line| line.contains(name))
        .unwrap_or_else(|| panic!("getent did not resolve {name}: {stderr}"));
    assert!(line.starts_with(&ip.to_string()), "{line}");
}

#[test]
fn container_audits_sibling_container() {
    let setup = Setup::new();
    let daemon = format!("{}-audit", setup.lab.name());
    let log = format!("{WORK_IN_CONTAINER}/flows.jsonl");
    let summary = format!("{WORK_IN_CONTAINER}/summary.txt");
    let guard = setup.start_daemon(
        &daemon,
        &["--audit", "--audit-log", &log, "--audit-summary", &summary],
    );

    // The request by address goes first: once any process resolved a name to an address, a
    // flow to that address from a process that resolved nothing takes that name.
    assert_page(&setup.http_get(&daemon, "address", SERVER_B_V4));
    let shop = setup.http_get_by_name(&daemon, "shop", SHOP_NAME);
    assert_page(&shop);
    assert_resolved(&shop, SHOP_NAME, SERVER_A_V4);
    let short = setup.http_get_by_name(&daemon, "short", SHORT_TTL_NAME);
    assert_page(&short);
    assert_resolved(&short, SHORT_TTL_NAME, SERVER_B_V4);
    let records = wait_for_records(&setup.flow_log(), 3);
    assert_eq!(records.len(), 3, "{records:#?}");
    for record in &records {
        assert_eq!(record["verdict"], "allow", "{record:#}");
        assert_eq!(record["process"]["comm"], "bash", "{record:#}");
        assert_eq!(
            record["process"]["executable"], "/usr/bin/bash",
            "{record:#}"
        );
        assert!(record["bytes_down"].as_u64().unwrap() > 0, "{record:#}");
        let cgroup_id = record["process"]["cgroup_id"].as_u64().unwrap();
        assert_ne!(cgroup_id, 0, "{record:#}");
    }
    // The names come from the DNS answers that the same process received.
    let by_shop = record_to(&records, Some(SHOP_NAME), SERVER_A_V4);
    assert_eq!(by_shop["name_source"], "dns", "{by_shop:#}");
    let by_short = record_to(&records, Some(SHORT_TTL_NAME), SERVER_B_V4);
    assert_eq!(by_short["name_source"], "dns", "{by_short:#}");
    let by_address = record_to(&records, None, SERVER_B_V4);
    assert!(by_address["name_source"].is_null(), "{by_address:#}");
    assert_ne!(
        by_shop["process"]["cgroup_id"], by_short["process"]["cgroup_id"],
        "each client container has a cgroup of its own"
    );
    let dns_log = fs::read_to_string(setup.lab.work_dir().join("dnsmasq.log"))
        .expect("failed to read the lab's DNS log");
    for name in [SHOP_NAME, SHORT_TTL_NAME] {
        assert!(
            dns_log.contains(&format!("query[A] {name}")),
            "the lab's DNS server was not asked for {name}: {dns_log}"
        );
    }

    // `tollgate report` in the daemon's container reads the same log.
    let report = run_ok(Command::new("podman").args([
        "exec",
        &daemon,
        "tollgate",
        "report",
        "--audit-log",
        &log,
    ]));
    let report = text(&report.stdout);
    assert!(report.contains("3 flow(s) from 3 process(es)"), "{report}");
    assert!(report.contains("/usr/bin/bash [cgroup "), "{report}");
    assert!(
        report.contains("shop.lab.test (203.0.113.10):80/tcp"),
        "{report}"
    );
    assert!(
        report.contains("short.lab.test (203.0.113.20):80/tcp"),
        "{report}"
    );

    run_ok(Command::new("podman").args(["stop", "-t", "20", &daemon]));
    drop(guard);
    let summary = fs::read_to_string(setup.lab.work_dir().join("summary.txt"))
        .expect("no summary written at exit");
    assert!(summary.contains("/usr/bin/bash [cgroup "), "{summary}");
    assert!(
        summary.contains("shop.lab.test (203.0.113.10):80/tcp"),
        "{summary}"
    );
    assert!(
        summary.contains("short.lab.test (203.0.113.20):80/tcp"),
        "{summary}"
    );
    assert!(summary.contains("\n  203.0.113.20:80/tcp"), "{summary}");
    assert!(
        !desk_has_table(&setup.lab),
        "the stopped daemon left its table in desk"
    );
}

#[test]
fn container_names_its_own_processes() {
    let setup = Setup::new();
    let daemon = format!("{}-own", setup.lab.name());
    let log = format!("{WORK_IN_CONTAINER}/flows.jsonl");
    let _guard = setup.start_daemon_own_cgroup(&daemon, &["--audit", "--audit-log", &log]);

    // `podman exec` starts the client in the daemon's container, inside the cgroup2 root
    // that the entrypoint mounted.
    let output = run(Command::new("podman").args([
        "exec",
        &daemon,
        "bash",
        "-c",
        &http_script(&SERVER_A_V4.to_string()),
    ]));
    assert_page(&output);
    let records = wait_for_records(&setup.flow_log(), 1);
    let process = &records[0]["process"];
    assert_eq!(process["executable"], "/usr/bin/bash", "{records:#?}");
    assert_ne!(process["cgroup_id"].as_u64(), Some(0), "{records:#?}");
    let logs = container_log(&daemon);
    assert!(
        logs.contains("cgroup=/run/tollgate/cgroup"),
        "the entrypoint did not mount cgroup2: {logs}"
    );

    // Without capabilities the mount fails, and the entrypoint still runs tollgated.
    let version = run_ok(Command::new("podman").args([
        "run",
        "--rm",
        "--network",
        "none",
        &setup.image.0,
        "--version",
    ]));
    assert!(
        text(&version.stdout).starts_with("tollgated "),
        "{}",
        text(&version.stdout)
    );
}

#[test]
fn container_enforces_policy() {
    let setup = Setup::new();
    let daemon = format!("{}-enforce", setup.lab.name());
    fs::write(
        setup.lab.work_dir().join("policy.toml"),
        format!(
            "[[allow]]\nname = \"shop\"\nexecutables = [\"/usr/bin/bash\"]\n\
             domains = [\"{SHOP_NAME}\"]\nports = [80]\n"
        ),
    )
    .expect("failed to write policy");
    let policy = format!("{WORK_IN_CONTAINER}/policy.toml");
    let log = format!("{WORK_IN_CONTAINER}/flows.jsonl");
    let _guard = setup.start_daemon(
        &daemon,
        &["--enforce", "--policy", &policy, "--audit-log", &log],
    );

    // The allowed name's address without a name matches no entry. This request goes first,
    // because once a process resolved the name, flows to its address from processes that
    // resolved nothing take that name.
    let unnamed = setup.http_get(&daemon, "address", SERVER_A_V4);
    assert!(
        !text(&unnamed.stdout).contains("HTTP/1.0 200"),
        "an address without a name answered: {}",
        text(&unnamed.stdout)
    );
    let allowed = setup.http_get_by_name(&daemon, "shop", SHOP_NAME);
    assert_page(&allowed);
    assert_resolved(&allowed, SHOP_NAME, SERVER_A_V4);
    // The policy does not decide DNS queries, so the name outside the policy still resolves,
    // and the connection to it is refused.
    let refused = setup.http_get_by_name(&daemon, "short", SHORT_TTL_NAME);
    assert_resolved(&refused, SHORT_TTL_NAME, SERVER_B_V4);
    assert!(
        !text(&refused.stdout).contains("HTTP/1.0 200"),
        "a domain outside the policy answered: {}",
        text(&refused.stdout)
    );

    let records = wait_for_records(&setup.flow_log(), 3);
    let by_shop = record_to(&records, Some(SHOP_NAME), SERVER_A_V4);
    assert_eq!(by_shop["verdict"], "allow", "{by_shop:#}");
    assert_eq!(by_shop["process"]["executable"], "/usr/bin/bash");
    let by_short = record_to(&records, Some(SHORT_TTL_NAME), SERVER_B_V4);
    assert_eq!(by_short["verdict"], "deny", "{by_short:#}");
    assert_eq!(by_short["process"]["executable"], "/usr/bin/bash");
    let reason = by_short["reason"]
        .as_str()
        .expect("denial without a reason");
    assert!(
        reason.contains("short.lab.test (203.0.113.20) is not in [shop.lab.test]"),
        "{reason}"
    );
    let by_address = record_to(&records, None, SERVER_A_V4);
    assert_eq!(by_address["verdict"], "deny", "{by_address:#}");
    let reason = by_address["reason"]
        .as_str()
        .expect("denial without a reason");
    assert!(reason.contains("name unknown"), "{reason}");
    assert!(
        container_log(&daemon).contains("denied by policy"),
        "{}",
        container_log(&daemon)
    );
}
