//! The monitor window's contents.

use iced::{
    Alignment, Element, Length,
    widget::{button, column, row, rule, scrollable, space, text, text_input},
};
use tollgate_proxy::protocol::{ConnectionInfo, ConnectionState};
use tollgate_rules::Action;

use super::{Monitor, MonitorMessage, ProcessGroup, StateFilter, state_text};
use crate::format;

/// Returns the contents of the monitor window; `banner` is the reason the daemon cannot be reached.
pub fn view(monitor: &Monitor, banner: Option<String>) -> Element<'_, MonitorMessage> {
    let filters = StateFilter::ALL.map(|filter| {
        let style = if monitor.filter == filter {
            button::primary
        } else {
            button::secondary
        };
        button(text(filter.label()))
            .style(style)
            .on_press(MonitorMessage::Filter(filter))
            .into()
    });
    let toolbar = row![
        text_input("Search process, address or state", &monitor.search)
            .on_input(MonitorMessage::Search)
            .width(Length::Fill),
        row(filters).spacing(4),
        button(text("Rules")).on_press(MonitorMessage::OpenRules),
    ]
    .spacing(8)
    .align_y(Alignment::Center);

    let groups = monitor.groups();
    let list: Element<'_, MonitorMessage> = if groups.is_empty() {
        text("No connections to show").into()
    } else {
        column(groups.into_iter().map(process_group))
            .spacing(12)
            .into()
    };
    let mut page = column![toolbar].spacing(10).padding(12);
    if let Some(banner) = banner {
        page = page.push(text(banner).style(text::danger));
    }
    page.push(rule::horizontal(1))
        .push(scrollable(list).height(Length::Fill))
        .into()
}

fn process_group(group: ProcessGroup<'_>) -> Element<'_, MonitorMessage> {
    let destinations = group.destinations.into_iter().map(|(title, connections)| {
        let rows = connections.into_iter().map(connection_row);
        column![
            text(title).size(15),
            column(rows).spacing(2).padding([0, 16])
        ]
        .spacing(2)
        .into()
    });
    column![
        text(group.title).size(17),
        column(destinations).spacing(6).padding([0, 12])
    ]
    .spacing(4)
    .into()
}

fn connection_row(info: &ConnectionInfo) -> Element<'_, MonitorMessage> {
    let open = if info.ended_unix_ms.is_some() {
        "closed"
    } else {
        "open"
    };
    let details = format!(
        "port {} {}, {}, {}, up {}, down {}",
        info.destination.port(),
        info.protocol.to_string().to_uppercase(),
        state_text(info),
        open,
        format::bytes(info.bytes_up),
        format::bytes(info.bytes_down),
    );
    let allow = (info.state != ConnectionState::Allowed)
        .then_some(MonitorMessage::Decide(info.connection, Action::Allow));
    let deny = (info.state != ConnectionState::Denied)
        .then_some(MonitorMessage::Decide(info.connection, Action::Deny));
    row![
        text(details).size(14),
        space::horizontal(),
        button(text("Allow").size(13))
            .style(button::success)
            .on_press_maybe(allow),
        button(text("Deny").size(13))
            .style(button::danger)
            .on_press_maybe(deny),
    ]
    .spacing(6)
    .align_y(Alignment::Center)
    .into()
}
