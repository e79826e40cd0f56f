use redb::ReadableTableMetadata;
use tempfile::TempDir;

use super::*;
use crate::model::{
    Action, Destination, ProtocolMatch, lifetime::Lifetime, port::PortMatch, subject::Subject,
};

fn forever_rule(id: u64) -> Rule {
    let mut rule = Rule::new(
        RuleId(id),
        Subject::executable("/usr/bin/curl"),
        Destination {
            address: "2001:db8::/32".parse().unwrap(),
            port: PortMatch::Port(443),
            protocol: ProtocolMatch::Tcp,
        },
        Action::Allow,
        Lifetime::Forever,
    );
    rule.note = format!("rule {id}, with a note in UTF-8: grüße");
    rule.created_unix_ms = 1_700_000_000_000 + id;
    rule.updated_unix_ms = rule.created_unix_ms;
    rule
}

fn store_path(dir: &TempDir) -> PathBuf {
    dir.path().join("rules.redb")
}

/// Writes `value` under `key` into a table of the raw database, bypassing the store's checks.
fn write_raw<K, V>(
    path: &Path,
    table: TableDefinition<K, V>,
    key: K::SelfType<'_>,
    value: V::SelfType<'_>,
) where
    K: redb::Key + 'static,
    V: redb::Value + 'static,
{
    let database = Database::open(path).expect("open raw database");
    let transaction = database.begin_write().expect("begin raw write");
    {
        let mut table = transaction.open_table(table).expect("open raw table");
        table.insert(key, value).expect("insert raw row");
    }
    transaction.commit().expect("commit raw write");
}

#[test]
fn insert_then_load_all() {
    let dir = TempDir::new().unwrap();
    let store = RuleStore::open(&store_path(&dir)).unwrap();
    let second = forever_rule(2);
    let mut first = forever_rule(1);
    first.subject = Subject::any();
    first.destination = Destination::any();
    first.action = Action::Deny;
    first.enabled = false;

    store.insert(&second).unwrap();
    store.insert(&first).unwrap();

    assert_eq!(store.load_all().unwrap(), [first, second]);
}

#[test]
fn new_store_is_empty() {
    let dir = TempDir::new().unwrap();
    let store = RuleStore::open(&store_path(&dir)).unwrap();

    assert_eq!(store.load_all().unwrap(), []);
    assert_eq!(store.path(), store_path(&dir));
}

#[test]
fn open_creates_parent_directories() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("var/lib/tollgate/rules.redb");

    RuleStore::open(&path).unwrap();

    assert!(path.is_file());
}

#[test]
fn rules_survive_reopen() {
    let dir = TempDir::new().unwrap();
    let path = store_path(&dir);
    let store = RuleStore::open(&path).unwrap();
    store.insert(&forever_rule(1)).unwrap();
    store.insert(&forever_rule(2)).unwrap();
    drop(store);

    let reopened = RuleStore::open(&path).unwrap();

    assert_eq!(
        reopened.load_all().unwrap(),
        [forever_rule(1), forever_rule(2)]
    );
}

#[test]
fn insert_replaces_same_id() {
    let dir = TempDir::new().unwrap();
    let store = RuleStore::open(&store_path(&dir)).unwrap();
    let mut changed = forever_rule(1);
    changed.action = Action::Deny;

    store.insert(&forever_rule(1)).unwrap();
    store.insert(&changed).unwrap();

    assert_eq!(store.load_all().unwrap(), [changed]);
}

#[test]
fn insert_rejects_memory_only_rules() {
    let dir = TempDir::new().unwrap();
    let store = RuleStore::open(&store_path(&dir)).unwrap();
    let process = crate::model::lifetime::ProcessStart {
        pid: 1,
        start_time: 1,
    };

    for lifetime in [
        Lifetime::Once,
        Lifetime::UntilRestart,
        Lifetime::UntilExit(process),
    ] {
        let mut rule = forever_rule(1);
        rule.lifetime = lifetime;

        let error = store.insert(&rule).unwrap_err();

        assert!(
            matches!(error, StoreError::NotStored { id: RuleId(1), lifetime: found } if found == lifetime),
            "unexpected error: {error:?}"
        );
    }
    assert_eq!(store.load_all().unwrap(), []);
}

#[test]
fn remove_reports_whether_stored() {
    let dir = TempDir::new().unwrap();
    let path = store_path(&dir);
    let store = RuleStore::open(&path).unwrap();
    store.insert(&forever_rule(1)).unwrap();
    store.insert(&forever_rule(2)).unwrap();

    assert!(store.remove(RuleId(1)).unwrap());
    assert!(!store.remove(RuleId(1)).unwrap());
    assert!(!store.remove(RuleId(3)).unwrap());
    assert_eq!(store.load_all().unwrap(), [forever_rule(2)]);

    drop(store);
    let reopened = RuleStore::open(&path).unwrap();
    assert_eq!(reopened.load_all().unwrap(), [forever_rule(2)]);
}

