//! `evalfleet-bench`: measures and checks the worker's model code outside the fleet.
//!
//! - `logits`: all-position logits of given token batches, written as safetensors, to compare with
//!   PyTorch/transformers on the same device (the GPU check does this on the lent GPU).
//! - `generate`: greedy generation of exactly N new tokens per prompt (stop tokens ignored) through
//!   the worker's engine; prints one JSON line shaped like scripts/bench/hf_generate.py's.
//! - `score-prefill`: prefill throughput (last-position logits only), the multiple-choice figure.
//! - `score-choices`: step-3 questions per second through `score::choice`, whole prompts against
//!   the shared-prefix cache, on items from scripts/bench/choice_items.py.
//! - `convert-gguf`: a GGUF file to an f32 HF folder (weights, config, tokenizer files).
//! - `train-grads`: one reward-model training batch's gradients against PyTorch's (the GPU
//!   check of bf16 training).
//! - `reward-scores`: a reward model's sigmoids on given ids (the GPU check of reward scoring).
//!
//! Prompts are token ids (a JSON file or random ids), so both sides of a comparison feed the model
//! exactly the same input and no tokenizer or chat template is timed.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use candle_core::{DType, Device, Tensor};
use clap::{Args, Parser, Subcommand, ValueEnum};
use evalfleet_tools::profile::SpanTimes;
use evalfleet_worker::device::{default_dtype, parse_device};
use evalfleet_worker::engine::{self, GenOptions, GenRequest, SamplingParams};
use evalfleet_worker::models::{
    self, DTypeChoice, Decoder, ForwardInput, LoadOptions, LoadedModel, LogitsAt, SourceKind,
    load_causal_lm,
};
use evalfleet_worker::score::choice;
use evalfleet_worker::tokenize::{
    ChatMessage, PromptBuilder, PromptStyle, TextTokenizer, get_template,
};
use rand_chacha::rand_core::{Rng, SeedableRng};
use serde::Deserialize;
use serde_json::json;

