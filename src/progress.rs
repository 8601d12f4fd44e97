//! What a person sees while a run goes: indicatif bars on a terminal, a
//! progress log line every few seconds otherwise; and a tracing writer that
//! suspends the bars while it prints, so that logs never tear them.

use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::client::ApiClient;
use crate::pipeline::Progress;

static BARS: OnceLock<MultiProgress> = OnceLock::new();

/// A tracing writer to stderr that draws around the progress bars.
#[derive(Debug, Clone, Copy, Default)]
pub struct StderrWriter;

impl Write for StderrWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match BARS.get() {
            Some(bars) => bars
                .suspend(|| std::io::stderr().write_all(buf))
                .map(|()| buf.len()),
            None => std::io::stderr().write_all(buf).map(|()| buf.len()),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for StderrWriter {
    type Writer = StderrWriter;
    fn make_writer(&'a self) -> Self::Writer {
        StderrWriter
    }
}

/// Whether bars are drawn: stderr is a terminal and `--no-progress` absent.
pub fn bars_wanted(no_progress: bool) -> bool {
    !no_progress && std::io::stderr().is_terminal()
}

/// Shows progress until the returned handle is dropped.
pub fn start(
    progress: Arc<Progress>,
    client: Arc<ApiClient>,
    file_bytes: u64,
    bars: bool,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let started = Instant::now();
        let line = move || {
            let c = |s: usize, t: usize| progress.counts[s][t].load(Ordering::Relaxed);
            let requests = client.stats.requests.load(Ordering::Relaxed);
            let rate = requests as f64 / started.elapsed().as_secs_f64().max(0.001);
            let names = ["customer", "field_group", "campaign", "update", "feed"];
            let stages: Vec<String> = (0..5)
                .filter(|s| (0..4).any(|t| c(*s, t) > 0))
                .map(|s| format!("{} {}✓ {}✗ {}?", names[s], c(s, 0), c(s, 1), c(s, 2)))
                .collect();
            (
                progress.rows_read.load(Ordering::Relaxed),
                progress.bytes_read.load(Ordering::Relaxed),
                format!(
                    "{} | {requests} req, {rate:.1} req/s, {} retries, {} × 429",
                    stages.join(" | "),
                    client.stats.retries.load(Ordering::Relaxed),
                    client.stats.throttled_429.load(Ordering::Relaxed)
                ),
            )
        };
        if bars {
            let multi =
                BARS.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
            let read = multi.add(ProgressBar::new(file_bytes.max(1)));
            read.set_style(
                ProgressStyle::with_template(
                    "{spinner} read {msg} rows [{bar:30}] {percent}% ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            let status = multi.add(ProgressBar::new_spinner());
            loop {
                let (rows, bytes, text) = line();
                read.set_position(bytes);
                read.set_message(rows.to_string());
                status.set_message(text);
                status.tick();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        } else {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let (rows, _, text) = line();
                tracing::info!(rows, "Progress: {text}");
            }
        }
    })
}

/// Removes the bars (before the summary is printed).
pub fn finish() {
    if let Some(bars) = BARS.get() {
        let _ = bars.clear();
    }
}
