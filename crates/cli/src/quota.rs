//! `runnel quota set|delete|list`: the quotas of client ids.

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
    /// Set the quotas of a client id, replacing any it had (unset rates follow the defaults)
    #[command(after_help = "Examples:
  runnel quota set billing --produce-rate 10MiB --fetch-rate 50MiB
  runnel quota set reports --request-rate 100
  runnel quota set bulk --produce-rate 0     # no limit, whatever the default")]
    Set(SetArgs),
    /// Remove the quotas of a client id: it follows the defaults again
    #[command(after_help = "Examples:
  runnel quota delete billing")]
    Delete {
        /// The client id
        client_id: String,
    },
    /// List the default quotas and every client id with quotas of its own
    #[command(after_help = "Examples:
  runnel quota list
  runnel quota list --output json")]
    List,
}

/// `runnel quota set`
#[derive(Debug, Args)]
pub struct SetArgs {
    /// The client id, as its clients send it (`""` for clients that send none)
    client_id: String,
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
    client_id: &'a str,
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
            admin
                .set_quota(&a.client_id, rates)
                .await
                .with_context(|| format!("cannot set the quotas of client id {:?}", a.client_id))?;
            done(ctx, &a.client_id, "set")
        }
        QuotaCommand::Delete { client_id } => {
            admin
                .delete_quota(&client_id)
                .await
                .with_context(|| format!("cannot delete the quotas of client id {client_id:?}"))?;
            done(ctx, &client_id, "deleted")
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
                            client_id: &c.client_id,
                            rates: c.rates.into(),
                            effective: c.effective.into(),
                        })
                        .collect(),
                })?,
                Output::Table => {
                    let mut table =
                        Table::new(&["CLIENT ID", "PRODUCE RATE", "FETCH RATE", "REQUEST RATE"]);
                    table.row(row("(default)", listing.defaults, listing.defaults));
                    for c in &listing.clients {
                        table.row(row(&format!("{:?}", c.client_id), c.rates, c.effective));
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
fn done(ctx: &Ctx, client_id: &str, what: &str) -> anyhow::Result<()> {
    match ctx.output {
        Output::Json => {
            output::print_json(&serde_json::json!({ "client_id": client_id, what: true }))?;
        }
        Output::Table => {
            let mut out = output::stdout();
            writeln!(out, "quotas of client id {client_id:?} {what}")?;
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
