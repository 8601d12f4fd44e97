//! The sandbox: a local stand-in for a Thulium system, so that a migration can
//! be rehearsed, and every test and benchmark run, without touching
//! production. It serves the five endpoints the importer uses plus
//! `GET /api/customers`, `GET`/`DELETE /api/customers/:id` and the lists
//! preflight reads, keeps its state in memory, shows it at
//! `GET /_sandbox/state` and `GET /_sandbox/stats`, journals every `/api/`
//! request at `GET /_sandbox/requests`, empties itself at `POST
//! /_sandbox/restore` (all `/_sandbox/` endpoints behind its Basic auth),
//! and misbehaves on purpose when asked: latency, a request-rate limit
//! answered with 429, random faults drawn reproducibly from a seed, pages
//! capped whatever `limit` asks, `offset` ignored.
//!
//! Faults are injected around the real handler, in one place
//! (`serve_request`): 429, 503 and a dropped connection happen *before*
//! anything is applied; a dropped connection or a 500 *after* it. The last two
//! are the hard case for a client: the change happened, but the client cannot
//! know.

pub mod api;
pub mod model;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use hyper_util::rt::TokioIo;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

use model::State as SandboxState;

/// A fault the sandbox can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// 429 with `Retry-After`, before anything is applied.
    TooManyRequests,
    /// 503 with `Retry-After`, before anything is applied.
    Unavailable,
    /// The connection is closed before the request is read or applied.
    DropBefore,
    /// The request is applied, then the connection is closed unanswered.
    DropAfter,
    /// The request is applied, then answered 500.
    ServerErrorAfter,
}

impl FaultKind {
    /// Every kind, in the order `--faults` lists them.
    pub const ALL: [FaultKind; 5] = [
        FaultKind::TooManyRequests,
        FaultKind::Unavailable,
        FaultKind::DropBefore,
        FaultKind::DropAfter,
        FaultKind::ServerErrorAfter,
    ];

    /// The name used by `--faults` and in `/_sandbox/stats`.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::TooManyRequests => "429",
            FaultKind::Unavailable => "503",
            FaultKind::DropBefore => "drop_before",
            FaultKind::DropAfter => "drop_after",
            FaultKind::ServerErrorAfter => "500_after",
        }
    }

    /// Whether the client cannot tell if the request was applied: every
    /// dropped connection (a client cannot see whether the drop came before or
    /// after the work) and a 500.
    pub fn is_ambiguous(self) -> bool {
        matches!(
            self,
            FaultKind::DropBefore | FaultKind::DropAfter | FaultKind::ServerErrorAfter
        )
    }
}

impl FromStr for FaultKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FaultKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = FaultKind::ALL.iter().map(|k| k.name()).collect();
                format!(
                    "unknown fault kind \"{s}\" (expected one of {})",
                    names.join(", ")
                )
            })
    }
}

/// How `--rate-limit` counts requests, as servers do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LimiterKind {
    /// At most N requests in any 1-second window (the strictest).
    #[default]
    Sliding,
    /// At most N requests in each calendar second.
    Fixed,
    /// A token bucket of N tokens refilled at N per second (it forgives a
    /// burst after a quiet spell).
    Bucket,
}

impl FromStr for LimiterKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sliding" => Ok(LimiterKind::Sliding),
            "fixed" => Ok(LimiterKind::Fixed),
            "bucket" => Ok(LimiterKind::Bucket),
            other => Err(format!(
                "unknown limiter \"{other}\" (expected sliding, fixed or bucket)"
            )),
        }
    }
}

/// The rate limit in force.
#[derive(Debug)]
enum Limiter {
    Bucket(DefaultDirectRateLimiter),
    Sliding {
        n: usize,
        admitted: Mutex<std::collections::VecDeque<std::time::Instant>>,
    },
    Fixed {
        n: u32,
        start: std::time::Instant,
        /// (second, requests admitted in it)
        current: Mutex<(u64, u32)>,
    },
}

