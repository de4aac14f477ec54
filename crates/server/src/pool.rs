//! The serverless model pool: every catalog model is `unloaded`, `loading`,
//! `ready`, `sleeping`, `draining` or `failed`, and moves between them on
//! demand (Ollama's `keep_alive`, llama.cpp's router mode and llama-swap's
//! on-demand loading, vLLM's sleep mode).
//!
//! - A request for a model that is not ready starts its load, and concurrent
//!   requests wait for that one load (single flight) up to `load_timeout_s`,
//!   then get 503 + `Retry-After`.
//! - A memory budget covers weights and KV pools. A load that does not fit
//!   evicts the least recently used idle models first; a pinned model, or one
//!   with requests in flight, is never evicted. If nothing can go, the
//!   request gets 503 naming what holds the memory.
//! - A model idle for its `keep_alive` is unloaded (`-1`: never; `0`: right
//!   after its last request). A request's own `keep_alive` sets the model's.
//! - `sleep` stops the engine and frees its KV pool but keeps the weights in
//!   memory, laid out for the forward pass, so that waking skips reading and
//!   re-layout; `unload` frees everything.
//!
//! Requests hold a [`Lease`] from admission to their last byte; a model is
//! unloaded only when its leases are gone. Loads and engine stops run on
//! their own threads, never on the async runtime.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use switchyard_engine::{Engine, LoadedModel};
use switchyard_router::ColdStart;
use tokio::sync::Notify;

pub use crate::config::{parse_bytes, KeepAlive};
use crate::error::ApiError;
use crate::metrics::Metrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ModelState {
    Unloaded,
    Loading,
    Ready,
    Sleeping,
    Draining,
    Failed,
}

impl ModelState {
    pub const NAMES: [&'static str; 6] = [
        "unloaded", "loading", "ready", "sleeping", "draining", "failed",
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ModelState::Unloaded => "unloaded",
            ModelState::Loading => "loading",
            ModelState::Ready => "ready",
            ModelState::Sleeping => "sleeping",
            ModelState::Draining => "draining",
            ModelState::Failed => "failed",
        }
    }
}

/// What the pool needs from the outside: how big a model will be, how to
/// load it, and how to start an engine on a model that slept.
pub trait ModelLoader: Send + Sync + 'static {
    /// `(weights, kv pool)` bytes the model will hold once ready.
    fn estimate(&self, id: &str) -> anyhow::Result<(u64, u64)>;
    /// Read the weights and start the engine (slow; runs on its own thread).
    fn load(&self, id: &str) -> anyhow::Result<Engine>;
    /// Start an engine on weights kept from a sleep.
    fn wake(&self, id: &str, model: LoadedModel) -> anyhow::Result<Engine>;
    /// What a sleeping model keeps of its stopped engine's weights. On the
    /// CPU they are host memory already and stay (waking skips the file and
    /// the re-layouts). On a GPU the device copy is dropped to free the
    /// device (vLLM's sleep frees device weights too); the file stays in the
    /// host's page cache and waking reloads from it.
    fn keep_asleep(&self, id: &str, model: LoadedModel) -> Option<LoadedModel> {
        let _ = id;
        Some(model)
    }
}

/// Per-model settings from the catalog.
#[derive(Debug, Clone)]
pub struct PoolEntry {
    pub id: String,
    pub pin: bool,
    pub preload: bool,
    pub keep_alive: KeepAlive,
}

/// One model's public status (for `/v1/models`, `/ready` and `/metrics`).
#[derive(Debug, Clone)]
pub struct ModelStatus {
    pub id: String,
    pub state: ModelState,
    pub pinned: bool,
    pub preload: bool,
    /// Bytes held now (weights and KV pool; asleep, the weights kept in host
    /// memory: none on a GPU).
    pub memory_bytes: u64,
    pub in_flight: usize,
    /// Seconds since the Unix epoch of the last request's end or start.
    pub last_used: Option<u64>,
    /// The last measured load (or wake) time.
    pub load_seconds: Option<f64>,
    pub keep_alive: KeepAlive,
    pub error: Option<String>,
    pub context_length: Option<usize>,
}

struct Slot {
    entry: PoolEntry,
    state: ModelState,
    engine: Option<Arc<Engine>>,
    asleep: Option<LoadedModel>,
    weights_bytes: u64,
    kv_bytes: u64,
    leases: usize,
    last_used: Option<Instant>,
    last_used_unix: Option<u64>,
    load_seconds: Option<f64>,
    /// Measured load throughput (bytes/s of weights) of the last full load.
    load_bytes_per_s: Option<f64>,
    error: Option<String>,
    failed_at: Option<Instant>,
    /// Failed loads in a row: each doubles the wait before the next try.
    failures: u32,
    keep_alive: KeepAlive,
}

