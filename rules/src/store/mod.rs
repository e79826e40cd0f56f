//! The rule store: the rules that outlive the daemon, kept in a redb database file.
//!
//! The file has four tables:
//!
//! - `meta` maps `schema_version` to the version of the layout ([`SCHEMA_VERSION`]).
//! - `rules` maps a rule id (`u64`) to the rule encoded as JSON.
//! - `hits` maps a rule id to its hit count and the time of its last hit (0 for none). It is
//!   written in batches ([`RuleStore::record_hits`]), so that counting a connection does not
//!   cost a disk write.
//! - `settings` maps a name to a text value, such as the boot id of the machine that wrote
//!   the boot-clock deadlines of the rules.
//!
//! Every write is one transaction that is on disk when the call returns, so a crash, even
//! SIGKILL, loses no acknowledged write. The store never deletes, truncates or reinitializes an
//! existing file. A file that is empty, is not a redb database or fails redb's integrity check
//! fails to open with an error naming its path. Such a file is left byte-identical, except
//! that redb rewrites the header of a file that was not shut down cleanly before it checks the
//! pages. A file from a newer schema version also fails to open and keeps its rules. A file of
//! version 1 is upgraded in one transaction, so a failed upgrade leaves it at version 1.

mod error;
mod migrate;

use std::{
    fs::{self, OpenOptions},
    io,
    path::{Path, PathBuf},
};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, TableHandle,
    WriteTransaction, backends::FileBackend,
};

pub use error::StoreError;
use migrate::RuleV1;

use crate::model::{Rule, RuleId};

/// Version of the table layout and rule encoding that this build reads and writes.
pub const SCHEMA_VERSION: u32 = 2;

/// A rule store open on one database file.
///
/// redb locks the file, so a second `RuleStore` on the same file, in this or another process,
/// fails to open until this one is dropped.
#[derive(Debug)]
pub struct RuleStore {
    database: Database,
    path: PathBuf,
}

/// The hit count of one rule, as [`RuleStore::record_hits`] writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HitCount {
    /// The rule.
    pub id: RuleId,
    /// Connections the rule decided, in all.
    pub hits: u64,
    /// Time of the last of them, in milliseconds since the Unix epoch.
    pub last_hit_unix_ms: Option<u64>,
}

impl RuleStore {
    /// Opens the rule store at `path`, creating the file and its parent directories if the file
    /// does not exist, and upgrading a file of an older schema version.
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

    /// Stores `rule` under its id, replacing any rule stored with that id, together with its
    /// hit count. The change is on disk when this returns.
    ///
    /// Rejects a rule whose lifetime is not stored ([`crate::Lifetime::is_stored`]).
    pub fn insert(&self, rule: &Rule) -> Result<(), StoreError> {
        self.insert_all(std::slice::from_ref(rule))
    }

    /// Stores every rule of `rules` in one transaction: all or none are on disk when this
    /// returns.
    pub fn insert_all(&self, rules: &[Rule]) -> Result<(), StoreError> {
        let rows = rules
            .iter()
            .map(encode_rule)
            .collect::<Result<Vec<_>, _>>()?;
        self.write_rows(&rows)
            .map_err(|source| StoreError::WriteRules {
                path: self.path.clone(),
                source,
            })
    }

    /// Removes the rule with this id. Returns whether it was stored. The change is on disk when
    /// this returns.
    pub fn remove(&self, id: RuleId) -> Result<bool, StoreError> {
        Ok(self.remove_all(&[id])? == 1)
    }

    /// Removes the rules with these ids in one transaction and returns how many were stored.
    pub fn remove_all(&self, ids: &[RuleId]) -> Result<usize, StoreError> {
        self.delete_rows(ids)
            .map_err(|source| StoreError::RemoveRules {
                path: self.path.clone(),
                source,
            })
    }

    /// Writes the hit counts of stored rules in one transaction, which costs one disk sync for
    /// the whole batch. Counts of rules that are not stored are skipped.
    pub fn record_hits(&self, counts: &[HitCount]) -> Result<(), StoreError> {
        self.write_hits(counts)
            .map_err(|source| StoreError::WriteHits {
                path: self.path.clone(),
                source,
            })
    }

