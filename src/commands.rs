//! One function per subcommand: each turns the raw arguments into ready
//! objects and runs them. Errors that make a command unusable come back as
//! `anyhow::Error` and end in exit code 2.

mod sync;

use std::io::Write;

use anyhow::Context;

use crate::check::{self, Input};
use crate::cli::{
    CheckArgs, Cli, Command, InitArgs, PlanArgs, ReportArgs, RetryArgs, RunArgs, SandboxArgs,
    UndoArgs,
};
use crate::client::{ApiClient, ClientConfig};
use crate::credentials;
use crate::init;
use crate::job;
use crate::ledger::LedgerLock;
use crate::metrics;
use crate::outcomes::Outcomes;
use crate::pipeline;
use crate::preflight;
use crate::sandbox::{Sandbox, SandboxConfig};
use crate::undo;
use crate::Exit;
use crate::{mapping, report};
use std::sync::Arc;

/// Runs one parsed command line to its end.
pub async fn execute(cli: Cli) -> anyhow::Result<Exit> {
    // Commands that send listen for stop signals from their first moment:
    // none kills the process mid-call, or before its handler is set.
    if matches!(&cli.command, Command::Run(a) if !a.dry_run)
        || matches!(&cli.command, Command::Undo(a) if !a.dry_run)
        || matches!(
            &cli.command,
            Command::Retry(_) | Command::Sync(_) | Command::Plan(_)
        )
    {
        crate::signals::install();
    }
    match cli.command {
        Command::Sandbox(args) => sandbox(args).await,
        Command::Check(args) => check_command(&args).await,
        Command::Run(args) if args.dry_run => dry_run(&args),
        Command::Run(args) => run_command(args).await,
        Command::Report(args) => report_command(&args),
        Command::Retry(args) => retry_command(args).await,
        Command::Init(args) => init_command(&args).await,
        Command::Sync(args) => sync::sync_command(args).await,
        Command::Plan(args) => plan_command(&args).await,
        Command::Undo(args) => undo_command(&args).await,
    }
}

/// `thulium-import plan`: what `run` would do, to stdout only (it shows
/// the system's values and the file's); exit codes as `run`'s.
async fn plan_command(args: &PlanArgs) -> anyhow::Result<Exit> {
    let plan = crate::plan::plan(args).await?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        serde_json::to_writer(&mut out, &plan)?;
        writeln!(out)?;
    } else {
        crate::plan::print_text(&mut out, &plan, args.all)?;
    }
    Ok(crate::plan::exit_of(&plan))
}

/// `thulium-import undo`: takes a run back (see [`crate::undo`]) and says
/// what became of each target. Exit 0 when everything was reversed, 1
/// when something was kept, not undoable or errored, 3 when it stopped
/// early (a signal, a wrong password), 2 when it cannot start (no undo
/// file, creations of unknown outcome not looked up by `retry` yet).
async fn undo_command(args: &UndoArgs) -> anyhow::Result<Exit> {
    job::check_pace(&args.pace)?;
    let credentials = credentials::resolve(
        args.connect.url.as_deref(),
        args.connect.user.as_deref(),
        args.connect.password_file.as_deref(),
    )?;
    let client = ApiClient::new(&credentials, &job::client_config(&args.pace))
        .context("cannot set up the HTTP client")?;
    let options = undo::Options {
        ledger: args.ledger.clone(),
        dry_run: args.dry_run,
        state: args.state.clone(),
        concurrency: args.pace.concurrency.map_or(8, |c| c as usize),
    };
    if !args.json {
        eprintln!(
            "{} the run of {} in {} as {}",
            if args.dry_run {
                "Judging (dry run)"
            } else {
                "Taking back"
            },
            args.ledger.display(),
            credentials.root,
            credentials.user
        );
    }
    let undone = undo::undo(&options, client.clone(), &credentials.root).await?;
    let summary = &undone.summary;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        let json = serde_json::json!({
            "ledger": args.ledger.display().to_string(),
            "undo_ledger": undone.record_path.display().to_string(),
            "dry_run": args.dry_run,
            "counts": summary.counts,
            "finished": summary.finished,
            "settled_before": undone.settled_before,
            "targets": undone.events,
            "not_reversed": summary.not_reversed,
            "aborted": undone.aborted,
            "notes": undone.notes,
        });
        serde_json::to_writer(&mut out, &json)?;
        writeln!(out)?;
    } else {
        let counts = if args.dry_run {
            undo::record::render_dry_run(summary)
        } else {
            undo::record::render(summary)
        };
        writeln!(out, "{counts}")?;
        if undone.settled_before > 0 {
            writeln!(
                out,
                "{} target(s) settled by an earlier undo were left as they are",
                undone.settled_before
            )?;
        }
        writeln!(
            out,
            "requests: {} sent",
            client
                .stats
                .requests
                .load(std::sync::atomic::Ordering::Relaxed)
        )?;
        for note in &undone.notes {
            writeln!(out, "note: {note}")?;
        }
        if let Some(a) = &undone.aborted {
            writeln!(out, "aborted: {a}")?;
        }
        if args.dry_run {
            writeln!(out, "Dry run: nothing was sent or written.")?;
        } else {
            writeln!(out, "undo ledger: {}", undone.record_path.display())?;
        }
    }
    use undo::record::Outcome;
    Ok(if undone.aborted.is_some() {
        Exit::Aborted
    } else if [Outcome::Kept, Outcome::Errored, Outcome::NotUndoable]
        .iter()
        .all(|o| summary.count(*o) == 0)
    {
        Exit::Ok
    } else {
        Exit::RowsNotDone
    })
}

