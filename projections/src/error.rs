//! The crate's error type.

/// Errors from projections, the runner, pricing and the read functions.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database failed.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The event log failed.
    #[error(transparent)]
    Log(#[from] ingest::LogError),
    /// The database URL names a backend this crate does not support.
    #[error("unsupported database URL (use sqlite: or postgres:)")]
    UnsupportedBackend,
    /// Another runner holds the projection's lease.
    #[error("projection {projection} is being run by {holder}")]
    LeaseHeld {
        /// The projection.
        projection: String,
        /// Who holds the lease.
        holder: String,
    },
    /// This runner lost its lease (it expired and another runner took it).
    #[error("lease on projection {0} was lost")]
    LeaseLost(String),
    /// The checkpoint moved under us: another runner applied these positions.
    #[error("checkpoint of projection {0} was advanced by someone else")]
    CheckpointConflict(String),
    /// No projection has this name.
    #[error("unknown projection {0:?}")]
    UnknownProjection(String),
    /// The price table is invalid.
    #[error("invalid price table: {0}")]
    PriceTable(String),
    /// An argument (date, month, filter) is invalid.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A stored value cannot be interpreted (e.g. a cost that does not fit).
    #[error("corrupt projection data: {0}")]
    Corrupt(String),
    /// The log holds an event version this build cannot read; deploy a newer build.
    #[error("event {event_type} v{version} at position {position} is newer than this build")]
    UnsupportedVersion {
        /// Where.
        position: u64,
        /// The event type.
        event_type: String,
        /// Its payload version.
        version: u16,
    },
    /// The runner was stopped before it finished.
    #[error("cancelled")]
    Cancelled,
}
