//! The destination half of the index: rules of one subject class, found by destination.
//!
//! Each kind of address condition has its own table. IP addresses, host names and domains are
//! in hash maps, and domains are looked up once per suffix of each host name. Networks have one
//! hash map per prefix length, and scopes and "any" plain lists. A lookup visits the kinds from the most
//! to the least specific and stops at the first kind with a match, because within one subject
//! class the address kind decides before anything else.

use std::net::IpAddr;

use rustc_hash::FxHashMap;

use crate::{
    connection::Connection,
    index::leaf::{Entry, Leaf, Slots},
    model::{
        address::{AddressMatch, Scope, mask_v4, mask_v6},
        lifetime::Clock,
    },
};

/// Rules of one subject class by destination address.
#[derive(Debug, Clone, Default)]
pub(crate) struct AddressTable {
    ips: FxHashMap<IpAddr, Leaf>,
    hosts: FxHashMap<Box<str>, Leaf>,
    /// Byte lengths of the keys of `hosts`, so that lookups skip names of other lengths.
    host_lengths: LengthSet,
    domains: FxHashMap<Box<str>, Leaf>,
    /// Bit `n` is set when a domain with `n` labels (63 for 63 or more) may be in `domains`,
    /// so that lookups skip suffixes of other lengths.
    domain_lengths: u64,
    /// IPv4 networks, longest prefix first.
    v4: Vec<PrefixTable<u32>>,
    /// IPv6 networks, longest prefix first.
    v6: Vec<PrefixTable<u128>>,
    scopes: [Leaf; 3],
    any: Leaf,
}

/// Networks of one prefix length, keyed by their network address.
#[derive(Debug, Clone)]
struct PrefixTable<T> {
    prefix: u8,
    networks: FxHashMap<T, Leaf>,
}

/// The matching context that every leaf needs.
pub(crate) struct Probe<'a, 'c> {
    pub(crate) connection: &'a Connection<'c>,
    pub(crate) now: &'a Clock,
    pub(crate) slots: &'a Slots,
    /// Whether the executable condition was checked by the subject index already.
    pub(crate) executable_checked: bool,
}

impl Probe<'_, '_> {
    fn first_match(&self, leaf: Option<&Leaf>) -> Option<Entry> {
        leaf?.first_match(self)
    }
}

impl AddressTable {
    pub(crate) fn insert(&mut self, address: &AddressMatch, entry: Entry) {
        self.leaf_mut(address).insert(entry);
    }

    /// Removes the entry of `slot` filed under `address`.
    pub(crate) fn remove(&mut self, address: &AddressMatch, slot: u32) {
        self.leaf_mut(address).remove(slot);
        self.drop_empty_leaf(address);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ips.is_empty()
            && self.hosts.is_empty()
            && self.domains.is_empty()
            && self.v4.is_empty()
            && self.v6.is_empty()
            && self.scopes.iter().all(Leaf::is_empty)
            && self.any.is_empty()
    }

    /// Returns the winning entry among the rules here that match, or `None`.
    pub(crate) fn best(&self, probe: &Probe<'_, '_>) -> Option<Entry> {
        let connection = probe.connection;
        let ip = connection.ip.to_canonical();
        if let Some(entry) = probe.first_match(self.ips.get(&ip)) {
            return Some(entry);
        }
        if let Some(entry) = self.best_host(probe) {
            return Some(entry);
        }
        if let Some(entry) = self.best_domain(probe) {
            return Some(entry);
        }
        if let Some(entry) = self.best_network(probe, ip) {
            return Some(entry);
        }
        let scope = Scope::of(ip);
        probe
            .first_match(Some(&self.scopes[scope.index()]))
            .or_else(|| probe.first_match(Some(&self.any)))
    }

    fn best_host(&self, probe: &Probe<'_, '_>) -> Option<Entry> {
        if self.hosts.is_empty() {
            return None;
        }
        let hosts = probe.connection.hosts.iter();
        hosts
            .filter(|host| self.host_lengths.contains(host.len()))
            .filter_map(|host| probe.first_match(self.hosts.get(host.as_str())))
            .min()
    }

    /// Looks up every suffix of every host name that starts at a label: `www.example.com`,
    /// `example.com` and `com`. Entries compare by label count, so the longest domain wins.
    fn best_domain(&self, probe: &Probe<'_, '_>) -> Option<Entry> {
        if self.domains.is_empty() {
            return None;
        }
        let mut best: Option<Entry> = None;
        for host in probe.connection.hosts {
            let mut labels = host.split('.').count();
            for suffix in label_suffixes(host) {
                let length_present = self.domain_lengths & length_bit(labels) != 0;
                labels -= 1;
                if !length_present {
                    continue;
                }
                if let Some(entry) = probe.first_match(self.domains.get(suffix)) {
                    best = Some(best.map_or(entry, |current| current.min(entry)));
                }
            }
        }
        best
    }

