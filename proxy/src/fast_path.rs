//! The fast path: flows that a rule decides are decided by the kernel inside `connect()`, and
//! an allowed flow's bytes pass without the relay.
//!
//! The daemon keeps the classifier's verdict map filled with what its rules decide, keyed by
//! executable, protocol, destination address and port ([`FastPath::sync`] and
//! [`FastPath::learn`]). An allowed `connect()` gets the bypass mark, so the nftables table lets
//! it pass as if the daemon had opened it. A denied one fails with `EPERM`. The programs report
//! each such flow's start, end and bytes, and each denial, on a ring that [`serve_events`]
//! turns into the usual `decided` and `closed` events, marked `in_kernel`, at most 10 ms later.
//!
//! The kernel has only a flow's executable, address, port and protocol. So a
//! verdict is written only for an executable whose applicable rules need nothing more: no
//! host name or domain, digest, user, command line, script or parent condition, and for
//! programs that no rule names, no executable glob either. Every other flow takes the path
//! through the proxy, as before.
//!
//! Every rule change starts a new generation of verdicts, which retires the old ones at once,
//! so the change applies to every new flow. A flow the kernel allowed before a deny rule came
//! goes on until it closes, as a relayed one does. UDP sockets are decided at `connect()`; a
//! send with an address on an unconnected socket takes the path through the proxy, unless a
//! verdict denies it.

use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio::time::MissedTickBehavior;
use tollgate_classifier::{
    FlowEvents, KernelEvent, KernelVerdict, Owner, fast_path::FAST_SOCKETS_CAPACITY,
};
use tollgate_rules::{
    Action, AddressMatch, Clock, ConnectionFacts, ExecutableMatch, PortMatch, Protocol,
    ProtocolMatch, Rule, RuleSet,
};
use tracing::{debug, error, info, warn};

use crate::{
    attribution::KernelAttribution,
    clock,
    daemon::{Flow, Shared, closed},
    protocol::{DecidedBy, EventKind},
};

/// The DNS port. Queries to it are diverted to the local resolver, which must see every one,
/// so the kernel never decides flows to it.
const DNS_PORT: u16 = 53;

/// Verdicts written for the exact rules at a rule change, at most. Rules beyond it are
/// learned from their first flow instead.
const PREFILL_LIMIT: usize = 4096;

/// The daemon's side of the fast path: the verdict maps of the classifier.
pub struct FastPath {
    kernel: Mutex<tollgate_classifier::FastPath>,
    bypass_mark: u32,
    netns_cookie: u64,
}

impl FastPath {
    /// Starts the fast path for the daemon's network namespace with the given rules. Sockets
    /// the kernel allows get `bypass_mark`.
    pub fn start(
        mut kernel: tollgate_classifier::FastPath,
        bypass_mark: u32,
        rules: &RuleSet,
    ) -> anyhow::Result<Self> {
        let socket = std::os::unix::net::UnixDatagram::unbound()?;
        let netns_cookie = tollgate_classifier::netns_cookie(&socket)?;
        sync(&mut kernel, rules, &clock::now());
        kernel.enable(bypass_mark, netns_cookie)?;
        info!(verdicts = kernel.verdict_count(), "fast path enabled");
        Ok(Self {
            kernel: Mutex::new(kernel),
            bypass_mark,
            netns_cookie,
        })
    }

    /// Replaces every verdict with those of `rules`. Call it after each rule change, with the
    /// lock that guards the rules held, so that no flow decided under the old rules adds a
    /// verdict afterwards.
    pub fn sync(&self, rules: &RuleSet) {
        sync(&mut self.lock(), rules, &clock::now());
    }

    /// Adds the verdict of `rules` for the executable and destination of `flow`, which a rule
    /// decided in the proxy, so that the kernel decides the next flow of the same executable to
    /// the same destination. Call it with the lock that guards the rules held.
    pub(crate) fn learn(&self, flow: &Flow, rules: &RuleSet) {
        let ip = canonical(flow.destination.ip());
        if !is_diverted(ip) || local_addresses().contains(&ip) {
            return;
        }
        let executable = flow
            .process
            .as_ref()
            .and_then(|process| process.executable.as_deref());
        let mut kernel = self.lock();
        // An executable that a rule names but the kernel cannot record has no id: skip it.
        let Some(executable_id) = kernel.executable_id(executable) else {
            return;
        };
        // Id 0 stands for every program that no rule names exactly.
        let subject = if executable_id == 0 { None } else { executable };
        let Some(verdict) = kernel_verdict(
            rules,
            subject,
            executable_id,
            SocketAddr::new(ip, flow.destination.port()),
            flow.protocol,
            &clock::now(),
        ) else {
            return;
        };
        if let Err(err) = kernel.insert(&verdict) {
            debug!(error = %err, "failed to add a fast path verdict");
        }
    }

