//! Tollgate's daemon, `tollgated`, and the library behind the `tollgate` command.
//!
//! - [`firewall`] installs the nftables table and policy routing that divert outbound TCP.
//! - [`transparent`] opens the TPROXY listeners and the daemon's own upstream sockets.
//! - [`holding`] keeps pending requests: connections waiting for a person's decision.
//! - [`decision`] turns a decision on a pending request into a rule; [`expiry`] removes
//!   until-restart rules after a time or when their process exits.
//! - [`tracking`] keeps the connections in progress and recently ended, with byte counts that
//!   [`counting`] streams update.
//! - [`daemon`] ties these together: accept, look up rules, hold, relay or reset.
//! - [`control`] serves the control socket; [`protocol`] defines what is said on it, and
//!   [`client`] is the other end.
//! - [`config`] reads `/etc/tollgate/config.toml`.

pub mod attribution;
pub mod client;
pub mod config;
pub mod control;
pub mod counting;
pub mod daemon;
pub mod decision;
pub mod expiry;
pub mod firewall;
pub mod holding;
pub mod protocol;
pub mod tracking;
pub mod transparent;
