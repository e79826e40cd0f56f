//! The daemon's nftables table, `inet tollgate`, built and removed over netlink.
//!
//! The table has two chains. `output` (route hook, mangle priority) marks outbound TCP and UDP so
//! policy routing loops it through `lo`. `prerouting` hands the looped packets to the
//! transparent listeners with TPROXY (port-53 traffic to the resolver's), and resets or drops
//! what no listener took. Other tables are never read or changed.

use std::{
    ffi::CStr,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    ptr::NonNull,
};

use nftnl::{
    Batch, Chain, ChainType, FinalizedBatch, Hook, MsgType, Policy, ProtoFamily, Rule, Table,
    expr::{
        Bitwise, Cmp, CmpOp, Expression, Immediate, InterfaceName, Payload, Register,
        TcpHeaderField, TransportHeaderField, UdpHeaderField,
    },
    nft_expr,
    nftnl_sys::{self as sys, libc},
    set::Set,
};

/// Name of the daemon's table in the `inet` family.
pub const TABLE_NAME: &CStr = c"tollgate";
const OUTPUT_CHAIN: &CStr = c"output";
const PREROUTING_CHAIN: &CStr = c"prerouting";
const ALLOWED_CHAIN: &CStr = c"allowed";
/// Set whose one element, refreshed by the running daemon, expires when the daemon dies.
const ALIVE_SET: &CStr = c"alive";
/// The key of the `alive` element: any constant works.
const ALIVE_KEY: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// Lifetime of the `alive` element. The daemon refreshes it every [`HEARTBEAT_INTERVAL`], so
/// forever-allowed traffic passes from at most this long after a crash.
pub const ALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
/// How often the daemon refreshes the `alive` element.
pub const HEARTBEAT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Priority of both chains: `mangle`, as `nft` names it.
const MANGLE_PRIORITY: i32 = -150;

// Values from the kernel's uapi headers that the libc crate does not define.
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
const NFTA_FIB_F_DADDR: u32 = 1 << 1;
const RTN_LOCAL: u32 = 2;

/// The parameters of the ruleset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpec {
    /// Loopback port of the transparent TCP listeners.
    pub tcp_port: u16,
    /// Loopback port of the transparent UDP listeners.
    pub udp_port: u16,
    /// Mark bit set on packets to divert.
    pub intercept_mark: u32,
    /// Mark of the daemon's own sockets.
    pub bypass_mark: u32,
    /// Diversion of DNS to the resolver, when it runs.
    pub dns: Option<DnsSpec>,
}

/// The parameters of the DNS diversion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSpec {
    /// Loopback port of the resolver's transparent UDP and TCP sockets.
    pub port: u16,
    /// Uids whose port-53 traffic is not diverted (local stub resolvers).
    pub exempt_uids: Vec<u32>,
}

/// A destination that a forever rule allows for every process, which the kernel lets pass on
/// its own while the daemon is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelAllow {
    /// Destination network, or `None` for any address.
    pub network: Option<(IpAddr, u8)>,
    /// IP protocol number (TCP or UDP), or `None` for both.
    pub protocol: Option<u8>,
    /// Destination ports, first and last included, or `None` for any port.
    pub ports: Option<(u16, u16)>,
}

