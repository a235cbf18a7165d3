//! Configuration, read once at start-up from flags, the environment and `.env`.
//!
//! Every setting is a `clap` argument with an environment variable, so `relay --help`
//! documents them all. Names follow the Go seed projects (`PORT`, `HOST`, `LOG_LEVEL`,
//! `HTTP_CLIENT_TIMEOUT`, `GLOBAL_PROXY_*`) so their operators can move over.

use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

/// Settings shared by every subcommand: where state lives and how to log.
#[derive(Debug, Clone, Args)]
pub struct CommonConfig {
    /// Directory for the embedded databases, the event spool and the generated
    /// encryption key; created if missing.
    #[arg(long, env = "DATA_DIR", default_value = "./data", global = true)]
    pub data_dir: PathBuf,

    /// Read-model and configuration database: `sqlite://…` or `postgres://…`.
    /// Default: `sqlite://<DATA_DIR>/relay.db`.
    #[arg(long, env = "DATABASE_URL", global = true)]
    pub database_url: Option<String>,

    /// NATS server with JetStream for the event log (`nats://host:4222`). Unset: the
    /// embedded SQLite event log in `<DATA_DIR>/events.db`.
    #[arg(long, env = "NATS_URL", global = true)]
    pub nats_url: Option<String>,

    /// JetStream duplicate window in seconds; must exceed the publisher's longest
    /// retry horizon so a retried publish is recognised as a duplicate.
    #[arg(
        long,
        env = "NATS_DUPLICATE_WINDOW_SECS",
        default_value_t = 600,
        global = true
    )]
    pub nats_duplicate_window_secs: u64,

    /// When the event journal (`<DATA_DIR>/journal`) calls fdatasync: `never` (page
    /// cache only: a crash of the process loses nothing, an OS crash what the kernel
    /// had not written back), a number of milliseconds (a background sync at that
    /// interval bounds what an OS crash loses), or `always` (each response's events
    /// are synced before its last byte is sent; group commit).
    #[arg(long, env = "JOURNAL_FSYNC", default_value = "100", value_parser = ingest::journal::Fsync::parse, global = true)]
    pub journal_fsync: ingest::journal::Fsync,

    /// Log filter (`error`, `warn`, `info`, `debug`, `trace` or a tracing directive).
    #[arg(long, env = "LOG_LEVEL", default_value = "info", global = true)]
    pub log_level: String,

    /// 32-byte key (64 hex characters) encrypting upstream credentials at rest. Unset:
    /// generated once into `<DATA_DIR>/encryption.key`.
    #[arg(long, env = "ENCRYPTION_KEY", hide_env_values = true, global = true)]
    pub encryption_key: Option<String>,

    /// Price-table override file (JSON, same shape as the shipped table).
    #[arg(long, env = "PRICE_TABLE", global = true)]
    pub price_table: Option<PathBuf>,

    /// Allow accounts whose base URL (or whose name's addresses) is private, loopback
    /// or link-local. Off: such accounts are refused.
    #[arg(
        long,
        env = "UPSTREAM_ALLOW_PRIVATE",
        default_value_t = false,
        global = true
    )]
    pub upstream_allow_private: bool,

    /// Hosts allowed as upstream whatever they resolve to, comma-separated.
    #[arg(
        long,
        env = "UPSTREAM_ALLOW_HOSTS",
        value_delimiter = ',',
        global = true
    )]
    pub upstream_allow_hosts: Vec<String>,

    /// Time zone (IANA name) of times given without one, such as a key's
    /// `expires_at` of `"2025-12-31 23:59:59"`.
    #[arg(long, env = "BILLING_TIMEZONE", default_value = "UTC", global = true)]
    pub billing_timezone: String,

    /// Log line format on stderr: `text` (coloured only when stderr is a terminal) or
    /// `json` (one JSON object per line, for log shippers).
    #[arg(
        long,
        env = "LOG_FORMAT",
        default_value = "text",
        value_parser = ["text", "json"],
        global = true
    )]
    pub log_format: String,
}

impl CommonConfig {
    /// Where upstream traffic may go.
    pub fn egress(&self) -> crate::egress::EgressPolicy {
        crate::egress::EgressPolicy {
            allow_private: self.upstream_allow_private,
            allow_hosts: self
                .upstream_allow_hosts
                .iter()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .collect(),
        }
    }

    /// `BILLING_TIMEZONE` parsed.
    pub fn billing_tz(&self) -> Result<chrono_tz::Tz, String> {
        self.billing_timezone.trim().parse().map_err(|_| {
            format!(
                "BILLING_TIMEZONE {:?} is not an IANA zone name",
                self.billing_timezone
            )
        })
    }

