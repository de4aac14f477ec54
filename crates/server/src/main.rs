//! `switchyard`: serve several local LLMs behind one OpenAI-compatible API.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use clap::{Parser, Subcommand};
use switchyard_engine::{
    ChatMessage, Engine, EngineConfig, Event, Grammar, GrammarSpec, SamplingParams,
};
use switchyard_server::config::Catalog;
use switchyard_server::{error, preview, startup};

#[derive(Parser)]
#[command(name = "switchyard", version, about)]
struct Cli {
    /// Log lines as text, or as one JSON object a line (for log shippers);
    /// the access log is one line per API request either way.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Load every model in the catalog and serve the OpenAI-compatible API.
    Serve {
        #[arg(long, default_value = "models.toml")]
        config: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: String,
        /// Override `[router] audit_db` (a SQLite file or a postgres:// URL).
        #[arg(long)]
        audit_db: Option<String>,
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
    /// Routing preview: replay requests through the router (no model runs)
    /// and compare the projected cost, quality and time with sending every
    /// request to one baseline model; the cost/quality frontier across
    /// objectives and quality floors.
    Preview {
        #[arg(long, default_value = "models.toml")]
        config: PathBuf,
        /// JSONL of requests (chat bodies, OpenAI Batch API lines or chat-log
        /// lines); `-` for standard input.
        #[arg(long, required_unless_present = "from_audit")]
        input: Option<PathBuf>,
        /// Take the requests from the audit store (`[router] audit_db`).
        #[arg(long, conflicts_with = "input")]
        from_audit: bool,
        /// With --from-audit: decisions newer than this (`30m`, `24h`, `7d`,
        /// or Unix seconds).
        #[arg(long, requires = "from_audit")]
        since: Option<String>,
        /// With --from-audit: at most this many decisions, the newest.
        #[arg(long, default_value_t = 10_000)]
        limit: usize,
        /// The one model every request would go to without routing.
        #[arg(long)]
        baseline: String,
        /// Route the whole sample under this objective (quality, cost,
        /// latency, balanced); default: each request's own.
        #[arg(long)]
        objective: Option<String>,
        /// `table` or `json`.
        #[arg(long, default_value = "table")]
        format: String,
        /// Also write the report as a self-contained HTML page here.
        #[arg(long)]
        html: Option<PathBuf>,
        /// Calibrate: the lowest quality floor that sends this share of the
        /// sample (0-1) to stronger models than the cheapest (RouteLLM's
        /// threshold calibration).
        #[arg(long)]
        strong_share: Option<f64>,
        /// Serve the first N routable requests on both their routed model
        /// and the baseline (local models, one request at a time); their
        /// measured cost and time replace the projections.
        #[arg(long, default_value_t = 0)]
        execute: usize,
    },
    /// Calibrate quality on your own evals: run a labelled suite (JSONL of
    /// prompt, answer, check) through catalog models with greedy decoding
    /// and write each model's score, with its provenance, as evidence for
    /// the task into the catalog's evidence overlay (which the router reads).
    Eval {
        #[arg(long, default_value = "models.toml")]
        config: PathBuf,
        #[arg(long)]
        suite: PathBuf,
        /// The task the suite measures (code, math, knowledge_qa, ...).
        #[arg(long)]
        task: String,
        /// Comma-separated model ids; default: every local model.
        #[arg(long)]
        models: Option<String>,
        /// Run only the first N cases.
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long, default_value_t = 64)]
        max_tokens: usize,
        /// The catalog model that grades `judge` cases.
        #[arg(long)]
        judge: Option<String>,
        /// Print the scores without writing the overlay.
        #[arg(long)]
        dry_run: bool,
        /// Also compare serving strategies on the suite: each model alone,
        /// routing under each objective, and the confidence cascade (with
        /// thresholds cross-fitted on the other half of the suite). Each
        /// case's cost is measured (cases run one at a time).
        #[arg(long)]
        compare: bool,
    },
    /// Train the router's request classifier and write its weights.
    RouterTrain {
        /// The RouteLLM data directory (../shared/data/routellm).
        #[arg(long)]
        data: PathBuf,
        /// The labelled realistic prompts (dev-*.jsonl and heldout.jsonl).
        #[arg(long, default_value = "crates/router/data/realistic")]
        prompts: PathBuf,
        #[arg(long, default_value = "crates/router/data/classifier.json")]
        out: PathBuf,
    },
    /// Report the committed classifier's figures on the held-out splits.
    RouterEval {
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value = "crates/router/data/realistic")]
        prompts: PathBuf,
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
        /// Constrain every sequence to this JSON schema (structured outputs);
        /// reports the per-token mask time too.
        #[arg(long)]
        json_schema: Option<String>,
    },
    /// Check the paged-attention kernels against the portable reference path
    /// on random inputs; prints one JSON line per case, fails if any fails.
    KernelCheck {
        #[arg(long, default_value = "cuda:0")]
        device: String,
    },
}

