//! Tollgate's daemon, `tollgated`, and the library behind the `tollgate` command.
//!
//! - [`firewall`] installs the nftables table and policy routing that divert outbound TCP.
//! - [`transparent`] opens the TPROXY listeners and the daemon's own upstream sockets.
//! - [`holding`] keeps pending requests: connections waiting for a person's decision.
//! - [`daemon`] ties these together: accept, look up rules, hold, relay or reset; [`udp`] does
//!   the same for UDP flows.
//! - [`fast_path`] lets the kernel apply rule verdicts at `connect()`, so that decided flows
//!   skip the proxy, and reports those flows as events.
//! - [`control`] serves the control socket; [`protocol`] defines what is said on it, and
//!   [`client`] is the other end.
//! - [`config`] reads `/etc/tollgate/config.toml`.

pub mod attribution;
pub mod client;
pub mod config;
pub mod control;
pub mod daemon;
pub mod fast_path;
pub mod firewall;
pub mod holding;
pub mod protocol;
pub mod transparent;
pub mod udp;
