//! The shared store: PostgreSQL, for a fleet of replicas. Each replica's
//! store thread holds one connection (reconnected when it breaks); records
//! are `jsonb`, so an outcome is completed in place without a read.

use postgres::{Client, NoTls};
use serde_json::Value;

use super::{AuditError, DecisionRecord, Outcome, Query, Store};

/// Schema versions, applied in order once each (`switchyard_schema`), under
/// an advisory lock so that replicas starting together migrate once.
pub const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    "CREATE TABLE IF NOT EXISTS decisions (
        id TEXT PRIMARY KEY,
        created DOUBLE PRECISION NOT NULL,
        task TEXT NOT NULL,
        served_model TEXT,
        record JSONB NOT NULL
    );
    CREATE INDEX IF NOT EXISTS decisions_created ON decisions(created);",
)];

/// `pg_advisory_xact_lock` key for migrations ("swyd" in ASCII).
const MIGRATION_LOCK: i64 = 0x7377_7964;

pub struct PostgresStore {
    url: String,
    client: Client,
}

/// The URL with its password replaced, for messages (in the user part or
/// as a `password=` parameter).
pub fn redact(url: &str) -> String {
    let (url, query) = match url.split_once('?') {
        Some((base, q)) => {
            let q: Vec<String> = q
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => kv.to_string(),
                })
                .collect();
            (base, format!("?{}", q.join("&")))
        }
        None => (url, String::new()),
    };
    let base = match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    };
    base + &query
}

/// A client for `url`, with timeouts so that a dead or unreachable server
/// fails the store's operations instead of hanging its thread: 10 s to
/// connect, TCP keepalives, 30 s per statement.
fn connect(url: &str) -> Result<Client, postgres::Error> {
    let mut config: postgres::Config = url.parse()?;
    config
        .connect_timeout(std::time::Duration::from_secs(10))
        .keepalives(true)
        .keepalives_idle(std::time::Duration::from_secs(30))
        .options("-c statement_timeout=30000");
    config.connect(NoTls)
}

impl PostgresStore {
    pub fn connect(url: &str) -> Result<PostgresStore, AuditError> {
        let mut client = connect(url)?;
        migrate(&mut client)?;
        Ok(PostgresStore {
            url: url.to_string(),
            client,
        })
    }

    /// Run `f`; if the connection had broken, reconnect once and run it again.
    fn retry<T>(
        &mut self,
        f: impl Fn(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, AuditError> {
        match f(&mut self.client) {
            Err(_) if self.client.is_closed() => {
                self.client = connect(&self.url)?;
                Ok(f(&mut self.client)?)
            }
            r => Ok(r?),
        }
    }
}

fn migrate(client: &mut Client) -> Result<(), AuditError> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS switchyard_schema (version INTEGER PRIMARY KEY, applied DOUBLE PRECISION NOT NULL)",
    )?;
    let current: i32 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM switchyard_schema",
            &[],
        )?
        .get(0);
    for &(version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tx.batch_execute(sql)?;
        tx.execute(
            "INSERT INTO switchyard_schema (version, applied) VALUES ($1, $2)",
            &[&version, &super::now_secs()],
        )?;
    }
    tx.commit()?;
    Ok(())
}

fn record(v: Value) -> Result<DecisionRecord, AuditError> {
    Ok(serde_json::from_value(v)?)
}

impl Store for PostgresStore {
    fn insert(&mut self, rec: &DecisionRecord, task: &str) -> Result<(), AuditError> {
        let json = serde_json::to_value(rec)?;
        self.retry(|c| {
            c.execute(
                "INSERT INTO decisions (id, created, task, served_model, record) VALUES ($1, $2, $3, NULL, $4)",
                &[&rec.id, &rec.created, &task, &json],
            )
        })?;
        Ok(())
    }

    fn complete(&mut self, id: &str, outcome: &Outcome) -> Result<(), AuditError> {
        let json = serde_json::to_value(outcome)?;
        self.retry(|c| {
            c.execute(
                "UPDATE decisions SET served_model = $2, record = jsonb_set(record, '{outcome}', $3) WHERE id = $1",
                &[&id, &outcome.served_model, &json],
            )
        })?;
        Ok(())
    }

    fn get(&mut self, id: &str) -> Result<Option<DecisionRecord>, AuditError> {
        let row =
            self.retry(|c| c.query_opt("SELECT record FROM decisions WHERE id = $1", &[&id]))?;
        row.map(|r| record(r.get(0))).transpose()
    }

    fn list(&mut self, q: &Query) -> Result<Vec<DecisionRecord>, AuditError> {
        let limit = q.limit.max(1) as i64;
        let rows = self.retry(|c| {
            c.query(
                "SELECT record FROM decisions
                 WHERE ($1::text IS NULL OR served_model = $1) AND ($2::text IS NULL OR task = $2)
                   AND ($3::float8 IS NULL OR created >= $3)
                   AND ($5::text IS NULL OR record #>> '{decision,objective}' = $5)
                   AND ($6::text IS NULL
                        OR ($6 = 'error' AND record #>> '{outcome,error}' IS NOT NULL)
                        OR ($6 = 'served' AND record #>> '{outcome,error}' IS NULL
                            AND record #>> '{outcome,served_model}' IS NOT NULL)
                        OR ($6 = 'open' AND record #>> '{outcome,error}' IS NULL
                            AND record #>> '{outcome,served_model}' IS NULL))
                   AND (NOT $7::bool OR jsonb_array_length(COALESCE(record #> '{outcome,fallbacks}', '[]'::jsonb)) > 0)
                   AND (NOT $8::bool OR jsonb_path_exists(record, '$.outcome.attempts[*] ? (@.accepted == false)'))
                   AND (NOT $9::bool OR record #>> '{decision,pinned}' = 'true')
                 ORDER BY created DESC LIMIT $4",
                &[
                    &q.model,
                    &q.task,
                    &q.since,
                    &limit,
                    &q.objective,
                    &q.outcome.map(|o| o.as_str()),
                    &q.fallback,
                    &q.escalated,
                    &q.pinned,
                ],
            )
        })?;
        rows.into_iter().map(|r| record(r.get(0))).collect()
    }

    fn purge(&mut self, before: f64) -> Result<usize, AuditError> {
        let n =
            self.retry(|c| c.execute("DELETE FROM decisions WHERE created < $1", &[&before]))?;
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            super::redact("postgres://sy:secret@db:5432/audit"),
            "postgres://sy:***@db:5432/audit"
        );
        assert_eq!(super::redact("postgres://db/audit"), "postgres://db/audit");
        assert_eq!(
            super::redact("postgres://db/audit?sslmode=disable&password=secret"),
            "postgres://db/audit?sslmode=disable&password=***"
        );
        assert_eq!(
            super::redact("postgresql://sy@db/audit"),
            "postgresql://sy@db/audit"
        );
    }
}