/// `thulium-import init`: writes a first mapping for a file (exit 0); exit
/// 2 when the file cannot be read or `--output` exists without `--force`.
async fn init_command(args: &InitArgs) -> anyhow::Result<Exit> {
    if let Some(out) = &args.output {
        if std::fs::canonicalize(out).ok() == std::fs::canonicalize(&args.file).ok() && out.exists()
        {
            anyhow::bail!("--output {} is the file to read", out.display());
        }
        if out.exists() && !args.force {
            anyhow::bail!("{} exists: pass --force to overwrite it", out.display());
        }
    }
    let system = if args.online {
        let client = reading_client(&args.connect)?;
        let system = init::read_system(&client)
            .await
            .map_err(|e| anyhow::anyhow!("cannot read what the system has: {e}"))?;
        eprintln!(
            "Read what the system has in {} request(s).",
            system.requests
        );
        Some(system)
    } else {
        None
    };
    let options = init::InitOptions {
        sheet: args.sheet.clone(),
        sample: args.sample,
    };
    let draft = init::draft(&args.file, &options, system.as_ref())?;
    let checked = init::verify(&args.file, &draft.text, draft.sampled)?;
    match &args.output {
        Some(out) => write_private(out, draft.text.as_bytes())
            .with_context(|| format!("cannot write {}", out.display()))?,
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(draft.text.as_bytes())?;
            stdout.flush()?;
        }
    }
    let mapped: Vec<String> = draft
        .mapped
        .iter()
        .map(|(key, column)| format!("{key} ← \"{column}\""))
        .collect();
    eprintln!(
        "Mapped {} column(s) to customer fields: {}; {} other column(s) left as comments.",
        mapped.len(),
        mapped.join(", "),
        draft.commented
    );
    if draft.match_keys.is_empty() {
        eprintln!("No column is a unique key in the rows sampled: no match suggested (every row creates a customer).");
    } else {
        eprintln!(
            "Suggested match = {}: customers that exist are found and updated.",
            draft.match_keys.join(", ")
        );
    }
    eprintln!(
        "Checked with the first {} row(s): {} valid, {} invalid.",
        checked.rows, checked.valid, checked.invalid
    );
    eprint!("{}", crate::reasons::render(&checked.reasons, 5));
    for note in &draft.notes {
        eprintln!("note: {note}");
    }
    if let Some(out) = &args.output {
        eprintln!(
            "Wrote {}. Read its comments, then: thulium-import check {} --mapping {}",
            out.display(),
            args.file.display(),
            out.display()
        );
    }
    Ok(Exit::Ok)
}

/// A client for the read-only GETs of `check --online` and `init
/// --online`, with the default pacing.
fn reading_client(connect: &crate::cli::ConnectArgs) -> anyhow::Result<Arc<ApiClient>> {
    let credentials = credentials::resolve(
        connect.url.as_deref(),
        connect.user.as_deref(),
        connect.password_file.as_deref(),
    )?;
    ApiClient::new(&credentials, &ClientConfig::default()).context("cannot set up the HTTP client")
}

/// Writes `bytes` to `path` through a temporary file beside it, created
/// 0600, renamed over `path` once complete.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)
}

