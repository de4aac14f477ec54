//! `switchyard`: serve several local LLMs behind one OpenAI-compatible API.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use clap::{Parser, Subcommand};
use switchyard_engine::{
    ChatMessage, Engine, EngineConfig, Event, Grammar, GrammarSpec, SamplingParams,
};
use switchyard_server::config::Catalog;
use switchyard_server::job::ValidatedRequest;
use switchyard_server::{error, openai, routed, startup};

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
        } => startup::serve(&config, &addr, audit_db)?,
        Command::Route { config, input } => route_dry_run(&config, &input)?,
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
    let profiles = startup::profiles(&catalog)?;
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

/// One dry-run decision: the same validated request the server builds.
fn preview_one(
    catalog: &Catalog,
    profiles: &[switchyard_router::ModelProfile],
    classifier: &switchyard_router::Classifier,
    line: &str,
) -> Result<switchyard_router::Decision, error::ApiError> {
    let req: openai::ChatRequest = openai::parse_body(line.as_bytes(), openai::CHAT_FIELDS)?;
    let v = ValidatedRequest::chat(req)?;
    let messages = v.messages();
    // Without the tokenizers, estimate: ~4 characters a token plus template overhead.
    let chars: usize = messages.iter().map(|m| m.content.chars().count()).sum();
    let estimate = chars.div_ceil(4) + 8 * messages.len() + 8;
    let rr = switchyard_router::RouteRequest {
        classification: routed::classify(classifier, messages),
        prompt_tokens: vec![("*".into(), estimate)],
        max_tokens: v.max_tokens,
        needs_tools: v.needs_tools,
        needs_json: v.needs_json,
        options: v.routing_options(),
        default_objective: catalog.router.default_objective,
        policy: catalog.router.policy,
    };
    Ok(switchyard_router::decide(profiles, &rr, &IdleLoad))
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