fn main() -> anyhow::Result<()> {
    // The CPU forward pass parallelises on the engine's own pool, which
    // never waits for a worker that another process keeps off its core;
    // candle's barrier pool would (its element-wise ops are small: they run
    // on the engine's thread). Set before any candle op starts that pool.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: no other thread runs yet.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    match cli.command {
        Command::Serve {
            config,
            addr,
            audit_db,
        } => startup::serve(&config, &addr, audit_db)?,
        Command::Route { config, input } => route_dry_run(&config, &input)?,
        Command::Preview {
            config,
            input,
            from_audit,
            since,
            limit,
            baseline,
            objective,
            format,
            html,
            strong_share,
            execute,
        } => {
            let objective = objective
                .map(|o| preview::objective(&o).map_err(anyhow::Error::msg))
                .transpose()?;
            let source = match (input, from_audit) {
                (Some(path), _) => PreviewSource::File(path, execute),
                (None, _) if execute > 0 => {
                    anyhow::bail!("--execute serves the requests' text: give them with --input")
                }
                (None, _) => PreviewSource::Audit {
                    since: since.as_deref().map(parse_since).transpose()?,
                    limit,
                },
            };
            if strong_share.is_some_and(|s| !(0.0..=1.0).contains(&s)) {
                anyhow::bail!("--strong-share is a share between 0 and 1");
            }
            preview_cmd(
                &config,
                source,
                &baseline,
                (objective, strong_share),
                &format,
                html.as_deref(),
            )?
        }
        Command::Eval {
            config,
            suite,
            task,
            models,
            limit,
            max_tokens,
            judge,
            dry_run,
            compare,
        } => eval_cmd(
            &config,
            &suite,
            &task,
            EvalOptions {
                models: models.as_deref(),
                limit,
                max_tokens,
                judge: judge.as_deref(),
                dry_run,
                compare,
            },
        )?,
        Command::RouterTrain { data, prompts, out } => {
            let (classifier, eval) =
                switchyard_router::training::train_and_evaluate(&data, &prompts)
                    .map_err(anyhow::Error::msg)?;
            classifier.save(&out)?;
            print_evaluation(&eval);
            println!("wrote {}", out.display());
        }
        Command::RouterEval { data, prompts } => {
            let classifier =
                switchyard_router::Classifier::embedded().map_err(anyhow::Error::msg)?;
            let ds = switchyard_router::training::Dataset::load(&data, &prompts)
                .map_err(anyhow::Error::msg)?;
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
            let dev = switchyard_engine::parse_device(&device)?;
            let report = switchyard_engine::kernel_self_check(&dev)?;
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
            json_schema,
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
            let grammar = match &json_schema {
                Some(schema) => Some(
                    engine
                        .compile_grammar(&GrammarSpec::JsonSchema(serde_json::from_str(schema)?))?,
                ),
                None => None,
            };
            bench(&engine, 1, 16, 4, grammar.clone())?; // warm-up
            for n in levels {
                println!(
                    "{}",
                    bench(
                        &engine,
                        n,
                        prompt_tokens,
                        gen_tokens.max(2),
                        grammar.clone()
                    )?
                );
            }
        }
    }
    Ok(())
}

