//! evalfleet coordinator: reads job YAMLs, plans work items, leases shards of them to workers over
//! gRPC, collects one result per item, computes the metrics and writes the original tool's files.
//!
//! - [`config`]: job YAMLs (the seed's step keys), defaults, unknown-key suggestions.
//! - [`datasets`]: `dataset_info.json`, alpaca and sharegpt files, `max_samples`.
//! - [`metrics`]: ROUGE (jieba + rouge-chinese semantics) and BLEU-4 (NLTK semantics), bit-compatible.
//! - [`output`]: writers that reproduce the Python tool's JSON formatting, written atomically.

pub mod config;
pub mod datasets;
pub mod metrics;
pub mod output;
