//! The relay: an Anthropic Messages API endpoint in front of a pool of upstream
//! accounts, recording every fact as an event.
//!
//! Layout:
//! - [`cli`], [`config`]: the command line and settings (environment first);
//! - [`startup`], [`server`], [`background`]: wiring, the HTTP server, background tasks;
//! - [`app`]: shared state handed to handlers;
//! - [`keys`], [`accounts`], [`crypto`], [`db`]: tenant keys, upstream accounts,
//!   secrets at rest, the SQL database; [`oauth`]: subscription-account login and
//!   token refresh;
//! - [`error`]: Anthropic-shaped client errors;
//! - [`identity`], [`groups`]: users, tenants, roles, passwords, JWTs; account groups;
//! - [`services`]: use cases shared by the admin API and the CLI (validation, audit
//!   events, cache invalidation in one place);
//! - [`admin`], [`ops`]: the admin API's thin handlers; `/api/v1/status`;
//! - [`console`]: the web console at `/console`, static files over the admin API;
//! - [`notify`]: alerts and webhooks delivered from the notification outbox;
//! - [`cmd`]: operator subcommands.

pub mod account_probe;
pub mod accounts;
pub mod admin;
pub mod app;
pub mod background;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod console;
pub mod crypto;
pub mod db;
pub mod egress;
pub mod error;
pub mod groups;
pub mod identity;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod notify;
pub mod oauth;
pub mod oauth_onboarding;
pub mod ops;
pub mod pool;
pub mod projectors;
pub mod proxy;
pub mod server;
pub mod services;
pub mod startup;
pub mod throttle;
pub mod token_refresh;
pub mod upstream;
pub mod usage_tap;