fn print_evaluation(e: &switchyard_router::training::Evaluation) {
    for (name, r) in [("validation", &e.validation), ("held-out", &e.heldout)] {
        println!(
            "{name} realistic ({} prompts): task accuracy {:.3} (macro {:.3}, not English {:.3}); hard seen as medium/hard {:.3}; easy seen as easy {:.3}",
            r.n,
            r.task_accuracy,
            r.task_macro_accuracy,
            r.non_english_task_accuracy,
            r.hard_seen_as_medium_or_hard,
            r.easy_seen_as_easy
        );
        for (task, n, acc) in &r.per_task {
            println!("  {:<18} n={n:<4} accuracy {acc:.3}", task.as_str());
        }
    }
    for (name, r) in [
        ("MMLU validation", &e.routellm_validation.0),
        ("GSM8K validation", &e.routellm_validation.1),
        ("MMLU held-out", &e.mmlu),
        ("GSM8K held-out", &e.gsm8k),
    ] {
        println!(
            "RouteLLM {name} ({} prompts): APGR {:.3}, CPT(50%) {:.3}, AUC {:.3}",
            r.n, r.apgr, r.cpt50, r.auc
        );
    }
}

fn read_input(input: &std::path::Path) -> anyhow::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    if input.as_os_str() == "-" {
        std::io::stdin().lock().read_to_string(&mut text)?;
    } else {
        text = std::fs::read_to_string(input)
            .map_err(|e| anyhow::anyhow!("{}: {e}", input.display()))?;
    }
    Ok(text)
}

/// The catalog's router without engines: what a dry run or a preview
/// decides with.
struct OfflineRouter {
    catalog: Catalog,
    profiles: Vec<switchyard_router::ModelProfile>,
    classifier: switchyard_router::Classifier,
}

impl OfflineRouter {
    fn load(config: &std::path::Path) -> anyhow::Result<Self> {
        let catalog = Catalog::load(config)?;
        Ok(OfflineRouter {
            profiles: startup::profiles(&catalog)?,
            classifier: switchyard_router::Classifier::embedded().map_err(anyhow::Error::msg)?,
            catalog,
        })
    }

    fn view(&self) -> preview::RouterView<'_> {
        preview::RouterView {
            profiles: &self.profiles,
            classifier: &self.classifier,
            default_objective: self.catalog.router.default_objective,
            policy: self.catalog.router.policy,
        }
    }
}

fn route_dry_run(config: &std::path::Path, input: &std::path::Path) -> anyhow::Result<()> {
    let router = OfflineRouter::load(config)?;
    let view = router.view();
    for (n, line) in read_input(input)?.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let decision = serde_json::from_str::<serde_json::Value>(line)
            .map_err(|e| error::ApiError::invalid(format!("not JSON: {e}")))
            .and_then(|v| view.route_request(&v))
            .map(|rr| {
                switchyard_router::decide(&router.profiles, &rr, &switchyard_router::IdleLoad)
            });
        let record = match decision {
            Ok(d) => serde_json::json!({"line": n + 1, "decision": d}),
            Err(e) => serde_json::json!({"line": n + 1, "error": e.message}),
        };
        println!("{record}");
    }
    Ok(())
}

enum PreviewSource {
    /// The file, and how many of its requests to serve (`--execute`).
    File(PathBuf, usize),
    Audit {
        since: Option<f64>,
        limit: usize,
    },
}

/// `30m`, `24h`, `7d` before now, or Unix seconds, as Unix seconds.
fn parse_since(s: &str) -> anyhow::Result<f64> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let unit = |suffix: char, seconds: f64| {
        s.strip_suffix(suffix)
            .and_then(|n| n.parse::<f64>().ok())
            .map(|n| now - n * seconds)
    };
    unit('m', 60.0)
        .or_else(|| unit('h', 3600.0))
        .or_else(|| unit('d', 86400.0))
        .or_else(|| s.parse::<f64>().ok())
        .filter(|t| t.is_finite())
        .ok_or_else(|| anyhow::anyhow!("--since {s}: expected 30m, 24h, 7d or Unix seconds"))
}

