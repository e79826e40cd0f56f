//! Prompts: one window per application, listing its pending requests grouped by domain, with
//! one decision for all of them.

pub mod choice;
pub mod view;

use std::{collections::BTreeMap, path::PathBuf};

use iced::{keyboard, widget::image};
use tollgate_proxy::protocol::{PendingInfo, Request};
use tollgate_rules::Action;

use self::choice::{Choice, LifetimeChoice, PortChoice, ScopeChoice, next_available};

/// Milliseconds a prompt window must have had the keyboard focus before its shortcuts act, so
/// that keys typed for another window just as the prompt appeared do nothing.
pub const ARM_DELAY_MS: u64 = 700;

/// The application a prompt window is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AppKey {
    /// A process with a known executable.
    Executable(PathBuf),
    /// A known process whose executable could not be read, by command name.
    Command(String),
    /// Connections whose process is unknown, all in one window.
    Unknown,
}

impl AppKey {
    /// Returns the key of the application that opened `request`.
    pub fn of(request: &PendingInfo) -> Self {
        match &request.process {
            None => Self::Unknown,
            Some(process) => match &process.executable {
                Some(path) => Self::Executable(path.clone()),
                None => Self::Command(process.comm.clone()),
            },
        }
    }
}

/// Name and icon a prompt shows for its application.
#[derive(Debug, Clone)]
pub struct AppLabel {
    /// Name from the `.desktop` file, else the executable's file name or command.
    pub name: String,
    /// Icon from the `.desktop` file.
    pub icon: Option<image::Handle>,
}

/// A change a person makes in a prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptMessage {
    /// Decides every request in the prompt.
    Decide(Action),
    /// Selects the scope.
    Scope(ScopeChoice),
    /// Selects the port choice.
    Port(PortChoice),
    /// Selects the lifetime.
    Lifetime(LifetimeChoice),
}

/// The pending requests of one application and the choices made for them.
#[derive(Debug, Clone)]
pub struct Prompt {
    /// The application.
    pub key: AppKey,
    /// Its name and icon.
    pub label: AppLabel,
    /// Its pending requests, oldest first.
    pub requests: Vec<PendingInfo>,
    /// The options selected.
    pub choice: Choice,
    /// When the window last gained the keyboard focus, in milliseconds since the Unix epoch;
    /// `None` while it does not have it.
    pub focused_since: Option<u64>,
    /// Reason the last decision failed, shown in the window.
    pub error: Option<String>,
}

/// Pending requests to the same domain, or to the same address when the domain is unknown.
#[derive(Debug)]
pub struct DestinationGroup<'a> {
    /// The domain, or the address.
    pub title: String,
    /// Whether `title` is a domain.
    pub is_domain: bool,
    /// The requests, oldest first.
    pub requests: Vec<&'a PendingInfo>,
}

impl Prompt {
    /// Creates an empty prompt for an application.
    pub fn new(key: AppKey, label: AppLabel) -> Self {
        Self {
            key,
            label,
            requests: Vec::new(),
            choice: Choice::default(),
            focused_since: None,
            error: None,
        }
    }

