//! The database schema: append-only migrations tracked in `PRAGMA user_version`.

use rusqlite::Connection;
use rusqlite_migration::{M, MigrationDefinitionError, Migrations};

/// Append only: never edit a migration that has shipped, add the next one.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_messages.sql"),
    include_str!("migrations/0002_drafts.sql"),
    include_str!("migrations/0003_meta.sql"),
];

/// The schema version this binary writes.
pub fn latest_version() -> usize {
    MIGRATIONS.len()
}

/// Bring the database to the latest schema, or explain in one line why not.
pub fn migrate(conn: &mut Connection) -> Result<(), String> {
    let migrations = Migrations::new(MIGRATIONS.iter().map(|sql| M::up(sql)).collect());
    migrations.to_latest(conn).map_err(|e| match e {
        rusqlite_migration::Error::MigrationDefinition(
            MigrationDefinitionError::DatabaseTooFarAhead,
        ) => {
            let found: i64 = conn
                .query_row("PRAGMA user_version", [], |row| row.get(0))
                .unwrap_or(-1);
            format!(
                "its schema version {found} is newer than this natter understands ({}); run a newer natter",
                latest_version()
            )
        }
        rusqlite_migration::Error::RusqliteError { err, .. } => err.to_string(),
        other => other.to_string(),
    })
}