/// Errors applying a batch to nftables.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The netlink socket could not be opened, or sending or receiving failed.
    #[error("failed to talk to nftables over netlink")]
    Netlink(#[source] io::Error),
    /// The kernel rejected the batch.
    #[error("nftables rejected the {operation} batch")]
    Rejected {
        /// Purpose of the batch, such as install or remove.
        operation: &'static str,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
}

/// Replaces the table with a fresh one built from `spec`, in one atomic batch. A table left by
/// a crashed run is deleted in the same batch.
///
/// While the `alive` element exists, diverted traffic goes to the daemon. When it expires
/// because the daemon stopped refreshing it, the `allowed` chain lets the destinations of
/// forever-allow rules pass without the daemon, and the rest is still diverted and stopped.
pub fn install(spec: &TableSpec, allowed: &[KernelAllow]) -> Result<(), NftError> {
    let mut batch = Batch::new();
    let table = Table::new(TABLE_NAME, ProtoFamily::Inet);
    // Adding an existing table is a no-op, so the delete that follows always has a target.
    batch.add(&table, MsgType::Add);
    batch.add(&table, MsgType::Del);
    batch.add(&table, MsgType::Add);

    let alive = alive_set(&table);
    batch.add(&alive, MsgType::Add);
    batch.add_iter(alive.elems_iter(), MsgType::Add);

    // The allowed chain is filled in batches of its own below: the kernel echoes every message
    // of a batch in its acknowledgment, and a large batch overflows the socket's buffer.
    let allowed_chain = Chain::new(ALLOWED_CHAIN, &table);
    batch.add(&allowed_chain, MsgType::Add);

    let mut output = Chain::new(OUTPUT_CHAIN, &table);
    output.set_hook(Hook::Out, MANGLE_PRIORITY);
    output.set_type(ChainType::Route);
    output.set_policy(Policy::Accept);
    batch.add(&output, MsgType::Add);
    for rule in output_rules(&output, spec, &alive) {
        batch.add(&rule, MsgType::Add);
    }

    let mut prerouting = Chain::new(PREROUTING_CHAIN, &table);
    prerouting.set_hook(Hook::PreRouting, MANGLE_PRIORITY);
    prerouting.set_type(ChainType::Filter);
    prerouting.set_policy(Policy::Accept);
    batch.add(&prerouting, MsgType::Add);
    for rule in prerouting_rules(&prerouting, spec) {
        batch.add(&rule, MsgType::Add);
    }

    send(&batch.finalize(), "install")?;
    replace_allowed(allowed)
}

/// Refreshes the `alive` element, telling the kernel the daemon still runs.
pub fn heartbeat() -> Result<(), NftError> {
    let table = Table::new(TABLE_NAME, ProtoFamily::Inet);
    let alive = alive_set(&table);
    // Delete and add in one batch gives the element a fresh timeout. An element that expired
    // cannot be deleted, so then it is only added. (Adding an existing one fails: the add
    // message carries NLM_F_EXCL.)
    let mut refresh = Batch::new();
    refresh.add_iter(alive.elems_iter(), MsgType::Del);
    refresh.add_iter(alive.elems_iter(), MsgType::Add);
    if send(&refresh.finalize(), "heartbeat").is_ok() {
        return Ok(());
    }
    let mut add = Batch::new();
    add.add_iter(alive.elems_iter(), MsgType::Add);
    send(&add.finalize(), "heartbeat")
}

/// Replaces the rules of the `allowed` chain, in batches small enough for the kernel's
/// acknowledgments to fit the socket buffer.
pub fn replace_allowed(allowed: &[KernelAllow]) -> Result<(), NftError> {
    let table = Table::new(TABLE_NAME, ProtoFamily::Inet);
    let chain = Chain::new(ALLOWED_CHAIN, &table);
    let rules = allowed_rules(&chain, allowed);
    let mut batch = Batch::new();
    // A rule deletion without a handle flushes the chain.
    batch.add(&Rule::new(&chain), MsgType::Del);
    let mut in_batch = 0;
    for rule in &rules {
        batch.add(rule, MsgType::Add);
        in_batch += 1;
        if in_batch == RULES_PER_BATCH {
            send(&batch.finalize(), "replace allowed")?;
            batch = Batch::new();
            in_batch = 0;
        }
    }
    send(&batch.finalize(), "replace allowed")
}

/// Rules sent in one batch when filling the `allowed` chain.
const RULES_PER_BATCH: usize = 64;

/// Deletes the table if it exists.
pub fn remove() -> Result<(), NftError> {
    let mut batch = Batch::new();
    let table = Table::new(TABLE_NAME, ProtoFamily::Inet);
    batch.add(&table, MsgType::Add);
    batch.add(&table, MsgType::Del);
    send(&batch.finalize(), "remove")
}

/// Rules of the output chain: skip the daemon's own packets, mark queries to local stub
/// resolvers, skip other local destinations, then mark every other TCP and UDP packet for
/// diversion.
fn output_rules<'a>(
    chain: &'a Chain<'a>,
    spec: &TableSpec,
    alive: &Set<'_, Ipv4Addr>,
) -> Vec<Rule<'a>> {
    let mut rules = Vec::new();

    let mut own = Rule::new(chain);
    own.add_expr(&nft_expr!(meta mark));
    own.add_expr(&Bitwise::new(spec.bypass_mark, 0u32));
    own.add_expr(&Cmp::new(CmpOp::Eq, spec.bypass_mark));
    own.add_expr(&nft_expr!(verdict return));
    rules.push(own);

    // DNS comes before the local destinations, so that queries to a local stub resolver reach
    // the resolver too.
    if let Some(dns) = &spec.dns {
        rules.extend(dns_exempt_rules(chain, dns));
        rules.extend(local_stub_rules(chain, spec, alive));
    }

    // Loopback, the namespace's own addresses and replies of transparent sockets.
    let mut local = Rule::new(chain);
    local.add_expr(&FibDaddrType);
    local.add_expr(&Cmp::new(CmpOp::Eq, RTN_LOCAL));
    local.add_expr(&nft_expr!(verdict return));
    rules.push(local);

    let v4_skipped = [
        (Ipv4Addr::new(127, 0, 0, 0), 8),
        (Ipv4Addr::new(224, 0, 0, 0), 4),
        (Ipv4Addr::BROADCAST, 32),
    ];
    for (network, prefix) in v4_skipped {
        let mut rule = Rule::new(chain);
        rule.add_expr(&nft_expr!(meta nfproto));
        rule.add_expr(&Cmp::new(CmpOp::Eq, libc::NFPROTO_IPV4 as u8));
        rule.add_expr(&nft_expr!(payload ipv4 daddr));
        rule.add_expr(&Bitwise::new(v4_mask(prefix), Ipv4Addr::UNSPECIFIED));
        rule.add_expr(&Cmp::new(CmpOp::Eq, network));
        rule.add_expr(&nft_expr!(verdict return));
        rules.push(rule);
    }
    let v6_skipped = [
        (Ipv6Addr::LOCALHOST, 128),
        (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
        (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),
    ];
    for (network, prefix) in v6_skipped {
        let mut rule = Rule::new(chain);
        rule.add_expr(&nft_expr!(meta nfproto));
        rule.add_expr(&Cmp::new(CmpOp::Eq, libc::NFPROTO_IPV6 as u8));
        rule.add_expr(&nft_expr!(payload ipv6 daddr));
        rule.add_expr(&Bitwise::new(v6_mask(prefix), Ipv6Addr::UNSPECIFIED));
        rule.add_expr(&Cmp::new(CmpOp::Eq, network));
        rule.add_expr(&nft_expr!(verdict return));
        rules.push(rule);
    }

    // With the daemon gone, forever-allowed destinations leave directly.
    let mut orphaned = Rule::new(chain);
    orphaned.add_expr(&Immediate::new(ALIVE_KEY.octets(), Register::Reg1));
    orphaned.add_expr(&SetLookup::missing_from(alive));
    orphaned.add_expr(&nft_expr!(verdict jump ALLOWED_CHAIN.to_owned()));
    rules.push(orphaned);

    if spec.dns.is_some() {
        rules.push(dns_mark_rule(chain, spec));
    }

    for protocol in [libc::IPPROTO_TCP, libc::IPPROTO_UDP] {
        let mut mark = Rule::new(chain);
        mark.add_expr(&nft_expr!(meta l4proto));
        mark.add_expr(&Cmp::new(CmpOp::Eq, protocol as u8));
        mark.add_expr(&nft_expr!(meta mark));
        mark.add_expr(&Bitwise::new(!spec.intercept_mark, spec.intercept_mark));
        mark.add_expr(&nft_expr!(meta mark set));
        rules.push(mark);
    }

    rules
}

