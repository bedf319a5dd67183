//! Step 3 (MMLU / CMMLU / C-Eval) settings: the original tool's `yamls/step3.yaml` keys
//! (LLaMA-Factory v0.7.1's `EvaluationArguments` and model keys, with its `tasks` / `langs`
//! / `splits` lists), plus evalfleet's `few_shot_order`, `prefix_pairs`, `dtype` and `workers`.

use std::path::{Path, PathBuf};

use super::fields::{Entry, Fields};
use super::step1::{ModelConfig, parse_model};
use super::{ConfigError, JobConfig, StepConfig, keys, read, top_entries};

/// A split of a task (the names LF's task scripts use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// The dev set: the few-shot examples.
    Train,
    /// `val`.
    Validation,
    /// `test`.
    Test,
}

impl Split {
    /// `train`, `validation` or `test`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "train" => Some(Self::Train),
            "validation" => Some(Self::Validation),
            "test" => Some(Self::Test),
            _ => None,
        }
    }
}

/// How the few-shot examples of a question are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FewShotOrder {
    /// LF v0.7.1's per-question numpy-seeded shuffles (default; byte-identical prompts).
    #[default]
    LlamaFactory,
    /// The dev rows in file order (the original MMLU protocol; one shared prefix per subject).
    Fixed,
}

impl FewShotOrder {
    /// `llamafactory` or `fixed`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "llamafactory" => Some(Self::LlamaFactory),
            "fixed" => Some(Self::Fixed),
            _ => None,
        }
    }
}

/// Keys step 3 applies.
pub const STEP3_KEYS: &[&str] = &[
    // model
    "model_name_or_path",
    "adapter_name_or_path",
    "finetuning_type",
    "dtype",
    // data
    "task_dir",
    "tasks",
    "langs",
    "splits",
    "template",
    "n_shot",
    "seed",
    "few_shot_order",
    "prefix_pairs",
    // output
    "save_dir",
    // fleet
    "batch_size",
    "workers",
    "tensor_parallel_size",
];

/// LF keys step 3 accepts without effect, beyond [`keys::IGNORED_KEYS`]: `download_mode` (the
/// data is read in place, never downloaded).
const STEP3_IGNORED: &[&str] = &["download_mode"];

/// Whether step 3 accepts `key` without applying it.
pub fn is_ignored(key: &str) -> bool {
    !STEP3_KEYS.contains(&key) && (keys::is_ignored(key) || STEP3_IGNORED.contains(&key))
}

/// Every key step 3 knows (applied or ignored), for suggestions.
pub fn known_keys() -> impl Iterator<Item = &'static str> + Clone {
    STEP3_KEYS
        .iter()
        .chain(keys::IGNORED_KEYS)
        .chain(STEP3_IGNORED)
        .copied()
}

/// LF's default `task_dir`.
const DEFAULT_TASK_DIR: &str = "evaluation";

/// One benchmark to evaluate: `tasks[i]` with `langs[i]` and `splits[i]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Step3Task {
    /// The folder under `task_dir` (`mmlu`, `cmmlu`, `ceval`, or a user's own).
    pub name: String,
    /// `en` or `zh`: the eval template.
    pub lang: String,
    /// The split whose questions are scored (`test`, `validation`).
    pub split: Split,
}

/// Everything step 3 needs, with LF's defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Step3Config {
    /// The model under test and how to load it (the step-1 keys).
    pub model: ModelConfig,
    /// `task_dir` (LF default `evaluation`): holds one folder per task.
    pub task_dir: PathBuf,
    /// `tasks` zipped with `langs` (default `en` for each) and `splits` (default `test`).
    pub tasks: Vec<Step3Task>,
    /// `template`: the LLaMA-Factory template prompts are encoded with (`None`: the model's own
    /// chat template, an evalfleet extension).
    pub template: Option<String>,
    /// `n_shot` (LF default 5): few-shot examples per question.
    pub n_shot: usize,
    /// `seed` (LF default 42): the numpy seed set before each task, which fixes the shuffles.
    pub seed: u32,
    /// `few_shot_order` (evalfleet, default `llamafactory`): how the shots are chosen.
    pub few_shot_order: FewShotOrder,
    /// `prefix_pairs` (evalfleet): how many leading shot pairs workers may compute once and share
    /// between questions. Defaults: `n_shot` in `fixed` mode (every question of a subject has the
    /// same shots); 3 in `llamafactory` mode (see [`DEFAULT_LF_PREFIX_PAIRS`]). 0 turns sharing
    /// off. Never changes a prediction beyond float rounding.
    pub prefix_pairs: usize,
    /// `save_dir`: results go to `<save_dir>/<task>/`; `None` only prints them (as LF).
    pub save_dir: Option<PathBuf>,
    /// `batch_size` (LF default 4): questions a worker scores together; `None` lets the fleet
    /// choose. Does not change predictions.
    pub batch_size: Option<usize>,
    /// `workers` (evalfleet): local worker processes to spawn, as for step 1.
    pub workers: Option<usize>,
    /// `tensor_parallel_size` (evalfleet): ranks per local worker, as for step 1.
    pub tensor_parallel_size: Option<usize>,
}