    /// The database URL, defaulting to a SQLite file inside `DATA_DIR`.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("relay.db").display()
            ),
        }
    }
}

/// What the relay does when a streaming client disconnects before the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DisconnectPolicy {
    /// Keep reading upstream (bounded in time and bytes) to capture the final usage.
    Drain,
    /// Stop reading at once and record the usage seen so far.
    Stop,
}

/// Settings of `relay serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: String,

    /// Port to listen on.
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,

    /// Run the projectors inside this process (`on`) or leave them to `relay project`.
    #[arg(long, env = "PROJECTORS", default_value = "on")]
    pub projectors: OnOff,

    /// Largest accepted request body in bytes; larger bodies get 413.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Upstream request timeout in seconds for non-streaming requests and for the
    /// time to response headers (seed name).
    #[arg(long, env = "HTTP_CLIENT_TIMEOUT", default_value_t = 600)]
    pub http_client_timeout_secs: u64,

    /// Upstream connect timeout in seconds.
    #[arg(long, env = "UPSTREAM_CONNECT_TIMEOUT", default_value_t = 10)]
    pub upstream_connect_timeout_secs: u64,

    /// Longest silence tolerated on an upstream stream before it is abandoned, seconds.
    #[arg(long, env = "UPSTREAM_IDLE_TIMEOUT", default_value_t = 300)]
    pub upstream_idle_timeout_secs: u64,

    /// During upstream silence longer than this, send an SSE comment keepalive to the
    /// client, in milliseconds.
    #[arg(long, env = "SSE_KEEPALIVE_MS", default_value_t = 15_000)]
    pub sse_keepalive_ms: u64,

    /// Most upstream attempts per request (failover before the first byte).
    #[arg(long, env = "MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: u32,

    /// How long a sticky session (Claude Code session → account) survives without
    /// requests, seconds.
    #[arg(long, env = "STICKY_SESSION_TTL", default_value_t = 3600)]
    pub sticky_session_ttl_secs: u64,

    /// What to do when a streaming client disconnects.
    #[arg(long, env = "DISCONNECT_POLICY", value_enum, default_value = "drain")]
    pub disconnect_policy: DisconnectPolicy,

    /// With the drain policy: longest time to keep reading upstream, seconds.
    #[arg(long, env = "DRAIN_MAX_SECS", default_value_t = 120)]
    pub drain_max_secs: u64,

    /// With the drain policy: most bytes to read from upstream after the disconnect.
    #[arg(long, env = "DRAIN_MAX_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub drain_max_bytes: u64,

    /// Longest rate-limit cooldown taken from `retry-after` / unified reset, seconds.
    #[arg(long, env = "RATE_LIMIT_MAX_COOLDOWN", default_value_t = 6 * 3600)]
    pub rate_limit_max_cooldown_secs: u64,

    /// Rate-limit cooldown when upstream gives no reset time, seconds.
    #[arg(long, env = "RATE_LIMIT_DEFAULT_COOLDOWN", default_value_t = 60)]
    pub rate_limit_default_cooldown_secs: u64,

    /// Cooldown after a 529 / overloaded error, seconds.
    #[arg(long, env = "OVERLOAD_COOLDOWN", default_value_t = 30)]
    pub overload_cooldown_secs: u64,

    /// Cooldown after a 5xx or connection error, seconds.
    #[arg(long, env = "SERVER_ERROR_COOLDOWN", default_value_t = 10)]
    pub server_error_cooldown_secs: u64,

    /// How many 5xx or connection failures, from different requests within
    /// `SERVER_ERROR_WINDOW`, cool an account down (429, 529, 401 and 403-ban act at
    /// once).
    #[arg(long, env = "SERVER_ERROR_STRIKES", default_value_t = 3)]
    pub server_error_strikes: u32,

    /// The window of `SERVER_ERROR_STRIKES`, seconds.
    #[arg(long, env = "SERVER_ERROR_WINDOW", default_value_t = 60)]
    pub server_error_window_secs: u64,

    /// Months of request log kept by the retention job.
    #[arg(long, env = "LOG_RETENTION_MONTHS", default_value_t = 6)]
    pub log_retention_months: u32,

    /// Most events waiting in the publisher queue before new requests are refused.
    #[arg(long, env = "EVENT_QUEUE_CAPACITY", default_value_t = 100_000)]
    pub event_queue_capacity: u64,

    /// Most events in the local spool (used while the event log is unreachable)
    /// before new requests are refused.
    #[arg(long, env = "EVENT_SPOOL_MAX_EVENTS", default_value_t = 5_000_000)]
    pub event_spool_max_events: u64,

    /// OAuth token endpoint used to refresh subscription accounts' access tokens.
    #[arg(long, env = "OAUTH_TOKEN_URL", default_value = crate::oauth::DEFAULT_TOKEN_URL)]
    pub oauth_token_url: String,

    /// OAuth client id used for login and refresh.
    #[arg(long, env = "OAUTH_CLIENT_ID", default_value = crate::oauth::CLIENT_ID)]
    pub oauth_client_id: String,

    /// OAuth login page (`POST /oauth/auth-url` builds the link to it).
    #[arg(long, env = "OAUTH_AUTHORIZE_URL", default_value = crate::oauth::DEFAULT_AUTHORIZE_URL)]
    pub oauth_authorize_url: String,

    /// OAuth redirect URI (the page that shows `code#state`).
    #[arg(long, env = "OAUTH_REDIRECT_URI", default_value = crate::oauth::REDIRECT_URI)]
    pub oauth_redirect_uri: String,

    /// OAuth scopes requested at login, space-separated.
    #[arg(long, env = "OAUTH_SCOPES", default_value = crate::oauth::SCOPES)]
    pub oauth_scopes: String,

    /// How long a started OAuth login may be finished, seconds.
    #[arg(long, env = "OAUTH_STATE_TTL", default_value_t = 600)]
    pub oauth_state_ttl_secs: u64,

    /// How often to look for OAuth access tokens that need refreshing, seconds.
    #[arg(long, env = "OAUTH_REFRESH_CHECK_SECS", default_value_t = 60)]
    pub oauth_refresh_check_secs: u64,

    /// Route every upstream request through the global proxy below (seed name).
    #[arg(long, env = "GLOBAL_PROXY_ENABLED", default_value_t = false)]
    pub global_proxy_enabled: bool,

    /// Global proxy type: `http`, `https` or `socks5`.
    #[arg(long, env = "GLOBAL_PROXY_TYPE", default_value = "http")]
    pub global_proxy_type: String,

    /// Global proxy host.
    #[arg(long, env = "GLOBAL_PROXY_HOST")]
    pub global_proxy_host: Option<String>,

    /// Global proxy port.
    #[arg(long, env = "GLOBAL_PROXY_PORT")]
    pub global_proxy_port: Option<u16>,

    /// Global proxy user name.
    #[arg(long, env = "GLOBAL_PROXY_USERNAME")]
    pub global_proxy_username: Option<String>,

    /// Global proxy password.
    #[arg(long, env = "GLOBAL_PROXY_PASSWORD", hide_env_values = true)]
    pub global_proxy_password: Option<String>,

    /// Secret signing admin login tokens (HS256), at least 32 characters. Unset in
    /// embedded mode: generated once into `<DATA_DIR>/jwt.secret`. Required with
    /// `NATS_URL` (every relay must share it).
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Lifetime of admin login tokens: hours, or a duration such as `30m`, `24h`, `7d`.
    #[arg(long, env = "JWT_EXPIRES", default_value = "24h")]
    pub jwt_expires: String,

    /// User name of the admin created on first start.
    #[arg(long, env = "DEFAULT_ADMIN_USERNAME", default_value = "admin")]
    pub default_admin_username: String,

    /// Password of the admin created on first start. Unset: a random one is generated,
    /// printed once and written to `<DATA_DIR>/initial-admin-password` (mode 0600).
    #[arg(long, env = "DEFAULT_ADMIN_PASSWORD", hide_env_values = true)]
    pub default_admin_password: Option<String>,

    /// E-mail of the admin created on first start.
    #[arg(
        long,
        env = "DEFAULT_ADMIN_EMAIL",
        default_value = "admin@localhost.localdomain"
    )]
    pub default_admin_email: String,

    /// Longest wait for a request's headers, seconds; also how long an idle keep-alive
    /// connection is kept.
    #[arg(long, env = "HEADER_READ_TIMEOUT", default_value_t = 30)]
    pub header_read_timeout_secs: u64,

    /// Longest wait for a request body to arrive in full, seconds (408 after).
    #[arg(long, env = "BODY_READ_TIMEOUT", default_value_t = 60)]
    pub body_read_timeout_secs: u64,

    /// Most client connections open at once (kept 128 below the open-files limit);
    /// more are refused at once with 503.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Largest request head (request line and headers) in bytes; larger ones get 431.
    #[arg(long, env = "MAX_HEADER_BYTES", default_value_t = 64 * 1024)]
    pub max_header_bytes: usize,

    /// A second listen address that serves only `GET /health`, with connections of its
    /// own, so probes keep answering when the main listener is flooded.
    #[arg(long, env = "HEALTH_ADDR")]
    pub health_addr: Option<String>,

    /// Bearer token that `GET /metrics` on the main listener requires. Unset: /metrics
    /// is refused there (use METRICS_ADDR).
    #[arg(long, env = "METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,

    /// A separate listen address serving `GET /metrics` without a token (bind it to a
    /// private interface).
    #[arg(long, env = "METRICS_ADDR")]
    pub metrics_addr: Option<String>,

    /// On SIGTERM, how long in-flight requests may take to finish, seconds.
    #[arg(long, env = "SHUTDOWN_GRACE", default_value_t = 30)]
    pub shutdown_grace_secs: u64,

    /// Admit requests when a key's limits cannot be checked (the database is
    /// unreachable). Off: such keys fail closed with 503.
    #[arg(long, env = "LIMITS_FAIL_OPEN", default_value_t = false)]
    pub limits_fail_open: bool,

    /// First day of a weekly budget window (`monday` … `sunday`).
    #[arg(long, env = "BILLING_WEEK_START", default_value = "monday")]
    pub billing_week_start: String,

    /// Let anyone create a `user` account with `POST /api/v1/auth/register`.
    #[arg(long, env = "REGISTRATION_ENABLED", default_value_t = false)]
    pub registration_enabled: bool,

    /// Alert delivery (`NOTIFIER`, `NOTIFY_*`).
    #[command(flatten)]
    pub notify: crate::notify::NotifyConfig,
}

