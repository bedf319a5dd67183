//! evalfleet coordinator: reads job YAMLs, plans work items, leases shards of them to workers over
//! gRPC, collects one result per item, computes the metrics and writes the original tool's files.
//!
//! - [`config`]: job YAMLs (the original tool's step keys), defaults, unknown-key suggestions.
//! - [`datasets`]: `dataset_info.json`, alpaca and sharegpt files, `max_samples`.
//! - [`metrics`]: ROUGE (jieba + rouge-chinese semantics) and BLEU-4 (NLTK semantics), bit-compatible.
//! - [`output`]: writers that reproduce the Python tool's JSON formatting, written atomically.
//! - [`sched`]: the lease scheduler, a pure state machine (queue, leases, retries, completion).
//! - [`journal`]: the result journal in the output directory, and resuming from it.
//! - [`stop`]: SIGINT/SIGTERM: a graceful stop while a fleet runs, then exit at once.
//! - [`rpc`]: the `Fleet.Connect` gRPC stream, bearer-token auth, the version handshake.
//! - [`local`]: local mode: tokens, finding and spawning worker processes, watching them.
//! - [`run`]: the step drivers (step 1: plan items, run the fleet, score, write the files).
//! - [`step2`]: step 2's files: scores into the step-1 files, the score distribution and plot.
//! - [`step4`]: CharacterEval: prompts, transform, reward-model inputs, score means and files.
//! - [`sweep`]: `evalfleet sweep`: a training run's checkpoints in one fleet, then one report.
//! - [`serve`]: `evalfleet serve` (a long-lived fleet accepting jobs), `submit`, `status`, `cancel`,
//!   and the Prometheus metrics endpoint.
//! - The progress bar and the log writer that does not tear it are the `evalfleet-console` crate.
//! - [`cli`]: the `evalfleet` command line.

pub mod cli;
pub mod config;
pub mod datasets;
pub mod dirlock;
pub mod journal;
pub mod local;
pub mod metrics;
pub mod output;
pub mod report;
pub mod rpc;
pub mod run;
pub mod sched;
pub mod serve;
pub mod step2;
pub mod step3;
pub mod step4;
pub mod stop;
pub mod sweep;
