//! The rule store: rules with the `forever` lifetime, kept in a redb database file.
//!
//! The file has two tables. `rules` maps a rule id (`u64`) to the rule encoded as JSON, and
//! `meta` maps `schema_version` to the version of that layout ([`SCHEMA_VERSION`]).
//!
//! The store never deletes, truncates or reinitializes an existing file. A file that is empty,
//! is not a redb database or fails redb's integrity check fails to open with an error naming
//! its path. Such a file is left byte-identical, except that redb rewrites the header of a file
//! that was not shut down cleanly before it checks the pages. A file with another schema version
//! also fails to open and keeps its rules, but the integrity check has committed to it by then.

use std::{
    fs::{self, OpenOptions},
    io,
    path::{Path, PathBuf},
};

use redb::{
    Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, TableDefinition,
    TableHandle, WriteTransaction, backends::FileBackend,
};

use crate::model::{Lifetime, Rule, RuleId};

/// Version of the table layout and rule encoding that this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

/// A rule store open on one database file.
///
/// redb locks the file, so a second `RuleStore` on the same file, in this or another process,
/// fails to open until this one is dropped.
#[derive(Debug)]
pub struct RuleStore {
    database: Database,
    path: PathBuf,
}

impl RuleStore {
    /// Opens the rule store at `path`, creating the file and its parent directories if the file
    /// does not exist.
    ///
    /// Every open checks the integrity of the whole file, which takes time linear in its size.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let database = open_database(path)?;
        let store = Self {
            database,
            path: path.to_owned(),
        };
        store.check_schema()?;
        Ok(store)
    }

    /// Returns the path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stores `rule` under its id, replacing any rule stored with that id. The change is on disk
    /// when this returns.
    ///
    /// Rejects a rule whose lifetime is not [`Lifetime::Forever`], because other rules must not
    /// outlive the daemon.
    pub fn insert(&self, rule: &Rule) -> Result<(), StoreError> {
        if rule.lifetime != Lifetime::Forever {
            return Err(StoreError::NotForever {
                id: rule.id,
                lifetime: rule.lifetime,
            });
        }
        let json = serde_json::to_vec(rule).map_err(|source| StoreError::EncodeRule {
            id: rule.id,
            source,
        })?;

        self.write_rule(rule.id, &json)
            .map_err(|source| StoreError::InsertRule {
                path: self.path.clone(),
                id: rule.id,
                source,
            })
    }

    /// Removes the rule with this id. Returns whether it was stored. The change is on disk when
    /// this returns.
    pub fn remove(&self, id: RuleId) -> Result<bool, StoreError> {
        self.delete_rule(id)
            .map_err(|source| StoreError::RemoveRule {
                path: self.path.clone(),
                id,
                source,
            })
    }

    /// Reads every stored rule, in id order.
    ///
    /// Fails on the first row that does not decode to a rule with the id it is stored under.
    pub fn load_all(&self) -> Result<Vec<Rule>, StoreError> {
        let rows = self.read_rows().map_err(|source| StoreError::LoadRules {
            path: self.path.clone(),
            source,
        })?;
        rows.into_iter()
            .map(|(key, json)| self.decode_rule(key, &json))
            .collect()
    }

    /// Checks the schema version, and writes it with empty tables into a database that has no
    /// tables yet.
    fn check_schema(&self) -> Result<(), StoreError> {
        let stored = self
            .read_schema_version()
            .map_err(|source| StoreError::ReadSchema {
                path: self.path.clone(),
                source,
            })?;

        match stored {
            StoredSchema::Version(SCHEMA_VERSION) => Ok(()),
            StoredSchema::Version(found) if found > SCHEMA_VERSION => {
                Err(StoreError::NewerSchema {
                    path: self.path.clone(),
                    found,
                    supported: SCHEMA_VERSION,
                })
            }
            StoredSchema::Version(found) => Err(StoreError::UnsupportedSchema {
                path: self.path.clone(),
                found,
                supported: SCHEMA_VERSION,
            }),
            StoredSchema::Missing => Err(StoreError::NotRuleStore {
                path: self.path.clone(),
            }),
            StoredSchema::EmptyDatabase => {
                self.initialize_schema()
                    .map_err(|source| StoreError::WriteSchema {
                        path: self.path.clone(),
                        source,
                    })
            }
        }
    }

    fn read_schema_version(&self) -> Result<StoredSchema, redb::Error> {
        let transaction = self.database.begin_read()?;
        let table_names: Vec<String> = transaction
            .list_tables()?
            .map(|table| table.name().to_owned())
            .collect();
        if table_names.is_empty() {
            return Ok(StoredSchema::EmptyDatabase);
        }
        if !table_names.iter().any(|name| name == META_TABLE.name()) {
            return Ok(StoredSchema::Missing);
        }

        let meta = transaction.open_table(META_TABLE)?;
        let version = meta.get(SCHEMA_VERSION_KEY)?.map(|value| value.value());
        Ok(version.map_or(StoredSchema::Missing, StoredSchema::Version))
    }

    fn initialize_schema(&self) -> Result<(), redb::Error> {
        let transaction = self.begin_durable_write()?;
        {
            let mut meta = transaction.open_table(META_TABLE)?;
            meta.insert(SCHEMA_VERSION_KEY, SCHEMA_VERSION)?;
            // Opening the table in a write transaction creates it, so that reads find it.
            transaction.open_table(RULES_TABLE)?;
        }
        transaction.commit()?;
        Ok(())
    }

    fn write_rule(&self, id: RuleId, json: &[u8]) -> Result<(), redb::Error> {
        let transaction = self.begin_durable_write()?;
        {
            let mut rules = transaction.open_table(RULES_TABLE)?;
            rules.insert(id.0, json)?;
        }
        transaction.commit()?;
        Ok(())
    }

    fn delete_rule(&self, id: RuleId) -> Result<bool, redb::Error> {
        let transaction = self.begin_durable_write()?;
        let removed = {
            let mut rules = transaction.open_table(RULES_TABLE)?;
            rules.remove(id.0)?.is_some()
        };
        transaction.commit()?;
        Ok(removed)
    }

    /// Returns every row of the rules table as an id and the undecoded JSON.
    fn read_rows(&self) -> Result<Vec<(u64, Vec<u8>)>, redb::Error> {
        let transaction = self.database.begin_read()?;
        let rules = transaction.open_table(RULES_TABLE)?;
        let mut rows = Vec::new();
        for row in rules.iter()? {
            let (key, json) = row?;
            rows.push((key.value(), json.value().to_vec()));
        }
        Ok(rows)
    }

    fn decode_rule(&self, key: u64, json: &[u8]) -> Result<Rule, StoreError> {
        let rule: Rule = serde_json::from_slice(json).map_err(|source| StoreError::DecodeRule {
            path: self.path.clone(),
            id: RuleId(key),
            source,
        })?;
        if rule.id.0 != key {
            return Err(StoreError::IdMismatch {
                path: self.path.clone(),
                key: RuleId(key),
                found: rule.id,
            });
        }
        Ok(rule)
    }

    /// Begins a write transaction whose commit is on disk when `commit` returns.
    ///
    /// Two-phase commit makes a damaged latest commit an integrity error on the next open. With
    /// the one-phase commit that redb 5.0 uses by default, the open would silently roll back to
    /// the commit before.
    fn begin_durable_write(&self) -> Result<WriteTransaction, redb::Error> {
        let mut transaction = self.database.begin_write()?;
        transaction.set_durability(Durability::Immediate)?;
        transaction.set_two_phase_commit(true);
        Ok(transaction)
    }
}

