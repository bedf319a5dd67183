//! What the job drivers need of every step, behind one trait: a step's name, the files it leaves
//! when finished, and how it runs alone on a fleet. `run_job` runs any step through it, and a
//! sweep checks a checkpoint's outputs through it, so a new step implements [`Step`] (beside its
//! driver) and adds its arm to [`StepConfig::step`] instead of an arm in each of them. (Its keys
//! are parsed by `config`; its directory is [`StepConfig::output_dir`].)

use std::path::PathBuf;

use futures::future::BoxFuture;

use super::{FleetSetup, RunError};
use crate::config::{Step1Config, Step2Config, Step3Config, Step4Config, StepConfig};
use crate::output::{ALL_RESULTS, GENERATED_PREDICTIONS, PREDICT_RESULTS};

/// One step of a job (see the module docs).
pub trait Step: Send + Sync {
    /// Its name in `steps:`, journals and logs (`step1`).
    fn name(&self) -> &'static str;
    /// The files it leaves when finished: the ones a report reads, and its last ones.
    fn expected_outputs(&self) -> Vec<PathBuf>;
    /// Runs it alone on `setup`'s fleet; returns the files written.
    fn run<'a>(&'a self, setup: &'a FleetSetup) -> BoxFuture<'a, Result<Vec<PathBuf>, RunError>>;
}

impl StepConfig {
    /// This step as a [`Step`].
    pub fn step(&self) -> &dyn Step {
        match self {
            StepConfig::Step1(c) => c,
            StepConfig::Step2(c) => c,
            StepConfig::Step3(c) => c,
            StepConfig::Step4(c) => c,
        }
    }
}

impl Step for Step1Config {
    fn name(&self) -> &'static str {
        "step1"
    }
    fn expected_outputs(&self) -> Vec<PathBuf> {
        [GENERATED_PREDICTIONS, PREDICT_RESULTS, ALL_RESULTS]
            .iter()
            .map(|f| self.output_dir.join(f))
            .collect()
    }
    fn run<'a>(&'a self, setup: &'a FleetSetup) -> BoxFuture<'a, Result<Vec<PathBuf>, RunError>> {
        Box::pin(async move {
            let report = super::run_step1(self, setup).await?;
            super::step1::log_report(&report);
            Ok(super::step1_paths(report.files).to_vec())
        })
    }
}

impl Step for Step2Config {
    fn name(&self) -> &'static str {
        "step2"
    }
    fn expected_outputs(&self) -> Vec<PathBuf> {
        vec![self.output_dir.join(crate::step2::DISTRIBUTION_JSON)]
    }
    fn run<'a>(&'a self, setup: &'a FleetSetup) -> BoxFuture<'a, Result<Vec<PathBuf>, RunError>> {
        Box::pin(async move { Ok(super::run_step2(self, setup).await?.paths()) })
    }
}

impl Step for Step3Config {
    fn name(&self) -> &'static str {
        "step3"
    }
    fn expected_outputs(&self) -> Vec<PathBuf> {
        let Some(dir) = &self.save_dir else {
            return Vec::new();
        };
        let files = [
            crate::step3::results::RESULTS_JSON,
            crate::step3::results::RESULTS_LOG,
        ];
        self.tasks
            .iter()
            .flat_map(|t| files.iter().map(move |f| dir.join(&t.name).join(f)))
            .collect()
    }
    fn run<'a>(&'a self, setup: &'a FleetSetup) -> BoxFuture<'a, Result<Vec<PathBuf>, RunError>> {
        Box::pin(async move {
            let reports = super::run_step3(self, setup).await?;
            Ok(reports.into_iter().flat_map(|r| r.files).collect())
        })
    }
}

impl Step for Step4Config {
    fn name(&self) -> &'static str {
        "step4"
    }
    fn expected_outputs(&self) -> Vec<PathBuf> {
        vec![self.output_dir.join(crate::step4::SCORES_JSON_FILE)]
    }
    fn run<'a>(&'a self, setup: &'a FleetSetup) -> BoxFuture<'a, Result<Vec<PathBuf>, RunError>> {
        Box::pin(super::run_step4(self, setup, None))
    }
}
