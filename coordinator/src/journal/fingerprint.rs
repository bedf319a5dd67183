//! The identity of a job, for deciding whether a journal on disk belongs to it: a few named,
//! human-readable parts (so a refusal can say *what* differs) and a SHA-256 over all of them.
//!
//! Parts: the step; the tasks and their item counts; the models (path, adapters, dtype, and a
//! signature of the files: size and modification time, so a checkpoint rewritten in place is a
//! different model, without reading gigabytes); the prompt and generation settings; any other lease
//! settings; and a digest of every work item's encoding. The items are what the data sets became
//! after selection and prompt planning, so they stand for the data set files: an edit that changes
//! any item is caught, one that changes nothing (rows beyond `max_samples`) lets the resume go on.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;
use std::time::UNIX_EPOCH;

use evalfleet_proto::v1 as pb;
use prost::Message;
use sha2::{Digest, Sha256};

use crate::sched::TaskSpec;

/// Named parts of a job's identity, in a fixed order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    pub parts: Vec<(String, String)>,
}

impl Fingerprint {
    /// The fingerprint of the job that runs `tasks` as step `step`.
    pub fn of(step: &str, tasks: &[TaskSpec]) -> Self {
        let tasks_part = tasks
            .iter()
            .map(|t| format!("{} ({} items)", t.name, t.items.len()))
            .collect::<Vec<_>>()
            .join(", ");
        let distinct = |f: &dyn Fn(&pb::Lease) -> String| {
            let set: BTreeSet<String> = tasks.iter().map(|t| f(&t.template)).collect();
            set.into_iter().collect::<Vec<_>>().join("; ")
        };
        let model = distinct(&|l| l.model.as_ref().map_or("none".into(), describe_model));
        let prompt = distinct(&|l| format!("{:?}", l.prompt));
        let generation = distinct(&|l| format!("{:?}", l.generation));
        let other = distinct(&|l| {
            let rest = pb::Lease {
                model: None,
                prompt: None,
                generation: None,
                ..l.clone()
            };
            short_hash(&rest.encode_to_vec())
        });
        let parts = [
            ("step", step.to_string()),
            ("tasks", tasks_part),
            ("model", model),
            ("prompt", prompt),
            ("generation", generation),
            ("other lease settings", other),
            ("items", items_digest(tasks)),
        ];
        Fingerprint {
            parts: parts.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        }
    }

    /// SHA-256 (hex) over every part.
    pub fn hash(&self) -> String {
        let mut h = Sha256::new();
        for (name, value) in &self.parts {
            h.update(name.as_bytes());
            h.update(b"=");
            h.update(value.as_bytes());
            h.update(b"\n");
        }
        hex(&h.finalize())
    }

    /// The parts that differ between `self` (on disk) and `now`: `(name, on disk, now)`.
    pub fn differences(&self, now: &Fingerprint) -> Vec<(String, String, String)> {
        let get = |f: &Fingerprint, name: &str| {
            f.parts
                .iter()
                .find(|(n, _)| n == name)
                .map_or_else(|| "(absent)".to_string(), |(_, v)| v.clone())
        };
        let names: BTreeSet<&str> = self
            .parts
            .iter()
            .chain(&now.parts)
            .map(|(n, _)| n.as_str())
            .collect();
        // Keep the canonical part order of `now` for the message.
        let mut ordered: Vec<&str> = now.parts.iter().map(|(n, _)| n.as_str()).collect();
        let extra: Vec<&str> = names.into_iter().filter(|n| !ordered.contains(n)).collect();
        ordered.extend(extra);
        ordered
            .into_iter()
            .filter_map(|name| {
                let (old, new) = (get(self, name), get(now, name));
                (old != new).then(|| (name.to_string(), old, new))
            })
            .collect()
    }
}

fn describe_model(m: &pb::ModelSpec) -> String {
    let mut s = format!(
        "{} [{}]",
        m.model_path,
        files_signature(Path::new(&m.model_path))
    );
    for a in &m.adapter_paths {
        let _ = write!(s, " + adapter {a} [{}]", files_signature(Path::new(a)));
    }
    let _ = write!(s, ", dtype {}", m.dtype);
    s
}