#[test]
fn newer_schema_is_rejected() {
    let dir = TempDir::new().unwrap();
    let path = store_path(&dir);
    drop(RuleStore::open(&path).unwrap());
    write_raw(&path, META_TABLE, SCHEMA_VERSION_KEY, SCHEMA_VERSION + 1);

    let error = RuleStore::open(&path).unwrap_err();

    assert!(
        matches!(
            error,
            StoreError::NewerSchema {
                found: 3,
                supported: 2,
                ..
            }
        ),
        "unexpected error: {error:?}"
    );
    assert!(
        error.to_string().contains(&path.display().to_string()),
        "{error}"
    );
}

#[test]
fn newer_schema_is_kept() {
    let dir = TempDir::new().unwrap();
    let path = store_path(&dir);
    let store = RuleStore::open(&path).unwrap();
    store.insert(&forever_rule(1)).unwrap();
    drop(store);
    write_raw(&path, META_TABLE, SCHEMA_VERSION_KEY, 7);

    RuleStore::open(&path).unwrap_err();

    let database = Database::open(&path).unwrap();
    let transaction = database.begin_read().unwrap();
    let meta = transaction.open_table(META_TABLE).unwrap();
    let version = meta
        .get(SCHEMA_VERSION_KEY)
        .unwrap()
        .map(|value| value.value());
    assert_eq!(version, Some(7));
    let rules = transaction.open_table(RULES_TABLE).unwrap();
    assert_eq!(rules.len().unwrap(), 1);
}

#[test]
fn schema_version_zero_is_unsupported() {
    let dir = TempDir::new().unwrap();
    let path = store_path(&dir);
    drop(RuleStore::open(&path).unwrap());
    write_raw(&path, META_TABLE, SCHEMA_VERSION_KEY, 0);

    let error = RuleStore::open(&path).unwrap_err();

    assert!(
        matches!(error, StoreError::UnsupportedSchema { found: 0, .. }),
        "unexpected error: {error:?}"
    );
}

#[test]
fn foreign_database_is_rejected() {
    let dir = TempDir::new().unwrap();
    let path = store_path(&dir);
    const OTHER: TableDefinition<u64, u64> = TableDefinition::new("other");
    drop(Database::create(&path).unwrap());
    write_raw(&path, OTHER, 1, 2);

    let error = RuleStore::open(&path).unwrap_err();

    assert!(
        matches!(error, StoreError::NotRuleStore { .. }),
        "unexpected error: {error:?}"
    );
}

#[test]
fn corrupt_file_is_rejected_unchanged() {
    let dir = TempDir::new().unwrap();
    let path = store_path(&dir);
    let garbage: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + 3) as u8).collect();
    fs::write(&path, &garbage).unwrap();

    let error = RuleStore::open(&path).unwrap_err();

    assert!(
        matches!(error, StoreError::Open { .. }),
        "unexpected error: {error:?}"
    );
    assert!(
        error.to_string().contains(&path.display().to_string()),
        "{error}"
    );
    assert_eq!(fs::read(&path).unwrap(), garbage);
}

#[test]
fn damaged_page_is_rejected_unchanged() {
    let dir = TempDir::new().unwrap();
    let path = store_path(&dir);
    let store = RuleStore::open(&path).unwrap();
    let mut rule = forever_rule(1);
    rule.note = "note to damage".to_owned();
    store.insert(&rule).unwrap();
    drop(store);

    let mut damaged = fs::read(&path).unwrap();
    let note_offset = damaged
        .windows(rule.note.len())
        .position(|window| window == rule.note.as_bytes())
        .expect("the note is stored as plain JSON text");
    damaged[note_offset] ^= 0x20;
    fs::write(&path, &damaged).unwrap();

    let error = RuleStore::open(&path).unwrap_err();

    assert!(
        matches!(error, StoreError::Open { .. }),
        "unexpected error: {error:?}"
    );
    assert_eq!(fs::read(&path).unwrap(), damaged);
}

