//! `runnel quota set|delete|list`: the quotas of client ids and principals.

use std::io::Write as _;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use runnel_client::QuotaRates;
use serde::Serialize;

use crate::Ctx;
use crate::output::{self, Output, Table};
use crate::parse::{format_size, parse_size};

/// `runnel quota ...`
#[derive(Debug, Subcommand)]
pub enum QuotaCommand {
    /// Set the quotas of a client id or a principal, replacing any it had (unset rates follow
    /// the defaults)
    #[command(after_help = "Examples:
  runnel quota set billing --produce-rate 10MiB --fetch-rate 50MiB
  runnel quota set reports --request-rate 100
  runnel quota set bulk --produce-rate 0     # no limit, whatever the default
  runnel quota set --principal User:etl --fetch-rate 20MiB   # every call of User:etl")]
    Set(SetArgs),
    /// Remove the quotas of a client id or a principal: it follows the defaults again
    #[command(after_help = "Examples:
  runnel quota delete billing
  runnel quota delete --principal User:etl")]
    Delete(WhoseArgs),
    /// List the default quotas and every client id and principal with quotas of its own
    #[command(after_help = "Examples:
  runnel quota list
  runnel quota list --output json")]
    List,
}

/// Whose quotas: a client id, or a principal.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct WhoseArgs {
    /// The client id, as its clients send it (`""` for clients that send none)
    client_id: Option<String>,
    /// A principal (User:<name>) instead: every call it makes pays these quotas, whatever
    /// client id it names
    #[arg(long, value_name = "PRINCIPAL")]
    principal: Option<String>,
}

impl WhoseArgs {
    fn name(&self) -> String {
        match (&self.principal, &self.client_id) {
            (Some(p), _) => format!("principal {p}"),
            (None, id) => format!("client id {:?}", id.as_deref().unwrap_or_default()),
        }
    }
}

/// `runnel quota set`
#[derive(Debug, Args)]
pub struct SetArgs {
    #[command(flatten)]
    whose: WhoseArgs,
    /// Batch bytes produced per second (0: no limit)
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    produce_rate: Option<u64>,
    /// Batch bytes fetched per second (0: no limit)
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    fetch_rate: Option<u64>,
    /// Calls per second (0: no limit)
    #[arg(long, value_name = "N")]
    request_rate: Option<u64>,
}

#[derive(Serialize)]
struct RatesJson {
    produce_bytes_per_sec: Option<u64>,
    fetch_bytes_per_sec: Option<u64>,
    requests_per_sec: Option<u64>,
}

impl From<QuotaRates> for RatesJson {
    fn from(r: QuotaRates) -> Self {
        RatesJson {
            produce_bytes_per_sec: r.produce_bytes_per_sec,
            fetch_bytes_per_sec: r.fetch_bytes_per_sec,
            requests_per_sec: r.requests_per_sec,
        }
    }
}

#[derive(Serialize)]
struct ClientJson<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    principal: Option<&'a str>,
    rates: RatesJson,
    effective: RatesJson,
}

#[derive(Serialize)]
struct ListJson<'a> {
    defaults: RatesJson,
    clients: Vec<ClientJson<'a>>,
}

/// Runs a `quota` command.
///
/// # Errors
/// Connection and broker errors.
pub async fn run(ctx: &Ctx, command: QuotaCommand) -> anyhow::Result<()> {
    let admin = ctx.client().await?.admin();
    match command {
        QuotaCommand::Set(a) => {
            let rates = QuotaRates {
                produce_bytes_per_sec: a.produce_rate,
                fetch_bytes_per_sec: a.fetch_rate,
                requests_per_sec: a.request_rate,
            };
            let name = a.whose.name();
            let set = match (&a.whose.principal, &a.whose.client_id) {
                (Some(p), _) => admin.set_principal_quota(p, rates).await,
                (None, id) => {
                    admin
                        .set_quota(id.as_deref().unwrap_or_default(), rates)
                        .await
                }
            };
            set.with_context(|| format!("cannot set the quotas of {name}"))?;
            done(ctx, &a.whose, "set")
        }
        QuotaCommand::Delete(whose) => {
            let name = whose.name();
            let deleted = match (&whose.principal, &whose.client_id) {
                (Some(p), _) => admin.delete_principal_quota(p).await,
                (None, id) => admin.delete_quota(id.as_deref().unwrap_or_default()).await,
            };
            deleted.with_context(|| format!("cannot delete the quotas of {name}"))?;
            done(ctx, &whose, "deleted")
        }
        QuotaCommand::List => {
            let listing = admin.list_quotas().await.context("cannot list quotas")?;
            match ctx.output {
                Output::Json => output::print_json(&ListJson {
                    defaults: listing.defaults.into(),
                    clients: listing
                        .clients
                        .iter()
                        .map(|c| ClientJson {
                            client_id: c.principal.is_none().then_some(c.client_id.as_str()),
                            principal: c.principal.as_deref(),
                            rates: c.rates.into(),
                            effective: c.effective.into(),
                        })
                        .collect(),
                })?,
                Output::Table => {
                    let mut table = Table::new(&[
                        "CLIENT ID OR PRINCIPAL",
                        "PRODUCE RATE",
                        "FETCH RATE",
                        "REQUEST RATE",
                    ]);
                    table.row(row("(default)", listing.defaults, listing.defaults));
                    for c in &listing.clients {
                        let name = match &c.principal {
                            Some(p) => p.clone(),
                            None => format!("{:?}", c.client_id),
                        };
                        table.row(row(&name, c.rates, c.effective));
                    }
                    let mut out = output::stdout();
                    table.write(&mut out)?;
                    out.flush()?;
                }
            }
            Ok(())
        }
    }
}

/// Confirms a change.
fn done(ctx: &Ctx, whose: &WhoseArgs, what: &str) -> anyhow::Result<()> {
    match ctx.output {
        Output::Json => {
            let value = match &whose.principal {
                Some(p) => serde_json::json!({ "principal": p, what: true }),
                None => {
                    serde_json::json!({ "client_id": whose.client_id.as_deref().unwrap_or_default(), what: true })
                }
            };
            output::print_json(&value)?;
        }
        Output::Table => {
            let mut out = output::stdout();
            writeln!(out, "quotas of {} {what}", whose.name())?;
            out.flush()?;
        }
    }
    Ok(())
}

/// A table row: each effective rate, marked `(default)` where the client id sets none.
fn row(name: &str, set: QuotaRates, effective: QuotaRates) -> Vec<String> {
    let cell = |set: Option<u64>, effective: Option<u64>, bytes: bool| {
        let text = match effective.unwrap_or(0) {
            0 => "no limit".to_owned(),
            n if bytes => format!("{}/s", format_size(n)),
            n => format!("{n}/s"),
        };
        if set.is_none() {
            format!("{text} (default)")
        } else {
            text
        }
    };
    vec![
        name.to_owned(),
        cell(
            set.produce_bytes_per_sec,
            effective.produce_bytes_per_sec,
            true,
        ),
        cell(set.fetch_bytes_per_sec, effective.fetch_bytes_per_sec, true),
        cell(set.requests_per_sec, effective.requests_per_sec, false),
    ]
}
