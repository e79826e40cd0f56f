//! `tollgate rules`: list, add, edit, enable, disable, remove, export and import rules.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use tollgate_proxy::{
    client::Client,
    protocol::{NewRule, Request, Response, RuleChanges},
};
use tollgate_rules::{
    Conflict, Destination, Lifetime, LifetimeSpec, Rule, RuleId, Subject, exchange,
};

use crate::{
    expect,
    format::{describe_lifetime, describe_rule},
    rule_args::{ConditionArgs, LifetimeArgs, action},
};

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// List the rules in precedence order; a rule comes before every rule it beats.
    List(ListArgs),
    /// Add a rule.
    Add(AddArgs),
    /// Change fields of a rule; flags left out keep their value.
    Edit(EditArgs),
    /// Enable a rule.
    Enable {
        /// Id of the rule, from `tollgate rules list`.
        id: u64,
    },
    /// Disable a rule: it is kept but never matches.
    Disable {
        /// Id of the rule, from `tollgate rules list`.
        id: u64,
    },
    /// Remove a rule by id.
    Remove {
        /// Id of the rule, from `tollgate rules list`.
        id: u64,
    },
    /// Write every rule to a JSON export file, or to standard output.
    Export {
        /// File to write; standard output when absent.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Add the rules of an export file: all of them, or none when one is invalid.
    Import {
        /// The export file.
        file: PathBuf,
        /// Give the rules new ids instead of keeping the ids in the file.
        #[arg(long)]
        new_ids: bool,
    },
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Show only rules with this action: allow or deny.
    #[arg(long)]
    action: Option<String>,
    /// Show only rules whose subject mentions this text, such as an executable path.
    #[arg(long, value_name = "TEXT")]
    subject: Option<String>,
    /// Show only rules whose destination mentions this text, such as a domain or network.
    #[arg(long, value_name = "TEXT")]
    to: Option<String>,
    /// Show only enabled rules.
    #[arg(long, conflicts_with = "disabled")]
    enabled: bool,
    /// Show only disabled rules.
    #[arg(long)]
    disabled: bool,
    /// Show only rules with the priority mark.
    #[arg(long)]
    priority: bool,
    /// Show only rules that end by time or process exit.
    #[arg(long)]
    temporary: bool,
    /// Show only rules that are saved to disk.
    #[arg(long)]
    stored: bool,
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// Action of the rule: allow or deny.
    #[arg(long)]
    action: String,
    #[command(flatten)]
    conditions: ConditionArgs,
    #[command(flatten)]
    lifetime: LifetimeArgs,
    /// Mark the rule as an exception that beats every rule without the mark.
    #[arg(long)]
    priority: bool,
    /// Add the rule disabled.
    #[arg(long)]
    disabled: bool,
    /// Free text kept with the rule.
    #[arg(long, default_value = "")]
    note: String,
}

#[derive(Debug, Args)]
pub struct EditArgs {
    /// Id of the rule, from `tollgate rules list`.
    id: u64,
    /// New action: allow or deny.
    #[arg(long)]
    action: Option<String>,
    #[command(flatten)]
    conditions: ConditionArgs,
    #[command(flatten)]
    lifetime: LifetimeArgs,
    /// Set the priority mark.
    #[arg(long, conflicts_with = "no_priority")]
    priority: bool,
    /// Clear the priority mark.
    #[arg(long)]
    no_priority: bool,
    /// New note.
    #[arg(long)]
    note: Option<String>,
}

/// Runs one `tollgate rules` command.
pub async fn run(client: &mut Client, command: RulesCommand) -> anyhow::Result<()> {
    match command {
        RulesCommand::List(args) => list(client, &args).await,
        RulesCommand::Add(args) => add(client, args).await,
        RulesCommand::Edit(args) => edit(client, args).await,
        RulesCommand::Enable { id } => set_enabled(client, id, true).await,
        RulesCommand::Disable { id } => set_enabled(client, id, false).await,
        RulesCommand::Remove { id } => {
            expect(
                client
                    .request(Request::RemoveRule { id: RuleId(id) })
                    .await?,
            )?;
            println!("removed rule {id}");
            Ok(())
        }
        RulesCommand::Export { output } => export(client, output).await,
        RulesCommand::Import { file, new_ids } => import(client, &file, new_ids).await,
    }
}

/// Returns every rule in precedence order and the conflicts between them.
pub async fn fetch(client: &mut Client) -> anyhow::Result<(Vec<Rule>, Vec<Conflict>)> {
    let Response::Rules { rules, conflicts } = expect(client.request(Request::ListRules).await?)?
    else {
        bail!("unexpected reply to rules list");
    };
    Ok((rules, conflicts))
}

async fn list(client: &mut Client, args: &ListArgs) -> anyhow::Result<()> {
    let (rules, conflicts) = fetch(client).await?;
    let shown: Vec<&Rule> = rules.iter().filter(|rule| args.keeps(rule)).collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&shown)?);
        return Ok(());
    }
    if shown.is_empty() {
        println!("no rules");
        return Ok(());
    }
    println!(
        "{:<5} {:<6} {:<22} {:>6}  RULE",
        "ID", "ACTION", "LIFETIME", "HITS"
    );
    for rule in shown {
        println!(
            "{:<5} {:<6} {:<22} {:>6}  {}",
            rule.id.0,
            rule.action,
            describe_lifetime(&rule.lifetime),
            rule.hits,
            describe_rule(rule)
        );
        for conflict in conflicts
            .iter()
            .filter(|conflict| conflict.loser == rule.id)
        {
            println!(
                "      ^ never decides: rule {} has the same conditions and wins",
                conflict.winner
            );
        }
    }
    Ok(())
}

