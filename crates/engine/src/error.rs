//! Engine errors.

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("loading model: {0}")]
    Load(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("model source: {0}")]
    Source(String),
    #[error("engine stopped")]
    Stopped,
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, EngineError>;