impl Limiter {
    fn new(kind: LimiterKind, n: u32) -> Option<Limiter> {
        let nz = std::num::NonZeroU32::new(n)?;
        Some(match kind {
            LimiterKind::Bucket => Limiter::Bucket(RateLimiter::direct(Quota::per_second(nz))),
            LimiterKind::Sliding => Limiter::Sliding {
                n: n as usize,
                admitted: Mutex::new(std::collections::VecDeque::new()),
            },
            LimiterKind::Fixed => Limiter::Fixed {
                n,
                start: std::time::Instant::now(),
                current: Mutex::new((0, 0)),
            },
        })
    }

    /// Admits a request now, or says it is over the limit.
    fn admit(&self) -> bool {
        let now = std::time::Instant::now();
        match self {
            Limiter::Bucket(l) => l.check().is_ok(),
            Limiter::Sliding { n, admitted } => {
                let mut q = admitted.lock().unwrap_or_else(|e| e.into_inner());
                while q
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
                {
                    q.pop_front();
                }
                if q.len() < *n {
                    q.push_back(now);
                    true
                } else {
                    false
                }
            }
            Limiter::Fixed { n, start, current } => {
                let second = now.duration_since(*start).as_secs();
                let mut c = current.lock().unwrap_or_else(|e| e.into_inner());
                if c.0 != second {
                    *c = (second, 0);
                }
                if c.1 < *n {
                    c.1 += 1;
                    true
                } else {
                    false
                }
            }
        }
    }
}

/// How the sandbox is set up. `Default` gives a well-behaved server on a free
/// loopback port with the vendor's example credentials.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Address to listen on; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Added to every `/api` request before it is handled.
    pub latency: Duration,
    /// Probability that an `/api` request gets a fault.
    pub fault_rate: f64,
    /// Which faults may be drawn.
    pub faults: Vec<FaultKind>,
    /// Seed of the fault draw: the same seed and the same request order give
    /// the same faults.
    pub seed: u64,
    /// Requests per second allowed before answering 429 (none: unlimited).
    pub rate_limit: Option<u32>,
    /// How the rate limit counts.
    pub limiter: LimiterKind,
    /// The `Retry-After` seconds sent with injected 429 and 503 answers.
    pub retry_after_secs: u64,
    /// Most customers or records accepted in one batch call (413 past it).
    pub max_batch: usize,
    /// Basic-auth user.
    pub user: String,
    /// Basic-auth password.
    pub password: String,
    /// Requests kept in the journal (`/_sandbox/requests`); the oldest go
    /// first past it.
    pub journal_limit: usize,
    /// Customers the system starts with (`PRE-000001`, ...), to rehearse a
    /// migration into a populated system.
    pub preload_customers: usize,
    /// Which agents are in which campaign (campaign id → logins); campaigns
    /// not listed have every agent.
    pub campaign_agents: BTreeMap<String, Vec<String>>,
    /// Most entries a paged GET answers, whatever its `limit` asks (`count`
    /// still the true total), as servers that cap their pages do.
    pub page_cap: Option<usize>,
    /// Paged GETs answer from the first entry whatever `offset` asks, as a
    /// broken server would: a client must notice, not loop or stop early.
    pub ignore_offset: bool,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            latency: Duration::ZERO,
            fault_rate: 0.0,
            faults: FaultKind::ALL.to_vec(),
            seed: 0,
            rate_limit: None,
            limiter: LimiterKind::Sliding,
            retry_after_secs: 1,
            max_batch: 1000,
            user: "api_user".into(),
            password: "api_pass".into(),
            journal_limit: 1_000_000,
            preload_customers: 0,
            campaign_agents: BTreeMap::new(),
            page_cap: None,
            ignore_offset: false,
        }
    }
}

/// Counters shown at `/_sandbox/stats`.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Stats {
    /// Every `/api` request received.
    pub requests_total: u64,
    /// Requests by endpoint (`POST /api/batch/customers`, ...).
    pub requests: BTreeMap<String, u64>,
    /// Responses by HTTP status (`"dropped"` for a closed connection).
    pub responses: BTreeMap<String, u64>,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, u64>,
    /// Faults injected, by endpoint and kind.
    pub faults_by_endpoint: BTreeMap<String, BTreeMap<String, u64>>,
    /// All faults injected.
    pub faults_total: u64,
    /// Ambiguous faults (dropped connection, 500) on calls that are not
    /// idempotent (creating customers, items, feed records): each may have
    /// left the client with rows of unknown outcome.
    pub ambiguous_non_idempotent: u64,
    /// 429 answers sent because of `--rate-limit`.
    pub rate_limited: u64,
    /// All 429 answers sent (rate limit and injected).
    pub responses_429: u64,
    /// The most `/api` requests that arrived within any 1-second window.
    pub max_in_any_second: u64,
    /// The most `/api` requests being served at once.
    pub max_concurrent: u64,
    /// Customers changed by `PUT /api/batch/customers`.
    pub customers_updated: u64,
    /// Items changed by `PUT /api/customer_field_group_items/:id`.
    pub items_updated: u64,
}