/// `thulium-import check`: exit 0 when every row is valid, 1 when some are
/// not, 2 when the mapping or the file cannot be used.
async fn check_command(args: &CheckArgs) -> anyhow::Result<Exit> {
    let mut input = Input::open_sheet(&args.csv, &args.mapping, args.sheet.as_deref())?;
    if !args.json {
        eprintln!("Reading {}: {}", args.csv.display(), input.info());
    }
    let report = if args.online {
        let client = reading_client(&args.connect)?;
        let (named, from_column) = preflight::constant_campaigns(&input.mapping.raw);
        let wanted = job::SurveyFor {
            campaigns: from_column,
            ..job::SurveyFor::default()
        };
        let options = input.mapping.source_options()?;
        let survey = job::survey(&args.csv, &options, &input.plan, wanted, named)?;
        let system = job::preflight(&input.mapping, survey.named, &client, true)
            .await
            .map_err(said_as_run_says_it)?
            .unwrap_or_default();
        check::check_online(&mut input, args.limit, &system)?
    } else if args.limit.is_some() {
        check::check_rows(&mut input, args.limit, |_, _, _| Ok(()))?
    } else {
        check::check_parallel(&mut input)?
    }
    .grouped();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        serde_json::to_writer(&mut out, &report)?;
        writeln!(out)?;
    } else {
        let listed = if args.all {
            usize::MAX
        } else {
            args.max_errors
        };
        check::print_text(&mut out, &report, listed)?;
    }
    Ok(if report.invalid == 0 {
        Exit::Ok
    } else {
        Exit::RowsNotDone
    })
}

/// A read refused in a way that stops any run (a wrong password, a
/// redirect, broken paging), said as `run` says it: with what to check
/// (for a 401, where the API user's permissions are set). Still exit 3.
fn said_as_run_says_it(e: anyhow::Error) -> anyhow::Error {
    let reason = e
        .chain()
        .find_map(|c| c.downcast_ref::<crate::api::CallError>()?.stops_the_run());
    match reason {
        Some(reason) => crate::exit::Stopped(format!(
            "preflight: cannot read what the mapping refers to: {reason}"
        ))
        .into(),
        None => e,
    }
}

/// `thulium-import run --dry-run`: the `check` path, printing the payloads of
/// the first `--show-payloads` valid rows as JSON lines.
fn dry_run(args: &RunArgs) -> anyhow::Result<Exit> {
    let mut input = Input::open_sheet(&args.csv, &args.mapping, args.sheet.as_deref())?;
    eprintln!("Reading {}: {}", args.csv.display(), input.info());
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut shown = 0;
    let mut write_error = None;
    let report = check::check(&mut input, |plan, row, evaluated| {
        if shown < args.show_payloads && write_error.is_none() {
            shown += 1;
            let payloads = plan.assemble(evaluated, row);
            let line = serde_json::json!({"row": row.id.row, "line": row.id.line, "payloads": payloads.to_json()});
            if let Err(e) = writeln!(out, "{line}") {
                write_error = Some(e);
            }
        }
    })?;
    if let Some(e) = write_error {
        return Err(e.into());
    }
    let report = report.grouped();
    check::print_text(&mut out, &report, args.max_errors)?;
    writeln!(out, "Dry run: nothing was sent.")?;
    Ok(if report.invalid == 0 {
        Exit::Ok
    } else {
        Exit::RowsNotDone
    })
}

/// `thulium-import sandbox`: serve until Ctrl-C.
async fn sandbox(args: SandboxArgs) -> anyhow::Result<Exit> {
    if !(0.0..=1.0).contains(&args.fault_rate) {
        anyhow::bail!(
            "--fault-rate must be between 0 and 1, not {}",
            args.fault_rate
        );
    }
    let config = SandboxConfig {
        listen: args.listen,
        latency: std::time::Duration::from_millis(args.latency_ms),
        fault_rate: args.fault_rate,
        faults: args.faults,
        seed: args.seed,
        rate_limit: args.rate_limit,
        limiter: args.limiter,
        retry_after_secs: args.retry_after,
        max_batch: args.max_batch,
        user: args.user,
        password: args.password,
        journal_limit: args.journal_limit,
        preload_customers: args.preload_customers,
        campaign_agents: args
            .campaign_agents
            .iter()
            .map(|a| match a.split_once('=') {
                Some((id, logins)) => Ok((
                    id.trim().to_string(),
                    logins
                        .split(',')
                        .map(|l| l.trim().to_string())
                        .filter(|l| !l.is_empty())
                        .collect(),
                )),
                None => Err(anyhow::anyhow!(
                    "--campaign-agents {a}: expected ID=LOGIN,LOGIN (e.g. 00001=j.doe,a.nowak)"
                )),
            })
            .collect::<anyhow::Result<_>>()?,
        page_cap: args
            .page_cap
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        ignore_offset: args.ignore_offset,
    };
    let user = config.user.clone();
    let sandbox = Sandbox::start(config)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    if let (Some(csv), Some(mapping)) = (&args.preload, &args.preload_mapping) {
        let (customers, items) = sandbox.preload(csv, mapping)?;
        eprintln!(
            "Preloaded {customers} customer(s) and {items} field-group item(s) from {}",
            csv.display()
        );
    }
    // The password is the sandbox's own, given on its command line; it is
    // still not echoed, so that a terminal recording shows no credential.
    eprintln!(
        "Thulium sandbox listening on {url}\n  API:   {url}/api/... (Basic auth, user \"{user}\")\n  state: {url}/_sandbox/state\n  stats: {url}/_sandbox/stats\nPress Ctrl-C to stop.",
        url = sandbox.url()
    );
    tokio::signal::ctrl_c()
        .await
        .context("cannot wait for Ctrl-C")?;
    sandbox.stop();
    eprintln!("Sandbox stopped.");
    Ok(Exit::Ok)
}

