//! HF `transformers.trainer_utils.speed_metrics`, as `Trainer.predict` reports it.
//!
//! `runtime` is rounded to 4 decimals, both rates to 3, and the rates are computed from the
//! *unrounded* runtime (3 samples in 3.9457 s give `0.76`). The step count is
//! `ceil(num_samples / batch_size)`, batch size being `per_device_eval_batch_size` times the
//! number of processes of the original run (one: the original tool ran on a single device).

use super::pyjson::PyJson;
use crate::metrics::python_round;

/// The three speed keys of a `<split>_results.json`, already rounded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpeedMetrics {
    /// `round(runtime, 4)` in seconds.
    pub runtime: f64,
    /// `round(num_samples / runtime, 3)`; `None` when the runtime was exactly zero (HF then
    /// writes only the runtime).
    pub samples_per_second: Option<f64>,
    /// `round(num_steps / runtime, 3)`; `None` when the runtime was exactly zero.
    pub steps_per_second: Option<f64>,
}

impl SpeedMetrics {
    /// Computes the metrics for `num_samples` items predicted in `runtime_secs` seconds with
    /// `batch_size` items per step (`0` is treated as 1 rather than dividing by zero).
    pub fn new(num_samples: usize, batch_size: usize, runtime_secs: f64) -> Self {
        let num_steps = num_samples.div_ceil(batch_size.max(1));
        let rate = |count: usize| {
            (runtime_secs != 0.0).then(|| python_round(count as f64 / runtime_secs, 3))
        };
        SpeedMetrics {
            runtime: python_round(runtime_secs, 4),
            samples_per_second: rate(num_samples),
            steps_per_second: rate(num_steps),
        }
    }

    /// The `(key, value)` pairs with keys `<split>_runtime`, `<split>_samples_per_second`,
    /// `<split>_steps_per_second`, in HF's insertion order.
    pub fn pairs(&self, split: &str) -> Vec<(String, PyJson)> {
        let mut pairs = vec![(format!("{split}_runtime"), PyJson::Float(self.runtime))];
        if let Some(v) = self.samples_per_second {
            pairs.push((format!("{split}_samples_per_second"), PyJson::Float(v)));
        }
        if let Some(v) = self.steps_per_second {
            pairs.push((format!("{split}_steps_per_second"), PyJson::Float(v)));
        }
        pairs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_run_numbers() {
        // The original tool's 3 samples at batch size 1: written as 3.9457, 0.76 and 0.76.
        let speed = SpeedMetrics::new(3, 1, 3.945_712_3);
        assert_eq!(speed.runtime, 3.9457);
        assert_eq!(speed.samples_per_second, Some(0.76));
        assert_eq!(speed.steps_per_second, Some(0.76));
    }

    #[test]
    fn steps_round_up_and_zero_runtime_has_no_rates() {
        let speed = SpeedMetrics::new(10, 4, 2.0);
        assert_eq!(speed.steps_per_second, Some(1.5));
        assert_eq!(speed.samples_per_second, Some(5.0));
        let zero = SpeedMetrics::new(10, 4, 0.0);
        assert_eq!(zero.pairs("predict").len(), 1);
    }
}
