//! Errors of the rule store.

use std::{io, path::PathBuf};

use redb::DatabaseError;

use crate::model::{RuleId, lifetime::Lifetime};

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
        "rule store {} has schema version {found}, but this build reads only versions up to \
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

    /// Upgrading the file from an older schema version failed; the file keeps its old version
    /// and rules.
    #[error("failed to upgrade rule store {} from schema version {from}", .path.display())]
    Migrate {
        /// Database file.
        path: PathBuf,
        /// Schema version of the file.
        from: u32,
        /// The cause.
        #[source]
        source: Box<Self>,
    },

    /// A version 1 rule has a value that the current model rejects.
    #[error("failed to upgrade rule {id} in rule store {}: {reason}", .path.display())]
    UpgradeRule {
        /// Database file.
        path: PathBuf,
        /// Id the row is stored under.
        id: RuleId,
        /// The value the current model rejects, and why.
        reason: String,
    },

    /// A rule passed to the store has a lifetime that is not stored.
    #[error("rule {id} has lifetime {lifetime}, which is kept in memory only")]
    NotStored {
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

    /// Rules could not be written.
    #[error("failed to write rules to rule store {}", .path.display())]
    WriteRules {
        /// Database file.
        path: PathBuf,
        /// The redb error.
        #[source]
        source: redb::Error,
    },

    /// A rule could not be removed.
    #[error("failed to remove rules from rule store {}", .path.display())]
    RemoveRules {
        /// Database file.
        path: PathBuf,
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

    /// Hit counts could not be written.
    #[error("failed to write hit counts to rule store {}", .path.display())]
    WriteHits {
        /// Database file.
        path: PathBuf,
        /// The redb error.
        #[source]
        source: redb::Error,
    },

    /// A setting could not be read or written.
    #[error("failed to access setting {key} of rule store {}", .path.display())]
    Setting {
        /// Database file.
        path: PathBuf,
        /// Name of the setting.
        key: &'static str,
        /// The redb error.
        #[source]
        source: redb::Error,
    },
}
