//! End-to-end tests of the container image. Podman builds it from the Dockerfile without a
//! registry, and `tollgated` runs in a container attached to the lab's desk namespace. A second
//! container that shares its network namespace makes HTTP requests to the lab's servers.
//!
//! Both containers run below a cgroup the test creates, which is bound into the daemon's
//! container as its attribution cgroup, so the client container's processes are named. The
//! containers, the image and the cgroups are removed on drop, also after a failure. Containers
//! never use podman's default network, which would change the host's firewall.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use tollgate_integration::{
    Lab,
    cgroup::TestCgroup,
    topology::{SERVER_A_V4, SERVER_B_V4},
    workspace_binary,
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

/// A test image removed on drop.
struct ImageGuard(String);

impl Drop for ImageGuard {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rmi", "-f", &self.0]).output();
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

/// Builds the image from the Dockerfile with the binaries of this build, without pulling.
fn build_image(tag: &str, work_dir: &Path) -> ImageGuard {
    run_ok(&mut Command::new(
        repo_root().join("scripts/container-base.sh"),
    ));
    let bin_dir = workspace_binary("tollgated")
        .unwrap_or_else(|err| panic!("{err}"))
        .parent()
        .expect("binary has a directory")
        .to_owned();
    let guard = ImageGuard(tag.to_owned());
    run_ok(
        Command::new(repo_root().join("scripts/container-image.sh"))
            .arg(tag)
            .env("TOLLGATE_BIN_DIR", &bin_dir)
            .env("TMPDIR", work_dir),
    );
    guard
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
        let tag = format!("localhost/tollgate-test:{}", lab.name());
        let image = build_image(&tag, lab.work_dir());
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
        run_ok(
            Command::new("podman")
                .args(["run", "-d", "--rm", "--name", name])
                .arg(format!("--network=ns:{}", self.lab.desk().path().display()))
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

    /// Runs an HTTP GET to `server` from a container that shares `daemon`'s network namespace.
    fn http_get(&self, daemon: &str, server: std::net::Ipv4Addr) -> Output {
        let name = format!("{daemon}-client");
        let _guard = ContainerGuard(name.clone());
        run(Command::new("podman")
            .args(["run", "--rm", "--name", &name])
            .arg(format!("--network=container:{daemon}"))
            .arg(format!("--cgroup-parent={}", self.cgroup_parent()))
            .args([
                "--entrypoint",
                "bash",
                &self.image.0,
                "-c",
                &http_script(server),
            ]))
    }
}

/// Returns a bash script that sends an HTTP GET to `server` with bash's /dev/tcp, since the
/// image has no HTTP client, and prints the response.
fn http_script(server: std::net::Ipv4Addr) -> String {
    format!(
        "exec 3<>/dev/tcp/{server}/80 && printf 'GET / HTTP/1.0\\r\\nHost: {server}\\r\\n\\r\\n' >&3 \
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

    assert_page(&setup.http_get(&daemon, SERVER_A_V4));
    assert_page(&setup.http_get(&daemon, SERVER_B_V4));
    let records = wait_for_records(&setup.flow_log(), 2);
    for (record, server) in records.iter().zip(["203.0.113.10", "203.0.113.20"]) {
        assert_eq!(record["ip"], server, "{records:#?}");
        assert_eq!(record["verdict"], "allow");
        assert_eq!(record["process"]["comm"], "bash", "{record:#}");
        assert_eq!(
            record["process"]["executable"], "/usr/bin/bash",
            "{record:#}"
        );
        assert!(record["bytes_down"].as_u64().unwrap() > 0, "{record:#}");
        let cgroup_id = record["process"]["cgroup_id"].as_u64().unwrap();
        assert_ne!(cgroup_id, 0, "{record:#}");
    }
    let first = records[0]["process"]["cgroup_id"].as_u64();
    let second = records[1]["process"]["cgroup_id"].as_u64();
    assert_ne!(
        first, second,
        "each client container has a cgroup of its own"
    );

    run_ok(Command::new("podman").args(["stop", "-t", "20", &daemon]));
    drop(guard);
    let summary = fs::read_to_string(setup.lab.work_dir().join("summary.txt"))
        .expect("no summary written at exit");
    assert!(summary.contains("/usr/bin/bash [cgroup "), "{summary}");
    assert!(summary.contains("203.0.113.20:80/tcp"), "{summary}");
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
        &http_script(SERVER_A_V4),
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
            "[[allow]]\nname = \"server A\"\nexecutables = [\"/usr/bin/bash\"]\n\
             networks = [\"{SERVER_A_V4}\"]\nports = [80]\n"
        ),
    )
    .expect("failed to write policy");
    let policy = format!("{WORK_IN_CONTAINER}/policy.toml");
    let log = format!("{WORK_IN_CONTAINER}/flows.jsonl");
    let _guard = setup.start_daemon(
        &daemon,
        &["--enforce", "--policy", &policy, "--audit-log", &log],
    );

    assert_page(&setup.http_get(&daemon, SERVER_A_V4));
    let refused = setup.http_get(&daemon, SERVER_B_V4);
    assert!(
        !text(&refused.stdout).contains("HTTP/1.0 200"),
        "a server outside the policy answered: {}",
        text(&refused.stdout)
    );
    let records = wait_for_records(&setup.flow_log(), 2);
    let denied = records
        .iter()
        .find(|record| record["verdict"] == "deny")
        .unwrap_or_else(|| panic!("no denial recorded: {records:#?}"));
    assert_eq!(denied["ip"], "203.0.113.20");
    let reason = denied["reason"].as_str().expect("denial without a reason");
    assert!(reason.contains("203.0.113.20"), "{reason}");
    assert!(
        container_log(&daemon).contains("denied by policy"),
        "{}",
        container_log(&daemon)
    );
}