impl Slot {
    fn memory(&self) -> u64 {
        match self.state {
            ModelState::Loading | ModelState::Ready | ModelState::Draining => {
                self.weights_bytes + self.kv_bytes
            }
            ModelState::Sleeping if self.asleep.is_some() => self.weights_bytes,
            ModelState::Sleeping => 0,
            ModelState::Unloaded | ModelState::Failed => 0,
        }
    }

    /// A load (or a sleep) failed: the slot holds nothing and says why.
    fn fail(&mut self, why: String) {
        self.state = ModelState::Failed;
        self.error = Some(why);
        self.failed_at = Some(Instant::now());
        self.failures = self.failures.saturating_add(1);
        self.weights_bytes = 0;
        self.kv_bytes = 0;
    }

    fn evictable(&self) -> bool {
        matches!(self.state, ModelState::Ready | ModelState::Sleeping)
            && !self.entry.pin
            && self.leases == 0
    }
}

struct Inner {
    slots: BTreeMap<String, Slot>,
}

struct Shared {
    inner: Mutex<Inner>,
    changed: Notify,
    loader: Arc<dyn ModelLoader>,
    budget: Option<u64>,
    load_timeout: Duration,
    /// A failed load is not retried by requests within this long (doubled
    /// for each further failure in a row, up to 16×): a broken file must not
    /// evict healthy models every time it is tried.
    retry_failed_after: Duration,
    metrics: Arc<Metrics>,
}

/// The pool; cheap to clone.
#[derive(Clone)]
pub struct Pool(Arc<Shared>);

/// A request's hold on a ready model: the model is not evicted or unloaded
/// while any lease is alive. Dereferences to the engine.
pub struct Lease {
    engine: Arc<Engine>,
    id: String,
    pool: Pool,
}

impl std::ops::Deref for Lease {
    type Target = Engine;
    fn deref(&self) -> &Engine {
        &self.engine
    }
}

impl Lease {
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.pool.release(&self.id);
    }
}

/// Why a load could not start now.
enum Refusal {
    UnknownModel,
    NoRoom(String),
}

