//! The `evalfleet` command line (clap derive): `step1`, `step2`, `step3`, `step4`, `run`, `sweep`, `score text`, `report`. Glue only: each
//! subcommand parses its options and calls a driver in [`crate::run`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::rpc::limit_args::LimitArgs;
use crate::run::FleetSetup;

/// evalfleet: evaluates LLM checkpoints like the original LLaMA-Factory-based tool, on one CPU or a
/// fleet of GPU workers.
///
/// Logs go to stderr (filter with RUST_LOG, default `info`); a progress bar is shown while a step
/// runs when stderr is a terminal.
#[derive(Debug, Parser)]
#[command(name = "evalfleet", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Step 1: generate answers for an SFT test set, score them (ROUGE-1/2/L, BLEU-4), write files.
    ///
    /// Reads a job YAML with the original tool's step-1 keys (model_name_or_path,
    /// adapter_name_or_path, template, dataset_dir, dataset, cutoff_len, max_samples,
    /// per_device_eval_batch_size, output_dir, generation settings...). Writes
    /// <output_dir>/generated_predictions.jsonl, predict_results.json and all_results.json (updated
    /// in place). Starts a coordinator on loopback and one worker per visible GPU (else one CPU
    /// worker) unless --workers / --listen say otherwise.
    Step1(StepArgs),
    /// Step 2: the semantic similarity of every step-1 prediction to its label, on embedding workers.
    ///
    /// Reads a job YAML with the original tool's step-2 keys: model_path (a sentence-transformers
    /// folder, e.g. all-MiniLM-L6-v2 or gte-large-zh) and output_dir (step 1's output folder), plus
    /// evalfleet's batch_size and workers. Adds a `score` to every line of
    /// <output_dir>/generated_predictions.jsonl and avg_sem_sim_score to predict_results.json
    /// (all_results.json is left as it is), writes sem_sim_distribution.json and
    /// sem_sim_histogram.svg / .png, and prints a one-line summary. Every file is replaced atomically.
    /// Same fleet options as `step1` (--batch-size = pairs per lease and texts per forward pass).
    Step2(StepArgs),
    /// Step 3: MMLU, CMMLU and C-Eval accuracy, 5-shot, prompts byte-identical to LLaMA-Factory's.
    ///
    /// Reads a job YAML with the original tool's step-3 keys: task_dir, tasks, langs, splits,
    /// template, n_shot, batch_size, save_dir and the model keys (model_name_or_path,
    /// adapter_name_or_path, finetuning_type), plus evalfleet's few_shot_order (llamafactory =
    /// LLaMA-Factory v0.7.1's shuffled shots, the default; fixed = dev rows in file order),
    /// prefix_pairs, dtype and workers. For each task writes <save_dir>/<task>/results.json,
    /// results.log (both as LLaMA-Factory writes them), results_detail.jsonl and
    /// results_subjects.tsv, after removing that folder, and prints results.log. Same fleet
    /// options as `step1` (--batch-size = questions per lease and per forward pass).
    Step3(StepArgs),
    /// Step 4: CharacterEval role-play evaluation: generation, BaichuanCharRM scores, means.
    ///
    /// Reads a job YAML with the original tool's step-4 keys: model_path, reward_model_path,
    /// task_dir (test_data.jsonl, character_profiles.json, id2metric.jsonl), output_dir,
    /// adapter_name_or_path, template (empty = the model's chat template), finetuning_type, plus
    /// max_samples, generation keys (max_new_tokens default 512), dtype, reward_dtype (default
    /// bf16), batch_size, workers and stage. Writes <output_dir>/step1_generation.jsonl,
    /// step2_generation_trans.jsonl, step3_evaluation.jsonl and step4_eval_scores.jsonl in the
    /// original formats, and step4_eval_scores.json (per-metric mean, count, std; per-character
    /// means; the average), and prints the score log. Same fleet options as `step1`.
    Step4(Step4Args),
    /// Runs a job YAML listing its steps (`steps: [step1, step2]`) with shared keys and per-step
    /// sections.
    ///
    /// Each step reads and writes what its own subcommand does; steps run one after the other.
    /// Same fleet options as `step1`, plus --metrics-listen.
    Run(RunArgs),
    /// Evaluates a training run's checkpoints (LoRA adapters over one base, or full models) on
    /// the same steps in one fleet, then writes the report of all of them.
    ///
    /// Reads a sweep YAML: a run file (steps, shared keys, step1:...step4: sections) whose
    /// model_name_or_path is the base, plus `checkpoints` (a glob such as runs/x/checkpoint-*,
    /// ordered by step number, or a list of adapter/model folders). Each checkpoint's outputs go
    /// to <output_dir>/<checkpoint name>/ with the original layout. Finished checkpoints are
    /// skipped, so re-running resumes a stopped sweep and adding checkpoints evaluates only the
    /// new ones (--restart evaluates all again). Writes summary.md, summary.csv and report.html
    /// into output_dir at the end. Same fleet options as `step1`. See yamls/sweep.yaml.
    Sweep(StepArgs),
    /// Runs a long-lived coordinator that workers join and that accepts jobs (`evalfleet submit`).
    ///
    /// Workers dial it as they dial `evalfleet run --listen` (same binary, protocol and token).
    /// Submitted jobs (the YAMLs `evalfleet run` takes) queue and run through the same drivers,
    /// --max-jobs at a time, sharing the workers: a worker is offered first to the jobs needing a
    /// model it holds. Each job writes its files exactly as `evalfleet run` does, with its
    /// journal (a cancelled or interrupted job resumes when submitted again). `evalfleet status`
    /// shows queued, running and finished jobs (done/total, rate, ETA) and the workers;
    /// `evalfleet cancel` stops one. Prometheus metrics with --metrics-listen.
    Serve(crate::serve::cli::ServeArgs),
    /// Queues a job YAML on an `evalfleet serve` coordinator and prints its id.
    ///
    /// The YAML's text is sent; its paths are resolved on the coordinator's side.
    Submit(crate::serve::cli::SubmitArgs),
    /// Shows the jobs of an `evalfleet serve` coordinator (state, step, done/total, rate, ETA)
    /// and its workers (items, rate, leases, model loads, models held).
    Status(crate::serve::cli::StatusArgs),
    /// Cancels a queued or running job of an `evalfleet serve` coordinator (its leases are
    /// returned at once; its journal is kept, so submitting it again resumes).
    Cancel(crate::serve::cli::CancelArgs),
    /// Trains a CharacterEval reward model (ranking + regression losses) that step 4 can load.
    ///
    /// Runs `evalfleet-train train-rm YAML` (installed next to `evalfleet`, like the worker; or
    /// $EVALFLEET_TRAIN_BIN): start model, JSONL data, loss weights, LoRA or chosen layers,
    /// AdamW schedule, ranks, device (cpu, or cuda: one GPU per rank over NCCL) and dtype (f32 on
    /// the CPU, bf16 compute over f32 weights on GPUs), checkpoints every N steps with resume,
    /// held-out Pearson/Spearman. Shows a bar over the steps with the latest loss when stderr is a
    /// terminal and logs each evaluation and checkpoint. See yamls/train_rm.yaml.
    TrainRm {
        /// The train-rm YAML.
        yaml: PathBuf,
    },
    /// Recomputes metrics from existing output files, without a model.
    #[command(subcommand)]
    Score(ScoreCommand),
    /// Writes summary.md, summary.csv and report.html (the Result table, trend charts, step-3
    /// category bars, step-2 histograms) into an output directory, or into a sweep directory
    /// holding one output directory per checkpoint (checkpoint-* folders, ordered by step).
    ///
    /// Each checkpoint's change against the previous one is tested on the samples both have
    /// (paired bootstrap for steps 1, 2 and 4, McNemar's exact test for step 3; fixed seed):
    /// shown as `+2.10 [0.40, 3.90] *` (change, 95% interval, * when larger than noise). A
    /// train-rm metrics.jsonl in the directory or one of its subfolders adds the training and
    /// held-out curves.
    Report {
        /// An output directory (original layout), a sweep directory of checkpoint folders, or a
        /// train-rm output_dir.
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum ScoreCommand {
    /// ROUGE-1/2/L and BLEU-4 of a generated_predictions.jsonl, printed as JSON on stdout.
    ///
    /// Scores the `label` and `predict` strings exactly as saved in the file (the original tool
    /// scored the tokenizer's decoding, which can differ in spacing). With --write, also writes a
    /// predict_results.json-style file (metrics only, no speed keys).
    Text {
        /// The generated_predictions.jsonl to score.
        predictions: PathBuf,
        /// Also write the metrics to this JSON file (indent 4, sorted keys, like predict_results.json).
        #[arg(long)]
        write: Option<PathBuf>,
    },
}

/// A job YAML plus the options of the fleet that runs it.
#[derive(Debug, Args)]
pub struct StepArgs {
    /// The job YAML.
    pub yaml: PathBuf,
    #[command(flatten)]
    pub fleet: FleetArgs,
}

/// `evalfleet run`: the step options plus the metrics endpoint.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub step: StepArgs,
    /// Serve Prometheus metrics at http://ADDR/metrics while the job runs (items done per step,
    /// items per second per worker, leases outstanding, workers, model loads).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
}

