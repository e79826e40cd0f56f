//! Tollgate's daemon, `tollgated`, and the library behind the `tollgate` command.
//!
//! - [`firewall`] installs the nftables table and policy routing that divert outbound TCP and
//!   DNS.
//! - [`transparent`] opens the TPROXY listeners and the daemon's own upstream sockets.
//! - [`holding`] keeps pending requests: connections waiting for a person's decision.
//! - [`naming`] names a connection's destination from DNS answers or its first bytes.
//! - [`daemon`] ties these together: accept, look up rules, hold, relay or reset.
//! - [`control`] serves the control socket; [`protocol`] defines what is said on it, and
//!   [`client`] is the other end.
//! - [`config`] reads `/etc/tollgate/config.toml`.

pub mod attribution;
pub mod client;
pub mod config;
pub mod control;
pub mod daemon;
pub mod firewall;
pub mod holding;
pub mod naming;
pub mod protocol;
pub mod transparent;
