//! The choices a prompt offers (scope, port and lifetime) and the `decide` request each
//! combination becomes.

use std::fmt;

use tollgate_proxy::protocol::{PortScope, Request, Scope};
use tollgate_rules::{Action, LifetimeSpec};

/// Seconds in the "for an hour" lifetime.
pub const HOUR_SECS: u64 = 3600;

/// Destinations a decision covers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum ScopeChoice {
    /// The host name the program connected to, or its address when no name is known.
    #[default]
    Host,
    /// The domain and its subdomains.
    Domain,
    /// Every destination.
    AnyHost,
}

/// Ports a decision covers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum PortChoice {
    /// The port the program connected to.
    #[default]
    This,
    /// Every port.
    Any,
}

/// How long a decision lasts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum LifetimeChoice {
    /// Only the connections waiting now.
    #[default]
    Once,
    /// Until the program exits.
    UntilQuit,
    /// For one hour.
    Hour,
    /// Until the daemon restarts.
    UntilRestart,
    /// Stored for good.
    Forever,
}

impl ScopeChoice {
    /// Every scope, in the order the prompt cycles through them.
    pub const ALL: [Self; 3] = [Self::Host, Self::Domain, Self::AnyHost];
}

impl PortChoice {
    /// Every port choice, in the order the prompt cycles through them.
    pub const ALL: [Self; 2] = [Self::This, Self::Any];
}

impl LifetimeChoice {
    /// Every lifetime, in the order the prompt cycles through them.
    pub const ALL: [Self; 5] = [
        Self::Once,
        Self::UntilQuit,
        Self::Hour,
        Self::UntilRestart,
        Self::Forever,
    ];
}

impl fmt::Display for ScopeChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Host => "this host",
            Self::Domain => "the domain and its subdomains",
            Self::AnyHost => "any host",
        })
    }
}

impl fmt::Display for PortChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::This => "this port",
            Self::Any => "any port",
        })
    }
}

impl fmt::Display for LifetimeChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Once => "once",
            Self::UntilQuit => "until the app quits",
            Self::Hour => "for an hour",
            Self::UntilRestart => "until restart",
            Self::Forever => "forever",
        })
    }
}

/// The options selected in one prompt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Choice {
    /// Destinations covered.
    pub scope: ScopeChoice,
    /// Ports covered.
    pub port: PortChoice,
    /// How long the decision lasts.
    pub lifetime: LifetimeChoice,
}

impl Choice {
    /// Returns the `decide` request for pending request `id`.
    pub fn request(&self, id: u64, action: Action) -> Request {
        let lifetime = match self.lifetime {
            LifetimeChoice::Once => LifetimeSpec::Once,
            // Without a pid the daemon ties the rule to the request's own process.
            LifetimeChoice::UntilQuit => LifetimeSpec::UntilExit { pid: None },
            LifetimeChoice::Hour => LifetimeSpec::For { secs: HOUR_SECS },
            LifetimeChoice::UntilRestart => LifetimeSpec::UntilRestart,
            LifetimeChoice::Forever => LifetimeSpec::Forever,
        };
        Request::Decide {
            id,
            action,
            lifetime,
            scope: match self.scope {
                ScopeChoice::Host => Scope::Host,
                ScopeChoice::Domain => Scope::Domain,
                ScopeChoice::AnyHost => Scope::AnyHost,
            },
            port: match self.port {
                PortChoice::This => PortScope::This,
                PortChoice::Any => PortScope::Any,
            },
        }
    }
}

/// Returns the item after `current` in `all` for which `available` holds, wrapping around.
pub fn next_available<T: Copy + PartialEq>(
    all: &[T],
    current: T,
    available: impl Fn(T) -> bool,
) -> T {
    let start = all.iter().position(|item| *item == current).unwrap_or(0);
    (1..=all.len())
        .map(|step| all[(start + step) % all.len()])
        .find(|item| available(*item))
        .unwrap_or(current)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_choice_is_host_port_once() {
        let request = Choice::default().request(4, Action::Allow);
        assert_eq!(
            request,
            Request::decide(4, Action::Allow, LifetimeSpec::Once)
        );
    }

    #[test]
    fn hour_becomes_a_one_hour_rule() {
        let choice = Choice {
            scope: ScopeChoice::AnyHost,
            port: PortChoice::Any,
            lifetime: LifetimeChoice::Hour,
        };
        let Request::Decide {
            lifetime,
            scope,
            port,
            ..
        } = choice.request(1, Action::Deny)
        else {
            panic!("not a decide request");
        };
        assert_eq!(lifetime, LifetimeSpec::For { secs: HOUR_SECS });
        assert_eq!(scope, Scope::AnyHost);
        assert_eq!(port, PortScope::Any);
    }

    #[test]
    fn until_quit_ties_rule_to_process() {
        let choice = Choice {
            lifetime: LifetimeChoice::UntilQuit,
            ..Choice::default()
        };
        let Request::Decide { lifetime, .. } = choice.request(1, Action::Allow) else {
            panic!("not a decide request");
        };
        assert_eq!(lifetime, LifetimeSpec::UntilExit { pid: None });
    }

    #[test]
    fn cycling_skips_unavailable() {
        let next = next_available(&ScopeChoice::ALL, ScopeChoice::Host, |scope| {
            scope != ScopeChoice::Domain
        });
        assert_eq!(next, ScopeChoice::AnyHost);
        let wrapped = next_available(&ScopeChoice::ALL, next, |_| true);
        assert_eq!(wrapped, ScopeChoice::Host);
    }
}
