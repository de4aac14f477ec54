//! The router: picks the model that serves each `model="auto"` request
//! (see ARCHITECTURE.md). This crate knows nothing of candle: it classifies
//! text, and (next) scores catalog models against live load reported through
//! a narrow trait.

pub mod classifier;
pub mod taxonomy;
pub mod training;

pub use classifier::{Classification, Classifier};
pub use taxonomy::{Difficulty, TaskFamily};