/// The default `prefix_pairs` in `llamafactory` mode. Each question's shots are a random order of
/// the 5 dev rows, so `k` leading shots are shared by about `n / (5!/(5-k)!)` of a subject's `n`
/// questions. Sharing `k` shots saves about `k/6` of a prompt for all but one question of each
/// group: for MMLU's mean of 246 questions per subject that is 31% at k=2, 38% at k=3, 38% at
/// k=4; for a 100-question subject 27%, 26%, 22%. 3 is close to the best for every subject size.
pub const DEFAULT_LF_PREFIX_PAIRS: usize = 3;

/// Reads step 3's keys (the caller has rejected unknown keys).
pub(crate) fn parse(fields: &Fields) -> Result<Step3Config, ConfigError> {
    let model = parse_model(fields)?;
    let tasks = parse_tasks(fields)?;
    let n_shot = fields.usize_at_least("n_shot", 0)?.unwrap_or(5);
    let seed = match fields.uint("seed")? {
        None => 42,
        Some(s) => u32::try_from(s)
            .map_err(|_| fields.invalid("seed", format!("numpy seeds are below 2^32, got {s}")))?,
    };
    let few_shot_order = match fields.string("few_shot_order")? {
        None => FewShotOrder::LlamaFactory,
        Some(name) => FewShotOrder::parse(&name).ok_or_else(|| {
            fields.invalid(
                "few_shot_order",
                format!("expected `llamafactory` or `fixed`, got {name:?}"),
            )
        })?,
    };
    let prefix_pairs = fields
        .usize_at_least("prefix_pairs", 0)?
        .unwrap_or(match few_shot_order {
            FewShotOrder::Fixed => n_shot,
            FewShotOrder::LlamaFactory => DEFAULT_LF_PREFIX_PAIRS,
        })
        .min(n_shot);
    Ok(Step3Config {
        model,
        task_dir: fields
            .string("task_dir")?
            .unwrap_or_else(|| DEFAULT_TASK_DIR.to_owned())
            .into(),
        tasks,
        template: fields.string("template")?,
        n_shot,
        seed,
        few_shot_order,
        prefix_pairs,
        save_dir: fields.string("save_dir")?.map(PathBuf::from),
        batch_size: fields.usize_at_least("batch_size", 1)?,
        workers: fields.usize_at_least("workers", 0)?,
        tensor_parallel_size: fields.usize_at_least("tensor_parallel_size", 1)?,
    })
}

