//! One function per subcommand: each turns the raw arguments into ready
//! objects and runs them. Errors that make a command unusable come back as
//! `anyhow::Error` and end in exit code 2.

use std::io::Write;

use anyhow::Context;

use crate::check::{self, Input};
use crate::cli::{
    CheckArgs, Cli, Command, IndexMode, InitArgs, OutputArgs, PaceArgs, ReportArgs, RetryArgs,
    RunArgs, SandboxArgs, SyncArgs,
};
use crate::client::{ApiClient, ClientConfig};
use crate::credentials::{self, Credentials, Password};
use crate::identity;
use crate::init;
use crate::ledger::{self, Header, Ledger, LedgerLock};
use crate::outcomes::Outcomes;
use crate::pace::RateSpec;
use crate::pipeline::{self, Abort, Limits, Progress};
use crate::preflight;
use crate::sandbox::{Sandbox, SandboxConfig};
use crate::state::SyncState;
use crate::Exit;
use crate::{mapping, progress, report, resume};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs one parsed command line to its end.
pub async fn execute(cli: Cli) -> anyhow::Result<Exit> {
    match cli.command {
        Command::Sandbox(args) => sandbox(args).await,
        Command::Check(args) => check_command(&args).await,
        Command::Run(args) if args.dry_run => dry_run(&args),
        Command::Run(args) => run_command(args).await,
        Command::Report(args) => report_command(&args),
        Command::Retry(args) => retry_command(args).await,
        Command::Init(args) => init_command(&args).await,
    }
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
    let mut input = Input::open(&args.csv, &args.mapping)?;
    if !args.json {
        eprintln!("Reading {}: {}", args.csv.display(), input.info());
    }
    let report = if args.online {
        let client = reading_client(&args.connect)?;
        let system = preflight(&input.mapping, &args.csv, &args.mapping, &client, true)
            .await?
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

/// `thulium-import run --dry-run`: the `check` path, printing the payloads of
/// the first `--show-payloads` valid rows as JSON lines.
fn dry_run(args: &RunArgs) -> anyhow::Result<Exit> {
    let mut input = Input::open(&args.csv, &args.mapping)?;
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
    check::print_text(&mut out, &report, 20)?;
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

/// `thulium-import run`: the import.
async fn run_command(args: RunArgs) -> anyhow::Result<Exit> {
    check_pace(&args.pace)?;
    let input = Input::open(&args.csv, &args.mapping)?;
    check_sync(&args.sync, &input.plan)?;
    // The in-process sandbox gets a fresh random password: nothing to leak.
    let sandbox = if args.sandbox {
        let password = format!("{:032x}", rand::random::<u128>());
        let config = SandboxConfig {
            password: password.clone(),
            ..SandboxConfig::default()
        };
        let sandbox = Sandbox::start(config)
            .await
            .context("cannot start the sandbox")?;
        eprintln!(
            "Sandbox started on {} (in-process; it ends with this run)",
            sandbox.url()
        );
        Some((sandbox, password))
    } else {
        None
    };
    let credentials = match &sandbox {
        Some((s, password)) => Credentials {
            root: s.url(),
            user: "api_user".into(),
            password: Password::new(password.clone()),
        },
        None => credentials::resolve(
            args.connect.url.as_deref(),
            args.connect.user.as_deref(),
            args.connect.password_file.as_deref(),
        )?,
    };
    // A rehearsal against the in-process sandbox gets its own default ledger,
    // replaced on every run: the sandbox it describes is gone.
    let ledger_path = args.ledger.clone().unwrap_or_else(|| {
        let mut p = args.csv.clone().into_os_string();
        p.push(if args.sandbox {
            ".sandbox.ledger.jsonl"
        } else {
            ".ledger.jsonl"
        });
        p.into()
    });
    let existing = if args.force_new_ledger {
        ledger::Existing::KeepAside
    } else if args.sandbox && args.ledger.is_none() {
        ledger::Existing::Replace
    } else {
        ledger::Existing::Refuse
    };
    let header = Header {
        version: 1,
        // Absolute, so that `retry` finds them from any working directory.
        source: absolute(&args.csv),
        source_sha256: ledger::sha256_file(&args.csv)
            .with_context(|| format!("{}: cannot read", args.csv.display()))?,
        mapping: absolute(&args.mapping),
        mapping_sha256: ledger::sha256_file(&args.mapping)
            .with_context(|| format!("{}: cannot read", args.mapping.display()))?,
        started_at: ledger::now(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
    };
    let client = ApiClient::new(&credentials, &client_config(&args.pace))
        .context("cannot set up the HTTP client")?;
    eprintln!("Reading {}: {}", args.csv.display(), input.info());
    // A ledger path in use refuses the run before anything is asked.
    ledger::check_free(&ledger_path, existing)?;
    // Before the ledger: what cannot be set up leaves nothing behind.
    // Preflight first: a handful of GETs that may refuse the mapping, before
    // an index that may read the whole system.
    // The state is local: one of another system refuses the run before
    // anything is asked.
    let state = open_state(&args.sync, &credentials.root)?;
    let system = if args.no_preflight {
        None
    } else {
        preflight(&input.mapping, &args.csv, &args.mapping, &client, false).await?
    };
    let csv = args.csv.clone();
    let mapping_path = args.mapping.clone();
    let full = args.sync.full;
    let sync = prepare_sync(&args.sync, &input.plan, &client, state, move |state| {
        rows_to_look_up(&csv, &mapping_path, state, full)
    })
    .await?;
    if !args.no_preflight {
        first_contact(&client).await?;
    }
    let ledger = Ledger::create(&ledger_path, header, existing, "run")?;
    eprintln!(
        "Sending to {} as {} (ledger {})",
        credentials.root,
        credentials.user,
        ledger_path.display()
    );

    let Input { source, plan, .. } = input;
    let rows = pipeline::mapped_rows(source, Arc::new(plan), args.include_unknown, system);
    let job = Job {
        ledger,
        sync,
        file_bytes: std::fs::metadata(&args.csv).map(|m| m.len()).unwrap_or(0),
        pilot: args.limit,
    };
    let (end, elapsed, progress) = drive(rows, &client, job, &args.pace, &args.output).await;
    let summary = print_summary(&ledger_path, &client, &end, elapsed)?;
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
    if let Some((sandbox, _)) = &sandbox {
        println!("sandbox now holds: {}", sandbox.holdings());
    }
    Ok(exit_for(&end, &summary))
}

/// What one run of the pipeline is given, besides its rows and pacing.
struct Job {
    ledger: Ledger,
    sync: pipeline::Matching,
    /// The file's size, for the progress bar (0: unknown).
    file_bytes: u64,
    /// `--limit`: a pilot.
    pilot: Option<u64>,
}

/// Runs the pipeline over `rows` with Ctrl-C handling and progress display.
async fn drive(
    rows: impl Iterator<Item = pipeline::Incoming> + Send + 'static,
    client: &Arc<ApiClient>,
    job: Job,
    pace: &PaceArgs,
    output: &OutputArgs,
) -> (pipeline::RunEnd, Duration, Arc<Progress>) {
    let Job {
        ledger,
        sync,
        file_bytes,
        pilot,
    } = job;
    let abort = Arc::new(Abort::default());
    // Listening starts before the first call: from here on a SIGTERM or
    // SIGHUP ends the run cleanly instead of killing it mid-call.
    let signals = crate::signals::Signals::listen();
    let stopper = {
        let abort = abort.clone();
        tokio::spawn(async move {
            let mut signals = match signals {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot listen for SIGTERM and SIGHUP.");
                    return;
                }
            };
            let first = signals.next().await;
            abort.trip(format!(
                "interrupted ({first}): calls in flight were finished and recorded"
            ));
            let second = signals.next().await;
            eprintln!(
                "Second stop signal ({second}): exiting now; `retry` resumes from the ledger."
            );
            std::process::exit(i32::from(Exit::Aborted.code()));
        })
    };
    let progress_state = Arc::new(Progress::default());
    let ticker = progress::start(
        progress_state.clone(),
        client.clone(),
        file_bytes,
        progress::bars_wanted(output.no_progress),
    );
    let limits = Limits {
        batch_size: pace.batch_size as usize,
        concurrency: pace
            .concurrency
            .map_or(pipeline::MAX_IN_FLIGHT, |c| c as usize),
        max_consecutive_failures: pace.max_consecutive_failures,
        max_failures: pace.max_failures,
        max_failure_rate: pace.max_failure_rate,
        rows: pilot,
    };
    let started = Instant::now();
    let end = pipeline::run(
        rows,
        client.clone(),
        ledger,
        limits,
        abort,
        progress_state.clone(),
        sync,
    )
    .await;
    let elapsed = started.elapsed();
    ticker.abort();
    stopper.abort();
    progress::finish();
    (end, elapsed, progress_state)
}

/// Folds the ledger and prints the summary table and the request figures.
fn print_summary(
    ledger_path: &std::path::Path,
    client: &ApiClient,
    end: &pipeline::RunEnd,
    elapsed: Duration,
) -> anyhow::Result<report::Report> {
    let summary = report::Report::of(&Outcomes::read(ledger_path)?);
    let stats = &client.stats;
    let requests = stats.requests.load(std::sync::atomic::Ordering::Relaxed);
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
    if let Some(e) = &end.read_error {
        eprintln!("error: {e}");
    }
    Ok(summary)
}

fn absolute(path: &std::path::Path) -> String {
    std::fs::canonicalize(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
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

fn client_config(pace: &PaceArgs) -> ClientConfig {
    let (rate, auto_max) = match pace.rate {
        RateSpec::Fixed(r) => (r, None),
        RateSpec::Auto { max } => (max, Some(max)),
    };
    ClientConfig {
        rate,
        auto_max,
        timeout: Duration::from_secs(pace.timeout.max(1)),
        policy: crate::retry::Policy {
            max_attempts: pace.max_attempts,
            ..Default::default()
        },
        max_unreachable: pace.max_consecutive_failures,
    }
}

fn check_pace(pace: &PaceArgs) -> anyhow::Result<()> {
    if let Some(p) = pace.max_failure_rate {
        if !(0.0..=100.0).contains(&p) {
            anyhow::bail!("--max-failure-rate is a percentage from 0 to 100, not {p}");
        }
    }
    Ok(())
}

/// Preflight: reads what the mapping refers to (the campaigns the file's
/// rows use among them) and refuses, before anything is sent, what cannot
/// work for any row. `None` when the mapping refers to nothing the system
/// configures, or (unless `strict`, as `check --online` is) when the
/// system cannot be read.
async fn preflight(
    loaded: &mapping::Loaded,
    csv: &std::path::Path,
    mapping_path: &std::path::Path,
    client: &ApiClient,
    strict: bool,
) -> anyhow::Result<Option<Arc<preflight::System>>> {
    let (mut named, from_column) = preflight::constant_campaigns(&loaded.raw);
    if from_column {
        // Campaign ids come from a column: the file says which, stage by
        // stage (a constant that none of them has is refused).
        let mut input = Input::open(csv, mapping_path)?;
        while let Some(row) = input.source.next_row() {
            let Ok(row) = row? else { continue };
            if let Ok(p) = input.plan.map_row(&row) {
                named.campaign.extend(p.campaign.map(|c| c.campaign_id));
                named
                    .campaign_update
                    .extend(p.campaign_update.map(|u| u.campaign_id));
            }
            // Each campaign costs two GETs: past a few hundred, the rest
            // are left to the server (and nothing is refused for all rows).
            if named.campaign.len() + named.campaign_update.len() > 200 {
                named.complete = false;
                break;
            }
        }
    }
    let needs = preflight::Needs::of(&loaded.raw, named);
    if !needs.any() {
        return Ok(None);
    }
    let system = match preflight::System::read(client, &needs).await {
        Ok(system) => system,
        // The system could not say (a method this API user may not call, a
        // server that keeps failing): the import goes on, and the server
        // refuses what it refuses. One that cannot be reached, or refuses
        // the password, is an aborted night, found at once.
        Err(e) if !strict => {
            stop_if_unreachable(&e)?;
            eprintln!("warning: preflight skipped: cannot read what the mapping refers to: {e}");
            return Ok(None);
        }
        // Kept as the call error: a list that cannot be paged stops (exit 3).
        Err(e) => {
            return Err(
                anyhow::Error::new(e).context("preflight: cannot read what the mapping refers to")
            )
        }
    };
    preflight::check_mapping(loaded, &system)?;
    eprintln!(
        "Preflight: what the mapping refers to, read in {} request(s): {} field group(s), {} campaign(s), {} agent(s)",
        system.requests,
        system.field_groups.as_ref().map_or(0, Vec::len),
        system.campaigns.len(),
        system.agents.as_ref().map_or(0, Vec::len)
    );
    Ok(Some(Arc::new(system)))
}

/// Stops a run before anything is sent (exit 3) when a read shows that the
/// system cannot be worked with: it cannot be reached (connections refused,
/// DNS, TLS), refuses the credentials (401), redirects, or pages wrongly. A
/// 403 (an API user without permission for one method) does not stop it.
fn stop_if_unreachable(e: &crate::api::CallError) -> anyhow::Result<()> {
    use crate::api::CallError;
    match e {
        CallError::Unauthorized { status: 403, .. } => Ok(()),
        _ => match e.stops_the_run() {
            Some(reason) => Err(crate::exit::Stopped(format!("{reason}: nothing was sent")).into()),
            None => Ok(()),
        },
    }
}

/// Opens the sync state (`--state`) of the system at `root`.
fn open_state(args: &SyncArgs, root: &str) -> anyhow::Result<Option<Arc<SyncState>>> {
    Ok(match &args.state {
        Some(path) => Some(SyncState::open(path, root)?),
        None => None,
    })
}

/// Before the ledger is begun (unless `--no-preflight`, which asks for no
/// reads): when nothing has been asked of the system yet (preflight had
/// nothing to read, no index or count was needed), one
/// small read (`GET customers?limit=1`), so that a wrong URL, a system
/// down or a wrong password stops the run (exit 3) before anything is
/// written, not after the first POST.
async fn first_contact(client: &ApiClient) -> anyhow::Result<()> {
    if client
        .stats
        .requests
        .load(std::sync::atomic::Ordering::Relaxed)
        > 0
    {
        return Ok(());
    }
    if let Err(e) = identity::Index::count(client).await.result {
        stop_if_unreachable(&e)?;
    }
    Ok(())
}

/// `--state` and `--full` need the mapping to match customers.
fn check_sync(args: &SyncArgs, plan: &mapping::Plan) -> anyhow::Result<()> {
    if plan.upsert().is_none() && (args.state.is_some() || args.full) {
        anyhow::bail!(
            "--state and --full need [customer] match in the mapping: the keys that tell a row's customer from one run to the next"
        );
    }
    Ok(())
}

/// Opens the sync state and decides how customers are found: an index of
/// the whole system when reading it takes fewer requests than looking the
/// rows up one by one (`--index auto`), as `count_lookups` counts them.
async fn prepare_sync(
    args: &SyncArgs,
    plan: &mapping::Plan,
    client: &ApiClient,
    state: Option<Arc<SyncState>>,
    count_lookups: impl FnOnce(Option<&SyncState>) -> anyhow::Result<u64>,
) -> anyhow::Result<pipeline::Matching> {
    let Some(upsert) = plan.upsert() else {
        return Ok(pipeline::Matching {
            feed_on_match: plan.feed_on_match(),
            ..pipeline::Matching::default()
        });
    };
    let use_index = match args.index {
        IndexMode::Never => false,
        IndexMode::Always => true,
        IndexMode::Auto => {
            let lookups = count_lookups(state.as_deref())?;
            if lookups == 0 {
                false
            } else {
                let count = identity::Index::count(client).await.result?;
                let pages = count.map_or(u64::MAX, |c| c.div_ceil(1000).max(1));
                eprintln!(
                    "Finding customers: {lookups} row(s) to look up; the system holds {} customer(s), {pages} page(s) to read them all: {}",
                    count.map_or("an unknown number of".into(), |c| c.to_string()),
                    if pages < lookups { "reading them all (an index)" } else { "a lookup per row" }
                );
                pages < lookups
            }
        }
    };
    let index = if use_index {
        let index = identity::Index::read(client, &upsert.keys).await?;
        eprintln!(
            "Index: {} customer(s) read in {} request(s)",
            index.customers, index.pages
        );
        Some(index)
    } else {
        None
    };
    Ok(pipeline::Matching {
        upsert: Some(upsert.clone()),
        finder: identity::Finder {
            index,
            state: state.clone(),
        },
        state,
        full: args.full,
        group_parts: plan.group_parts().to_vec(),
        feed_on_match: plan.feed_on_match(),
    })
}

/// How many rows of a file a run without an index would look up: every
/// row with a match-key value, but those whose customer the sync state
/// remembers with the very fields the row has (an unchanged row needs no
/// confirmation; `--full` confirms every row).
fn rows_to_look_up(
    csv: &std::path::Path,
    mapping_path: &std::path::Path,
    state: Option<&SyncState>,
    full: bool,
) -> anyhow::Result<u64> {
    let mut input = Input::open(csv, mapping_path)?;
    let keys = input.plan.lookup_keys();
    let upsert = input.plan.upsert().cloned();
    let mut n = 0;
    while let Some(row) = input.source.next_row() {
        let Ok(row) = row? else { continue };
        let Ok(payloads) = input.plan.map_row(&row) else {
            continue;
        };
        let Some(customer) = &payloads.customer else {
            continue;
        };
        let row_keys = identity::RowKeys::of(customer, &keys);
        let unchanged = || {
            let state = state?;
            let id = row_keys.hashes().find_map(|(_, h)| state.customer_of(h))?;
            let hash =
                crate::hash::payload_hash(&pipeline::customer_update(upsert.as_ref(), &payloads)?);
            Some(state.part(id, "customer")?.0 == hash)
        };
        if !row_keys.is_empty() && (full || unchanged() != Some(true)) {
            n += 1;
        }
    }
    Ok(n)
}

/// `thulium-import retry`: send again what a ledger says is not done.
async fn retry_command(args: RetryArgs) -> anyhow::Result<Exit> {
    check_pace(&args.pace)?;
    // Locked before it is read: a run still writing it would change it.
    let lock = LedgerLock::acquire(&args.ledger, "retry")?;
    let outcomes = Outcomes::read(&args.ledger)?;
    let header = outcomes.header.clone();
    for line in &outcomes.unreadable {
        eprintln!(
            "warning: {}: unreadable {line} (ignored; a crash mid-write leaves one)",
            args.ledger.display()
        );
    }
    let (source_path, seekable) = match &args.source {
        Some(p) => (p.clone(), false),
        None => {
            let p = std::path::PathBuf::from(&header.source);
            let sha = ledger::sha256_file(&p)
                .with_context(|| format!("{}: cannot read the ledger's source", p.display()))?;
            if sha != header.source_sha256 {
                anyhow::bail!(
                    "{}: the file changed since the run (its SHA-256 differs from the ledger's), so its rows may not be the ledger's rows; if it is an edited copy with the same rows in the same order, pass it as --source <CSV>",
                    p.display()
                );
            }
            (p, true)
        }
    };
    let (mapping_path, mapping_changed) = match &args.mapping {
        Some(p) => {
            let sha =
                ledger::sha256_file(p).with_context(|| format!("{}: cannot read", p.display()))?;
            (p.clone(), sha != header.mapping_sha256)
        }
        None => {
            let p = std::path::PathBuf::from(&header.mapping);
            let sha = ledger::sha256_file(&p)
                .with_context(|| format!("{}: cannot read the ledger's mapping", p.display()))?;
            if sha != header.mapping_sha256 {
                anyhow::bail!("{}: the mapping changed since the run; pass it as --mapping <TOML> to re-map the rows with it", p.display());
            }
            (p, false)
        }
    };
    let loaded = mapping::load(&mapping_path)?;
    let options = loaded.source_options()?;
    let probe = crate::source::Source::open(&source_path, &options)?;
    let plan = mapping::compile(&loaded, probe.header())?;
    drop(probe);
    check_sync(&args.sync, &plan)?;
    let credentials = credentials::resolve(
        args.connect.url.as_deref(),
        args.connect.user.as_deref(),
        args.connect.password_file.as_deref(),
    )?;
    let client = ApiClient::new(&credentials, &client_config(&args.pace))
        .context("cannot set up the HTTP client")?;
    let rules = resume::Rules {
        changed: mapping_changed || args.source.is_some(),
        include_unknown: args.include_unknown,
    };
    // Without an index, every row not done may need a lookup.
    let not_done = (1..=outcomes.rows())
        .filter(|n| !outcomes.is_done(*n))
        .count() as u64;
    // An edited copy is checked first: if its rows moved, it is refused
    // before anything is asked or sent.
    let plan = Arc::new(plan);
    let rows = resume::RetryRows::new(
        Arc::new(outcomes),
        plan.clone(),
        &source_path,
        &options,
        seekable,
        rules,
    )?;
    // Preflight before the index, as `run` does: a refusal costs a handful
    // of GETs, never a read of the whole system.
    let state = open_state(&args.sync, &credentials.root)?;
    let system = if args.no_preflight {
        None
    } else {
        preflight(&loaded, &source_path, &mapping_path, &client, false).await?
    };
    let sync = prepare_sync(&args.sync, &plan, &client, state, |_| Ok(not_done)).await?;
    if !args.no_preflight {
        first_contact(&client).await?;
    }
    let rows = rows.with_system(system);
    let planning = rows.summary();
    let ledger = Ledger::append_to(&args.ledger, lock)?;
    let attempt = ledger::Attempt {
        started_at: ledger::now(),
        source: absolute(&source_path),
        source_sha256: ledger::sha256_file(&source_path)?,
        mapping: absolute(&mapping_path),
        mapping_sha256: ledger::sha256_file(&mapping_path)?,
        tool_version: env!("CARGO_PKG_VERSION").into(),
        include_unknown: args.include_unknown,
    };
    ledger.write(&[ledger::Entry::Attempt(attempt)]).await?;
    let job = Job {
        ledger,
        sync,
        file_bytes: 0,
        pilot: None,
    };
    eprintln!(
        "Retrying the rows of {} that are not done, against {}",
        args.ledger.display(),
        credentials.root
    );
    let (end, elapsed, progress) = drive(rows, &client, job, &args.pace, &args.output).await;
    let summary = print_summary(&args.ledger, &client, &end, elapsed)?;
    let planning = planning.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let count = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    // Every figure is a count of what planning decided or the run did: the
    // invalid rows include those left as they were (listed below them).
    println!(
        "retry: {} row(s) looked at, {} customer(s) reconciled by identifier, {} row(s) sent again, {} left as duplicates, {} invalid",
        planning.rows_seen,
        count(&progress.reconciled),
        planning.rows_sent,
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
    Ok(exit_for(&end, &summary))
}

/// `thulium-import report`: fold a ledger into counts and list the rows not done.
fn report_command(args: &ReportArgs) -> anyhow::Result<Exit> {
    // The failed-rows CSV is read from a ledger no process is writing.
    let _lock = match &args.failed_csv {
        Some(_) => Some(LedgerLock::acquire(&args.ledger, "report --failed-csv")?),
        None => None,
    };
    let outcomes = Outcomes::read(&args.ledger)?;
    let summary = report::Report::of(&outcomes);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if let Some(path) = &args.failed_csv {
        let names = mapping::load(std::path::Path::new(&outcomes.header.mapping))
            .map(|m| mapping::field_group_done_names(&m.raw))
            .unwrap_or_default();
        let n = crate::failed_csv::write(&outcomes, path, args.utf8, &names)?;
        eprintln!("{n} row(s) not done written to {}", path.display());
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
