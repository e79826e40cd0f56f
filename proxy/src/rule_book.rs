//! The daemon's rules: the rule set that connections are matched against, kept in step with
//! the rule store, with hit counts saved in batches.

use std::{collections::BTreeSet, path::Path};

use tollgate_rules::{
    Action, Clock, ConnectionFacts, Lifetime, ProcessStart, Rule, RuleId, RuleSet, RuleStore,
    StoreError, store::HitCount,
};
use tracing::info;

/// Name of the store setting with the boot id of the machine that wrote the boot-clock
/// deadlines of stored rules.
const BOOT_ID_SETTING: &str = "boot_id";

/// Rules in memory and in the store. Stored rules (see [`Lifetime::is_stored`]) are on disk
/// before a change returns; the other rules live in memory only.
#[derive(Debug)]
pub struct RuleBook {
    rules: RuleSet,
    store: RuleStore,
    /// Stored rules whose hit count changed since the last [`RuleBook::flush_hits`].
    unsaved_hits: BTreeSet<RuleId>,
}

impl RuleBook {
    /// Opens the store at `path` and loads its rules, dropping those that ended while the
    /// daemon was not running.
    ///
    /// Rules that last for a duration end at a boot-clock deadline, which means nothing after
    /// a reboot. So when `boot_id` differs from the boot id stored with them, or either is
    /// unknown, they are removed.
    pub fn open(path: &Path, boot_id: Option<&str>, now: &Clock) -> Result<Self, StoreError> {
        let store = RuleStore::open(path)?;
        let stored = store.load_all()?;
        let same_boot = boot_id.is_some() && store.setting(BOOT_ID_SETTING)?.as_deref() == boot_id;

        let (ended, kept): (Vec<Rule>, Vec<Rule>) = stored.into_iter().partition(|rule| {
            let other_boot = matches!(rule.lifetime, Lifetime::For { .. }) && !same_boot;
            other_boot || rule.lifetime.is_expired(now)
        });
        if !ended.is_empty() {
            let ids: Vec<RuleId> = ended.iter().map(|rule| rule.id).collect();
            store.remove_all(&ids)?;
            info!(rules = ?ids, "removed stored rules that ended while the daemon was stopped");
        }
        if let Some(boot_id) = boot_id {
            store.set_setting(BOOT_ID_SETTING, boot_id)?;
        }
        Ok(Self {
            rules: RuleSet::from_rules(kept),
            store,
            unsaved_hits: BTreeSet::new(),
        })
    }

    /// Returns the rule set.
    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// Returns the rule that decides `facts` at `now`, with its action.
    pub fn decide(&self, facts: &ConnectionFacts, now: &Clock) -> Option<(RuleId, Action)> {
        let rule = self.rules.decide(&facts.as_connection(), now)?;
        Some((rule.id, rule.action))
    }

    /// Counts `connections` connections decided by rule `id` at `unix_ms`. The count reaches
    /// the disk with the next [`RuleBook::flush_hits`].
    pub fn record_hits(&mut self, id: RuleId, connections: usize, unix_ms: u64) {
        for _ in 0..connections {
            self.rules.record_hit(id, unix_ms);
        }
        if self
            .rules
            .get(id)
            .is_some_and(|rule| rule.lifetime.is_stored())
        {
            self.unsaved_hits.insert(id);
        }
    }

    /// Writes the changed hit counts of stored rules in one transaction. Returns how many
    /// rules it wrote.
    pub fn flush_hits(&mut self) -> Result<usize, StoreError> {
        let counts: Vec<HitCount> = self
            .unsaved_hits
            .iter()
            .filter_map(|id| self.rules.get(*id))
            .map(|rule| HitCount {
                id: rule.id,
                hits: rule.hits,
                last_hit_unix_ms: rule.last_hit_unix_ms,
            })
            .collect();
        if !counts.is_empty() {
            self.store.record_hits(&counts)?;
        }
        self.unsaved_hits.clear();
        Ok(counts.len())
    }

