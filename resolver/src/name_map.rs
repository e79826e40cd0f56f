//! The name map: which name each asker resolved to which address, kept for the answer's TTL plus
//! a grace period, in bounded memory.

use std::{
    net::IpAddr,
    num::NonZeroUsize,
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use lru::LruCache;

use crate::{answer::Answer, asker::Asker, domain::DomainName};

/// Limits of a [`NameMap`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameMapConfig {
    /// How long a mapping stays after its TTL ran out. Programs keep using addresses after the
    /// TTL (connection pools, browsers), so a mapping that expired with the TTL would leave
    /// their new connections unnamed.
    pub grace: Duration,
    /// Maximum number of (asker, address) mappings, and separately of machine-wide ones. The
    /// least recently used mapping is evicted first.
    pub max_entries: NonZeroUsize,
}

/// How a connection's name was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameScope {
    /// The same asker resolved a name to this address.
    Asker,
    /// The asker resolved no name to this address. The name is the latest that any asker
    /// resolved to it, so it may belong to another program.
    Machine,
}

/// The name of a connection's destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameMatch {
    /// The CNAME chain: the queried name first, the name that holds the address last.
    pub chain: Vec<DomainName>,
    /// Whose answer it came from.
    pub scope: NameScope,
}

impl NameMatch {
    /// Returns the name that was queried.
    pub fn name(&self) -> &DomainName {
        // Answers with an empty chain are never recorded.
        &self.chain[0]
    }
}

/// Counters of a [`NameMap`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NameMapStats {
    /// Mappings held now, per asker and machine-wide together.
    pub entries: usize,
    /// Mappings evicted because a cap was reached.
    pub evictions: u64,
    /// Mappings dropped because their TTL and grace period had passed.
    pub expirations: u64,
}

/// Names resolved per asker and address. Safe to share between threads.
#[derive(Debug)]
pub struct NameMap {
    grace: Duration,
    inner: Mutex<Tables>,
}

#[derive(Debug)]
struct Tables {
    by_asker: LruCache<(Asker, IpAddr), Mapping>,
    latest: LruCache<IpAddr, Mapping>,
    evictions: u64,
    expirations: u64,
}

#[derive(Debug, Clone)]
struct Mapping {
    chain: Vec<DomainName>,
    expires: Instant,
}

impl NameMap {
    /// Creates an empty map.
    pub fn new(config: NameMapConfig) -> Self {
        Self {
            grace: config.grace,
            inner: Mutex::new(Tables {
                by_asker: LruCache::new(config.max_entries),
                latest: LruCache::new(config.max_entries),
                evictions: 0,
                expirations: 0,
            }),
        }
    }

    /// Records every address of `answer`, received at `now`.
    pub fn record(&self, answer: &Answer, now: Instant) {
        if answer.chain.is_empty() {
            return;
        }
        let mut tables = self.lock();
        for address in &answer.addresses {
            let ip = address.ip.to_canonical();
            let mapping = Mapping {
                chain: answer.chain.clone(),
                expires: now + Duration::from_secs(u64::from(address.ttl)) + self.grace,
            };
            let evicted = tables.by_asker.push((answer.asker, ip), mapping.clone());
            tables.count_eviction(evicted.is_some_and(|(key, _)| key != (answer.asker, ip)));
            let evicted = tables.latest.push(ip, mapping);
            tables.count_eviction(evicted.is_some_and(|(key, _)| key != ip));
        }
    }

    /// Returns the name of a connection from `asker` to `ip` at `now`: the one `asker` resolved
    /// to `ip` if any, otherwise the latest any asker resolved to it.
    pub fn lookup(&self, asker: Asker, ip: IpAddr, now: Instant) -> Option<NameMatch> {
        let ip = ip.to_canonical();
        let mut tables = self.lock();
        if let Some(chain) = tables.live_by_asker(asker, ip, now) {
            return Some(NameMatch {
                chain,
                scope: NameScope::Asker,
            });
        }
        tables.live_latest(ip, now).map(|chain| NameMatch {
            chain,
            scope: NameScope::Machine,
        })
    }

