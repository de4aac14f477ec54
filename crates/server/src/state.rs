//! The bottom floor of the server: what every request shares. The model
//! pool, the router's data, API keys and rate
//! limits, the bounded pool that tokenizes off the async runtime, the
//! shutdown lifecycle, ids and the clock. Nothing here imports the layers
//! above it (`job`, `routed`, `routes`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;
use switchyard_router::{AuditLog, Classifier, ModelProfile, Objective, Policy};
use tokio::sync::{watch, Semaphore};

pub use crate::config::Limits;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::remote::Remotes;

pub struct AppState {
    /// Every catalog model and its load state (see [`crate::pool`]).
    pub pool: Pool,
    /// The catalog's remote OpenAI-compatible models.
    pub remotes: Remotes,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    /// When set, `/v1/*` requires `Authorization: Bearer <one of the keys>`.
    pub keys: Option<ApiKeys>,
    pub started: u64,
    /// The router for `model: "auto"` (None: only pinned models).
    pub router: Option<Arc<RouterState>>,
    /// Tokenization and template rendering run here, never on async workers.
    pub blocking: BlockingPool,
    pub lifecycle: Lifecycle,
    /// Set once the `preload` models are ready (`/ready` waits for it).
    pub preloaded: AtomicBool,
}

impl AppState {
    /// The catalog's `capabilities.max_output` for a model (0: context-bound).
    pub fn max_output(&self, model: &str) -> usize {
        self.router
            .as_ref()
            .and_then(|r| r.profile(model))
            .map_or(0, |p| p.routing.capabilities.max_output)
    }
}

/// What `model: "auto"` decides with.
pub struct RouterState {
    pub classifier: Classifier,
    /// Context windows are the catalog's preview until a model loads, then
    /// its engine's.
    profiles: RwLock<Vec<ModelProfile>>,
    pub audit: AuditLog,
    pub default_objective: Objective,
    pub policy: Policy,
    pub store_prompts: bool,
    /// Testing hook (`SWITCHYARD_FAULT_MODELS=a,b`): submissions to these models fail.
    pub fault_models: Vec<String>,
    /// The last `POST /v1/routing/preview` report (the decisions page shows it).
    pub latest_preview: std::sync::Mutex<Option<Arc<serde_json::Value>>>,
    /// Tokens a cascaded stream holds back while its confidence is judged.
    pub cascade_buffer_tokens: usize,
}

impl RouterState {
    pub fn new(
        classifier: Classifier,
        profiles: Vec<ModelProfile>,
        audit: AuditLog,
        (default_objective, policy): (Objective, Policy),
        store_prompts: bool,
        fault_models: Vec<String>,
    ) -> Self {
        RouterState {
            classifier,
            profiles: RwLock::new(profiles),
            audit,
            default_objective,
            policy,
            store_prompts,
            fault_models,
            latest_preview: std::sync::Mutex::new(None),
            cascade_buffer_tokens: 16,
        }
    }

    pub fn profiles(&self) -> Vec<ModelProfile> {
        self.profiles.read().map(|p| p.clone()).unwrap_or_default()
    }

    pub fn profile(&self, model: &str) -> Option<ModelProfile> {
        self.profiles
            .read()
            .ok()?
            .iter()
            .find(|p| p.id == model)
            .cloned()
    }

    /// A model loaded: its engine's context window is the one to route by.
    pub fn set_context_window(&self, model: &str, window: usize) {
        if let Ok(mut profiles) = self.profiles.write() {
            for p in profiles.iter_mut().filter(|p| p.id == model) {
                p.context_window = window;
            }
        }
    }
}

/// API keys, compared in constant time, each with an optional request-rate
/// limit (a token bucket per key).
pub struct ApiKeys {
    keys: Vec<String>,
    /// Requests per minute per key; 0 is unlimited.
    per_minute: u32,
    buckets: Mutex<HashMap<usize, (f64, Instant)>>,
}

/// Why a request's key was refused.
pub enum KeyRefusal {
    Unknown,
    /// Over the rate limit: retry after this many seconds.
    RateLimited(u64),
}

impl ApiKeys {
    pub fn new(keys: Vec<String>, per_minute: u32) -> Option<Self> {
        let keys: Vec<String> = keys.into_iter().filter(|k| !k.is_empty()).collect();
        (!keys.is_empty()).then(|| ApiKeys {
            keys,
            per_minute,
            buckets: Mutex::default(),
        })
    }

    /// Check a presented key and take one request from its bucket.
    pub fn admit(&self, given: &[u8]) -> Result<(), KeyRefusal> {
        use subtle::ConstantTimeEq;
        // Every key is compared (no early exit), each in constant time.
        let mut found = None;
        for (i, k) in self.keys.iter().enumerate() {
            if bool::from(k.as_bytes().ct_eq(given)) {
                found = Some(i);
            }
        }
        let key = found.ok_or(KeyRefusal::Unknown)?;
        if self.per_minute == 0 {
            return Ok(());
        }
        let capacity = f64::from(self.per_minute);
        let per_sec = capacity / 60.0;
        let mut buckets = self.buckets.lock().map_err(|_| KeyRefusal::Unknown)?;
        let now = Instant::now();
        let (tokens, at) = buckets.entry(key).or_insert((capacity, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * per_sec).min(capacity);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(KeyRefusal::RateLimited(
                ((1.0 - *tokens) / per_sec).ceil().max(1.0) as u64,
            ))
        }
    }
}