    /// Adds rules, storing those with a stored lifetime in one transaction first, so that
    /// either all are added or none.
    pub fn add_all(&mut self, rules: Vec<Rule>) -> Result<(), StoreError> {
        let stored: Vec<Rule> = rules
            .iter()
            .filter(|rule| rule.lifetime.is_stored())
            .cloned()
            .collect();
        if !stored.is_empty() {
            self.store.insert_all(&stored)?;
        }
        self.rules.extend(rules);
        Ok(())
    }

    /// Replaces the rule with `rule.id` by `rule`, moving it into or out of the store when its
    /// lifetime changed between stored and memory-only.
    pub fn replace(&mut self, rule: Rule) -> Result<(), StoreError> {
        let was_stored = self
            .rules
            .get(rule.id)
            .is_some_and(|old| old.lifetime.is_stored());
        if rule.lifetime.is_stored() {
            self.store.insert(&rule)?;
        } else if was_stored {
            self.store.remove(rule.id)?;
        }
        self.unsaved_hits.remove(&rule.id);
        self.rules.insert(rule);
        Ok(())
    }

    /// Removes the rules with these ids from the store and from memory, and returns the rules
    /// that existed.
    pub fn remove_all(&mut self, ids: &[RuleId]) -> Result<Vec<Rule>, StoreError> {
        let stored: Vec<RuleId> = ids
            .iter()
            .filter(|id| {
                self.rules
                    .get(**id)
                    .is_some_and(|rule| rule.lifetime.is_stored())
            })
            .copied()
            .collect();
        if !stored.is_empty() {
            self.store.remove_all(&stored)?;
        }
        let removed = ids.iter().filter_map(|id| self.rules.remove(*id)).collect();
        for id in ids {
            self.unsaved_hits.remove(id);
        }
        Ok(removed)
    }

    /// Removes the rules whose lifetime ended at `now` and those tied to a process for which
    /// `is_running` returns false. Returns the removed rules.
    pub fn remove_ended(
        &mut self,
        now: &Clock,
        is_running: impl Fn(ProcessStart) -> bool,
    ) -> Result<Vec<Rule>, StoreError> {
        let mut ended = self.rules.expired(now);
        let exited = self
            .rules
            .process_bound()
            .into_iter()
            .filter(|(_, process)| !is_running(*process))
            .map(|(id, _)| id);
        ended.extend(exited);
        if ended.is_empty() {
            return Ok(Vec::new());
        }
        self.remove_all(&ended)
    }
}

#[cfg(test)]
mod tests {
    use tempfile::TempDir;
    use tollgate_rules::{Destination, Subject};

    use super::*;

    const NOW: Clock = Clock {
        unix_ms: 1_700_000_000_000,
        boottime_ms: 10_000,
    };

    fn rule(id: u64, lifetime: Lifetime) -> Rule {
        Rule::new(
            RuleId(id),
            Subject::any(),
            Destination::any(),
            Action::Allow,
            lifetime,
        )
    }

    fn later(ms: u64) -> Clock {
        Clock {
            unix_ms: NOW.unix_ms + ms,
            boottime_ms: NOW.boottime_ms + ms,
        }
    }

    fn ids(book: &RuleBook) -> Vec<u64> {
        book.rules().iter().map(|rule| rule.id.0).collect()
    }

    #[test]
    fn timed_rule_expires_and_is_removed() {
        let dir = TempDir::new().unwrap();
        let mut book = RuleBook::open(&dir.path().join("rules.redb"), Some("boot"), &NOW).unwrap();
        let lifetime = tollgate_rules::LifetimeSpec::For { secs: 2 }
            .resolve(&NOW, None)
            .unwrap();
        book.add_all(vec![rule(1, lifetime), rule(2, Lifetime::Forever)])
            .unwrap();
        let facts = ConnectionFacts::to(
            "192.0.2.1".parse().unwrap(),
            80,
            tollgate_rules::Protocol::Tcp,
        );

        assert_eq!(
            book.decide(&facts, &later(1_999)).map(|(id, _)| id.0),
            Some(1)
        );
        assert_eq!(
            book.decide(&facts, &later(2_000)).map(|(id, _)| id.0),
            Some(2)
        );
        assert!(
            book.remove_ended(&later(1_999), |_| true)
                .unwrap()
                .is_empty()
        );
        let removed = book.remove_ended(&later(2_000), |_| true).unwrap();
        assert_eq!(removed.len(), 1);
        assert_eq!(ids(&book), [2]);
    }