/// A boolean switch spelled `on`/`off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

impl ServeConfig {
    /// The global proxy URL, if enabled and complete.
    pub fn global_proxy_url(&self) -> Option<String> {
        if !self.global_proxy_enabled {
            return None;
        }
        let host = self.global_proxy_host.as_deref()?;
        let port = self.global_proxy_port?;
        let scheme = match self.global_proxy_type.as_str() {
            "socks5" | "socks" => "socks5h",
            "https" => "https",
            _ => "http",
        };
        let auth = match (&self.global_proxy_username, &self.global_proxy_password) {
            (Some(u), Some(p)) => format!("{u}:{p}@"),
            (Some(u), None) => format!("{u}@"),
            _ => String::new(),
        };
        Some(format!("{scheme}://{auth}{host}:{port}"))
    }

    /// The edge's limits.
    pub fn server_options(&self) -> crate::server::ServerOptions {
        crate::server::ServerOptions {
            header_read_timeout: Duration::from_secs(self.header_read_timeout_secs.max(1)),
            max_connections: self.max_connections.max(1),
            max_header_bytes: self.max_header_bytes.max(1024),
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
        }
    }

    /// `BILLING_WEEK_START` parsed.
    pub fn week_start(&self) -> Result<chrono::Weekday, String> {
        self.billing_week_start
            .trim()
            .parse::<chrono::Weekday>()
            .map_err(|_| {
                format!(
                    "BILLING_WEEK_START {:?} is not a day of the week",
                    self.billing_week_start
                )
            })
    }