/// Rules of the prerouting chain: hand TCP packets that we looped through `lo` to the listener.
fn prerouting_rules<'a>(chain: &'a Chain<'a>, spec: &TableSpec) -> Vec<Rule<'a>> {
    let mut rules = Vec::new();

    let mut foreign = Rule::new(chain);
    foreign.add_expr(&nft_expr!(meta iifname));
    foreign.add_expr(&Cmp::new(
        CmpOp::Neq,
        InterfaceName::Exact(c"lo".to_owned()),
    ));
    foreign.add_expr(&nft_expr!(verdict return));
    rules.push(foreign);

    let mut unmarked = Rule::new(chain);
    unmarked.add_expr(&nft_expr!(meta mark));
    unmarked.add_expr(&Bitwise::new(spec.intercept_mark, 0u32));
    unmarked.add_expr(&Cmp::new(CmpOp::Neq, spec.intercept_mark));
    unmarked.add_expr(&nft_expr!(verdict return));
    rules.push(unmarked);

    // DNS first, because the generic TCP rules below would take TCP port 53 too.
    if let Some(dns) = &spec.dns {
        for protocol in [libc::IPPROTO_UDP, libc::IPPROTO_TCP] {
            rules.push(tproxy_dns(chain, libc::NFPROTO_IPV4, protocol, dns.port));
            rules.push(tproxy_dns(chain, libc::NFPROTO_IPV6, protocol, dns.port));
        }
    }

    let listeners = [
        (libc::IPPROTO_TCP, spec.tcp_port),
        (libc::IPPROTO_UDP, spec.udp_port),
    ];
    for (protocol, port) in listeners {
        rules.push(tproxy_rule(chain, libc::NFPROTO_IPV4, protocol, port));
        rules.push(tproxy_rule(chain, libc::NFPROTO_IPV6, protocol, port));
    }

    // TPROXY falls through when no listener exists, as after a crash of the daemon: stop the
    // packet instead of letting it reach the local stack. TCP gets a reset, so programs fail
    // at once.
    let mut tcp_orphan = Rule::new(chain);
    tcp_orphan.add_expr(&nft_expr!(meta l4proto));
    tcp_orphan.add_expr(&Cmp::new(CmpOp::Eq, libc::IPPROTO_TCP as u8));
    tcp_orphan.add_expr(&Reject::TCP_RESET);
    rules.push(tcp_orphan);
    // NOTE: an ICMP reject here sends nothing for packets looped through `lo` (verified on
    // Linux 6.18), so orphaned UDP is dropped and the program sees a timeout.
    let mut udp_orphan = Rule::new(chain);
    udp_orphan.add_expr(&nft_expr!(meta l4proto));
    udp_orphan.add_expr(&Cmp::new(CmpOp::Eq, libc::IPPROTO_UDP as u8));
    udp_orphan.add_expr(&nft_expr!(verdict drop));
    rules.push(udp_orphan);

    rules
}

