//! Addresses and ports of the lab network, and the `ip` commands that build it.
//!
//! ```text
//!  desk                                   net
//!  veth0 10.77.0.2/24, fd77::2/64  <--->  veth1 10.77.0.1/24, fd77::1/64
//!  default via 10.77.0.1, fd77::1         lo: 203.0.113.10, 203.0.113.20,
//!                                             2001:db8::10, 2001:db8::20,
//!                                             DNS 203.0.113.53, 2001:db8::53
//! ```
//!
//! The server addresses come from the documentation ranges (RFC 5737 and RFC 3849), so they
//! never belong to a real host. Net has no route beyond the veth, so traffic from desk to any
//! other address ends in net with "network unreachable".

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::netns::{NetNs, NetNsError};

/// Desk's IPv4 address on its veth.
pub const DESK_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// Desk's IPv6 address on its veth.
pub const DESK_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 2);
/// Net's IPv4 address on its veth, desk's IPv4 gateway.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// Net's IPv6 address on its veth, desk's IPv6 gateway.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1);

/// The IPv4 address of "internet" server A in net.
pub const SERVER_A_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// The IPv4 address of "internet" server B in net.
pub const SERVER_B_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
/// The IPv6 address of "internet" server A in net.
pub const SERVER_A_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
/// The IPv6 address of "internet" server B in net.
pub const SERVER_B_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x20);

/// The IPv4 address of the lab's DNS server in net.
pub const DNS_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 53);
/// The IPv6 address of the lab's DNS server in net.
pub const DNS_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x53);
/// A second address of net on which no DNS server listens, for queries aimed elsewhere.
pub const OTHER_DNS_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 54);

/// All server addresses. Every server in net listens on each of them.
pub const SERVER_ADDRS: [IpAddr; 4] = [
    IpAddr::V4(SERVER_A_V4),
    IpAddr::V4(SERVER_B_V4),
    IpAddr::V6(SERVER_A_V6),
    IpAddr::V6(SERVER_B_V6),
];

/// The port of the HTTP server.
pub const HTTP_PORT: u16 = 80;
/// The port of the TCP echo server.
pub const ECHO_PORT: u16 = 7;
/// The port of the bulk server, which sends as many pattern bytes as the client requests.
pub const BULK_PORT: u16 = 9000;
/// UDP echo port of the lab-server.
pub const UDP_ECHO_PORT: u16 = 7;
/// UDP echo port that stands in for QUIC.
pub const QUIC_PORT: u16 = 443;

/// The veth end in desk.
pub const DESK_LINK: &str = "veth0";
/// The veth end in net.
pub const NET_LINK: &str = "veth1";

/// Builds the veth link, addresses and routes between `desk` and `net`.
pub(crate) fn build(desk: &NetNs, net: &NetNs) -> Result<(), NetNsError> {
    // The pair is created inside desk with its peer placed straight into net, so no
    // interface ever appears in the host namespace.
    desk.ip([
        "link",
        "add",
        DESK_LINK,
        "type",
        "veth",
        "peer",
        "name",
        NET_LINK,
        "netns",
        net.name(),
    ])?;

    // Bringing the links up before adding the addresses matters: with IPv6 addresses added to
    // a down link, the first IPv6 connect from desk took about 1 s on Linux 6.18, against 3 ms
    // when they are added after.
    desk.ip(["link", "set", DESK_LINK, "up"])?;
    net.ip(["link", "set", NET_LINK, "up"])?;

    // `nodad` makes the IPv6 addresses usable at once instead of after duplicate address
    // detection.
    desk.ip(["addr", "add", &format!("{DESK_V4}/24"), "dev", DESK_LINK])?;
    desk.ip([
        "addr",
        "add",
        &format!("{DESK_V6}/64"),
        "dev",
        DESK_LINK,
        "nodad",
    ])?;
    net.ip(["addr", "add", &format!("{GATEWAY_V4}/24"), "dev", NET_LINK])?;
    net.ip([
        "addr",
        "add",
        &format!("{GATEWAY_V6}/64"),
        "dev",
        NET_LINK,
        "nodad",
    ])?;
    let dns_addrs = [
        IpAddr::V4(DNS_V4),
        IpAddr::V6(DNS_V6),
        IpAddr::V4(OTHER_DNS_V4),
    ];
    for addr in SERVER_ADDRS.into_iter().chain(dns_addrs) {
        match addr {
            IpAddr::V4(addr) => net.ip(["addr", "add", &format!("{addr}/32"), "dev", "lo"])?,
            IpAddr::V6(addr) => {
                net.ip(["addr", "add", &format!("{addr}/128"), "dev", "lo", "nodad"])?
            }
        };
    }

    desk.ip(["route", "add", "default", "via", &GATEWAY_V4.to_string()])?;
    desk.ip([
        "-6",
        "route",
        "add",
        "default",
        "via",
        &GATEWAY_V6.to_string(),
    ])?;
    Ok(())
}
