//! The training run: data loading and the held-out split, the step schedule (epochs of seeded
//! shuffles, batches of groups dealt to ranks and micro-batches), evaluation, checkpoints,
//! resume, and [`train_data_parallel`] with in-process ranks.
//!
//! Batch of step `s`: epoch `e = s / steps_per_epoch` shuffles the training groups with
//! `permutation(n, seed + e)`; the step takes the next `batch_groups` of them. Group `j` of the
//! batch goes to rank `j mod ranks`; each rank cuts its groups into `grad_accum` micro-batches.
//! The losses divide by the batch's group and response counts, so the update does not depend on
//! `ranks` or `grad_accum` (up to the order of float sums).

use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::Device;
use serde_json::{Value, json};

use super::adamw::{AdamW, linear_schedule};
use super::checkpoint::{self, TrainerState};
use super::config::TrainConfig;
use super::data::{Group, load_groups, permutation, split_by_context};
use super::loss::{GroupScores, LossNorm, batch_loss};
use super::metrics::{pearson, spearman};
use super::params::TrainableRm;
use super::step::{MicroBatch, train_step};
use crate::collective::{Collective, LocalCollective};
use crate::device::parse_device;
use crate::score::reward::RewardScorer;
use crate::tokenize::TextTokenizer;
use crate::{Error, Result};

/// What a finished (or stopped) run leaves.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    /// The last checkpoint written (`None` when stopped before any).
    pub checkpoint: Option<PathBuf>,
    pub steps: u64,
    /// The last held-out evaluation.
    pub eval: Option<Value>,
}

/// Encoded training and held-out groups.
pub struct Dataset {
    pub train: Vec<Group>,
    pub eval: Vec<Group>,
}

/// Loads and encodes the data of `cfg` with the base model's tokenizer.
pub fn load_dataset(cfg: &TrainConfig) -> Result<Dataset> {
    // The base may lack a score head (the trainer adds one), so the scorer is built over the
    // trainer's view of the weights rather than loaded.
    let base = TrainableRm::load(&cfg.model, &[], &Device::Cpu)?;
    let tokenizer = TextTokenizer::from_hf_dir(&cfg.model)?;
    let scorer = RewardScorer::new(base.scoring_model()?, tokenizer, &cfg.model)?;
    let max_len = if cfg.max_length == 0 {
        scorer.model().max_length()
    } else {
        cfg.max_length
    };
    let groups = load_groups(&cfg.train_data, &scorer, max_len)?;
    let (train, eval) = match &cfg.eval_data {
        Some(p) => (groups, load_groups(p, &scorer, max_len)?),
        None => split_by_context(groups, cfg.eval_fraction, cfg.seed),
    };
    if train.is_empty() {
        return Err(Error::bad_file(
            &cfg.train_data,
            "no training groups left after the held-out split",
        ));
    }
    Ok(Dataset { train, eval })
}

/// Steps per epoch and in all.
fn schedule(cfg: &TrainConfig, n_groups: usize) -> (u64, u64) {
    let per_epoch = n_groups.div_ceil(cfg.batch_groups) as u64;
    let total = cfg.max_steps.unwrap_or(cfg.epochs * per_epoch);
    (per_epoch, total)
}

/// The indices of the training groups in the batch of `step`.
pub fn batch_indices(cfg: &TrainConfig, n_groups: usize, step: u64) -> Vec<usize> {
    let (per_epoch, _) = schedule(cfg, n_groups);
    let epoch = step / per_epoch;
    let order = permutation(n_groups, cfg.seed.wrapping_add(epoch));
    let start = ((step % per_epoch) as usize) * cfg.batch_groups;
    order[start..(start + cfg.batch_groups).min(n_groups)].to_vec()
}

/// This rank's micro-batches of a batch.
fn rank_micro_batches(
    groups: &[&Group],
    rank: usize,
    world: usize,
    accum: usize,
) -> Vec<MicroBatch> {
    let mine: Vec<&Group> = groups.iter().skip(rank).step_by(world).copied().collect();
    let mut micros = vec![MicroBatch::default(); accum];
    for (i, g) in mine.iter().enumerate() {
        micros[i * accum / mine.len().max(1)].push_group(g.seqs.clone(), g.scores.clone());
    }
    micros
}