/// Rules of the `allowed` chain: one `accept` per forever-allowed destination.
fn allowed_rules<'a>(chain: &'a Chain<'a>, allowed: &[KernelAllow]) -> Vec<Rule<'a>> {
    let mut rules = Vec::new();
    for allow in allowed {
        let protocols = match allow.protocol {
            Some(protocol) => vec![protocol],
            None => vec![libc::IPPROTO_TCP as u8, libc::IPPROTO_UDP as u8],
        };
        for protocol in protocols {
            let mut rule = Rule::new(chain);
            match allow.network {
                Some((IpAddr::V4(network), prefix)) => {
                    rule.add_expr(&nft_expr!(meta nfproto));
                    rule.add_expr(&Cmp::new(CmpOp::Eq, libc::NFPROTO_IPV4 as u8));
                    rule.add_expr(&nft_expr!(payload ipv4 daddr));
                    rule.add_expr(&Bitwise::new(
                        v4_mask(u32::from(prefix)),
                        Ipv4Addr::UNSPECIFIED,
                    ));
                    rule.add_expr(&Cmp::new(CmpOp::Eq, network));
                }
                Some((IpAddr::V6(network), prefix)) => {
                    rule.add_expr(&nft_expr!(meta nfproto));
                    rule.add_expr(&Cmp::new(CmpOp::Eq, libc::NFPROTO_IPV6 as u8));
                    rule.add_expr(&nft_expr!(payload ipv6 daddr));
                    rule.add_expr(&Bitwise::new(
                        v6_mask(u32::from(prefix)),
                        Ipv6Addr::UNSPECIFIED,
                    ));
                    rule.add_expr(&Cmp::new(CmpOp::Eq, network));
                }
                None => {}
            }
            rule.add_expr(&nft_expr!(meta l4proto));
            rule.add_expr(&Cmp::new(CmpOp::Eq, protocol));
            if let Some((first, last)) = allow.ports {
                let field = if i32::from(protocol) == libc::IPPROTO_TCP {
                    TransportHeaderField::Tcp(TcpHeaderField::Dport)
                } else {
                    TransportHeaderField::Udp(UdpHeaderField::Dport)
                };
                rule.add_expr(&Payload::Transport(field));
                // Ports are compared as big-endian bytes, which orders them as numbers.
                if first == last {
                    rule.add_expr(&Cmp::new(CmpOp::Eq, first.to_be()));
                } else {
                    rule.add_expr(&Cmp::new(CmpOp::Gte, first.to_be()));
                    rule.add_expr(&Payload::Transport(field));
                    rule.add_expr(&Cmp::new(CmpOp::Lte, last.to_be()));
                }
            }
            rule.add_expr(&nft_expr!(verdict accept));
            rules.push(rule);
        }
    }
    rules
}

