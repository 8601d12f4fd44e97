//! The command line: raw arguments as clap parses them. Each subcommand's
//! arguments are turned into ready objects (a compiled mapping, a client, a
//! ledger) by the module that runs it; this file only says what the flags are.
//!
//! The subcommands, flags and environment variables here are a public
//! contract: scripts call them exactly so. Extend, never rename.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Load CSV exports into the Thulium contact-center REST API.
#[derive(Debug, Parser)]
#[command(name = "thulium-import", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Where the credentials come from, at the end of every command's help
/// that talks to the system.
macro_rules! credentials_help {
    () => {
        "

Credentials (where a command talks to the system): --url or THULIUM_URL, --user or
THULIUM_USER, the password from THULIUM_PASSWORD or --password-file
(THULIUM_PASSWORD_FILE), never from a flag."
    };
}

/// The exit codes, as `README.md` ("Exit codes") and `exit.rs` have them:
/// the end of the help of every command that runs, one text for all, so
/// that a script's author reads them where they look first.
pub const EXIT_CODES: &str = concat!(
    "\
Exit codes:
  0  every row done (check: every row valid; init: the mapping written)
  1  finished, but some rows are not done (invalid, failed, unknown; plan: rows the
     run would not do)
  2  unusable input: the mapping, the file, the flags, the credentials, an existing
     ledger, a ledger (sync: a drop folder) another process is using, or an edited
     copy whose rows moved; a guard (--max-changes, --max-gone; plan: the run it
     plans would stop there); nothing was sent
  3  aborted: authentication refused (401/403), the circuit breaker, --max-failures or
     --max-failure-rate, a ledger or state that cannot be written, a source that fails
     mid-file, a redirect, a list the server pages wrongly, a system that cannot be
     reached, or a stop signal (Ctrl-C, SIGTERM, SIGHUP); the ledger is consistent",
    credentials_help!()
);

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Import a CSV file or a spreadsheet: map every row, send it, record each outcome in the ledger.
    #[command(after_help = EXIT_CODES)]
    Run(RunArgs),
    /// Map every row offline and report the rows that would not go through.
    #[command(after_help = EXIT_CODES)]
    Check(CheckArgs),
    /// Re-run the rows of a ledger that are not done, from the stage where each stopped.
    #[command(after_help = EXIT_CODES)]
    Retry(RetryArgs),
    /// Show what `run` would do, row by row and field by field against the live system, sending no write and keeping no file.
    #[command(after_help = EXIT_CODES)]
    Plan(PlanArgs),
    /// Summarise a ledger; optionally write the rows not done as a CSV to fix.
    #[command(after_help = EXIT_CODES)]
    Report(ReportArgs),
    /// Serve a local Thulium stand-in to rehearse an import against.
    Sandbox(SandboxArgs),
    /// Write a first mapping for a file: [source] sniffed, columns matched to customer fields, the others as comments.
    #[command(after_help = EXIT_CODES)]
    Init(InitArgs),
    /// The nightly job: import every export in a drop folder, one ledger per file, continuing or starting over as each file says.
    #[command(after_help = EXIT_CODES)]
    Sync(NightlyArgs),
    /// Take a run back: delete the customers it created, put back what it overwrote (a gone customer's mark too), create again under a new id the customers it deleted (on_gone), keep what people changed since.
    #[command(after_help = UNDO_EXIT_CODES)]
    Undo(UndoArgs),
}

/// What `undo`'s exit codes mean.
pub const UNDO_EXIT_CODES: &str = concat!(
    "\
Exit codes:
  0  everything reversed; a customer the run deleted (on_gone) and created again
     counts as reversed: it is back under a NEW id, with its fields; its items,
     campaign records and contact history were deleted with it and are not brought
     back (its message says so)
  1  something kept (a person changed it since, or someone created the deleted
     customer again), errored (run undo again) or not undoable
  2  cannot start: no undo file, creations of unknown outcome to look up (run retry)
  3  stopped early: a stop signal, authentication refused; run undo again",
    credentials_help!()
);

/// Before-images for `undo` (`<LEDGER>.undo.jsonl`), on by default.
#[derive(Debug, Clone, Default, Args)]
pub struct ImagesArgs {
    /// Do not write the undo file (`<LEDGER>.undo.jsonl`: the values each update overwrites, customer data): the run cannot be taken back with `undo`.
    #[arg(long)]
    pub no_undo: bool,
}

#[derive(Debug, Clone, Args)]
pub struct UndoArgs {
    /// The ledger of the run to take back (for a `sync` night, the file's ledger in the work folder).
    pub ledger: PathBuf,
    /// Read and say what would be done; send and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the outcome as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// The sync state to update (default: the state the run used, as its undo file says).
    #[arg(long, value_name = "PATH")]
    pub state: Option<PathBuf>,
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(flatten)]
    pub pace: PaceArgs,
}

