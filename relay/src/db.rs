//! The relay's SQL database (configuration state and read models): connection and
//! migrations, on SQLite or PostgreSQL through `sqlx::Any`.

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Executor};
use std::time::Duration;

/// Errors opening or migrating the database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Connecting failed.
    #[error("cannot connect to database: {0}")]
    Connect(#[source] sqlx::Error),
    /// A migration failed.
    #[error("database migration failed: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// The URL names an unsupported backend.
    #[error("unsupported database URL (use sqlite:// or postgres://)")]
    Unsupported,
}

/// Which SQL dialect a pool speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite (embedded mode).
    Sqlite,
    /// PostgreSQL (scale mode).
    Postgres,
}

impl Backend {
    /// Picks the backend from a URL scheme.
    pub fn from_url(url: &str) -> Result<Self, DbError> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Backend::Postgres)
        } else {
            Err(DbError::Unsupported)
        }
    }
}

/// Opens a pool. SQLite gets WAL, a busy timeout and relaxed fsync (the event log, not
/// this database, is the durable record).
pub async fn connect(url: &str) -> Result<AnyPool, DbError> {
    sqlx::any::install_default_drivers();
    let backend = Backend::from_url(url)?;
    let mut opts = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(30));
    if backend == Backend::Sqlite {
        opts = opts.max_connections(8).after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute(
                    "PRAGMA journal_mode=WAL; PRAGMA busy_timeout=10000; \
                     PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;",
                )
                .await?;
                Ok(())
            })
        });
    } else {
        opts = opts.max_connections(16);
    }
    opts.connect(url).await.map_err(DbError::Connect)
}

/// Applies the relay's migrations (versions 1..=99). Projections apply theirs (100 and
/// up) to the same database, hence `ignore_missing`.
pub async fn migrate(pool: &AnyPool, backend: Backend) -> Result<(), DbError> {
    let mut migrator = match backend {
        Backend::Sqlite => sqlx::migrate!("./migrations/sqlite"),
        Backend::Postgres => sqlx::migrate!("./migrations/postgres"),
    };
    migrator.set_ignore_missing(true);
    migrator.run(pool).await.map_err(DbError::Migrate)
}
