//! The embedded store: one SQLite file (WAL, synchronous=NORMAL).

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use super::{AuditError, DecisionRecord, Outcome, Query, Store};

/// Schema versions, applied in order once each (`switchyard_schema`).
/// Version 1 is the table every earlier release created (`IF NOT EXISTS`:
/// such a database is adopted as it is).
pub const MIGRATIONS: &[(i64, &str)] = &[(
    1,
    "CREATE TABLE IF NOT EXISTS decisions (
        id TEXT PRIMARY KEY,
        created REAL NOT NULL,
        task TEXT NOT NULL,
        served_model TEXT,
        record TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS decisions_created ON decisions(created);",
)];

pub struct SqliteStore {
    conn: Connection,
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<SqliteStore, AuditError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(dir);
        }
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn)?;
        Ok(SqliteStore { conn })
    }
}

fn migrate(conn: &mut Connection) -> Result<(), AuditError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS switchyard_schema (version INTEGER PRIMARY KEY, applied REAL NOT NULL)",
    )?;
    let current: i64 = tx.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM switchyard_schema",
        [],
        |r| r.get(0),
    )?;
    for &(version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO switchyard_schema (version, applied) VALUES (?1, ?2)",
            params![version, super::now_secs()],
        )?;
    }
    tx.commit()?;
    Ok(())
}

impl Store for SqliteStore {
    fn insert(&mut self, rec: &DecisionRecord, task: &str) -> Result<(), AuditError> {
        self.conn.execute(
            "INSERT INTO decisions (id, created, task, served_model, record) VALUES (?1, ?2, ?3, NULL, ?4)",
            params![rec.id, rec.created, task, serde_json::to_string(rec)?],
        )?;
        Ok(())
    }

    fn complete(&mut self, id: &str, outcome: &Outcome) -> Result<(), AuditError> {
        let Some(mut rec) = self.get(id)? else {
            return Ok(());
        };
        rec.outcome = outcome.clone();
        self.conn.execute(
            "UPDATE decisions SET served_model = ?2, record = ?3 WHERE id = ?1",
            params![id, outcome.served_model, serde_json::to_string(&rec)?],
        )?;
        Ok(())
    }

    fn get(&mut self, id: &str) -> Result<Option<DecisionRecord>, AuditError> {
        let text: Option<String> = self
            .conn
            .query_row(
                "SELECT record FROM decisions WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()?;
        Ok(match text {
            Some(t) => Some(serde_json::from_str(&t)?),
            None => None,
        })
    }

    fn list(&mut self, q: &Query) -> Result<Vec<DecisionRecord>, AuditError> {
        let mut stmt = self.conn.prepare(
            "SELECT record FROM decisions
             WHERE (?1 IS NULL OR served_model = ?1) AND (?2 IS NULL OR task = ?2) AND (?3 IS NULL OR created >= ?3)
               AND (?5 IS NULL OR json_extract(record, '$.decision.objective') = ?5)
               AND (?6 IS NULL
                    OR (?6 = 'error' AND json_extract(record, '$.outcome.error') IS NOT NULL)
                    OR (?6 = 'served' AND json_extract(record, '$.outcome.error') IS NULL
                        AND json_extract(record, '$.outcome.served_model') IS NOT NULL)
                    OR (?6 = 'open' AND json_extract(record, '$.outcome.error') IS NULL
                        AND json_extract(record, '$.outcome.served_model') IS NULL))
               AND (?7 = 0 OR json_array_length(record, '$.outcome.fallbacks') > 0)
               AND (?8 = 0 OR EXISTS (SELECT 1 FROM json_each(record, '$.outcome.attempts')
                                      WHERE json_extract(value, '$.accepted') = 0))
               AND (?9 = 0 OR json_extract(record, '$.decision.pinned') = 1)
             ORDER BY created DESC LIMIT ?4",
        )?;
        let rows = stmt.query_map(
            params![
                q.model,
                q.task,
                q.since,
                q.limit.max(1) as i64,
                q.objective,
                q.outcome.map(|o| o.as_str()),
                q.fallback,
                q.escalated,
                q.pinned
            ],
            |r| r.get::<_, String>(0),
        )?;
        let mut out = Vec::new();
        for row in rows {
            out.push(serde_json::from_str(&row?)?);
        }
        Ok(out)
    }

    fn purge(&mut self, before: f64) -> Result<usize, AuditError> {
        Ok(self
            .conn
            .execute("DELETE FROM decisions WHERE created < ?1", params![before])?)
    }
}