/// Scores `groups` without gradients, `chunk` sequences per forward pass; returns the logits
/// of each group's responses.
pub fn group_logits(model: &TrainableRm, groups: &[Group], chunk: usize) -> Result<Vec<Vec<f32>>> {
    let seqs: Vec<&[u32]> = groups
        .iter()
        .flat_map(|g| g.seqs.iter().map(|s| &s[..]))
        .collect();
    let mut flat = Vec::with_capacity(seqs.len());
    for part in seqs.chunks(chunk.max(1)) {
        flat.extend(model.logits(part, false)?.to_vec1::<f32>()?);
    }
    let mut out = Vec::with_capacity(groups.len());
    let mut at = 0;
    for g in groups {
        out.push(flat[at..at + g.seqs.len()].to_vec());
        at += g.seqs.len();
    }
    Ok(out)
}

/// Held-out metrics: losses, per-dimension Pearson/Spearman of `σ·4+1` against the human
/// scores, pairwise ranking accuracy (ties in the prediction count half).
pub fn evaluate(model: &TrainableRm, groups: &[Group], cfg: &TrainConfig) -> Result<Value> {
    let logits = group_logits(model, groups, 16)?;
    let mut scored = Vec::new();
    let mut layout = Vec::new();
    for (g, l) in groups.iter().zip(&logits) {
        layout.push(GroupScores {
            offset: scored.len(),
            scores: g.scores.clone(),
        });
        scored.extend(l.iter().copied());
    }
    let n = scored.len();
    let t = candle_core::Tensor::from_vec(scored.clone(), n, &Device::Cpu)?;
    let norm = LossNorm {
        groups: groups.len(),
        items: n,
        w_ranking: cfg.loss.ranking,
        w_regression: cfg.loss.regression,
    };
    let loss = batch_loss(&t, &layout, &norm)?;
    let mut by_dim: std::collections::BTreeMap<&str, (Vec<f64>, Vec<f64>)> = Default::default();
    let (mut pairs, mut right) = (0usize, 0f64);
    for (g, l) in groups.iter().zip(&logits) {
        let e = by_dim.entry(&g.dimension).or_default();
        for (r, s) in l.iter().zip(&g.scores) {
            e.0.push(1.0 / (1.0 + (-*r as f64).exp()) * 4.0 + 1.0);
            e.1.push(*s as f64);
        }
        for (a, sa) in g.scores.iter().enumerate() {
            for (b, sb) in g.scores.iter().enumerate() {
                if sa > sb {
                    pairs += 1;
                    right += if l[a] > l[b] {
                        1.0
                    } else if l[a] == l[b] {
                        0.5
                    } else {
                        0.0
                    };
                }
            }
        }
    }
    let all: (Vec<f64>, Vec<f64>) = by_dim.values().fold(Default::default(), |mut acc, (p, h)| {
        acc.0.extend(p);
        acc.1.extend(h);
        acc
    });
    let finite = |x: f64| if x.is_finite() { json!(x) } else { Value::Null };
    Ok(json!({
        "loss": loss.ranking * cfg.loss.ranking + loss.regression * cfg.loss.regression,
        "loss_1": loss.ranking,
        "loss_2": loss.regression,
        "pairwise_accuracy": if pairs > 0 { json!(right / pairs as f64) } else { Value::Null },
        "pairs": pairs,
        "responses": n,
        "pearson": by_dim.iter().map(|(d, (p, h))| (d.to_string(), finite(pearson(p, h)))).collect::<serde_json::Map<_, _>>(),
        "spearman": by_dim.iter().map(|(d, (p, h))| (d.to_string(), finite(spearman(p, h)))).collect::<serde_json::Map<_, _>>(),
        "pearson_all": finite(pearson(&all.0, &all.1)),
        "spearman_all": finite(spearman(&all.0, &all.1)),
    }))
}

/// Appends one JSON line to `metrics.jsonl`.
fn log_metrics(path: &Path, line: &Value) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    writeln!(f, "{line}").map_err(|e| Error::io(path, e))
}

/// Keeps only the metrics lines of steps up to `step` (a resumed run redoes the later ones).
fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(Value::as_u64))
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(path, kept).map_err(|e| Error::io(path, e))
}