/// Where to send and as whom. The password is never a flag: it comes from
/// `THULIUM_PASSWORD` or `--password-file`.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// The system's root URL, e.g. https://acme.thulium.com (the tool appends /api/...).
    #[arg(long, env = "THULIUM_URL")]
    pub url: Option<String>,
    /// The API user.
    #[arg(long, env = "THULIUM_USER")]
    pub user: Option<String>,
    /// Read the password from this file (must not be readable by group or others); or set THULIUM_PASSWORD. Never a flag: a command line is visible to every user of the machine.
    #[arg(long, value_name = "PATH", env = "THULIUM_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,
}

/// How fast and how wide to send.
#[derive(Debug, Clone, Args)]
pub struct PaceArgs {
    /// Customers (or campaign records) per batch call.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub batch_size: u32,
    /// Requests in any 1-second window, across every endpoint, retries included; or auto (auto:MAX) to find the server's limit.
    #[arg(long, value_name = "REQ_PER_S|auto[:MAX]", default_value = "10")]
    pub rate: crate::pace::RateSpec,
    /// Calls in flight at most (by default they follow rate × latency, up to 32).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub concurrency: Option<u32>,
    /// Seconds before a request times out (its outcome is then unknown).
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub timeout: u64,
    /// Attempts per call for retryable answers (429, 503, connection refused).
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub max_attempts: u32,
    /// Stop (exit 3) after this many consecutive failed calls (circuit breaker).
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub max_consecutive_failures: u32,
    /// Stop (exit 3) once more than N rows have failed.
    #[arg(long, value_name = "N")]
    pub max_failures: Option<u64>,
    /// Stop (exit 3) once more than P percent of the rows so far have failed (checked after 100 rows).
    #[arg(long, value_name = "P")]
    pub max_failure_rate: Option<f64>,
}

/// How to show progress and logs.
#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    /// No progress bars; a progress line is logged every few seconds instead.
    #[arg(long)]
    pub no_progress: bool,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// After the run, write its metrics here (Prometheus text format, for node_exporter's textfile collector), replaced atomically.
    #[arg(long, value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,
}

/// Finding the customers that exist, and remembering what was synced.
#[derive(Debug, Clone, Args)]
pub struct SyncArgs {
    /// The sync state (an SQLite file, created 0600): what was sent, so that the next run of the same export sends only what changed. Needs [customer] match.
    #[arg(long, value_name = "PATH")]
    pub state: Option<PathBuf>,
    /// Ignore the state's record of what was sent, for this run: ask Thulium for every row and send whatever it does not already hold (repairs the state after a restore).
    #[arg(long)]
    pub full: bool,
    /// How existing customers are found ([customer] match): an index of the whole system read once, a lookup per row, or whichever takes fewer requests.
    #[arg(long, value_enum, default_value_t = IndexMode::Auto)]
    pub index: IndexMode,
    /// With a state from an earlier run: stop before sending anything (exit 2) when the file would update more than this many of the customers the state knows, as a number or a share (`50%`, the default): a guard against a broken export in a job nobody watches.
    #[arg(long, value_name = "N|P%", default_value = "50%")]
    pub max_changes: Share,
    /// With [customer] on_gone and a state: stop before sending anything (exit 2) when more than this many of the customers earlier files of the job brought are missing from the file, as a number or a share (`10%`, the default): a guard against deleting what a broken export hides.
    #[arg(long, value_name = "N|P%", default_value = "10%")]
    pub max_gone: Share,
}

/// A count (`200`) or a share (`10%`) of a whole.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Share {
    Count(u64),
    Percent(f64),
}

impl Share {
    /// The most allowed out of `whole`.
    pub fn of(self, whole: u64) -> u64 {
        match self {
            Share::Count(n) => n,
            // Rounded up: 50 % of a state of one customer allows that one.
            Share::Percent(p) => (whole as f64 * p / 100.0).ceil() as u64,
        }
    }
}

