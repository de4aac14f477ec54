//! The audit trail: one record per routed request, written when the
//! decision is made and completed with the outcome (served model,
//! fallbacks, tokens, timings, cost, a cascade's attempts).
//!
//! Two stores behind one [`Store`] trait: embedded SQLite (the default; WAL,
//! synchronous=NORMAL, so a committed record survives restarts and kill -9)
//! and PostgreSQL, which several replicas share (`audit_db =
//! "postgres://..."`): each writes its own records and reads everyone's.
//! Both carry versioned migrations ([`sqlite::MIGRATIONS`],
//! [`postgres::MIGRATIONS`]) and a retention window.
//!
//! Writes never wait on the database: [`AuditLog::record`] and
//! [`AuditLog::complete`] put the write in a bounded queue, which one
//! thread owning the connection works through in order; a full queue drops
//! the write and counts it ([`AuditLog::dropped`]). Reads go through the
//! same queue, behind every write queued before them, so a replica reads its
//! own writes. This is the shape of vLLM's and TGI's off-path loggers: the
//! request path only enqueues.

mod postgres;
mod sqlite;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::decide::Decision;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("audit database: {0}")]
    Postgres(#[from] ::postgres::Error),
    #[error("audit record: {0}")]
    Json(#[from] serde_json::Error),
    #[error("audit store: {0}")]
    Store(String),
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

/// Which records a listing returns, newest first. Every filter runs in the
/// store (SQL over the record's JSON), so `limit` counts matching records.
#[derive(Debug, Default, Clone)]
pub struct Query {
    pub limit: usize,
    pub model: Option<String>,
    pub task: Option<String>,
    pub since: Option<f64>,
    /// The decision's objective (`quality`, `cost`, ...).
    pub objective: Option<String>,
    pub outcome: Option<OutcomeKind>,
    /// Only records where a fallback served (or tried to).
    pub fallback: bool,
    /// Only cascades that escalated (an attempt was not accepted).
    pub escalated: bool,
    /// Only requests that named their model.
    pub pinned: bool,
}

/// Where a request ended: served, failed, or not finished yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeKind {
    Served,
    Error,
    Open,
}

impl OutcomeKind {
    pub fn parse(s: &str) -> Option<OutcomeKind> {
        match s {
            "served" => Some(OutcomeKind::Served),
            "error" => Some(OutcomeKind::Error),
            "open" => Some(OutcomeKind::Open),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Served => "served",
            OutcomeKind::Error => "error",
            OutcomeKind::Open => "open",
        }
    }
}

/// Where records are kept: `postgres://` or `postgresql://` URLs name a
/// PostgreSQL database; anything else is a SQLite file.
#[derive(Debug, Clone, PartialEq)]
pub enum AuditTarget {
    Sqlite(PathBuf),
    Postgres(String),
}

impl AuditTarget {
    pub fn parse(s: &str) -> AuditTarget {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            AuditTarget::Postgres(s.to_string())
        } else {
            AuditTarget::Sqlite(PathBuf::from(s))
        }
    }

    /// For messages: the file, or the database URL without its password.
    pub fn describe(&self) -> String {
        match self {
            AuditTarget::Sqlite(p) => p.display().to_string(),
            AuditTarget::Postgres(url) => postgres::redact(url),
        }
    }
}

/// How the audit store behaves besides where it is.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// Writes that may wait for the database before new ones are dropped.
    pub queue: usize,
    /// Records older than this are deleted (checked hourly); `None` keeps all.
    pub retention: Option<Duration>,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            queue: 4096,
            retention: None,
        }
    }
}

/// A database the audit log can keep records in.
trait Store: Send {
    fn insert(&mut self, rec: &DecisionRecord, task: &str) -> Result<(), AuditError>;
    fn complete(&mut self, id: &str, outcome: &Outcome) -> Result<(), AuditError>;
    fn get(&mut self, id: &str) -> Result<Option<DecisionRecord>, AuditError>;
    /// Newest first.
    fn list(&mut self, q: &Query) -> Result<Vec<DecisionRecord>, AuditError>;
    /// Delete records created before `before` (Unix seconds); how many went.
    fn purge(&mut self, before: f64) -> Result<usize, AuditError>;
}

type Reply<T> = mpsc::Sender<Result<T, AuditError>>;

enum Op {
    Insert(Box<DecisionRecord>, String),
    Complete(String, Box<Outcome>),
    Get(String, Reply<Option<DecisionRecord>>),
    List(Query, Reply<Vec<DecisionRecord>>),
    Purge(f64, Reply<usize>),
    /// Answered once every earlier operation is done.
    Flush(mpsc::Sender<()>),
}

