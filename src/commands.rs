//! One function per subcommand: each turns the raw arguments into ready
//! objects and runs them. Errors that make a command unusable come back as
//! `anyhow::Error` and end in exit code 2.

use anyhow::Context;

use crate::cli::{Cli, Command, SandboxArgs};
use crate::sandbox::{Sandbox, SandboxConfig};
use crate::Exit;

/// Runs one parsed command line to its end.
pub async fn execute(cli: Cli) -> anyhow::Result<Exit> {
    match cli.command {
        Command::Sandbox(args) => sandbox(args).await,
        Command::Run(_) | Command::Check(_) | Command::Retry(_) | Command::Report(_) => {
            anyhow::bail!("not implemented yet")
        }
    }
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