fn preview_cmd(
    config: &std::path::Path,
    source: PreviewSource,
    baseline: &str,
    (objective, strong_share): (Option<switchyard_router::Objective>, Option<f64>),
    format: &str,
    html: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    if !matches!(format, "table" | "json") {
        anyhow::bail!("--format {format}: expected table or json");
    }
    let router = OfflineRouter::load(config)?;
    let (catalog, profiles, view) = (&router.catalog, &router.profiles, router.view());
    let mut chats = Vec::new();
    let mut execute = 0;
    let requests = match source {
        PreviewSource::File(path, n) => {
            let (parsed, errors) = view.requests_from_jsonl(&read_input(&path)?);
            for (line, e) in &errors {
                eprintln!("{}:{line}: skipped: {e}", path.display());
            }
            execute = n;
            chats = parsed;
            chats.iter().map(|c| c.route.clone()).collect::<Vec<_>>()
        }
        PreviewSource::Audit { since, limit } => {
            let target = catalog.audit_target();
            let audit = switchyard_router::AuditLog::connect(&target, catalog.audit_options())
                .map_err(|e| anyhow::anyhow!("{}: {e}", target.describe()))?;
            let (requests, skipped) = view
                .requests_from_audit(&audit, since, limit)
                .map_err(|e| anyhow::anyhow!(e.message))?;
            if skipped > 0 {
                eprintln!("skipped {skipped} audit records without a classification");
            }
            requests
        }
    };
    if requests.is_empty() {
        anyhow::bail!("no requests to preview");
    }
    let mut report = switchyard_router::preview(
        profiles,
        &requests,
        baseline,
        objective,
        &switchyard_router::IdleLoad,
    )
    .map_err(anyhow::Error::msg)?;
    if execute > 0 {
        let served = execute_sample(config, &router, &mut report, &chats, execute)?;
        eprintln!("served {served} requests on both sides; their rows are measured");
    }
    report.calibration = strong_share.map(|share| {
        switchyard_router::preview::calibrate_floor(
            profiles,
            &requests,
            share,
            &switchyard_router::IdleLoad,
        )
    });
    let text = if format == "json" {
        serde_json::to_string_pretty(&report)? + "\n"
    } else {
        preview::render_table(&report)
    };
    // A closed pipe (`| head`) is the reader's choice, not an error.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    if let Some(path) = html {
        std::fs::write(path, preview::render_html(&report))
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// `preview --execute`: the first `n` rows whose routed model is local are
/// served, one request at a time, on their routed model and on the
/// baseline; measured cost and time replace the projections. Returns how
/// many rows were served.
fn execute_sample(
    config: &std::path::Path,
    router: &OfflineRouter,
    report: &mut switchyard_router::PreviewReport,
    chats: &[preview::ChatToRoute],
    n: usize,
) -> anyhow::Result<usize> {
    use std::collections::{BTreeMap, BTreeSet, HashMap};
    let local = |id: &str| {
        router
            .catalog
            .find(id)
            .is_some_and(|m| m.backend == switchyard_server::config::Backend::Local)
    };
    let baseline = report.baseline.clone();
    if !local(&baseline) {
        anyhow::bail!("--execute serves on local models; the baseline `{baseline}` is remote");
    }
    let sample: Vec<(usize, String)> = report
        .rows
        .iter()
        .filter_map(|r| Some((r.index, r.routed.clone().filter(|m| local(m))?)))
        .take(n)
        .collect();
    let mut runs: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    for (i, model) in &sample {
        runs.entry(model.clone()).or_default().insert(*i);
        runs.entry(baseline.clone()).or_default().insert(*i);
    }
    let mut measured: HashMap<(usize, String), (f64, f64)> = HashMap::new();
    for (model, rows) in &runs {
        let profile = router
            .profiles
            .iter()
            .find(|p| &p.id == model)
            .ok_or_else(|| anyhow::anyhow!("no profile for `{model}`"))?;
        let engine = load_engine(config, model, |_| {})?;
        for &i in rows {
            let chat = &chats[i - 1];
            let max_tokens = chat
                .max_tokens
                .unwrap_or(switchyard_router::decide::DEFAULT_OUTPUT_TOKENS);
            let started = Instant::now();
            let mut stream = engine.submit(
                engine.encode_chat(&chat.messages)?,
                SamplingParams::greedy(max_tokens),
            )?;
            let mut usage = None;
            while let Some(event) = stream.blocking_next() {
                match event {
                    Event::Finished { usage: u, .. } => {
                        usage = Some(u);
                        break;
                    }
                    Event::Error { message } => anyhow::bail!("{model}: {message}"),
                    Event::Delta { .. } => {}
                }
            }
            let seconds = started.elapsed().as_secs_f64();
            let usage = usage.ok_or_else(|| anyhow::anyhow!("{model}: the stream ended early"))?;
            let cost = switchyard_router::preview::measured_cost(
                profile,
                usage.prompt_tokens,
                usage.completion_tokens,
                seconds,
            );
            measured.insert((i, model.clone()), (cost, seconds * 1000.0));
        }
    }
    for (i, model) in &sample {
        if let (Some(&routed), Some(&base)) = (
            measured.get(&(*i, model.clone())),
            measured.get(&(*i, baseline.clone())),
        ) {
            report.measure(*i, routed, base);
        }
    }
    Ok(sample.len())
}

/// One greedy completion: its text, each token's log-probability, its
/// tokens and how long it took.
struct Completion {
    text: String,
    logprobs: Vec<f32>,
    usage: switchyard_engine::Usage,
    seconds: f64,
}

/// Greedy completions of `prompts` (chat messages each) on one engine,
/// with each token's log-probability, one at a time: batched decoding is
/// not batch-invariant (which prompts share a step depends on timing and
/// changes the sums' order), so a measurement made in batches would not be
/// the same twice; one at a time it is, and each one's time is its own.
fn complete_all(
    engine: &Engine,
    prompts: &[Vec<ChatMessage>],
    max_tokens: usize,
) -> anyhow::Result<Vec<Completion>> {
    let submit = |messages: &Vec<ChatMessage>| -> anyhow::Result<_> {
        let tokens = engine.encode_chat(messages)?;
        let params = SamplingParams {
            logprobs: Some(0),
            ..SamplingParams::greedy(max_tokens)
        };
        Ok((Instant::now(), engine.submit(tokens, params)?))
    };
    let drain = |(started, mut stream): (Instant, switchyard_engine::RequestStream)| {
        let (mut text, mut logprobs, mut usage) = (String::new(), Vec::new(), None);
        while let Some(event) = stream.blocking_next() {
            match event {
                Event::Delta {
                    text: t,
                    logprobs: l,
                    ..
                } => {
                    text.push_str(&t);
                    logprobs.extend(l.iter().map(|l| l.logprob));
                }
                Event::Finished { usage: u, .. } => {
                    usage = Some(u);
                    break;
                }
                Event::Error { message } => anyhow::bail!("generation failed: {message}"),
            }
        }
        Ok(Completion {
            text,
            logprobs,
            usage: usage.ok_or_else(|| anyhow::anyhow!("the stream ended early"))?,
            seconds: started.elapsed().as_secs_f64(),
        })
    };
    prompts.iter().map(|p| drain(submit(p)?)).collect()
}

/// `switchyard eval`'s options besides the catalog, the suite and the task.
struct EvalOptions<'a> {
    models: Option<&'a str>,
    limit: Option<usize>,
    max_tokens: usize,
    judge: Option<&'a str>,
    dry_run: bool,
    compare: bool,
}

