/// What can go wrong talking to Postgres.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("invalid database configuration: {0}")]
    Config(String),
    #[error("connecting to postgres")]
    Connect(#[source] sqlx::Error),
    #[error("applying migrations")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("not found")]
    NotFound,
    #[error("conflict: {0}")]
    Conflict(String),
    /// A stored value the code cannot read (a constraint the schema does not enforce).
    #[error("stored data is not valid: {0}")]
    Data(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl StorageError {
    /// Whether retrying later may succeed (database down, pool exhausted, deadlock,
    /// serialization failure), as opposed to a permanent problem with the data.
    pub fn is_transient(&self) -> bool {
        match self {
            StorageError::Connect(_) => true,
            StorageError::Database(err) => is_transient_sqlx(err),
            StorageError::Config(_)
            | StorageError::Migrate(_)
            | StorageError::NotFound
            | StorageError::Conflict(_)
            | StorageError::Data(_) => false,
        }
    }
}

/// Classifies an sqlx error as transient (retry) or permanent.
pub fn is_transient_sqlx(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 40001 serialization_failure, 40P01 deadlock_detected, 08* connection
            // exceptions, 53* insufficient resources, 57P0* admin shutdown / crash
            // recovery / cannot connect now, 55P03 lock_not_available.
            code == "40001"
                || code == "40P01"
                || code == "55P03"
                || code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57P0")
        }),
        _ => false,
    }
}

/// Maps a unique violation (SQLSTATE 23505) to [`StorageError::Conflict`].
pub(crate) fn unique_to_conflict(err: sqlx::Error, message: &str) -> StorageError {
    match &err {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => {
            StorageError::Conflict(message.to_owned())
        }
        _ => StorageError::Database(err),
    }
}