/// `thulium-import run`: the import, prepared by the job layer; then the
/// metrics (`--metrics-file`), whatever the run's end.
async fn run_command(args: RunArgs) -> anyhow::Result<Exit> {
    let started = std::time::Instant::now();
    let mut observed = None;
    let result = run_job(&args, &mut observed).await;
    let source = file_name(&args.csv);
    write_metrics(&args.output, source, started, &result, observed);
    result
}

/// `run` itself; what it saw is left in `observed` once the summary is
/// printed.
async fn run_job(args: &RunArgs, observed: &mut Option<Seen>) -> anyhow::Result<Exit> {
    let job = job::prepare_run(args).await?;
    eprintln!(
        "Sending to {} as {} (ledger {})",
        job.root,
        job.user,
        job.ledger_path.display()
    );
    let ran = job::drive(job, &args.pace, &args.output).await;
    let summary = print_summary(&ran, observed)?;
    let progress = &ran.progress;
    let count = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    if count(&progress.reconciled) + count(&progress.duplicates) > 0 {
        println!(
            "{} customer(s) of unknown outcome found by identifier and adopted, {} found more than once (left as duplicates)",
            count(&progress.reconciled),
            count(&progress.duplicates)
        );
    }
    if count(&progress.left_unknown) > 0 {
        println!(
            "left out {} row(s) whose earlier outcome is unknown and cannot be looked up (no identifier, or a feed record): recorded unknown; --include-unknown sends them, and they may then be created twice",
            count(&progress.left_unknown)
        );
    }
    if let Some(sandbox) = &ran.sandbox {
        println!("sandbox now holds: {}", sandbox.holdings());
    }
    Ok(exit_for(&ran.end, &summary))
}

/// `thulium-import retry`: send again what a ledger says is not done; then
/// the metrics (`--metrics-file`), whatever the run's end.
async fn retry_command(args: RetryArgs) -> anyhow::Result<Exit> {
    let started = std::time::Instant::now();
    let mut observed = None;
    let result = retry_job(&args, &mut observed).await;
    let ledger_rows = || {
        let outcomes = Outcomes::read(&args.ledger).ok()?;
        Some((
            file_name(std::path::Path::new(&outcomes.header.source)),
            report::Report::of(&outcomes),
        ))
    };
    // A retry that could not start still names its source and counts the
    // ledger's rows (they are what is left to do), when the ledger reads.
    let source = match (&observed, &args.output.metrics_file) {
        (Some(seen), _) => seen.source.clone(),
        (None, Some(_)) => match ledger_rows() {
            Some((source, rows)) => {
                observed = Some(Seen {
                    source: source.clone(),
                    observed: metrics::Observed {
                        rows: Some(rows),
                        requests: None,
                    },
                });
                source
            }
            None => file_name(&args.ledger)
                .trim_end_matches(".ledger.jsonl")
                .to_string(),
        },
        (None, None) => String::new(),
    };
    write_metrics(&args.output, source, started, &result, observed);
    result
}

