//! Kernel attribution of outbound flows to processes, for Tollgate's proxy.
//!
//! [`Classifier::load_and_attach`] loads Tollgate's BPF programs and attaches them to a cgroup.
//! From then on, each TCP connection and UDP datagram sent by a process in that cgroup gets an
//! entry naming the process, written inside `connect()`/`sendmsg()` before the packet reaches
//! any listener. [`Classifier::lookup`] reads the entry by the addresses on the proxy's socket,
//! also after the process has exited.
//!
//! - [`classifier`]: loading, attaching, lookups and counters.
//! - [`fast_path`]: the verdicts the programs apply at `connect()` and `sendmsg()`, and the
//!   events of the flows they decided.
//! - [`flow`]: the [`FlowLookup`] key and network namespace cookies.
//! - [`owner`]: the [`Owner`] a lookup returns.
//! - [`cgroup`]: [`cgroup2_root`], the mount point to attach to.
//! - `btf` and `offsets`: kernel struct offsets read from `/sys/kernel/btf/vmlinux`, which
//!   let the programs read the executable path without offsets compiled in.
//!
//! ```no_run
//! use std::net::TcpListener;
//!
//! use tollgate_classifier::{Classifier, FlowLookup, cgroup2_root};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let classifier = Classifier::load_and_attach(&cgroup2_root()?)?;
//! let listener = TcpListener::bind("127.0.0.1:15001")?;
//! let (stream, _) = listener.accept()?;
//! if let Some(owner) = classifier.lookup(&FlowLookup::from_accepted_tcp(&stream)?) {
//!     println!("pid {} exe {:?}", owner.pid, owner.exe);
//! }
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

mod btf;
pub mod cgroup;
pub mod classifier;
mod error;
pub mod fast_path;
pub mod flow;
mod offsets;
pub mod owner;

pub use cgroup::cgroup2_root;
pub use classifier::{Classifier, Counters};
pub use error::ClassifierError;
pub use fast_path::{FastPath, FlowEvents, KernelEvent, KernelVerdict};
pub use flow::{FlowLookup, Protocol, netns_cookie};
pub use owner::Owner;