    /// Stops the kernel from deciding flows. Flows it allowed keep passing.
    pub fn stop(&self) {
        if let Err(err) = self.lock().disable() {
            error!(error = %format!("{err:#}"), "failed to disable the fast path");
        }
    }

    /// Lets the kernel decide flows again after [`FastPath::stop`], with the verdicts of
    /// `rules`.
    pub fn resume(&self, rules: &RuleSet) {
        let mut kernel = self.lock();
        sync(&mut kernel, rules, &clock::now());
        if let Err(err) = kernel.enable(self.bypass_mark, self.netns_cookie) {
            error!(error = %format!("{err:#}"), "failed to enable the fast path");
        }
    }

    fn lock(&self) -> MutexGuard<'_, tollgate_classifier::FastPath> {
        // A panic while holding the lock leaves the maps as valid as any single update does.
        self.kernel
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Starts a new generation of verdicts for `rules` and writes what [`plan_verdicts`] plans.
fn sync(kernel: &mut tollgate_classifier::FastPath, rules: &RuleSet, now: &Clock) {
    let executables = named_executables(rules);
    if let Err(err) = kernel.reset(executables.iter().copied()) {
        error!(error = %format!("{err:#}"), "failed to reset the fast path verdicts");
        return;
    }
    let local = local_addresses();
    let verdicts = plan_verdicts(rules, &executables, &local, now, |executable| {
        kernel.executable_id(executable)
    });
    if verdicts.len() == PREFILL_LIMIT {
        warn!(
            limit = PREFILL_LIMIT,
            "too many exact rules to write all verdicts; the others are learned from flows"
        );
    }
    for verdict in &verdicts {
        if let Err(err) = kernel.insert(verdict) {
            warn!(error = %format!("{err:#}"), "failed to write a fast path verdict");
            return;
        }
    }
    debug!(verdicts = verdicts.len(), "fast path verdicts written");
}

/// Returns the executables that enabled rules name by exact path.
fn named_executables(rules: &RuleSet) -> BTreeSet<&Path> {
    rules
        .iter()
        .filter(|rule| rule.enabled)
        .filter_map(|rule| match &rule.subject.executable {
            Some(ExecutableMatch::Path(path)) => Some(path.as_path()),
            _ => None,
        })
        .collect()
}

/// Returns whether the kernel can apply `rules` to the flows of `executable`, or with `None`
/// to those of every program that no rule names exactly. That holds when every enabled rule
/// that may apply to them needs only the executable and the destination's address, port and
/// protocol.
fn kernel_decidable(rules: &RuleSet, executable: Option<&Path>) -> bool {
    rules.iter().filter(|rule| rule.enabled).all(|rule| {
        let applies = match (&rule.subject.executable, executable) {
            (None, _) => true,
            (Some(matcher), Some(path)) => matcher.is_match(path),
            // A rule naming one path does not apply to unnamed programs; a glob may.
            (Some(ExecutableMatch::Path(_)), None) => false,
            (Some(ExecutableMatch::Glob(_)), None) => return false,
        };
        !applies || needs_only_kernel_facts(rule)
    })
}

/// Returns whether `rule` needs no fact that the kernel lacks at `connect()`.
fn needs_only_kernel_facts(rule: &Rule) -> bool {
    let subject = &rule.subject;
    let by_name = matches!(
        rule.destination.address,
        AddressMatch::Host(_) | AddressMatch::Domain(_)
    );
    subject.sha256.is_none()
        && subject.user.is_none()
        && subject.command.is_none()
        && subject.parent.is_none()
        && !by_name
}

/// Returns the verdict of `rules` for the flows of `executable` (`None`: the programs no rule
/// names) to `destination`, or `None` when the kernel cannot decide them or no rule does.
fn kernel_verdict(
    rules: &RuleSet,
    executable: Option<&Path>,
    executable_id: u32,
    destination: SocketAddr,
    protocol: Protocol,
    now: &Clock,
) -> Option<KernelVerdict> {
    if destination.port() == DNS_PORT || !kernel_decidable(rules, executable) {
        return None;
    }
    let mut facts = ConnectionFacts::to(destination.ip(), destination.port(), protocol);
    facts.executable = executable.map(Path::to_path_buf);
    let winner = rules.decide(&facts.as_connection(), now)?;
    Some(KernelVerdict {
        executable_id,
        protocol: classifier_protocol(protocol),
        destination,
        allow: winner.action == Action::Allow,
        rule_id: winner.id.0,
    })
}

/// Plans the verdicts of a generation: for each enabled rule that names one address and one
/// port, the verdict of the whole rule set for each protocol of the rule and each executable
/// it can apply to, at most [`PREFILL_LIMIT`]. A rule for any program applies to every
/// executable that other rules name, and to all others through id 0. `executable_id` gives
/// the id of an executable in verdicts, or `None` if no verdict can name it. Destinations
/// that the table does not divert, `local` among them, get no verdict.
fn plan_verdicts<'a>(
    rules: &'a RuleSet,
    executables: &BTreeSet<&'a Path>,
    local: &[IpAddr],
    now: &Clock,
    executable_id: impl Fn(Option<&Path>) -> Option<u32>,
) -> Vec<KernelVerdict> {
    let mut verdicts = Vec::new();
    for rule in rules.iter().filter(|rule| rule.enabled) {
        let (AddressMatch::Ip(ip), PortMatch::Port(port)) =
            (&rule.destination.address, &rule.destination.port)
        else {
            continue;
        };
        let ip = canonical(*ip);
        if !is_diverted(ip) || local.contains(&ip) {
            continue;
        }
        // The rules of other executables may still decide this destination for them.
        let subjects: Vec<Option<&Path>> = match &rule.subject.executable {
            Some(ExecutableMatch::Path(path)) => vec![Some(path.as_path())],
            _ => std::iter::once(None)
                .chain(executables.iter().map(|path| Some(*path)))
                .collect(),
        };
        for protocol in protocols(rule.destination.protocol) {
            for &executable in &subjects {
                if verdicts.len() == PREFILL_LIMIT {
                    return verdicts;
                }
                let Some(id) = executable_id(executable) else {
                    continue;
                };
                let destination = SocketAddr::new(ip, *port);
                if let Some(verdict) =
                    kernel_verdict(rules, executable, id, destination, protocol, now)
                {
                    verdicts.push(verdict);
                }
            }
        }
    }
    verdicts
}

