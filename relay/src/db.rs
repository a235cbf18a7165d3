//! The relay's SQL database (configuration state and read models). Connecting is
//! shared with the projections crate, which owns the pool options; this module adds the
//! relay's own migrations (versions 1..=99).

use sqlx::AnyPool;

pub use projections::Backend;

/// Errors opening or migrating the database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Connecting failed or the URL names an unsupported backend.
    #[error("cannot open the database: {0}")]
    Connect(#[source] projections::Error),
    /// A migration failed.
    #[error("database migration failed: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
}

/// Opens a pool (see `projections::connect` for the options per backend).
pub async fn connect(url: &str) -> Result<AnyPool, DbError> {
    projections::connect(url).await.map_err(DbError::Connect)
}

/// Applies the relay's migrations (versions 1..=99). Projections apply theirs (100 and
/// up) to the same database, hence `ignore_missing`.
pub async fn migrate(pool: &AnyPool, backend: Backend) -> Result<(), DbError> {
    let mut migrator = match backend {
        Backend::Sqlite => sqlx::migrate!("./migrations/sqlite"),
        Backend::Postgres => sqlx::migrate!("./migrations/postgres"),
        Backend::MySql => sqlx::migrate!("./migrations/mysql"),
    };
    migrator.set_ignore_missing(true);
    migrator.run(pool).await.map_err(DbError::Migrate)
}
