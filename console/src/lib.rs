//! What the evalfleet binaries (`evalfleet`, `evalfleet-worker`, `evalfleet-train`) show on
//! stderr: the progress bar of long work (a step's items, a training run's steps: done / total,
//! rate, ETA), and the tracing logs, through a writer that lifts the bar out of the way before each
//! log line so the two never tear each other.
//!
//! The bar is hidden when stderr is not a terminal (CI logs, redirects); logs are unaffected.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The bar currently on screen, if any; log lines are printed "around" it.
static ACTIVE: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// A progress bar over the items of one step (or the steps of a training run). Finishes (and
/// leaves the screen) when dropped.
pub struct ItemsBar {
    bar: ProgressBar,
}

impl ItemsBar {
    /// Starts a bar titled `label` over `total` items.
    pub fn start(label: &str, total: u64) -> Self {
        Self::start_counting(label, total, "items")
    }

    /// Starts a bar titled `label` over `total` things called `unit` ("steps").
    pub fn start_counting(label: &str, total: u64, unit: &str) -> Self {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(total), target);
        bar.set_style(style(unit).unwrap_or_else(|_| ProgressStyle::default_bar()));
        bar.set_message(label.to_string());
        *lock() = Some(bar.clone());
        ItemsBar { bar }
    }

    /// Sets the number of finished items.
    pub fn set(&self, done: u64) {
        self.bar.set_position(done);
    }

    /// Sets the number of items (it grows while a streaming task receives items).
    pub fn set_total(&self, total: u64) {
        self.bar.set_length(total);
    }

    /// Replaces the bar's title (e.g. with the latest loss).
    pub fn set_label(&self, label: String) {
        self.bar.set_message(label);
    }
}

/// The bar's layout: title, elapsed time, bar, `done/total unit`, rate, ETA.
fn style(unit: &str) -> Result<ProgressStyle, indicatif::style::TemplateError> {
    ProgressStyle::with_template(&format!(
        "{{msg}} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} {unit}  {{per_sec}}  ETA {{eta}}"
    ))
}

impl Drop for ItemsBar {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
        *lock() = None;
    }
}

fn lock() -> std::sync::MutexGuard<'static, Option<ProgressBar>> {
    ACTIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes `bytes` to stderr with the active bar (if any) suspended.
fn write_around_bar(bytes: &[u8]) -> std::io::Result<()> {
    let bar = lock().clone();
    match bar {
        Some(bar) => bar.suspend(|| std::io::stderr().write_all(bytes)),
        None => std::io::stderr().write_all(bytes),
    }
}

/// Prints one line to stderr without tearing the progress bar (used for worker output).
pub fn eprintln_line(line: &str) {
    let _ = write_around_bar(format!("{line}\n").as_bytes());
}

/// A `tracing_subscriber` writer: stderr, around the progress bar.
#[derive(Debug, Clone, Copy, Default)]
pub struct StderrAroundBar;

impl Write for StderrAroundBar {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // The fmt layer formats a whole event into one buffer and writes it at once, so one
        // suspension per write keeps each line intact.
        write_around_bar(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for StderrAroundBar {
    type Writer = StderrAroundBar;

    fn make_writer(&'a self) -> Self::Writer {
        StderrAroundBar
    }
}

/// Installs the global tracing subscriber: `RUST_LOG` filter (default `info`), logs on stderr.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(StderrAroundBar)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A malformed template would silently fall back to indicatif's default bar (no rate, no ETA).
    #[test]
    fn the_layout_parses_for_every_unit() {
        for unit in ["items", "steps"] {
            assert!(style(unit).is_ok(), "{unit}");
        }
    }
}
