//! Start-up: the catalog's router data, the shared state, the engines, and
//! `switchyard serve` itself (bind first, load models behind a 503 `/ready`,
//! drain on SIGTERM/SIGINT).

use std::future::IntoFuture;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use switchyard_engine::{Engine, EngineConfig, LoadedModel, ModelSource};
use switchyard_router::ModelProfile;

use crate::config::{Backend, Catalog, ModelEntry};
use crate::metrics::Metrics;
use crate::pool::{ModelLoader, Pool, PoolEntry};
use crate::remote::{Remote, Remotes};
use crate::state::{ApiKeys, AppState, BlockingPool, Lifecycle, RouterState};

/// Context window of a catalog entry without loading its weights: the GGUF's
/// metadata or `config.json` when the weights are local, else the entry's `context_window`.
pub fn preview_context_window(catalog: &Catalog, entry: &ModelEntry) -> anyhow::Result<usize> {
    let local = ModelSource::parse(&entry.source)
        .ok()
        .and_then(|s| s.local(&catalog.base_dir));
    let from_file = local.and_then(|path| {
        switchyard_engine::ModelConfig::from_path(&path)
            .ok()
            .map(|c| c.context_length)
    });
    let window = from_file.or(entry.context_window).ok_or_else(|| {
        anyhow::anyhow!(
            "model `{}`: set context_window (its weights are not local)",
            entry.id
        )
    })?;
    Ok(entry.max_model_len.map_or(window, |m| window.min(m)))
}

/// The router's view of the catalog: each model's context window (from its
/// local weights' metadata or `context_window`, capped by `max_model_len`;
/// the dry run and the server see the same) and routing profile.
pub fn profiles(catalog: &Catalog) -> anyhow::Result<Vec<ModelProfile>> {
    catalog
        .models
        .iter()
        .map(|m| Ok(profile(m, preview_context_window(catalog, m)?)))
        .collect()
}

fn profile(m: &ModelEntry, context_window: usize) -> ModelProfile {
    ModelProfile {
        id: m.id.clone(),
        context_window,
        routing: local_routing(m),
    }
}

/// A catalog model's routing profile as served locally: constrained
/// decoding gives every local model structured outputs and tool calls,
/// whatever the catalog's `json`/`tools` flags say (they are for remote
/// backends).
fn local_routing(m: &ModelEntry) -> switchyard_router::RoutingProfile {
    let mut routing = m.routing.clone();
    if m.backend == Backend::Local {
        routing.capabilities.json = true;
        routing.capabilities.tools = true;
    }
    routing
}

/// The server's profiles: as [`profiles`], but a model whose window is not
/// known before it loads (weights still to download) gets its engine's
/// window once loaded; until then it is not loaded and so not routed to.
fn server_profiles(catalog: &Catalog) -> Vec<ModelProfile> {
    catalog
        .models
        .iter()
        .map(|m| profile(m, preview_context_window(catalog, m).unwrap_or(usize::MAX)))
        .collect()
}

/// The router: profiles, the committed classifier, the audit database.
fn router_state(catalog: &Catalog) -> anyhow::Result<RouterState> {
    let target = catalog.audit_target();
    let audit = switchyard_router::AuditLog::connect(&target, catalog.audit_options())
        .map_err(|e| anyhow::anyhow!("{}: {e}", target.describe()))?;
    tracing::info!(store = audit.target(), "decision records");
    let mut state = RouterState::new(
        switchyard_router::Classifier::embedded().map_err(anyhow::Error::msg)?,
        server_profiles(catalog),
        audit,
        (catalog.router.default_objective, catalog.router.policy),
        catalog.router.store_prompts,
        std::env::var("SWITCHYARD_FAULT_MODELS")
            .map(|v| {
                v.split(',')
                    .map(|m| m.trim().to_string())
                    .filter(|m| !m.is_empty())
                    .collect()
            })
            .unwrap_or_default(),
    );
    state.cascade_buffer_tokens = catalog.router.cascade_buffer_tokens;
    Ok(state)
}