    #[test]
    fn process_rule_ends_with_its_process() {
        let dir = TempDir::new().unwrap();
        let mut book = RuleBook::open(&dir.path().join("rules.redb"), None, &NOW).unwrap();
        let process = ProcessStart {
            pid: 42,
            start_time: 7,
        };
        book.add_all(vec![rule(1, Lifetime::UntilExit(process))])
            .unwrap();

        assert!(
            book.remove_ended(&later(60_000), |_| true)
                .unwrap()
                .is_empty()
        );
        let removed = book
            .remove_ended(&NOW, |running| running != process)
            .unwrap();
        assert_eq!(removed[0].id, RuleId(1));
        assert!(book.rules().is_empty());
    }

    #[test]
    fn duration_rules_end_at_reboot() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("rules.redb");
        let mut book = RuleBook::open(&path, Some("first boot"), &NOW).unwrap();
        let timed = Lifetime::For {
            secs: 3600,
            expires_boottime_ms: NOW.boottime_ms + 3_600_000,
        };
        let dated = Lifetime::Until {
            unix_ms: NOW.unix_ms + 3_600_000,
        };
        book.add_all(vec![
            rule(1, timed),
            rule(2, dated),
            rule(3, Lifetime::Forever),
        ])
        .unwrap();
        drop(book);

        let same_boot = RuleBook::open(&path, Some("first boot"), &later(1000)).unwrap();
        assert_eq!(ids(&same_boot), [1, 2, 3]);
        drop(same_boot);

        let next_boot = RuleBook::open(&path, Some("second boot"), &NOW).unwrap();
        assert_eq!(ids(&next_boot), [2, 3]);
        drop(next_boot);

        let past_deadline = RuleBook::open(&path, Some("second boot"), &later(3_600_000)).unwrap();
        assert_eq!(ids(&past_deadline), [3]);
    }

    #[test]
    fn hits_are_saved_by_flush() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("rules.redb");
        let mut book = RuleBook::open(&path, None, &NOW).unwrap();
        book.add_all(vec![
            rule(1, Lifetime::Forever),
            rule(2, Lifetime::UntilRestart),
        ])
        .unwrap();

        book.record_hits(RuleId(1), 3, 1_000);
        book.record_hits(RuleId(2), 1, 2_000);
        assert_eq!(book.flush_hits().unwrap(), 1);
        assert_eq!(book.flush_hits().unwrap(), 0);
        book.record_hits(RuleId(1), 1, 3_000);
        drop(book);

        let reopened = RuleBook::open(&path, None, &NOW).unwrap();
        let rule = reopened.rules().get(RuleId(1)).unwrap();
        assert_eq!(
            rule.hits, 3,
            "the unflushed hit is lost, the flushed ones are kept"
        );
        assert_eq!(rule.last_hit_unix_ms, Some(1_000));
    }

    #[test]
    fn replace_moves_rule_out_of_store() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("rules.redb");
        let mut book = RuleBook::open(&path, None, &NOW).unwrap();
        book.add_all(vec![rule(1, Lifetime::Forever)]).unwrap();

        book.replace(rule(1, Lifetime::UntilRestart)).unwrap();
        assert_eq!(ids(&book), [1]);
        drop(book);

        let reopened = RuleBook::open(&path, None, &NOW).unwrap();
        assert!(reopened.rules().is_empty());
    }
}