/// The `alive` set (IPv4 address keys, elements with timeouts) with its one element.
fn alive_set(table: &Table) -> Set<'_, Ipv4Addr> {
    let set = Set::new_named(ALIVE_SET, 1, table, ProtoFamily::Inet);
    let raw = set.as_ptr().as_ptr();
    // SAFETY: `raw` is the live set just created; flags is a u32 attribute.
    unsafe {
        sys::nftnl_set_set_u32(
            raw,
            sys::NFTNL_SET_FLAGS as u16,
            libc::NFT_SET_TIMEOUT as u32,
        );
    }
    // SAFETY: plain allocation; NULL is handled below.
    let raw_element = unsafe { sys::nftnl_set_elem_alloc() };
    // As for expressions, NULL means a small allocation failed.
    let Some(element) = NonNull::new(raw_element) else {
        std::process::abort();
    };
    let key = ALIVE_KEY.octets();
    let timeout_ms = u64::try_from(ALIVE_TIMEOUT.as_millis()).unwrap_or(u64::MAX);
    // SAFETY: `element` is live; the key points to 4 bytes that libnftnl copies; the set takes
    // ownership of the element and frees it with the set.
    unsafe {
        sys::nftnl_set_elem_set(
            element.as_ptr(),
            sys::NFTNL_SET_ELEM_KEY as u16,
            key.as_ptr().cast(),
            key.len() as u32,
        );
        sys::nftnl_set_elem_set_u64(
            element.as_ptr(),
            sys::NFTNL_SET_ELEM_TIMEOUT as u16,
            timeout_ms,
        );
        sys::nftnl_set_elem_add(raw, element.as_ptr());
    }
    set
}