#[derive(Debug, Parser)]
#[command(
    name = "evalfleet-bench",
    version,
    about = "Benchmarks and parity checks of the worker's model code"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Logits at every position of token batches, saved as safetensors (one f32 tensor per batch).
    Logits {
        #[command(flatten)]
        model: ModelArgs,
        /// JSON object: name -> [[ids]] (equal-length rows) or {"ids", "mask"?, "positions"?}
        /// (left-padded rows: mask 1 = real token).
        #[arg(long)]
        tokens: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Greedy generation of exactly --new-tokens tokens per prompt; prints tokens/s as JSON.
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        prompts: PromptArgs,
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
        #[arg(long, default_value_t = 64)]
        new_tokens: usize,
        /// Run one short untimed generation first (CUDA: module loading and PTX JIT happen there);
        /// its time is reported as `warmup_seconds`.
        #[arg(long)]
        warmup: bool,
        /// Also write the generated ids (JSON list per prompt) to this file.
        #[arg(long)]
        save_ids: Option<PathBuf>,
    },
    /// Prefill throughput: one forward pass per batch with last-position logits only.
    ScorePrefill {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        prompts: PromptArgs,
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
        #[arg(long)]
        warmup: bool,
    },
    /// Renders chat conversations with the model's own chat template and tokenizer into token ids
    /// (a JSON list of id lists, the --prompt-ids format).
    Render {
        /// HF model folder or GGUF file (its tokenizer and chat template are used).
        #[arg(long)]
        model: PathBuf,
        /// JSON list of conversations, each a list of {"role", "content"}.
        #[arg(long)]
        prompts: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Reward-model (BaichuanCharRM-style) pairs per second, batched vs one at a time, on the
    /// same random inputs; prints both rates, their ratio and whether the scores are identical.
    Reward {
        /// Reward model folder (config.json + safetensors or .bin weights).
        #[arg(long)]
        model: PathBuf,
        /// `cpu` or `cuda:N`.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// `bf16` (the reference's, and the default) or `f32`.
        #[arg(long, default_value = "bf16")]
        dtype: String,
        #[arg(long, default_value_t = 32)]
        pairs: usize,
        /// Input lengths are drawn uniformly from [min_len, max_len] tokens.
        #[arg(long, default_value_t = 256)]
        min_len: usize,
        #[arg(long, default_value_t = 1024)]
        max_len: usize,
        /// Sequences per batched call (the worker's batch size).
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Rounds of both modes; the best time of each is reported.
        #[arg(long, default_value_t = 3)]
        repeats: usize,
    },
    /// The sigmoids of a reward model (either kind, chosen by config.json) on given inputs, each
    /// scored alone: one JSON line `{"model", "device", "dtype", "sigmoid": [..]}` (the device
    /// check compares them with PyTorch on the same device).
    RewardScores {
        /// Reward model folder (config.json + safetensors or .bin weights).
        #[arg(long)]
        model: PathBuf,
        /// JSON list of inputs, each a list of token ids (eos included).
        #[arg(long)]
        ids: PathBuf,
        /// `cpu` or `cuda:N`.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// `bf16` (the reference's, and the default) or `f32`.
        #[arg(long, default_value = "bf16")]
        dtype: String,
    },
    /// Step-3 questions per second through score::choice, without and with the shared-prefix
    /// cache on the same questions; prints both rates, their ratio and how far the results differ.
    ScoreChoices {
        #[command(flatten)]
        model: ModelArgs,
        /// JSON list of choice items: {"messages": [{"role", "content"}], "system"?,
        /// "choice_texts": [...], "shared_prefix_pairs"?} (scripts/bench/choice_items.py).
        #[arg(long)]
        items: PathBuf,
        /// LLaMA-Factory template name; empty = the model's chat template.
        #[arg(long, default_value = "")]
        template: String,
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
        #[arg(long, default_value_t = 0)]
        max_batch_tokens: usize,
    },
    /// Tensor-parallel and NCCL checks on one device (issue 8's device check (b) and (c)): logits
    /// and greedy generation of the model split over in-process ranks (threads, one shared
    /// device) against the unsplit model, and, in a build with `nccl`, NCCL at world size 1
    /// (collective primitives and the model through an NCCL communicator). One JSON line each.
    TpCheck {
        #[command(flatten)]
        model: ModelArgs,
        /// World sizes for the in-process ranks.
        #[arg(long, value_delimiter = ',', default_value = "2,4")]
        worlds: Vec<usize>,
        /// Tokens generated greedily by each configuration.
        #[arg(long, default_value_t = 16)]
        new_tokens: usize,
    },
    /// Converts a GGUF file into an f32 HF folder (model.safetensors, config.json, tokenizer files).
    ConvertGguf {
        #[arg(long)]
        gguf: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// One reward-model training batch's gradients against PyTorch's (goldens from
    /// scripts/goldens/train_rm_bf16_goldens.py): per loss case, one JSON line with both sides'
    /// losses and the worst relative L2 difference of a parameter's gradient.
    TrainGrads {
        /// The reward model folder the goldens were made from.
        #[arg(long)]
        model: PathBuf,
        /// The goldens' JSON (batch, loss cases, PyTorch's losses).
        #[arg(long)]
        goldens: PathBuf,
        /// PyTorch's gradients, safetensors named `<case>/<param>`.
        #[arg(long)]
        grads: PathBuf,
        /// `cpu` or `cuda:N`.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Compute dtype, f32 or bf16 (`auto`: the device's default); the weights and their
        /// gradients are f32 either way.
        #[arg(long, value_enum, default_value_t = DTypeArg::Bf16)]
        dtype: DTypeArg,
    },
}

#[derive(Debug, Args)]
struct ModelArgs {
    /// HF model folder, .gguf file, or a folder holding one .gguf file.
    #[arg(long)]
    model: PathBuf,
    /// `cpu` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Compute dtype; `auto` = f32 on the CPU, bf16 on a GPU.
    #[arg(long, value_enum, default_value_t = DTypeArg::Auto)]
    dtype: DTypeArg,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DTypeArg {
    Auto,
    F32,
    F16,
    Bf16,
}

#[derive(Debug, Args)]
struct PromptArgs {
    /// JSON list of prompts, each a list of token ids.
    #[arg(long, conflicts_with = "random_prompts")]
    prompt_ids: Option<PathBuf>,
    /// Instead of --prompt-ids: this many prompts of random token ids ...
    #[arg(long, requires = "prompt_len")]
    random_prompts: Option<usize>,
    /// ... each this long ...
    #[arg(long)]
    prompt_len: Option<usize>,
    /// ... drawn with this seed (ids below the model's vocabulary size).
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Set when `EVALFLEET_PROFILE` is: time per model span, printed after generate / score-prefill.
static PROFILE: OnceLock<SpanTimes> = OnceLock::new();

fn main() -> anyhow::Result<()> {
    init_tracing();
    match Cli::parse().cmd {
        Cmd::Logits { model, tokens, out } => logits(&model, &tokens, &out),
        Cmd::Generate {
            model,
            prompts,
            batch_size,
            new_tokens,
            warmup,
            save_ids,
        } => generate(
            &model,
            &prompts,
            batch_size,
            new_tokens,
            warmup,
            save_ids.as_deref(),
        ),
        Cmd::ScorePrefill {
            model,
            prompts,
            batch_size,
            warmup,
        } => score_prefill(&model, &prompts, batch_size, warmup),
        Cmd::Render {
            model,
            prompts,
            out,
        } => {
            let ids = render_prompts(&model, &prompts)?;
            std::fs::write(&out, serde_json::to_string(&ids)?)
                .with_context(|| format!("writing {}", out.display()))?;
            println!("{}", json!({"rendered": ids.len(), "out": out}));
            Ok(())
        }
        Cmd::ConvertGguf { gguf, out } => convert_gguf(&gguf, &out),
        Cmd::TrainGrads {
            model,
            goldens,
            grads,
            device,
            dtype,
        } => train_grads(&model, &goldens, &grads, &device, dtype),
        Cmd::TpCheck {
            model,
            worlds,
            new_tokens,
        } => tp_check::run(&model, &worlds, new_tokens),
        Cmd::ScoreChoices {
            model,
            items,
            template,
            batch_size,
            max_batch_tokens,
        } => score_choices(
            &model,
            &items,
            &template,
            choice::ScoreOptions {
                max_batch: batch_size.max(1),
                max_batch_tokens,
            },
        ),
        Cmd::RewardScores {
            model,
            ids,
            device,
            dtype,
        } => reward_scores(&model, &ids, &device, &dtype),
        Cmd::Reward {
            model,
            device,
            dtype,
            pairs,
            min_len,
            max_len,
            batch_size,
            seed,
            repeats,
        } => reward_bench(
            &model,
            &device,
            &dtype,
            (pairs, min_len, max_len, seed),
            batch_size,
            repeats,
        ),
    }
}

/// Logs to stderr by RUST_LOG; with `EVALFLEET_PROFILE=1` also times every span of the model code
/// (see `evalfleet_tools::profile`; add `CUDA_LAUNCH_BLOCKING=1` for GPU time per span).
fn init_tracing() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{Layer, filter};
    let log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(env_filter());
    if std::env::var_os("EVALFLEET_PROFILE").is_some() {
        let times = PROFILE.get_or_init(SpanTimes::default).clone();
        let spans = times.with_filter(
            filter::Targets::new().with_target("evalfleet_worker", filter::LevelFilter::TRACE),
        );
        tracing_subscriber::registry().with(log).with(spans).init();
    } else {
        tracing_subscriber::registry().with(log).init();
    }
}

/// Starts the profile afresh (after a warm-up).
fn profile_reset() {
    if let Some(p) = PROFILE.get() {
        p.reset();
    }
}

/// Prints the span totals as one JSON line, when profiling.
fn profile_print(what: &str, batch_size: usize) {
    let Some(p) = PROFILE.get() else { return };
    let spans: serde_json::Map<String, serde_json::Value> = p
        .totals()
        .into_iter()
        .map(|(name, (count, time))| {
            (
                name.to_string(),
                json!({"count": count, "seconds": round3(time.as_secs_f64())}),
            )
        })
        .collect();
    let blocking = std::env::var("CUDA_LAUNCH_BLOCKING").is_ok_and(|v| v == "1");
    println!(
        "{}",
        json!({"profile": what, "batch_size": batch_size, "launch_blocking": blocking, "spans": spans})
    );
}

fn env_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into())
}