#[test]
fn truncated_file_is_rejected_unchanged() {
    let dir = TempDir::new().unwrap();
    let path = store_path(&dir);
    let store = RuleStore::open(&path).unwrap();
    store.insert(&forever_rule(1)).unwrap();
    drop(store);

    let mut truncated = fs::read(&path).unwrap();
    truncated.truncate(truncated.len() / 2);
    fs::write(&path, &truncated).unwrap();

    let error = RuleStore::open(&path).unwrap_err();

    assert!(
        matches!(error, StoreError::Open { .. }),
        "unexpected error: {error:?}"
    );
    assert_eq!(fs::read(&path).unwrap(), truncated);
}

#[test]
fn empty_file_is_rejected_unchanged() {
    let dir = TempDir::new().unwrap();
    let path = store_path(&dir);
    fs::write(&path, b"").unwrap();

    let error = RuleStore::open(&path).unwrap_err();

    assert!(
        matches!(error, StoreError::Open { .. }),
        "unexpected error: {error:?}"
    );
    assert_eq!(fs::read(&path).unwrap(), b"");
}

#[test]
fn undecodable_row_names_rule_id() {
    let dir = TempDir::new().unwrap();
    let path = store_path(&dir);
    let store = RuleStore::open(&path).unwrap();
    store.insert(&forever_rule(1)).unwrap();
    drop(store);
    write_raw(&path, RULES_TABLE, 7, b"{\"id\":7,".as_slice());

    let store = RuleStore::open(&path).unwrap();
    let error = store.load_all().unwrap_err();

    assert!(
        matches!(error, StoreError::DecodeRule { id: RuleId(7), .. }),
        "unexpected error: {error:?}"
    );
    assert!(error.to_string().contains("rule 7"), "{error}");
}

#[test]
fn row_with_other_id_is_rejected() {
    let dir = TempDir::new().unwrap();
    let path = store_path(&dir);
    drop(RuleStore::open(&path).unwrap());
    let json = serde_json::to_vec(&forever_rule(3)).unwrap();
    let json = json.as_slice();
    write_raw(&path, RULES_TABLE, 4, json);

    let error = RuleStore::open(&path).unwrap().load_all().unwrap_err();

    assert!(
        matches!(
            error,
            StoreError::IdMismatch {
                key: RuleId(4),
                found: RuleId(3),
                ..
            }
        ),
        "unexpected error: {error:?}"
    );
}

#[test]
fn second_open_of_same_file_fails() {
    let dir = TempDir::new().unwrap();
    let path = store_path(&dir);
    let _store = RuleStore::open(&path).unwrap();

    let error = RuleStore::open(&path).unwrap_err();

    assert!(
        matches!(error, StoreError::Open { .. }),
        "unexpected error: {error:?}"
    );
}

#[test]
fn store_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<RuleStore>();
}

/// Writes a version 1 file: the meta and rules tables only, with rows in the version 1 shape.
fn write_v1_file(path: &Path, rows: &[(u64, &str)]) {
    let database = Database::create(path).expect("create raw database");
    let transaction = database.begin_write().expect("begin raw write");
    {
        let mut meta = transaction.open_table(META_TABLE).unwrap();
        meta.insert(SCHEMA_VERSION_KEY, 1).unwrap();
        let mut rules = transaction.open_table(RULES_TABLE).unwrap();
        for (id, json) in rows {
            rules.insert(*id, json.as_bytes()).unwrap();
        }
    }
    transaction.commit().expect("commit raw write");
}

const V1_CURL: &str = r#"{"id":1,"subject":{"executable":"/usr/bin/curl"},"destination":{"address":{"cidr":{"addr":"203.0.113.0","prefix":24}},"port":{"port":443},"protocol":"tcp"},"action":"allow","lifetime":"forever","enabled":true,"note":"web","created_unix":1700000000}"#;
const V1_ANY: &str = r#"{"id":2,"subject":"any","destination":{"address":"any","port":"any","protocol":"any"},"action":"deny","lifetime":"forever","enabled":false,"note":"","created_unix":5}"#;

fn read_schema_version(path: &Path) -> Option<u32> {
    let database = Database::open(path).unwrap();
    let transaction = database.begin_read().unwrap();
    let meta = transaction.open_table(META_TABLE).unwrap();
    meta.get(SCHEMA_VERSION_KEY)
        .unwrap()
        .map(|value| value.value())
}