/// `retry` itself; what it saw is left in `observed` once the summary is
/// printed.
async fn retry_job(args: &RetryArgs, observed: &mut Option<Seen>) -> anyhow::Result<Exit> {
    let job = job::prepare_retry(args).await?;
    eprintln!(
        "Retrying the rows of {} that are not done, against {}",
        args.ledger.display(),
        job.root
    );
    let ran = job::drive(job, &args.pace, &args.output).await;
    let summary = print_summary(&ran, observed)?;
    let planning = ran
        .planning
        .as_ref()
        .map(|p| p.lock().unwrap_or_else(|e| e.into_inner()).clone())
        .unwrap_or_default();
    let progress = &ran.progress;
    let count = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    // Every figure is a count of what planning decided or the run did: the
    // invalid rows include those left as they were (listed below them).
    println!(
        "retry: {} row(s) looked at, {} customer(s) reconciled by identifier, {} row(s) sent ({} again, {} not sent before), {} left as duplicates, {} invalid",
        planning.rows_seen,
        count(&progress.reconciled),
        planning.rows_sent,
        planning.rows_sent - planning.rows_first,
        planning.rows_first,
        count(&progress.duplicates),
        planning.invalid_rows()
    );
    if planning.rechecked_sent + planning.rechecked_invalid > 0 {
        println!(
            "  invalid before, mapped and checked again against the system: {} stage(s) sent, {} still invalid (recorded again)",
            planning.rechecked_sent, planning.rechecked_invalid
        );
    }
    if planning.ambiguous_again > 0 {
        println!(
            "  looked up again: {} customer(s) found more than once before",
            planning.ambiguous_again
        );
    }
    for (reason, n) in &planning.left {
        println!("  left {n}: {reason}");
    }
    Ok(exit_for(&ran.end, &summary))
}

/// Folds the ledger and prints the summary table and the request figures;
/// leaves them in `observed` for the metrics.
pub(super) fn print_summary(
    ran: &job::Ran,
    observed: &mut Option<Seen>,
) -> anyhow::Result<report::Report> {
    let job::Ran {
        ledger_path,
        client,
        end,
        elapsed,
        ..
    } = ran;
    let outcomes = Outcomes::read(ledger_path)?;
    let summary = report::Report::of(&outcomes);
    let stats = &client.stats;
    let requests = stats.requests.load(std::sync::atomic::Ordering::Relaxed);
    *observed = Some(Seen {
        source: file_name(std::path::Path::new(&outcomes.header.source)),
        observed: metrics::Observed {
            rows: Some(summary.clone()),
            requests: Some((
                requests,
                stats
                    .throttled_429
                    .load(std::sync::atomic::Ordering::Relaxed),
            )),
        },
    });
    println!("{}", report::render(&summary));
    println!(
        "requests: {requests} sent, {} retries, {} answered 429; elapsed {:.1} s, {:.1} rows/s, {:.1} requests/s",
        stats.retries.load(std::sync::atomic::Ordering::Relaxed),
        stats.throttled_429.load(std::sync::atomic::Ordering::Relaxed),
        elapsed.as_secs_f64(),
        end.rows_read as f64 / elapsed.as_secs_f64().max(0.001),
        requests as f64 / elapsed.as_secs_f64().max(0.001),
    );
    if client.is_auto() {
        let rate = client.rate();
        match client.settled_limit() {
            Some(limit) => {
                println!("rate: auto, settled at {rate:.1} requests/s (last refused at {limit:.1})")
            }
            None => println!("rate: auto, reached {rate:.1} requests/s without being refused"),
        }
    }
    println!("ledger: {}", ledger_path.display());
    for note in &ran.notes {
        println!("note: {note}");
    }
    if let Some(e) = &end.read_error {
        eprintln!("error: {e}");
    }
    Ok(summary)
}

/// What a run saw, kept for its metrics: the ledger's source file name
/// (the `source` label) and the counts.
pub(super) struct Seen {
    source: String,
    observed: metrics::Observed,
}

/// A path's last component, for the metrics' `source` label.
fn file_name(path: &std::path::Path) -> String {
    path.file_name()
        .unwrap_or(path.as_os_str())
        .to_string_lossy()
        .into_owned()
}