/// The audit log: a bounded queue in front of one store-owning thread.
pub struct AuditLog {
    ops: SyncSender<Op>,
    queued: Arc<AtomicUsize>,
    dropped: Arc<AtomicU64>,
    target: String,
}

/// How long a read waits for the store before it is an error.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
const RETENTION_EVERY: Duration = Duration::from_secs(3600);

impl AuditLog {
    /// A SQLite file with default options (`:memory:` for tests).
    pub fn open(path: &std::path::Path) -> Result<AuditLog, AuditError> {
        Self::connect(
            &AuditTarget::Sqlite(path.to_path_buf()),
            AuditOptions::default(),
        )
    }

    /// Open (or create) the store, apply its migrations, start its thread.
    pub fn connect(target: &AuditTarget, options: AuditOptions) -> Result<AuditLog, AuditError> {
        let opening = target.clone();
        Self::spawn(
            move || match &opening {
                AuditTarget::Sqlite(p) => sqlite::SqliteStore::open(p).map(|s| Box::new(s) as _),
                AuditTarget::Postgres(url) => {
                    postgres::PostgresStore::connect(url).map(|s| Box::new(s) as _)
                }
            },
            target.describe(),
            options,
        )
    }

    /// Start the store's thread; the store is opened on it (the Postgres
    /// client runs its own small runtime, which must not start inside the
    /// server's).
    fn spawn(
        open: impl FnOnce() -> Result<Box<dyn Store>, AuditError> + Send + 'static,
        target: String,
        options: AuditOptions,
    ) -> Result<AuditLog, AuditError> {
        let (ops, rx) = mpsc::sync_channel(options.queue.max(1));
        let (ready_tx, ready_rx) = mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let worker_queued = queued.clone();
        std::thread::Builder::new()
            .name("audit-store".into())
            .spawn(move || {
                let store = open();
                match store {
                    Ok(store) => {
                        let _ = ready_tx.send(Ok(()));
                        work(store, rx, worker_queued, options.retention);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| AuditError::Store(format!("cannot start the audit thread: {e}")))?;
        ready_rx
            .recv()
            .map_err(|_| AuditError::Store("the audit thread stopped while opening".into()))??;
        Ok(AuditLog {
            ops,
            queued,
            dropped: Arc::new(AtomicU64::new(0)),
            target,
        })
    }

    /// Where the records go, for logs (no password).
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Writes waiting for the store.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Writes dropped because the queue was full (or the store gone).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn enqueue(&self, op: Op) {
        self.queued.fetch_add(1, Ordering::Relaxed);
        match self.ops.try_send(op) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.queued.fetch_sub(1, Ordering::Relaxed);
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                // Every power of two, not every drop: the log must not
                // become the next bottleneck.
                if n.is_power_of_two() {
                    tracing::warn!(dropped = n, "audit queue full: decision records dropped");
                }
            }
        }
    }

    /// Queue `op` behind the writes, waiting at most until `deadline` for
    /// room (a stuck store must not hold a reader forever).
    fn send_by(&self, mut op: Op, deadline: std::time::Instant) -> Result<(), AuditError> {
        loop {
            match self.ops.try_send(op) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Disconnected(_)) => {
                    return Err(AuditError::Store("the audit store has stopped".into()))
                }
                Err(TrySendError::Full(back)) if std::time::Instant::now() < deadline => {
                    op = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(TrySendError::Full(_)) => {
                    return Err(AuditError::Store(
                        "the audit store is not keeping up".into(),
                    ))
                }
            }
        }
    }

    fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Op) -> Result<T, AuditError> {
        let deadline = std::time::Instant::now() + READ_TIMEOUT;
        let (tx, rx) = mpsc::channel();
        self.send_by(make(tx), deadline)?;
        rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            .map_err(|_| AuditError::Store("the audit store did not answer".into()))?
    }

    /// Queue the record of a decision; returns it as it will be stored.
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
        self.enqueue(Op::Insert(
            Box::new(rec.clone()),
            decision.classification.task.as_str().to_string(),
        ));
        Ok(rec)
    }

    /// Queue a decision's outcome.
    pub fn complete(&self, id: &str, outcome: &Outcome) -> Result<(), AuditError> {
        self.enqueue(Op::Complete(id.to_string(), Box::new(outcome.clone())));
        Ok(())
    }

    /// One record, after every write queued before this call.
    pub fn get(&self, id: &str) -> Result<Option<DecisionRecord>, AuditError> {
        self.ask(|tx| Op::Get(id.to_string(), tx))
    }

    /// Newest first, after every write queued before this call.
    pub fn list(&self, q: &Query) -> Result<Vec<DecisionRecord>, AuditError> {
        self.ask(|tx| Op::List(q.clone(), tx))
    }

    /// Wait (at most `timeout`) until every write queued so far is done.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let (tx, rx) = mpsc::channel();
        self.send_by(Op::Flush(tx), deadline).is_ok()
            && rx
                .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
                .is_ok()
    }

    /// Delete the records created before `before` (Unix seconds) now.
    pub fn purge(&self, before: f64) -> Result<usize, AuditError> {
        self.ask(|tx| Op::Purge(before, tx))
    }
}

