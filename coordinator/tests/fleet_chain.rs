//! `evalfleet run` with `steps: [step1, step2]` on one output_dir: step 2 runs in the same fleet,
//! fed from step 1's results as they arrive. Real workers (the tiny llama for step 1,
//! all-MiniLM-L6-v2 from scripts/fetch-models.sh for step 2).
//!
//! - The scheduler's timeline (a logical record of leases and task completions, no clock) shows
//!   a step-2 lease handed out before step 1 completed, and the worker loading the embedder while
//!   it still had step-1 work to do.
//! - Every file equals what `evalfleet step1` then `evalfleet step2` write (byte for byte, except
//!   the three speed metrics, which are timings).

mod fleet_common;

use std::path::{Path, PathBuf};

use evalfleet::config::{JobConfig, parse_job};
use evalfleet::run::{FleetSetup, run_chain, run_job, run_step1, run_step2};
use evalfleet::sched::Event;
use fleet_common::{minilm, repo, tiny_chat_model, worker_bin};

/// A run file with both steps on `out`, for the tiny model under `dir`.
fn job(dir: &Path, out: &Path) -> JobConfig {
    let model = dir.join("tiny-llama-chat");
    if !model.is_dir() {
        tiny_chat_model(dir);
    }
    let yaml = format!(
        "steps: [step1, step2]\nmodel_name_or_path: {model}\ndataset_dir: {data}\n\
         dataset: demo_alpaca,demo_sharegpt\ntemplate: default\ncutoff_len: 40\nmax_samples: 4\n\
         output_dir: {out}\nper_device_eval_batch_size: 1\npredict_with_generate: true\n\
         max_new_tokens: 8\ndo_sample: false\nstep2:\n  model_path: {embedder}\n",
        model = model.display(),
        data = repo().join("yamls/demo").display(),
        out = out.display(),
        embedder = minilm().display(),
    );
    let path = dir.join("job.yaml");
    parse_job(&path, &yaml).unwrap_or_else(|e| panic!("{e}"))
}

/// One CPU worker taking one item per lease: the order of leases is then fixed by the protocol
/// (a worker asks for its next lease only after sending every result of the last one), and
/// every step-2 lease embeds one pair, whichever run it is part of.
fn one_worker() -> FleetSetup {
    FleetSetup {
        workers: Some(1),
        batch_size: Some(1),
        cpu_only: true,
        worker_bin: Some(worker_bin()),
        ..Default::default()
    }
}

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A results file without its speed metrics (timings differ between any two runs).
fn without_speed(text: String) -> String {
    text.lines()
        .filter(|l| !l.contains("_runtime\"") && !l.contains("_per_second\""))
        .collect::<Vec<_>>()
        .join("\n")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn chained_step2_starts_before_step1_ends_and_writes_what_two_runs_write() {
    let dir = tempfile::tempdir().unwrap();
    let chained = dir.path().join("chained");
    let separate = dir.path().join("separate");
    let job_chained = job(dir.path(), &chained);
    let job_separate = job(dir.path(), &separate);
    let (cfg1, cfg2) = (job_chained.step1().unwrap(), job_chained.step2().unwrap());
    let setup = one_worker();

    let report = runtime().block_on(run_chain(cfg1, cfg2, &setup)).unwrap();
    assert_eq!(report.step1.samples, 8);
    assert_eq!(report.step2.distribution.count, 8);

    // The timeline: task 0 is step 1, task 1 step 2.
    let timeline = &report.timeline;
    let first_step2_lease = timeline
        .iter()
        .position(|e| matches!(e, Event::Leased { task: 1, .. }))
        .expect("no step-2 lease");
    let step1_complete = timeline
        .iter()
        .position(|e| *e == Event::TaskComplete { task: 0 })
        .expect("step 1 never completed");
    assert!(
        first_step2_lease < step1_complete,
        "step 2 did not start before step 1 ended: {timeline:?}"
    );
    // Step-1 leases handed out after the first step-2 lease: the worker kept both models and
    // went back to generating after loading the embedder.
    let step1_after = timeline[first_step2_lease..]
        .iter()
        .filter(|e| matches!(e, Event::Leased { task: 0, .. }))
        .count();
    assert!(step1_after > 0, "{timeline:?}");
    assert_eq!(
        timeline.last(),
        Some(&Event::TaskComplete { task: 1 }),
        "{timeline:?}"
    );

    // The same job as two separate steps, each in its own fleet.
    let (sep1, sep2) = (job_separate.step1().unwrap(), job_separate.step2().unwrap());
    runtime().block_on(async {
        run_step1(sep1, &setup).await.unwrap();
        run_step2(sep2, &setup).await.unwrap();
    });
    for name in [
        "generated_predictions.jsonl",
        "sem_sim_distribution.json",
        "sem_sim_histogram.svg",
        "sem_sim_histogram.png",
    ] {
        let bytes = |dir: &Path| std::fs::read(dir.join(name)).unwrap();
        assert!(bytes(&chained) == bytes(&separate), "{name} differs");
    }
    for name in ["predict_results.json", "all_results.json"] {
        let (a, b) = (read(chained.join(name)), read(separate.join(name)));
        assert!(a.contains("\"predict_runtime\""), "{name}: {a}");
        assert_eq!(without_speed(a), without_speed(b), "{name} differs");
    }
    let results = read(chained.join("predict_results.json"));
    assert!(results.contains("\"avg_sem_sim_score\""), "{results}");
}

#[test]
fn run_job_chains_step2_only_onto_step1_of_the_same_output_dir() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let job = job(dir.path(), &out);
    let files = runtime().block_on(run_job(&job, &one_worker())).unwrap();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "generated_predictions.jsonl",
            "predict_results.json",
            "all_results.json",
            "generated_predictions.jsonl",
            "predict_results.json",
            "sem_sim_distribution.json",
            "sem_sim_histogram.svg",
            "sem_sim_histogram.png",
        ]
    );
    let scored = read(out.join("generated_predictions.jsonl"));
    assert_eq!(scored.lines().count(), 8);
    assert!(
        scored.lines().all(|l| l.contains("\"score\": ")),
        "{scored}"
    );
    assert!(evalfleet::run::chain::can_chain(
        job.step1().unwrap(),
        job.step2().unwrap()
    ));
    let mut other = job.step2().unwrap().clone();
    other.output_dir = dir.path().join("elsewhere");
    assert!(!evalfleet::run::chain::can_chain(
        job.step1().unwrap(),
        &other
    ));
}