/// `lookup`: matches when register 1 is in the set, or with `inverted` when it is not.
struct SetLookup {
    set_name: std::ffi::CString,
    set_id: u32,
    inverted: bool,
}

impl SetLookup {
    fn member_of(set: &Set<'_, Ipv4Addr>) -> Self {
        Self {
            set_name: set.get_name().to_owned(),
            set_id: set.get_id(),
            inverted: false,
        }
    }

    fn missing_from(set: &Set<'_, Ipv4Addr>) -> Self {
        Self {
            inverted: true,
            ..Self::member_of(set)
        }
    }
}

impl Expression for SetLookup {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let expr = alloc_expr(c"lookup");
        let flags = if self.inverted {
            libc::NFT_LOOKUP_F_INV as u32
        } else {
            0
        };
        // SAFETY: `expr` is a live lookup expression; the set name is NUL-terminated and copied.
        unsafe {
            let raw = expr.as_ptr();
            sys::nftnl_expr_set_u32(
                raw,
                sys::NFTNL_EXPR_LOOKUP_SREG as u16,
                libc::NFT_REG_1 as u32,
            );
            sys::nftnl_expr_set_str(
                raw,
                sys::NFTNL_EXPR_LOOKUP_SET as u16,
                self.set_name.as_ptr(),
            );
            sys::nftnl_expr_set_u32(raw, sys::NFTNL_EXPR_LOOKUP_SET_ID as u16, self.set_id);
            sys::nftnl_expr_set_u32(raw, sys::NFTNL_EXPR_LOOKUP_FLAGS as u16, flags);
        }
        expr
    }
}

/// `meta nfproto FAMILY meta l4proto PROTOCOL tproxy to [LOOPBACK]:PORT accept`.
fn tproxy_rule<'a>(chain: &'a Chain<'a>, family: i32, protocol: i32, port: u16) -> Rule<'a> {
    let mut rule = Rule::new(chain);
    rule.add_expr(&nft_expr!(meta nfproto));
    rule.add_expr(&Cmp::new(CmpOp::Eq, family as u8));
    rule.add_expr(&nft_expr!(meta l4proto));
    rule.add_expr(&Cmp::new(CmpOp::Eq, protocol as u8));
    add_tproxy(&mut rule, family, port);
    rule
}

/// Adds `tproxy to [LOOPBACK]:PORT accept` for one address family.
fn add_tproxy(rule: &mut Rule<'_>, family: i32, port: u16) {
    if family == libc::NFPROTO_IPV4 {
        rule.add_expr(&Immediate::new(
            Ipv4Addr::LOCALHOST.octets(),
            Register::Reg1,
        ));
    } else {
        rule.add_expr(&Immediate::new(
            Ipv6Addr::LOCALHOST.octets(),
            Register::Reg1,
        ));
    }
    rule.add_expr(&Immediate::new(port.to_be(), Register::Reg2));
    rule.add_expr(&Tproxy { family });
    rule.add_expr(&nft_expr!(verdict accept));
}

/// Output rules that let the exempt users' port-53 traffic return unmarked.
fn dns_exempt_rules<'a>(chain: &'a Chain<'a>, dns: &DnsSpec) -> Vec<Rule<'a>> {
    let mut rules = Vec::new();
    for &uid in &dns.exempt_uids {
        for protocol in [libc::IPPROTO_UDP, libc::IPPROTO_TCP] {
            let mut exempt = Rule::new(chain);
            add_dns_match(&mut exempt, protocol);
            exempt.add_expr(&nft_expr!(meta skuid));
            exempt.add_expr(&Cmp::new(CmpOp::Eq, uid));
            exempt.add_expr(&nft_expr!(verdict return));
            rules.push(exempt);
        }
    }
    rules
}