/// An error from the rule store. The message of every error that involves the file names its
/// path.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The parent directory of the database file could not be created.
    #[error("failed to create directory {} for rule store", .path.display())]
    CreateDir {
        /// Directory that could not be created.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// A new database file could not be created.
    #[error("failed to create rule store {}", .path.display())]
    CreateFile {
        /// Database file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// redb could not open the database file. This covers a file that is empty, is not a redb
    /// database, fails the integrity check, or is open in another `RuleStore`.
    #[error("failed to open rule store {}", .path.display())]
    Open {
        /// Database file.
        path: PathBuf,
        /// The redb error.
        #[source]
        source: DatabaseError,
    },

    /// The schema version could not be read.
    #[error("failed to read schema version of rule store {}", .path.display())]
    ReadSchema {
        /// Database file.
        path: PathBuf,
        /// The redb error.
        #[source]
        source: redb::Error,
    },

    /// The schema version and empty tables could not be written into a new database.
    #[error("failed to write schema version to rule store {}", .path.display())]
    WriteSchema {
        /// Database file.
        path: PathBuf,
        /// The redb error.
        #[source]
        source: redb::Error,
    },

    /// The file was written by a newer build with a schema version this build cannot read.
    #[error(
        "rule store {} has schema version {found}, but this build reads only version \
         {supported}, so upgrade Tollgate to open it",
        .path.display()
    )]
    NewerSchema {
        /// Database file.
        path: PathBuf,
        /// Schema version stored in the file.
        found: u32,
        /// Schema version of this build.
        supported: u32,
    },

    /// The file has a schema version older than any this build reads. No such version was ever
    /// written by a release, so the file is damaged or was written by another program.
    #[error(
        "rule store {} has unsupported schema version {found}, expected version {supported}",
        .path.display()
    )]
    UnsupportedSchema {
        /// Database file.
        path: PathBuf,
        /// Schema version stored in the file.
        found: u32,
        /// Schema version of this build.
        supported: u32,
    },

    /// The file is a redb database with tables but without a schema version, so another
    /// program wrote it.
    #[error(
        "{} is a redb database without a schema version, so it is not a Tollgate rule store",
        .path.display()
    )]
    NotRuleStore {
        /// Database file.
        path: PathBuf,
    },

    /// A rule passed to [`RuleStore::insert`] has a lifetime other than `forever`.
    #[error("rule {id} has lifetime {lifetime}, but only forever rules can be stored")]
    NotForever {
        /// Id of the rejected rule.
        id: RuleId,
        /// Lifetime of the rejected rule.
        lifetime: Lifetime,
    },

    /// A rule could not be encoded as JSON.
    #[error("failed to encode rule {id} as JSON")]
    EncodeRule {
        /// Id of the rule.
        id: RuleId,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },

    /// A rule could not be written.
    #[error("failed to insert rule {id} into rule store {}", .path.display())]
    InsertRule {
        /// Database file.
        path: PathBuf,
        /// Id of the rule.
        id: RuleId,
        /// The redb error.
        #[source]
        source: redb::Error,
    },

    /// A rule could not be removed.
    #[error("failed to remove rule {id} from rule store {}", .path.display())]
    RemoveRule {
        /// Database file.
        path: PathBuf,
        /// Id of the rule.
        id: RuleId,
        /// The redb error.
        #[source]
        source: redb::Error,
    },

    /// The rules could not be read.
    #[error("failed to read rules from rule store {}", .path.display())]
    LoadRules {
        /// Database file.
        path: PathBuf,
        /// The redb error.
        #[source]
        source: redb::Error,
    },

    /// A stored row is not a valid rule in JSON.
    #[error("failed to decode rule {id} in rule store {}", .path.display())]
    DecodeRule {
        /// Database file.
        path: PathBuf,
        /// Id the row is stored under.
        id: RuleId,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },

    /// A stored rule contains an id other than the one it is stored under.
    #[error("rule stored under id {key} in rule store {} contains id {found}", .path.display())]
    IdMismatch {
        /// Database file.
        path: PathBuf,
        /// Id the row is stored under.
        key: RuleId,
        /// Id inside the stored rule.
        found: RuleId,
    },
}

