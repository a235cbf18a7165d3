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
    /// Manage users who log in to the admin API.
    #[command(subcommand)]
    Users(UsersCommand),
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
    /// Revoke a key for good (refused by every relay within a second).
    Revoke(KeyIdArg),
    /// Enable a key.
    Enable(KeyIdArg),
    /// Disable a key (reversible).
    Disable(KeyIdArg),
    /// Change a key's name, group or expiry.
    Update(KeyUpdateArgs),
    /// Set a key's limits (`none` clears one); with no flag, show them as they stand.
    Limits(KeyLimitsArgs),
}

/// `relay keys limits`.
#[derive(Debug, Args)]
pub struct KeyLimitsArgs {
    /// The key id (`key_…`).
    pub id: String,
    /// Model patterns, comma-separated (`claude-sonnet-*,claude-haiku-*`).
    #[arg(long)]
    pub allowed_models: Option<String>,
    /// Client address ranges, comma-separated CIDRs.
    #[arg(long)]
    pub allowed_ips: Option<String>,
    /// Requests per minute.
    #[arg(long)]
    pub rpm: Option<String>,
    /// Requests in flight at once.
    #[arg(long)]
    pub max_concurrency: Option<String>,
    /// USD per calendar day.
    #[arg(long)]
    pub daily_budget_usd: Option<String>,
    /// USD per calendar week.
    #[arg(long)]
    pub weekly_budget_usd: Option<String>,
    /// USD per calendar month.
    #[arg(long)]
    pub monthly_budget_usd: Option<String>,
    /// USD over the key's life.
    #[arg(long)]
    pub total_budget_usd: Option<String>,
}

/// A key id.
#[derive(Debug, Args)]
pub struct KeyIdArg {
    /// The key id (`key_…`).
    pub id: String,
}

/// `relay keys update`.
#[derive(Debug, Args)]
pub struct KeyUpdateArgs {
    /// The key id (`key_…`).
    pub id: String,
    /// New name.
    #[arg(long)]
    pub name: Option<String>,
    /// New group (empty string: no group).
    #[arg(long)]
    pub group: Option<String>,
    /// New expiry (RFC 3339, `"YYYY-MM-DD HH:MM:SS"` in BILLING_TIMEZONE, or `30d`).
    #[arg(long, conflicts_with = "no_expiry")]
    pub expires: Option<String>,
    /// Remove the expiry.
    #[arg(long)]
    pub no_expiry: bool,
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
    /// Change an account's settings; `--credential-stdin` replaces the credential.
    Update(AccountUpdateArgs),
    /// Remove an account (its usage history stays).
    Remove(AccountRef),
    /// Enable an account.
    Enable(AccountRef),
    /// Disable an account (no new requests are routed to it).
    Disable(AccountRef),
    /// Clear an account's health state on every relay.
    Reset(AccountRef),
}

/// An account by id or name.
#[derive(Debug, Args)]
pub struct AccountRef {
    /// The account id (`acc_…`) or name.
    pub account: String,
}

/// `relay accounts update`.
#[derive(Debug, Args)]
pub struct AccountUpdateArgs {
    /// The account id (`acc_…`) or name.
    pub account: String,
    /// New name.
    #[arg(long)]
    pub name: Option<String>,
    /// New base URL.
    #[arg(long)]
    pub base_url: Option<String>,
    /// New priority.
    #[arg(long)]
    pub priority: Option<i64>,
    /// New weight.
    #[arg(long)]
    pub weight: Option<i64>,
    /// New group (empty string: no group; created if missing).
    #[arg(long)]
    pub group: Option<String>,
    /// New concurrency cap (0 = unlimited).
    #[arg(long)]
    pub concurrency: Option<i64>,
    /// New proxy URL (empty string: none).
    #[arg(long)]
    pub proxy: Option<String>,
    /// Read a new credential from stdin.
    #[arg(long)]
    pub credential_stdin: bool,
}

/// `relay users …`.
#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Create a user; the password is read from stdin, or generated and printed once
    /// when stdin is empty.
    Create(UserCreateArgs),
    /// List users.
    List,
    /// Change a user's role.
    SetRole(UserRoleArgs),
    /// Set a new password (read from stdin, or generated and printed once); every
    /// token of the user stops working. This is how a lost admin password is reset.
    ResetPassword(UserRef),
    /// Disable a user: they cannot log in, their tokens and keys stop working.
    Disable(UserRef),
    /// Enable a user.
    Enable(UserRef),
}

/// A user by name.
#[derive(Debug, Args)]
pub struct UserRef {
    /// The user name.
    pub username: String,
}

/// `relay users create`.
#[derive(Debug, Args)]
pub struct UserCreateArgs {
    /// Login name.
    #[arg(long)]
    pub username: String,
    /// E-mail address.
    #[arg(long)]
    pub email: String,
    /// `admin` or `user`.
    #[arg(long, default_value = "user")]
    pub role: String,
    /// Tenant (default: a new tenant named after the user).
    #[arg(long)]
    pub tenant: Option<String>,
}

/// `relay users set-role`.
#[derive(Debug, Args)]
pub struct UserRoleArgs {
    /// The user name.
    pub username: String,
    /// `admin` or `user`.
    pub role: String,
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