    /// Reads every stored rule with its latest recorded hit count, in id order.
    ///
    /// Fails on the first row that does not decode to a rule with the id it is stored under.
    pub fn load_all(&self) -> Result<Vec<Rule>, StoreError> {
        let (rows, hits) = self.read_rows().map_err(|source| StoreError::LoadRules {
            path: self.path.clone(),
            source,
        })?;
        let mut rules = Vec::with_capacity(rows.len());
        for (key, json) in rows {
            let mut rule = self.decode_rule(key, &json)?;
            if let Some((count, last_hit)) = hits.get(&key) {
                rule.hits = *count;
                rule.last_hit_unix_ms = (*last_hit != 0).then_some(*last_hit);
            }
            rules.push(rule);
        }
        Ok(rules)
    }

    /// Returns the value of a setting, or `None` when it was never written.
    pub fn setting(&self, key: &'static str) -> Result<Option<String>, StoreError> {
        self.read_setting(key)
            .map_err(|source| self.setting_error(key, source))
    }

    /// Writes the value of a setting. The change is on disk when this returns.
    pub fn set_setting(&self, key: &'static str, value: &str) -> Result<(), StoreError> {
        self.write_setting(key, value)
            .map_err(|source| self.setting_error(key, source))
    }

    /// Checks the schema version: writes the current one with empty tables into a database
    /// that has no tables yet, and upgrades a version 1 file.
    fn check_schema(&self) -> Result<(), StoreError> {
        let stored = self
            .read_schema_version()
            .map_err(|source| StoreError::ReadSchema {
                path: self.path.clone(),
                source,
            })?;

        match stored {
            StoredSchema::Version(SCHEMA_VERSION) => Ok(()),
            StoredSchema::Version(1) => self.upgrade_from_v1(),
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
        create_tables(&transaction)?;
        transaction.commit()?;
        Ok(())
    }

    /// Rewrites every version 1 row in the current shape, creates the new tables and sets the
    /// version, all in one transaction.
    fn upgrade_from_v1(&self) -> Result<(), StoreError> {
        let wrap = |source| StoreError::Migrate {
            path: self.path.clone(),
            from: 1,
            source: Box::new(source),
        };
        let (rows, _) = self.read_rows().map_err(|source| {
            wrap(StoreError::LoadRules {
                path: self.path.clone(),
                source,
            })
        })?;
        let mut upgraded = Vec::with_capacity(rows.len());
        for (key, json) in rows {
            let rule = self.upgrade_row(key, &json).map_err(wrap)?;
            upgraded.push(encode_rule(&rule).map_err(wrap)?);
        }
        self.write_upgraded(&upgraded).map_err(|source| {
            wrap(StoreError::WriteSchema {
                path: self.path.clone(),
                source,
            })
        })
    }

    fn upgrade_row(&self, key: u64, json: &[u8]) -> Result<Rule, StoreError> {
        let old: RuleV1 =
            serde_json::from_slice(json).map_err(|source| StoreError::DecodeRule {
                path: self.path.clone(),
                id: RuleId(key),
                source,
            })?;
        let rule = old.upgrade().map_err(|reason| StoreError::UpgradeRule {
            path: self.path.clone(),
            id: RuleId(key),
            reason,
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

    fn write_upgraded(&self, rows: &[(u64, Vec<u8>)]) -> Result<(), redb::Error> {
        let transaction = self.begin_durable_write()?;
        create_tables(&transaction)?;
        {
            let mut rules = transaction.open_table(RULES_TABLE)?;
            for (id, json) in rows {
                rules.insert(*id, json.as_slice())?;
            }
        }
        transaction.commit()?;
        Ok(())
    }

    fn write_rows(&self, rows: &[(u64, Vec<u8>)]) -> Result<(), redb::Error> {
        let transaction = self.begin_durable_write()?;
        {
            let mut rules = transaction.open_table(RULES_TABLE)?;
            for (id, json) in rows {
                rules.insert(*id, json.as_slice())?;
            }
            // The rule's JSON carries its hit count now, so an older count must not win.
            let mut hits = transaction.open_table(HITS_TABLE)?;
            for (id, _) in rows {
                hits.remove(*id)?;
            }
        }
        transaction.commit()?;
        Ok(())
    }

    fn delete_rows(&self, ids: &[RuleId]) -> Result<usize, redb::Error> {
        let transaction = self.begin_durable_write()?;
        let mut removed = 0;
        {
            let mut rules = transaction.open_table(RULES_TABLE)?;
            let mut hits = transaction.open_table(HITS_TABLE)?;
            for id in ids {
                removed += usize::from(rules.remove(id.0)?.is_some());
                hits.remove(id.0)?;
            }
        }
        transaction.commit()?;
        Ok(removed)
    }

    fn write_hits(&self, counts: &[HitCount]) -> Result<(), redb::Error> {
        let transaction = self.begin_durable_write()?;
        {
            let rules = transaction.open_table(RULES_TABLE)?;
            let mut hits = transaction.open_table(HITS_TABLE)?;
            for count in counts {
                if rules.get(count.id.0)?.is_some() {
                    let last_hit = count.last_hit_unix_ms.unwrap_or(0);
                    hits.insert(count.id.0, (count.hits, last_hit))?;
                }
            }
        }
        transaction.commit()?;
        Ok(())
    }

    /// Returns every row of the rules table as an id and the undecoded JSON, and the hit
    /// counts by id.
    #[expect(clippy::type_complexity, reason = "two plain collections of rows")]
    fn read_rows(
        &self,
    ) -> Result<
        (
            Vec<(u64, Vec<u8>)>,
            std::collections::HashMap<u64, (u64, u64)>,
        ),
        redb::Error,
    > {
        let transaction = self.database.begin_read()?;
        let rules = transaction.open_table(RULES_TABLE)?;
        let mut rows = Vec::new();
        for row in rules.iter()? {
            let (key, json) = row?;
            rows.push((key.value(), json.value().to_vec()));
        }
        let mut counts = std::collections::HashMap::new();
        match transaction.open_table(HITS_TABLE) {
            Ok(hits) => {
                for row in hits.iter()? {
                    let (key, value) = row?;
                    counts.insert(key.value(), value.value());
                }
            }
            // A version 1 file has no hits table.
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(error) => return Err(error.into()),
        }
        Ok((rows, counts))
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

    fn read_setting(&self, key: &str) -> Result<Option<String>, redb::Error> {
        let transaction = self.database.begin_read()?;
        let settings = transaction.open_table(SETTINGS_TABLE)?;
        Ok(settings.get(key)?.map(|value| value.value().to_owned()))
    }

    fn write_setting(&self, key: &str, value: &str) -> Result<(), redb::Error> {
        let transaction = self.begin_durable_write()?;
        transaction.open_table(SETTINGS_TABLE)?.insert(key, value)?;
        transaction.commit()?;
        Ok(())
    }

    fn setting_error(&self, key: &'static str, source: redb::Error) -> StoreError {
        StoreError::Setting {
            path: self.path.clone(),
            key,
            source,
        }
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

/// The schema version found in a database file.
enum StoredSchema {
    /// The `meta` table contains this version.
    Version(u32),
    /// The database has tables but no schema version.
    Missing,
    /// The database has no tables, so it is new.
    EmptyDatabase,
}

/// Creates every table of the current schema and writes its version.
fn create_tables(transaction: &WriteTransaction) -> Result<(), redb::Error> {
    let mut meta = transaction.open_table(META_TABLE)?;
    meta.insert(SCHEMA_VERSION_KEY, SCHEMA_VERSION)?;
    // Opening a table in a write transaction creates it, so that reads find it.
    transaction.open_table(RULES_TABLE)?;
    transaction.open_table(HITS_TABLE)?;
    transaction.open_table(SETTINGS_TABLE)?;
    Ok(())
}

/// Encodes a rule as a row, rejecting lifetimes that are not stored.
fn encode_rule(rule: &Rule) -> Result<(u64, Vec<u8>), StoreError> {
    if !rule.lifetime.is_stored() {
        return Err(StoreError::NotStored {
            id: rule.id,
            lifetime: rule.lifetime,
        });
    }
    let json = serde_json::to_vec(rule).map_err(|source| StoreError::EncodeRule {
        id: rule.id,
        source,
    })?;
    Ok((rule.id.0, json))
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

/// Rule id to its hit count and the time of its last hit in milliseconds (0 for none).
const HITS_TABLE: TableDefinition<u64, (u64, u64)> = TableDefinition::new("hits");

/// Setting name to its value.
const SETTINGS_TABLE: TableDefinition<&str, &str> = TableDefinition::new("settings");

/// Store metadata by name. Contains only [`SCHEMA_VERSION_KEY`].
const META_TABLE: TableDefinition<&str, u32> = TableDefinition::new("meta");

const SCHEMA_VERSION_KEY: &str = "schema_version";

#[cfg(test)]
mod tests;
