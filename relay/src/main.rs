//! The `relay` binary: parses the command line and dispatches.

use clap::Parser;
use relay::cli::{Cli, Command, EventsCommand};
use relay::cmd::{self, Context};
use relay::config::CommonConfig;
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Before anything is created: DATA_DIR, the databases with their -wal/-shm files,
    // the spool, generated keys and secrets are readable by this user only (0700/0600).
    #[cfg(unix)]
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    // A missing .env is normal; a malformed one is worth saying.
    if let Err(e) = dotenvy::dotenv() {
        if !e.not_found() {
            anyhow::bail!("cannot read .env: {e}");
        }
    }
    let cli = Cli::parse();
    init_logging(&cli.common);

    let command = match cli.command {
        Some(c) => c,
        None => Command::Serve(Box::new(default_serve_config()?)),
    };
    match command {
        Command::Serve(config) => relay::startup::serve(cli.common, *config).await,
        Command::Migrate => {
            Context::open(cli.common).await?.finish().await;
            tracing::info!("database is up to date");
            Ok(())
        }
        other => {
            let ctx = Context::open(cli.common).await?;
            let result = match other {
                Command::Project(a) => cmd::project::run(&ctx, &a).await,
                Command::Rebuild(a) => cmd::rebuild::run(&ctx, &a).await,
                Command::Reprice(a) => cmd::reprice::run(&ctx, &a).await,
                Command::Events(EventsCommand::Tail(a)) => cmd::events::run(&ctx, &a).await,
                Command::Statement(a) => cmd::statement::run(&ctx, &a).await,
                Command::Keys(k) => cmd::keys::run(&ctx, &k).await,
                Command::Accounts(a) => cmd::accounts::run(&ctx, &a).await,
                Command::Users(u) => cmd::users::run(&ctx, &u).await,
                Command::Serve(_) | Command::Migrate => Ok(()),
            };
            ctx.finish().await;
            result
        }
    }
}

/// Logs to stderr at `LOG_LEVEL`: text, coloured only on a terminal (and without
/// `NO_COLOR`), or with `LOG_FORMAT=json` one JSON object per line whose event fields
/// (such as `request_id`) sit at the top level, with the current span's fields under
/// `span`.
fn init_logging(common: &CommonConfig) {
    let filter = EnvFilter::try_new(&common.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if common.log_format == "json" {
        logs.json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init();
    } else {
        let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        logs.with_ansi(colour).init();
    }
}

/// `relay` with no subcommand behaves like `relay serve` with its defaults and env.
fn default_serve_config() -> anyhow::Result<relay::config::ServeConfig> {
    #[derive(Parser)]
    struct ServeOnly {
        #[command(flatten)]
        config: relay::config::ServeConfig,
    }
    Ok(ServeOnly::try_parse_from(["relay"])?.config)
}
