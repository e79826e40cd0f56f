//! The rules window's contents.

use iced::{
    Alignment, Element, Length,
    widget::{button, checkbox, column, row, rule, scrollable, space, text, text_input},
};
use tollgate_rules::Rule;

use super::{RuleLifetime, RulesMessage, RulesView, describe};

/// Returns the contents of the rules window; `banner` is the reason the daemon cannot be reached.
pub fn view(rules: &RulesView, banner: Option<String>) -> Element<'_, RulesMessage> {
    let listed = rules.listed();
    let list: Element<'_, RulesMessage> = if listed.is_empty() {
        text("No rules to show").into()
    } else {
        column(listed.into_iter().map(rule_row)).spacing(8).into()
    };
    let mut page = column![
        text_input("Filter rules", &rules.filter)
            .on_input(RulesMessage::Filter)
            .width(Length::Fill)
    ]
    .spacing(10)
    .padding(12);
    if let Some(banner) = banner {
        page = page.push(text(banner).style(text::danger));
    }
    page.push(rule::horizontal(1))
        .push(scrollable(list).height(Length::Fill))
        .into()
}

fn rule_row(rule: &Rule) -> Element<'_, RulesMessage> {
    let id = rule.id;
    let current = RuleLifetime::of(rule);
    let lifetimes = RuleLifetime::ALL.map(|lifetime| {
        let style = if current == Some(lifetime) {
            button::primary
        } else {
            button::secondary
        };
        button(text(lifetime.to_string()).size(13))
            .style(style)
            .on_press(RulesMessage::SetLifetime(id, lifetime))
            .into()
    });
    row![
        checkbox(rule.enabled)
            .label(format!("{id}"))
            .on_toggle(move |enabled| RulesMessage::SetEnabled(id, enabled)),
        text(describe(rule)).size(14),
        space::horizontal(),
        row(lifetimes).spacing(2),
        button(text("Delete").size(13))
            .style(button::danger)
            .on_press(RulesMessage::Remove(id)),
    ]
    .spacing(8)
    .align_y(Alignment::Center)
    .into()
}