/// Loads the model on the requested device; returns it with the load time in seconds.
fn load(args: &ModelArgs) -> anyhow::Result<(LoadedModel, f64)> {
    load_rank(args, None)
}

/// [`load`] as one rank of a tensor-parallel group (`None`: the whole model).
fn load_rank(
    args: &ModelArgs,
    tp: Option<evalfleet_worker::collective::SharedCollective>,
) -> anyhow::Result<(LoadedModel, f64)> {
    let device = parse_device(&args.device)?;
    let dtype = match args.dtype {
        // On the CPU the loader's Auto keeps GGUF weights quantized (and HF folders f32), which is
        // what the worker does; mapping it to F32 would dequantize a GGUF model.
        DTypeArg::Auto if device.is_cpu() => DTypeChoice::Auto,
        DTypeArg::Auto => match default_dtype(&device) {
            DType::BF16 => DTypeChoice::BF16,
            DType::F16 => DTypeChoice::F16,
            _ => DTypeChoice::F32,
        },
        DTypeArg::F32 => DTypeChoice::F32,
        DTypeArg::F16 => DTypeChoice::F16,
        DTypeArg::Bf16 => DTypeChoice::BF16,
    };
    let start = Instant::now();
    let model = load_causal_lm(&args.model, &[], &LoadOptions { device, dtype, tp })
        .with_context(|| format!("loading {}", args.model.display()))?;
    synchronize(model.device())?;
    Ok((model, start.elapsed().as_secs_f64()))
}

mod tp_check {
    //! `evalfleet-bench tp-check`: see the subcommand's help.

    use std::sync::Arc;

    use evalfleet_worker::collective::{LocalCollective, SharedCollective};

    use super::*;

    /// All-position logits (f32, host) and the greedy continuations of one configuration.
    type Outputs = (Vec<f32>, Vec<Vec<u32>>);

    /// A fixed left-padded batch: row 0 full, row 1 with 5 pad columns.
    fn input(vocab: usize, device: &Device) -> anyhow::Result<ForwardInput> {
        let (rows, width, pad) = (2usize, 24usize, 5usize);
        let ids: Vec<u32> = (0..rows * width)
            .map(|i| ((i * 7919 + 13) % vocab) as u32)
            .collect();
        let mut mask = vec![1u8; rows * width];
        mask[width..width + pad].fill(0);
        let mut pos: Vec<u32> = (0..width as u32).collect();
        pos.extend(std::iter::repeat_n(0, pad).chain(0..(width - pad) as u32));
        Ok(ForwardInput {
            tokens: Tensor::from_vec(ids, (rows, width), device)?,
            positions: Tensor::from_vec(pos, (rows, width), device)?,
            key_mask: Some(Tensor::from_vec(mask, (rows, width), device)?),
        })
    }

