//! Reward-model training (issue 10): the CharacterEval losses ([`loss`]), a trainable view of
//! the step-4 BaichuanCharRM model ([`params`]), AdamW with a linear schedule ([`adamw`]), one
//! optimisation step over micro-batches and data-parallel ranks ([`step`]).

pub mod adamw;
pub mod loss;
pub mod params;
pub mod step;

pub use adamw::{AdamW, AdamWConfig, linear_schedule};
pub use loss::{GroupScores, LossNorm};
pub use params::TrainableRm;
pub use step::{MicroBatch, StepLoss, train_step};