/// One `/api/` request as it arrived, for `GET /_sandbox/requests`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct JournalEntry {
    pub method: String,
    /// The path as sent (still percent-encoded).
    pub path: String,
    /// The query string as sent, if any.
    pub query: Option<String>,
    /// The body as the JSON received; `null` when there is none, a string
    /// when it is not JSON.
    pub body: serde_json::Value,
}

/// What every request handler shares.
#[derive(Debug)]
pub struct Shared {
    pub config: SandboxConfig,
    state: Mutex<SandboxState>,
    stats: Mutex<Stats>,
    /// Every `/api/` request, in arrival order (faulted ones included).
    journal: Mutex<std::collections::VecDeque<JournalEntry>>,
    rng: Mutex<StdRng>,
    limiter: Option<Limiter>,
    /// Arrivals in the last second, for `max_in_any_second`.
    arrivals: Mutex<std::collections::VecDeque<std::time::Instant>>,
    /// `/api` requests being served now.
    serving: std::sync::atomic::AtomicU64,
    /// The fault rate in force (f64 bits): starts at the configured one and
    /// can be changed while serving (tests turn faults off before a retry).
    fault_rate: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// The state, even if a handler panicked while holding it (the sandbox
    /// must keep answering for the tests to see what happened).
    pub fn lock_state(&self) -> MutexGuard<'_, SandboxState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn lock_stats(&self) -> MutexGuard<'_, Stats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn lock_journal(&self) -> MutexGuard<'_, std::collections::VecDeque<JournalEntry>> {
        self.journal.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn draw_fault(&self) -> Option<FaultKind> {
        let rate = f64::from_bits(self.fault_rate.load(std::sync::atomic::Ordering::Relaxed));
        if rate <= 0.0 || self.config.faults.is_empty() {
            return None;
        }
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        if rng.random_bool(rate.min(1.0)) {
            let i = rng.random_range(0..self.config.faults.len());
            Some(self.config.faults[i])
        } else {
            None
        }
    }
}

/// A running sandbox. Dropping it stops accepting connections.
#[derive(Debug)]
pub struct Sandbox {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
}