    /// The model's logits at every position (f32, on the host) and its greedy continuations.
    fn outputs(model: &LoadedModel, new_tokens: usize) -> anyhow::Result<Outputs> {
        let mut cache = model.new_cache();
        let logits = model
            .forward(
                &input(model.vocab_size(), model.device())?,
                &mut cache,
                LogitsAt::All,
            )?
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let prompts: Vec<Vec<u32>> = (0..4)
            .map(|r| {
                (0..8 + 3 * r)
                    .map(|i| ((i * 31 + r * 101 + 7) % model.vocab_size()) as u32)
                    .collect()
            })
            .collect();
        let generated = engine::generate(
            model,
            &requests(&prompts, new_tokens),
            &GenOptions::default(),
        )?;
        Ok((logits, generated.into_iter().map(|o| o.tokens).collect()))
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    /// Runs every rank of `group` on its own thread; returns rank 0's outputs.
    fn run_group(
        args: &ModelArgs,
        group: Vec<SharedCollective>,
        new_tokens: usize,
    ) -> anyhow::Result<Outputs> {
        let results: Vec<anyhow::Result<Outputs>> = std::thread::scope(|s| {
            let handles: Vec<_> = group
                .into_iter()
                .map(|c| s.spawn(move || outputs(&load_rank(args, Some(c))?.0, new_tokens)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("a rank panicked")))
                })
                .collect()
        });
        let mut first = None;
        for (rank, r) in results.into_iter().enumerate() {
            let r = r.with_context(|| format!("rank {rank}"))?;
            first.get_or_insert(r);
        }
        first.context("an empty group")
    }

    fn report(check: &str, world: usize, dtype: DType, reference: &Outputs, got: &Outputs) {
        let same_tokens = reference.1 == got.1;
        println!(
            "{}",
            json!({"check": check, "world_size": world, "dtype": format!("{dtype:?}"),
                "max_abs_diff_logits": max_diff(&reference.0, &got.0), "greedy_tokens_identical": same_tokens})
        );
    }

    pub(super) fn run(args: &ModelArgs, worlds: &[usize], new_tokens: usize) -> anyhow::Result<()> {
        let (whole, _) = load(args)?;
        let dtype = whole.dtype();
        let reference = outputs(&whole, new_tokens)?;
        drop(whole);
        // A failing NCCL check must not hide the in-process results.
        if let Err(e) = nccl_world1(args, dtype, &reference, new_tokens) {
            println!(
                "{}",
                json!({"check": "nccl", "world_size": 1, "error": format!("{e:#}")})
            );
        }
        for &world in worlds {
            let group = LocalCollective::group(world)
                .into_iter()
                .map(|c| Arc::new(c) as SharedCollective)
                .collect();
            match run_group(args, group, new_tokens) {
                Ok(got) => report("tp_in_process", world, dtype, &reference, &got),
                Err(e) => println!(
                    "{}",
                    json!({"check": "tp_in_process", "world_size": world, "error": format!("{e:#}")})
                ),
            }
        }
        Ok(())
    }

    #[cfg(feature = "nccl")]
    fn nccl_world1(
        args: &ModelArgs,
        dtype: DType,
        reference: &Outputs,
        new_tokens: usize,
    ) -> anyhow::Result<()> {
        use evalfleet_worker::collective::{Collective, NcclCollective};
        let device = parse_device(&args.device)?;
        if device.is_cpu() {
            println!(
                "{}",
                json!({"check": "nccl_primitives", "skipped": "NCCL needs a GPU (--device cuda:N)"})
            );
            return Ok(());
        }
        let id_file =
            std::env::temp_dir().join(format!("evalfleet-nccl-{}.id", std::process::id()));
        let nccl =
            NcclCollective::join(0, 1, &device, &id_file, std::time::Duration::from_secs(30))?;
        // The primitives on their own: a sum over one rank and a broadcast return the input.
        let t = Tensor::arange(0f32, 64., &device)?.reshape((8, 8))?;
        let mut prim = serde_json::Map::new();
        for dt in [DType::F32, DType::BF16] {
            let x = t.to_dtype(dt)?;
            let sum = nccl
                .all_reduce_sum(&x)?
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let b = nccl
                .broadcast(&x, 0)?
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let want = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            prim.insert(format!("{dt:?}_all_reduce_ok"), json!(sum == want));
            prim.insert(format!("{dt:?}_broadcast_ok"), json!(b == want));
        }
        let msg: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        prim.insert(
            "broadcast_bytes_ok".into(),
            json!(nccl.broadcast_bytes(&msg, 0)? == msg),
        );
        prim.insert("barrier_ok".into(), json!(nccl.barrier().is_ok()));
        println!(
            "{}",
            json!({"check": "nccl_primitives", "world_size": 1, "results": prim})
        );
        let got = outputs(&load_rank(args, Some(Arc::new(nccl)))?.0, new_tokens)?;
        report("nccl_model", 1, dtype, reference, &got);
        let _ = std::fs::remove_file(&id_file);
        Ok(())
    }

    #[cfg(not(feature = "nccl"))]
    fn nccl_world1(_: &ModelArgs, _: DType, _: &Outputs, _: usize) -> anyhow::Result<()> {
        println!(
            "{}",
            json!({"check": "nccl_primitives", "skipped": "built without the nccl feature"})
        );
        Ok(())
    }
}

/// Waits for queued GPU work so a timer read afterwards covers it (no-op on the CPU).
fn synchronize(device: &Device) -> anyhow::Result<()> {
    device.synchronize()?;
    Ok(())
}

fn device_name(model: &LoadedModel) -> String {
    match model.device() {
        Device::Cpu => "cpu".into(),
        d => format!("{:?}", d.location()),
    }
}

// ---------------------------------------------------------------------------------------------
// logits

/// One named batch of the `--tokens` file.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TokenBatch {
    Plain(Vec<Vec<u32>>),
    Padded {
        ids: Vec<Vec<u32>>,
        mask: Option<Vec<Vec<u8>>>,
        positions: Option<Vec<Vec<u32>>>,
    },
}