/// The schema version found in a database file.
enum StoredSchema {
    /// The `meta` table contains this version.
    Version(u32),
    /// The database has tables but no schema version.
    Missing,
    /// The database has no tables, so it is new.
    EmptyDatabase,
}

/// Opens the database at `path`, or creates it if no file exists there.
///
/// An existing file is only ever opened with `Builder::open`, which does not initialize an empty
/// file as `Builder::create` does.
fn open_database(path: &Path) -> Result<Database, StoreError> {
    create_parent_dir(path)?;

    let mut builder = Database::builder();
    // Without the check, redb 5.0 trusts a file that was shut down cleanly and may panic on pages
    // damaged outside redb. The check reads the whole file and returns an error instead. On a
    // file that passes, it commits even when nothing needed repair.
    builder.set_check_integrity_on_open(true);

    let opened = match OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(new_file) => builder.create_with_backend(FileBackend::new(new_file)),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => builder.open(path),
        Err(source) => {
            return Err(StoreError::CreateFile {
                path: path.to_owned(),
                source,
            });
        }
    };
    // NOTE: a crash while a new file is initialized can leave it empty or without redb's magic
    // number. Later opens reject such a file until the user removes it.
    opened.map_err(|source| StoreError::Open {
        path: path.to_owned(),
        source,
    })
}

fn create_parent_dir(path: &Path) -> Result<(), StoreError> {
    let Some(parent_dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) else {
        return Ok(());
    };
    fs::create_dir_all(parent_dir).map_err(|source| StoreError::CreateDir {
        path: parent_dir.to_owned(),
        source,
    })
}

/// Rule id to the rule encoded as JSON.
const RULES_TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("rules");

/// Store metadata by name. Contains only [`SCHEMA_VERSION_KEY`].
const META_TABLE: TableDefinition<&str, u32> = TableDefinition::new("meta");

const SCHEMA_VERSION_KEY: &str = "schema_version";

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use redb::ReadableTableMetadata;
    use tempfile::TempDir;

    use super::*;
    use crate::model::{
        Action, AddressMatch, Cidr, Destination, PortMatch, ProtocolMatch, Subject,
    };

    fn forever_rule(id: u64) -> Rule {
        Rule {
            id: RuleId(id),
            subject: Subject::Executable(PathBuf::from("/usr/bin/curl")),
            destination: Destination {
                address: AddressMatch::Cidr(Cidr::new("2001:db8::".parse().unwrap(), 32).unwrap()),
                port: PortMatch::Port(443),
                protocol: ProtocolMatch::Tcp,
            },
            action: Action::Allow,
            lifetime: Lifetime::Forever,
            enabled: true,
            note: format!("rule {id}, with a note in UTF-8: grüße"),
            created_unix: 1_700_000_000 + id,
        }
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
        first.subject = Subject::Any;
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
    fn insert_rejects_non_forever_rules() {
        let dir = TempDir::new().unwrap();
        let store = RuleStore::open(&store_path(&dir)).unwrap();

        for lifetime in [Lifetime::Once, Lifetime::UntilRestart] {
            let mut rule = forever_rule(1);
            rule.lifetime = lifetime;

            let error = store.insert(&rule).unwrap_err();

            assert!(
                matches!(error, StoreError::NotForever { id: RuleId(1), lifetime: found } if found == lifetime),
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
                    found: 2,
                    supported: 1,
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
        write_raw(&path, RULES_TABLE, 4, json.as_slice());

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
}
