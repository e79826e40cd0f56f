//! Refusal at query time: the daemon's predicate over the names an asker may resolve.

use crate::{asker::Asker, domain::DomainName};

/// Decides at query time whether an asker may learn the addresses of a name. The resolver
/// consults it for the queried name and for every CNAME target of the answer.
pub trait QueryPolicy: Send + Sync + 'static {
    /// Returns whether `asker` may not resolve `name`.
    fn is_refused(&self, asker: Asker, name: &DomainName) -> bool;
}

/// A policy that refuses nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct RefuseNothing;

impl QueryPolicy for RefuseNothing {
    fn is_refused(&self, _: Asker, _: &DomainName) -> bool {
        false
    }
}

impl<F> QueryPolicy for F
where
    F: Fn(Asker, &DomainName) -> bool + Send + Sync + 'static,
{
    fn is_refused(&self, asker: Asker, name: &DomainName) -> bool {
        self(asker, name)
    }
}
