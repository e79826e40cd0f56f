//! Crash safety of the rule store: a writer process is killed with SIGKILL in the middle of a
//! burst of rule writes, and every write it acknowledged must be in the file afterwards.
//!
//! The test binary runs itself as the writer: `writer_process` does nothing unless the
//! environment names a store file.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, Write},
    os::unix::process::ExitStatusExt,
    path::Path,
    process::{Command, Stdio},
};

use tempfile::TempDir;
use tollgate_rules::{Action, Destination, Lifetime, Rule, RuleId, RuleStore, Subject};

/// Environment variable with the store path; set only in the writer process.
const STORE_ENV: &str = "TOLLGATE_CRASH_TEST_STORE";
/// Environment variable with the first rule id the writer writes.
const FIRST_ID_ENV: &str = "TOLLGATE_CRASH_TEST_FIRST_ID";
/// Number of rules one writer writes.
const BURST: u64 = 1000;

fn burst_rule(id: u64) -> Rule {
    let destination = Destination {
        address: format!("10.{}.{}.0/24", id / 256 % 256, id % 256)
            .parse()
            .expect("test network parses"),
        ..Destination::any()
    };
    let mut rule = Rule::new(
        RuleId(id),
        Subject::executable(format!("/usr/bin/app{id}")),
        destination,
        Action::Allow,
        Lifetime::Forever,
    );
    rule.note = format!("written in a burst, number {id}");
    rule
}

/// The writer: stores `BURST` rules one by one and prints `acked ID` after each write returns.
#[test]
fn writer_process() {
    let Ok(path) = std::env::var(STORE_ENV) else {
        return;
    };
    let first: u64 = std::env::var(FIRST_ID_ENV)
        .expect("the first id is set with the store path")
        .parse()
        .expect("the first id is a number");
    let store = RuleStore::open(Path::new(&path)).expect("writer opens the store");
    let mut stdout = std::io::stdout().lock();
    for id in first..first + BURST {
        store.insert(&burst_rule(id)).expect("writer stores a rule");
        writeln!(stdout, "acked {id}").expect("writer prints the acknowledgement");
        stdout.flush().expect("writer flushes stdout");
    }
}

/// Starts a writer on `path`, kills it with SIGKILL after `kill_after` acknowledgements, and
/// returns every id it acknowledged.
fn write_until_killed(path: &Path, first: u64, kill_after: usize) -> BTreeSet<u64> {
    let test_binary = std::env::current_exe().expect("test binary path");
    let mut child = Command::new(test_binary)
        .args([
            "--exact",
            "writer_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(STORE_ENV, path)
        .env(FIRST_ID_ENV, first.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("failed to start the writer");
    let stdout = child.stdout.take().expect("writer stdout is piped");

    let mut acked = BTreeSet::new();
    let mut killed = false;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("failed to read the writer's output");
        let Some(id) = line.strip_prefix("acked ") else {
            continue;
        };
        acked.insert(id.parse::<u64>().expect("acknowledged id is a number"));
        if !killed && acked.len() >= kill_after {
            // Child::kill sends SIGKILL on Unix.
            child.kill().expect("failed to kill the writer");
            killed = true;
        }
    }

    let status = child.wait().expect("failed to wait for the writer");
    assert_eq!(status.signal(), Some(9), "writer ended with {status}");
    assert!(
        (acked.len() as u64) < BURST,
        "the writer finished all {BURST} writes before the kill"
    );
    acked
}

#[test]
fn sigkill_loses_no_acknowledged_write() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("rules.redb");
    let mut acked = BTreeSet::new();

    for (round, kill_after) in [50, 400, 900].into_iter().enumerate() {
        let first = 1 + round as u64 * BURST;
        acked.extend(write_until_killed(&path, first, kill_after));

        let store = RuleStore::open(&path)
            .unwrap_or_else(|err| panic!("store fails to open after kill {round}: {err:?}"));
        let rules = store
            .load_all()
            .unwrap_or_else(|err| panic!("rules fail to load after kill {round}: {err:?}"));
        let stored: BTreeSet<u64> = rules.iter().map(|rule| rule.id.0).collect();
        let missing: Vec<&u64> = acked.difference(&stored).collect();
        assert!(missing.is_empty(), "acknowledged rules lost: {missing:?}");
        // At most the write in flight at the kill is stored without an acknowledgement.
        let unacknowledged = stored.len() - acked.len();
        assert!(
            unacknowledged <= 1,
            "{unacknowledged} rules stored unacknowledged"
        );
        for rule in &rules {
            assert_eq!(*rule, burst_rule(rule.id.0), "rule {} changed", rule.id);
        }
        acked = stored;
    }
}
