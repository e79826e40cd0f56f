//! The daemon's nftables table, `inet tollgate`, built and removed over netlink.
//!
//! The table has two chains. `output` (route hook, mangle priority) marks all outbound TCP and
//! UDP to port 53, so that policy routing loops it through `lo`. `prerouting` hands the looped
//! packets to the transparent listeners with TPROXY (port-53 traffic to the resolver's) and
//! resets TCP that no listener took. Other tables are never read or changed.

use std::{
    ffi::CStr,
    io,
    net::{Ipv4Addr, Ipv6Addr},
    ptr::NonNull,
};

use nftnl::{
    Batch, Chain, ChainType, FinalizedBatch, Hook, MsgType, Policy, ProtoFamily, Rule, Table,
    expr::{Bitwise, Cmp, CmpOp, Expression, Immediate, InterfaceName, Register},
    nft_expr,
    nftnl_sys::{self as sys, libc},
};

/// Name of the daemon's table in the `inet` family.
pub const TABLE_NAME: &CStr = c"tollgate";
const OUTPUT_CHAIN: &CStr = c"output";
const PREROUTING_CHAIN: &CStr = c"prerouting";

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
pub fn install(spec: &TableSpec) -> Result<(), NftError> {
    let mut batch = Batch::new();
    let table = Table::new(TABLE_NAME, ProtoFamily::Inet);
    // Adding an existing table is a no-op, so the delete that follows always has a target.
    batch.add(&table, MsgType::Add);
    batch.add(&table, MsgType::Del);
    batch.add(&table, MsgType::Add);

    let mut output = Chain::new(OUTPUT_CHAIN, &table);
    output.set_hook(Hook::Out, MANGLE_PRIORITY);
    output.set_type(ChainType::Route);
    output.set_policy(Policy::Accept);
    batch.add(&output, MsgType::Add);
    for rule in output_rules(&output, spec) {
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

    send(&batch.finalize(), "install")
}

/// Deletes the table if it exists.
pub fn remove() -> Result<(), NftError> {
    let mut batch = Batch::new();
    let table = Table::new(TABLE_NAME, ProtoFamily::Inet);
    batch.add(&table, MsgType::Add);
    batch.add(&table, MsgType::Del);
    send(&batch.finalize(), "remove")
}

/// Rules of the output chain: skip the daemon's own packets and local destinations, then mark
/// every other TCP packet for diversion.
fn output_rules<'a>(chain: &'a Chain<'a>, spec: &TableSpec) -> Vec<Rule<'a>> {
    let mut rules = Vec::new();

    let mut own = Rule::new(chain);
    own.add_expr(&nft_expr!(meta mark));
    own.add_expr(&Bitwise::new(spec.bypass_mark, 0u32));
    own.add_expr(&Cmp::new(CmpOp::Eq, spec.bypass_mark));
    own.add_expr(&nft_expr!(verdict return));
    rules.push(own);

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

    if let Some(dns) = &spec.dns {
        rules.extend(dns_output_rules(chain, spec, dns));
    }

    let mut mark = Rule::new(chain);
    mark.add_expr(&nft_expr!(meta l4proto));
    mark.add_expr(&Cmp::new(CmpOp::Eq, libc::IPPROTO_TCP as u8));
    mark.add_expr(&nft_expr!(meta mark));
    mark.add_expr(&Bitwise::new(!spec.intercept_mark, spec.intercept_mark));
    mark.add_expr(&nft_expr!(meta mark set));
    rules.push(mark);

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

    let port = spec.tcp_port.to_be();
    let mut v4 = Rule::new(chain);
    v4.add_expr(&nft_expr!(meta nfproto));
    v4.add_expr(&Cmp::new(CmpOp::Eq, libc::NFPROTO_IPV4 as u8));
    v4.add_expr(&nft_expr!(meta l4proto));
    v4.add_expr(&Cmp::new(CmpOp::Eq, libc::IPPROTO_TCP as u8));
    v4.add_expr(&Immediate::new(
        Ipv4Addr::LOCALHOST.octets(),
        Register::Reg1,
    ));
    v4.add_expr(&Immediate::new(port, Register::Reg2));
    v4.add_expr(&Tproxy {
        family: libc::NFPROTO_IPV4,
    });
    v4.add_expr(&nft_expr!(verdict accept));
    rules.push(v4);

    let mut v6 = Rule::new(chain);
    v6.add_expr(&nft_expr!(meta nfproto));
    v6.add_expr(&Cmp::new(CmpOp::Eq, libc::NFPROTO_IPV6 as u8));
    v6.add_expr(&nft_expr!(meta l4proto));
    v6.add_expr(&Cmp::new(CmpOp::Eq, libc::IPPROTO_TCP as u8));
    v6.add_expr(&Immediate::new(
        Ipv6Addr::LOCALHOST.octets(),
        Register::Reg1,
    ));
    v6.add_expr(&Immediate::new(port, Register::Reg2));
    v6.add_expr(&Tproxy {
        family: libc::NFPROTO_IPV6,
    });
    v6.add_expr(&nft_expr!(verdict accept));
    rules.push(v6);

    // TPROXY falls through when no listener exists, as after a crash of the daemon: reset
    // the connection instead of letting it reach the local stack.
    let mut orphan = Rule::new(chain);
    orphan.add_expr(&nft_expr!(meta l4proto));
    orphan.add_expr(&Cmp::new(CmpOp::Eq, libc::IPPROTO_TCP as u8));
    orphan.add_expr(&TcpReset);
    rules.push(orphan);

    rules
}

/// Output rules for DNS: the exempt users' port-53 traffic returns unmarked, and every other UDP
/// packet to port 53 is marked (TCP is marked with all TCP).
fn dns_output_rules<'a>(chain: &'a Chain<'a>, spec: &TableSpec, dns: &DnsSpec) -> Vec<Rule<'a>> {
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

    let mut mark = Rule::new(chain);
    add_dns_match(&mut mark, libc::IPPROTO_UDP);
    mark.add_expr(&nft_expr!(meta mark));
    mark.add_expr(&Bitwise::new(!spec.intercept_mark, spec.intercept_mark));
    mark.add_expr(&nft_expr!(meta mark set));
    rules.push(mark);
    rules
}

/// `nfproto FAMILY l4proto PROTOCOL dport 53 tproxy to LOOPBACK:port accept`.
fn tproxy_dns<'a>(chain: &'a Chain<'a>, family: i32, protocol: i32, port: u16) -> Rule<'a> {
    let mut rule = Rule::new(chain);
    rule.add_expr(&nft_expr!(meta nfproto));
    rule.add_expr(&Cmp::new(CmpOp::Eq, family as u8));
    add_dns_match(&mut rule, protocol);
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

/// `reject with tcp reset`.
struct TcpReset;

impl Expression for TcpReset {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let expr = alloc_expr(c"reject");
        // SAFETY: `expr` is a live expression of type reject; its type is a u32 and its code a
        // u8, as libnftnl's reject expression defines them.
        unsafe {
            let raw = expr.as_ptr();
            sys::nftnl_expr_set_u32(
                raw,
                sys::NFTNL_EXPR_REJECT_TYPE as u16,
                libc::NFT_REJECT_TCP_RST as u32,
            );
            sys::nftnl_expr_set_u8(raw, sys::NFTNL_EXPR_REJECT_CODE as u16, 0);
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