/// `evalfleet step4`: the job YAML, the sub-step to start from, the fleet options.
#[derive(Debug, Args)]
pub struct Step4Args {
    /// The job YAML.
    pub yaml: PathBuf,
    /// Start at this sub-step and run the rest, reading the previous sub-step's file from
    /// output_dir: generate, transform, score (e.g. re-score existing generations with another
    /// reward model) or aggregate. Default: the YAML's `stage`, else generate.
    #[arg(long, value_parser = parse_stage)]
    pub stage: Option<crate::config::Step4Stage>,
    /// Run generation and reward scoring as two fleets one after the other (the original tool's
    /// sub-steps), instead of scoring each dialogue while the others are still being generated.
    /// The files are the same either way.
    #[arg(long)]
    pub stage_by_stage: bool,
    #[command(flatten)]
    pub fleet: FleetArgs,
}

fn parse_stage(s: &str) -> Result<crate::config::Step4Stage, String> {
    crate::config::Step4Stage::parse(s)
        .ok_or_else(|| format!("expected generate, transform, score or aggregate, got {s:?}"))
}

/// Where the workers come from.
#[derive(Debug, Args)]
pub struct FleetArgs {
    /// Local worker processes to start (default: one per visible GPU, else one CPU worker; 0 = only
    /// external workers, needs --listen).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Serve on ADDR (e.g. 0.0.0.0:50051) so external `evalfleet-worker --coordinator URL` can join;
    /// the token then comes from --token-file or EVALFLEET_TOKEN.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// File whose first line is the bearer token (with --listen; default: $EVALFLEET_TOKEN).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Serve the gRPC health service (no token) on ADDR from the start of the command until it
    /// exits, through every phase (planning, loading, scoring, writing, between steps), unlike
    /// the --listen port, which answers only while a fleet runs. Point Kubernetes probes here.
    #[arg(long, value_name = "ADDR")]
    pub health_listen: Option<SocketAddr>,
    /// The job's batch size: items per lease and sequences each worker runs together (default:
    /// the YAML's evalfleet key `batch_size`, else 8). Every lease carries it, so local and
    /// external workers alike use it (an external worker's own --batch-size can only lower it).
    /// Not `per_device_eval_batch_size`, which only enters `predict_steps_per_second`, as in the
    /// original tool.
    #[arg(long)]
    pub batch_size: Option<u32>,
    /// Start CPU workers even when GPUs are visible.
    #[arg(long)]
    pub cpu: bool,
    /// Tensor parallelism: each local worker is a group of K ranks, K GPUs with a process each
    /// (K must divide the visible GPUs), or K threads on the CPU; default: the YAML's
    /// `tensor_parallel_size`, else 1.
    #[arg(long, value_name = "K")]
    pub tensor_parallel_size: Option<usize>,
    /// Discard the result journal of an earlier, unfinished run in the output directory
    /// (<output_dir>/.evalfleet-journal/) and start over. Without it, a journal of the same job
    /// is resumed (only missing items are computed) and one of another job is refused.
    #[arg(long)]
    pub restart: bool,
    /// Serve --listen over TLS with this PEM certificate chain (and --tls-key). Local workers
    /// keep a plain loopback socket; external workers pass --tls-ca (or trust the system roots).
    #[arg(long, value_name = "FILE", requires_all = ["tls_key", "listen"])]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    #[command(flatten)]
    pub limits: LimitArgs,
}