/// How often the event ring is drained. The programs wake no reader, so that a machine busy
/// with connections does not wake the daemon for each one, and events reach watchers up to
/// this much later. The ring has room for about 6,000 events, far more than arrive in this
/// time.
const DRAIN_INTERVAL: Duration = Duration::from_millis(10);

/// Turns the fast path's kernel events into connection events until the task is aborted.
pub async fn serve_events(
    shared: Arc<Shared>,
    mut events: FlowEvents,
    attribution: Arc<KernelAttribution>,
) {
    let mut open = OpenFlows::default();
    let mut drain = tokio::time::interval(DRAIN_INTERVAL);
    drain.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        drain.tick().await;
        while let Some(event) = events.next_event() {
            open.handle(&shared, &attribution, event);
        }
    }
}

/// A flow the kernel allowed that has not closed yet.
struct OpenFlow {
    connection: u64,
    owner: Owner,
    source: SocketAddr,
    destination: SocketAddr,
    protocol: Protocol,
}

impl OpenFlow {
    /// Returns the flow with its process and the name it resolved for the destination.
    fn to_flow(&self, shared: &Shared, attribution: &KernelAttribution) -> Flow {
        let process = attribution.process_info(self.owner.clone());
        let naming = shared.name_for(Some(&process), self.source, self.destination);
        Flow {
            connection: self.connection,
            process: Some(process),
            source: self.source,
            destination: self.destination,
            protocol: self.protocol,
            naming,
        }
    }
}

