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

/// The error and its causes on one line, like anyhow's `{:#}`, but without repeating a cause that
/// an outer message already quotes (most of ours name their source: "x.csv: No such file", and
/// transport errors nest the same text twice). For the last words of a binary or a job.
pub fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let c_text = c.to_string();
        if !text.contains(&c_text) {
            text.push_str(": ");
            text.push_str(&c_text);
        }
        cause = c.source();
    }
    text
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

    #[derive(Debug)]
    struct Quoting(std::io::Error);

    impl std::fmt::Display for Quoting {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "mapping.json: {}", self.0)
        }
    }

    impl std::error::Error for Quoting {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[derive(Debug)]
    struct Context(&'static str, Box<dyn std::error::Error>);

    impl std::fmt::Display for Context {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Context {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&*self.1)
        }
    }

    #[test]
    fn a_quoted_cause_is_not_repeated_and_others_are_kept() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory");
        assert_eq!(
            error_text(&Quoting(io())),
            "mapping.json: No such file or directory"
        );
        assert_eq!(
            error_text(&Context("reading the job", Box::new(io()))),
            "reading the job: No such file or directory"
        );
        // A cause repeated deeper in the chain (tonic's transport errors) shows once.
        let nested = Context(
            "could not reach the coordinator",
            Box::new(Context(
                "tcp connect error",
                Box::new(Context("tcp connect error", Box::new(io()))),
            )),
        );
        assert_eq!(
            error_text(&nested),
            "could not reach the coordinator: tcp connect error: No such file or directory"
        );
    }

    /// A malformed template would silently fall back to indicatif's default bar (no rate, no ETA).
    #[test]
    fn the_layout_parses_for_every_unit() {
        for unit in ["items", "steps"] {
            assert!(style(unit).is_ok(), "{unit}");
        }
    }
}
