//! Tollgate's rules: the model, matching and the on-disk store.
//!
//! - [`model`] contains the rule types: subject, destination, action and lifetime.
//! - [`connection`] contains the facts about a connection that rules match on.
//! - [`RuleSet`] decides which rule, if any, applies to a connection, through an index
//!   ([`index`]) and with the precedence of [`precedence`]. It does no I/O and reads no
//!   clock: the caller passes the time.
//! - [`explain`] tells why a rule wins, and [`exchange`] reads and writes export files.
//! - [`store`] keeps the rules that outlive the daemon in a redb database.

pub mod connection;
pub mod error;
pub mod exchange;
pub mod explain;
mod index;
pub mod matching;
pub mod model;
pub mod precedence;
pub mod ruleset;
pub mod store;

pub use connection::{Connection, ConnectionFacts};
pub use error::ParseError;
pub use explain::Explanation;
pub use model::{
    Action, Destination, Protocol, ProtocolMatch, Rule, RuleId,
    address::{AddressMatch, Cidr, Scope},
    glob::{PathGlob, TextGlob},
    lifetime::{Clock, Lifetime, LifetimeSpec, ProcessStart},
    name::DomainName,
    port::PortMatch,
    subject::{CommandMatch, ExecutableMatch, Sha256Digest, Subject, UserMatch},
};
pub use precedence::Step;
pub use ruleset::{Conflict, RuleSet};
pub use store::{RuleStore, StoreError};
