//! The `thulium-import` binary: parse the command line, set up logging, run
//! the library, map the result to a documented exit code.

use clap::Parser;
use thulium_import::cli::Cli;
use thulium_import::Exit;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return Exit::Unusable.into();
        }
    };
    match runtime.block_on(thulium_import::commands::execute(cli)) {
        Ok(exit) => exit.into(),
        Err(e) => {
            eprintln!("error: {}", thulium_import::exit::message(&e));
            Exit::of_error(&e).into()
        }
    }
}

/// Logs go to stderr (through the progress bars' writer), as text or JSON;
/// `RUST_LOG` filters them (default `info`). Dependencies' logs stay at
/// `warn` so that no HTTP internals are printed.
fn init_logging(cli: &Cli) {
    use thulium_import::cli::{Command, LogFormat};
    let format = match &cli.command {
        Command::Run(a) => a.output.log_format,
        Command::Retry(a) => a.output.log_format,
        Command::Sync(a) => a.output.log_format,
        Command::Plan(a) => a.output.log_format,
        _ => LogFormat::Text,
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
        .add_directive("hyper=warn".parse().unwrap_or_default())
        .add_directive("hyper_util=warn".parse().unwrap_or_default())
        .add_directive("reqwest=warn".parse().unwrap_or_default())
        .add_directive("rustls=warn".parse().unwrap_or_default())
        .add_directive("h2=warn".parse().unwrap_or_default());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(thulium_import::progress::StderrWriter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
