//! The matching index: enabled rules filed by subject, then by destination, so that a lookup
//! visits only the rules that can match.
//!
//! The subject half files each rule under its strongest executable condition: a map by
//! SHA-256 digest, a map by exact path, globs grouped by the directory their pattern starts
//! with, and one group for rules without an executable condition. Each group contains buckets
//! of one [`SubjectRank`] (steps 1 to 4 of the precedence table), best first, and each bucket
//! an [`AddressTable`]. A lookup skips buckets that rank below the best match found so far.

mod address_table;
pub(crate) mod leaf;

use std::os::unix::ffi::OsStrExt;

use rustc_hash::FxHashMap;

use crate::{
    connection::Connection,
    model::{
        Rule,
        glob::PathGlob,
        lifetime::Clock,
        subject::{ExecutableMatch, Sha256Digest},
    },
    precedence::{Precedence, SubjectRank},
};
use address_table::{AddressTable, LengthSet, Probe};
use leaf::{Entry, Slots};

/// Enabled rules by subject and destination.
#[derive(Debug, Clone, Default)]
pub(crate) struct Index {
    by_sha256: FxHashMap<Sha256Digest, Buckets>,
    /// Exact executable paths, as bytes: hashing a `Path` parses its components, which is slow.
    by_path: FxHashMap<Box<[u8]>, Buckets>,
    /// Executable globs by the directory their pattern starts with ([`PathGlob::literal_dir`]).
    globs: FxHashMap<Box<[u8]>, Vec<GlobGroup>>,
    /// Byte lengths of the keys of `globs`, so that lookups skip directories of other lengths.
    glob_dir_lengths: LengthSet,
    /// A rank no worse than that of any glob bucket, so that a lookup that found a better
    /// rule skips the globs. It is not raised when buckets go away, which keeps it a bound.
    best_glob_rank: Option<SubjectRank>,
    /// Rules without an executable or SHA-256 condition.
    others: Buckets,
}

/// The rules of one executable glob.
#[derive(Debug, Clone)]
struct GlobGroup {
    glob: PathGlob,
    buckets: Buckets,
}

/// Buckets sorted by rank, best first.
#[derive(Debug, Clone, Default)]
struct Buckets(Vec<Bucket>);

#[derive(Debug, Clone)]
struct Bucket {
    rank: SubjectRank,
    table: AddressTable,
}

impl Index {
    /// Files the rule in `slot`, which must be enabled.
    pub(crate) fn insert(&mut self, rule: &Rule, slot: u32) {
        let entry = Entry {
            key: Precedence::of(rule),
            slot,
        };
        if let (None, Some(ExecutableMatch::Glob(glob))) =
            (&rule.subject.sha256, &rule.subject.executable)
        {
            let rank = entry.key.subject;
            self.best_glob_rank = Some(self.best_glob_rank.map_or(rank, |best| best.min(rank)));
            self.glob_dir_lengths.insert(glob.literal_dir().len());
        }
        let address = &rule.destination.address;
        self.buckets_mut(rule)
            .table_mut(entry.key.subject)
            .insert(address, entry);
    }

    /// Removes the rule in `slot`, which must have been filed with the same `rule`.
    pub(crate) fn remove(&mut self, rule: &Rule, slot: u32) {
        let rank = SubjectRank::of(rule);
        let buckets = self.buckets_mut(rule);
        buckets
            .table_mut(rank)
            .remove(&rule.destination.address, slot);
        buckets.0.retain(|bucket| !bucket.table.is_empty());
        self.drop_empty_groups(rule);
    }

    /// Returns the slot of the rule that decides `connection` at `now`.
    pub(crate) fn decide(
        &self,
        connection: &Connection<'_>,
        now: &Clock,
        slots: &Slots,
    ) -> Option<u32> {
        let mut search = Search {
            connection,
            now,
            slots,
            best: None,
        };
        if let Some(digest) = connection.sha256
            && let Some(buckets) = self.by_sha256.get(digest)
        {
            search.visit(buckets, false);
        }
        if let Some(path) = connection.executable {
            if let Some(buckets) = self.by_path.get(path.as_os_str().as_bytes()) {
                search.visit(buckets, true);
            }
            let globs_can_win = self
                .best_glob_rank
                .is_some_and(|rank| search.best.is_none_or(|best| rank <= best.key.subject));
            if globs_can_win {
                self.visit_globs(&mut search, path);
            }
        }
        search.visit(&self.others, false);
        search.best.map(|entry| entry.slot)
    }