/// Output rules that mark UDP and TCP port-53 packets to a local address (a stub resolver such
/// as systemd-resolved's 127.0.0.53), which the `fib daddr type local` rule would otherwise let
/// pass. They apply only while the `alive` element exists: after a crash of the daemon, queries
/// reach the stub directly instead of being dropped with no resolver to take them.
///
/// The resolver's own queries to the stub carry the bypass mark and returned earlier. The
/// answers of the stub and of the resolver's transparent sockets come from port 53 and go to
/// the client's port, so they do not match.
fn local_stub_rules<'a>(
    chain: &'a Chain<'a>,
    spec: &TableSpec,
    alive: &Set<'_, Ipv4Addr>,
) -> Vec<Rule<'a>> {
    let mut rules = Vec::new();
    for protocol in [libc::IPPROTO_UDP, libc::IPPROTO_TCP] {
        let mut rule = Rule::new(chain);
        add_dns_match(&mut rule, protocol);
        rule.add_expr(&FibDaddrType);
        rule.add_expr(&Cmp::new(CmpOp::Eq, RTN_LOCAL));
        rule.add_expr(&Immediate::new(ALIVE_KEY.octets(), Register::Reg1));
        rule.add_expr(&SetLookup::member_of(alive));
        add_intercept_mark(&mut rule, spec.intercept_mark);
        rule.add_expr(&nft_expr!(verdict return));
        rules.push(rule);
    }
    rules
}

/// Builds the output rule that marks UDP packets to port 53 (TCP is marked with all TCP).
fn dns_mark_rule<'a>(chain: &'a Chain<'a>, spec: &TableSpec) -> Rule<'a> {
    let mut mark = Rule::new(chain);
    add_dns_match(&mut mark, libc::IPPROTO_UDP);
    add_intercept_mark(&mut mark, spec.intercept_mark);
    mark
}

/// Adds `meta mark set meta mark | INTERCEPT_MARK`.
fn add_intercept_mark(rule: &mut Rule<'_>, intercept_mark: u32) {
    rule.add_expr(&nft_expr!(meta mark));
    rule.add_expr(&Bitwise::new(!intercept_mark, intercept_mark));
    rule.add_expr(&nft_expr!(meta mark set));
}

/// `nfproto FAMILY l4proto PROTOCOL dport 53 tproxy to LOOPBACK:port accept`.
fn tproxy_dns<'a>(chain: &'a Chain<'a>, family: i32, protocol: i32, port: u16) -> Rule<'a> {
    let mut rule = Rule::new(chain);
    rule.add_expr(&nft_expr!(meta nfproto));
    rule.add_expr(&Cmp::new(CmpOp::Eq, family as u8));
    add_dns_match(&mut rule, protocol);
    add_tproxy(&mut rule, family, port);
    rule
}

/// Adds `l4proto PROTOCOL th dport 53`. TCP and UDP keep the destination port at the same
/// offset, so the TCP payload expression serves both.
fn add_dns_match(rule: &mut Rule<'_>, protocol: i32) {
    rule.add_expr(&nft_expr!(meta l4proto));
    rule.add_expr(&Cmp::new(CmpOp::Eq, protocol as u8));
    rule.add_expr(&nft_expr!(payload tcp dport));
    rule.add_expr(&Cmp::new(CmpOp::Eq, DNS_PORT.to_be()));
}

/// The DNS port that is diverted.
const DNS_PORT: u16 = 53;

fn v4_mask(prefix: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::MAX.checked_shl(32 - prefix).unwrap_or(0))
}

fn v6_mask(prefix: u32) -> Ipv6Addr {
    Ipv6Addr::from(u128::MAX.checked_shl(128 - prefix).unwrap_or(0))
}

/// `fib daddr type`: loads the route type of the destination address into register 1.
struct FibDaddrType;

