//! `switchyard`: serve several local LLMs behind one OpenAI-compatible API.

mod config;

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use clap::{Parser, Subcommand};
use switchyard_engine::{ChatMessage, Device, Engine, Event, LoadedModel, SamplingParams};

use crate::config::Catalog;

#[derive(Parser)]
#[command(name = "switchyard", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Generate {
            model,
            prompt,
            config,
            max_tokens,
            temperature,
            seed,
            raw,
        } => {
            let catalog = Catalog::load(&config)?;
            let entry = catalog
                .find(&model)
                .ok_or_else(|| anyhow::anyhow!("model `{model}` is not in {}", config.display()))?;
            let path = catalog.resolve(entry)?;
            let loaded = LoadedModel::from_gguf(&path, &Device::Cpu)?;
            let engine = Engine::start(&entry.id, loaded, catalog.engine.engine_config())?;
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
    }
    Ok(())
}
