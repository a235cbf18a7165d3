//! Read models built from the event log: the usage ledger and totals with exact costs,
//! account status, the request log, the audit log and the notification outbox; plus the runner that keeps them
//! up to date, replay (rebuild, reprice) and the read functions the admin API, the CLI
//! and the bench harness call.
//!
//! Everything here runs on SQLite, PostgreSQL and MySQL / MariaDB through `sqlx::Any`
//! with the same SQL text (`$N` placeholders, hand-written statements, BIGINT
//! nanodollars, BIGINT epoch ms plus text UTC days), which [`Dialect::sql`] rewrites for
//! MySQL; the generated multi-row statements spell their parameters per backend (`?` on
//! SQLite and MySQL, see `sql::Params`). Projections are deterministic: `apply` reads no
//! clock, no network, no environment and no random numbers, so a rebuild yields
//! identical rows, on any of the three.
//!
//! Layout:
//! - [`db`]: connecting and migrating;
//! - [`dialect`]: one SQL text for three databases;
//! - [`money`]: nanodollars ↔ `Decimal`;
//! - [`pricing`]: the effective-dated price table and the cost of one usage event;
//! - [`runner`]: the [`Projection`] trait and the [`Projector`] that feeds it;
//! - [`usage`], [`accounts`], [`requests`], [`audit`], [`notifications`]: the
//!   projections;
//! - [`read`]: queries over the read models, statements included;
//! - [`replay`]: rebuild and reprice.

pub mod accounts;
pub mod audit;
pub mod db;
pub mod dialect;
mod error;
pub mod money;
pub mod notifications;
pub mod pricing;
pub mod read;
pub mod replay;
pub mod requests;
pub mod runner;
mod sql;
pub mod usage;

pub use db::{connect, migrate, Backend};
pub use dialect::{long_text, Dialect};
pub use error::Error;
pub use pricing::PriceTable;
pub use replay::{rebuild, reprice, reprice_with};
pub use runner::{release_lease, try_lease, Lag, Projection, Projector, ProjectorOptions};

use std::sync::Arc;

/// Every projection this crate ships, in a fixed order, priced with `prices`.
///
/// Names: `usage` (ledger and totals), `accounts`, `requests`, `audit`,
/// `notifications` (the outbox).
pub fn all(prices: Arc<PriceTable>) -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(usage::UsageProjection::new(prices)),
        Arc::new(accounts::AccountsProjection),
        Arc::new(requests::RequestsProjection),
        Arc::new(audit::AuditProjection),
        Arc::new(notifications::NotificationsProjection),
    ]
}

/// The names of [`all`], for CLI validation and help texts.
pub const PROJECTION_NAMES: [&str; 5] = ["usage", "accounts", "requests", "audit", "notifications"];
