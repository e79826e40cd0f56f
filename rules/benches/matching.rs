//! Lookup time of `RuleSet::decide` with 100,000 mixed rules, against a scan of every rule.
//!
//! Run with `cargo bench -p tollgate-rules --bench matching`. The rule set mixes exact
//! executables, executable globs, host names, domains, IPv4 and IPv6 networks and single
//! addresses; the connections mix hits and misses. The bench also prints the memory that the
//! rule set takes, counted by a wrapping global allocator.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    hint::black_box,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::atomic::{AtomicIsize, Ordering},
};

use criterion::{Criterion, criterion_group, criterion_main};
use tollgate_rules::{
    Action, AddressMatch, Clock, ConnectionFacts, Destination, Lifetime, PortMatch, Protocol, Rule,
    RuleId, RuleSet, Subject,
};

/// Number of rules in the benchmarked set.
const RULES: usize = 100_000;

/// Number of distinct connections the lookups cycle through.
const CONNECTIONS: usize = 4096;

const NOW: Clock = Clock {
    unix_ms: 1_700_000_000_000,
    boottime_ms: 1_000_000,
};

/// Counts the bytes currently allocated, to report the size of the rule set.
struct CountingAllocator;

static ALLOCATED: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call forwards to the system allocator unchanged; the counter only observes.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we pass on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        ALLOCATED.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract, which we pass on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// A xorshift generator, so that every run builds the same rules and connections.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
}

/// Builds rule `index` of the mix: by tenths, 3 exact executables, 1 executable glob,
/// 2 domains, 1 host name, 2 networks (IPv4 /16 and /24, IPv6 /48) and 1 single address.
fn mixed_rule(index: usize, random: &mut Random) -> Rule {
    let n = index / 10;
    let (subject, address) = match index % 10 {
        0..=2 => {
            let subject = Subject::executable(format!("/usr/bin/app{n}"));
            let address = match random.below(3) {
                0 => AddressMatch::Any,
                1 => parse(&format!("*.site{}.example", random.below(20_000))),
                _ => parse(&format!("10.{}.0.0/16", random.below(256))),
            };
            (subject, address)
        }
        3 => {
            let subject = Subject {
                executable: Some(parse_text(&format!("/opt/vendor{n}/bin/*"))),
                ..Subject::any()
            };
            (subject, AddressMatch::Any)
        }
        4 | 5 => (
            Subject::any(),
            parse(&format!("*.site{}.example", index / 5)),
        ),
        6 => (Subject::any(), parse(&format!("www.host{n}.example"))),
        7 => {
            let (a, b) = (random.below(256), random.below(256));
            (Subject::any(), parse(&format!("10.{a}.{b}.0/24")))
        }
        8 => {
            let network = format!("2001:db8:{:x}::/48", n);
            (Subject::any(), parse(&network))
        }
        _ => {
            let ip = Ipv4Addr::from_bits(0xC612_0000 | n as u32);
            (Subject::any(), AddressMatch::Ip(ip.into()))
        }
    };
    let port = match random.below(4) {
        0 => PortMatch::Port(443),
        1 => PortMatch::List(vec![80, 443]),
        _ => PortMatch::Any,
    };
    let destination = Destination {
        address,
        port,
        ..Destination::any()
    };
    let action = if random.below(3) == 0 {
        Action::Deny
    } else {
        Action::Allow
    };
    Rule::new(
        RuleId(index as u64 + 1),
        subject,
        destination,
        action,
        Lifetime::Forever,
    )
}

fn parse(text: &str) -> AddressMatch {
    text.parse().expect("benchmark address parses")
}

fn parse_text<T: std::str::FromStr>(text: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    text.parse().expect("benchmark value parses")
}

/// Builds a connection: a known or unknown executable, zero to two host names, and an IPv4
/// or IPv6 address that some rules cover.
fn connection(random: &mut Random) -> ConnectionFacts {
    let ip: IpAddr = match random.below(3) {
        0 => Ipv4Addr::new(10, random.below(256) as u8, random.below(256) as u8, 7).into(),
        1 => Ipv6Addr::new(0x2001, 0xdb8, random.below(20_000) as u16, 0, 0, 0, 0, 1).into(),
        _ => Ipv4Addr::from_bits(0xC612_0000 | random.below(20_000) as u32).into(),
    };
    let mut facts = ConnectionFacts::to(ip, 443, Protocol::Tcp);
    facts.executable = match random.below(4) {
        0 => None,
        1 => Some(format!("/opt/vendor{}/bin/tool", random.below(12_000)).into()),
        _ => Some(format!("/usr/bin/app{}", random.below(12_000)).into()),
    };
    facts.uid = Some(1000);
    facts.hosts = match random.below(3) {
        0 => Vec::new(),
        1 => vec![format!("api.site{}.example", random.below(25_000))],
        _ => vec![
            format!("www.host{}.example", random.below(12_000)),
            format!("edge{}.cdn.example", random.below(100)),
        ],
    };
    facts
}

fn build(count: usize) -> RuleSet {
    let mut random = Random(0x9E37_79B9_7F4A_7C15);
    RuleSet::from_rules((0..count).map(|index| mixed_rule(index, &mut random)))
}

fn connections() -> Vec<ConnectionFacts> {
    let mut random = Random(0xD1B5_4A32_D192_ED03);
    (0..CONNECTIONS).map(|_| connection(&mut random)).collect()
}

fn bench_lookups(c: &mut Criterion) {
    let before = ALLOCATED.load(Ordering::Relaxed);
    let set = build(RULES);
    let bytes = ALLOCATED.load(Ordering::Relaxed) - before;
    println!(
        "rule set of {RULES} rules: {:.1} MiB ({} bytes per rule)",
        bytes as f64 / (1024.0 * 1024.0),
        bytes / RULES as isize
    );
    let connections = connections();
    let decided = connections
        .iter()
        .filter(|facts| set.decide(&facts.as_connection(), &NOW).is_some())
        .count();
    println!("{decided} of {CONNECTIONS} connections match a rule");

    let mut group = c.benchmark_group("decide_100k");
    let mut next = 0;
    group.bench_function("index", |b| {
        b.iter(|| {
            let facts = &connections[next % CONNECTIONS];
            next += 1;
            black_box(set.decide(black_box(&facts.as_connection()), &NOW))
        });
    });
    group.sample_size(10);
    group.bench_function("scan", |b| {
        b.iter(|| {
            let facts = &connections[next % CONNECTIONS];
            next += 1;
            black_box(set.decide_by_scan(black_box(&facts.as_connection()), &NOW))
        });
    });
    group.finish();
}

criterion_group!(benches, bench_lookups);
criterion_main!(benches);