fn logits(args: &ModelArgs, tokens: &Path, out: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(tokens).with_context(|| format!("reading {}", tokens.display()))?;
    let batches: HashMap<String, TokenBatch> = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: expected a JSON object of name -> [[ids]] or {{ids, mask, positions}}",
            tokens.display()
        )
    })?;
    let (model, load_s) = load(args)?;
    let mut tensors = HashMap::new();
    let start = Instant::now();
    for (name, batch) in batches {
        let input = forward_input(&name, batch, model.device())
            .with_context(|| format!("{}: batch `{name}`", tokens.display()))?;
        let mut cache = model.new_cache();
        let logits = model.forward(&input, &mut cache, LogitsAt::All)?;
        tensors.insert(name, logits.to_dtype(DType::F32)?.to_device(&Device::Cpu)?);
    }
    let seconds = start.elapsed().as_secs_f64();
    candle_core::safetensors::save(&tensors, out)
        .with_context(|| format!("writing {}", out.display()))?;
    let line = json!({"side": "evalfleet", "device": device_name(&model), "dtype": format!("{:?}", model.dtype()),
        "batches": tensors.len(), "load_seconds": round3(load_s), "seconds": round3(seconds), "out": out});
    println!("{line}");
    Ok(())
}

/// Builds the decoder input of one batch; rows of a plain batch must have equal lengths.
fn forward_input(name: &str, batch: TokenBatch, device: &Device) -> anyhow::Result<ForwardInput> {
    let (ids, mask, positions) = match batch {
        TokenBatch::Plain(ids) => (ids, None, None),
        TokenBatch::Padded {
            ids,
            mask,
            positions,
        } => (ids, mask, positions),
    };
    ensure!(
        !ids.is_empty() && !ids[0].is_empty(),
        "batch `{name}` is empty"
    );
    let (rows, width) = (ids.len(), ids[0].len());
    ensure!(
        ids.iter().all(|r| r.len() == width),
        "batch `{name}`: rows of different lengths (pad them and give a mask)"
    );
    let positions = match (positions, &mask) {
        (Some(p), _) => p,
        (None, Some(m)) => m.iter().map(|r| positions_from_mask(r)).collect(),
        (None, None) => vec![(0..width as u32).collect(); rows],
    };
    ensure!(
        positions.len() == rows && positions.iter().all(|r| r.len() == width),
        "batch `{name}`: positions do not match ids"
    );
    let key_mask = match mask {
        Some(m) => {
            ensure!(
                m.len() == rows && m.iter().all(|r| r.len() == width),
                "batch `{name}`: mask does not match ids"
            );
            Some(Tensor::from_vec(m.concat(), (rows, width), device)?)
        }
        None => None,
    };
    Ok(ForwardInput {
        tokens: Tensor::from_vec(ids.concat(), (rows, width), device)?,
        positions: Tensor::from_vec(positions.concat(), (rows, width), device)?,
        key_mask,
    })
}

/// Position ids as transformers' generate computes them: cumulative mask - 1 (pads at 0 here;
/// their value does not matter, they are masked).
fn positions_from_mask(mask: &[u8]) -> Vec<u32> {
    let mut seen = 0u32;
    mask.iter()
        .map(|&m| {
            seen += u32::from(m != 0);
            seen.saturating_sub(1)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// generate / score-prefill

/// The prompts as token ids, from the file or drawn at random.
fn read_prompts(args: &PromptArgs, vocab: usize) -> anyhow::Result<Vec<Vec<u32>>> {
    let prompts: Vec<Vec<u32>> = match (&args.prompt_ids, args.random_prompts, args.prompt_len) {
        (Some(path), _, _) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| {
                format!("{}: expected a JSON list of token-id lists", path.display())
            })?
        }
        (None, Some(n), Some(len)) => {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed);
            (0..n)
                .map(|_| {
                    (0..len)
                        .map(|_| (rng.next_u64() % vocab as u64) as u32)
                        .collect()
                })
                .collect()
        }
        _ => bail!("give --prompt-ids FILE or --random-prompts N --prompt-len L"),
    };
    ensure!(!prompts.is_empty(), "no prompts");
    if let Some((i, bad)) = prompts
        .iter()
        .enumerate()
        .find_map(|(i, p)| p.iter().find(|&&t| t as usize >= vocab).map(|t| (i, *t)))
    {
        bail!("prompt {i}: token id {bad} is outside the model's vocabulary ({vocab})");
    }
    Ok(prompts)
}

