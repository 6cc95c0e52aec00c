//! `runnel`, the Runnel command-line tool: topics, consumer groups, share groups, dead
//! letters, produce, consume, offsets and broker info, talking to the broker only through
//! `runnel-client`.
//!
//! `main` parses the command line, resolves the broker address (flag, profile, environment),
//! builds the async runtime, runs the command, and turns an error into one line on stderr
//! and an exit code (`error.rs`; `docs/cli.md` lists them). A broken pipe on stdout is
//! success. Each command group is a module: `topic`, `group`, `share`, `dlq`, `produce`,
//! `consume`, `offsets`, `broker`. The benchmark tool is a binary of its own, `runnel-bench`.

mod broker;
mod consume;
mod dlq;
mod error;
mod format;
mod group;
mod memory;
mod offsets;
mod output;
mod parse;
mod produce;
mod profile;
mod progress;
mod quota;
mod security;
mod share;
mod topic;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use runnel_client::{Client, ClientConfig, ClientTls, Credentials};

use crate::output::Output;

const ABOUT: &str = "The Runnel command-line tool: manage topics, consumer groups and share \
groups, produce and consume records, inspect and replay dead letters, look up offsets and broker \
information.";

/// The help heading of the flags every command takes.
const GLOBAL: &str = "Global options";

const AFTER_HELP: &str = "\
Examples:
  runnel topic create orders --partitions 3 --retention 7d
  seq 1 1000 | runnel produce orders
  runnel consume orders --from earliest --count 10
  runnel consume orders --group audit --follow --format json
  runnel group describe payment
  runnel share alter workers --start earliest --dead-letter-topic jobs.dlq
  runnel share consume workers --topic jobs --count 10
  runnel dlq list jobs.dlq
  runnel --profile staging topic list --output json

The broker: --broker HOST:PORT, else --profile NAME from the config file
(~/.config/runnel/config.toml: [profiles.NAME] broker = \"HOST:PORT\"), else RUNNEL_BROKER,
else RUNNEL_PROFILE, else the file's default_profile, else 127.0.0.1:7171.

Durations: 500ms, 30s, 5m, 12h, 7d, 2w, 1h30m. Sizes: 512B, 64KiB, 1GiB (x1024), 1GB (x1000).
Times: 2024-05-01T12:00:00Z, 2024-05-01T14:00:00+02:00, 2024-05-01, now-1h, @<ms>.
";

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "runnel",
    version,
    about = ABOUT,
    after_help = format!("{AFTER_HELP}\n{}", error::EXIT_CODES),
    propagate_version = true,
    subcommand_required = true,
    arg_required_else_help = true
)]
struct Cli {
    /// The broker's gRPC address
    #[arg(long, global = true, env = "RUNNEL_BROKER", value_name = "HOST:PORT", help_heading = GLOBAL)]
    broker: Option<String>,

    /// A named profile from the config file, giving the broker address
    #[arg(long, global = true, env = "RUNNEL_PROFILE", value_name = "NAME", help_heading = GLOBAL)]
    profile: Option<String>,

    /// The config file with the profiles [default: ~/.config/runnel/config.toml]
    // Not RUNNEL_CONFIG: that is runneld's config file, often set where both run.
    #[arg(long, global = true, env = "RUNNEL_CLI_CONFIG", value_name = "PATH", help_heading = GLOBAL)]
    config: Option<PathBuf>,

    /// TLS: the CA certificates (PEM) that sign the broker's certificate; turns TLS on
    #[arg(long, global = true, env = "RUNNEL_TLS_CA", value_name = "PATH", help_heading = GLOBAL)]
    tls_ca: Option<PathBuf>,

    /// TLS: this client's certificate (PEM), for a broker that requires one; turns TLS on
    #[arg(long, global = true, env = "RUNNEL_TLS_CERT", value_name = "PATH", requires = "tls_key", help_heading = GLOBAL)]
    tls_cert: Option<PathBuf>,

    /// TLS: the private key (PEM) of --tls-cert
    #[arg(long, global = true, env = "RUNNEL_TLS_KEY", value_name = "PATH", requires = "tls_cert", help_heading = GLOBAL)]
    tls_key: Option<PathBuf>,

    /// Authenticate as this user, with the password of RUNNEL_PASSWORD, --password-file or the
    /// profile
    #[arg(id = "auth_user", long = "user", global = true, env = "RUNNEL_USER", value_name = "NAME", help_heading = GLOBAL)]
    user: Option<String>,

    /// A file whose first line is the password of --user
    #[arg(long, global = true, env = "RUNNEL_PASSWORD_FILE", value_name = "PATH", help_heading = GLOBAL)]
    password_file: Option<PathBuf>,

    /// A file whose first line is a bearer token (or set RUNNEL_TOKEN)
    #[arg(long, global = true, env = "RUNNEL_TOKEN_FILE", value_name = "PATH", conflicts_with = "auth_user", help_heading = GLOBAL)]
    token_file: Option<PathBuf>,