    fn best_network(&self, probe: &Probe<'_, '_>, ip: IpAddr) -> Option<Entry> {
        match ip {
            IpAddr::V4(v4) => {
                let bits = v4.to_bits();
                self.v4.iter().find_map(|table| {
                    probe.first_match(table.networks.get(&mask_v4(bits, table.prefix)))
                })
            }
            IpAddr::V6(v6) => {
                let bits = v6.to_bits();
                self.v6.iter().find_map(|table| {
                    probe.first_match(table.networks.get(&mask_v6(bits, table.prefix)))
                })
            }
        }
    }

    fn leaf_mut(&mut self, address: &AddressMatch) -> &mut Leaf {
        match address {
            AddressMatch::Any => &mut self.any,
            AddressMatch::Ip(ip) => self.ips.entry(ip.to_canonical()).or_default(),
            AddressMatch::Host(name) => {
                self.host_lengths.insert(name.as_str().len());
                self.hosts.entry(name.as_str().into()).or_default()
            }
            AddressMatch::Domain(name) => {
                self.domain_lengths |= length_bit(name.label_count());
                self.domains.entry(name.as_str().into()).or_default()
            }
            AddressMatch::Scope(scope) => &mut self.scopes[scope.index()],
            AddressMatch::Cidr(cidr) => {
                let cidr = cidr.to_canonical();
                match cidr.addr() {
                    IpAddr::V4(v4) => prefix_leaf(&mut self.v4, cidr.prefix(), v4.to_bits()),
                    IpAddr::V6(v6) => prefix_leaf(&mut self.v6, cidr.prefix(), v6.to_bits()),
                }
            }
        }
    }

    fn drop_empty_leaf(&mut self, address: &AddressMatch) {
        match address {
            AddressMatch::Ip(ip) => drop_if_empty(&mut self.ips, &ip.to_canonical()),
            AddressMatch::Host(name) => drop_if_empty(&mut self.hosts, name.as_str()),
            AddressMatch::Domain(name) => drop_if_empty(&mut self.domains, name.as_str()),
            AddressMatch::Cidr(cidr) => {
                let cidr = cidr.to_canonical();
                match cidr.addr() {
                    IpAddr::V4(v4) => drop_prefix_leaf(&mut self.v4, cidr.prefix(), v4.to_bits()),
                    IpAddr::V6(v6) => drop_prefix_leaf(&mut self.v6, cidr.prefix(), v6.to_bits()),
                }
            }
            AddressMatch::Any | AddressMatch::Scope(_) => {}
        }
    }
}

/// Returns the leaf of network `bits/prefix`, adding a table for the prefix length in
/// longest-first order when it has none.
fn prefix_leaf<T: Copy + Eq + std::hash::Hash>(
    tables: &mut Vec<PrefixTable<T>>,
    prefix: u8,
    bits: T,
) -> &mut Leaf {
    let position = tables.partition_point(|table| table.prefix > prefix);
    if tables
        .get(position)
        .is_none_or(|table| table.prefix != prefix)
    {
        let table = PrefixTable {
            prefix,
            networks: FxHashMap::default(),
        };
        tables.insert(position, table);
    }
    tables[position].networks.entry(bits).or_default()
}

fn drop_prefix_leaf<T: Copy + Eq + std::hash::Hash>(
    tables: &mut Vec<PrefixTable<T>>,
    prefix: u8,
    bits: T,
) {
    let Some(position) = tables.iter().position(|table| table.prefix == prefix) else {
        return;
    };
    drop_if_empty(&mut tables[position].networks, &bits);
    if tables[position].networks.is_empty() {
        tables.remove(position);
    }
}

fn drop_if_empty<K, Q>(map: &mut FxHashMap<K, Leaf>, key: &Q)
where
    K: std::borrow::Borrow<Q> + Eq + std::hash::Hash,
    Q: Eq + std::hash::Hash + ?Sized,
{
    if map.get(key).is_some_and(Leaf::is_empty) {
        map.remove(key);
    }
}

/// A set of lengths up to 255, and whether any longer length is in it. It only grows: a
/// length may stay in the set after its last key is gone, which costs a lookup but never a
/// match.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LengthSet {
    bits: [u64; 4],
    has_longer: bool,
}

impl LengthSet {
    pub(crate) fn insert(&mut self, length: usize) {
        match self.bits.get_mut(length / 64) {
            Some(word) => *word |= 1 << (length % 64),
            None => self.has_longer = true,
        }
    }

    pub(crate) fn contains(&self, length: usize) -> bool {
        match self.bits.get(length / 64) {
            Some(word) => word & (1 << (length % 64)) != 0,
            None => self.has_longer,
        }
    }
}

/// Returns the bit of [`AddressTable::domain_lengths`] for a name of `labels` labels.
fn length_bit(labels: usize) -> u64 {
    1 << labels.min(63)
}

/// Returns `name` and each suffix of it that starts after a dot.
fn label_suffixes(name: &str) -> impl Iterator<Item = &str> {
    let starts = std::iter::once(0).chain(name.match_indices('.').map(|(dot, _)| dot + 1));
    starts.map(move |start| &name[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_suffixes_start_at_labels() {
        let suffixes: Vec<&str> = label_suffixes("www.example.com").collect();

        assert_eq!(suffixes, ["www.example.com", "example.com", "com"]);
        assert_eq!(
            label_suffixes("localhost").collect::<Vec<_>>(),
            ["localhost"]
        );
    }
}