fn generate(
    args: &ModelArgs,
    p: &PromptArgs,
    batch_size: usize,
    new_tokens: usize,
    warmup: bool,
    save_ids: Option<&Path>,
) -> anyhow::Result<()> {
    let (model, load_s) = load(args)?;
    let prompts = read_prompts(p, model.vocab_size())?;
    let opts = GenOptions {
        max_batch: batch_size.max(1),
        max_batch_tokens: 0,
    };
    let warmup_s = if warmup {
        let start = Instant::now();
        let few: Vec<Vec<u32>> = prompts.iter().take(batch_size.max(1)).cloned().collect();
        engine::generate(&model, &requests(&few, 4), &opts)?;
        synchronize(model.device())?;
        Some(round3(start.elapsed().as_secs_f64()))
    } else {
        None
    };
    let reqs = requests(&prompts, new_tokens);
    profile_reset();
    let start = Instant::now();
    let outputs = engine::generate(&model, &reqs, &opts)?;
    synchronize(model.device())?;
    let seconds = start.elapsed().as_secs_f64();
    profile_print("generate", batch_size);
    let generated: usize = outputs.iter().map(|o| o.tokens.len()).sum();
    if let Some(path) = save_ids {
        let ids: Vec<&Vec<u32>> = outputs.iter().map(|o| &o.tokens).collect();
        std::fs::write(path, serde_json::to_string(&ids)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let line = json!({"side": "evalfleet", "batch_size": batch_size, "prompts": prompts.len(),
        "new_tokens": generated, "seconds": round3(seconds), "tokens_per_second": round2(generated as f64 / seconds),
        "prompt_tokens": prompts.iter().map(Vec::len).sum::<usize>(), "device": device_name(&model),
        "dtype": format!("{:?}", model.dtype()), "load_seconds": round3(load_s), "warmup_seconds": warmup_s});
    println!("{line}");
    Ok(())
}

/// Greedy requests that never stop early: no stop ids, so each yields exactly `new_tokens`.
fn requests(prompts: &[Vec<u32>], new_tokens: usize) -> Vec<GenRequest> {
    prompts
        .iter()
        .enumerate()
        .map(|(i, ids)| GenRequest {
            item_id: format!("bench-{i}"),
            prompt_ids: ids.clone(),
            stop_ids: HashSet::new(),
            max_new_tokens: new_tokens,
            sampling: SamplingParams::greedy(),
            seed: 0,
        })
        .collect()
}

fn score_prefill(
    args: &ModelArgs,
    p: &PromptArgs,
    batch_size: usize,
    warmup: bool,
) -> anyhow::Result<()> {
    let (model, load_s) = load(args)?;
    let prompts = read_prompts(p, model.vocab_size())?;
    let batch_size = batch_size.max(1);
    let warmup_s = if warmup {
        let start = Instant::now();
        prefill_batch(&model, &prompts[..batch_size.min(prompts.len())])?;
        Some(round3(start.elapsed().as_secs_f64()))
    } else {
        None
    };
    profile_reset();
    let start = Instant::now();
    for chunk in prompts.chunks(batch_size) {
        prefill_batch(&model, chunk)?;
    }
    let seconds = start.elapsed().as_secs_f64();
    profile_print("prefill", batch_size);
    let tokens: usize = prompts.iter().map(Vec::len).sum();
    let line = json!({"side": "evalfleet", "mode": "prefill", "batch_size": batch_size, "prompts": prompts.len(),
        "prompt_tokens": tokens, "seconds": round3(seconds), "tokens_per_second": round2(tokens as f64 / seconds),
        "device": device_name(&model), "dtype": format!("{:?}", model.dtype()), "load_seconds": round3(load_s),
        "warmup_seconds": warmup_s});
    println!("{line}");
    Ok(())
}

/// One left-padded forward pass returning last-position logits, copied to the host (as scoring
/// does) so the timer covers the whole pass.
fn prefill_batch(model: &LoadedModel, rows: &[Vec<u32>]) -> anyhow::Result<()> {
    let width = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(rows.len() * width);
    let mut mask = Vec::with_capacity(rows.len() * width);
    let mut pos = Vec::with_capacity(rows.len() * width);
    for r in rows {
        let pad = width - r.len();
        ids.extend(std::iter::repeat_n(0u32, pad).chain(r.iter().copied()));
        mask.extend(std::iter::repeat_n(0u8, pad).chain(std::iter::repeat_n(1u8, r.len())));
        pos.extend(std::iter::repeat_n(0u32, pad).chain(0..r.len() as u32));
    }
    let dev = model.device();
    let padded = mask.contains(&0);
    let input = ForwardInput {
        tokens: Tensor::from_vec(ids, (rows.len(), width), dev)?,
        positions: Tensor::from_vec(pos, (rows.len(), width), dev)?,
        key_mask: if padded {
            Some(Tensor::from_vec(mask, (rows.len(), width), dev)?)
        } else {
            None
        },
    };
    let mut cache = model.new_cache();
    let logits = model.forward(&input, &mut cache, LogitsAt::Last)?;
    let _host: Vec<f32> = logits
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// render / convert-gguf

/// Token ids of each conversation in `prompts` (JSON list of message lists) rendered with the
/// model's chat template and `add_generation_prompt`, as the worker builds prompts for a job
/// without a LLaMA-Factory `template`.
fn render_prompts(model: &Path, prompts: &Path) -> anyhow::Result<Vec<Vec<u32>>> {
    let text = std::fs::read_to_string(prompts)
        .with_context(|| format!("reading {}", prompts.display()))?;
    let conversations: Vec<Vec<ChatMessage>> = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: expected a JSON list of [{{\"role\", \"content\"}}] lists",
            prompts.display()
        )
    })?;
    let tokenizer = match models::resolve_model_path(model)? {
        (SourceKind::HfFolder, dir) => TextTokenizer::from_hf_dir(&dir)?,
        (SourceKind::Gguf, file) => TextTokenizer::from_gguf_file(&file)?,
    };
    let builder = PromptBuilder::new(PromptStyle::ModelChatTemplate, &tokenizer)?;
    conversations
        .into_iter()
        .enumerate()
        .map(|(i, mut conv)| {
            // The builder renders all messages but the last (the reference answer) as the prompt.
            conv.push(ChatMessage::new("assistant", ""));
            let prompt = builder
                .build(&conv, "", usize::MAX / 4, 0)
                .with_context(|| format!("{}: conversation {i}", prompts.display()))?;
            Ok(prompt.prompt_ids)
        })
        .collect()
}

fn convert_gguf(gguf: &Path, out: &Path) -> anyhow::Result<()> {
    let cfg = evalfleet_worker::convert::gguf_to_hf_folder(gguf, out)
        .with_context(|| format!("converting {}", gguf.display()))?;
    println!(
        "{}",
        json!({"converted": gguf, "out": out, "architecture": cfg.architecture, "layers": cfg.layers, "vocab": cfg.vocab})
    );
    Ok(())
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_follow_the_mask_like_transformers() {
        assert_eq!(positions_from_mask(&[0, 0, 1, 1, 1]), vec![0, 0, 0, 1, 2]);
        assert_eq!(positions_from_mask(&[1, 1]), vec![0, 1]);
    }

    #[test]
    fn token_batches_parse_plain_and_padded_forms() {
        let json =
            r#"{"a": [[1, 2, 3]], "b": {"ids": [[0, 5], [6, 7]], "mask": [[0, 1], [1, 1]]}}"#;
        let batches: HashMap<String, TokenBatch> = serde_json::from_str(json).unwrap();
        let a = forward_input(
            "a",
            batches.into_iter().find(|(k, _)| k == "a").unwrap().1,
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(a.tokens.dims(), &[1, 3]);
        assert!(a.key_mask.is_none());
        assert_eq!(a.positions.to_vec2::<u32>().unwrap(), vec![vec![0, 1, 2]]);
        let b: TokenBatch =
            serde_json::from_str(r#"{"ids": [[0, 5], [6, 7]], "mask": [[0, 1], [1, 1]]}"#).unwrap();
        let b = forward_input("b", b, &Device::Cpu).unwrap();
        assert_eq!(
            b.positions.to_vec2::<u32>().unwrap(),
            vec![vec![0, 0], vec![0, 1]]
        );
        assert_eq!(
            b.key_mask.unwrap().to_vec2::<u8>().unwrap(),
            vec![vec![0, 1], vec![1, 1]]
        );
    }

    #[test]
    fn ragged_rows_without_a_mask_are_refused() {
        let bad = TokenBatch::Plain(vec![vec![1, 2], vec![3]]);
        let err = forward_input("x", bad, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("rows of different lengths"), "{err}");
    }

    #[test]
    fn requests_never_stop_early() {
        let reqs = requests(&[vec![1, 2], vec![3]], 7);
        assert!(
            reqs.iter()
                .all(|r| r.stop_ids.is_empty() && r.max_new_tokens == 7 && r.sampling.is_greedy())
        );
    }
}

// ---------------------------------------------------------------------------------------------
// reward

/// Scores each input of the JSON file `ids` alone with the reward model `dir`.
fn reward_scores(dir: &Path, ids: &Path, device: &str, dtype: &str) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(ids).with_context(|| format!("reading {}", ids.display()))?;
    let inputs: Vec<Vec<u32>> = serde_json::from_str(&text)
        .with_context(|| format!("{}: expected a JSON list of id lists", ids.display()))?;
    let dtype = evalfleet_worker::score::reward::reward_dtype(dtype)?;
    let model = models::RewardModel::load(dir, dtype, &parse_device(device)?)?;
    let sigmoid = inputs
        .iter()
        .map(|input| Ok(model.score_batch(std::slice::from_ref(input))?[0]))
        .collect::<anyhow::Result<Vec<f32>>>()?;
    println!(
        "{}",
        json!({"model": dir, "device": device, "dtype": format!("{dtype:?}"), "sigmoid": sigmoid})
    );
    Ok(())
}

/// Times the reward model on `pairs` random inputs (count, min and max length, seed): one call
/// per input, then `batch_size` inputs per call.
fn reward_bench(
    dir: &Path,
    device: &str,
    dtype: &str,
    (pairs, min_len, max_len, seed): (usize, usize, usize, u64),
    batch_size: usize,
    repeats: usize,
) -> anyhow::Result<()> {
    ensure!(
        pairs > 0 && min_len > 0 && min_len <= max_len,
        "need pairs > 0 and 0 < min_len <= max_len"
    );
    let dtype = evalfleet_worker::score::reward::reward_dtype(dtype)?;
    let model = models::BaichuanRewardModel::load(dir, dtype, &parse_device(device)?)?;
    let vocab = model.config().vocab as u64;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let inputs: Vec<Vec<u32>> = (0..pairs)
        .map(|_| {
            let len = min_len + (rng.next_u64() % (max_len - min_len + 1) as u64) as usize;
            (0..len).map(|_| (rng.next_u64() % vocab) as u32).collect()
        })
        .collect();
    let tokens: usize = inputs.iter().map(Vec::len).sum();
    // Alternating rounds, best time of each mode: a shared machine's load hits both alike.
    let (mut alone_s, mut batched_s) = (f64::INFINITY, f64::INFINITY);
    let (mut alone, mut batched) = (Vec::new(), Vec::new());
    for _ in 0..repeats.max(1) {
        let started = Instant::now();
        alone = inputs
            .iter()
            .map(|input| Ok(model.score_batch(std::slice::from_ref(input))?[0]))
            .collect::<anyhow::Result<Vec<f32>>>()?;
        alone_s = alone_s.min(started.elapsed().as_secs_f64());
        let started = Instant::now();
        batched = Vec::with_capacity(pairs);
        for chunk in inputs.chunks(batch_size.max(1)) {
            batched.extend(model.score_batch(chunk)?);
        }
        batched_s = batched_s.min(started.elapsed().as_secs_f64());
    }
    let identical = alone
        .iter()
        .zip(&batched)
        .all(|(a, b)| a.to_bits() == b.to_bits());
    println!(
        "{}",
        json!({
            "model": dir, "dtype": format!("{dtype:?}"), "pairs": pairs, "tokens": tokens,
            "batch_size": batch_size, "repeats": repeats,
            "one_at_a_time_pairs_per_s": pairs as f64 / alone_s,
            "batched_pairs_per_s": pairs as f64 / batched_s,
            "ratio_batched_over_one_at_a_time": alone_s / batched_s,
            "identical_scores": identical,
        })
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// score-choices

/// One question of the `--items` file (the fields of `ChoiceItem`).
#[derive(Debug, Deserialize)]
struct ChoiceItemJson {
    messages: Vec<ChatMessage>,
    #[serde(default)]
    system: String,
    choice_texts: Vec<String>,
    #[serde(default)]
    shared_prefix_pairs: u32,
}

/// Scores the items twice, each prompt whole and then with the prefix cache (from empty), and
/// compares rates and probabilities.
fn score_choices(
    args: &ModelArgs,
    items: &Path,
    template: &str,
    opts: choice::ScoreOptions,
) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(items).with_context(|| format!("reading {}", items.display()))?;
    let items: Vec<ChoiceItemJson> = serde_json::from_str(&text)
        .with_context(|| format!("{}: expected a JSON list of choice items", items.display()))?;
    let (model, load_s) = load(args)?;
    let tokenizer = TextTokenizer::from_model_path(&args.model)?;
    let style = if template.is_empty() {
        PromptStyle::ModelChatTemplate
    } else {
        PromptStyle::LlamaFactory(get_template(template)?)
    };
    let builder = PromptBuilder::new(style, &tokenizer)?;
    let jobs = items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let question = choice::ChoiceQuestion {
                messages: item
                    .messages
                    .iter()
                    .map(|m| evalfleet_worker::tokenize::ChatMessage::new(&m.role, &m.content))
                    .collect(),
                system: item.system.clone(),
                choice_texts: item.choice_texts.clone(),
                shared_prefix_pairs: item.shared_prefix_pairs as usize,
            };
            Ok(choice::prepare_job(
                &i.to_string(),
                &question,
                &builder,
                model.vocab_size(),
            )?)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let whole: Vec<choice::ChoiceJob> = jobs
        .iter()
        .map(|j| choice::ChoiceJob {
            prefix_ends: Vec::new(),
            ..j.clone()
        })
        .collect();
    // Each run starts from an empty prefix cache; returns seconds and probabilities.
    let mut cache = choice::PrefixCache::default();
    let mut run = |jobs: &[choice::ChoiceJob]| -> anyhow::Result<(f64, Vec<Vec<f32>>)> {
        let mut out = vec![Vec::new(); jobs.len()];
        cache.clear();
        let started = Instant::now();
        choice::score_jobs(&model, jobs, &opts, &mut cache, &mut |i, p| out[i] = p)?;
        synchronize(model.device())?;
        Ok((started.elapsed().as_secs_f64(), out))
    };
    let (whole_s, whole_p) = run(&whole)?;
    profile_reset();
    let (prefix_s, prefix_p) = run(&jobs)?;
    profile_print("score-choices (prefix cached)", opts.max_batch);
    let (hits, levels) = cache.stats();
    let argmax = |p: &[f32]| (0..p.len()).fold(0, |best, i| if p[i] > p[best] { i } else { best });
    let same_argmax = whole_p
        .iter()
        .zip(&prefix_p)
        .filter(|(a, b)| argmax(a) == argmax(b))
        .count();
    let max_diff = whole_p
        .iter()
        .flatten()
        .zip(prefix_p.iter().flatten())
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let n = jobs.len() as f64;
    let tokens: usize = jobs.iter().map(|j| j.prompt_ids.len()).sum();
    let prefix_tokens: usize = jobs.iter().map(choice::ChoiceJob::prefix_len).sum();
    println!(
        "{}",
        json!({
            "side": "evalfleet", "mode": "score-choices", "questions": jobs.len(),
            "prompt_tokens": tokens, "shared_prefix_tokens": prefix_tokens,
            "batch_size": opts.max_batch, "device": device_name(&model),
            "dtype": format!("{:?}", model.dtype()), "load_seconds": round3(load_s),
            "whole_seconds": round3(whole_s), "whole_questions_per_s": round2(n / whole_s),
            "prefix_seconds": round3(prefix_s), "prefix_questions_per_s": round2(n / prefix_s),
            "ratio_prefix_over_whole": round2(whole_s / prefix_s),
            "prefix_hits": hits, "prefix_levels_computed": levels,
            "same_argmax": same_argmax, "max_probability_difference": max_diff,
        })
    );
    Ok(())
}

/// `train-grads`: prints each case's [`GradReport`] as a JSON line, then the time taken.
///
/// [`GradReport`]: evalfleet_worker::train::check::GradReport
fn train_grads(
    model: &Path,
    goldens: &Path,
    grads: &Path,
    device: &str,
    dtype: DTypeArg,
) -> anyhow::Result<()> {
    let dev = parse_device(device)?;
    let dt = match dtype {
        DTypeArg::Auto => default_dtype(&dev),
        DTypeArg::F32 => DType::F32,
        DTypeArg::Bf16 => DType::BF16,
        DTypeArg::F16 => bail!("--dtype f16: training computes in f32 or bf16"),
    };
    let dtype = format!("{dt:?}").to_lowercase();
    let start = Instant::now();
    let reports =
        evalfleet_worker::train::check::gradient_reports(model, goldens, grads, &dev, dt)?;
    for r in &reports {
        let mut line = serde_json::to_value(r)?;
        line["check"] = json!("train-grads");
        line["device"] = json!(device);
        line["dtype"] = json!(dtype);
        line["worst_loss_error"] = json!(r.worst_loss_error());
        println!("{line}");
    }
    println!(
        "{}",
        json!({"check": "train-grads-time", "device": device, "dtype": dtype,
               "seconds": start.elapsed().as_secs_f64()})
    );
    Ok(())
}