/// Runs (or resumes) training of `cfg` as one rank of `collective`; rank 0 evaluates, writes
/// metrics and checkpoints.
pub fn train(
    cfg: &TrainConfig,
    data: &Dataset,
    collective: &dyn Collective,
) -> Result<TrainOutcome> {
    let (rank, world) = (collective.rank(), collective.world_size());
    let device = if cfg.device == "cuda" {
        parse_device(&format!("cuda:{rank}"))?
    } else {
        parse_device(&cfg.device)?
    };
    let mut model = TrainableRm::load(&cfg.model, &cfg.trainable, &device)?;
    if let Some(lora) = &cfg.lora {
        model = model.with_lora(lora, &cfg.trainable, cfg.seed)?;
    }
    let dtype = cfg
        .compute_dtype()
        .map_err(|m| Error::Unsupported(format!("train-rm config: {m}")))?;
    model = model.with_compute_dtype(dtype)?;
    let mut opt = AdamW::new(cfg.adamw);
    let (_, total) = schedule(cfg, data.train.len());
    let metrics = cfg.output_dir.join("metrics.jsonl");
    std::fs::create_dir_all(&cfg.output_dir).map_err(|e| Error::io(&cfg.output_dir, e))?;
    let mut start = 0;
    let mut last_ckpt = None;
    if cfg.resume
        && let Some((dir, state)) = checkpoint::latest(&cfg.output_dir)
    {
        checkpoint::restore(&dir, &mut model, &mut opt)?;
        start = state.step;
        if rank == 0 {
            tracing::info!("resuming from {} (step {start})", dir.display());
        }
        last_ckpt = Some(dir);
    }
    if rank == 0 {
        tracing::info!(
            "training {}: {} groups ({} held out), {total} steps of {} groups, {world} rank(s), {dtype:?} on {}",
            cfg.model.display(),
            data.train.len(),
            data.eval.len(),
            cfg.batch_groups,
            cfg.device,
        );
    }
    collective.barrier()?;
    if rank == 0 {
        if start == 0 {
            // A fresh run (or `resume: false`) starts a fresh metrics file.
            let _ = std::fs::remove_file(&metrics);
        } else {
            truncate_metrics(&metrics, start)?;
        }
    }
    // Every rank starts from rank 0's weights.
    if world > 1 {
        for name in model.trainable() {
            let v = model.param(name)?;
            v.set(&collective.broadcast(v.as_tensor(), 0)?)?;
        }
    }
    let mut eval = None;
    let run_eval = |step: u64, eval: &mut Option<Value>| -> Result<()> {
        if rank == 0 && !data.eval.is_empty() {
            let mut m = evaluate(&model, &data.eval, cfg)?;
            m["step"] = json!(step);
            m["split"] = json!("eval");
            log_metrics(&metrics, &m)?;
            tracing::info!(
                "step {step}: held-out loss {:.4}, Spearman {:.3}, pairwise accuracy {:.3}",
                m["loss"].as_f64().unwrap_or(f64::NAN),
                m["spearman_all"].as_f64().unwrap_or(f64::NAN),
                m["pairwise_accuracy"].as_f64().unwrap_or(f64::NAN),
            );
            *eval = Some(m);
        }
        Ok(())
    };
    if start == 0 {
        run_eval(0, &mut eval)?;
    }
    // Rank 0's bar over the steps (hidden unless stderr is a terminal).
    let bar = (rank == 0).then(|| {
        let bar = evalfleet_console::ItemsBar::start_counting("train-rm", total, "steps");
        bar.set(start);
        bar
    });
    for step in start..total {
        if cfg.stop_after.is_some_and(|n| step - start >= n) {
            return Ok(TrainOutcome {
                checkpoint: last_ckpt,
                steps: step,
                eval,
            });
        }
        let idx = batch_indices(cfg, data.train.len(), step);
        let groups: Vec<&Group> = idx.iter().map(|&i| &data.train[i]).collect();
        let norm = LossNorm {
            groups: groups.len(),
            items: groups.iter().map(|g| g.seqs.len()).sum(),
            w_ranking: cfg.loss.ranking,
            w_regression: cfg.loss.regression,
        };
        let micros = rank_micro_batches(&groups, rank, world, cfg.grad_accum);
        let lr = linear_schedule(cfg.adamw.lr, step, cfg.warmup_steps, total);
        let loss = train_step(&model, &mut opt, &micros, &norm, lr, collective)?;
        let now = step + 1;
        if let Some(bar) = &bar {
            bar.set(now);
            bar.set_label(format!("train-rm loss {:.4}", loss.total));
        }
        if rank == 0 {
            log_metrics(
                &metrics,
                &json!({"step": now, "split": "train", "lr": lr,
                "loss": loss.total, "loss_1": loss.ranking, "loss_2": loss.regression}),
            )?;
        }
        if cfg.eval_every > 0 && now % cfg.eval_every == 0 && now < total {
            run_eval(now, &mut eval)?;
        }
        if (cfg.save_every > 0 && now % cfg.save_every == 0) || now == total {
            if rank == 0 {
                let state = TrainerState {
                    step: now,
                    total_steps: total,
                };
                let saved = checkpoint::save(
                    &cfg.output_dir,
                    &cfg.model,
                    &model,
                    &opt,
                    &state,
                    cfg.lora.as_ref(),
                )?;
                tracing::info!("step {now}: saved {}", saved.display());
                last_ckpt = Some(saved);
            }
            collective.barrier()?;
        }
    }
    if total > start {
        run_eval(total, &mut eval)?;
    }
    Ok(TrainOutcome {
        checkpoint: last_ckpt,
        steps: total,
        eval,
    })
}

