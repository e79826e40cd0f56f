//! The rule set: every rule of a daemon, with the index that finds the one deciding a
//! connection.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::{
    connection::Connection,
    index::Index,
    matching::rule_matches,
    model::{
        Rule, RuleId,
        lifetime::{Clock, ProcessStart},
    },
    precedence::{self, Precedence},
};

/// Rules by id, with an index over the enabled ones.
///
/// [`RuleSet::decide`] takes time that depends on the rules filed under the connection's
/// executable, names and address, not on the number of rules. Neither it nor any other method
/// reads a clock or does I/O: the caller passes the time.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    slots: Vec<Option<Rule>>,
    free_slots: Vec<u32>,
    ids: BTreeMap<RuleId, u32>,
    /// Ids of rules whose lifetime ends by a clock or a process exit.
    temporary: BTreeSet<RuleId>,
    index: Index,
}

/// Two enabled rules with the same conditions and different actions: only `winner` ever
/// decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Conflict {
    /// The rule that decides the connections both match.
    pub winner: RuleId,
    /// The rule that never decides while `winner` is enabled.
    pub loser: RuleId,
}

impl RuleSet {
    /// Creates an empty rule set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Creates a rule set from `rules`. Of several rules with the same id, the last one is kept.
    pub fn from_rules(rules: impl IntoIterator<Item = Rule>) -> Self {
        let mut set = Self::new();
        for rule in rules {
            set.insert(rule);
        }
        set
    }

    /// Inserts `rule` under its own id and returns the rule it replaced, if that id was taken.
    pub fn insert(&mut self, rule: Rule) -> Option<Rule> {
        let replaced = self.remove(rule.id);
        let slot = match self.free_slots.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                // Each rule takes far more than 1 byte, so memory runs out long before 2^32.
                u32::try_from(self.slots.len() - 1).expect("fewer than 2^32 rules")
            }
        };
        if rule.enabled {
            self.index.insert(&rule, slot);
        }
        if is_temporary(&rule) {
            self.temporary.insert(rule.id);
        }
        self.ids.insert(rule.id, slot);
        self.slots[slot as usize] = Some(rule);
        replaced
    }

    /// Removes the rule with this id and returns it.
    pub fn remove(&mut self, id: RuleId) -> Option<Rule> {
        let slot = self.ids.remove(&id)?;
        let rule = self.slots[slot as usize].take()?;
        if rule.enabled {
            self.index.remove(&rule, slot);
        }
        self.temporary.remove(&id);
        self.free_slots.push(slot);
        Some(rule)
    }

    /// Returns the rule with this id.
    pub fn get(&self, id: RuleId) -> Option<&Rule> {
        let slot = *self.ids.get(&id)?;
        self.slots[slot as usize].as_ref()
    }

    /// Returns whether a rule has this id.
    pub fn contains(&self, id: RuleId) -> bool {
        self.ids.contains_key(&id)
    }

    /// Returns one more than the highest id in the set, or 1 for an empty set.
    ///
    /// NOTE: if the set contains `RuleId(u64::MAX)`, this returns that id again.
    pub fn next_id(&self) -> RuleId {
        let max_id = self.ids.keys().next_back().map_or(0, |id| id.0);
        RuleId(max_id.saturating_add(1))
    }

    /// Returns an iterator over the rules, disabled ones included, in id order.
    pub fn iter(&self) -> impl Iterator<Item = &Rule> {
        self.ids
            .values()
            .filter_map(|slot| self.slots[*slot as usize].as_ref())
    }

    /// Returns every rule, disabled ones included, in precedence order: a rule comes before
    /// every rule it beats.
    pub fn in_precedence_order(&self) -> Vec<&Rule> {
        let mut rules: Vec<&Rule> = self.iter().collect();
        rules.sort_by_cached_key(|rule| Precedence::of(rule));
        rules
    }

    /// Returns the number of rules, disabled ones included.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Returns whether the set has no rules.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Returns the rule that decides `connection` at `now`, or `None` if no enabled rule in
    /// force matches.
    pub fn decide(&self, connection: &Connection<'_>, now: &Clock) -> Option<&Rule> {
        let slot = self.index.decide(connection, now, &self.slots)?;
        self.slots[slot as usize].as_ref()
    }

    /// Returns the same rule as [`RuleSet::decide`] by checking every rule in turn, without the
    /// index. Takes time linear in the number of rules; it is the reference for tests and
    /// benchmarks.
    pub fn decide_by_scan(&self, connection: &Connection<'_>, now: &Clock) -> Option<&Rule> {
        self.slots
            .iter()
            .flatten()
            .filter(|rule| rule_matches(rule, connection, now))
            .min_by(|a, b| precedence::compare(a, b))
    }

    /// Counts a connection decided by rule `id` at `unix_ms`. Returns whether the rule exists.
    pub fn record_hit(&mut self, id: RuleId, unix_ms: u64) -> bool {
        let Some(slot) = self.ids.get(&id) else {
            return false;
        };
        let Some(rule) = self.slots[*slot as usize].as_mut() else {
            return false;
        };
        rule.hits = rule.hits.saturating_add(1);
        rule.last_hit_unix_ms = Some(unix_ms);
        true
    }

    /// Returns the ids of rules whose lifetime has ended by the clock at `now`.
    pub fn expired(&self, now: &Clock) -> Vec<RuleId> {
        self.temporary
            .iter()
            .filter(|id| {
                self.get(**id)
                    .is_some_and(|rule| rule.lifetime.is_expired(now))
            })
            .copied()
            .collect()
    }

    /// Returns the rules that end when a process exits, with that process.
    pub fn process_bound(&self) -> Vec<(RuleId, ProcessStart)> {
        self.temporary
            .iter()
            .filter_map(|id| {
                let process = self.get(*id)?.lifetime.process()?;
                Some((*id, process))
            })
            .collect()
    }

    /// Returns the pairs of enabled rules with the same conditions and different actions,
    /// each with the rule that wins.
    pub fn conflicts(&self) -> Vec<Conflict> {
        let mut groups: HashMap<_, Vec<&Rule>> = HashMap::new();
        for rule in self.iter().filter(|rule| rule.enabled) {
            let key = (&rule.subject, &rule.destination, rule.priority);
            groups.entry(key).or_default().push(rule);
        }
        let mut conflicts = Vec::new();
        for mut rules in groups.into_values() {
            rules.sort_by_cached_key(|rule| Precedence::of(rule));
            let winner = rules[0];
            let losers = rules[1..]
                .iter()
                .filter(|rule| rule.action != winner.action);
            conflicts.extend(losers.map(|loser| Conflict {
                winner: winner.id,
                loser: loser.id,
            }));
        }
        conflicts.sort_by_key(|conflict| (conflict.loser, conflict.winner));
        conflicts
    }
}

impl Extend<Rule> for RuleSet {
    fn extend<T: IntoIterator<Item = Rule>>(&mut self, rules: T) {
        for rule in rules {
            self.insert(rule);
        }
    }
}

fn is_temporary(rule: &Rule) -> bool {
    use crate::model::lifetime::Lifetime;
    matches!(
        rule.lifetime,
        Lifetime::UntilExit(_) | Lifetime::For { .. } | Lifetime::Until { .. }
    )
}
