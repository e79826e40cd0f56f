//! A small internet made of network namespaces, for end-to-end tests of `tollgated` and for
//! trying Tollgate without touching the host's network.
//!
//! [`Lab::start`] creates two namespaces: "desk", where the firewall and its clients run, and
//! "net", which plays the internet. They are joined by a veth pair, and net runs an HTTP
//! server, a TCP echo server and a bulk server on documentation addresses. Everything is
//! removed when the [`Lab`] is dropped. Creating namespaces needs root.
//!
//! Modules:
//! - [`netns`]: [`NetNs`], one namespace, with commands and threads that run inside it.
//! - [`process`]: [`ProcessGuard`], a child process stopped on drop.
//! - [`lab`]: [`Lab`], the two namespaces with their servers.
//! - [`topology`]: the lab's addresses and ports.
//! - [`client`]: echo and bulk clients that check every byte.
//! - [`pattern`]: the byte pattern of the bulk server.
//! - [`binary`]: [`workspace_binary`], which finds `tollgated`, `tollgate` and `lab-server`;
//! - [`daemon`]: [`daemon::Daemon`], a `tollgated` running in a lab's desk;
//! - [`cgroup`]: [`cgroup::TestCgroup`], the child cgroup the daemon attributes processes in;
//! - [`dns`]: the lab's DNS server (dnsmasq) and desk's resolv.conf;
//! - [`display`]: [`display::VirtualDisplay`], an Xvfb server for tests of `tollgate-ui`;
//! - [`watch`]: [`watch::Watcher`], a client of the daemon's event stream;
//! - [`bench`]: statistics, iperf3 results, `/proc` readings and the report of `tollgate-bench`.
//!
//! ```no_run
//! use tollgate_integration::{Lab, topology::SERVER_A_V4};
//!
//! let lab = Lab::start().unwrap();
//! let output = lab
//!     .desk_command("curl")
//!     .arg(Lab::http_url(SERVER_A_V4.into()))
//!     .output()
//!     .unwrap();
//! assert!(output.status.success());
//! lab.bulk_download(SERVER_A_V4.into(), 1 << 20).unwrap();
//! ```

#![warn(missing_docs)]

pub mod bench;
pub mod binary;
pub mod cgroup;
pub mod client;
pub mod daemon;
pub mod display;
pub mod dns;
pub mod lab;
pub mod netns;
pub mod pattern;
pub mod process;
mod servers;
pub mod topology;
pub mod watch;

pub use binary::{BinaryNotFoundError, workspace_binary};
pub use lab::{Lab, LabError};
pub use netns::{NetNs, NetNsError};
pub use process::ProcessGuard;
pub use servers::{INDEX_MARKER, ServerError};