    /// Visits the globs filed under each directory that `path` is in.
    fn visit_globs(&self, search: &mut Search<'_, '_>, path: &std::path::Path) {
        if self.globs.is_empty() {
            return;
        }
        let bytes = path.as_os_str().as_bytes();
        let dirs = bytes.iter().enumerate().filter(|(_, byte)| **byte == b'/');
        for (slash, _) in dirs {
            if !self.glob_dir_lengths.contains(slash + 1) {
                continue;
            }
            let Some(groups) = self.globs.get(&bytes[..=slash]) else {
                continue;
            };
            for group in groups {
                if search.can_improve(&group.buckets) && group.glob.is_match(path) {
                    search.visit(&group.buckets, true);
                }
            }
        }
    }

    fn buckets_mut(&mut self, rule: &Rule) -> &mut Buckets {
        let subject = &rule.subject;
        if let Some(digest) = subject.sha256 {
            return self.by_sha256.entry(digest).or_default();
        }
        match &subject.executable {
            Some(ExecutableMatch::Path(path)) => {
                let key: Box<[u8]> = path.as_os_str().as_bytes().into();
                self.by_path.entry(key).or_default()
            }
            Some(ExecutableMatch::Glob(glob)) => {
                let groups = self
                    .globs
                    .entry(glob.literal_dir().as_bytes().into())
                    .or_default();
                let position = match groups.iter().position(|group| group.glob == *glob) {
                    Some(position) => position,
                    None => {
                        groups.push(GlobGroup {
                            glob: glob.clone(),
                            buckets: Buckets::default(),
                        });
                        groups.len() - 1
                    }
                };
                &mut groups[position].buckets
            }
            None => &mut self.others,
        }
    }

    fn drop_empty_groups(&mut self, rule: &Rule) {
        let subject = &rule.subject;
        if let Some(digest) = subject.sha256 {
            if self.by_sha256.get(&digest).is_some_and(Buckets::is_empty) {
                self.by_sha256.remove(&digest);
            }
            return;
        }
        match &subject.executable {
            Some(ExecutableMatch::Path(path)) => {
                let key = path.as_os_str().as_bytes();
                if self.by_path.get(key).is_some_and(Buckets::is_empty) {
                    self.by_path.remove(key);
                }
            }
            Some(ExecutableMatch::Glob(glob)) => {
                let dir: &[u8] = glob.literal_dir().as_bytes();
                if let Some(groups) = self.globs.get_mut(dir) {
                    groups.retain(|group| !group.buckets.is_empty());
                    if groups.is_empty() {
                        self.globs.remove(dir);
                    }
                }
            }
            _ => {}
        }
    }
}

impl Buckets {
    fn table_mut(&mut self, rank: SubjectRank) -> &mut AddressTable {
        let position = self.0.partition_point(|bucket| bucket.rank < rank);
        if self
            .0
            .get(position)
            .is_none_or(|bucket| bucket.rank != rank)
        {
            let bucket = Bucket {
                rank,
                table: AddressTable::default(),
            };
            self.0.insert(position, bucket);
        }
        &mut self.0[position].table
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The state of one lookup: the best entry found so far.
struct Search<'a, 'c> {
    connection: &'a Connection<'c>,
    now: &'a Clock,
    slots: &'a Slots,
    best: Option<Entry>,
}

impl Search<'_, '_> {
    /// Returns whether the best bucket of `buckets` could beat the best entry so far.
    fn can_improve(&self, buckets: &Buckets) -> bool {
        let Some(first) = buckets.0.first() else {
            return false;
        };
        self.best.is_none_or(|best| first.rank <= best.key.subject)
    }

    /// Looks for a better entry in `buckets`, best bucket first, and stops at the first bucket
    /// that ranks below the best entry found.
    fn visit(&mut self, buckets: &Buckets, executable_checked: bool) {
        let probe = Probe {
            connection: self.connection,
            now: self.now,
            slots: self.slots,
            executable_checked,
        };
        for bucket in &buckets.0 {
            if self.best.is_some_and(|best| best.key.subject < bucket.rank) {
                return;
            }
            if let Some(entry) = bucket.table.best(&probe)
                && self.best.is_none_or(|best| entry < best)
            {
                self.best = Some(entry);
            }
        }
    }
}
