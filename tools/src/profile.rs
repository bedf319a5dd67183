//! [`SpanTimes`]: a `tracing` layer that adds up the time spent inside each span name (the
//! model code's `layer`, `attn`, `mlp` ... spans), for `evalfleet-bench --profile`.
//!
//! On a GPU, kernels are queued asynchronously, so span times are the host's launch cost; with
//! `CUDA_LAUNCH_BLOCKING=1` every launch waits for its kernel and the same spans measure GPU
//! time. Comparing both runs shows whether a phase is bound by the host or by the device.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::Subscriber;
use tracing::span::Id;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// Per span name: how many times it was entered and the time spent inside (nested spans are
/// counted in their parents too).
pub type SpanTotals = BTreeMap<&'static str, (u64, Duration)>;

/// The layer; clone it to read the totals after the work is done.
#[derive(Debug, Clone, Default)]
pub struct SpanTimes {
    totals: Arc<Mutex<SpanTotals>>,
}

/// When the span was last entered (kept in the span's extensions).
struct Entered(Instant);

impl SpanTimes {
    /// The totals so far.
    pub fn totals(&self) -> SpanTotals {
        self.totals.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Forgets everything recorded so far (e.g. after a warm-up).
    pub fn reset(&self) {
        if let Ok(mut t) = self.totals.lock() {
            t.clear();
        }
    }
}

impl<S> Layer<S> for SpanTimes
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().replace(Entered(Instant::now()));
        }
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let Some(Entered(at)) = span.extensions_mut().remove::<Entered>() else {
            return;
        };
        if let Ok(mut totals) = self.totals.lock() {
            let entry = totals.entry(span.name()).or_default();
            entry.0 += 1;
            entry.1 += at.elapsed();
        }
    }
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[test]
    fn nested_spans_are_counted_by_name() {
        let times = SpanTimes::default();
        let subscriber = tracing_subscriber::registry().with(times.clone());
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..3 {
                let _outer = tracing::trace_span!("outer").entered();
                let _inner = tracing::trace_span!("inner").entered();
            }
        });
        let totals = times.totals();
        assert_eq!(totals.get("outer").map(|t| t.0), Some(3));
        assert_eq!(totals.get("inner").map(|t| t.0), Some(3));
        assert!(totals["outer"].1 >= totals["inner"].1);
        times.reset();
        assert!(times.totals().is_empty());
    }
}