fn eval_cmd(
    config: &std::path::Path,
    suite_path: &std::path::Path,
    task: &str,
    options: EvalOptions<'_>,
) -> anyhow::Result<()> {
    use switchyard_server::eval;
    let EvalOptions {
        models,
        limit,
        max_tokens,
        judge,
        dry_run,
        compare,
    } = options;
    let task = switchyard_router::Task::parse(task).ok_or_else(|| {
        let all: Vec<&str> = switchyard_router::Task::ALL
            .iter()
            .map(|t| t.as_str())
            .collect();
        anyhow::anyhow!("unknown task `{task}` ({})", all.join(", "))
    })?;
    let mut suite = eval::Suite::load(suite_path)?;
    if let Some(n) = limit {
        suite.cases.truncate(n.max(1));
    }
    let catalog = Catalog::load(config)?;
    let ids: Vec<String> = match models {
        Some(list) => list.split(',').map(|s| s.trim().to_string()).collect(),
        None => catalog.local_models().map(|m| m.id.clone()).collect(),
    };
    // Eval runs the models (and the judge) here: each must be a local one.
    let local = |role: &str, id: &str| match catalog.find(id) {
        None => anyhow::bail!("{role} `{id}` is not in {}", config.display()),
        Some(m) if m.backend != switchyard_server::config::Backend::Local => {
            anyhow::bail!("{role} `{id}` is remote: eval runs local models")
        }
        Some(_) => Ok(()),
    };
    for id in &ids {
        local("model", id)?;
    }
    let needs_judge = suite.cases.iter().any(|c| c.check == eval::Check::Judge);
    if needs_judge && judge.is_none() {
        anyhow::bail!("the suite has judge cases: name a catalog model with --judge");
    }
    if let Some(judge) = judge {
        local("judge", judge)?;
    }
    let prompts: Vec<Vec<ChatMessage>> = suite
        .cases
        .iter()
        .map(|c| {
            let mut m = Vec::new();
            if let Some(s) = &c.system {
                m.push(ChatMessage::new("system", s));
            }
            m.push(ChatMessage::new("user", &c.prompt));
            m
        })
        .collect();
    let date = {
        let days = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() / 86_400) as i64;
        civil_date(days)
    };
    let command = format!(
        "switchyard eval --config {} --suite {} --task {}{}{} --max-tokens {max_tokens}",
        config.display(),
        suite_path.display(),
        task.as_str(),
        models.map_or(String::new(), |m| format!(" --models {m}")),
        limit.map_or(String::new(), |n| format!(" --limit {n}")),
    ) + &judge.map_or(String::new(), |j| format!(" --judge {j}"));
    let mut results = Vec::new();
    // Under --compare: the router, and each model's answers to replay.
    let offline = compare.then(|| OfflineRouter::load(config)).transpose()?;
    let mut replays = HashMap::new();
    for id in &ids {
        let started = Instant::now();
        let outputs = {
            let engine = load_engine(config, id, |_| {})?;
            complete_all(&engine, &prompts, max_tokens)?
        };
        let mut verdicts: Vec<Option<bool>> = suite
            .cases
            .iter()
            .zip(&outputs)
            .map(|(c, o)| eval::check(c, &o.text))
            .collect();
        if let (true, Some(judge)) = (needs_judge, judge) {
            let pending: Vec<usize> = (0..verdicts.len())
                .filter(|&i| verdicts[i].is_none())
                .collect();
            let asks: Vec<Vec<ChatMessage>> = pending
                .iter()
                .map(|&i| {
                    vec![ChatMessage::new(
                        "user",
                        &eval::judge_prompt(&suite.cases[i], &outputs[i].text),
                    )]
                })
                .collect();
            let engine = load_engine(config, judge, |_| {})?;
            for (&i, reply) in pending.iter().zip(complete_all(&engine, &asks, 4)?) {
                verdicts[i] = Some(eval::judge_says_yes(&reply.text));
            }
            println!("{id}: {} of its answers graded by {judge}", pending.len());
        }
        let k = verdicts.iter().filter(|v| **v == Some(true)).count();
        let n = verdicts.len();
        let (lo, hi) = eval::wilson(k, n);
        println!(
            "{id}: {k}/{n} = {:.3} (95% CI {lo:.3}-{hi:.3}) on {} [{}], {:.1} s",
            k as f64 / n as f64,
            suite.name,
            task.as_str(),
            started.elapsed().as_secs_f64()
        );
        // How well the model's own confidence tells its right answers from
        // its wrong ones (a confidence cascade's threshold).
        let case_points: Vec<Option<(f64, bool)>> = outputs
            .iter()
            .zip(&verdicts)
            .map(|(o, v)| Some((eval::confidence(&o.logprobs)?, (*v)?)))
            .collect();
        let points: Vec<(f64, bool)> = case_points.iter().flatten().copied().collect();
        let separation = eval::separate(&points);
        if let Some(router) = &offline {
            let profile = router
                .profiles
                .iter()
                .find(|p| &p.id == id)
                .ok_or_else(|| anyhow::anyhow!("model `{id}` has no routing profile"))?;
            let answers = outputs
                .iter()
                .zip(&verdicts)
                .map(|(o, v)| eval::Answer {
                    right: *v == Some(true),
                    confidence: eval::confidence(&o.logprobs),
                    cost_usd: switchyard_router::preview::measured_cost(
                        profile,
                        o.usage.prompt_tokens,
                        o.usage.completion_tokens,
                        o.seconds,
                    ),
                })
                .collect();
            replays.insert(id.clone(), (answers, case_points));
        }
        match &separation {
            Some(s) => println!(
                "  confidence (mean token logprob): AUC {:.2}; {} ({:.0}% of cases on the right side)",
                s.auc,
                s.threshold.map_or("no threshold beats escalating every answer".into(), |t| {
                    format!("escalate below {t:.3}")
                }),
                s.accuracy * 100.0
            ),
            None => println!("  confidence: all answers right or all wrong, no threshold"),
        }
        results.push((
            id.clone(),
            eval::evidence(&suite, k, n, &date, &command),
            separation,
        ));
    }
    if let Some(router) = &offline {
        let tallies = compare_strategies(router, &ids, &prompts, task, max_tokens, &replays)?;
        print_tallies(&suite.name, &tallies);
    }
    if dry_run {
        return Ok(());
    }
    let path = catalog.evidence_path();
    let mut overlay = switchyard_server::config::EvidenceOverlay::load(&path)?;
    for (id, evidence, separation) in results {
        let model = overlay.models.entry(id).or_default();
        model.quality.insert(task, evidence);
        match separation {
            Some(s) => model.confidence.insert(task, s),
            None => model.confidence.remove(&task),
        };
    }
    overlay.save(&path)?;
    println!("wrote {}", path.display());
    Ok(())
}

