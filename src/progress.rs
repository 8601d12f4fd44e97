//! What a person sees while a run goes: indicatif bars on a terminal, a
//! progress log line every few seconds otherwise; and a tracing writer that
//! suspends the bars while it prints, so that logs never tear them.

use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::client::ApiClient;
use crate::ledger::{Action, Stage};
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
            let requests = client.stats.requests.load(Ordering::Relaxed);
            let rate = requests as f64 / started.elapsed().as_secs_f64().max(0.001);
            let stages: Vec<String> = Stage::SENDING
                .iter()
                .filter_map(|stage| Some((stage, progress.tally(*stage)?)))
                .filter(|(_, t)| t.total() > 0)
                .map(|(stage, t)| {
                    let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
                    let name = match stage {
                        Stage::CampaignUpdate => "update",
                        other => other.name(),
                    };
                    format!("{name} {}✓ {}✗ {}?", n(&t.ok), n(&t.failed), n(&t.unknown))
                })
                .collect();
            let actions: Vec<String> = Action::ALL
                .iter()
                .zip(&progress.actions)
                .filter(|(a, n)| **a != Action::Kept && n.load(Ordering::Relaxed) > 0)
                .map(|(a, n)| format!("{} {}", n.load(Ordering::Relaxed), a.name()))
                .collect();
            let mut actions = if actions.is_empty() {
                String::new()
            } else {
                format!(" | customers {}", actions.join(", "))
            };
            // Not a customer's action: records and messages left as they are.
            let kept = Action::ALL
                .iter()
                .position(|a| *a == Action::Kept)
                .map_or(0, |i| progress.actions[i].load(Ordering::Relaxed));
            if kept > 0 {
                actions.push_str(&format!(" | {kept} kept"));
            }
            Line {
                rows: progress.rows_read.load(Ordering::Relaxed),
                bytes: progress.bytes_read.load(Ordering::Relaxed),
                settled: progress.rows_settled.load(Ordering::Relaxed),
                text: format!(
                    "{}{actions} | {requests} req, {rate:.1} req/s{}, {} in flight, {} retries, {} × 429",
                    stages.join(" | "),
                    pace_note(&client),
                    progress.in_flight.load(Ordering::Relaxed),
                    client.stats.retries.load(Ordering::Relaxed),
                    client.stats.throttled_429.load(Ordering::Relaxed)
                ),
            }
        };
        if bars {
            let multi =
                BARS.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
            let style = |template: &str| {
                ProgressStyle::with_template(template)
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> ")
            };
            // Reading runs ahead of sending (by the rows queued between the
            // stages), so the ETA follows the rows settled, out of a total
            // estimated from how far into the file reading has got.
            let read = multi.add(ProgressBar::new(file_bytes.max(1)));
            read.set_style(style("  read {msg} rows [{bar:30}] {percent}%"));
            let done = multi.add(ProgressBar::new(1));
            done.set_style(style(
                "{spinner} done {pos} of ~{len} rows [{bar:30}] {percent}% ETA {eta}",
            ));
            let status = multi.add(ProgressBar::new_spinner());
            loop {
                let l = line();
                read.set_position(l.bytes);
                read.set_message(l.rows.to_string());
                done.set_length(estimated_rows(l.rows, l.bytes, file_bytes).max(l.settled));
                done.set_position(l.settled);
                status.set_message(l.text);
                status.tick();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        } else {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let l = line();
                tracing::info!(
                    rows = l.rows,
                    settled = l.settled,
                    "Progress: {} rows read, {} settled | {}",
                    l.rows,
                    l.settled,
                    l.text
                );
            }
        }
    })
}

/// With `--rate auto`: the rate in force and the limit found so far.
pub fn pace_note(client: &ApiClient) -> String {
    if !client.is_auto() {
        return String::new();
    }
    match client.settled_limit() {
        Some(limit) => format!(
            " (auto: {:.1} in force, refused at {limit:.1})",
            client.rate()
        ),
        None => format!(" (auto: {:.1} in force, not refused yet)", client.rate()),
    }
}

/// One reading of the counters.
struct Line {
    rows: u64,
    bytes: u64,
    settled: u64,
    text: String,
}

/// The file's rows, estimated from `rows` read, the last of them starting at
/// byte `last_offset` of `file_bytes`: the rows before it took that many
/// bytes. Never below `rows`; exact enough once reading is far in.
pub fn estimated_rows(rows: u64, last_offset: u64, file_bytes: u64) -> u64 {
    if rows <= 1 || last_offset == 0 {
        return rows.max(1);
    }
    let before = (rows - 1) as f64;
    let estimate = (before * file_bytes as f64 / last_offset as f64).round() as u64;
    estimate.max(rows)
}

/// Removes the bars (before the summary is printed).
pub fn finish() {
    if let Some(bars) = BARS.get() {
        let _ = bars.clear();
    }
}
