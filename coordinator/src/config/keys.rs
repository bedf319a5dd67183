//! The YAML keys evalfleet knows: the ones a step applies, the LLaMA-Factory / HF training keys
//! that are accepted but have no effect here, and "did you mean" suggestions for the rest.

/// Keys step 1 applies (LLaMA-Factory v0.7.1 names, plus evalfleet's own `dtype`, `batch_size`,
/// `workers`).
pub const STEP1_KEYS: &[&str] = &[
    // model
    "model_name_or_path",
    "adapter_name_or_path",
    "finetuning_type",
    "dtype",
    // data
    "dataset_dir",
    "dataset",
    "template",
    "cutoff_len",
    "reserved_label_len",
    "max_samples",
    // output
    "output_dir",
    "per_device_eval_batch_size",
    // generation
    "do_sample",
    "temperature",
    "top_p",
    "top_k",
    "num_beams",
    "max_new_tokens",
    "repetition_penalty",
    "length_penalty",
    "seed",
    // fleet
    "batch_size",
    "workers",
    "tensor_parallel_size",
];

/// LLaMA-Factory (ModelArguments, DataArguments, FinetuningArguments) and HF
/// Seq2SeqTrainingArguments keys that a seed YAML may carry but that change nothing in an
/// evaluation here: training, caching, multiprocessing, quantisation and kernel choices. They
/// are accepted and reported once as ignored.
pub const IGNORED_KEYS: &[&str] = &[
    // what the original tool always did anyway
    "stage",
    "do_predict",
    "predict_with_generate",
    "do_train",
    "do_eval",
    // caches and preprocessing processes of `datasets`
    "overwrite_cache",
    "preprocessing_num_workers",
    "overwrite_output_dir",
    "cache_dir",
    "tokenized_path",
    "streaming",
    "buffer_size",
    "split",
    "mix_strategy",
    "interleave_probs",
    "val_size",
    "packing",
    "train_on_prompt",
    "ignore_pad_token_for_loss",
    // beam count of the trainer: overridden by `num_beams` in LF's gen_kwargs
    "eval_num_beams",
    "generation_num_beams",
    "generation_max_length",
    // superseded by max_new_tokens (LF drops max_length when max_new_tokens > 0)
    "max_length",
    // model loading details of the Python stack
    "quantization_bit",
    "quantization_type",
    "double_quantization",
    "quantization_device_map",
    "flash_attn",
    "shift_attn",
    "rope_scaling",
    "use_unsloth",
    "use_fast_tokenizer",
    "split_special_tokens",
    "resize_vocab",
    "new_special_tokens",
    "model_revision",
    "low_cpu_mem_usage",
    "offload_folder",
    "use_cache",
    "hf_hub_token",
    "ms_hub_token",
    "infer_backend",
    "vllm_maxlen",
    "vllm_gpu_util",
    "vllm_enforce_eager",
    "upcast_layernorm",
    "upcast_lmhead_output",
    "print_param_status",
    // LoRA training hyper-parameters
    "lora_rank",
    "lora_alpha",
    "lora_dropout",
    "lora_target",
    "additional_target",
    "create_new_adapter",
    "use_rslora",
    "use_dora",
    "plot_loss",
    // trainer settings that only matter for training or for the Python process
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "lr_scheduler_type",
    "warmup_ratio",
    "warmup_steps",
    "weight_decay",
    "max_grad_norm",
    "logging_steps",
    "logging_dir",
    "save_steps",
    "save_strategy",
    "save_total_limit",
    "eval_steps",
    "evaluation_strategy",
    "eval_strategy",
    "resume_from_checkpoint",
    "bf16",
    "fp16",
    "pure_bf16",
    "ddp_timeout",
    "deepspeed",
    "report_to",
    "run_name",
    "remove_unused_columns",
    "dataloader_num_workers",
    "include_num_input_tokens_seen",
];

/// Whether `key` is accepted-but-ignored.
pub fn is_ignored(key: &str) -> bool {
    IGNORED_KEYS.contains(&key)
}

/// The known key closest to `unknown`, if one is close enough to be a plausible typo.
pub fn suggest<'a>(unknown: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let unknown_lower = unknown.to_lowercase();
    known
        .into_iter()
        .map(|k| (strsim::jaro_winkler(&unknown_lower, k), k))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_key_is_both_applied_and_ignored() {
        for key in STEP1_KEYS {
            assert!(!is_ignored(key), "{key}");
        }
    }

    #[test]
    fn suggests_near_misses_only() {
        let known = STEP1_KEYS.iter().copied();
        assert_eq!(suggest("cutof_len", known.clone()), Some("cutoff_len"));
        assert_eq!(suggest("max_sample", known.clone()), Some("max_samples"));
        assert_eq!(suggest("Temperature", known.clone()), Some("temperature"));
        assert_eq!(suggest("zzzz", known), None);
    }
}
