//! The command line: `relay [serve]` by default, plus operator subcommands.

use crate::config::{CommonConfig, ServeConfig};
use clap::{Args, Parser, Subcommand};

/// The event-sourced Claude Code relay.
#[derive(Debug, Parser)]
#[command(name = "relay", version, about)]
pub struct Cli {
    /// Settings shared by every subcommand.
    #[command(flatten)]
    pub common: CommonConfig,

    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay (proxy, and projectors unless PROJECTORS=off).
    Serve(Box<ServeConfig>),
    /// Run the projectors only (scale mode: one process beside N relays).
    Project(ProjectArgs),
    /// Reset a projection and replay the event log into it.
    Rebuild(RebuildArgs),
    /// Recompute costs from a date on after a price-table change.
    Reprice(RepriceArgs),
    /// Read the event log.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Print a tenant's monthly statement.
    Statement(StatementArgs),
    /// Manage relay API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Manage upstream accounts.
    #[command(subcommand)]
    Accounts(AccountsCommand),
    /// Create or upgrade the database schema and exit.
    Migrate,
}

/// `relay project`.
#[derive(Debug, Args)]
pub struct ProjectArgs {}

/// `relay rebuild <projection|all>`.
#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// The projection to rebuild, or `all`.
    pub projection: String,
}

/// `relay reprice --from DATE`.
#[derive(Debug, Args)]
pub struct RepriceArgs {
    /// First UTC day to reprice (YYYY-MM-DD).
    #[arg(long)]
    pub from: String,
}

/// `relay events …`.
#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Print events as JSON lines, then follow new ones.
    Tail(TailArgs),
}

/// `relay events tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// Start after this log position (0 = from the beginning).
    #[arg(long, conflicts_with = "since")]
    pub from_seq: Option<u64>,
    /// Start with events that occurred within this duration (e.g. `15m`, `2h`, `7d`).
    #[arg(long)]
    pub since: Option<String>,
    /// Only this event type (e.g. `usage.recorded`).
    #[arg(long = "type")]
    pub event_type: Option<String>,
    /// Stop when caught up instead of following.
    #[arg(long)]
    pub no_follow: bool,
}

/// Output format of a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatementFormat {
    /// Comma-separated values.
    Csv,
    /// JSON.
    Json,
}

/// `relay statement`.
#[derive(Debug, Args)]
pub struct StatementArgs {
    /// The tenant.
    #[arg(long)]
    pub tenant: String,
    /// The month (YYYY-MM, UTC).
    #[arg(long)]
    pub month: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "csv")]
    pub format: StatementFormat,
}

/// `relay keys …`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Issue a new key; the key is printed once, alone on the last line of stdout.
    Create(KeyCreateArgs),
    /// List keys (never the secrets).
    List,
}

/// `relay keys create`.
#[derive(Debug, Args)]
pub struct KeyCreateArgs {
    /// Display name.
    #[arg(long)]
    pub name: String,
    /// Tenant billed for the key's usage.
    #[arg(long, default_value = "default")]
    pub tenant: String,
    /// Account group the key may use (default: accounts without a group).
    #[arg(long)]
    pub group: Option<String>,
    /// Expiry as RFC 3339 time or a duration from now (`30d`, `12h`).
    #[arg(long)]
    pub expires: Option<String>,
}

/// `relay accounts …`.
#[derive(Debug, Subcommand)]
pub enum AccountsCommand {
    /// Add an Anthropic API-key account; the credential is read from stdin.
    Add(AccountAddArgs),
    /// Add a Claude subscription account by logging in (OAuth PKCE): opens nothing,
    /// prints the URL to visit, then reads the pasted `code#state` from stdin.
    OauthLogin(OAuthLoginArgs),
    /// List accounts (never the credentials).
    List,
}

/// `relay accounts oauth-login`.
#[derive(Debug, Args)]
pub struct OAuthLoginArgs {
    /// Scheduling and routing settings, as for `accounts add`.
    #[command(flatten)]
    pub account: AccountAddArgs,
    /// Login page.
    #[arg(long, env = "OAUTH_AUTHORIZE_URL", default_value = crate::oauth::DEFAULT_AUTHORIZE_URL)]
    pub authorize_url: String,
    /// Token endpoint.
    #[arg(long, env = "OAUTH_TOKEN_URL", default_value = crate::oauth::DEFAULT_TOKEN_URL)]
    pub token_url: String,
}

/// `relay accounts add`.
#[derive(Debug, Args)]
pub struct AccountAddArgs {
    /// Unique display name.
    #[arg(long)]
    pub name: String,
    /// Upstream base URL.
    #[arg(long, default_value = "https://api.anthropic.com")]
    pub base_url: String,
    /// Scheduling priority; lower numbers are tried first.
    #[arg(long, default_value_t = 50)]
    pub priority: i32,
    /// Relative weight inside a priority tier.
    #[arg(long, default_value_t = 1)]
    pub weight: u32,
    /// Account group (keys scoped to the group use it).
    #[arg(long)]
    pub group: Option<String>,
    /// Most concurrent requests on this account (0 = unlimited).
    #[arg(long, default_value_t = 0)]
    pub concurrency: u32,
    /// Proxy URL for this account (`http://`, `https://`, `socks5://`).
    #[arg(long)]
    pub proxy: Option<String>,
}
