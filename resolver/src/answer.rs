//! The facts of one DNS answer: the queried name, its CNAME chain and the addresses it resolved
//! to, extracted from the answer records without I/O.

use std::net::{IpAddr, SocketAddr};

use hickory_proto::rr::{Name, RData, Record};

use crate::{
    asker::{Asker, Transport},
    domain::DomainName,
};

/// One answered query, as the name map records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Who asked.
    pub asker: Asker,
    /// The client's address and port.
    pub client: SocketAddr,
    /// The transport of the query.
    pub transport: Transport,
    /// The CNAME chain: the queried name first, then each alias target in order.
    pub chain: Vec<DomainName>,
    /// The A and AAAA addresses of the last name in the chain.
    pub addresses: Vec<AnswerAddress>,
}

/// One address of an answer with its time to live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerAddress {
    /// The address.
    pub ip: IpAddr,
    /// Time to live in seconds, as the answer gave it.
    pub ttl: u32,
}

impl Answer {
    /// Returns the queried name.
    pub fn name(&self) -> &DomainName {
        // `chain_and_addresses` never returns an empty chain, and the handler records only its
        // chains.
        &self.chain[0]
    }
}

/// Follows the CNAME records in `records` from `query`, returning the chain (the query first)
/// and the A and AAAA addresses of every name in it. Records for other names are ignored, so a
/// hostile answer cannot attach addresses to a name that was not asked for. Returns `None` when
/// `query` is not a valid domain name.
pub fn chain_and_addresses(
    query: &Name,
    records: &[Record],
) -> Option<(Vec<DomainName>, Vec<AnswerAddress>)> {
    let mut names = vec![query.clone()];
    // Each step adds one name, and an alias loop stops at a name seen before.
    while names.len() <= MAX_CHAIN {
        let current = &names[names.len() - 1];
        let next = records.iter().find_map(|record| match &record.data {
            RData::CNAME(target) if record.name == *current => Some(target.0.clone()),
            _ => None,
        });
        match next {
            Some(target) if !names.contains(&target) => names.push(target),
            _ => break,
        }
    }

    let addresses = records
        .iter()
        .filter(|record| names.contains(&record.name))
        .filter_map(|record| match &record.data {
            RData::A(a) => Some(AnswerAddress {
                ip: IpAddr::V4(a.0),
                ttl: record.ttl,
            }),
            RData::AAAA(aaaa) => Some(AnswerAddress {
                ip: IpAddr::V6(aaaa.0),
                ttl: record.ttl,
            }),
            _ => None,
        })
        .collect();
    let chain = names
        .iter()
        .map(|name| DomainName::parse(&name.to_ascii()))
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    Some((chain, addresses))
}

/// Longest CNAME chain followed; resolvers give up much earlier (BIND after 16 steps).
const MAX_CHAIN: usize = 32;

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use hickory_proto::rr::rdata::{A, AAAA, CNAME};

    use super::*;

    fn name(text: &str) -> Name {
        Name::from_ascii(text).unwrap()
    }

    fn cname(from: &str, to: &str) -> Record {
        Record::from_rdata(name(from), 300, RData::CNAME(CNAME(name(to))))
    }

    #[test]
    fn follows_chain_to_addresses() {
        let records = [
            cname("www.shop.test.", "shop.cdn.test."),
            cname("shop.cdn.test.", "edge.cdn.test."),
            Record::from_rdata(
                name("edge.cdn.test."),
                30,
                RData::A(A(Ipv4Addr::new(192, 0, 2, 7))),
            ),
            Record::from_rdata(
                name("edge.cdn.test."),
                40,
                RData::AAAA(AAAA(Ipv6Addr::LOCALHOST)),
            ),
            Record::from_rdata(
                name("other.test."),
                30,
                RData::A(A(Ipv4Addr::new(192, 0, 2, 9))),
            ),
        ];
        let (chain, addresses) = chain_and_addresses(&name("WWW.shop.test."), &records).unwrap();
        let chain: Vec<&str> = chain.iter().map(DomainName::as_str).collect();
        assert_eq!(chain, ["www.shop.test", "shop.cdn.test", "edge.cdn.test"]);
        assert_eq!(addresses.len(), 2, "{addresses:?}");
        assert_eq!(addresses[0].ip, IpAddr::from([192, 0, 2, 7]));
        assert_eq!(addresses[0].ttl, 30);
        assert_eq!(addresses[1].ttl, 40);
    }

    #[test]
    fn alias_loop_terminates() {
        let records = [cname("a.test.", "b.test."), cname("b.test.", "a.test.")];
        let (chain, addresses) = chain_and_addresses(&name("a.test."), &records).unwrap();
        assert_eq!(chain.len(), 2);
        assert!(addresses.is_empty());
    }
}