/// Flows the kernel allowed that have not closed yet, by socket cookie.
#[derive(Default)]
struct OpenFlows {
    flows: HashMap<u64, OpenFlow>,
}

impl OpenFlows {
    fn handle(&mut self, shared: &Shared, attribution: &KernelAttribution, event: KernelEvent) {
        match event {
            KernelEvent::Opened {
                socket_cookie,
                protocol,
                source,
                destination,
                rule_id,
                owner,
            } => {
                // Two threads sending a UDP socket's first datagrams at once report it twice.
                if self.flows.contains_key(&socket_cookie) {
                    return;
                }
                let flow = OpenFlow {
                    connection: shared.next_connection(),
                    owner,
                    source,
                    destination,
                    protocol: rules_protocol(protocol),
                };
                shared.record_kernel_hit(rule_id);
                shared.emit(
                    &flow.to_flow(shared, attribution),
                    decided(Action::Allow, rule_id),
                );
                self.insert(shared, attribution, socket_cookie, flow);
            }
            KernelEvent::Closed {
                socket_cookie,
                bytes_up,
                bytes_down,
                failed,
            } => {
                let Some(flow) = self.flows.remove(&socket_cookie) else {
                    return;
                };
                let error = failed.then(|| "connection failed before it was established".into());
                shared.emit(
                    &flow.to_flow(shared, attribution),
                    closed(bytes_up, bytes_down, error),
                );
            }
            KernelEvent::Denied {
                protocol,
                destination,
                rule_id,
                owner,
            } => {
                let flow = OpenFlow {
                    connection: shared.next_connection(),
                    owner,
                    source: unspecified(destination),
                    destination,
                    protocol: rules_protocol(protocol),
                };
                shared.record_kernel_hit(rule_id);
                shared.emit(
                    &flow.to_flow(shared, attribution),
                    decided(Action::Deny, rule_id),
                );
            }
        }
    }

    /// Tracks an opened flow. The kernel keeps at most as many fast sockets as its map holds,
    /// so more open flows mean that closed events were lost: the oldest are then ended with
    /// an error.
    fn insert(
        &mut self,
        shared: &Shared,
        attribution: &KernelAttribution,
        socket_cookie: u64,
        flow: OpenFlow,
    ) {
        let capacity = FAST_SOCKETS_CAPACITY as usize;
        if self.flows.len() >= capacity {
            warn!(
                open = self.flows.len(),
                "fast path flows without a closed event; dropping the oldest"
            );
            let mut oldest: Vec<(u64, u64)> = self
                .flows
                .iter()
                .map(|(cookie, flow)| (flow.connection, *cookie))
                .collect();
            oldest.sort_unstable();
            for (_, cookie) in oldest.into_iter().take(capacity / 10) {
                if let Some(lost) = self.flows.remove(&cookie) {
                    let error = Some("the kernel's closed event was lost".to_owned());
                    shared.emit(&lost.to_flow(shared, attribution), closed(0, 0, error));
                }
            }
        }
        self.flows.insert(socket_cookie, flow);
    }
}

fn decided(action: Action, rule_id: u64) -> EventKind {
    EventKind::Decided {
        action,
        by: DecidedBy::Rule {
            rule: tollgate_rules::RuleId(rule_id),
        },
        in_kernel: true,
    }
}

/// Returns the source of a flow denied at `connect()`, which has no port yet: the unspecified
/// address of the destination's family, port 0.
fn unspecified(destination: SocketAddr) -> SocketAddr {
    match destination {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    }
}

fn protocols(protocol: ProtocolMatch) -> Vec<Protocol> {
    match protocol {
        ProtocolMatch::Tcp => vec![Protocol::Tcp],
        ProtocolMatch::Udp => vec![Protocol::Udp],
        ProtocolMatch::Any => vec![Protocol::Tcp, Protocol::Udp],
    }
}

fn classifier_protocol(protocol: Protocol) -> tollgate_classifier::Protocol {
    match protocol {
        Protocol::Tcp => tollgate_classifier::Protocol::Tcp,
        Protocol::Udp => tollgate_classifier::Protocol::Udp,
    }
}

fn rules_protocol(protocol: tollgate_classifier::Protocol) -> Protocol {
    match protocol {
        tollgate_classifier::Protocol::Tcp => Protocol::Tcp,
        tollgate_classifier::Protocol::Udp => Protocol::Udp,
    }
}