    /// How listings and descriptions are printed
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table, help_heading = GLOBAL)]
    output: Output,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, list, describe, alter and delete topics
    #[command(subcommand)]
    Topic(topic::TopicCommand),
    /// List, describe, reset and delete consumer groups
    #[command(subcommand)]
    Group(group::GroupCommand),
    /// List, describe, alter and delete share groups (queues over topics), and consume as a
    /// member
    #[command(subcommand)]
    Share(share::ShareCommand),
    /// List the records of a dead-letter topic and replay them to their original topic
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Send records read from stdin or a file, one per line
    #[command(after_help = produce::EXAMPLES)]
    Produce(produce::ProduceArgs),
    /// Print records of a topic
    #[command(after_help = consume::EXAMPLES)]
    Consume(consume::ConsumeArgs),
    /// Show partitions' earliest and latest offsets, and the offsets for a time
    #[command(after_help = offsets::EXAMPLES)]
    Offsets(offsets::OffsetsArgs),
    /// Set, list and delete the quotas of client ids
    #[command(subcommand)]
    Quota(quota::QuotaCommand),
    /// Create, list and delete users, and set their passwords
    #[command(subcommand)]
    User(security::UserCommand),
    /// Create, list and delete bearer tokens
    #[command(subcommand)]
    Token(security::TokenCommand),
    /// Create, list and delete access control lists
    #[command(subcommand)]
    Acl(security::AclCommand),
    /// Broker information
    #[command(subcommand)]
    Broker(broker::BrokerCommand),
    /// Print a shell completion script
    #[command(
        after_help = "Examples:\n  runnel completions bash > ~/.local/share/bash-completion/completions/runnel\n  runnel completions zsh > ~/.zfunc/_runnel\n  runnel completions fish > ~/.config/fish/completions/runnel.fish"
    )]
    Completions {
        /// The shell
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// What every command needs: where the broker is, how to reach it, and how to print.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The broker's address.
    pub broker: String,
    /// TLS to the broker, if asked for.
    pub tls: Option<ClientTls>,
    /// Who to authenticate as, if anyone.
    pub credentials: Option<Credentials>,
    /// `--output`.
    pub output: Output,
}

impl Ctx {
    /// Connects to the broker.
    ///
    /// # Errors
    /// `broker unreachable at ADDR` (exit code 4).
    pub async fn client(&self) -> anyhow::Result<Client> {
        let config = ClientConfig {
            tls: self.tls.clone(),
            credentials: self.credentials.clone(),
            ..ClientConfig::new(self.broker.clone())
        };
        Ok(Client::connect_with(config).await?)
    }
}

fn main() -> ExitCode {
    memory::keep_freed_memory();
    let matches = match Cli::command().try_get_matches() {
        Ok(m) => m,
        Err(e) => {
            use clap::error::ErrorKind;
            let code = u8::try_from(e.exit_code()).unwrap_or(error::USAGE);
            match e.kind() {
                // Help and version go to stdout; a closed stdout is no reason to fail.
                ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    let _ = e.print();
                }
                _ => {
                    let _ = writeln!(std::io::stderr(), "runnel: {}", usage_line(&e));
                }
            }
            return ExitCode::from(code);
        }
    };
    let result = Cli::from_arg_matches(&matches)
        .map_err(|e| error::usage(e.to_string()))
        .and_then(|cli| run(cli, &matches));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if error::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "runnel: {}", error::one_line(&e));
            ExitCode::from(error::exit_code(&e))
        }
    }
}

/// A clap usage error as one line: the message, then the usage in parentheses.
fn usage_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let message = lines
        .next()
        .unwrap_or("invalid command line")
        .trim_start_matches("error: ")
        .to_owned();
    let usage = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Usage: "))
        .map(|u| format!(" (usage: {u}; more with --help)"))
        .unwrap_or_else(|| " (see --help)".to_owned());
    format!("{message}{usage}")
}

/// A global flag's value and whether it came from the command line.
fn given(matches: &ArgMatches, id: &str, value: Option<String>) -> Option<profile::Given> {
    value.map(|value| profile::Given {
        value,
        flag: matches.value_source(id) == Some(ValueSource::CommandLine),
    })
}

