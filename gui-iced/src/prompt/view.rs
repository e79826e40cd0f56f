//! The prompt window's contents.

use iced::{
    Alignment, Element, Font, Length,
    widget::{button, column, container, image, row, rule, scrollable, space, text},
};
use tollgate_proxy::protocol::PendingInfo;
use tollgate_rules::Action;

use super::{
    DestinationGroup, Prompt, PromptMessage,
    choice::{LifetimeChoice, PortChoice, ScopeChoice},
};
use crate::format;

/// Timing the prompt shows: when the daemon gives up waiting, and what it does then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Countdown {
    /// The daemon's prompt timeout, in milliseconds.
    pub timeout_ms: u64,
    /// Action the daemon applies when no decision comes in time.
    pub default_action: Action,
    /// The current time, in milliseconds since the Unix epoch.
    pub now_unix_ms: u64,
}

/// Returns the contents of a prompt window.
pub fn view(prompt: &Prompt, countdown: Countdown) -> Element<'_, PromptMessage> {
    let destinations = prompt.groups().into_iter().map(destination_group);
    let body = column![
        header(prompt),
        rule::horizontal(1),
        text(summary(prompt)),
        scrollable(column(destinations).spacing(10)).height(Length::Fill),
        rule::horizontal(1),
        choices(prompt),
        actions(prompt, countdown),
    ]
    .spacing(10)
    .padding(16);
    container(body).into()
}

fn header(prompt: &Prompt) -> Element<'_, PromptMessage> {
    let icon: Element<'_, PromptMessage> = match &prompt.label.icon {
        Some(handle) => image(handle.clone()).width(48).height(48).into(),
        None => container(text("?").size(32))
            .center(48)
            .style(container::rounded_box)
            .into(),
    };
    let process = prompt
        .requests
        .first()
        .and_then(|request| request.process.as_ref());
    row![
        icon,
        column![
            text(&prompt.label.name).size(22).font(Font {
                weight: iced::font::Weight::Bold,
                ..Font::DEFAULT
            }),
            text(match process {
                Some(process) => format::process(Some(process)),
                None => "executable, pid and user not known yet".to_owned(),
            })
            .size(14),
        ]
        .spacing(4),
    ]
    .spacing(12)
    .align_y(Alignment::Center)
    .into()
}

fn summary(prompt: &Prompt) -> String {
    let destinations = prompt.groups().len();
    let connections = prompt.connections();
    let plural = |count: usize, word: &str| {
        if count == 1 {
            format!("1 {word}")
        } else {
            format!("{count} {word}s")
        }
    };
    format!(
        "wants to open {} to {}:",
        plural(connections, "connection"),
        plural(destinations, "destination"),
    )
}

fn destination_group(group: DestinationGroup<'_>) -> Element<'_, PromptMessage> {
    let title = if group.is_domain {
        group.title.clone()
    } else {
        format!("{} (name unknown)", group.title)
    };
    let lines = group.requests.into_iter().map(|request| {
        text(destination_line(request, group.is_domain))
            .size(14)
            .into()
    });
    column![
        text(title).size(16),
        column(lines).spacing(2).padding([0, 16])
    ]
    .spacing(2)
    .into()
}

fn destination_line(request: &PendingInfo, is_domain: bool) -> String {
    let address = request.destination.ip();
    let port = request.destination.port();
    let protocol = request.protocol.to_string().to_uppercase();
    let mut line = if is_domain {
        format!("{address} port {port} {protocol}")
    } else {
        format!("port {port} {protocol}")
    };
    if let Some(source) = format::name_source(request.name_source) {
        line.push_str(&format!(", name from {source}"));
    }
    if request.connections > 1 {
        line.push_str(&format!(", {} connections", request.connections));
    }
    line
}

fn choices(prompt: &Prompt) -> Element<'_, PromptMessage> {
    let scope = ScopeChoice::ALL.map(|scope| {
        let offered = prompt.offers_scope(scope);
        option(scope.to_string(), prompt.choice.scope == scope, offered)
            .map(move |()| PromptMessage::Scope(scope))
    });
    let port = PortChoice::ALL.map(|port| {
        option(port.to_string(), prompt.choice.port == port, true)
            .map(move |()| PromptMessage::Port(port))
    });
    let lifetime = LifetimeChoice::ALL.map(|lifetime| {
        let offered = prompt.offers_lifetime(lifetime);
        option(
            lifetime.to_string(),
            prompt.choice.lifetime == lifetime,
            offered,
        )
        .map(move |()| PromptMessage::Lifetime(lifetime))
    });
    column![
        choice_row("Scope (s)", scope),
        choice_row("Port (p)", port),
        choice_row("Lifetime (l)", lifetime),
    ]
    .spacing(6)
    .into()
}

fn choice_row<'a, const N: usize>(
    label: &'a str,
    options: [Element<'a, PromptMessage>; N],
) -> Element<'a, PromptMessage> {
    row![text(label).width(100), row(options).spacing(4).wrap()]
        .align_y(Alignment::Center)
        .into()
}

/// Builds one selectable option. An option that is not offered has no press action.
fn option(label: String, selected: bool, offered: bool) -> Element<'static, ()> {
    let style = if selected {
        button::primary
    } else {
        button::secondary
    };
    button(text(label).size(14))
        .style(style)
        .on_press_maybe(offered.then_some(()))
        .into()
}

fn actions(prompt: &Prompt, countdown: Countdown) -> Element<'_, PromptMessage> {
    let deadline = prompt.deadline_unix_ms(countdown.timeout_ms);
    let remaining = deadline.map_or(0, |deadline| deadline.saturating_sub(countdown.now_unix_ms));
    let default = match countdown.default_action {
        Action::Allow => "Allowing",
        Action::Deny => "Denying",
    };
    let mut status = column![
        text(format!(
            "{default} in {} unless you answer",
            format::countdown(remaining)
        ))
        .size(14)
    ];
    let keys = if prompt.keys_armed(countdown.now_unix_ms) {
        "Keys: a allow, d deny, s scope, p port, l lifetime"
    } else {
        "Keys work once this window has the focus"
    };
    status = status.push(text(keys).size(12));
    if let Some(error) = &prompt.error {
        status = status.push(text(error).size(12).style(text::danger));
    }
    row![
        status,
        space::horizontal(),
        button(text("Deny"))
            .style(button::danger)
            .on_press(PromptMessage::Decide(Action::Deny)),
        button(text("Allow"))
            .style(button::success)
            .on_press(PromptMessage::Decide(Action::Allow)),
    ]
    .spacing(8)
    .align_y(Alignment::Center)
    .into()
}