/// The API keys: the `api_key_env` variable (one key or a comma list) and
/// `api_keys_file` (one key a line, `#` comments), together.
fn api_keys(catalog: &Catalog) -> anyhow::Result<Option<ApiKeys>> {
    let server = &catalog.server;
    let mut keys: Vec<String> = std::env::var(&server.api_key_env)
        .unwrap_or_default()
        .split(',')
        .map(|k| k.trim().to_string())
        .collect();
    if let Some(file) = &server.api_keys_file {
        let path = catalog.relative(file);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| anyhow::anyhow!("api_keys_file {}: {e}", path.display()))?;
        let from_file: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect();
        if from_file.is_empty() {
            // A configured key file that names no key must not turn auth off.
            anyhow::bail!("api_keys_file {} has no keys", path.display());
        }
        keys.extend(from_file);
    }
    Ok(ApiKeys::new(keys, server.rate_limit_per_minute))
}

/// The shared state for a catalog, with no engine loaded yet.
pub fn app_state(catalog: Arc<Catalog>) -> anyhow::Result<AppState> {
    let server = &catalog.server;
    let threads = server
        .tokenizer_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let router = Arc::new(router_state(&catalog)?);
    let metrics = Arc::new(Metrics::default());
    let entries = catalog
        .local_models()
        .map(|m| PoolEntry {
            id: m.id.clone(),
            pin: m.pin,
            preload: m.preload,
            keep_alive: m.keep_alive.unwrap_or(catalog.pool.keep_alive),
        })
        .collect();
    let pool = Pool::new(
        entries,
        Arc::new(CatalogLoader {
            catalog: catalog.clone(),
            router: Some(router.clone()),
        }),
        pool_budget(&catalog),
        Duration::from_secs_f64(catalog.pool.load_timeout_s),
        metrics.clone(),
    );
    let remotes = catalog
        .models
        .iter()
        .filter(|m| m.backend == Backend::Openai)
        .map(|m| {
            let key = m
                .api_key_env
                .as_ref()
                .and_then(|v| std::env::var(v).ok())
                .filter(|k| !k.is_empty());
            Remote::new(
                &m.id,
                m.base_url.as_deref().unwrap_or_default(),
                m.model.as_deref().unwrap_or(&m.id),
                key,
                m.allowed_fails.unwrap_or(3),
                Duration::from_secs_f64(m.cooldown_s.unwrap_or(30.0).clamp(0.0, 86_400.0)),
                server.limits().request_timeout,
            )
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(AppState {
        pool,
        remotes: Remotes::new(remotes),
        metrics,
        limits: server.limits(),
        keys: api_keys(&catalog)?,
        started: crate::state::now_secs(),
        router: Some(router),
        blocking: BlockingPool::new(threads, server.tokenizer_queue),
        lifecycle: Lifecycle::default(),
        preloaded: Default::default(),
    })
}

/// The pool's memory budget: `[pool] memory_budget`, else on a GPU the
/// device's memory under `gpu_memory_utilization` (vLLM's rule), else none.
fn pool_budget(catalog: &Catalog) -> Option<u64> {
    if let Some(b) = catalog.pool.memory_budget {
        return Some(b);
    }
    let dev = switchyard_engine::parse_device(&catalog.engine.device_spec()).ok()?;
    let (_, total) = switchyard_engine::memory_info(&dev)?;
    Some((total as f64 * catalog.engine.gpu_memory_utilization) as u64)
}

/// Loads catalog models for the pool: sizes them from their files and the
/// engine settings, loads and starts them, and restarts slept ones.
struct CatalogLoader {
    catalog: Arc<Catalog>,
    /// Told each loaded model's context window (hub models' are unknown before).
    router: Option<Arc<RouterState>>,
}

impl CatalogLoader {
    fn entry(&self, id: &str) -> anyhow::Result<&ModelEntry> {
        self.catalog
            .find(id)
            .ok_or_else(|| anyhow::anyhow!("model `{id}` is not in the catalog"))
    }
}

impl ModelLoader for CatalogLoader {
    fn estimate(&self, id: &str) -> anyhow::Result<(u64, u64)> {
        let entry = self.entry(id)?;
        let source = ModelSource::parse(&entry.source)?;
        let weights = match source.local(&self.catalog.base_dir) {
            Some(path) => {
                if !path.exists() {
                    anyhow::bail!("{}: no such file or directory", path.display());
                }
                switchyard_engine::weights_bytes(&path)
            }
            None => 0, // not downloaded yet: known once loaded
        };
        let kv = entry.engine_config(&self.catalog.engine).kv_cache_bytes as u64;
        Ok((weights, kv))
    }

    fn load(&self, id: &str) -> anyhow::Result<Engine> {
        let entry = self.entry(id)?;
        let engine = start_engines(&self.catalog, &[entry], |_| {})?
            .pop()
            .ok_or_else(|| anyhow::anyhow!("model `{id}`: no engine started"))?;
        if let Some(router) = &self.router {
            router.set_context_window(id, engine.context_length());
        }
        Ok(engine)
    }

    fn wake(&self, id: &str, model: LoadedModel) -> anyhow::Result<Engine> {
        let entry = self.entry(id)?;
        Engine::start(id, model, entry.engine_config(&self.catalog.engine))
            .map_err(|e| anyhow::anyhow!("model `{id}`: {e}"))
    }

    fn keep_asleep(&self, id: &str, model: LoadedModel) -> Option<LoadedModel> {
        if model.device().is_cpu() {
            return Some(model);
        }
        tracing::info!(
            model = id,
            "asleep: device weights freed, the file stays in the page cache"
        );
        None
    }
}

/// Load catalog entries onto the catalog's device and start their engines.
/// On a GPU each model's weights are checked against free memory before it
/// loads (a clear error names what needs how much), and the memory left under
/// `gpu_memory_utilization` is split between the KV pools.
pub fn start_engines(
    catalog: &Catalog,
    entries: &[&ModelEntry],
    tweak: impl Fn(&mut EngineConfig),
) -> anyhow::Result<Vec<Engine>> {
    use switchyard_engine::{check_fits, kv_budgets, memory_info, parse_device, weights_bytes};
    let spec = catalog.engine.device_spec();
    let dev = parse_device(&spec)?;
    let utilization = catalog.engine.gpu_memory_utilization;
    let mut loaded = Vec::with_capacity(entries.len());
    let mut weights = Vec::with_capacity(entries.len());
    for entry in entries {
        let path = catalog.resolve(entry)?;
        let bytes = weights_bytes(&path);
        if let Some((free, total)) = memory_info(&dev) {
            let reserve = (total as f64 * (1.0 - utilization)) as usize;
            check_fits(&entry.id, bytes, free, reserve)?;
        }
        tracing::info!(model = %entry.id, path = %path.display(), device = %spec, "loading");
        loaded.push(LoadedModel::load(&path, &dev)?);
        weights.push(bytes);
    }
    let budgets =
        memory_info(&dev).map(|(free, total)| kv_budgets(free, total, utilization, &weights));
    let mut engines = Vec::with_capacity(entries.len());
    for (i, (entry, model)) in entries.iter().zip(loaded).enumerate() {
        let mut cfg = entry.engine_config(&catalog.engine);
        if let Some(b) = &budgets {
            cfg.kv_cache_bytes = b[i];
        }
        tweak(&mut cfg);
        engines.push(
            Engine::start(&entry.id, model, cfg)
                .map_err(|e| anyhow::anyhow!("model `{}`: {e}", entry.id))?,
        );
    }
    Ok(engines)
}

/// `switchyard serve`: bind the port, then load the models (`/ready` lists
/// those still loading), serve until SIGTERM/SIGINT, then drain: refuse new
/// work, let requests in flight finish within `shutdown_grace_s`, cancel the
/// rest with a final error event, and exit 0.
pub fn serve(config: &Path, addr: &str, audit_db: Option<String>) -> anyhow::Result<()> {
    let mut catalog = Catalog::load(config)?;
    if let Some(p) = audit_db {
        catalog.router.audit_db = p;
        catalog.router.audit_db_from_cli = true;
    }
    let catalog = Arc::new(catalog);
    let _traces = traces(&catalog)?;
    let state = Arc::new(app_state(catalog.clone())?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let finished = state.clone();
    let served = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("binding {addr}: {e}"))?;
        tracing::info!("listening on http://{}", listener.local_addr()?);
        // The `preload` models load in the background (each on its own
        // thread); a failure ends the process with the error, a signal
        // during loading ends it cleanly.
        let (loaded_tx, loaded_rx) = tokio::sync::oneshot::channel();
        {
            let state = state.clone();
            tokio::spawn(async move {
                let _ = loaded_tx.send(preload(&catalog, &state).await);
            });
        }
        // Idle models leave after their keep_alive.
        {
            let pool = state.pool.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(500));
                loop {
                    tick.tick().await;
                    pool.reap_idle();
                }
            });
        }
        let mut server = tokio::spawn(
            axum::serve(listener, crate::routes::router(state.clone()))
                .with_graceful_shutdown(drain(state.clone()))
                .into_future(),
        );
        // Connections that stay open after the drain (a client that stopped
        // reading) do not hold the process: it exits a little later anyway.
        let hard_stop = {
            let state = state.clone();
            async move {
                state.lifecycle.cancelled().await;
                tokio::time::sleep(FORCE_EXIT_AFTER).await;
            }
        };
        tokio::pin!(hard_stop);
        let (mut loaded_rx, mut loading) = (loaded_rx, true);
        loop {
            tokio::select! {
                served = &mut server => return Ok(served??),
                loaded = &mut loaded_rx, if loading => {
                    loading = false;
                    loaded.map_err(|_| anyhow::anyhow!("the loader thread died"))??;
                }
                () = &mut hard_stop => {
                    tracing::warn!("connections still open after the drain; exiting");
                    return Ok(());
                }
            }
        }
    });
    // Records still queued are written before the process ends.
    if let Some(router) = &finished.router {
        if !router.audit.flush(Duration::from_secs(10)) {
            tracing::warn!(queued = router.audit.queued(), "audit writes lost at exit");
        }
    }
    served
}

