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
//! - [`cmd`]: operator subcommands.

pub mod accounts;
pub mod app;
pub mod background;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod crypto;
pub mod db;
pub mod error;
pub mod keys;
pub mod metrics;
pub mod oauth;
pub mod pool;
pub mod proxy;
pub mod server;
pub mod startup;
pub mod upstream;
pub mod usage_tap;
