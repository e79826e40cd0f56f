//! Turning a person's decision on a pending request into a rule and an expiry, and rejecting
//! decisions the daemon cannot carry out.

use std::time::SystemTime;

use tollgate_rules::{
    Action, AddressMatch, Destination, Lifetime, PortMatch, Protocol, ProtocolMatch, Rule, RuleId,
    Subject,
};

use crate::{
    daemon::RequestError,
    expiry::Expiry,
    holding::unix_ms,
    protocol::{ErrorCode, PendingInfo, PortScope, Scope},
};

/// A decision on a pending request, as a `decide` request carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The pending request.
    pub id: u64,
    /// Action applied to its connections.
    pub action: Action,
    /// How long the decision lasts.
    pub lifetime: Lifetime,
    /// Destinations covered.
    pub scope: Scope,
    /// Ports covered.
    pub port: PortScope,
    /// Seconds after which the rule is removed.
    pub expires_after_secs: Option<u64>,
    /// Whether the rule is removed when the requesting process exits.
    pub until_process_exits: bool,
}

impl Decision {
    /// Returns whether the decision covers more than the request's own destination and port.
    pub fn is_wide(&self) -> bool {
        self.scope != Scope::Host || self.port != PortScope::This
    }
}

/// Builds the rule that `decision` on `info` stands for: its executable (or any process when
/// unknown), the address and port the scope names, and its protocol.
pub fn rule_for_pending(
    info: &PendingInfo,
    decision: &Decision,
    id: RuleId,
) -> Result<Rule, RequestError> {
    let subject = match info.process.as_ref().and_then(|p| p.executable.clone()) {
        Some(path) => Subject::Executable(path),
        None => Subject::Any,
    };
    let address = match decision.scope {
        Scope::Host => AddressMatch::Ip(info.destination.ip()),
        Scope::AnyHost => AddressMatch::Any,
        Scope::Domain => {
            return Err(invalid(
                "scope domain is not supported yet: rules match addresses only",
            ));
        }
    };
    let port = match decision.port {
        PortScope::This => PortMatch::Port(info.destination.port()),
        PortScope::Any => PortMatch::Any,
    };
    let protocol = match info.protocol {
        Protocol::Tcp => ProtocolMatch::Tcp,
        Protocol::Udp => ProtocolMatch::Udp,
    };
    Ok(Rule {
        id,
        subject,
        destination: Destination {
            address,
            port,
            protocol,
        },
        action: decision.action,
        lifetime: decision.lifetime,
        enabled: true,
        note: format!("answer to pending request {}", info.id),
        created_unix: unix_ms(SystemTime::now()) / 1000,
    })
}

/// Returns the expiry that `decision` requests, or an error when it does not fit its lifetime or
/// process.
pub fn expiry_for(
    info: &PendingInfo,
    decision: &Decision,
    now_unix_ms: u64,
) -> Result<Option<Expiry>, RequestError> {
    let deadline = expiry_after(decision.lifetime, decision.expires_after_secs, now_unix_ms)?;
    if !decision.until_process_exits {
        return Ok(deadline);
    }
    if deadline.is_some() {
        return Err(invalid(
            "expires_after_secs and until_process_exits cannot be combined",
        ));
    }
    if decision.lifetime != Lifetime::UntilRestart {
        return Err(invalid("until_process_exits needs lifetime until_restart"));
    }
    match &info.process {
        Some(process) => Ok(Some(Expiry::process_exit(process.pid))),
        None => Err(invalid(
            "until_process_exits needs a known process, and this request's process is unknown",
        )),
    }
}

/// Returns the deadline `expires_after_secs` seconds after `now_unix_ms`, which only an
/// until-restart rule may have.
pub fn expiry_after(
    lifetime: Lifetime,
    expires_after_secs: Option<u64>,
    now_unix_ms: u64,
) -> Result<Option<Expiry>, RequestError> {
    let Some(secs) = expires_after_secs else {
        return Ok(None);
    };
    if lifetime != Lifetime::UntilRestart {
        return Err(invalid("expires_after_secs needs lifetime until_restart"));
    }
    let unix_ms = now_unix_ms.saturating_add(secs.saturating_mul(1000));
    Ok(Some(Expiry::At { unix_ms }))
}

fn invalid(message: &str) -> RequestError {
    (ErrorCode::Invalid, message.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ProcessInfo;

    fn pending(process: Option<ProcessInfo>) -> PendingInfo {
        PendingInfo {
            id: 7,
            process,
            source: "10.0.0.2:40000".parse().unwrap(),
            destination: "203.0.113.10:443".parse().unwrap(),
            protocol: Protocol::Tcp,
            started_unix_ms: 0,
            connections: 1,
            domain: None,
            name_source: None,
        }
    }

    fn decision(lifetime: Lifetime) -> Decision {
        Decision {
            id: 7,
            action: Action::Allow,
            lifetime,
            scope: Scope::Host,
            port: PortScope::This,
            expires_after_secs: None,
            until_process_exits: false,
        }
    }

    #[test]
    fn host_scope_names_address_and_port() {
        let rule = rule_for_pending(&pending(None), &decision(Lifetime::Forever), RuleId(1));
        let rule = rule.unwrap();
        assert_eq!(rule.subject, Subject::Any);
        assert_eq!(
            rule.destination.address,
            AddressMatch::Ip("203.0.113.10".parse().unwrap())
        );
        assert_eq!(rule.destination.port, PortMatch::Port(443));
        assert_eq!(rule.destination.protocol, ProtocolMatch::Tcp);
    }

    #[test]
    fn any_host_and_any_port_widen_rule() {
        let wide = Decision {
            scope: Scope::AnyHost,
            port: PortScope::Any,
            ..decision(Lifetime::UntilRestart)
        };
        assert!(wide.is_wide());
        let rule = rule_for_pending(&pending(None), &wide, RuleId(1)).unwrap();
        assert_eq!(rule.destination.address, AddressMatch::Any);
        assert_eq!(rule.destination.port, PortMatch::Any);
    }

    #[test]
    fn domain_scope_is_invalid() {
        let domain = Decision {
            scope: Scope::Domain,
            ..decision(Lifetime::Forever)
        };
        let (code, _) = rule_for_pending(&pending(None), &domain, RuleId(1)).unwrap_err();
        assert_eq!(code, ErrorCode::Invalid);
    }

    #[test]
    fn expiry_needs_until_restart() {
        let forever = Decision {
            expires_after_secs: Some(3600),
            ..decision(Lifetime::Forever)
        };
        assert!(expiry_for(&pending(None), &forever, 0).is_err());
        let hour = Decision {
            expires_after_secs: Some(3600),
            ..decision(Lifetime::UntilRestart)
        };
        let expiry = expiry_for(&pending(None), &hour, 1000).unwrap();
        assert_eq!(expiry, Some(Expiry::At { unix_ms: 3_601_000 }));
    }

    #[test]
    fn process_exit_needs_known_process() {
        let until_exit = Decision {
            until_process_exits: true,
            ..decision(Lifetime::UntilRestart)
        };
        assert!(expiry_for(&pending(None), &until_exit, 0).is_err());
        let process = ProcessInfo {
            pid: std::process::id(),
            uid: 0,
            comm: "test".into(),
            executable: None,
        };
        let expiry = expiry_for(&pending(Some(process)), &until_exit, 0).unwrap();
        assert_eq!(expiry.and_then(|e| e.pid()), Some(std::process::id()));
    }
}