/// Size and modification time of a file; for a folder, a digest over its files' names, sizes
/// and times (top level: model folders are flat). Paths the coordinator cannot see (a fleet whose
/// workers mount the models) are "not visible here", which is stable across restarts.
fn files_signature(path: &Path) -> String {
    let stamp = |m: &std::fs::Metadata| {
        let t = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        format!("{} bytes, mtime {t}", m.len())
    };
    let Ok(meta) = std::fs::metadata(path) else {
        return "not visible here".into();
    };
    if !meta.is_dir() {
        return stamp(&meta);
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        return "folder not readable here".into();
    };
    let mut files: Vec<(String, String)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let m = e.metadata().ok().filter(|m| m.is_file())?;
            Some((e.file_name().to_string_lossy().into_owned(), stamp(&m)))
        })
        .collect();
    files.sort();
    let text: String = files.iter().map(|(n, s)| format!("{n}: {s}\n")).collect();
    format!(
        "{} files, digest {}",
        files.len(),
        short_hash(text.as_bytes())
    )
}

/// Digest of every task's name and items (each item's protobuf encoding, length-delimited).
fn items_digest(tasks: &[TaskSpec]) -> String {
    let mut h = Sha256::new();
    let mut count = 0;
    for t in tasks {
        h.update((t.name.len() as u64).to_le_bytes());
        h.update(t.name.as_bytes());
        for item in &t.items {
            h.update(item.encode_length_delimited_to_vec());
            count += 1;
        }
    }
    format!("{count} items, sha256 {}", &hex(&h.finalize())[..16])
}

/// A short digest of `text`, for a fingerprint part that stands for data too long to show.
pub fn digest_text(text: &str) -> String {
    format!("sha256 {}", short_hash(text.as_bytes()))
}

fn short_hash(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))[..16].to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(max_new_tokens: u32, questions: &[&str]) -> TaskSpec {
        TaskSpec {
            name: "step1".into(),
            template: pb::Lease {
                model: Some(pb::ModelSpec {
                    key: "k".into(),
                    model_path: "/nowhere/model.gguf".into(),
                    adapter_paths: vec![],
                    dtype: "auto".into(),
                }),
                generation: Some(pb::GenerationParams {
                    max_new_tokens,
                    ..Default::default()
                }),
                ..Default::default()
            },
            items: questions
                .iter()
                .enumerate()
                .map(|(i, q)| pb::WorkItem {
                    item_id: i.to_string(),
                    payload: Some(pb::work_item::Payload::Embed(pb::EmbedItem {
                        label: q.to_string(),
                        predict: String::new(),
                    })),
                })
                .collect(),
        }
    }

    #[test]
    fn equal_jobs_agree_and_differences_are_named() {
        let a = Fingerprint::of("step1", &[task(8, &["q0", "q1"])]);
        assert_eq!(a, Fingerprint::of("step1", &[task(8, &["q0", "q1"])]));
        assert_eq!(a.hash().len(), 64);
        assert!(a.differences(&a).is_empty());

        let gen_changed = Fingerprint::of("step1", &[task(9, &["q0", "q1"])]);
        assert_ne!(a.hash(), gen_changed.hash());
        let diff = a.differences(&gen_changed);
        assert_eq!(diff.len(), 1, "{diff:?}");
        assert_eq!(diff[0].0, "generation");
        assert!(diff[0].1.contains("max_new_tokens: 8"), "{diff:?}");

        let data_changed = Fingerprint::of("step1", &[task(8, &["q0", "other"])]);
        let names: Vec<String> = a
            .differences(&data_changed)
            .into_iter()
            .map(|d| d.0)
            .collect();
        assert_eq!(names, ["items"]);
        let model_missing = a.parts.iter().find(|p| p.0 == "model").unwrap();
        assert!(
            model_missing.1.contains("not visible here"),
            "{model_missing:?}"
        );
    }

    #[test]
    fn a_model_file_rewritten_in_place_is_another_model() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.gguf");
        std::fs::write(&file, b"weights").unwrap();
        let before = files_signature(&file);
        std::fs::write(&file, b"other weights").unwrap();
        assert_ne!(before, files_signature(&file));
        let folder_before = files_signature(dir.path());
        std::fs::write(dir.path().join("config.json"), b"{}").unwrap();
        assert_ne!(folder_before, files_signature(dir.path()));
        assert!(files_signature(dir.path()).starts_with("2 files"));
    }
}