impl Expression for FibDaddrType {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let expr = alloc_expr(c"fib");
        // SAFETY: `expr` is a live expression of type fib, and these attributes take u32 values.
        unsafe {
            let raw = expr.as_ptr();
            sys::nftnl_expr_set_u32(raw, sys::NFTNL_EXPR_FIB_DREG as u16, libc::NFT_REG_1 as u32);
            sys::nftnl_expr_set_u32(
                raw,
                sys::NFTNL_EXPR_FIB_RESULT as u16,
                NFT_FIB_RESULT_ADDRTYPE,
            );
            sys::nftnl_expr_set_u32(raw, sys::NFTNL_EXPR_FIB_FLAGS as u16, NFTA_FIB_F_DADDR);
        }
        expr
    }
}

/// `tproxy`: assigns the packet to the transparent socket whose address is in register 1 and
/// port in register 2, for one address family.
struct Tproxy {
    family: i32,
}

impl Expression for Tproxy {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let expr = alloc_expr(c"tproxy");
        // SAFETY: `expr` is a live expression of type tproxy, and these attributes take u32
        // values.
        unsafe {
            let raw = expr.as_ptr();
            sys::nftnl_expr_set_u32(
                raw,
                sys::NFTNL_EXPR_TPROXY_FAMILY as u16,
                self.family as u32,
            );
            sys::nftnl_expr_set_u32(
                raw,
                sys::NFTNL_EXPR_TPROXY_REG_ADDR as u16,
                libc::NFT_REG_1 as u32,
            );
            sys::nftnl_expr_set_u32(
                raw,
                sys::NFTNL_EXPR_TPROXY_REG_PORT as u16,
                libc::NFT_REG_2 as u32,
            );
        }
        expr
    }
}

/// `reject`: answers the packet with a TCP reset, then drops it.
struct Reject {
    kind: u32,
    code: u8,
}

impl Reject {
    /// `reject with tcp reset`.
    const TCP_RESET: Self = Self {
        kind: libc::NFT_REJECT_TCP_RST as u32,
        code: 0,
    };
}

impl Expression for Reject {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let expr = alloc_expr(c"reject");
        // SAFETY: `expr` is a live expression of type reject; its type is a u32 and its code a
        // u8, as libnftnl's reject expression defines them.
        unsafe {
            let raw = expr.as_ptr();
            sys::nftnl_expr_set_u32(raw, sys::NFTNL_EXPR_REJECT_TYPE as u16, self.kind);
            sys::nftnl_expr_set_u8(raw, sys::NFTNL_EXPR_REJECT_CODE as u16, self.code);
        }
        expr
    }
}

fn alloc_expr(name: &CStr) -> NonNull<sys::nftnl_expr> {
    // SAFETY: `name` is a valid NUL-terminated string that libnftnl copies.
    let raw = unsafe { sys::nftnl_expr_alloc(name.as_ptr()) };
    match NonNull::new(raw) {
        Some(expr) => expr,
        // libnftnl returns NULL only when a small allocation fails, as the nftnl crate assumes.
        None => std::process::abort(),
    }
}

/// Sends a finalized batch and checks the kernel's acknowledgment of every message.
fn send(batch: &FinalizedBatch, operation: &'static str) -> Result<(), NftError> {
    let socket = mnl::Socket::new(mnl::Bus::Netfilter).map_err(NftError::Netlink)?;
    let port_id = socket.portid();
    socket.send_all(batch).map_err(NftError::Netlink)?;

    let mut buffer = vec![0u8; nftnl::nft_nlmsg_maxsize() as usize];
    let mut expected = batch.sequence_numbers();
    while !expected.is_empty() {
        let messages = socket.recv(&mut buffer[..]).map_err(NftError::Netlink)?;
        for message in messages {
            let message = message.map_err(NftError::Netlink)?;
            let Some(sequence) = expected.next() else {
                break;
            };
            mnl::cb_run(message, sequence, port_id)
                .map_err(|source| NftError::Rejected { operation, source })?;
        }
    }
    Ok(())
}
