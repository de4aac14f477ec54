//! The audit trail: one record per routed request, in an embedded SQLite
//! database (WAL, synchronous=NORMAL: a committed record survives restarts and
//! kill -9). The record is written when the decision is made and completed
//! with the outcome (served model, fallbacks, tokens, timings, cost).

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::decide::Decision;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("audit record: {0}")]
    Json(#[from] serde_json::Error),
    #[error("audit database lock poisoned")]
    Poisoned,
}

/// What happened after the decision.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Outcome {
    pub served_model: Option<String>,
    /// (model, why it failed) for every candidate tried before the one that served.
    pub fallbacks: Vec<(String, String)>,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub ttft_ms: Option<f64>,
    pub total_ms: Option<f64>,
    /// Total cost, escalations included.
    pub cost_usd: Option<f64>,
    pub error: Option<String>,
    /// Under `cascade`: every model that answered, in order, with its
    /// confidence and the verdict; the last accepted one served.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<Attempt>,
}

/// One answer of a cascade and whether it was confident enough.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Attempt {
    pub model: String,
    /// Tokens the verdict read (all of them, or a stream's held-back ones).
    pub tokens: usize,
    /// Mean and minimum token log-probability, mean entropy (nats).
    pub mean_logprob: Option<f64>,
    pub min_logprob: Option<f64>,
    pub mean_entropy: Option<f64>,
    /// Under a grammar (structured output, tools): whether every choice
    /// finished inside it; `None` without one or before the end.
    pub grammar_complete: Option<bool>,
    /// Accept at or above this mean log-probability, and where it came from.
    pub threshold: Option<f64>,
    pub threshold_source: String,
    pub accepted: bool,
    pub why: String,
    /// What an escalated answer cost (the served one's is in the outcome).
    pub cost_usd: Option<f64>,
    pub ms: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DecisionRecord {
    pub id: String,
    /// Unix seconds.
    pub created: f64,
    /// FNV-1a hash of the prompt text (the text itself only if configured).
    pub request_hash: String,
    pub prompt: Option<String>,
    pub decision: serde_json::Value,
    pub outcome: Outcome,
}

#[derive(Debug, Default, Clone)]
pub struct Query {
    pub limit: usize,
    pub model: Option<String>,
    pub task: Option<String>,
    pub since: Option<f64>,
}

pub struct AuditLog {
    conn: Mutex<Connection>,
}

pub fn request_hash(text: &str) -> String {
    format!("{:016x}", crate::classifier::fnv1a(text.bytes()))
}

impl AuditLog {
    /// Open (or create) the database at `path`; `:memory:` for tests.
    pub fn open(path: &Path) -> Result<AuditLog, AuditError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(dir);
        }
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS decisions (
                id TEXT PRIMARY KEY,
                created REAL NOT NULL,
                task TEXT NOT NULL,
                served_model TEXT,
                record TEXT NOT NULL
            );
            CREATE INDEX IF NOT EXISTS decisions_created ON decisions(created);",
        )?;
        Ok(AuditLog {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> Result<std::sync::MutexGuard<'_, Connection>, AuditError> {
        self.conn.lock().map_err(|_| AuditError::Poisoned)
    }

    pub fn record(
        &self,
        id: &str,
        decision: &Decision,
        prompt_text: &str,
        store_prompt: bool,
    ) -> Result<DecisionRecord, AuditError> {
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let rec = DecisionRecord {
            id: id.to_string(),
            created,
            request_hash: request_hash(prompt_text),
            prompt: store_prompt.then(|| prompt_text.to_string()),
            decision: serde_json::to_value(decision)?,
            outcome: Outcome::default(),
        };
        self.conn()?.execute(
            "INSERT INTO decisions (id, created, task, served_model, record) VALUES (?1, ?2, ?3, NULL, ?4)",
            params![id, created, decision.classification.task.as_str(), serde_json::to_string(&rec)?],
        )?;
        Ok(rec)
    }

    pub fn complete(&self, id: &str, outcome: &Outcome) -> Result<(), AuditError> {
        let Some(mut rec) = self.get(id)? else {
            return Ok(());
        };
        rec.outcome = outcome.clone();
        self.conn()?.execute(
            "UPDATE decisions SET served_model = ?2, record = ?3 WHERE id = ?1",
            params![id, outcome.served_model, serde_json::to_string(&rec)?],
        )?;
        Ok(())
    }

    pub fn get(&self, id: &str) -> Result<Option<DecisionRecord>, AuditError> {
        let text: Option<String> = self
            .conn()?
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

    /// Newest first.
    pub fn list(&self, q: &Query) -> Result<Vec<DecisionRecord>, AuditError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT record FROM decisions
             WHERE (?1 IS NULL OR served_model = ?1) AND (?2 IS NULL OR task = ?2) AND (?3 IS NULL OR created >= ?3)
             ORDER BY created DESC LIMIT ?4",
        )?;
        let rows = stmt.query_map(
            params![q.model, q.task, q.since, q.limit.max(1) as i64],
            |r| r.get::<_, String>(0),
        )?;
        let mut out = Vec::new();
        for row in rows {
            out.push(serde_json::from_str(&row?)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classifier::Classification;
    use crate::decide::{pinned, Objective, RoutingOptions};
    use crate::taxonomy::{Difficulty, Task};

    #[test]
    fn records_survive_reopening_and_filter() {
        let path =
            std::env::temp_dir().join(format!("switchyard-audit-test-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let c = Classification {
            task: Task::Math,
            task_confidence: 0.9,
            difficulty: Difficulty::Hard,
            difficulty_confidence: 0.7,
            p_hard: 0.8,
        };
        let d = pinned("m1", c, RoutingOptions::default(), Objective::Cost);
        {
            let log = AuditLog::open(&path).unwrap();
            log.record("dec-1", &d, "what is 2+2", true).unwrap();
            let outcome = Outcome {
                served_model: Some("m1".into()),
                completion_tokens: 3,
                ..Default::default()
            };
            log.complete("dec-1", &outcome).unwrap();
            log.record("dec-2", &d, "other", false).unwrap();
        }
        let log = AuditLog::open(&path).unwrap();
        let rec = log.get("dec-1").unwrap().unwrap();
        assert_eq!(rec.outcome.completion_tokens, 3);
        assert_eq!(rec.prompt.as_deref(), Some("what is 2+2"));
        assert_eq!(log.get("dec-2").unwrap().unwrap().prompt, None);
        let q = |model: Option<&str>, task: Option<&str>| Query {
            limit: 10,
            model: model.map(Into::into),
            task: task.map(Into::into),
            since: None,
        };
        assert_eq!(log.list(&q(Some("m1"), None)).unwrap().len(), 1);
        assert_eq!(log.list(&q(None, Some("math"))).unwrap().len(), 2);
        assert_eq!(log.list(&q(None, Some("code"))).unwrap().len(), 0);
        let _ = std::fs::remove_file(&path);
    }
}