    /// Returns the requests grouped by domain, or by address when the domain is unknown.
    pub fn groups(&self) -> Vec<DestinationGroup<'_>> {
        let mut groups: BTreeMap<(bool, String), Vec<&PendingInfo>> = BTreeMap::new();
        for request in &self.requests {
            let key = match &request.host {
                Some(domain) => (true, domain.clone()),
                None => (false, request.destination.ip().to_string()),
            };
            groups.entry(key).or_default().push(request);
        }
        groups
            .into_iter()
            .map(|((is_domain, title), requests)| DestinationGroup {
                title,
                is_domain,
                requests,
            })
            .collect()
    }

    /// Returns the number of connections held for this application.
    pub fn connections(&self) -> usize {
        self.requests
            .iter()
            .map(|request| request.connections)
            .sum()
    }

    /// Returns when the first request times out, given the daemon's prompt timeout.
    pub fn deadline_unix_ms(&self, timeout_ms: u64) -> Option<u64> {
        self.requests
            .iter()
            .map(|request| request.started_unix_ms.saturating_add(timeout_ms))
            .min()
    }

    /// Returns whether `scope` can be chosen: a domain scope needs every request's domain.
    pub fn offers_scope(&self, scope: ScopeChoice) -> bool {
        scope != ScopeChoice::Domain || self.requests.iter().all(|r| r.host.is_some())
    }

    /// Returns whether `lifetime` can be chosen: "until the app quits" needs known processes.
    pub fn offers_lifetime(&self, lifetime: LifetimeChoice) -> bool {
        lifetime != LifetimeChoice::UntilQuit || self.requests.iter().all(|r| r.process.is_some())
    }

    /// Applies a change and returns the requests to send to the daemon.
    pub fn update(&mut self, message: PromptMessage) -> Vec<Request> {
        match message {
            PromptMessage::Decide(action) => return self.decide(action),
            PromptMessage::Scope(scope) if self.offers_scope(scope) => self.choice.scope = scope,
            PromptMessage::Port(port) => self.choice.port = port,
            PromptMessage::Lifetime(lifetime) if self.offers_lifetime(lifetime) => {
                self.choice.lifetime = lifetime;
            }
            PromptMessage::Scope(_) | PromptMessage::Lifetime(_) => {}
        }
        Vec::new()
    }

    /// Returns one `decide` request per pending request. A wide scope makes the first one
    /// settle the rest, and the daemon rejects the others with `not_found`, which is harmless.
    pub fn decide(&self, action: Action) -> Vec<Request> {
        self.requests
            .iter()
            .map(|request| self.choice.request(request.id, action))
            .collect()
    }

    /// Returns whether keyboard shortcuts act at `now_unix_ms`.
    pub fn keys_armed(&self, now_unix_ms: u64) -> bool {
        self.focused_since
            .is_some_and(|since| now_unix_ms.saturating_sub(since) >= ARM_DELAY_MS)
    }

    /// Handles a key pressed in the prompt's window and returns the requests to send.
    pub fn key_pressed(&mut self, key: &keyboard::Key, now_unix_ms: u64) -> Vec<Request> {
        if !self.keys_armed(now_unix_ms) {
            return Vec::new();
        }
        let message = match key.as_ref() {
            keyboard::Key::Character("a") => PromptMessage::Decide(Action::Allow),
            keyboard::Key::Character("d") => PromptMessage::Decide(Action::Deny),
            keyboard::Key::Character("s") => PromptMessage::Scope(next_available(
                &ScopeChoice::ALL,
                self.choice.scope,
                |scope| self.offers_scope(scope),
            )),
            keyboard::Key::Character("p") => {
                PromptMessage::Port(next_available(&PortChoice::ALL, self.choice.port, |_| true))
            }
            keyboard::Key::Character("l") => PromptMessage::Lifetime(next_available(
                &LifetimeChoice::ALL,
                self.choice.lifetime,
                |lifetime| self.offers_lifetime(lifetime),
            )),
            _ => return Vec::new(),
        };
        self.update(message)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use tollgate_proxy::protocol::NameSource;
    use tollgate_rules::{LifetimeSpec, Protocol};

    use super::*;

    pub(crate) fn pending(id: u64, destination: &str, domain: Option<&str>) -> PendingInfo {
        PendingInfo {
            id,
            process: None,
            source: "10.77.0.2:40000".parse().unwrap(),
            destination: destination.parse().unwrap(),
            protocol: Protocol::Tcp,
            started_unix_ms: 1_000_000 + id,
            connections: 1,
            host: domain.map(str::to_owned),
            name_source: if domain.is_some() {
                NameSource::Dns
            } else {
                NameSource::None
            },
        }
    }

    fn prompt(requests: Vec<PendingInfo>) -> Prompt {
        let label = AppLabel {
            name: "unknown process".into(),
            icon: None,
        };
        let mut prompt = Prompt::new(AppKey::Unknown, label);
        prompt.requests = requests;
        prompt
    }

    #[test]
    fn groups_by_domain_then_address() {
        let prompt = prompt(vec![
            pending(1, "203.0.113.10:443", Some("example.org")),
            pending(2, "203.0.113.11:443", Some("example.org")),
            pending(3, "203.0.113.20:80", None),
        ]);
        let groups = prompt.groups();
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].title, "203.0.113.20");
        assert!(!groups[0].is_domain);
        assert_eq!(groups[1].title, "example.org");
        assert_eq!(groups[1].requests.len(), 2);
    }

    #[test]
    fn decide_covers_every_request() {
        let mut prompt = prompt(vec![
            pending(1, "203.0.113.10:80", None),
            pending(2, "203.0.113.20:80", None),
        ]);
        prompt.update(PromptMessage::Lifetime(LifetimeChoice::Forever));
        let requests = prompt.update(PromptMessage::Decide(Action::Deny));
        assert_eq!(
            requests,
            vec![
                Request::decide(1, Action::Deny, LifetimeSpec::Forever),
                Request::decide(2, Action::Deny, LifetimeSpec::Forever),
            ]
        );
    }

    #[test]
    fn unknown_domain_and_process_limit_choices() {
        let mut prompt = prompt(vec![pending(1, "203.0.113.10:80", None)]);
        prompt.update(PromptMessage::Scope(ScopeChoice::Domain));
        prompt.update(PromptMessage::Lifetime(LifetimeChoice::UntilQuit));
        assert_eq!(prompt.choice, Choice::default());
    }

    #[test]
    fn keys_wait_for_focus_and_delay() {
        let mut prompt = prompt(vec![pending(1, "203.0.113.10:80", None)]);
        let allow = keyboard::Key::Character("a".into());
        assert!(prompt.key_pressed(&allow, 10_000).is_empty(), "unfocused");
        prompt.focused_since = Some(10_000);
        assert!(
            prompt.key_pressed(&allow, 10_100).is_empty(),
            "just focused"
        );
        let sent = prompt.key_pressed(&allow, 10_000 + ARM_DELAY_MS);
        assert_eq!(
            sent,
            vec![Request::decide(1, Action::Allow, LifetimeSpec::Once)]
        );
    }

    #[test]
    fn keys_cycle_choices() {
        let mut prompt = prompt(vec![pending(1, "203.0.113.10:80", None)]);
        prompt.focused_since = Some(0);
        let now = ARM_DELAY_MS;
        for key in ["s", "p", "l", "l"] {
            prompt.key_pressed(&keyboard::Key::Character(key.into()), now);
        }
        assert_eq!(
            prompt.choice.scope,
            ScopeChoice::AnyHost,
            "domain is skipped"
        );
        assert_eq!(prompt.choice.port, PortChoice::Any);
        assert_eq!(
            prompt.choice.lifetime,
            LifetimeChoice::UntilRestart,
            "until quit is skipped"
        );
    }

    #[test]
    fn deadline_is_first_request_plus_timeout() {
        let prompt = prompt(vec![
            pending(2, "203.0.113.10:80", None),
            pending(1, "203.0.113.20:80", None),
        ]);
        assert_eq!(prompt.deadline_unix_ms(60_000), Some(1_060_001));
    }
}
