//! `switchyard`: serve several local LLMs behind one OpenAI-compatible API.

mod config;
mod error;
mod metrics;
mod openai;
mod routed;
mod routes;

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use clap::{Parser, Subcommand};
use switchyard_engine::{ChatMessage, Engine, EngineConfig, Event, LoadedModel, SamplingParams};

use crate::config::{Catalog, ModelEntry};

#[derive(Parser)]
#[command(name = "switchyard", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load every model in the catalog and serve the OpenAI-compatible API.
    Serve {
        #[arg(long, default_value = "models.toml")]
        config: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: String,
        /// Override `[router] audit_db`.
        #[arg(long)]
        audit_db: Option<PathBuf>,
    },
    /// Generate text from one model and print prompt/decode speed.
    Generate {
        /// Model id from the catalog.
        #[arg(long)]
        model: String,
        #[arg(long)]
        prompt: String,
        #[arg(long, default_value = "models.toml")]
        config: PathBuf,
        #[arg(long, default_value_t = 128)]
        max_tokens: usize,
        /// 0 is greedy.
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        #[arg(long)]
        seed: Option<u64>,
        /// Send the prompt as is instead of as a chat user message.
        #[arg(long)]
        raw: bool,
    },
    /// Dry run: print the routing decision for each request (one OpenAI chat
    /// body per input line) without running any model.
    Route {
        #[arg(long, default_value = "models.toml")]
        config: PathBuf,
        /// JSONL file of chat request bodies; `-` for standard input.
        #[arg(long)]
        input: PathBuf,
    },
    /// Train the router's request classifier and write its weights.
    RouterTrain {
        /// The RouteLLM data directory (../shared/data/routellm).
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value = "crates/router/data/classifier.json")]
        out: PathBuf,
    },
    /// Report the committed classifier's accuracy on the held-out split.
    RouterEval {
        #[arg(long)]
        data: PathBuf,
    },
    /// Measure prefill and decode throughput with synthetic prompts; prints JSON lines.
    Bench {
        #[arg(long)]
        model: String,
        #[arg(long, default_value = "models.toml")]
        config: PathBuf,
        #[arg(long, default_value_t = 128)]
        prompt_tokens: usize,
        #[arg(long, default_value_t = 64)]
        gen_tokens: usize,
        /// Comma-separated numbers of concurrent sequences.
        #[arg(long, default_value = "1,8")]
        concurrency: String,
    },
    /// Check the paged-attention kernels against the portable reference path
    /// on random inputs; prints one JSON line per case, fails if any fails.
    KernelCheck {
        #[arg(long, default_value = "cuda:0")]
        device: String,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve {
            config,
            addr,
            audit_db,
        } => serve(&config, &addr, audit_db)?,
        Command::Route { config, input } => route_dry_run(&config, &input)?,
        Command::RouterTrain { data, out } => {
            let (classifier, eval) = switchyard_router::training::train_and_evaluate(&data)
                .map_err(anyhow::Error::msg)?;
            classifier.save(&out)?;
            print_evaluation(&eval);
            println!("wrote {}", out.display());
        }
        Command::RouterEval { data } => {
            let classifier =
                switchyard_router::Classifier::embedded().map_err(anyhow::Error::msg)?;
            let ds =
                switchyard_router::training::Dataset::load(&data).map_err(anyhow::Error::msg)?;
            print_evaluation(&switchyard_router::training::evaluate(&classifier, &ds));
        }
        Command::Generate {
            model,
            prompt,
            config,
            max_tokens,
            temperature,
            seed,
            raw,
        } => {
            let engine = load_engine(&config, &model, |_| {})?;
            let tokens = if raw {
                engine.tokenizer().encode(&prompt, true)?
            } else {
                engine.encode_chat(&[ChatMessage::new("user", &prompt)])?
            };
            let n_prompt = tokens.len();
            let params = SamplingParams {
                max_tokens,
                temperature,
                seed,
                ..Default::default()
            };
            let started = Instant::now();
            let mut stream = engine.submit(tokens, params)?;
            let (mut first, mut generated) = (None, 0usize);
            let mut out = std::io::stdout();
            while let Some(event) = stream.blocking_next() {
                match event {
                    Event::Delta { text, tokens, .. } => {
                        first.get_or_insert_with(Instant::now);
                        generated += tokens.len();
                        write!(out, "{text}")?;
                        out.flush()?;
                    }
                    Event::Finished { reason, .. } => {
                        writeln!(out)?;
                        let ttft = first.map_or(0.0, |f| (f - started).as_secs_f64());
                        let decode = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
                        eprintln!(
                            "[{reason:?}] prompt {n_prompt} tok in {ttft:.3}s ({:.1} tok/s), decode {} tok in {decode:.3}s ({:.1} tok/s)",
                            n_prompt as f64 / ttft.max(1e-9),
                            generated.saturating_sub(1),
                            generated.saturating_sub(1) as f64 / decode.max(1e-9),
                        );
                        break;
                    }
                    Event::Error { message } => anyhow::bail!(message),
                }
            }
        }
        Command::KernelCheck { device } => {
            let dev = switchyard_engine::device::parse_device(&device)?;
            let report = switchyard_engine::paged_attention::self_check(&dev)?;
            for case in &report {
                println!("{}", serde_json::to_string(case)?);
            }
            if report.iter().any(|c| !c.pass) {
                anyhow::bail!("kernel check failed on {device}");
            }
        }
        Command::Bench {
            model,
            config,
            prompt_tokens,
            gen_tokens,
            concurrency,
        } => {
            let levels: Vec<usize> = concurrency
                .split(',')
                .map(|n| n.trim().parse())
                .collect::<Result<_, _>>()?;
            let most = levels.iter().copied().max().unwrap_or(1);
            // Like llama-batched-bench: every prompt is prefilled in the same
            // step, then every later step is pure decode, so the phases time cleanly.
            let engine = load_engine(&config, &model, |cfg| {
                cfg.prefix_caching = false;
                cfg.max_num_batched_tokens = cfg.max_num_batched_tokens.max(most * prompt_tokens);
                cfg.max_num_seqs = cfg.max_num_seqs.max(most);
            })?;
            bench(&engine, 1, 16, 4)?; // warm-up
            for n in levels {
                println!("{}", bench(&engine, n, prompt_tokens, gen_tokens.max(2))?);
            }
        }
    }
    Ok(())
}

