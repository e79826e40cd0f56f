//! End-to-end tests of `tollgate-ui` under Xvfb against a real daemon in a lab: a prompt
//! answered by simulated keys, several interfaces at once, and an interface killed mid-prompt.
//!
//! Screenshots of the prompt and the monitor go to `ui-screenshots/` in Cargo's temporary
//! directory for tests. Without Xvfb the tests print why and pass without running.

use std::{
    fs,
    path::PathBuf,
    process::{Child, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use tollgate_integration::{
    INDEX_MARKER, Lab, ProcessGuard,
    daemon::Daemon,
    display::VirtualDisplay,
    topology::{SERVER_A_V4, SERVER_B_V4},
    workspace_binary,
};

const WAIT: Duration = Duration::from_secs(30);

/// Title of the prompt for connections of unknown processes, as `tollgate-ui` names it.
const UNKNOWN_PROMPT: &str = "Tollgate: unknown process wants to connect";

const MONITOR: &str = "Tollgate connections";

/// Starts a virtual display, or returns `None` after saying why when Xvfb is not installed.
fn display() -> Option<VirtualDisplay> {
    if !VirtualDisplay::is_available() {
        eprintln!(
            "SKIPPED: Xvfb is not installed, so tollgate-ui cannot be shown; \
             install xvfb (scripts/install-deps.sh does)"
        );
        return None;
    }
    Some(VirtualDisplay::start().unwrap_or_else(|err| panic!("{err:#}")))
}

fn start(extra_config: &str) -> (Lab, Daemon) {
    let lab = Lab::start().unwrap_or_else(|err| panic!("failed to start the lab: {err:#}"));
    let daemon = Daemon::start(&lab, extra_config).unwrap_or_else(|err| panic!("{err:#}"));
    (lab, daemon)
}

/// Starts `tollgate-ui` on `display` for `daemon`, logging to a file in the lab.
fn start_ui(display: &VirtualDisplay, daemon: &Daemon, lab: &Lab, name: &str) -> ProcessGuard {
    let binary = workspace_binary("tollgate-ui").unwrap_or_else(|err| panic!("{err:#}"));
    let log_path = lab.work_dir().join(format!("{name}.log"));
    let log = fs::File::create(&log_path).unwrap();
    let mut command = display.command(binary.to_str().unwrap());
    command
        .arg("--socket")
        .arg(daemon.socket_path())
        .env("RUST_LOG", "tollgate_ui=debug")
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let ui = ProcessGuard::spawn(&mut command).expect("failed to start tollgate-ui");
    if display.wait_for_window(MONITOR, WAIT).is_none() {
        panic!(
            "tollgate-ui showed no monitor window on {} (display check: {:?})\n--- its log ---\n{}",
            display.name(),
            display.xdotool(&["getdisplaygeometry"]),
            fs::read_to_string(&log_path).unwrap_or_default()
        );
    }
    ui
}

fn spawn_curl(lab: &Lab, server: std::net::IpAddr) -> Child {
    lab.desk_command("curl")
        .args(["-sS", "--max-time", "60"])
        .arg(Lab::http_url(server))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("failed to start curl")
}

fn page_loaded(output: &Output) -> bool {
    output.status.success() && String::from_utf8_lossy(&output.stdout).contains(INDEX_MARKER)
}

fn wait_for_prompt(display: &VirtualDisplay, daemon: &Daemon) -> String {
    display
        .wait_for_window(UNKNOWN_PROMPT, WAIT)
        .unwrap_or_else(|| {
            panic!(
                "no prompt window appeared\n--- daemon log ---\n{}",
                daemon.log()
            )
        })
}

/// Gives `window` the keyboard focus, waits past the prompt's arming delay, and types `keys`.
fn type_into(display: &VirtualDisplay, window: &str, keys: &[&str]) {
    display
        .xdotool(&["windowfocus", "--sync", window])
        .unwrap_or_else(|err| panic!("{err:#}"));
    thread::sleep(Duration::from_millis(1500));
    for key in keys {
        display
            .xdotool(&["key", "--delay", "100", key])
            .unwrap_or_else(|err| panic!("{err:#}"));
    }
}

fn screenshot_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn keyboard_answers_prompt() {
    let Some(display) = display() else { return };
    let (lab, daemon) = start("");
    let _ui = start_ui(&display, &daemon, &lab, "ui");
    let monitor = display.wait_for_window(MONITOR, WAIT).unwrap();
    display
        .xdotool(&["windowfocus", "--sync", &monitor])
        .unwrap();

    let first = spawn_curl(&lab, SERVER_A_V4.into());
    let second = spawn_curl(&lab, SERVER_B_V4.into());
    daemon.wait_for_held(2, WAIT);
    let prompt = wait_for_prompt(&display, &daemon);
    assert_eq!(
        display.find_windows(UNKNOWN_PROMPT).len(),
        1,
        "one prompt for the burst"
    );

    // The prompt appeared without taking the focus from the window the person used.
    let user_time = display.property(&prompt, "_NET_WM_USER_TIME").unwrap();
    assert!(user_time.trim().ends_with("= 0"), "{user_time}");
    let focused = display.xdotool(&["getwindowfocus"]).unwrap();
    assert_eq!(focused.trim(), monitor, "focus stayed on the monitor");

    thread::sleep(Duration::from_millis(1200));
    let shots = screenshot_dir();
    display
        .screenshot(&prompt, &shots.join("prompt.png"))
        .unwrap();

    // Any host, this port, once: one answer lets both connections through.
    type_into(&display, &prompt, &["s", "a"]);
    assert!(
        page_loaded(&first.wait_with_output().unwrap()),
        "first curl"
    );
    assert!(
        page_loaded(&second.wait_with_output().unwrap()),
        "second curl"
    );
    wait_until("the prompt closes", || {
        display.find_windows(UNKNOWN_PROMPT).is_empty()
    });
    assert!(daemon.pending().is_empty());

    thread::sleep(Duration::from_millis(2500));
    display
        .screenshot(&monitor, &shots.join("monitor.png"))
        .unwrap();
}

#[test]
fn second_interface_closes_answered_prompt() {
    let Some(display) = display() else { return };
    let (lab, daemon) = start("");
    let _first_ui = start_ui(&display, &daemon, &lab, "first-ui");
    let _second_ui = start_ui(&display, &daemon, &lab, "second-ui");

    let curl = spawn_curl(&lab, SERVER_A_V4.into());
    daemon.wait_for_held(1, WAIT);
    wait_for_prompt(&display, &daemon);
    wait_until("both interfaces show the prompt", || {
        display.find_windows(UNKNOWN_PROMPT).len() == 2
    });
    let prompts = display.find_windows(UNKNOWN_PROMPT);

    type_into(&display, &prompts[0], &["d"]);
    let output = curl.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(56), "curl was reset");
    wait_until("the other interface closes its prompt", || {
        display.find_windows(UNKNOWN_PROMPT).is_empty()
    });
}

#[test]
fn killed_interface_leaves_timeout_default() {
    let Some(display) = display() else { return };
    let (lab, daemon) = start("prompt_timeout_secs = 4");
    let ui = start_ui(&display, &daemon, &lab, "ui");

    let curl = spawn_curl(&lab, SERVER_A_V4.into());
    daemon.wait_for_held(1, WAIT);
    wait_for_prompt(&display, &daemon);
    ui.send_signal(Signal::SIGKILL).unwrap();
    ui.stop().unwrap();

    let output = curl.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(56), "denied by the timeout");
    assert!(daemon.pending().is_empty());
    assert!(
        daemon.log().contains("prompt timed out"),
        "{}",
        daemon.log()
    );
}

#[test]
fn interface_reconnects_after_restart() {
    let Some(display) = display() else { return };
    let (lab, mut daemon) = start("");
    let _ui = start_ui(&display, &daemon, &lab, "ui");
    daemon.restart(&lab).unwrap_or_else(|err| panic!("{err:#}"));

    let curl = spawn_curl(&lab, SERVER_A_V4.into());
    daemon.wait_for_held(1, WAIT);
    let prompt = wait_for_prompt(&display, &daemon);
    type_into(&display, &prompt, &["a"]);
    assert!(page_loaded(&curl.wait_with_output().unwrap()));
}
