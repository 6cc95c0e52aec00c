//! `runnel broker info` and `runnel broker health`.

use std::io::Write as _;

use anyhow::Context as _;
use clap::Subcommand;
use serde::Serialize;

use crate::Ctx;
use crate::error::unavailable;
use crate::output::{self, Output};
use crate::parse::{format_duration_ms, format_size, format_time_ms};

/// `runnel broker ...`
#[derive(Debug, Subcommand)]
pub enum BrokerCommand {
    /// Show the broker's version, uptime, data directory and disk space
    #[command(after_help = "Examples:
  runnel broker info
  runnel --broker 10.0.0.5:7171 broker info --output json")]
    Info,
    /// Check that the broker serves (gRPC health): exit 0 when it does, 4 while it starts
    /// or stops, or cannot be reached
    #[command(after_help = "Examples:
  runnel broker health
  runnel --broker 127.0.0.1:7171 broker health   # a container's HEALTHCHECK")]
    Health,
}

#[derive(Serialize)]
struct InfoJson<'a> {
    address: &'a str,
    version: &'a str,
    start_time_ms: i64,
    uptime_ms: u64,
    data_dir: &'a str,
    disk_free_bytes: u64,
    disk_total_bytes: u64,
}

/// Runs a `broker` command.
///
/// # Errors
/// Connection errors.
pub async fn run(ctx: &Ctx, command: BrokerCommand) -> anyhow::Result<()> {
    match command {
        BrokerCommand::Info => info(ctx).await,
        BrokerCommand::Health => health(ctx).await,
    }
}

/// `runnel broker health`.
async fn health(ctx: &Ctx) -> anyhow::Result<()> {
    let client = ctx.client().await?;
    let serving = client
        .admin()
        .serving()
        .await
        .context("cannot check the broker's health")?;
    if !serving {
        return Err(unavailable(format!(
            "the broker at {} is not serving yet (starting, or stopping)",
            client.address()
        )));
    }
    match ctx.output {
        Output::Json => output::print_json(&serde_json::json!({ "serving": true }))?,
        Output::Table => {
            let mut out = output::stdout();
            writeln!(out, "serving")?;
            out.flush()?;
        }
    }
    Ok(())
}

/// `runnel broker info`.
async fn info(ctx: &Ctx) -> anyhow::Result<()> {
    let client = ctx.client().await?;
    let info = client
        .admin()
        .broker_info()
        .await
        .context("cannot get broker info")?;
    // Whole seconds read better; the JSON keeps milliseconds.
    let uptime_ms = u64::try_from(info.uptime.as_millis()).unwrap_or(u64::MAX);
    match ctx.output {
        Output::Json => output::print_json(&InfoJson {
            address: client.address(),
            version: &info.version,
            start_time_ms: info.start_time_ms,
            uptime_ms,
            data_dir: &info.data_dir,
            disk_free_bytes: info.disk_free_bytes,
            disk_total_bytes: info.disk_total_bytes,
        })?,
        Output::Table => {
            let mut out = output::stdout();
            output::write_fields(
                &mut out,
                &[
                    ("address", client.address().to_owned()),
                    ("version", info.version.clone()),
                    ("started", format_time_ms(info.start_time_ms)),
                    ("uptime", format_duration_ms(uptime_ms / 1000 * 1000)),
                    ("data dir", info.data_dir.clone()),
                    (
                        "disk free",
                        format!(
                            "{} of {}",
                            format_size(info.disk_free_bytes),
                            format_size(info.disk_total_bytes)
                        ),
                    ),
                ],
            )?;
            out.flush()?;
        }
    }
    Ok(())
}