fn print_evaluation(e: &switchyard_router::training::Evaluation) {
    println!(
        "held-out family accuracy {:.3} (macro {:.3}), difficulty AUC {:.3}",
        e.family_accuracy, e.family_macro_accuracy, e.difficulty_auc
    );
    for (family, n, acc) in &e.per_family {
        println!("  {:<18} n={n:<5} accuracy {acc:.3}", family.as_str());
    }
}

/// Context window of a catalog entry without loading its weights: the GGUF's
/// metadata or `config.json` when the weights are local, else the entry's `context_window`.
fn preview_context_window(catalog: &Catalog, entry: &ModelEntry) -> anyhow::Result<usize> {
    let from_file = catalog.resolve(entry).ok().and_then(|path| {
        let config = if path.is_dir() {
            let json = std::fs::read_to_string(path.join("config.json")).ok()?;
            switchyard_engine::ModelConfig::from_hf(&serde_json::from_str(&json).ok()?).ok()?
        } else {
            let mut f = std::fs::File::open(path).ok()?;
            let content = switchyard_engine::candle_gguf::Content::read(&mut f).ok()?;
            switchyard_engine::ModelConfig::from_gguf(&content).ok()?
        };
        Some(config.context_length)
    });
    let window = from_file.or(entry.context_window).ok_or_else(|| {
        anyhow::anyhow!(
            "model `{}`: set context_window (its weights are not local)",
            entry.id
        )
    })?;
    Ok(entry.max_model_len.map_or(window, |m| window.min(m)))
}

/// Nobody is waiting anywhere: a preview assumes idle engines at nominal speed.
struct IdleLoad;

impl switchyard_router::LiveLoad for IdleLoad {
    fn load(&self, _: &str) -> Option<switchyard_router::LoadSnapshot> {
        Some(switchyard_router::LoadSnapshot {
            healthy: true,
            ..Default::default()
        })
    }
    fn max_waiting(&self) -> usize {
        usize::MAX
    }
}