impl Pool {
    pub fn new(
        entries: Vec<PoolEntry>,
        loader: Arc<dyn ModelLoader>,
        budget: Option<u64>,
        load_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Pool {
        let slots = entries
            .into_iter()
            .map(|entry| {
                let slot = Slot {
                    keep_alive: entry.keep_alive,
                    entry,
                    state: ModelState::Unloaded,
                    engine: None,
                    asleep: None,
                    weights_bytes: 0,
                    kv_bytes: 0,
                    leases: 0,
                    last_used: None,
                    last_used_unix: None,
                    load_seconds: None,
                    load_bytes_per_s: None,
                    error: None,
                    failed_at: None,
                    failures: 0,
                };
                (slot.entry.id.clone(), slot)
            })
            .collect();
        Pool(Arc::new(Shared {
            inner: Mutex::new(Inner { slots }),
            changed: Notify::new(),
            loader,
            budget,
            load_timeout,
            retry_failed_after: Duration::from_secs(30),
            metrics,
        }))
    }

    /// How long after a failed load requests wait before trying again.
    fn retry_wait(&self, slot: &Slot) -> Duration {
        let doublings = slot.failures.saturating_sub(1).min(4);
        self.0.retry_failed_after * (1u32 << doublings)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.0.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn contains(&self, id: &str) -> bool {
        self.lock().slots.contains_key(id)
    }

    /// A ready model's engine, without taking a lease (stats, metrics).
    pub fn get(&self, id: &str) -> Option<Arc<Engine>> {
        let inner = self.lock();
        let slot = inner.slots.get(id)?;
        (slot.state == ModelState::Ready)
            .then(|| slot.engine.clone())
            .flatten()
    }

    /// Every ready engine, in id order.
    pub fn ready(&self) -> Vec<(String, Arc<Engine>)> {
        self.lock()
            .slots
            .iter()
            .filter(|(_, s)| s.state == ModelState::Ready)
            .filter_map(|(id, s)| Some((id.clone(), s.engine.clone()?)))
            .collect()
    }

    /// A lease on a model that is ready now (routing only considers those).
    pub fn lease_if_ready(&self, id: &str, keep_alive: Option<KeepAlive>) -> Option<Lease> {
        let mut inner = self.lock();
        let slot = inner.slots.get_mut(id)?;
        if slot.state != ModelState::Ready {
            return None;
        }
        let engine = slot.engine.clone()?;
        slot.leases += 1;
        slot.last_used = Some(Instant::now());
        slot.last_used_unix = Some(unix_now());
        // Like Ollama: each request's keep_alive (else the model's) governs
        // how long the model stays after it.
        slot.keep_alive = keep_alive.unwrap_or(slot.entry.keep_alive);
        Some(Lease {
            engine,
            id: id.to_string(),
            pool: self.clone(),
        })
    }

    /// A lease on `id`, loading (or waking) it first when needed; concurrent
    /// callers share one load. Waits up to the load timeout.
    pub async fn acquire(
        &self,
        id: &str,
        keep_alive: Option<KeepAlive>,
    ) -> Result<Lease, ApiError> {
        let deadline = tokio::time::Instant::now() + self.0.load_timeout;
        let mut started_here = false;
        loop {
            let notified = self.0.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                if let Some(lease) = self.lease_if_ready(id, keep_alive) {
                    return Ok(lease);
                }
                let mut inner = self.lock();
                let slot = inner
                    .slots
                    .get(id)
                    .ok_or_else(|| ApiError::model_not_found(id))?;
                match slot.state {
                    ModelState::Ready | ModelState::Loading | ModelState::Draining => {}
                    ModelState::Failed
                        if started_here
                            || slot
                                .failed_at
                                .is_some_and(|t| t.elapsed() < self.retry_wait(slot)) =>
                    {
                        return Err(ApiError::model_load_failed(
                            id,
                            slot.error.as_deref().unwrap_or("unknown error"),
                        ));
                    }
                    ModelState::Unloaded | ModelState::Sleeping | ModelState::Failed => {
                        match self.start_load(&mut inner, id) {
                            Ok(()) => started_here = true,
                            Err(Refusal::UnknownModel) => {
                                return Err(ApiError::model_not_found(id))
                            }
                            Err(Refusal::NoRoom(why)) => return Err(ApiError::no_memory(id, why)),
                        }
                    }
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(ApiError::model_loading(id));
            }
        }
    }

    /// Start loading (or waking) `id`: make room, mark it loading, and run
    /// the load on its own thread. Called with the lock held.
    fn start_load(&self, inner: &mut Inner, id: &str) -> Result<(), Refusal> {
        let slot = inner.slots.get(id).ok_or(Refusal::UnknownModel)?;
        let waking = slot.state == ModelState::Sleeping && slot.asleep.is_some();
        let (weights, kv) = match self.0.loader.estimate(id) {
            Ok(e) => e,
            Err(e) => {
                // Cannot even size it (a missing file): that is a load failure.
                let slot = inner.slots.get_mut(id).ok_or(Refusal::UnknownModel)?;
                slot.fail(format!("{e:#}"));
                self.0.changed.notify_waiters();
                return Ok(());
            }
        };
        let need = if waking { kv } else { weights + kv };
        let evicted = self.make_room(inner, id, need)?;
        let slot = inner.slots.get_mut(id).ok_or(Refusal::UnknownModel)?;
        slot.state = ModelState::Loading;
        slot.weights_bytes = weights;
        slot.kv_bytes = kv;
        slot.error = None;
        let asleep = slot.asleep.take();
        self.0.metrics.model_event(id, "load_started");
        let pool = self.clone();
        let thread_id = id.to_string();
        let spawned = std::thread::Builder::new()
            .name(format!("load-{id}"))
            .spawn(move || {
                // Engines evicted to make room stop here, off the runtime,
                // and free their memory before this load takes its own.
                release(evicted);
                let started = Instant::now();
                // A panicking loader is a failed load, never a model stuck loading.
                let result =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match asleep {
                        Some(model) => pool.0.loader.wake(&thread_id, model),
                        None => pool.0.loader.load(&thread_id),
                    }))
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("the loader panicked")));
                pool.finish_load(&thread_id, result, started.elapsed(), waking);
            });
        if let Err(e) = spawned {
            if let Some(slot) = inner.slots.get_mut(id) {
                slot.fail(format!("cannot start a loader thread: {e}"));
            }
            self.0.changed.notify_waiters();
        }
        Ok(())
    }

    /// Make `need` bytes of room under the budget for `id` by taking the
    /// least recently used evictable models out (their engines are returned,
    /// to be dropped off the lock). Refuses, naming what holds the memory,
    /// when even evicting everything evictable would not be enough.
    fn make_room(&self, inner: &mut Inner, id: &str, need: u64) -> Result<Vec<Evicted>, Refusal> {
        let Some(budget) = self.0.budget else {
            return Ok(Vec::new());
        };
        let used: u64 = inner.slots.values().map(Slot::memory).sum();
        if used + need <= budget {
            return Ok(Vec::new());
        }
        let mut victims: Vec<(&String, &Slot)> = inner
            .slots
            .iter()
            .filter(|(other, s)| other.as_str() != id && s.evictable())
            .collect();
        victims.sort_by_key(|(_, s)| s.last_used);
        let freeable: u64 = victims.iter().map(|(_, s)| s.memory()).sum();
        if used - freeable + need > budget {
            let holders: Vec<String> = inner
                .slots
                .iter()
                .filter(|(other, s)| other.as_str() != id && s.memory() > 0)
                .map(|(other, s)| {
                    let why = if s.entry.pin {
                        "pinned".to_string()
                    } else if s.leases > 0 {
                        format!("{} request(s) in flight", s.leases)
                    } else {
                        s.state.as_str().to_string()
                    };
                    format!("`{other}` ({} MiB, {why})", s.memory() >> 20)
                })
                .collect();
            return Err(Refusal::NoRoom(format!(
                "it needs {} MiB and the pool's budget is {} MiB, of which {} MiB is held by {}",
                need >> 20,
                budget >> 20,
                used >> 20,
                if holders.is_empty() {
                    "nothing (the model alone is larger than the budget)".to_string()
                } else {
                    holders.join(", ")
                }
            )));
        }
        let mut freed = 0;
        let mut chosen = Vec::new();
        for (other, s) in victims {
            if used - freed + need <= budget {
                break;
            }
            freed += s.memory();
            chosen.push(other.clone());
        }
        Ok(chosen
            .into_iter()
            .filter_map(|other| {
                self.0.metrics.model_event(&other, "evicted");
                tracing::info!(model = %other, for_model = id, "evicting (least recently used)");
                self.take_out(inner, &other)
            })
            .collect())
    }

    /// Set a slot unloaded and hand back what it held.
    fn take_out(&self, inner: &mut Inner, id: &str) -> Option<Evicted> {
        let slot = inner.slots.get_mut(id)?;
        slot.state = ModelState::Unloaded;
        slot.weights_bytes = 0;
        slot.kv_bytes = 0;
        Some((slot.engine.take(), slot.asleep.take()))
    }

    fn finish_load(&self, id: &str, result: anyhow::Result<Engine>, took: Duration, woke: bool) {
        let mut inner = self.lock();
        let mut evicted = Vec::new();
        if let Some(slot) = inner.slots.get_mut(id) {
            match result {
                Ok(engine) => {
                    if slot.weights_bytes == 0 && !woke {
                        // Sized before its download (a hub model not yet in
                        // the cache): its real size is known now.
                        if let Ok((weights, _)) = self.0.loader.estimate(id) {
                            slot.weights_bytes = weights;
                        }
                    }
                    slot.state = ModelState::Ready;
                    slot.engine = Some(Arc::new(engine));
                    slot.load_seconds = Some(took.as_secs_f64());
                    if !woke && took.as_secs_f64() > 0.0 && slot.weights_bytes > 0 {
                        slot.load_bytes_per_s =
                            Some(slot.weights_bytes as f64 / took.as_secs_f64());
                    }
                    slot.failed_at = None;
                    slot.failures = 0;
                    slot.last_used = Some(Instant::now());
                    slot.last_used_unix = Some(unix_now());
                    self.0.metrics.model_loaded(id, took.as_secs_f64(), woke);
                    tracing::info!(model = id, seconds = took.as_secs_f64(), woke, "ready");
                }
                Err(e) => {
                    slot.fail(format!("{e:#}"));
                    self.0.metrics.model_event(id, "load_failed");
                    tracing::error!(model = id, "load failed: {e:#}");
                }
            }
        }
        // A model larger than its estimate pushes the others out now, least
        // recently used first, as its load would have.
        if inner
            .slots
            .get(id)
            .is_some_and(|s| s.state == ModelState::Ready)
        {
            match self.make_room(&mut inner, id, 0) {
                Ok(out) => evicted = out,
                Err(Refusal::NoRoom(why)) => {
                    tracing::warn!(model = id, "over the memory budget after loading: {why}")
                }
                Err(Refusal::UnknownModel) => {}
            }
        }
        // Preloaded models build their grammar compiler's token trie now;
        // models loaded on demand do it on their first structured-output
        // request instead of competing with the request that loaded them.
        let warm = inner
            .slots
            .get(id)
            .filter(|s| s.state == ModelState::Ready && s.entry.preload)
            .and_then(|s| s.engine.clone());
        drop(inner);
        self.0.changed.notify_waiters();
        release(evicted);
        if let Some(engine) = warm {
            if let Err(e) = engine.compile_grammar(&switchyard_engine::GrammarSpec::JsonObject) {
                tracing::warn!(model = id, "grammar compiler: {e}");
            }
        }
    }

    /// A lease ended: the model's idle clock starts; with `keep_alive = 0`
    /// (or a pending unload) it leaves now.
    fn release(&self, id: &str) {
        let mut inner = self.lock();
        let Some(slot) = inner.slots.get_mut(id) else {
            return;
        };
        slot.leases = slot.leases.saturating_sub(1);
        slot.last_used = Some(Instant::now());
        slot.last_used_unix = Some(unix_now());
        let leave = slot.leases == 0
            && (slot.state == ModelState::Draining
                || (slot.state == ModelState::Ready
                    && !slot.entry.pin
                    && slot.keep_alive == KeepAlive::For(Duration::ZERO)));
        if leave {
            let out = self.take_out(&mut inner, id);
            drop(inner);
            self.0.metrics.model_event(id, "unloaded");
            release_off_thread(out.into_iter().collect());
            self.0.changed.notify_waiters();
        }
    }

    /// Unload every idle model whose `keep_alive` has run out; returns how
    /// many left. Called periodically.
    pub fn reap_idle(&self) -> usize {
        let mut inner = self.lock();
        let expired: Vec<String> = inner
            .slots
            .iter()
            .filter(|(_, s)| {
                matches!(s.state, ModelState::Ready | ModelState::Sleeping)
                    && !s.entry.pin
                    && s.leases == 0
                    && s.last_used
                        .is_some_and(|t| s.keep_alive.expired(t.elapsed()))
            })
            .map(|(id, _)| id.clone())
            .collect();
        let out: Vec<Evicted> = expired
            .iter()
            .filter_map(|id| {
                tracing::info!(model = %id, "keep_alive expired: unloading");
                self.0.metrics.model_event(id, "unloaded");
                self.take_out(&mut inner, id)
            })
            .collect();
        drop(inner);
        let n = out.len();
        if n > 0 {
            release_off_thread(out);
            self.0.changed.notify_waiters();
        }
        n
    }

    /// Load `id` now (the admin API and preloading); returns once it is
    /// ready, however long the load takes (a download, a large file).
    pub async fn load(&self, id: &str) -> Result<ModelStatus, ApiError> {
        loop {
            // Held as if kept forever: a `keep_alive = 0` model loaded by
            // an operator (or preloaded) stays until its first request.
            match self.acquire(id, Some(KeepAlive::Forever)).await {
                Ok(lease) => {
                    drop(lease);
                    return self.status(id).ok_or_else(|| ApiError::model_not_found(id));
                }
                Err(e) if e.code.as_deref() == Some("model_loading") => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Unload `id`: at once when idle, else after its requests finish
    /// (`draining`); new requests meanwhile wait and then load it again.
    pub fn unload(&self, id: &str) -> Result<ModelStatus, ApiError> {
        let mut inner = self.lock();
        let slot = inner
            .slots
            .get_mut(id)
            .ok_or_else(|| ApiError::model_not_found(id))?;
        match slot.state {
            ModelState::Loading => return Err(ApiError::model_loading(id)),
            ModelState::Ready if slot.leases > 0 => slot.state = ModelState::Draining,
            ModelState::Ready | ModelState::Sleeping | ModelState::Failed => {
                let out = self.take_out(&mut inner, id);
                drop(inner);
                self.0.metrics.model_event(id, "unloaded");
                release_off_thread(out.into_iter().collect());
                self.0.changed.notify_waiters();
                return self.status(id).ok_or_else(|| ApiError::model_not_found(id));
            }
            ModelState::Unloaded | ModelState::Draining => {}
        }
        drop(inner);
        self.status(id).ok_or_else(|| ApiError::model_not_found(id))
    }

    /// Put an idle ready model to sleep: its engine stops and its KV pool is
    /// freed; the weights stay in memory for a fast wake.
    pub async fn sleep(&self, id: &str) -> Result<ModelStatus, ApiError> {
        let engine = {
            let mut inner = self.lock();
            let slot = inner
                .slots
                .get_mut(id)
                .ok_or_else(|| ApiError::model_not_found(id))?;
            match slot.state {
                ModelState::Sleeping => None,
                ModelState::Ready if slot.leases == 0 => {
                    slot.state = ModelState::Loading; // in transition; nobody leases it
                    slot.engine.take()
                }
                ModelState::Ready => {
                    return Err(ApiError::conflict(format!(
                        "model `{id}` has {} request(s) in flight; it can sleep once they finish",
                        slot.leases
                    )))
                }
                other => {
                    return Err(ApiError::conflict(format!(
                        "model `{id}` is {}; only a ready model can sleep",
                        other.as_str()
                    )))
                }
            }
        };
        if let Some(engine) = engine {
            // The transition finishes on its own thread even if this request
            // goes away: the slot never stays half-asleep.
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            let pool = self.clone();
            let sleeper = id.to_string();
            let spawned = std::thread::Builder::new()
                .name(format!("sleep-{id}"))
                .spawn(move || {
                    let stopped = engine.shutdown();
                    let mut inner = pool.lock();
                    if let Some(slot) = inner.slots.get_mut(&sleeper) {
                        match stopped {
                            Ok(model) => {
                                slot.state = ModelState::Sleeping;
                                slot.asleep = pool.0.loader.keep_asleep(&sleeper, model);
                                pool.0.metrics.model_event(&sleeper, "slept");
                            }
                            Err(e) => {
                                slot.fail(format!("sleeping: {e}"));
                            }
                        }
                    }
                    drop(inner);
                    pool.0.changed.notify_waiters();
                    let _ = done_tx.send(());
                });
            if spawned.is_err() {
                return Err(ApiError::internal(
                    "cannot start a thread to sleep the model",
                ));
            }
            let _ = done_rx.await;
        }
        self.status(id).ok_or_else(|| ApiError::model_not_found(id))
    }

    fn status_of(id: &str, s: &Slot) -> ModelStatus {
        ModelStatus {
            id: id.to_string(),
            state: s.state,
            pinned: s.entry.pin,
            preload: s.entry.preload,
            memory_bytes: s.memory(),
            in_flight: s.leases,
            last_used: s.last_used_unix,
            load_seconds: s.load_seconds,
            keep_alive: s.keep_alive,
            error: s.error.clone(),
            context_length: s.engine.as_ref().map(|e| e.context_length()),
        }
    }

    pub fn status(&self, id: &str) -> Option<ModelStatus> {
        let inner = self.lock();
        inner.slots.get(id).map(|s| Self::status_of(id, s))
    }

    /// Every model's status, in id order.
    pub fn statuses(&self) -> Vec<ModelStatus> {
        let inner = self.lock();
        inner
            .slots
            .iter()
            .map(|(id, s)| Self::status_of(id, s))
            .collect()
    }

    /// What `/metrics` shows of the pool.
    pub fn gauges(&self) -> crate::metrics::PoolGauges {
        crate::metrics::PoolGauges {
            states: &ModelState::NAMES,
            models: self
                .statuses()
                .into_iter()
                .map(|s| (s.id, s.state.as_str(), s.memory_bytes))
                .collect(),
        }
    }

    /// The memory budget, and the bytes held now.
    pub fn memory(&self) -> (Option<u64>, u64) {
        let inner = self.lock();
        (self.0.budget, inner.slots.values().map(Slot::memory).sum())
    }

    /// The load a request for `id` would wait for: `None` when it is ready
    /// (or unknown), `Some(Err(why))` when its last load failed a moment ago,
    /// else the predicted time — from this machine's measured load
    /// throughput (the model's own last load, else the pool's average; an
    /// assumed rate before any load), or the last wake for a sleeping model.
    pub fn cold_start(&self, id: &str) -> Option<Result<ColdStart, String>> {
        let inner = self.lock();
        let slot = inner.slots.get(id)?;
        match slot.state {
            ModelState::Ready => return None,
            ModelState::Failed
                if slot
                    .failed_at
                    .is_some_and(|t| t.elapsed() < self.retry_wait(slot)) =>
            {
                return Some(Err(slot.error.clone().unwrap_or_default()));
            }
            // Asleep with its weights kept: waking skips the file.
            ModelState::Sleeping if slot.asleep.is_some() => {
                if let Some(s) = slot.load_seconds {
                    return Some(Ok(ColdStart {
                        predicted_ms: 1000.0 * s,
                        basis: "waking from sleep, as measured".into(),
                    }));
                }
            }
            _ => {}
        }
        let own = slot.load_bytes_per_s;
        let rates: Vec<f64> = inner
            .slots
            .values()
            .filter_map(|s| s.load_bytes_per_s)
            .collect();
        drop(inner);
        let (rate, basis) = match own {
            Some(r) => (r, "this model's last load on this machine"),
            None if !rates.is_empty() => (
                rates.iter().sum::<f64>() / rates.len() as f64,
                "the measured load rate of this machine",
            ),
            None => (
                ASSUMED_LOAD_BYTES_PER_S,
                "an assumed rate (nothing loaded yet)",
            ),
        };
        let weights = self.0.loader.estimate(id).map_or(0, |e| e.0);
        if weights == 0 {
            return Some(Ok(ColdStart {
                predicted_ms: UNKNOWN_SIZE_LOAD_MS,
                basis: "its size is unknown until it is downloaded: assumed".into(),
            }));
        }
        Some(Ok(ColdStart {
            predicted_ms: 1000.0 * weights as f64 / rate.max(1.0),
            basis: format!(
                "{} MB at {:.0} MB/s, {basis}",
                weights / 1_000_000,
                rate / 1e6
            ),
        }))
    }
}

/// A load assumed for a model whose weights are not on this machine yet.
const UNKNOWN_SIZE_LOAD_MS: f64 = 60_000.0;

/// Load throughput assumed before any load was measured on this machine.
const ASSUMED_LOAD_BYTES_PER_S: f64 = 200e6;

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What an unloaded slot held (its engine, or its slept weights); dropping
/// it stops the engine and frees the weights, which can take a moment:
/// never on an async worker.
type Evicted = (Option<Arc<Engine>>, Option<LoadedModel>);

/// Stop evicted engines (their loops hand the weights back, which are then
/// dropped with the KV pools) so that the memory is free when this returns,
/// even while a request still holds a handle.
fn release(evicted: Vec<Evicted>) {
    for (engine, asleep) in evicted {
        if let Some(engine) = engine {
            drop(engine.shutdown());
        }
        drop(asleep);
    }
}

/// [`release`] on its own thread (never on an async worker).
fn release_off_thread(evicted: Vec<Evicted>) {
    let _ = std::thread::Builder::new()
        .name("unload".into())
        .spawn(move || release(evicted));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keep_alive_forms() {
        let k = |v| KeepAlive::parse(&v);
        assert_eq!(k(json!(-1)), Ok(KeepAlive::Forever));
        assert_eq!(k(json!("-1")), Ok(KeepAlive::Forever));
        assert_eq!(k(json!(0)), Ok(KeepAlive::For(Duration::ZERO)));
        assert_eq!(k(json!("5m")), Ok(KeepAlive::For(Duration::from_secs(300))));
        assert_eq!(
            k(json!("1.5h")),
            Ok(KeepAlive::For(Duration::from_secs(5400)))
        );
        assert_eq!(
            k(json!("250ms")),
            Ok(KeepAlive::For(Duration::from_millis(250)))
        );
        assert_eq!(k(json!(30)), Ok(KeepAlive::For(Duration::from_secs(30))));
        for bad in [
            json!("soon"),
            json!("5 parsecs"),
            json!(true),
            json!(1e300),
            json!(""),
        ] {
            assert!(k(bad.clone()).is_err(), "{bad}");
        }
        assert!(KeepAlive::For(Duration::from_secs(1)).expired(Duration::from_secs(1)));
        assert!(!KeepAlive::Forever.expired(Duration::MAX));
    }

    /// A loader over one small random checkpoint: `late` models cannot be
    /// sized before their first load (a hub file not downloaded yet).
    struct FakeLoader {
        dir: std::path::PathBuf,
        sizes: BTreeMap<&'static str, u64>,
        late: &'static [&'static str],
        loaded: Mutex<Vec<String>>,
        /// Behave as a GPU loader: a sleeping model keeps no weights.
        on_gpu: bool,
    }

    const KV: u64 = 10;

    impl ModelLoader for FakeLoader {
        fn estimate(&self, id: &str) -> anyhow::Result<(u64, u64)> {
            let known =
                !self.late.contains(&id) || self.loaded.lock().unwrap().iter().any(|m| m == id);
            Ok((if known { self.sizes[id] } else { 0 }, KV))
        }
        fn load(&self, id: &str) -> anyhow::Result<Engine> {
            let model = LoadedModel::load(&self.dir, &switchyard_engine::Device::Cpu)?;
            self.loaded.lock().unwrap().push(id.to_string());
            self.wake(id, model)
        }
        fn wake(&self, id: &str, model: LoadedModel) -> anyhow::Result<Engine> {
            let cfg = switchyard_engine::EngineConfig {
                kv_cache_bytes: 1 << 20,
                ..Default::default()
            };
            Ok(Engine::start(id, model, cfg)?)
        }
        fn keep_asleep(&self, _: &str, model: LoadedModel) -> Option<LoadedModel> {
            (!self.on_gpu).then_some(model)
        }
    }

    fn fake_pool(on_gpu: bool, late: &'static [&'static str]) -> (Pool, Arc<FakeLoader>) {
        let dir = std::env::temp_dir().join(format!(
            "switchyard-pool-{}-{on_gpu}-{}",
            std::process::id(),
            late.len()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        switchyard_testkit::write_random_checkpoint(&dir, "llama", false).unwrap();
        let loader = Arc::new(FakeLoader {
            dir,
            sizes: BTreeMap::from([("small", 40), ("hub", 60)]),
            late,
            loaded: Mutex::new(Vec::new()),
            on_gpu,
        });
        let entry = |id: &str| PoolEntry {
            id: id.to_string(),
            pin: false,
            preload: false,
            keep_alive: KeepAlive::Forever,
        };
        let pool = Pool::new(
            vec![entry("small"), entry("hub")],
            loader.clone(),
            Some(100),
            Duration::from_secs(60),
            Arc::new(Metrics::default()),
        );
        (pool, loader)
    }

    /// Asleep on the CPU a model keeps its weights (counted, and waking does
    /// not load again); asleep on a GPU it holds nothing and waking loads.
    #[tokio::test]
    async fn sleep_keeps_host_weights_and_frees_device_weights() {
        for on_gpu in [false, true] {
            let (pool, loader) = fake_pool(on_gpu, &[]);
            drop(pool.acquire("small", None).await.unwrap());
            pool.sleep("small").await.unwrap();
            assert_eq!(pool.status("small").unwrap().state, ModelState::Sleeping);
            let held = if on_gpu { 0 } else { 40 };
            assert_eq!(pool.memory().1, held, "on_gpu {on_gpu}");
            drop(pool.acquire("small", None).await.unwrap());
            assert_eq!(pool.memory().1, 50);
            let loads = loader.loaded.lock().unwrap().len();
            assert_eq!(loads, if on_gpu { 2 } else { 1 }, "on_gpu {on_gpu}");
            let _ = std::fs::remove_dir_all(&loader.dir);
        }
    }

    /// A model sized 0 before its download is sized again once loaded, and
    /// if that puts the pool over its budget the least recently used idle
    /// model leaves.
    #[tokio::test]
    async fn a_model_larger_than_its_estimate_evicts_after_loading() {
        let (pool, loader) = fake_pool(false, &["hub"]);
        drop(pool.acquire("small", None).await.unwrap());
        assert_eq!(pool.memory(), (Some(100), 50));
        // Estimated at 0 + 10, the hub model loads without evicting...
        drop(pool.acquire("hub", None).await.unwrap());
        // ...then counts its real 60 + 10, and `small` (50) makes way.
        let state = |id| pool.status(id).unwrap().state;
        assert_eq!(state("hub"), ModelState::Ready);
        assert_eq!(state("small"), ModelState::Unloaded);
        assert_eq!(pool.memory(), (Some(100), 70));
        let _ = std::fs::remove_dir_all(&loader.dir);
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_bytes(&json!(1024)), Ok(1024));
        assert_eq!(parse_bytes(&json!("300MB")), Ok(300_000_000));
        assert_eq!(parse_bytes(&json!("2GiB")), Ok(2 << 30));
        assert_eq!(parse_bytes(&json!("1.5 KiB")), Ok(1536));
        for bad in [
            json!(-1),
            json!("lots"),
            json!("3 TB"),
            json!("-5MB"),
            json!(null),
        ] {
            assert!(parse_bytes(&bad).is_err(), "{bad}");
        }
    }
}