impl Sandbox {
    /// Binds and starts serving in the background on the current tokio
    /// runtime; returns once the socket is listening.
    pub async fn start(config: SandboxConfig) -> std::io::Result<Sandbox> {
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let limiter = config
            .rate_limit
            .and_then(|n| Limiter::new(config.limiter, n));
        let mut state = SandboxState::new();
        state.preload(config.preload_customers);
        for (id, agents) in &config.campaign_agents {
            if let Some(c) = state.campaigns.get_mut(id) {
                c.agents = agents.clone();
            }
        }
        let shared = Arc::new(Shared {
            rng: Mutex::new(StdRng::seed_from_u64(config.seed)),
            fault_rate: std::sync::atomic::AtomicU64::new(config.fault_rate.to_bits()),
            config,
            state: Mutex::new(state),
            stats: Mutex::new(Stats::default()),
            arrivals: Mutex::new(std::collections::VecDeque::new()),
            serving: std::sync::atomic::AtomicU64::new(0),
            journal: Mutex::new(std::collections::VecDeque::new()),
            limiter,
        });
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(accept_loop(
            listener,
            router(shared.clone()),
            shared.clone(),
            stopped,
        ));
        Ok(Sandbox { addr, shared, stop })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The system root URL to give the importer (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What `/_sandbox/state` shows.
    pub fn state_json(&self) -> serde_json::Value {
        serde_json::to_value(&*self.shared.lock_state()).unwrap_or_default()
    }

    /// What the sandbox holds, in one line: `292 customers, 292
    /// field-group items, ...`.
    pub fn holdings(&self) -> String {
        let state = self.shared.lock_state();
        let records: usize = state.campaigns.values().map(|c| c.by_customer.len()).sum();
        let edited: usize = state
            .campaigns
            .values()
            .map(|c| c.by_identifier.len())
            .sum();
        format!(
            "{} customers, {} field-group items, {records} campaign records, {edited} edited phone records, {} feed records",
            state.customers.len(),
            state.field_group_items.len(),
            state.feed_records.len()
        )
    }

    /// Loads the customers (and field-group items) a mapping makes of a
    /// file, as if an earlier import had created them: a populated system
    /// to rehearse a migration into. Returns how many customers and items.
    pub fn preload(
        &self,
        csv: &std::path::Path,
        mapping: &std::path::Path,
    ) -> Result<(usize, usize), crate::check::InputError> {
        let mut input = crate::check::Input::open(csv, mapping)?;
        let (mut customers, mut items) = (0, 0);
        let mut state = self.shared.lock_state();
        while let Some(row) = input.source.next_row() {
            let Ok(row) = row? else { continue };
            let Ok(p) = input.plan.map_row(&row) else {
                continue;
            };
            let Some(serde_json::Value::Object(fields)) = p
                .customer
                .as_ref()
                .and_then(|c| serde_json::to_value(c).ok())
            else {
                continue;
            };
            let customer_id = state.add_customer(fields);
            customers += 1;
            for item in &p.field_groups {
                let values = item
                    .values
                    .iter()
                    .filter_map(|v| serde_json::to_value(v).ok())
                    .collect();
                state.add_item(item.group_id, customer_id, values);
                items += 1;
            }
        }
        Ok((customers, items))
    }

    /// What `/_sandbox/stats` shows.
    pub fn stats(&self) -> Stats {
        self.shared.lock_stats().clone()
    }

    /// What `/_sandbox/requests` shows: every `/api/` request so far.
    pub fn requests(&self) -> Vec<JournalEntry> {
        self.shared.lock_journal().iter().cloned().collect()
    }

    /// The live state, for tests that inspect it directly.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Empties customers, field-group items, campaign records and contact
    /// history, as a system restored from an empty backup (what `POST
    /// /_sandbox/restore` does); with `reset_ids` the id counters start
    /// again, so an old id may name a new, different customer.
    pub fn restore(&self, reset_ids: bool) {
        self.shared.lock_state().restore(reset_ids);
    }

    /// Moves the system's clock on by `secs` (what `updated_at` says from
    /// now on): a test's stand-in for a later night.
    pub fn advance_clock(&self, secs: i64) {
        self.shared.lock_state().clock_offset_secs += secs;
    }

    /// Changes the fault rate while serving.
    pub fn set_fault_rate(&self, rate: f64) {
        self.shared
            .fault_rate
            .store(rate.to_bits(), std::sync::atomic::Ordering::Relaxed);
    }

    /// Stops accepting connections.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop();
    }
}

fn router(shared: Arc<Shared>) -> Router {
    let api = Router::new()
        .route(
            "/batch/customers",
            post(api::batch_customers).put(api::update_customers),
        )
        .route("/customers", get(api::search_customers))
        .route(
            "/customers/{id}",
            get(api::get_customer).delete(api::delete_customer),
        )
        .route(
            "/customer_field_group_items",
            post(api::field_group_item).get(api::list_items),
        )
        .route("/customer_field_group_items/{id}", put(api::update_item))
        .route("/customer_field_groups", get(api::list_field_groups))
        .route("/outbounds", get(api::list_outbounds))
        .route("/outbounds/{id}/statuses", get(api::list_statuses))
        .route("/outbounds/{id}/agents", get(api::list_campaign_agents))
        .route("/agents", get(api::list_agents))
        .route(
            "/batch/crm_outbounds/{id}/records",
            post(api::campaign_records),
        )
        .route(
            "/outbounds/{id}/records_by_identifier/{identifier}",
            put(api::update_record),
        )
        .route("/customers/{id}/feed_records", post(api::feed_record))
        .fallback(api::not_found)
        .method_not_allowed_fallback(|| async {
            api::error_response(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed.")
        })
        .route_layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            require_auth,
        ));
    // The sandbox's own endpoints answer only with its credentials too: the
    // state and the journal hold a rehearsal's customer data.
    let control = Router::new()
        .route("/state", get(show_state))
        .route("/stats", get(show_stats))
        .route("/requests", get(show_requests).delete(clear_requests))
        .route("/restore", post(restore))
        .route_layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            require_auth,
        ));
    Router::new()
        .nest("/api", api)
        .nest("/_sandbox", control)
        .with_state(shared)
}