fn route_dry_run(config: &std::path::Path, input: &std::path::Path) -> anyhow::Result<()> {
    use std::io::BufRead;
    let catalog = Catalog::load(config)?;
    let profiles: Vec<switchyard_router::ModelProfile> = catalog
        .models
        .iter()
        .map(|m| {
            Ok(switchyard_router::ModelProfile {
                id: m.id.clone(),
                context_window: preview_context_window(&catalog, m)?,
                routing: m.routing.clone(),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let classifier = switchyard_router::Classifier::embedded().map_err(anyhow::Error::msg)?;
    let reader: Box<dyn BufRead> = if input.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(input).map_err(|e| anyhow::anyhow!("{}: {e}", input.display()))?,
        ))
    };
    for (n, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let record = match preview_one(&catalog, &profiles, &classifier, &line) {
            Ok(d) => serde_json::json!({"line": n + 1, "decision": d}),
            Err(e) => serde_json::json!({"line": n + 1, "error": e.message}),
        };
        println!("{record}");
    }
    Ok(())
}

fn preview_one(
    catalog: &Catalog,
    profiles: &[switchyard_router::ModelProfile],
    classifier: &switchyard_router::Classifier,
    line: &str,
) -> Result<switchyard_router::Decision, error::ApiError> {
    let req: openai::ChatRequest = openai::parse_body(line.as_bytes())?;
    let messages = openai::chat_messages(&req.messages)?;
    let mut options = req.routing.clone().unwrap_or_default();
    if options.objective.is_none() {
        options.objective = routed::parse_auto(&req.model)?.flatten();
    }
    let text = routed::routing_text(&messages);
    // Without the tokenizers, estimate: ~4 characters a token plus template overhead.
    let chars: usize = messages.iter().map(|m| m.content.chars().count()).sum();
    let estimate = chars.div_ceil(4) + 8 * messages.len() + 8;
    let rr = switchyard_router::RouteRequest {
        classification: classifier.classify(&text),
        prompt_tokens: vec![("*".into(), estimate)],
        max_tokens: req.sampling.max_tokens()?,
        needs_tools: req.tools.as_ref().is_some_and(|t| !t.is_empty()),
        needs_json: req.response_format.is_some(),
        options,
        default_objective: catalog.router.default_objective,
    };
    Ok(switchyard_router::decide(profiles, &rr, &IdleLoad))
}

/// The router over the loaded engines: profiles from the catalog (context
/// windows from the engines), the committed classifier, the audit database.
fn router_state(
    catalog: &Catalog,
    engines: &std::collections::BTreeMap<String, std::sync::Arc<Engine>>,
) -> anyhow::Result<routed::RouterState> {
    let profiles = catalog
        .models
        .iter()
        .filter_map(|m| {
            let engine = engines.get(&m.id)?;
            Some(switchyard_router::ModelProfile {
                id: m.id.clone(),
                context_window: engine.context_length(),
                routing: m.routing.clone(),
            })
        })
        .collect();
    let audit_path = catalog.audit_db();
    Ok(routed::RouterState {
        classifier: switchyard_router::Classifier::embedded().map_err(anyhow::Error::msg)?,
        profiles,
        audit: switchyard_router::AuditLog::open(&audit_path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", audit_path.display()))?,
        default_objective: catalog.router.default_objective,
        store_prompts: catalog.router.store_prompts,
        fault_models: std::env::var("SWITCHYARD_FAULT_MODELS")
            .map(|v| {
                v.split(',')
                    .map(|m| m.trim().to_string())
                    .filter(|m| !m.is_empty())
                    .collect()
            })
            .unwrap_or_default(),
    })
}

/// Load catalog entries onto the catalog's device and start their engines.
/// On a GPU each model's weights are checked against free memory before it
/// loads (a clear error names what needs how much), and the memory left under
/// `gpu_memory_utilization` is split between the KV pools.
fn start_engines(
    catalog: &Catalog,
    entries: &[&ModelEntry],
    tweak: impl Fn(&mut EngineConfig),
) -> anyhow::Result<Vec<Engine>> {
    use switchyard_engine::device;
    let spec = catalog.engine.device_spec();
    let dev = device::parse_device(&spec)?;
    let utilization = catalog.engine.gpu_memory_utilization;
    let mut loaded = Vec::with_capacity(entries.len());
    let mut weights = Vec::with_capacity(entries.len());
    for entry in entries {
        let path = catalog.resolve(entry)?;
        let bytes = device::weights_bytes(&path);
        if let Some((free, total)) = device::memory_info(&dev) {
            let reserve = (total as f64 * (1.0 - utilization)) as usize;
            device::check_fits(&entry.id, bytes, free, reserve)?;
        }
        tracing::info!(model = %entry.id, path = %path.display(), device = %spec, "loading");
        loaded.push(LoadedModel::load(&path, &dev)?);
        weights.push(bytes);
    }
    let budgets = device::memory_info(&dev)
        .map(|(free, total)| device::kv_budgets(free, total, utilization, &weights));
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

/// Start the engine of the catalog model named `model`.
fn load_engine(
    config: &std::path::Path,
    model: &str,
    tweak: impl Fn(&mut EngineConfig),
) -> anyhow::Result<Engine> {
    let catalog = Catalog::load(config)?;
    let entry = catalog
        .find(model)
        .ok_or_else(|| anyhow::anyhow!("model `{model}` is not in {}", config.display()))?;
    let mut engines = start_engines(&catalog, &[entry], tweak)?;
    engines
        .pop()
        .ok_or_else(|| anyhow::anyhow!("model `{model}` did not start"))
}

fn serve(config: &std::path::Path, addr: &str, audit_db: Option<PathBuf>) -> anyhow::Result<()> {
    let mut catalog = Catalog::load(config)?;
    if let Some(p) = audit_db {
        catalog.router.audit_db = p;
    }
    let entries: Vec<&ModelEntry> = catalog.models.iter().collect();
    let engines: std::collections::BTreeMap<_, _> = start_engines(&catalog, &entries, |_| {})?
        .into_iter()
        .zip(&catalog.models)
        .map(|(engine, entry)| (entry.id.clone(), std::sync::Arc::new(engine)))
        .collect();
    let api_key = std::env::var(&catalog.server.api_key_env)
        .ok()
        .filter(|k| !k.is_empty());
    let router = router_state(&catalog, &engines)?;
    let state = std::sync::Arc::new(routes::AppState {
        engines,
        metrics: metrics::Metrics::default(),
        api_key,
        max_waiting: catalog.server.max_waiting,
        body_limit: catalog.server.max_body_bytes,
        router: Some(router),
        started: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("binding {addr}: {e}"))?;
        tracing::info!(
            "serving {} model(s) on http://{}",
            state.engines.len(),
            listener.local_addr()?
        );
        axum::serve(listener, routes::router(state))
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        Ok(())
    })
}

/// Submit `n` requests at once (distinct random prompts, so no prefix reuse)
/// and time the prefill phase (until every first token) and the decode phase.
fn bench(
    engine: &Engine,
    n: usize,
    prompt_tokens: usize,
    gen_tokens: usize,
) -> anyhow::Result<serde_json::Value> {
    let vocab = engine.tokenizer().vocab_size() as u64;
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ n as u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (1000 + state % (vocab - 2000)) as u32
    };
    let params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(gen_tokens)
    };
    let started = Instant::now();
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        let prompt: Vec<u32> = (0..prompt_tokens).map(|_| next()).collect();
        streams.push(engine.submit(prompt, params.clone())?);
    }
    // One reader per stream, so each event is timed when it is produced.
    let readers: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            std::thread::spawn(move || -> Result<(Instant, Instant), String> {
                let mut first = None;
                while let Some(ev) = s.blocking_next() {
                    match ev {
                        Event::Delta { .. } => {
                            first.get_or_insert_with(Instant::now);
                        }
                        Event::Finished { .. } => break,
                        Event::Error { message } => return Err(message),
                    }
                }
                let done = Instant::now();
                Ok((first.unwrap_or(done), done))
            })
        })
        .collect();
    let mut first_at = Vec::with_capacity(n);
    let mut done_at = Vec::with_capacity(n);
    for r in readers {
        let (first, done) = r
            .join()
            .map_err(|_| anyhow::anyhow!("reader panicked"))?
            .map_err(anyhow::Error::msg)?;
        first_at.push(first);
        done_at.push(done);
    }
    let prefill_end = first_at.iter().max().copied().unwrap_or(started);
    let end = done_at.iter().max().copied().unwrap_or(started);
    let prefill_s = (prefill_end - started).as_secs_f64();
    let decode_s = (end - prefill_end).as_secs_f64();
    Ok(serde_json::json!({
        "engine": "switchyard",
        "concurrency": n,
        "prompt_tokens": prompt_tokens,
        "gen_tokens": gen_tokens,
        "prefill_tok_s": (n * prompt_tokens) as f64 / prefill_s.max(1e-9),
        "decode_tok_s": (n * (gen_tokens - 1)) as f64 / decode_s.max(1e-9),
    }))
}