impl Drop for AuditLog {
    /// Queued writes are not lost with the log: they are written first.
    fn drop(&mut self) {
        if !self.flush(READ_TIMEOUT) {
            tracing::warn!(
                queued = self.queued(),
                "audit: writes still queued at close"
            );
        }
    }
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The store's thread: every operation in order; retention hourly.
fn work(
    mut store: Box<dyn Store>,
    ops: Receiver<Op>,
    queued: Arc<AtomicUsize>,
    retention: Option<Duration>,
) {
    let purge = |store: &mut Box<dyn Store>| {
        if let Some(keep) = retention {
            match store.purge(now_secs() - keep.as_secs_f64()) {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "audit retention"),
                Err(e) => tracing::warn!("audit retention: {e}"),
            }
        }
    };
    purge(&mut store);
    let mut next_purge = std::time::Instant::now() + RETENTION_EVERY;
    loop {
        // Due whether or not the queue ever runs dry.
        if std::time::Instant::now() >= next_purge {
            purge(&mut store);
            next_purge = std::time::Instant::now() + RETENTION_EVERY;
        }
        let wait = next_purge.saturating_duration_since(std::time::Instant::now());
        let op = match ops.recv_timeout(wait) {
            Ok(op) => op,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        match op {
            Op::Insert(rec, task) => {
                if let Err(e) = store.insert(&rec, &task) {
                    tracing::warn!(id = %rec.id, "audit: {e}");
                }
                queued.fetch_sub(1, Ordering::Relaxed);
            }
            Op::Complete(id, outcome) => {
                if let Err(e) = store.complete(&id, &outcome) {
                    tracing::warn!(%id, "audit: {e}");
                }
                queued.fetch_sub(1, Ordering::Relaxed);
            }
            Op::Get(id, reply) => {
                let _ = reply.send(store.get(&id));
            }
            Op::List(q, reply) => {
                let _ = reply.send(store.list(&q));
            }
            Op::Purge(before, reply) => {
                let _ = reply.send(store.purge(before));
            }
            Op::Flush(reply) => {
                let _ = reply.send(());
            }
        }
    }
}

pub fn request_hash(text: &str) -> String {
    format!("{:016x}", crate::classifier::fnv1a(text.bytes()))
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
            ..Default::default()
        };
        assert_eq!(log.list(&q(Some("m1"), None)).unwrap().len(), 1);
        assert_eq!(log.list(&q(None, Some("math"))).unwrap().len(), 2);
        assert_eq!(log.list(&q(None, Some("code"))).unwrap().len(), 0);
        // Retention: everything created before a time goes.
        assert_eq!(log.purge(now_secs() + 1.0).unwrap(), 2);
        assert!(log.get("dec-1").unwrap().is_none());
        assert_eq!(log.dropped(), 0);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn every_listing_filter_runs_in_the_store() {
        let log = AuditLog::open(std::path::Path::new(":memory:")).unwrap();
        let c = Classification {
            task: Task::Code,
            task_confidence: 0.9,
            difficulty: Difficulty::Easy,
            difficulty_confidence: 0.9,
            p_hard: 0.1,
        };
        let attempt = |accepted| Attempt {
            model: "small".into(),
            accepted,
            ..Default::default()
        };
        let served = |model: &str| Outcome {
            served_model: Some(model.into()),
            ..Default::default()
        };
        // (id, pinned, objective, outcome or None for a request still open)
        let records = [
            ("pinned", true, Objective::Cost, Some(served("m1"))),
            (
                "failed",
                false,
                Objective::Quality,
                Some(Outcome {
                    error: Some("engine failed".into()),
                    ..Default::default()
                }),
            ),
            (
                "fell-back",
                false,
                Objective::Balanced,
                Some(Outcome {
                    fallbacks: vec![("m1".into(), "unreachable".into())],
                    ..served("m2")
                }),
            ),
            (
                "escalated",
                false,
                Objective::Cascade,
                Some(Outcome {
                    attempts: vec![attempt(false), attempt(true)],
                    ..served("m2")
                }),
            ),
            (
                "accepted",
                false,
                Objective::Cascade,
                Some(Outcome {
                    attempts: vec![attempt(true)],
                    ..served("m1")
                }),
            ),
            ("open", false, Objective::Quality, None),
        ];
        for (id, is_pinned, objective, outcome) in &records {
            let mut d = pinned("m1", c.clone(), RoutingOptions::default(), *objective);
            d.pinned = *is_pinned;
            log.record(id, &d, id, false).unwrap();
            if let Some(o) = outcome {
                log.complete(id, o).unwrap();
            }
        }
        let ids = |q: Query| -> Vec<String> {
            let mut ids: Vec<String> = log
                .list(&Query { limit: 100, ..q })
                .unwrap()
                .into_iter()
                .map(|r| r.id)
                .collect();
            ids.sort();
            ids
        };
        assert_eq!(
            ids(Query {
                pinned: true,
                ..Default::default()
            }),
            ["pinned"]
        );
        assert_eq!(
            ids(Query {
                fallback: true,
                ..Default::default()
            }),
            ["fell-back"]
        );
        assert_eq!(
            ids(Query {
                escalated: true,
                ..Default::default()
            }),
            ["escalated"]
        );
        assert_eq!(
            ids(Query {
                objective: Some("cascade".into()),
                ..Default::default()
            }),
            ["accepted", "escalated"]
        );
        assert_eq!(
            ids(Query {
                outcome: Some(OutcomeKind::Error),
                ..Default::default()
            }),
            ["failed"]
        );
        assert_eq!(
            ids(Query {
                outcome: Some(OutcomeKind::Open),
                ..Default::default()
            }),
            ["open"]
        );
        assert_eq!(
            ids(Query {
                outcome: Some(OutcomeKind::Served),
                ..Default::default()
            }),
            ["accepted", "escalated", "fell-back", "pinned"]
        );
        // Filters combine, and the limit counts matches, not rows scanned.
        assert_eq!(
            ids(Query {
                objective: Some("quality".into()),
                outcome: Some(OutcomeKind::Open),
                ..Default::default()
            }),
            ["open"]
        );
        let newest_cascade = log
            .list(&Query {
                limit: 1,
                objective: Some("cascade".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(newest_cascade.len(), 1);
    }

    /// A store whose first insert waits until the test lets it go.
    struct Stalled {
        started: mpsc::Sender<()>,
        go: Option<mpsc::Receiver<()>>,
        rows: Vec<String>,
    }

    impl Store for Stalled {
        fn insert(&mut self, rec: &DecisionRecord, _: &str) -> Result<(), AuditError> {
            if let Some(go) = self.go.take() {
                let _ = self.started.send(());
                let _ = go.recv();
            }
            self.rows.push(rec.id.clone());
            Ok(())
        }
        fn complete(&mut self, _: &str, _: &Outcome) -> Result<(), AuditError> {
            Ok(())
        }
        fn get(&mut self, id: &str) -> Result<Option<DecisionRecord>, AuditError> {
            Ok(self.rows.iter().any(|r| r == id).then(|| DecisionRecord {
                id: id.into(),
                created: 0.0,
                request_hash: String::new(),
                prompt: None,
                decision: serde_json::Value::Null,
                outcome: Outcome::default(),
            }))
        }
        fn list(&mut self, _: &Query) -> Result<Vec<DecisionRecord>, AuditError> {
            Ok(Vec::new())
        }
        fn purge(&mut self, _: f64) -> Result<usize, AuditError> {
            Ok(0)
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting_and_reads_see_earlier_writes() {
        let (started_tx, started) = mpsc::channel();
        let (go, go_rx) = mpsc::channel();
        let store = Stalled {
            started: started_tx,
            go: Some(go_rx),
            rows: Vec::new(),
        };
        let options = AuditOptions {
            queue: 2,
            retention: None,
        };
        let log =
            AuditLog::spawn(move || Ok(Box::new(store) as _), "test".into(), options).unwrap();
        let d = pinned(
            "m",
            Classification {
                task: Task::Math,
                task_confidence: 1.0,
                difficulty: Difficulty::Easy,
                difficulty_confidence: 1.0,
                p_hard: 0.0,
            },
            RoutingOptions::default(),
            Objective::Cost,
        );
        log.record("dec-0", &d, "", false).unwrap();
        started.recv().unwrap(); // the store holds dec-0
        let t = std::time::Instant::now();
        for i in 1..=5 {
            log.record(&format!("dec-{i}"), &d, "", false).unwrap();
        }
        assert!(t.elapsed() < Duration::from_secs(1), "writers never wait");
        assert_eq!((log.queued(), log.dropped()), (3, 3));
        go.send(()).unwrap();
        // Queued behind dec-1 and dec-2, the read sees them; 3-5 were dropped.
        assert!(log.get("dec-2").unwrap().is_some());
        assert!(log.get("dec-3").unwrap().is_none());
        assert_eq!(log.queued(), 0);
    }
}