/// Loads the data once and trains `cfg.ranks` data-parallel ranks as threads of this process:
/// over NCCL, one GPU each, when `device: cuda` in a build with the `nccl` feature; otherwise
/// reducing through host memory ([`LocalCollective`]). Returns rank 0's outcome.
pub fn train_data_parallel(cfg: &TrainConfig) -> Result<TrainOutcome> {
    let data = load_dataset(cfg)?;
    if cfg.ranks == 1 {
        return train(cfg, &data, &LocalCollective::group(1).remove(0));
    }
    // NCCL ranks join their group inside their own thread (joining blocks until all have),
    // through a fresh id file (rank 0 writes it).
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let id_file = std::env::temp_dir().join(format!(
        "evalfleet-train-nccl-{}-{stamp}.id",
        std::process::id()
    ));
    let locals: Vec<Option<LocalCollective>> = if nccl_ranks(cfg) {
        (0..cfg.ranks).map(|_| None).collect()
    } else {
        LocalCollective::group(cfg.ranks)
            .into_iter()
            .map(Some)
            .collect()
    };
    let results: Vec<Result<TrainOutcome>> = std::thread::scope(|s| {
        let handles: Vec<_> = locals
            .into_iter()
            .enumerate()
            .map(|(rank, local)| {
                let (data, id_file) = (&data, &id_file);
                s.spawn(move || match local {
                    // A failing rank (rank 0 alone writes metrics and checkpoints) stops the
                    // others instead of leaving them waiting in a collective.
                    Some(c) => c.run_rank(|c| train(cfg, data, c)),
                    None => {
                        let out = train_nccl_rank(cfg, data, rank, id_file);
                        if let Err(e) = &out {
                            // An NCCL collective cannot be interrupted: the other GPU ranks
                            // would wait for this one forever. End the process instead, as
                            // torchrun ends a group; the checkpoints on disk are whole (written
                            // to a temporary folder, then renamed) and a rerun resumes.
                            tracing::error!(
                                "rank {rank} failed: {}; exiting, since the other GPU ranks \
                                 cannot be stopped",
                                evalfleet_console::error_text(e)
                            );
                            std::process::exit(1);
                        }
                        out
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Unsupported("a training rank panicked".into())))
            })
            .collect()
    });
    let mut first = None;
    for r in results {
        let r = r?;
        first.get_or_insert(r);
    }
    first.ok_or_else(|| Error::Unsupported("no training rank ran".into()))
}

/// Whether the ranks are GPUs over NCCL (`device: cuda`, several ranks, feature `nccl`).
fn nccl_ranks(cfg: &TrainConfig) -> bool {
    cfg!(feature = "nccl") && cfg.ranks > 1 && cfg.device == "cuda"
}

/// Rank `rank` on GPU `rank`, joined to the others over NCCL, then [`train`].
#[cfg(feature = "nccl")]
fn train_nccl_rank(
    cfg: &TrainConfig,
    data: &Dataset,
    rank: usize,
    id_file: &Path,
) -> Result<TrainOutcome> {
    let device = parse_device(&format!("cuda:{rank}"))?;
    let timeout = std::time::Duration::from_secs(120);
    let coll = crate::collective::NcclCollective::join(rank, cfg.ranks, &device, id_file, timeout)?;
    let out = train(cfg, data, &coll);
    if rank == 0 {
        let _ = std::fs::remove_file(id_file);
    }
    out
}

#[cfg(not(feature = "nccl"))]
fn train_nccl_rank(
    _cfg: &TrainConfig,
    _data: &Dataset,
    rank: usize,
    _id_file: &Path,
) -> Result<TrainOutcome> {
    Err(Error::Unsupported(format!(
        "rank {rank}: NCCL ranks need a build with the `nccl` feature"
    )))
}
