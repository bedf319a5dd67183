//! `evalfleet-train train-rm <config.yaml>`: trains a CharacterEval reward model (issue 10) on the
//! CPU with `ranks` in-process data-parallel ranks, writing `checkpoint-<step>/` folders that
//! step 4 loads as `reward_model_path`, and `metrics.jsonl` (train loss per step, held-out loss,
//! Pearson/Spearman per dimension and pairwise accuracy). Re-running the same command resumes
//! from the last checkpoint. Prints a JSON summary line at the end.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use evalfleet_worker::train::{TrainConfig, train_data_parallel};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(
    name = "evalfleet-train",
    version,
    about = "Reward-model training for step 4"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train (or resume training) a reward model from a YAML config (see yamls/train_rm.yaml).
    TrainRm {
        /// The train-rm YAML.
        config: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    evalfleet_console::init_logging();
    match Cli::parse().command {
        Command::TrainRm { config } => {
            let cfg = TrainConfig::from_yaml_file(&config)?;
            let out = train_data_parallel(&cfg)
                .with_context(|| format!("training with {}", config.display()))?;
            println!(
                "{}",
                json!({
                    "steps": out.steps,
                    "checkpoint": out.checkpoint,
                    "metrics": cfg.output_dir.join("metrics.jsonl"),
                    "eval": out.eval,
                })
            );
        }
    }
    Ok(())
}