async fn require_auth(
    State(shared): State<Arc<Shared>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    if api::authorized(&shared, req.headers()) {
        next.run(req).await
    } else {
        let mut resp = api::error_response(StatusCode::UNAUTHORIZED, "Authentication failed.");
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"Thulium\""),
        );
        resp
    }
}

async fn show_state(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(&*shared.lock_state()).into_response()
}

async fn show_stats(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.lock_stats().clone()).into_response()
}

async fn show_requests(State(shared): State<Arc<Shared>>) -> Response {
    let journal: Vec<JournalEntry> = shared.lock_journal().iter().cloned().collect();
    axum::Json(journal).into_response()
}

async fn clear_requests(State(shared): State<Arc<Shared>>) -> Response {
    shared.lock_journal().clear();
    StatusCode::NO_CONTENT.into_response()
}

/// Query of `POST /_sandbox/restore`.
#[derive(Debug, serde::Deserialize)]
struct RestoreQuery {
    reset_ids: Option<String>,
}

/// `POST /_sandbox/restore[?reset_ids=true]`: [`Sandbox::restore`].
async fn restore(
    State(shared): State<Arc<Shared>>,
    axum::extract::Query(q): axum::extract::Query<RestoreQuery>,
) -> Response {
    let reset_ids = matches!(q.reset_ids.as_deref(), Some("true" | "1"));
    shared.lock_state().restore(reset_ids);
    StatusCode::NO_CONTENT.into_response()
}

async fn accept_loop(
    listener: TcpListener,
    router: Router,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "Sandbox accept failed.");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = stopped.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                serve_request(shared.clone(), router.clone(), req.map(Body::new))
            });
            // An error here is a dropped connection, injected or the client's.
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Counts a request as being served until it is dropped.
struct Serving<'a>(&'a Shared);

impl<'a> Serving<'a> {
    fn start(shared: &'a Shared) -> Serving<'a> {
        let now = shared
            .serving
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        let mut stats = shared.lock_stats();
        stats.max_concurrent = stats.max_concurrent.max(now);
        Serving(shared)
    }
}

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        self.0
            .serving
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Returned to hyper to close a connection without an answer.
#[derive(Debug)]
struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by the sandbox")
    }
}

impl std::error::Error for DropConnection {}

/// The endpoint a request is counted under, with ids replaced by names.
fn endpoint_of(method: &Method, path: &str) -> String {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let shape = match parts.as_slice() {
        ["api", "batch", "crm_outbounds", _, "records"] => "/api/batch/crm_outbounds/:id/records",
        ["api", "outbounds", _, "records_by_identifier", _] => {
            "/api/outbounds/:id/records_by_identifier/:identifier"
        }
        ["api", "customers", _, "feed_records"] => "/api/customers/:id/feed_records",
        ["api", "customers", _] => "/api/customers/:id",
        ["api", "customer_field_group_items", _] => "/api/customer_field_group_items/:id",
        ["api", "outbounds", _, "statuses"] => "/api/outbounds/:id/statuses",
        ["api", "outbounds", _, "agents"] => "/api/outbounds/:id/agents",
        _ => return format!("{method} {path}"),
    };
    format!("{method} {shape}")
}

/// Whether an endpoint's call creates something (so that a dropped answer
/// leaves its client not knowing whether it did).
fn is_non_idempotent(endpoint: &str) -> bool {
    matches!(
        endpoint,
        "POST /api/batch/customers"
            | "POST /api/customer_field_group_items"
            | "POST /api/customers/:id/feed_records"
    )
}

