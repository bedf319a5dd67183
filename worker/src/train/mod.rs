//! Reward-model training (issue 10): the CharacterEval losses ([`loss`]), a trainable view of
//! the step-4 BaichuanCharRM model ([`params`]), AdamW with a linear schedule ([`adamw`]), one
//! optimisation step over micro-batches and data-parallel ranks ([`step`]); the run itself
//! ([`trainer`]): JSONL data ([`data`]), held-out metrics ([`metrics`]), checkpoints step 4 can
//! load and resume from ([`checkpoint`]), the YAML ([`config`]); gradients against reference
//! gradients ([`check`]).

pub mod adamw;
pub mod check;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod loss;
pub mod metrics;
pub mod params;
pub mod step;
pub mod trainer;

pub use adamw::{AdamW, AdamWConfig, linear_schedule};
pub use config::{LossWeights, TrainConfig};
pub use loss::{GroupScores, LossNorm};
pub use params::{LoraConfig, TrainableRm};
pub use step::{MicroBatch, StepLoss, train_step};
pub use trainer::{TrainOutcome, train, train_data_parallel};