    /// Returns the counters.
    pub fn stats(&self) -> NameMapStats {
        let tables = self.lock();
        NameMapStats {
            entries: tables.by_asker.len() + tables.latest.len(),
            evictions: tables.evictions,
            expirations: tables.expirations,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Tables> {
        // Every critical section leaves the caches consistent, so a poisoned lock is usable.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Tables {
    fn count_eviction(&mut self, evicted: bool) {
        if evicted {
            self.evictions += 1;
        }
    }

    fn live_by_asker(&mut self, asker: Asker, ip: IpAddr, now: Instant) -> Option<Vec<DomainName>> {
        let key = (asker, ip);
        let expires = self.by_asker.get(&key)?.expires;
        if expires <= now {
            self.by_asker.pop(&key);
            self.expirations += 1;
            return None;
        }
        self.by_asker.get(&key).map(|mapping| mapping.chain.clone())
    }

    fn live_latest(&mut self, ip: IpAddr, now: Instant) -> Option<Vec<DomainName>> {
        let expires = self.latest.get(&ip)?.expires;
        if expires <= now {
            self.latest.pop(&ip);
            self.expirations += 1;
            return None;
        }
        self.latest.get(&ip).map(|mapping| mapping.chain.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::{answer::AnswerAddress, asker::Transport};

    const SHARED_IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 80));

    fn map(max_entries: usize) -> NameMap {
        NameMap::new(NameMapConfig {
            grace: Duration::from_secs(300),
            max_entries: NonZeroUsize::new(max_entries).unwrap(),
        })
    }

    fn answer(pid: u32, names: &[&str], ip: IpAddr, ttl: u32) -> Answer {
        Answer {
            asker: Asker::Process { pid },
            client: SocketAddr::from(([127, 0, 0, 1], 40000)),
            transport: Transport::Udp,
            chain: names
                .iter()
                .map(|name| DomainName::parse(name).unwrap())
                .collect(),
            addresses: vec![AnswerAddress { ip, ttl }],
        }
    }

    fn process(pid: u32) -> Asker {
        Asker::Process { pid }
    }

    #[test]
    fn each_asker_sees_its_own_name() {
        let names = map(16);
        let now = Instant::now();
        names.record(&answer(1, &["blog.test"], SHARED_IP, 60), now);
        names.record(&answer(2, &["shop.test"], SHARED_IP, 60), now);

        let first = names.lookup(process(1), SHARED_IP, now).unwrap();
        let second = names.lookup(process(2), SHARED_IP, now).unwrap();
        assert_eq!(first.name().as_str(), "blog.test");
        assert_eq!(first.scope, NameScope::Asker);
        assert_eq!(second.name().as_str(), "shop.test");
    }

    #[test]
    fn unknown_asker_gets_latest_name_marked() {
        let names = map(16);
        let now = Instant::now();
        names.record(&answer(1, &["blog.test"], SHARED_IP, 60), now);
        names.record(
            &answer(2, &["shop.test", "edge.cdn.test"], SHARED_IP, 60),
            now,
        );

        let guess = names.lookup(process(3), SHARED_IP, now).unwrap();
        assert_eq!(guess.name().as_str(), "shop.test");
        assert_eq!(guess.chain.len(), 2);
        assert_eq!(guess.scope, NameScope::Machine);
    }

    #[test]
    fn mapping_outlives_ttl_by_grace_only() {
        let names = map(16);
        let start = Instant::now();
        names.record(&answer(1, &["short.test"], SHARED_IP, 5), start);

        let within_grace = start + Duration::from_secs(5 + 299);
        assert!(names.lookup(process(1), SHARED_IP, within_grace).is_some());
        let after_grace = start + Duration::from_secs(5 + 300);
        assert!(names.lookup(process(1), SHARED_IP, after_grace).is_none());
        assert_eq!(names.stats().expirations, 2);
    }

    #[test]
    fn caps_evict_least_recent_and_count() {
        let names = map(2);
        let now = Instant::now();
        for last in 1..=3u8 {
            let ip = IpAddr::from([192, 0, 2, last]);
            names.record(&answer(1, &["many.test"], ip, 60), now);
        }
        let stats = names.stats();
        assert_eq!(stats.entries, 4);
        assert_eq!(stats.evictions, 2);
        assert!(
            names
                .lookup(process(1), IpAddr::from([192, 0, 2, 1]), now)
                .is_none()
        );
    }

    #[test]
    fn mapped_ipv4_matches_plain() {
        let names = map(4);
        let now = Instant::now();
        names.record(&answer(1, &["v4.test"], SHARED_IP, 60), now);
        let mapped: IpAddr = "::ffff:192.0.2.80".parse().unwrap();
        assert!(names.lookup(process(1), mapped, now).is_some());
    }
}