/// The trace exporter, when an endpoint is set (flushed when dropped).
#[cfg(feature = "otel")]
fn traces(catalog: &Catalog) -> anyhow::Result<Option<crate::otel::Traces>> {
    let Some(endpoint) = catalog.server.otlp_endpoint() else {
        return Ok(None);
    };
    let traces = crate::otel::install(&endpoint)?;
    crate::access::TRACING.store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(Some(traces))
}

/// Without the `otel` feature an endpoint is refused, not ignored.
#[cfg(not(feature = "otel"))]
fn traces(catalog: &Catalog) -> anyhow::Result<Option<()>> {
    match catalog.server.otlp_endpoint() {
        Some(e) => anyhow::bail!(
            "traces to {e} (otlp_endpoint or OTEL_EXPORTER_OTLP_ENDPOINT) need a binary built with `--features otel`"
        ),
        None => Ok(None),
    }
}

/// How long after the drain ends open connections may keep the process.
const FORCE_EXIT_AFTER: Duration = Duration::from_secs(5);

/// Load the catalog's `preload` models, in catalog order.
async fn preload(catalog: &Catalog, state: &AppState) -> anyhow::Result<()> {
    let ids: Vec<&str> = catalog
        .local_models()
        .filter(|m| m.preload)
        .map(|m| m.id.as_str())
        .collect();
    for id in &ids {
        state
            .pool
            .load(id)
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    }
    state
        .preloaded
        .store(true, std::sync::atomic::Ordering::SeqCst);
    tracing::info!("{} preloaded model(s) ready", ids.len());
    Ok(())
}

/// Resolves when the server should stop accepting connections: after a
/// signal, once requests in flight are done or the grace period is over.
async fn drain(state: Arc<AppState>) {
    shutdown_signal().await;
    state.lifecycle.start_draining();
    let grace = state.limits.shutdown_grace;
    tracing::info!(
        in_flight = state.lifecycle.in_flight(),
        "draining: refusing new requests, {}s for those in flight",
        grace.as_secs_f64()
    );
    let deadline = tokio::time::Instant::now() + grace;
    while state.lifecycle.in_flight() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Whatever is still running (or still being prepared) ends now.
    state.lifecycle.cancel_all();
    if state.lifecycle.in_flight() > 0 {
        tracing::warn!(
            in_flight = state.lifecycle.in_flight(),
            "grace period over: cancelled"
        );
        // Let the final error events reach their clients.
        let flush = tokio::time::Instant::now() + Duration::from_secs(2);
        while state.lifecycle.in_flight() > 0 && tokio::time::Instant::now() < flush {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    tracing::info!("drained; exiting");
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