#[test]
fn version_one_file_is_upgraded() {
    let dir = TempDir::new().unwrap();
    let path = store_path(&dir);
    write_v1_file(&path, &[(1, V1_CURL), (2, V1_ANY)]);

    let store = RuleStore::open(&path).unwrap();
    let rules = store.load_all().unwrap();

    assert_eq!(rules.len(), 2);
    assert_eq!(rules[0].subject, Subject::executable("/usr/bin/curl"));
    assert_eq!(
        rules[0].destination.address,
        "203.0.113.0/24".parse().unwrap()
    );
    assert_eq!(rules[0].destination.port, PortMatch::Port(443));
    assert_eq!(rules[0].note, "web");
    assert_eq!(rules[0].created_unix_ms, 1_700_000_000_000);
    assert!(rules[1].subject.is_any());
    assert!(!rules[1].enabled);
    assert_eq!(rules[1].action, Action::Deny);
    drop(store);
    assert_eq!(read_schema_version(&path), Some(SCHEMA_VERSION));

    // The upgraded file opens again as it is.
    let reopened = RuleStore::open(&path).unwrap();
    assert_eq!(reopened.load_all().unwrap(), rules);
}

#[test]
fn failed_upgrade_keeps_version_one() {
    let dir = TempDir::new().unwrap();
    let path = store_path(&dir);
    write_v1_file(&path, &[(1, V1_CURL), (2, "{\"id\":2,")]);

    let error = RuleStore::open(&path).unwrap_err();

    assert!(
        matches!(&error, StoreError::Migrate { from: 1, source, .. }
            if matches!(**source, StoreError::DecodeRule { id: RuleId(2), .. })),
        "unexpected error: {error:?}"
    );
    assert_eq!(read_schema_version(&path), Some(1));
    let database = Database::open(&path).unwrap();
    let transaction = database.begin_read().unwrap();
    let rules = transaction.open_table(RULES_TABLE).unwrap();
    let first = rules.get(1).unwrap().unwrap();
    assert_eq!(first.value(), V1_CURL.as_bytes());
}

#[test]
fn hit_counts_are_batched_and_loaded() {
    let dir = TempDir::new().unwrap();
    let path = store_path(&dir);
    let store = RuleStore::open(&path).unwrap();
    store.insert(&forever_rule(1)).unwrap();
    store.insert(&forever_rule(2)).unwrap();

    store
        .record_hits(&[
            HitCount {
                id: RuleId(1),
                hits: 12,
                last_hit_unix_ms: Some(1_700_000_000_999),
            },
            HitCount {
                id: RuleId(9),
                hits: 1,
                last_hit_unix_ms: Some(1),
            },
        ])
        .unwrap();
    drop(store);

    let rules = RuleStore::open(&path).unwrap().load_all().unwrap();
    assert_eq!(rules[0].hits, 12);
    assert_eq!(rules[0].last_hit_unix_ms, Some(1_700_000_000_999));
    assert_eq!(rules[1].hits, 0);
    assert_eq!(rules[1].last_hit_unix_ms, None);
    assert_eq!(rules.len(), 2, "a count for an unstored rule adds no rule");
}

#[test]
fn insert_all_is_all_or_nothing() {
    let dir = TempDir::new().unwrap();
    let store = RuleStore::open(&store_path(&dir)).unwrap();
    let mut in_memory = forever_rule(2);
    in_memory.lifetime = Lifetime::UntilRestart;

    let error = store.insert_all(&[forever_rule(1), in_memory]).unwrap_err();

    assert!(
        matches!(error, StoreError::NotStored { id: RuleId(2), .. }),
        "{error:?}"
    );
    assert_eq!(store.load_all().unwrap(), []);

    store
        .insert_all(&[forever_rule(1), forever_rule(3)])
        .unwrap();
    assert_eq!(store.load_all().unwrap().len(), 2);
    assert_eq!(
        store
            .remove_all(&[RuleId(1), RuleId(3), RuleId(4)])
            .unwrap(),
        2
    );
    assert_eq!(store.load_all().unwrap(), []);
}

#[test]
fn temporary_stored_lifetimes_round_trip() {
    let dir = TempDir::new().unwrap();
    let store = RuleStore::open(&store_path(&dir)).unwrap();
    let mut timed = forever_rule(1);
    timed.lifetime = Lifetime::For {
        secs: 2,
        expires_boottime_ms: 12_000,
    };
    let mut dated = forever_rule(2);
    dated.lifetime = Lifetime::Until {
        unix_ms: 1_800_000_000_000,
    };

    store.insert_all(&[timed.clone(), dated.clone()]).unwrap();

    assert_eq!(store.load_all().unwrap(), [timed, dated]);
}

#[test]
fn settings_are_stored() {
    let dir = TempDir::new().unwrap();
    let path = store_path(&dir);
    let store = RuleStore::open(&path).unwrap();

    assert_eq!(store.setting("boot_id").unwrap(), None);
    store.set_setting("boot_id", "abc").unwrap();
    drop(store);

    let reopened = RuleStore::open(&path).unwrap();
    assert_eq!(reopened.setting("boot_id").unwrap().as_deref(), Some("abc"));
}