/// Writes `--metrics-file`, if asked, for a command that ended in
/// `result`: what the run saw (nothing when it stopped before its job was
/// prepared), its duration from `started`, its exit code. A file that
/// cannot be written is a warning, not another exit code: the exit code
/// says what became of the rows, and a cron job or a script branching on
/// it must not take a full disk under the metrics for a failed import.
/// The collector shows the stale file's age (`last_run`) meanwhile.
pub(super) fn write_metrics(
    output: &crate::cli::OutputArgs,
    source: String,
    started: std::time::Instant,
    result: &anyhow::Result<Exit>,
    observed: Option<Seen>,
) {
    let Some(path) = &output.metrics_file else {
        return;
    };
    let exit = match result {
        Ok(exit) => *exit,
        Err(e) => Exit::of_error(e),
    };
    let run = metrics::RunMetrics {
        source,
        observed: observed.map_or(
            metrics::Observed {
                rows: None,
                requests: None,
            },
            |o| o.observed,
        ),
        duration: started.elapsed(),
        exit_code: exit.code(),
        finished: std::time::SystemTime::now(),
    };
    if let Err(e) = metrics::write(path, &run) {
        eprintln!("warning: {e} (the exit code is the run's)");
    }
}

/// A run that stopped early, or whose source failed mid-file, is aborted
/// (3); one that finished with rows not done is 1.
fn exit_for(end: &pipeline::RunEnd, summary: &report::Report) -> Exit {
    if end.aborted.is_some() || end.read_error.is_some() {
        Exit::Aborted
    } else if summary.all_done() {
        Exit::Ok
    } else {
        Exit::RowsNotDone
    }
}

/// `thulium-import report`: fold a ledger into counts and list the rows not done.
fn report_command(args: &ReportArgs) -> anyhow::Result<Exit> {
    // The failed-rows CSV is read from a ledger no process is writing.
    let _lock = match &args.failed_csv {
        Some(_) => Some(LedgerLock::acquire(&args.ledger, "report --failed-csv")?),
        None => None,
    };
    let outcomes = Outcomes::read(&args.ledger)?;
    let summary = report::Report::of(&outcomes).with_undo(&args.ledger, &outcomes);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if let Some(path) = &args.failed_csv {
        let names = mapping::load(std::path::Path::new(&outcomes.header.mapping))
            .map(|m| mapping::field_group_done_names(&m.raw))
            .unwrap_or_default();
        let n = crate::failed_csv::write(&outcomes, path, args.utf8, &names)?;
        eprintln!("{n} row(s) not done written to {}", path.display());
        if args.utf8 {
            // The file is UTF-8 with commas whatever the export was: the
            // mapping that imports it must say so.
            let mapping = std::path::Path::new(&outcomes.header.mapping);
            match crate::failed_csv::write_utf8_mapping(mapping, path) {
                Ok(copy) => eprintln!(
                    "It is UTF-8 with commas: import it with {}, a copy of the mapping with [source] delimiter = \",\" and encoding = \"utf-8\" (thulium-import run {} --mapping {}).",
                    copy.display(),
                    path.display(),
                    copy.display()
                ),
                Err(e) => eprintln!(
                    "It is UTF-8 with commas: importing it needs delimiter = \",\" and encoding = \"utf-8\" in the mapping's [source] (no copy of the mapping written: {e})."
                ),
            }
        }
    }
    if args.json {
        serde_json::to_writer(&mut out, &summary)?;
        writeln!(out)?;
    } else {
        writeln!(out, "{}", report::render(&summary))?;
        // The reasons are in the summary; every row with `--all`.
        let listed = if args.all { usize::MAX } else { 0 };
        for p in outcomes.problems(listed) {
            writeln!(
                out,
                "row {} (line {}): {} {}: {}",
                p.row,
                p.line,
                p.stage.name(),
                p.status_name(),
                p.message
            )?;
        }
        for line in &summary.unreadable_lines {
            writeln!(out, "unreadable ledger {line} (ignored)")?;
        }
    }
    Ok(if summary.all_done() {
        Exit::Ok
    } else {
        Exit::RowsNotDone
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_whose_source_failed_mid_file_exits_3() {
        let end = |aborted: Option<&str>, read_error: Option<&str>| pipeline::RunEnd {
            rows_read: 10,
            aborted: aborted.map(str::to_string),
            read_error: read_error.map(str::to_string),
            limit: None,
        };
        let all_done = report::Report {
            rows: 10,
            ok: 10,
            ..Default::default()
        };
        let some_left = report::Report {
            rows: 10,
            ok: 9,
            invalid: 1,
            ..Default::default()
        };
        assert_eq!(exit_for(&end(None, None), &all_done), Exit::Ok);
        assert_eq!(exit_for(&end(None, None), &some_left), Exit::RowsNotDone);
        assert_eq!(
            exit_for(&end(None, Some("disk gone")), &all_done),
            Exit::Aborted
        );
        assert_eq!(
            exit_for(&end(Some("Ctrl-C"), None), &all_done),
            Exit::Aborted
        );
    }
}
