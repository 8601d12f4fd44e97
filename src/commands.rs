//! One function per subcommand: each turns the raw arguments into ready
//! objects and runs them. Errors that make a command unusable come back as
//! `anyhow::Error` and end in exit code 2.

use std::io::Write;

use anyhow::Context;

use crate::check::{self, Input};
use crate::cli::{CheckArgs, Cli, Command, RunArgs, SandboxArgs};
use crate::sandbox::{Sandbox, SandboxConfig};
use crate::Exit;

/// Runs one parsed command line to its end.
pub async fn execute(cli: Cli) -> anyhow::Result<Exit> {
    match cli.command {
        Command::Sandbox(args) => sandbox(args).await,
        Command::Check(args) => check_command(&args),
        Command::Run(args) if args.dry_run => dry_run(&args),
        Command::Run(_) | Command::Retry(_) | Command::Report(_) => {
            anyhow::bail!("not implemented yet")
        }
    }
}

/// `thulium-import check`: exit 0 when every row is valid, 1 when some are
/// not, 2 when the mapping or the file cannot be used.
fn check_command(args: &CheckArgs) -> anyhow::Result<Exit> {
    let mut input = Input::open(&args.csv, &args.mapping)?;
    if !args.json {
        eprintln!("Reading {}: {}", args.csv.display(), input.info());
    }
    let report = check::check(&mut input, |_, _, _| {})?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        serde_json::to_writer(&mut out, &report)?;
        writeln!(out)?;
    } else {
        check::print_text(&mut out, &report, args.max_errors)?;
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
        retry_after_secs: args.retry_after,
        max_batch: args.max_batch,
        user: args.user,
        password: args.password,
    };
    let user = config.user.clone();
    let sandbox = Sandbox::start(config)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
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
