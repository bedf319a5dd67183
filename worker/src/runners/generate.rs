//! The generate runner (step 1 and step 4's replies, docs/FIDELITY.md §1.6, §1.7): each item's
//! conversation becomes a [`GenRequest`] (prompt built with the lease's template and truncation,
//! the lease's sampling settings), the engine generates them in batches, and each output is
//! decoded as LLaMA-Factory saves and scores it.

use std::collections::HashSet;

use evalfleet_proto::v1 as pb;
use pb::item_result::Outcome;
use pb::work_item::Payload;

use super::{LeaseKind, Results, items_of, messages};
use crate::engine::{self, GenOptions, GenOutput, GenRequest, SamplingParams};
use crate::models::Decoder;
use crate::tokenize::{PromptBuilder, TextTokenizer, clean_up_tokenization};
use crate::{Error, Result};

/// What every item of a generate lease shares, from its protobuf.
struct Settings {
    /// Prompt tokens kept (LLaMA-Factory's `cutoff_len`).
    cutoff_len: usize,
    /// Label tokens reserved within `cutoff_len`.
    reserved_label_len: usize,
    sampling: SamplingParams,
    max_new_tokens: usize,
    seed: u64,
}

impl Settings {
    fn of(lease: &pb::Lease) -> Result<Settings> {
        let params = lease.generation.ok_or_else(|| {
            Error::Unsupported(format!(
                "lease {} has no generation parameters",
                lease.lease_id
            ))
        })?;
        let prompt = lease.prompt.clone().unwrap_or_default();
        Ok(Settings {
            // 0 means "no truncation"; LF's arithmetic runs in i64, so stay far below its range.
            cutoff_len: match prompt.cutoff_len {
                0 => i32::MAX as usize,
                n => n as usize,
            },
            reserved_label_len: prompt.reserved_label_len.max(1) as usize,
            sampling: SamplingParams {
                do_sample: params.do_sample,
                temperature: params.temperature,
                top_p: params.top_p,
                top_k: params.top_k as usize,
                repetition_penalty: params.repetition_penalty,
            },
            max_new_tokens: params.max_new_tokens as usize,
            seed: params.seed,
        })
    }
}

/// Generates every item of `lease` with `model`, its prompts built by `builder` (`config_eos`:
/// the model's generation_config.json stop ids, added to the template's), sending each result
/// as soon as it is decoded. Returns the number of new tokens.
pub fn run<D: Decoder>(
    model: &D,
    builder: &PromptBuilder,
    config_eos: &[u32],
    lease: &pb::Lease,
    opts: &GenOptions,
    results: &mut Results,
) -> Result<usize> {
    let settings = Settings::of(lease)?;
    let stop_ids: HashSet<u32> = builder
        .stop_ids()
        .iter()
        .chain(config_eos)
        .copied()
        .collect();
    let items = items_of(lease, LeaseKind::Generate, results, |p| match p {
        Payload::Generate(g) => Some(g),
        _ => None,
    });
    let mut jobs = Vec::with_capacity(items.len());
    for (item_id, item) in items {
        match prepare(
            item_id,
            item,
            builder,
            &settings,
            &stop_ids,
            model.vocab_size(),
        ) {
            Ok(job) => jobs.push(job),
            Err(e) => results.failed(item_id, &e),
        }
    }
    // The engine takes the requests by slice; keep the labels beside them, not a copy of each.
    let (requests, labels): (Vec<GenRequest>, Vec<Vec<u32>>) =
        jobs.into_iter().map(|j| (j.request, j.label_ids)).unzip();
    let mut new_tokens = 0usize;
    engine::generate_each(model, &requests, opts, &mut |i, out| {
        new_tokens += out.tokens.len();
        let request = &requests[i];
        match decode(builder.tokenizer(), request, &labels[i], &out) {
            Ok(result) => results.done(&request.item_id, Outcome::Generate(result)),
            Err(e) => results.failed(&request.item_id, &e),
        }
    })?;
    Ok(new_tokens)
}

/// One runnable item: its generation request and the label ids to decode with the prediction.
struct Job {
    request: GenRequest,
    label_ids: Vec<u32>,
}

/// Builds the item's prompt and request; any error here is the item's own.
fn prepare(
    item_id: &str,
    item: &pb::GenerateItem,
    builder: &PromptBuilder,
    settings: &Settings,
    stop_ids: &HashSet<u32>,
    vocab: usize,
) -> Result<Job> {
    let fail = |message: String| Error::Item {
        item: item_id.to_string(),
        message,
    };
    let turns = messages(&item.messages);
    let built = builder.build(
        &turns,
        &item.system,
        settings.cutoff_len,
        settings.reserved_label_len,
    )?;
    if built.prompt_ids.is_empty() {
        return Err(fail(
            "the prompt is empty after templating and truncation".into(),
        ));
    }
    if let Some(&id) = built.prompt_ids.iter().find(|&&id| id as usize >= vocab) {
        return Err(fail(format!(
            "prompt token id {id} is outside the model's vocabulary of {vocab} (a template token the \
             model was not trained with?)"
        )));
    }
    settings.sampling.validate().map_err(fail)?;
    let request = GenRequest {
        item_id: item_id.to_string(),
        prompt_ids: built.prompt_ids,
        stop_ids: stop_ids.clone(),
        max_new_tokens: settings.max_new_tokens,
        sampling: settings.sampling,
        seed: settings.seed,
    };
    Ok(Job {
        request,
        label_ids: built.label_ids,
    })
}

/// Decodes as LLaMA-Factory does: saved predictions with clean-up of spaces, saved labels
/// without, and both with the tokenizer's default for the metrics; special tokens skipped.
/// Each id list is decoded once; the clean-up is applied to the text as the settings ask.
fn decode(
    tokenizer: &TextTokenizer,
    request: &GenRequest,
    label_ids: &[u32],
    out: &GenOutput,
) -> Result<pb::GenerateResult> {
    let label = tokenizer.decode(label_ids, true, Some(false))?;
    let predict_raw = tokenizer.decode(&out.tokens, true, Some(false))?;
    let predict = clean_up_tokenization(&predict_raw);
    let (label_for_metrics, predict_for_metrics) = if tokenizer.clean_up_tokenization_spaces() {
        (clean_up_tokenization(&label), predict.clone())
    } else {
        (label.clone(), predict_raw)
    };
    Ok(pb::GenerateResult {
        label,
        predict,
        label_for_metrics,
        predict_for_metrics,
        prompt_tokens: request.prompt_ids.len() as u32,
        new_tokens: out.tokens.len() as u32,
        finish_reason: out.finish.as_str().to_string(),
    })
}
