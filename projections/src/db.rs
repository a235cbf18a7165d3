//! Connecting to the read-model database and applying this crate's migrations.
//!
//! The relay keeps its own tables (versions 1..=99) in the same database; this crate's
//! migrations use versions 100 and up and run with `ignore_missing` so the two
//! migrators share one `_sqlx_migrations` table.

use crate::Error;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Executor};
use std::time::Duration;

/// Which SQL dialect a pool speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite (embedded mode).
    Sqlite,
    /// PostgreSQL (scale mode).
    Postgres,
    /// MySQL 8 or MariaDB 10.5+ (scale mode, for operators who run MySQL).
    MySql,
}

impl Backend {
    /// Picks the backend from a URL scheme.
    pub fn from_url(url: &str) -> Result<Self, Error> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Backend::Postgres)
        } else if url.starts_with("mysql:") || url.starts_with("mariadb:") {
            Ok(Backend::MySql)
        } else {
            Err(Error::UnsupportedBackend)
        }
    }

    /// The backend of a connection, from sqlx's name for its driver (`"SQLite"`,
    /// `"PostgreSQL"`, `"MySQL"`).
    pub fn from_driver_name(name: &str) -> Self {
        if name.eq_ignore_ascii_case("postgresql") {
            Backend::Postgres
        } else if name.eq_ignore_ascii_case("mysql") {
            Backend::MySql
        } else {
            Backend::Sqlite
        }
    }

    /// The name of the backend as the admin API and the CLI report it.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
            Backend::MySql => "mysql",
        }
    }

    /// The backend of an open pool.
    pub fn of(pool: &AnyPool) -> Result<Self, Error> {
        Self::from_url(pool.connect_options().database_url.as_str())
    }
}

/// Opens a pool with sane options. SQLite: the file is created if missing, WAL
/// journal, a 10 s busy timeout, foreign keys on, `synchronous=NORMAL` (the event log,
/// not this database, is the durable record: a lost tail is re-projected from the
/// checkpoint). PostgreSQL: up to 16 connections, sessions idle inside a transaction
/// ended by the server after 10 s. MySQL / MariaDB: up to 16 connections, strict mode,
/// READ COMMITTED.
pub async fn connect(url: &str) -> Result<AnyPool, Error> {
    sqlx::any::install_default_drivers();
    let backend = Backend::from_url(url)?;
    let mut opts = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(30));
    let url = match backend {
        Backend::Sqlite => {
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
            if url.contains("mode=") || url.contains(":memory:") {
                url.to_owned()
            } else if url.contains('?') {
                format!("{url}&mode=rwc")
            } else {
                format!("{url}?mode=rwc")
            }
        }
        Backend::Postgres => {
            // A task cancelled inside a transaction (shutdown, an aborted projector)
            // can leave its connection idle in that transaction, holding row locks
            // (the projector lease) until the connection is next used. The server ends
            // such sessions after 10 s, so no lock outlives its holder for long.
            opts = opts.max_connections(16).after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("SET idle_in_transaction_session_timeout = 10000")
                        .await?;
                    Ok(())
                })
            });
            url.to_owned()
        }
        Backend::MySql => {
            // sqlx sets `PIPES_AS_CONCAT` (`||` concatenates, as on the other two),
            // `NO_ENGINE_SUBSTITUTION`, utf8mb4 and the UTC session time zone. Strict
            // mode makes an over-long value an error instead of a silent truncation;
            // a transaction waits at most 10 s for a row lock, like a SQLite writer.
            opts = opts.max_connections(16).after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute(
                        "SET SESSION sql_mode = CONCAT(@@sql_mode, ',STRICT_TRANS_TABLES'), \
                         SESSION innodb_lock_wait_timeout = 10",
                    )
                    .await?;
                    // As on PostgreSQL: each statement sees what was committed before it.
                    conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                        .await?;
                    Ok(())
                })
            });
            match url.strip_prefix("mariadb:") {
                Some(rest) => format!("mysql:{rest}"),
                None => url.to_owned(),
            }
        }
    };
    Ok(opts.connect(&url).await?)
}

/// Applies this crate's migrations (versions 100 and up) for the pool's backend.
pub async fn migrate(pool: &AnyPool) -> Result<(), Error> {
    let mut migrator = match Backend::of(pool)? {
        Backend::Sqlite => sqlx::migrate!("./migrations/sqlite"),
        Backend::Postgres => sqlx::migrate!("./migrations/postgres"),
        Backend::MySql => sqlx::migrate!("./migrations/mysql"),
    };
    migrator.set_ignore_missing(true);
    migrator.run(pool).await?;
    Ok(())
}
