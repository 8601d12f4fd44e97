//! The `thulium-import` binary: parse the command line, set up logging, run
//! the library, map the result to a documented exit code.

use clap::Parser;
use thulium_import::cli::Cli;
use thulium_import::Exit;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
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
            eprintln!("error: {e:#}");
            Exit::Unusable.into()
        }
    }
}