/// A bounded pool for CPU-heavy request work (tokenizing, chat templates):
/// at most `threads` jobs run at once on tokio's blocking threads, at most
/// `max_queued` wait; beyond that the request is shed with 503 + Retry-After,
/// so a flood of huge prompts never starves the async workers.
pub struct BlockingPool {
    permits: Arc<Semaphore>,
    queued: AtomicUsize,
    max_queued: usize,
}

impl BlockingPool {
    pub fn new(threads: usize, max_queued: usize) -> Self {
        BlockingPool {
            permits: Arc::new(Semaphore::new(threads.max(1))),
            queued: AtomicUsize::new(0),
            max_queued,
        }
    }

    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // Wait in line, counted while waiting (also when the caller
                // goes away mid-wait: the guard gives the place back).
                let place = QueuePlace::take(&self.queued, self.max_queued).ok_or_else(|| {
                    ApiError::busy("Too many prompts are being tokenized right now. Retry shortly.")
                })?;
                let permit = self.permits.clone().acquire_owned().await;
                drop(place);
                permit.map_err(|_| ApiError::internal("the tokenizer pool is closed"))?
            }
        };
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await
        .map_err(|e| ApiError::internal(format!("request preparation failed: {e}")))
    }
}

/// One place in the blocking pool's queue, given back on drop.
struct QueuePlace<'a>(&'a AtomicUsize);

impl<'a> QueuePlace<'a> {
    fn take(queued: &'a AtomicUsize, max: usize) -> Option<Self> {
        queued
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |q| {
                (q < max).then_some(q + 1)
            })
            .ok()
            .map(|_| QueuePlace(queued))
    }
}

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Draining on SIGTERM: `/ready` turns 503, new requests get 503, requests in
/// flight may finish until the grace period ends, then are cancelled.
pub struct Lifecycle {
    draining: AtomicBool,
    in_flight: AtomicUsize,
    cancel: watch::Sender<bool>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            draining: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            cancel: watch::channel(false).0,
        }
    }
}

impl Lifecycle {
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }
    /// The grace period is over: requests still running end now.
    pub fn cancel_all(&self) {
        self.cancel.send_replace(true);
    }
    /// Resolves once [`Lifecycle::cancel_all`] was called.
    pub fn cancelled(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.cancel.subscribe();
        async move {
            let _ = rx.wait_for(|c| *c).await;
        }
    }
}

/// Counts a request as in flight while it lives (a streamed one until its
/// last event).
pub struct InFlight(Arc<AppState>);

impl InFlight {
    pub fn new(state: Arc<AppState>) -> Self {
        state.lifecycle.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(state)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.lifecycle.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub fn random_id(prefix: &str) -> String {
    let n: u128 = rand::rng().random();
    format!("{prefix}{:024x}", n & ((1u128 << 96) - 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn keys_are_checked_and_rate_limited_per_key() {
        assert!(ApiKeys::new(vec![String::new()], 0).is_none());
        let keys = ApiKeys::new(vec!["alpha".into(), "beta".into()], 2).unwrap();
        assert!(matches!(keys.admit(b"alph"), Err(KeyRefusal::Unknown)));
        assert!(matches!(keys.admit(b"alphaa"), Err(KeyRefusal::Unknown)));
        assert!(matches!(keys.admit(b""), Err(KeyRefusal::Unknown)));
        assert!(keys.admit(b"alpha").is_ok());
        assert!(keys.admit(b"alpha").is_ok());
        match keys.admit(b"alpha") {
            Err(KeyRefusal::RateLimited(s)) => assert!((1..=30).contains(&s), "{s}"),
            _ => panic!("third request in a minute should be limited"),
        }
        assert!(keys.admit(b"beta").is_ok(), "each key has its own bucket");
        let unlimited = ApiKeys::new(vec!["k".into()], 0).unwrap();
        assert!((0..100).all(|_| unlimited.admit(b"k").is_ok()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blocking_pool_sheds_past_its_queue() {
        let pool = Arc::new(BlockingPool::new(1, 1));
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let wait = Arc::new(Mutex::new(wait));
        let hold = {
            let (pool, wait) = (pool.clone(), wait.clone());
            tokio::spawn(async move {
                pool.run(move || wait.lock().map(|w| w.recv()).is_ok())
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let enqueue = |v: i32| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.run(move || v).await })
        };
        let queued = enqueue(6);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let shed = pool.run(|| 8).await.expect_err("third job is shed");
        assert_eq!(shed.status, 503);
        assert_eq!(shed.retry_after_s, Some(1));
        // A caller that goes away while waiting gives its place back.
        queued.abort();
        assert!(queued.await.is_err());
        let requeued = enqueue(7);
        tokio::time::sleep(Duration::from_millis(50)).await;
        release.send(()).unwrap();
        assert!(hold.await.unwrap().unwrap());
        assert_eq!(requeued.await.unwrap().unwrap(), 7);
        assert_eq!(pool.run(|| 9).await.unwrap(), 9);
        // No queue at all: only the threads.
        let direct = BlockingPool::new(1, 0);
        assert_eq!(direct.run(|| 1).await.unwrap(), 1);
    }
}
