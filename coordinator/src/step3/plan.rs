//! Plans one task the way LF v0.7.1's `Evaluator.eval` formats it: subjects in `mapping.json`
//! order, the split's examples in file order, and for each example a support set of
//! `min(n_shot, len(dev))` dev rows (docs/FIDELITY.md §3.3).
//!
//! Few-shot order [`FewShotOrder::LlamaFactory`]: `np.random.seed(42)` once per task (LF's
//! `set_seed`), then one seedless `Dataset.shuffle()` of the dev set per example, across subjects
//! ([`super::rng`]); the first `n_shot` rows of the permutation are the shots. `shuffle()` of an
//! empty dev set returns early and draws nothing. [`FewShotOrder::Fixed`]: the first `n_shot` dev
//! rows in file order, so every question of a subject shares one few-shot prefix.
//!
//! Planning happens once, in the coordinator, so the number of workers never changes a prompt.

use std::path::Path;

use super::data::{Example, Layout, Split, Subject, load_split, read_mapping};
use super::prompt::{EvalTemplate, Message};
use super::rng::{ShuffleSeeds, permutation};
use super::source::TaskSource;
use super::{CHOICES, Step3Error};

/// Defined with the step-3 settings, which name it.
pub use crate::config::FewShotOrder;

/// The settings of one task.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// `en` or `zh` ([`EvalTemplate::by_lang`]).
    pub lang: String,
    /// The split evaluated (`test`, `validation`; `train` is the dev set).
    pub split: Split,
    /// Number of shots (LF default 5).
    pub n_shot: usize,
    /// How the shots are ordered.
    pub order: FewShotOrder,
    /// The numpy seed set before the task (LF: 42).
    pub seed: u32,
}

impl PlanOptions {
    /// LF's defaults for a language and split: 5 shots, `llamafactory` order, seed 42.
    pub fn new(lang: &str, split: Split) -> Self {
        Self {
            lang: lang.to_owned(),
            split,
            n_shot: 5,
            order: FewShotOrder::LlamaFactory,
            seed: 42,
        }
    }
}

/// One question ready for a worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Step3Item {
    /// Index of the subject in [`TaskPlan::subjects`].
    pub subject: usize,
    /// Index of the question within its subject's split (the key in `results.json`).
    pub index: usize,
    /// The support pairs then the target user turn; the system string opens the first message.
    /// A worker encodes them as LF's `encode_oneturn(messages + [assistant: answer])`, i.e. the
    /// chat template up to the assistant header, and reads the choice logits at the last token.
    pub messages: Vec<Message>,
    /// The correct letter (`A`–`D`), not part of the prompt.
    pub answer: String,
    /// The dev rows used as shots, in prompt order.
    pub shots: Vec<usize>,
}

/// One subject of a planned task.
#[derive(Debug, Clone, PartialEq)]
pub struct SubjectPlan {
    /// Key, display name and category from `mapping.json`.
    pub subject: Subject,
    /// Number of questions (the subject's items are contiguous in [`TaskPlan::items`]).
    pub len: usize,
}

/// A planned task: subjects in mapping order and every question's item, in LF's order.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskPlan {
    /// The eval template (its `prefix` + a letter gives the scored tokens).
    pub template: EvalTemplate,
    /// The CSV layout found.
    pub layout: Layout,
    /// The subjects, in `mapping.json` order.
    pub subjects: Vec<SubjectPlan>,
    /// All questions, subject after subject.
    pub items: Vec<Step3Item>,
}

impl TaskPlan {
    /// The strings whose last token is scored per choice: `prefix + letter` (`" A"` … `" D"`).
    pub fn choice_texts(&self) -> [String; 4] {
        CHOICES.map(|c| format!("{}{c}", self.template.prefix))
    }
}

/// Plans the task in `dir` (`<task_dir>/<task>`, holding `mapping.json` and the zip or tree).
pub fn plan_task(dir: &Path, options: &PlanOptions) -> Result<TaskPlan, Step3Error> {
    let template = EvalTemplate::by_lang(&options.lang).ok_or_else(|| {
        Step3Error::Config(format!("lang `{}`: expected `en` or `zh`", options.lang))
    })?;
    let subjects = read_mapping(&dir.join("mapping.json"))?;
    let mut source = TaskSource::open(dir)?;
    let layout = Layout::detect(&source, &subjects[0].key)?;
    let mut seeds = ShuffleSeeds::new(options.seed);
    let mut plan = TaskPlan {
        template,
        layout,
        subjects: Vec::with_capacity(subjects.len()),
        items: Vec::new(),
    };
    for (s, subject) in subjects.into_iter().enumerate() {
        let dev = load_split(&mut source, layout, &subject.key, Split::Train)?;
        let target = load_split(&mut source, layout, &subject.key, options.split)?;
        for (index, example) in target.iter().enumerate() {
            let shots = choose_shots(dev.len(), options, &mut seeds);
            let messages =
                template.messages(example, shots.iter().map(|&j| &dev[j]), &subject.name);
            plan.items.push(Step3Item {
                subject: s,
                index,
                messages,
                answer: example.answer.clone(),
                shots,
            });
        }
        plan.subjects.push(SubjectPlan {
            subject,
            len: target.len(),
        });
    }
    Ok(plan)
}

/// The dev rows of one question's support set.
fn choose_shots(dev_len: usize, options: &PlanOptions, seeds: &mut ShuffleSeeds) -> Vec<usize> {
    let k = options.n_shot.min(dev_len);
    match options.order {
        FewShotOrder::Fixed => (0..k).collect(),
        // `Dataset.shuffle()` returns an empty dataset untouched, drawing no seed.
        FewShotOrder::LlamaFactory if dev_len == 0 => Vec::new(),
        FewShotOrder::LlamaFactory => {
            let mut order = permutation(seeds.next_seed(), dev_len);
            order.truncate(k);
            order
        }
    }
}

/// The examples of one subject's split, for callers that need the data without a plan.
pub fn load_examples(dir: &Path, subject: &str, split: Split) -> Result<Vec<Example>, Step3Error> {
    let mut source = TaskSource::open(dir)?;
    let layout = Layout::detect(&source, subject)?;
    load_split(&mut source, layout, subject, split)
}
