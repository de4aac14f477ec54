//! The router: picks the model that serves each `model="auto"` request.
//!
//! 1. [`classifier`]: task family and difficulty of the prompt, with confidences;
//! 2. [`decide`]: hard filters, then quality/cost/latency scores under the
//!    caller's objective, with latency from live engine load ([`decide::LiveLoad`]);
//! 3. [`audit`]: every decision and its outcome in SQLite or PostgreSQL;
//! 4. [`preview`]: a sample of requests replayed through [`decide`] against one
//!    baseline model (projected cost, quality, time; the cost/quality frontier).
//!
//! The model facts come from [`catalog`]. This crate knows nothing of candle or
//! the engine: the server adapts its engines to [`decide::LiveLoad`].

pub mod audit;
pub mod catalog;
pub mod classifier;
pub mod decide;
pub mod preview;
pub mod taxonomy;
pub mod training;

pub use audit::{Attempt, AuditLog, AuditOptions, AuditTarget, DecisionRecord, Outcome};
pub use catalog::{ModelProfile, QualityBasis, RoutingProfile};
pub use classifier::{Classification, Classifier};
pub use decide::{
    decide, BalancedWeights, ColdStart, Decision, LiveLoad, LoadSnapshot, Objective, Policy,
    RouteRequest, RoutingOptions,
};
pub use preview::{preview, IdleLoad, PreviewReport};
pub use taxonomy::{Difficulty, Task};