    /// The OAuth constants in force.
    pub fn oauth(&self) -> crate::oauth::OAuthConfig {
        crate::oauth::OAuthConfig {
            client_id: self.oauth_client_id.clone(),
            authorize_url: self.oauth_authorize_url.clone(),
            token_url: self.oauth_token_url.clone(),
            redirect_uri: self.oauth_redirect_uri.clone(),
            scopes: self.oauth_scopes.clone(),
        }
    }

    /// `JWT_EXPIRES` parsed: a number of hours, or `30m`, `24h`, `7d`.
    pub fn jwt_lifetime(&self) -> Result<chrono::Duration, String> {
        let s = self.jwt_expires.trim();
        let d = match s.parse::<i64>() {
            Ok(h) => chrono::Duration::try_hours(h),
            Err(_) => crate::services::keys::parse_duration(s),
        };
        d.filter(|d| *d > chrono::Duration::zero()).ok_or_else(|| {
            format!("JWT_EXPIRES {s:?} is not a number of hours or a duration like 24h")
        })
    }

    /// `UPSTREAM_IDLE_TIMEOUT` as a duration.
    pub fn upstream_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.upstream_idle_timeout_secs)
    }

    /// `SSE_KEEPALIVE_MS` as a duration.
    pub fn sse_keepalive(&self) -> Duration {
        Duration::from_millis(self.sse_keepalive_ms)
    }
}