impl FleetArgs {
    /// The fleet setup these options describe.
    pub fn setup(&self) -> FleetSetup {
        FleetSetup {
            workers: self.workers,
            tensor_parallel_size: self.tensor_parallel_size,
            listen: self.listen,
            token_file: self.token_file.clone(),
            batch_size: self.batch_size,
            cpu_only: self.cpu,
            worker_bin: None,
            worker_args: Vec::new(),
            options: crate::rpc::FleetOptions {
                tls: self
                    .tls_cert
                    .clone()
                    .zip(self.tls_key.clone())
                    .map(|(cert, key)| crate::rpc::tls::TlsFiles { cert, key }),
                limits: self.limits.limits(),
                sched: self.limits.sched(),
                restarts: self.limits.restarts(),
                ..Default::default()
            },
            journal: None,
            restart: self.restart,
            host: None,
            observer: None,
        }
    }
}

/// The binary's entry point: parse, log, dispatch, report errors.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    evalfleet_console::init_logging();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = runtime.block_on(async { crate::stop::install() }) {
        tracing::error!("cannot listen for SIGINT/SIGTERM: {e}");
        return ExitCode::FAILURE;
    }
    match runtime.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{}", evalfleet_console::error_text(e.as_ref()));
            let interrupted = matches!(
                e.downcast_ref::<crate::run::RunError>(),
                Some(crate::run::RunError::Interrupted { .. })
            );
            if interrupted {
                ExitCode::from(crate::stop::EXIT_INTERRUPTED)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

impl Command {
    /// The fleet options of a command that runs a fleet.
    fn fleet_args(&self) -> Option<&FleetArgs> {
        match self {
            Command::Step1(a) | Command::Step2(a) | Command::Step3(a) | Command::Sweep(a) => {
                Some(&a.fleet)
            }
            Command::Run(a) => Some(&a.step.fleet),
            Command::Step4(a) => Some(&a.fleet),
            _ => None,
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    // Bound before anything else and kept until the command returns (`--health-listen`).
    let _health = match command.fleet_args() {
        Some(FleetArgs {
            health_listen: Some(addr),
            limits,
            ..
        }) => {
            let server = crate::rpc::health::HealthServer::start(*addr, &limits.limits())
                .await
                .with_context(|| format!("--health-listen {addr}: cannot bind"))?;
            // On stdout like `listening on`, so that a supervisor (or a test) learns the real
            // port when asked for port 0.
            println!("health on {}", server.addr());
            Some(server)
        }
        _ => None,
    };
    match command {
        Command::Step1(args) => {
            let job = crate::config::load_step1(&args.yaml)?;
            run_job(&job, &args.fleet, None).await
        }
        Command::Step2(args) => {
            let cfg = crate::config::load_step2(&args.yaml)?;
            let job = crate::config::JobConfig {
                file: args.yaml.clone(),
                steps: vec![crate::config::StepConfig::Step2(cfg)],
                ignored_keys: Vec::new(),
            };
            run_job(&job, &args.fleet, None).await
        }
        Command::Step4(args) => {
            let cfg = crate::config::load_step4(&args.yaml)?;
            let options = crate::run::step4::Step4Options {
                stage: args.stage,
                stage_by_stage: args.stage_by_stage,
            };
            let job_fleet = JobFleet::for_job(&args.fleet, cfg.fleet_keys(), "step4", None)?;
            let result = crate::run::step4::run_step4_with(&cfg, &job_fleet.setup, options).await;
            job_fleet.stop(result.is_ok()).await;
            let files = result?.files;
            // The job (this one step) is written: its finished journals can go, as run_job's.
            crate::journal::remove_finished([cfg.output_dir.as_path()])?;
            for path in files {
                println!("wrote {}", path.display());
            }
            Ok(())
        }
        Command::Step3(args) => {
            let job = crate::config::load_step3(&args.yaml)?;
            run_job(&job, &args.fleet, None).await
        }
        Command::Run(RunArgs {
            step: args,
            metrics_listen,
        }) => {
            let job = crate::config::load_job(&args.yaml)?;
            // Kept until the job ends: dropping it stops the endpoint.
            let metrics = crate::serve::cli::run_metrics(metrics_listen).await?;
            run_job(&job, &args.fleet, metrics.as_ref().map(|(_, m)| m.clone())).await
        }
        Command::Sweep(args) => {
            let cfg = crate::sweep::load_sweep(&args.yaml)?;
            let keys = cfg.fleet_keys()?;
            let job_fleet = JobFleet::for_job(&args.fleet, keys, "sweep", None)?;
            let result = crate::sweep::run_sweep(&cfg, &job_fleet.setup).await;
            job_fleet.stop(result.is_ok()).await;
            let report = match result {
                Ok(report) => report,
                // A RunError stays one, so that an interrupted sweep exits as a stopped run.
                Err(crate::sweep::SweepError::Run(e)) => return Err(e.into()),
                Err(e) => return Err(e.into()),
            };
            for path in [
                &report.report.summary_md,
                &report.report.summary_csv,
                &report.report.report_html,
            ] {
                println!("wrote {}", path.display());
            }
            Ok(())
        }
        Command::Serve(args) => crate::serve::cli::serve(args).await,
        Command::Submit(args) => crate::serve::cli::submit(args).await,
        Command::Status(args) => crate::serve::cli::status(args).await,
        Command::Cancel(args) => crate::serve::cli::cancel(args).await,
        Command::TrainRm { yaml } => train_rm(&yaml),
        Command::Report { dir } => {
            let files = crate::report::build_report(&dir)?;
            for path in [&files.summary_md, &files.summary_csv, &files.report_html] {
                println!("wrote {}", path.display());
            }
            Ok(())
        }
        Command::Score(ScoreCommand::Text { predictions, write }) => {
            let json = crate::run::score::score_text(&predictions, write.as_deref())?;
            println!("{json}");
            Ok(())
        }
    }
}

/// Runs `job` on one fleet for all its steps and prints the files written.
async fn run_job(
    job: &crate::config::JobConfig,
    fleet: &FleetArgs,
    metrics: Option<std::sync::Arc<crate::serve::metrics::Metrics>>,
) -> anyhow::Result<()> {
    let job_fleet = JobFleet::for_job(fleet, job.fleet_keys(), "run", metrics)?;
    let result = crate::run::run_job(job, &job_fleet.setup).await;
    job_fleet.stop(result.is_ok()).await;
    for path in result? {
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// A command's fleet for its whole job ([`crate::serve::job_fleet`]) and the setup whose steps
/// attach to it.
struct JobFleet {
    setup: FleetSetup,
    fleet: std::sync::Arc<crate::serve::job_fleet::JobFleet>,
}

impl JobFleet {
    /// Starts the fleet the command line and the job's fleet `keys` ask for (the workers and
    /// tensor parallelism of the whole job; each step still merges its own batch size).
    fn for_job(
        args: &FleetArgs,
        keys: crate::config::FleetKeys,
        label: &str,
        metrics: Option<std::sync::Arc<crate::serve::metrics::Metrics>>,
    ) -> anyhow::Result<JobFleet> {
        let cli = args.setup();
        let shaped = cli.merged_with(crate::config::FleetKeys {
            batch_size: None,
            ..keys
        });
        let fleet = crate::serve::job_fleet::JobFleet::new(&shaped, label, metrics);
        let mut setup = cli;
        setup.workers = shaped.workers;
        setup.tensor_parallel_size = shaped.tensor_parallel_size;
        setup.host = Some(fleet.clone());
        Ok(JobFleet { setup, fleet })
    }

    /// Ends the fleet: the workers are told to exit once, now.
    async fn stop(&self, ok: bool) {
        self.fleet.stop(ok).await;
    }
}

/// `evalfleet train-rm`: the trainer lives in the worker crate (it needs the models), so this runs
/// its binary and passes its exit status on.
fn train_rm(yaml: &std::path::Path) -> anyhow::Result<()> {
    let bin = match std::env::var_os("EVALFLEET_TRAIN_BIN") {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()?
            .with_file_name(format!("evalfleet-train{}", std::env::consts::EXE_SUFFIX)),
    };
    if !bin.is_file() {
        anyhow::bail!(
            "{}: the trainer binary is missing; build it with `cargo build --release -p evalfleet-worker --bin evalfleet-train` or set EVALFLEET_TRAIN_BIN",
            bin.display()
        );
    }
    let status = std::process::Command::new(&bin)
        .arg("train-rm")
        .arg(yaml)
        .status()
        .map_err(|e| anyhow::anyhow!("{}: {e}", bin.display()))?;
    if !status.success() {
        anyhow::bail!("train-rm failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod limit_args_tests {
    use clap::Parser;

    use super::{Cli, Command};
    use crate::rpc::limits::Limits;

    /// `serve` takes the same limit options as `run` and the steps, with the same defaults.
    #[test]
    fn serve_and_run_take_the_same_limit_options() {
        let serve = Cli::try_parse_from([
            "evalfleet",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--max-messages-per-second",
            "5",
            "--max-connections-per-client",
            "0",
        ])
        .unwrap();
        let Command::Serve(args) = serve.command else {
            panic!("parsed as serve")
        };
        assert_eq!(args.limits.limits(), Limits::from_rates(20.0, 5.0, 0));
        let run = Cli::try_parse_from(["evalfleet", "run", "job.yaml"]).unwrap();
        let Command::Run(args) = run.command else {
            panic!("parsed as run")
        };
        assert_eq!(args.step.fleet.limits.limits(), Limits::default());
    }
}