/// Each model's answers to a suite's cases, and its (confidence, right) points.
type Replays = HashMap<
    String,
    (
        Vec<switchyard_server::eval::Answer>,
        Vec<Option<(f64, bool)>>,
    ),
>;

/// Serving strategies on a suite, replayed from each model's measured
/// answers (greedy decoding is deterministic, so a strategy's answer to a
/// case is the answer of the model it would have served it on): each model
/// alone, routing under each objective, and the confidence cascade, whose
/// thresholds are cross-fitted on the other half of the suite.
fn compare_strategies(
    router: &OfflineRouter,
    ids: &[String],
    prompts: &[Vec<ChatMessage>],
    task: switchyard_router::Task,
    max_tokens: usize,
    replays: &Replays,
) -> anyhow::Result<Vec<switchyard_server::eval::Tally>> {
    use switchyard_router::{decide, IdleLoad, Objective};
    use switchyard_server::eval::{fold_thresholds, replay_cascade, Tally};
    const FOLDS: usize = 2;
    let answer = |model: &str, case: usize| {
        replays
            .get(model)
            .and_then(|(answers, _)| answers.get(case))
            .ok_or_else(|| anyhow::anyhow!("no answer of `{model}` to case {case}"))
    };
    // Routing sees only the evaluated models.
    let profiles: Vec<_> = router
        .profiles
        .iter()
        .filter(|p| ids.contains(&p.id))
        .cloned()
        .collect();
    let view = preview::RouterView {
        profiles: &profiles,
        ..router.view()
    };
    let thresholds: HashMap<&str, Vec<Option<f64>>> = replays
        .iter()
        .map(|(id, (_, points))| (id.as_str(), fold_thresholds(points, FOLDS)))
        .collect();
    let mut tallies: Vec<Tally> = ids
        .iter()
        .map(|id| Tally::new(format!("{id} alone")))
        .collect();
    let objectives = [
        Objective::Quality,
        Objective::Balanced,
        Objective::Cost,
        Objective::Latency,
    ];
    for o in objectives {
        tallies.push(Tally::new(format!("routed: {}", o.as_str())));
    }
    tallies.push(Tally::new("cascade (thresholds cross-fitted, 2 folds)"));
    for (case, messages) in prompts.iter().enumerate() {
        for (k, id) in ids.iter().enumerate() {
            let a = answer(id, case)?;
            tallies[k].add(a.right, a.cost_usd, 0);
        }
        let route = |objective: Objective, profiles: &[switchyard_router::ModelProfile]| {
            let body = serde_json::json!({
                "model": format!("auto:{}", objective.as_str()),
                "messages": messages,
                "max_tokens": max_tokens,
            });
            view.route_request(&body)
                .map(|rr| decide(profiles, &rr, &IdleLoad))
                .map_err(|e| anyhow::anyhow!("case {case}: {}", e.message))
        };
        for (j, o) in objectives.into_iter().enumerate() {
            let d = route(o, &profiles)?;
            let winner = d
                .order
                .first()
                .ok_or_else(|| anyhow::anyhow!("case {case}: no model under {}", o.as_str()))?;
            let a = answer(winner, case)?;
            tallies[ids.len() + j].add(a.right, a.cost_usd, 0);
        }
        // The cascade judges this case by thresholds from the other fold.
        let fold = case % FOLDS;
        let mut fitted = profiles.clone();
        for p in &mut fitted {
            match thresholds.get(p.id.as_str()).and_then(|t| t[fold]) {
                Some(t) => p.routing.confidence_threshold.insert(task, t),
                None => p.routing.confidence_threshold.remove(&task),
            };
        }
        let d = route(Objective::Cascade, &fitted)?;
        let chain = d
            .order
            .iter()
            .map(|m| {
                let threshold = d
                    .candidates
                    .iter()
                    .find(|c| &c.model == m)
                    .and_then(|c| c.confidence_threshold);
                Ok((answer(m, case)?, threshold))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let (right, cost, escalated) = replay_cascade(&chain);
        if let Some(t) = tallies.last_mut() {
            t.add(right, cost, escalated);
        }
    }
    Ok(tallies)
}

fn print_tallies(suite: &str, tallies: &[switchyard_server::eval::Tally]) {
    println!("\nserving strategies on {suite} (measured answers, replayed):");
    println!(
        "| strategy | right | accuracy (95% CI) | $ per 1k requests | escalated |\n|---|---|---|---|---|"
    );
    for t in tallies {
        let (lo, hi) = switchyard_server::eval::wilson(t.right, t.n);
        println!(
            "| {} | {}/{} | {:.3} ({lo:.3}-{hi:.3}) | {:.4} | {} |",
            t.strategy,
            t.right,
            t.n,
            t.right as f64 / t.n.max(1) as f64,
            t.cost_usd * 1000.0 / t.n.max(1) as f64,
            if t.strategy.starts_with("cascade") {
                format!("{}/{}", t.escalated, t.n)
            } else {
                "-".into()
            }
        );
    }
}

/// `YYYY-MM-DD` of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
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
    let mut engines = startup::start_engines(&catalog, &[entry], tweak)?;
    engines
        .pop()
        .ok_or_else(|| anyhow::anyhow!("model `{model}` did not start"))
}

/// Submit `n` requests at once (distinct random prompts, so no prefix reuse)
/// and time the prefill phase (until every first token) and the decode phase.
fn bench(
    engine: &Engine,
    n: usize,
    prompt_tokens: usize,
    gen_tokens: usize,
    grammar: Option<Grammar>,
) -> anyhow::Result<serde_json::Value> {
    let masks_before = engine.stats().grammar_mask_us.len();
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
        grammar,
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
            std::thread::spawn(move || -> Result<(Instant, Instant, usize), String> {
                let (mut first, mut generated) = (None, 0);
                while let Some(ev) = s.blocking_next() {
                    match ev {
                        Event::Delta { tokens, .. } => {
                            first.get_or_insert_with(Instant::now);
                            generated += tokens.len();
                        }
                        Event::Finished { .. } => break,
                        Event::Error { message } => return Err(message),
                    }
                }
                let done = Instant::now();
                Ok((first.unwrap_or(done), done, generated))
            })
        })
        .collect();
    let mut first_at = Vec::with_capacity(n);
    let mut done_at = Vec::with_capacity(n);
    let mut decoded = 0;
    for r in readers {
        let (first, done, generated) = r
            .join()
            .map_err(|_| anyhow::anyhow!("reader panicked"))?
            .map_err(anyhow::Error::msg)?;
        first_at.push(first);
        done_at.push(done);
        decoded += generated.saturating_sub(1);
    }
    let prefill_end = first_at.iter().max().copied().unwrap_or(started);
    let end = done_at.iter().max().copied().unwrap_or(started);
    let prefill_s = (prefill_end - started).as_secs_f64();
    let decode_s = (end - prefill_end).as_secs_f64();
    let all_masks = engine.stats().grammar_mask_us;
    let masks = &all_masks[masks_before.min(all_masks.len())..];
    Ok(serde_json::json!({
        "engine": "switchyard",
        "concurrency": n,
        "prompt_tokens": prompt_tokens,
        "gen_tokens": gen_tokens,
        "prefill_tok_s": (n * prompt_tokens) as f64 / prefill_s.max(1e-9),
        "decode_tok_s": decoded as f64 / decode_s.max(1e-9),
        "decoded_tokens": decoded,
        "constrained": params.grammar.is_some(),
        "mask_us_p50": percentile(masks, 0.5),
        "mask_us_p99": percentile(masks, 0.99),
    }))
}

/// The q-quantile of some samples (None when there are none).
fn percentile(samples: &[f32], q: f64) -> Option<f32> {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f32::total_cmp);
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(i).copied()
}