/// `tasks`, `langs` and `splits`: lists (or comma-separated strings) of one length.
fn parse_tasks(fields: &Fields) -> Result<Vec<Step3Task>, ConfigError> {
    let names = fields
        .string_list("tasks")?
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ConfigError::Missing {
            file: fields.file().to_owned(),
            key: "tasks".to_owned(),
            hint: "the benchmark folders under task_dir, e.g. [mmlu, cmmlu, ceval]",
        })?;
    if let Some(bad) = names
        .iter()
        .find(|n| n.is_empty() || n.contains(['/', '\\']) || *n == ".." || *n == ".")
    {
        return Err(fields.invalid(
            "tasks",
            format!("{bad:?} is not a folder name under task_dir"),
        ));
    }
    let list = |key: &str, default: &str| -> Result<Vec<String>, ConfigError> {
        let values = fields
            .string_list(key)?
            .unwrap_or_else(|| vec![default.to_owned(); names.len()]);
        if values.len() != names.len() {
            return Err(fields.invalid(
                key,
                format!(
                    "has {} entries but `tasks` has {}: one per task, in the same order",
                    values.len(),
                    names.len()
                ),
            ));
        }
        Ok(values)
    };
    let langs = list("langs", "en")?;
    let splits = list("splits", "test")?;
    let mut tasks = Vec::with_capacity(names.len());
    for ((name, lang), split) in names.into_iter().zip(langs).zip(splits) {
        if lang != "en" && lang != "zh" {
            return Err(fields.invalid(
                "langs",
                format!("task {name}: expected `en` or `zh`, got {lang:?}"),
            ));
        }
        let split = match Split::parse(&split) {
            Some(s) if s != Split::Train => s,
            _ => {
                return Err(fields.invalid(
                    "splits",
                    format!("task {name}: expected `test` or `validation`, got {split:?}"),
                ));
            }
        };
        tasks.push(Step3Task { name, lang, split });
    }
    if let Some(i) = (1..tasks.len()).find(|&i| tasks[..i].iter().any(|t| t.name == tasks[i].name))
    {
        return Err(fields.invalid(
            "tasks",
            format!("{} is listed twice (both would write {0}/)", tasks[i].name),
        ));
    }
    Ok(tasks)
}

/// Loads a step-3 file (the original tool's `yamls/step3.yaml` form).
pub fn load_step3(path: &Path) -> Result<JobConfig, ConfigError> {
    parse_step3(path, &read(path)?)
}

/// Parses the text of a step-3 file; `file` is only used in messages.
pub fn parse_step3(file: &Path, text: &str) -> Result<JobConfig, ConfigError> {
    let entries = top_entries(file, text)?;
    let mut ignored = Vec::new();
    let config = build(file, entries, &mut ignored)?;
    Ok(JobConfig {
        file: file.to_owned(),
        steps: vec![StepConfig::Step3(config)],
        ignored_keys: ignored,
    })
}

/// Sorts step 3's entries into applied and ignored keys (added to `ignored` once each), rejects
/// unknown ones with a suggestion, then parses.
pub(super) fn build(
    file: &Path,
    entries: Vec<Entry>,
    ignored: &mut Vec<String>,
) -> Result<Step3Config, ConfigError> {
    let mut applied = Vec::new();
    for entry in entries {
        if STEP3_KEYS.contains(&entry.key.as_str()) {
            applied.push(entry);
        } else if is_ignored(&entry.key) {
            if !ignored.contains(&entry.key) {
                ignored.push(entry.key);
            }
        } else {
            return Err(ConfigError::UnknownKey {
                file: file.to_owned(),
                suggestion: keys::suggest(&entry.key, known_keys()).map(str::to_owned),
                key: entry.shown,
            });
        }
    }
    parse(&Fields::new(file, applied))
}