/// Returns an IPv4-mapped IPv6 address as IPv4, as rules and verdict keys treat it.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// Returns whether the nftables table diverts connections to `ip`: not loopback, multicast,
/// broadcast, link-local IPv6 or unspecified. The kernel programs skip the same addresses.
fn is_diverted(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            !(v4.is_loopback() || v4.is_multicast() || v4.is_broadcast() || v4.octets()[0] == 0)
        }
        IpAddr::V6(v6) => {
            let link_local = v6.segments()[0] & 0xffc0 == 0xfe80;
            !(v6.is_loopback() || v6.is_multicast() || v6.is_unspecified() || link_local)
        }
    }
}

/// Returns the addresses of this network namespace's interfaces, which the table never
/// diverts.
///
/// NOTE: an address added after a rule change keeps any verdict written for it until the next
/// rule change.
fn local_addresses() -> Vec<IpAddr> {
    match nix::ifaddrs::getifaddrs() {
        Ok(interfaces) => interfaces
            .filter_map(|interface| {
                let address = interface.address?;
                if let Some(v4) = address.as_sockaddr_in() {
                    return Some(IpAddr::V4(v4.ip()));
                }
                address.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            })
            .collect(),
        Err(err) => {
            warn!(error = %err, "failed to list local addresses");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use tollgate_rules::{Destination, Lifetime, RuleId, Subject};

    use super::*;

    fn rule(
        id: u64,
        subject: Option<&str>,
        address: &str,
        port: Option<u16>,
        action: Action,
    ) -> Rule {
        let address = match address {
            "any" => AddressMatch::Any,
            other => other.parse().unwrap(),
        };
        let subject = subject.map_or_else(Subject::any, Subject::executable);
        let destination = Destination {
            address,
            port: port.map_or(PortMatch::Any, PortMatch::Port),
            protocol: ProtocolMatch::Tcp,
        };
        Rule::new(
            RuleId(id),
            subject,
            destination,
            action,
            Lifetime::UntilRestart,
        )
    }

    /// Plans with ids 1, 2, ... for the named executables in path order.
    fn plan(rules: &RuleSet, local: &[IpAddr]) -> Vec<KernelVerdict> {
        let executables = named_executables(rules);
        let ids: Vec<&Path> = executables.iter().copied().collect();
        plan_verdicts(
            rules,
            &executables,
            local,
            &now(),
            |executable| match executable {
                Some(path) => Some(
                    ids.iter()
                        .position(|named| *named == path)
                        .map_or(0, |index| index as u32 + 1),
                ),
                None => Some(0),
            },
        )
    }

    fn now() -> Clock {
        Clock {
            unix_ms: 1_800_000_000_000,
            boottime_ms: 1_000,
        }
    }

    #[test]
    fn exact_rule_plans_one_verdict_per_protocol() {
        let mut exact = rule(1, None, "203.0.113.10", Some(443), Action::Allow);
        exact.destination.protocol = ProtocolMatch::Any;
        let rules = RuleSet::from_rules(vec![exact]);

        let verdicts = plan(&rules, &[]);

        assert_eq!(verdicts.len(), 2);
        assert!(verdicts.iter().all(|verdict| verdict.allow));
        assert!(verdicts.iter().all(|verdict| verdict.executable_id == 0));
        assert_eq!(verdicts[0].destination, "203.0.113.10:443".parse().unwrap());
        assert_eq!(verdicts[0].protocol, tollgate_classifier::Protocol::Tcp);
        assert_eq!(verdicts[1].protocol, tollgate_classifier::Protocol::Udp);
    }

    #[test]
    fn network_and_any_port_rules_plan_nothing() {
        let rules = RuleSet::from_rules(vec![
            rule(1, None, "any", Some(443), Action::Allow),
            rule(2, None, "203.0.113.10", None, Action::Allow),
        ]);

        assert!(plan(&rules, &[]).is_empty());
    }

    #[test]
    fn program_rule_beats_rule_for_any() {
        let rules = RuleSet::from_rules(vec![
            rule(1, None, "203.0.113.10", Some(7), Action::Deny),
            rule(2, Some("/usr/bin/curl"), "any", None, Action::Allow),
        ]);

        let verdicts = plan(&rules, &[]);

        // The deny rule plans for every other program (id 0) and for curl (id 1), where the
        // program rule wins even with any address.
        assert_eq!(verdicts.len(), 2);
        let others = verdicts.iter().find(|v| v.executable_id == 0).unwrap();
        assert!(!others.allow);
        assert_eq!(others.rule_id, 1);
        let curl = verdicts.iter().find(|v| v.executable_id == 1).unwrap();
        assert!(curl.allow);
        assert_eq!(curl.rule_id, 2);
    }

    #[test]
    fn name_rule_keeps_program_in_proxy() {
        let rules = RuleSet::from_rules(vec![
            rule(1, None, "203.0.113.10", Some(80), Action::Allow),
            rule(2, Some("/usr/bin/curl"), "*.lab.test", None, Action::Deny),
        ]);

        let verdicts = plan(&rules, &[]);

        // curl's connections may carry a name that its deny rule matches: only the kernel's
        // verdict for the other programs is written.
        assert_eq!(verdicts.len(), 1);
        assert_eq!(verdicts[0].executable_id, 0);
    }

    #[test]
    fn user_condition_keeps_flows_in_proxy() {
        let mut per_user = rule(1, None, "203.0.113.10", Some(80), Action::Allow);
        per_user.subject.user = Some("65534".parse().unwrap());
        let rules = RuleSet::from_rules(vec![per_user]);

        assert!(plan(&rules, &[]).is_empty());
    }

    #[test]
    fn executable_glob_keeps_others_in_proxy() {
        let mut glob = rule(2, None, "any", None, Action::Deny);
        glob.subject.executable = Some("/opt/*".parse().unwrap());
        let rules = RuleSet::from_rules(vec![
            rule(1, None, "203.0.113.10", Some(80), Action::Allow),
            glob,
        ]);

        assert!(plan(&rules, &[]).is_empty());
    }

    #[test]
    fn unrecordable_program_gets_no_verdict() {
        let rules = RuleSet::from_rules(vec![rule(
            1,
            Some("/opt/x"),
            "203.0.113.10",
            Some(7),
            Action::Allow,
        )]);
        let executables = named_executables(&rules);

        let verdicts = plan_verdicts(&rules, &executables, &[], &now(), |executable| {
            executable.map_or(Some(0), |_| None)
        });

        assert!(verdicts.is_empty());
    }

    #[test]
    fn local_and_loopback_destinations_plan_nothing() {
        let rules = RuleSet::from_rules(vec![
            rule(1, None, "10.77.0.2", Some(80), Action::Deny),
            rule(2, None, "127.0.0.1", Some(80), Action::Deny),
        ]);

        assert!(plan(&rules, &["10.77.0.2".parse().unwrap()]).is_empty());
    }

    #[test]
    fn dns_port_plans_nothing() {
        let mut dns = rule(1, None, "203.0.113.53", Some(53), Action::Allow);
        dns.destination.protocol = ProtocolMatch::Any;
        let rules = RuleSet::from_rules(vec![dns]);

        assert!(plan(&rules, &[]).is_empty());
    }

    #[test]
    fn disabled_rule_plans_nothing() {
        let mut disabled = rule(1, None, "203.0.113.10", Some(7), Action::Allow);
        disabled.enabled = false;
        let rules = RuleSet::from_rules(vec![disabled]);

        assert!(plan(&rules, &[]).is_empty());
    }

    #[test]
    fn loopback_and_multicast_are_not_diverted() {
        for ip in [
            "127.0.0.1",
            "224.0.0.251",
            "255.255.255.255",
            "::1",
            "fe80::1",
            "ff02::1",
        ] {
            assert!(!is_diverted(ip.parse().unwrap()), "{ip}");
        }
        assert!(!is_diverted("::ffff:127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn internet_addresses_are_diverted() {
        for ip in [
            "203.0.113.10",
            "10.0.0.1",
            "2001:db8::10",
            "::ffff:203.0.113.10",
        ] {
            assert!(is_diverted(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn mapped_address_becomes_ipv4() {
        let mapped: IpAddr = "::ffff:203.0.113.10".parse().unwrap();

        assert_eq!(canonical(mapped), "203.0.113.10".parse::<IpAddr>().unwrap());
    }
}