impl ListArgs {
    fn keeps(&self, rule: &Rule) -> bool {
        let action = self
            .action
            .as_deref()
            .is_none_or(|action| rule.action.to_string() == action);
        let subject = self
            .subject
            .as_deref()
            .is_none_or(|text| rule.subject.to_string().contains(text));
        let to = self
            .to
            .as_deref()
            .is_none_or(|text| rule.destination.to_string().contains(text));
        let temporary = matches!(
            rule.lifetime,
            Lifetime::UntilExit(_) | Lifetime::For { .. } | Lifetime::Until { .. }
        );
        action
            && subject
            && to
            && (!self.enabled || rule.enabled)
            && (!self.disabled || !rule.enabled)
            && (!self.priority || rule.priority)
            && (!self.temporary || temporary)
            && (!self.stored || rule.lifetime.is_stored())
    }
}

async fn add(client: &mut Client, args: AddArgs) -> anyhow::Result<()> {
    let rule = NewRule {
        subject: args.conditions.apply_subject(Subject::any())?,
        destination: args.conditions.apply_destination(Destination::any())?,
        action: action(&args.action)?,
        lifetime: args.lifetime.spec()?.unwrap_or(LifetimeSpec::Forever),
        priority: args.priority,
        enabled: !args.disabled,
        note: args.note,
    };
    let request = Request::AddRule {
        rule: Box::new(rule),
    };
    let Response::RuleAdded { rule, settled } = expect(client.request(request).await?)? else {
        bail!("unexpected reply to rules add");
    };
    println!(
        "added rule {}: {} {}",
        rule.id,
        rule.action,
        describe_rule(&rule)
    );
    if settled > 0 {
        println!("{settled} pending connection(s) settled by it");
    }
    Ok(())
}

async fn edit(client: &mut Client, args: EditArgs) -> anyhow::Result<()> {
    let id = RuleId(args.id);
    let (rules, _) = fetch(client).await?;
    let Some(current) = rules.iter().find(|rule| rule.id == id) else {
        bail!("no rule with id {id}; list them with `tollgate rules list`");
    };
    let priority = match (args.priority, args.no_priority) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    };
    let changes = RuleChanges {
        subject: Some(args.conditions.apply_subject(current.subject.clone())?),
        destination: Some(
            args.conditions
                .apply_destination(current.destination.clone())?,
        ),
        action: args.action.as_deref().map(action).transpose()?,
        lifetime: args.lifetime.spec()?,
        priority,
        enabled: None,
        note: args.note,
    };
    send_changes(client, id, changes).await
}

async fn set_enabled(client: &mut Client, id: u64, enabled: bool) -> anyhow::Result<()> {
    let changes = RuleChanges {
        enabled: Some(enabled),
        ..RuleChanges::default()
    };
    send_changes(client, RuleId(id), changes).await
}

async fn send_changes(client: &mut Client, id: RuleId, changes: RuleChanges) -> anyhow::Result<()> {
    let request = Request::EditRule {
        id,
        changes: Box::new(changes),
    };
    let Response::RuleEdited { rule, settled } = expect(client.request(request).await?)? else {
        bail!("unexpected reply to rules edit");
    };
    println!(
        "rule {}: {} {}, {}",
        rule.id,
        rule.action,
        describe_rule(&rule),
        describe_lifetime(&rule.lifetime)
    );
    if settled > 0 {
        println!("{settled} pending connection(s) settled by it");
    }
    Ok(())
}

async fn export(client: &mut Client, output: Option<PathBuf>) -> anyhow::Result<()> {
    let (rules, _) = fetch(client).await?;
    let text = exchange::export_rules(&rules).context("failed to encode the rules as JSON")?;
    match output {
        None => print!("{text}"),
        Some(path) => {
            fs::write(&path, text)
                .with_context(|| format!("failed to write {}", path.display()))?;
            eprintln!("exported {} rule(s) to {}", rules.len(), path.display());
        }
    }
    Ok(())
}

async fn import(client: &mut Client, file: &Path, new_ids: bool) -> anyhow::Result<()> {
    let text =
        fs::read_to_string(file).with_context(|| format!("failed to read {}", file.display()))?;
    let rules = exchange::parse_rule_file(&text)
        .with_context(|| format!("nothing imported from {}", file.display()))?;
    let request = Request::ImportRules { rules, new_ids };
    let response = expect(client.request(request).await?)
        .with_context(|| format!("nothing imported from {}", file.display()))?;
    let Response::RulesImported { ids, settled } = response else {
        bail!("unexpected reply to rules import");
    };
    println!("imported {} rule(s) from {}", ids.len(), file.display());
    if settled > 0 {
        println!("{settled} pending connection(s) settled by them");
    }
    Ok(())
}
