//! Tollgate's rules: the model, matching and the on-disk store.
//!
//! - [`model`] holds the rule types: subject, destination, action and lifetime.
//! - [`matcher`] decides which rule, if any, applies to a connection. It does no I/O.
//! - [`store`] keeps "forever" rules in a redb database.

pub mod matcher;
pub mod model;
pub mod store;

pub use matcher::{Connection, RuleSet};
pub use model::{
    Action, AddressMatch, Cidr, Destination, Lifetime, ParseError, PortMatch, Protocol,
    ProtocolMatch, Rule, RuleId, Subject,
};
pub use store::{RuleStore, StoreError};