/// Every request passes here: `/api` requests get latency, the rate limit and
/// fault injection around the real handler; `/_sandbox` requests go straight
/// through.
async fn serve_request(
    shared: Arc<Shared>,
    router: Router,
    req: Request,
) -> Result<Response, DropConnection> {
    if !req.uri().path().starts_with("/api/") {
        return Ok(router
            .oneshot(req)
            .await
            .unwrap_or_else(|e: Infallible| match e {}));
    }
    let endpoint = endpoint_of(req.method(), req.uri().path());
    let in_window = {
        let now = std::time::Instant::now();
        let mut q = shared.arrivals.lock().unwrap_or_else(|e| e.into_inner());
        while q
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
        {
            q.pop_front();
        }
        q.push_back(now);
        q.len() as u64
    };
    let _serving = Serving::start(&shared);
    {
        let mut stats = shared.lock_stats();
        stats.requests_total += 1;
        stats.max_in_any_second = stats.max_in_any_second.max(in_window);
        *stats.requests.entry(endpoint.clone()).or_default() += 1;
    }
    // The journal needs the body; it is read here and put back.
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, api::MAX_BODY_BYTES).await else {
        return Ok(api::error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request body is too large.",
        ));
    };
    {
        let mut journal = shared.lock_journal();
        if journal.len() >= shared.config.journal_limit.max(1) {
            journal.pop_front();
        }
        journal.push_back(JournalEntry {
            method: parts.method.to_string(),
            path: parts.uri.path().to_string(),
            query: parts.uri.query().map(str::to_string),
            body: if bytes.is_empty() {
                serde_json::Value::Null
            } else {
                serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                    serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
                })
            },
        });
    }
    let req = Request::from_parts(parts, Body::from(bytes));
    if !shared.config.latency.is_zero() {
        tokio::time::sleep(shared.config.latency).await;
    }
    if let Some(limiter) = &shared.limiter {
        if !limiter.admit() {
            let mut stats = shared.lock_stats();
            stats.rate_limited += 1;
            stats.responses_429 += 1;
            *stats.responses.entry("429".into()).or_default() += 1;
            drop(stats);
            return Ok(retry_later(
                StatusCode::TOO_MANY_REQUESTS,
                1,
                "Too many requests.",
            ));
        }
    }
    let fault = shared.draw_fault();
    if let Some(kind) = fault {
        let mut stats = shared.lock_stats();
        stats.faults_total += 1;
        *stats.faults.entry(kind.name().into()).or_default() += 1;
        *stats
            .faults_by_endpoint
            .entry(endpoint.clone())
            .or_default()
            .entry(kind.name().into())
            .or_default() += 1;
        if kind.is_ambiguous() && is_non_idempotent(&endpoint) {
            stats.ambiguous_non_idempotent += 1;
        }
    }
    let outcome = match fault {
        Some(FaultKind::TooManyRequests) => Ok(retry_later(
            StatusCode::TOO_MANY_REQUESTS,
            shared.config.retry_after_secs,
            "Too many requests.",
        )),
        Some(FaultKind::Unavailable) => Ok(retry_later(
            StatusCode::SERVICE_UNAVAILABLE,
            shared.config.retry_after_secs,
            "Service temporarily unavailable.",
        )),
        Some(FaultKind::DropBefore) => Err(DropConnection),
        Some(kind @ (FaultKind::DropAfter | FaultKind::ServerErrorAfter)) => {
            let resp = router
                .oneshot(req)
                .await
                .unwrap_or_else(|e: Infallible| match e {});
            // Read the handler's answer to the end so that the change is done.
            drop(axum::body::to_bytes(resp.into_body(), usize::MAX).await);
            if kind == FaultKind::DropAfter {
                Err(DropConnection)
            } else {
                Ok(api::error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal server error.",
                ))
            }
        }
        None => Ok(router
            .oneshot(req)
            .await
            .unwrap_or_else(|e: Infallible| match e {})),
    };
    let mut stats = shared.lock_stats();
    let key = match &outcome {
        Ok(resp) => resp.status().as_u16().to_string(),
        Err(_) => "dropped".into(),
    };
    if key == "429" && fault.is_some() {
        stats.responses_429 += 1;
    }
    *stats.responses.entry(key).or_default() += 1;
    outcome
}

fn retry_later(status: StatusCode, secs: u64, message: &str) -> Response {
    let mut resp = api::error_response(status, message);
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

/// A request id in the vendor's style (13 hex digits).
pub fn request_id() -> String {
    format!("{:013x}", rand::random::<u64>() & 0xf_ffff_ffff_ffff)
}