impl std::fmt::Display for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Share::Count(n) => write!(f, "{n}"),
            Share::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl std::str::FromStr for Share {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        match s.strip_suffix('%') {
            Some(p) => match p.trim().parse::<f64>() {
                Ok(p) if (0.0..=100.0).contains(&p) => Ok(Share::Percent(p)),
                _ => Err(format!("\"{s}\" is not a share from 0% to 100%")),
            },
            None => s
                .parse::<u64>()
                .map(Share::Count)
                .map_err(|_| format!("\"{s}\" is not a number of rows or a share such as 50%")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IndexMode {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The export to import: a CSV or a spreadsheet (.xlsx, .xls, .ods).
    #[arg(value_name = "FILE")]
    pub csv: PathBuf,
    /// The TOML column mapping.
    #[arg(long)]
    pub mapping: PathBuf,
    /// The ledger file (default: <CSV>.ledger.jsonl).
    #[arg(long)]
    pub ledger: Option<PathBuf>,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Start the built-in sandbox on a free loopback port and import into it.
    #[arg(long, conflicts_with = "url")]
    pub sandbox: bool,
    #[command(flatten)]
    pub pace: PaceArgs,
    /// Map and validate every row, send nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// With --dry-run: print the payloads of the first N valid rows.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub show_payloads: usize,
    /// With --dry-run: how many row errors to print, after the problems by reason (as check's).
    #[arg(long, value_name = "N", default_value_t = 20, requires = "dry_run")]
    pub max_errors: usize,
    /// A spreadsheet's sheet (default: the mapping's [source] sheet, else the first); recorded in the ledger for retry.
    #[arg(long, value_name = "NAME")]
    pub sheet: Option<String>,
    /// Start a new ledger even if one exists at the ledger path (the old one is kept aside).
    #[arg(long)]
    pub force_new_ledger: bool,
    /// Importing a failed-rows CSV: also send rows whose earlier outcome is unknown and cannot be looked up (may duplicate).
    #[arg(long)]
    pub include_unknown: bool,
    /// A pilot: send only the first N data rows, then stop (`retry` on the ledger sends the rest).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
    /// Do not ask the system first what the mapping refers to.
    #[arg(long)]
    pub no_preflight: bool,
    #[command(flatten)]
    pub sync: SyncArgs,
    #[command(flatten)]
    pub images: ImagesArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `plan`: `run`'s arguments (the same credentials, pacing, `--index`
/// and `--state`), without those of a ledger, and how to show the plan.
#[derive(Debug, Clone, Args)]
pub struct PlanArgs {
    /// The export to plan the import of: a CSV or a spreadsheet (.xlsx, .xls, .ods).
    #[arg(value_name = "FILE")]
    pub csv: PathBuf,
    /// The TOML column mapping.
    #[arg(long)]
    pub mapping: PathBuf,
    /// Print the plan as one JSON object (every row in it).
    #[arg(long)]
    pub json: bool,
    /// After the counts, list every row: its action, the fields that change, its later stages.
    #[arg(long)]
    pub all: bool,
    /// A spreadsheet's sheet (default: the mapping's [source] sheet, else the first).
    #[arg(long, value_name = "NAME")]
    pub sheet: Option<String>,
    /// Plan only the first N data rows (as `run --limit N` would send them).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Plan against the built-in sandbox (an empty system, started for the plan).
    #[arg(long, conflicts_with = "url")]
    pub sandbox: bool,
    #[command(flatten)]
    pub pace: PaceArgs,
    /// Importing a failed-rows CSV: plan as `run --include-unknown` would.
    #[arg(long)]
    pub include_unknown: bool,
    /// Do not ask the system first what the mapping refers to.
    #[arg(long)]
    pub no_preflight: bool,
    #[command(flatten)]
    pub sync: SyncArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// The export to check: a CSV or a spreadsheet (.xlsx, .xls, .ods).
    #[arg(value_name = "FILE")]
    pub csv: PathBuf,
    /// The TOML column mapping.
    #[arg(long)]
    pub mapping: PathBuf,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// How many row errors to print in text mode, after the problems by reason.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub max_errors: usize,
    /// List every row error (text mode).
    #[arg(long)]
    pub all: bool,
    /// Also ask the system (read-only GETs) what the mapping refers to: field groups, campaigns, statuses, agents.
    #[arg(long)]
    pub online: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Check only the first N data rows.
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// A spreadsheet's sheet (default: the mapping's [source] sheet, else the first).
    #[arg(long, value_name = "NAME")]
    pub sheet: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct RetryArgs {
    /// The ledger of an earlier run.
    pub ledger: PathBuf,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Also resend rows whose outcome is unknown and cannot be looked up (may duplicate).
    #[arg(long)]
    pub include_unknown: bool,
    /// Read the rows from this edited copy instead of the ledger's source.
    #[arg(long, value_name = "CSV")]
    pub source: Option<PathBuf>,
    /// Re-map the rows with this corrected mapping.
    #[arg(long, value_name = "TOML")]
    pub mapping: Option<PathBuf>,
    /// Do not ask the system first what the mapping refers to.
    #[arg(long)]
    pub no_preflight: bool,
    #[command(flatten)]
    pub sync: SyncArgs,
    #[command(flatten)]
    pub images: ImagesArgs,
    #[command(flatten)]
    pub pace: PaceArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// The ledger to summarise.
    pub ledger: PathBuf,
    /// Print the counts as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Write the rows not done to this CSV, with the source's header and cells.
    #[arg(long, value_name = "PATH")]
    pub failed_csv: Option<PathBuf>,
    /// Write the failed-rows CSV as UTF-8 with `,` instead of the source's choices.
    #[arg(long)]
    pub utf8: bool,
    /// After the problems by reason, list every row that is not done.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Clone, Args)]
pub struct InitArgs {
    /// The export to write a mapping for: a CSV or a spreadsheet (.xlsx, .xls, .ods).
    pub file: PathBuf,
    /// Write the mapping to this file (created 0600: its comments quote the file's values) instead of stdout.
    #[arg(long, short, value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Overwrite --output if it exists.
    #[arg(long)]
    pub force: bool,
    /// A spreadsheet's sheet (default: the first).
    #[arg(long, value_name = "NAME")]
    pub sheet: Option<String>,
    /// How many data rows to look at.
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub sample: u64,
    /// Also list the system's field groups, campaigns and agents as comments (read-only GETs).
    #[arg(long)]
    pub online: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Clone, Args)]
pub struct SandboxArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Delay added to every API request, in milliseconds.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub latency_ms: u64,
    /// Probability (0 to 1) that an API request gets an injected fault.
    #[arg(long, value_name = "F", default_value_t = 0.0)]
    pub fault_rate: f64,
    /// Which faults to inject (comma-separated): 429, 503, drop_before, drop_after, 500_after.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "429,503,drop_before,drop_after,500_after"
    )]
    pub faults: Vec<crate::sandbox::FaultKind>,
    /// Seed of the fault draw, for reproducible runs.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,
    /// Answer 429 past this many requests per second.
    #[arg(long, value_name = "REQ_PER_S")]
    pub rate_limit: Option<u32>,
    /// How --rate-limit counts: sliding (any 1-second window), fixed (each calendar second) or bucket (a token bucket).
    #[arg(long, value_name = "KIND", default_value = "sliding")]
    pub limiter: crate::sandbox::LimiterKind,
    /// Retry-After seconds sent with injected 429 and 503 answers.
    #[arg(long, value_name = "SECS", default_value_t = 1)]
    pub retry_after: u64,
    /// Most customers or records accepted in one batch call.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub max_batch: usize,
    /// Basic-auth user the sandbox accepts.
    #[arg(long, default_value = "api_user")]
    pub user: String,
    /// Basic-auth password the sandbox accepts (a test server's, not a real secret).
    #[arg(long, default_value = "api_pass")]
    pub password: String,
    /// Most requests kept in the journal at /_sandbox/requests (the oldest go first).
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    pub journal_limit: usize,
    /// Start with N customers (identifiers PRE-000001..., e-mail preN@example.com).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub preload_customers: usize,
    /// Start with the customers (and field-group items) this file makes with --preload-mapping.
    #[arg(long, value_name = "CSV", requires = "preload_mapping")]
    pub preload: Option<PathBuf>,
    /// The mapping for --preload.
    #[arg(long, value_name = "TOML", requires = "preload")]
    pub preload_mapping: Option<PathBuf>,
    /// The agents of a campaign: ID=LOGIN,LOGIN (repeatable; campaigns not named have every agent).
    #[arg(long, value_name = "ID=LOGINS")]
    pub campaign_agents: Vec<String>,
    /// Answer at most N entries a page on every paged GET, whatever `limit` asks (`count` stays the true total), as servers that cap their pages do.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub page_cap: Option<u64>,
    /// Answer every paged GET from its first entry whatever `offset` asks, as a broken server would.
    #[arg(long)]
    pub ignore_offset: bool,
}

/// `sync`: a drop folder, imported night after night (README, "Nightly
/// syncs"). Named apart from [`SyncArgs`], the `--state` flags it shares
/// with `run`.
#[derive(Debug, Clone, Args)]
pub struct NightlyArgs {
    /// The drop folder: every .csv, .xlsx, .xls and .ods in it, oldest first (full exports, as `on_gone` or `[source] full_export` says: the newest only, the older superseded).
    pub drop_dir: PathBuf,
    /// The TOML column mapping, for every file (an edited one is used as it is).
    #[arg(long)]
    pub mapping: PathBuf,
    /// Where the ledgers, reports and the folder's lock are kept (default: <DROP_DIR>/.thulium-import, created 0700).
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Move a file whose rows are all settled (and its .done marker) here.
    #[arg(long, value_name = "DIR")]
    pub archive: Option<PathBuf>,
    /// Without .done markers: leave a file whose size or modification time changes within this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    pub settle: u64,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Do not ask the system first what the mapping refers to.
    #[arg(long)]
    pub no_preflight: bool,
    #[command(flatten)]
    pub sync: SyncArgs,
    #[command(flatten)]
    pub images: ImagesArgs,
    #[command(flatten)]
    pub pace: PaceArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}