impl Step3Config {
    /// The YAML's fleet keys (see [`super::FleetKeys`]).
    pub fn fleet_keys(&self) -> super::FleetKeys {
        super::FleetKeys {
            workers: self.workers,
            batch_size: self.batch_size,
            tensor_parallel_size: self.tensor_parallel_size,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The original tool's `yamls/step3.yaml`, comments included.
    const SEED: &str = "\
### model
model_name_or_path: /home/x/models/Qwen1.5-14B-Chat
adapter_name_or_path: /home/x/checkpoint-5000

### method
finetuning_type: lora
# quantization_bit: 4

### dataset
task_dir: ./evaluation
tasks:
  - mmlu
  - cmmlu
  - ceval
langs:
  - en
  - zh
  - zh
splits:
  - test
  - test
  - validation
template: qwen

### output
save_dir: ./output

### eval
batch_size: 1
";

    fn parse(text: &str) -> Result<(Step3Config, Vec<String>), ConfigError> {
        let job = parse_step3(Path::new("step3.yaml"), text)?;
        Ok((job.step3().expect("step 3").clone(), job.ignored_keys))
    }

    fn err(text: &str) -> String {
        parse(text).expect_err("should fail").to_string()
    }

    #[test]
    fn the_seed_file_parses_with_lf_defaults() {
        let (c, ignored) = parse(SEED).unwrap();
        assert!(ignored.is_empty());
        let names: Vec<(&str, &str, Split)> = c
            .tasks
            .iter()
            .map(|t| (t.name.as_str(), t.lang.as_str(), t.split))
            .collect();
        assert_eq!(
            names,
            [
                ("mmlu", "en", Split::Test),
                ("cmmlu", "zh", Split::Test),
                ("ceval", "zh", Split::Validation)
            ]
        );
        assert_eq!(c.task_dir, PathBuf::from("./evaluation"));
        assert_eq!(c.save_dir, Some(PathBuf::from("./output")));
        assert_eq!(c.template.as_deref(), Some("qwen"));
        assert_eq!((c.n_shot, c.seed, c.batch_size), (5, 42, Some(1)));
        assert_eq!(c.few_shot_order, FewShotOrder::LlamaFactory);
        assert_eq!(c.prefix_pairs, DEFAULT_LF_PREFIX_PAIRS);
        assert_eq!(c.model.adapter_name_or_path.len(), 1);
    }

    #[test]
    fn fixed_order_shares_every_shot_by_default() {
        let base = "model_name_or_path: m\ntasks: mmlu\nn_shot: 4\n";
        let (c, _) = parse(&format!("{base}few_shot_order: fixed\n")).unwrap();
        assert_eq!((c.few_shot_order, c.prefix_pairs), (FewShotOrder::Fixed, 4));
        let (c, _) = parse(&format!("{base}prefix_pairs: 9\n")).unwrap();
        assert_eq!(c.prefix_pairs, 4, "capped at n_shot");
        let (c, _) = parse(&format!("{base}prefix_pairs: 0\n")).unwrap();
        assert_eq!(c.prefix_pairs, 0);
        // Defaults for a single task given as a string.
        assert_eq!(c.tasks[0].lang, "en");
        assert_eq!(c.tasks[0].split, Split::Test);
        assert_eq!(c.task_dir, PathBuf::from("evaluation"));
        assert_eq!(c.save_dir, None);
    }

    #[test]
    fn errors_name_the_file_and_key() {
        assert_eq!(
            err("model_name_or_path: m\ntasks: [mmlu]\nn_shots: 5\n"),
            "step3.yaml: unknown key `n_shots` (did you mean `n_shot`?)"
        );
        assert_eq!(
            err("model_name_or_path: m\ntasks: [mmlu]\nn_shot: five\n"),
            "step3.yaml: key `n_shot`: expected a non-negative integer, found the string \"five\""
        );
        let e = err("model_name_or_path: m\ntasks: [mmlu, ceval]\nlangs: [en]\n");
        assert!(
            e.starts_with("step3.yaml: key `langs`: has 1 entries but `tasks` has 2"),
            "{e}"
        );
        let e = err("model_name_or_path: m\ntasks: [mmlu]\nsplits: [train]\n");
        assert!(
            e.contains("key `splits`: task mmlu: expected `test` or `validation`"),
            "{e}"
        );
        let e = err("model_name_or_path: m\ntasks: [mmlu]\nlangs: fr\n");
        assert!(
            e.contains("key `langs`: task mmlu: expected `en` or `zh`"),
            "{e}"
        );
        let e = err("model_name_or_path: m\ntasks: [mmlu]\nfew_shot_order: random\n");
        assert!(
            e.contains("key `few_shot_order`: expected `llamafactory` or `fixed`"),
            "{e}"
        );
        let e = err("model_name_or_path: m\n");
        assert!(
            e.starts_with("step3.yaml: missing required key `tasks`"),
            "{e}"
        );
        let e = err("model_name_or_path: m\ntasks: [mmlu, mmlu]\n");
        assert!(e.contains("mmlu is listed twice"), "{e}");
        let e = err("model_name_or_path: m\ntasks: [../x]\n");
        assert!(e.contains("key `tasks`"), "{e}");
    }

    #[test]
    fn lf_keys_without_effect_are_listed_once() {
        let (_, ignored) =
            parse("model_name_or_path: m\ntasks: mmlu\nquantization_bit: 4\ndownload_mode: force_redownload\n")
                .unwrap();
        assert_eq!(ignored, ["quantization_bit", "download_mode"]);
    }
}