fn run(cli: Cli, matches: &ArgMatches) -> anyhow::Result<()> {
    if let Command::Completions { shell } = cli.command {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "runnel", &mut script);
        let mut out = output::stdout();
        out.write_all(&script)?;
        out.flush()?;
        return Ok(());
    }
    let config_path = cli.config.clone().or_else(profile::default_path);
    let target = profile::resolve(
        given(matches, "broker", cli.broker.clone()),
        given(matches, "profile", cli.profile.clone()),
        config_path.as_deref(),
    )?;
    let credentials = credentials(&cli, &target)?;
    // The flags (and their variables) override the profile's files, the key with its
    // certificate.
    let (cert, key) = match &cli.tls_cert {
        Some(cert) => (Some(cert.clone()), cli.tls_key.clone()),
        None => (target.tls_cert, target.tls_key),
    };
    let ca = cli.tls_ca.clone().or(target.tls_ca);
    let tls = (ca.is_some() || cert.is_some()).then_some(ClientTls {
        ca_file: ca,
        cert_file: cert,
        key_file: key,
        server_name: None,
    });
    let ctx = Ctx {
        broker: target.broker,
        tls,
        credentials,
        output: cli.output,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Topic(c) => topic::run(&ctx, c).await,
            Command::Group(c) => group::run(&ctx, c).await,
            Command::Share(c) => share::run(&ctx, c).await,
            Command::Dlq(c) => dlq::run(&ctx, c).await,
            Command::Produce(a) => produce::run(&ctx, a).await,
            Command::Consume(a) => consume::run(&ctx, a).await,
            Command::Offsets(a) => offsets::run(&ctx, a).await,
            Command::Quota(c) => quota::run(&ctx, c).await,
            Command::User(c) => security::user(&ctx, c).await,
            Command::Token(c) => security::token(&ctx, c).await,
            Command::Acl(c) => security::acl(&ctx, c).await,
            Command::Broker(c) => broker::run(&ctx, c).await,
            Command::Completions { .. } => Ok(()),
        }
    })
}

/// Who to authenticate as: `--user` (with a password from `RUNNEL_PASSWORD`,
/// `--password-file` or the profile), else a token from `--token-file` or `RUNNEL_TOKEN`, else
/// the profile's user or token; none if nothing names any.
///
/// # Errors
/// A usage error for a user without a password, or a file that cannot be read.
fn credentials(cli: &Cli, target: &profile::Target) -> anyhow::Result<Option<Credentials>> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let password = |user: &str| -> anyhow::Result<String> {
        if let Some(path) = &cli.password_file {
            return first_line(path);
        }
        env("RUNNEL_PASSWORD")
            .or_else(|| target.password.clone().map(|p| p.0))
            .ok_or_else(|| {
                error::usage(format!(
                    "user {user:?} needs a password: set RUNNEL_PASSWORD, --password-file or the \
                     profile's password"
                ))
            })
    };
    if let Some(user) = &cli.user {
        return Ok(Some(Credentials::Password {
            user: user.clone(),
            password: password(user)?,
        }));
    }
    if let Some(path) = &cli.token_file {
        return Ok(Some(Credentials::Token(first_line(path)?)));
    }
    if let Some(token) = env("RUNNEL_TOKEN") {
        return Ok(Some(Credentials::Token(token)));
    }
    if let Some(user) = &target.user {
        return Ok(Some(Credentials::Password {
            user: user.clone(),
            password: password(user)?,
        }));
    }
    Ok(target.token.clone().map(|t| Credentials::Token(t.0)))
}

/// The first line of a file holding a secret, without its line ending.
fn first_line(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| error::usage(format!("cannot read {}: {e}", path.display())))?;
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_command_has_examples() {
        fn check(cmd: &clap::Command, path: &str) {
            let path = format!("{path} {}", cmd.get_name());
            let subs: Vec<_> = cmd.get_subcommands().collect();
            if subs.is_empty() {
                let help = cmd
                    .get_after_help()
                    .map(|h| h.to_string())
                    .unwrap_or_default();
                assert!(help.contains("Examples:"), "{path} has no examples");
            }
            for sub in subs {
                if sub.get_name() != "help" {
                    check(sub, &path);
                }
            }
        }
        check(&Cli::command(), "");
    }

    #[test]
    fn usage_errors_are_one_line() {
        for argv in [
            &["runnel", "topic", "list", "--nope"][..],
            &["runnel", "topic", "create", "t", "--retention", "7"],
            &["runnel", "consume"],
            &["runnel", "group", "reset-offsets", "g", "--all-topics"],
        ] {
            let e = Cli::command().try_get_matches_from(argv).unwrap_err();
            let line = usage_line(&e);
            assert!(!line.contains('\n'), "{line}");
            assert!(
                line.contains("(usage: runnel ") || line.ends_with("(see --help)"),
                "{line}"
            );
            assert!(!line.starts_with("error"), "{line}");
            assert_eq!(e.exit_code(), 2);
        }
    }

    #[test]
    fn global_flags_work_after_the_subcommand() {
        let m = Cli::command()
            .try_get_matches_from(["runnel", "topic", "list", "--broker", "h:1", "-o", "json"])
            .unwrap();
        let cli = Cli::from_arg_matches(&m).unwrap();
        assert_eq!(cli.output, Output::Json);
        let g = given(&m, "broker", cli.broker).unwrap();
        assert_eq!(g.value, "h:1");
        assert!(g.flag);
    }
}
