//! Tollgate's daemon, `tollgated`, and the library behind the `tollgate` command.
//!
//! - [`firewall`] installs the nftables table and policy routing that divert outbound TCP and
//!   DNS.
//! - [`transparent`] opens the TPROXY listeners and the daemon's own upstream sockets.
//! - [`holding`] keeps pending requests: connections waiting for a person's decision.
//! - [`naming`] names a connection's destination from DNS answers or its first bytes.
//! - [`fast_path`] lets the kernel decide the flows a rule decides, inside `connect()`.
//! - [`daemon`] ties these together: accept, look up rules, hold, relay or reset; [`udp`] does
//!   the same for UDP flows.
//! - [`tracking`] lists the connections seen, with live byte counts that [`counting`] streams
//!   keep, for the monitor.
//! - [`rule_book`] keeps the daemon's rules in memory and in the rule store, [`clock`] reads
//!   the clocks rules expire by, and [`process`] identifies processes by pid and start time.
//! - [`control`] serves the control socket; [`protocol`] defines what is said on it, and
//!   [`client`] is the other end.
//! - [`config`] reads `/etc/tollgate/config.toml`.
//! - [`policy`] is the allowlist of enforce mode; [`audit`] writes the flow log of audit and
//!   enforce mode, and [`report`] summarizes it.

pub mod attribution;
pub mod audit;
pub mod client;
pub mod clock;
pub mod config;
pub mod control;
pub mod counting;
pub mod daemon;
pub mod exe_hash;
pub mod fast_path;
pub mod firewall;
pub mod holding;
pub mod naming;
pub mod policy;
pub mod process;
pub mod protocol;
pub mod report;
pub mod rule_book;
pub mod tracking;
pub mod transparent;
pub mod udp;
pub mod unreachable;
