//! thulium-import: loads CSV exports into the Thulium contact-center REST API.
//!
//! The pipeline reads top to bottom: [`source`] streams the CSV, [`mapping`]
//! compiles the TOML column mapping and turns each row into payloads, the
//! run pipeline chunks them into the API's calls under one rate limiter, and
//! every row's outcome per stage goes into an append-only ledger. The
//! [`sandbox`] is a local stand-in for a Thulium system that tests, the
//! README's demo and the benchmarks run against.
//!
//! `main.rs` only parses the command line and maps [`commands::execute`]'s
//! result to an exit code; everything else lives here so that tests can call
//! it in-process.

pub mod api;
pub mod check;
pub mod cli;
pub mod client;
pub mod commands;
pub mod credentials;
pub mod current;
pub mod exit;
pub mod failed_csv;
pub mod gone;
pub mod hash;
pub mod identity;
pub mod init;
pub mod job;
pub mod ledger;
pub mod mapping;
pub mod metrics;
pub mod needs;
pub mod outcomes;
pub mod pace;
pub mod pipeline;
pub mod plan;
pub mod preflight;
pub mod progress;
pub mod reasons;
pub mod report;
pub mod resume;
pub mod retry;
pub mod sandbox;
pub mod signals;
pub mod source;
pub mod state;
pub mod text;
pub mod undo;
pub mod validate;

pub use exit::Exit;
