//! The HTTP transport: one shared pacer ([`crate::pace`]) charged for every
//! attempt, one shared pause that 429/503 answers extend for every worker,
//! the `--rate auto` controller fed by every answer, the retry rules of
//! [`crate::retry`], and nothing else. It moves a method, a path under
//! `/api/` and a JSON text; what those mean is [`crate::api`]'s business.
//!
//! HTTP hygiene, so that a call never does something it was not asked to:
//! - a redirect is never followed for a call that is not a GET (a 301/302
//!   would turn a POST into a GET, and a 307 would resend a body that may
//!   already have been applied): it ends the call with an error that names
//!   the `Location`; a GET follows at most five, and only within the same
//!   scheme, host and port (its query may hold customer data);
//! - an answer's body is read up to [`MAX_ANSWER_BYTES`]; a larger one is an
//!   error, never an unbounded allocation;
//! - the `Authorization` header is marked sensitive and no body is ever
//!   logged, at any level.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use reqwest::Method;
use tokio::time::Instant;

use crate::credentials::Credentials;
use crate::pace::{Aimd, Pacer};
use crate::retry::{self, Class, Decision, Policy};

/// The largest answer body read (16 MiB): a page of 1,000 customers is well
/// under 1 MiB.
pub const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// Counters of what went over the wire.
#[derive(Debug, Default)]
pub struct WireStats {
    /// Every attempt sent (retries included).
    pub requests: AtomicU64,
    /// Attempts after the first.
    pub retries: AtomicU64,
    /// 429 answers seen.
    pub throttled_429: AtomicU64,
}

/// Why a call did not end in a 2xx answer, after retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// A 4xx (not 401/403/429) for the whole call: nothing was applied.
    Refused { status: u16, message: String },
    /// 401/403: a wrong password, or a method this API user may not call.
    Unauthorized { status: u16, message: String },
    /// A 3xx: the call was not followed to `location`; nothing was applied
    /// where it was sent.
    Redirected { status: u16, location: String },
    /// A call that is not idempotent may or may not have been applied
    /// (timeout, dropped connection, 5xx after sending).
    Unknown { message: String },
    /// Retries ran out on a cause that left nothing applied, or on an
    /// idempotent call: safe to send again later.
    GaveUp {
        status: Option<u16>,
        message: String,
    },
    /// A list's paging cannot be trusted (the server ignores `offset`, or
    /// the list never ends): reading on would loop or read a part as the
    /// whole, so the run stops.
    Paging { message: String },
    /// The system cannot be reached: connection attempts in a row failed
    /// (refused, DNS, TLS) across calls. Nothing was sent; no later call
    /// can succeed either.
    Unreachable { message: String },
    /// Never sent: the run was stopping.
    Stopping { reason: String },
}

impl CallError {
    /// The HTTP status, where the call got one.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            CallError::Refused { status, .. }
            | CallError::Unauthorized { status, .. }
            | CallError::Redirected { status, .. } => Some(*status),
            CallError::GaveUp { status, .. } => *status,
            CallError::Unknown { .. }
            | CallError::Paging { .. }
            | CallError::Unreachable { .. }
            | CallError::Stopping { .. } => None,
        }
    }

    /// Why the whole run must stop, when this error means no later call can
    /// succeed either.
    pub fn stops_the_run(&self) -> Option<String> {
        match self {
            CallError::Unauthorized { status, message } => Some(format!(
                "HTTP {status}: {message}: the password is wrong, or the API user may not call this method (API users get per-method permissions in Administracja → Użytkownicy → Użytkownicy API)"
            )),
            CallError::Redirected { status, location } => Some(format!(
                "HTTP {status}: the API redirected the call to {location}; it was not followed (a POST or PUT redirected would be lost, a GET is followed only within the system): check --url"
            )),
            // A list read in part would be taken for the whole system
            // (customers not found are created again): nothing is safe.
            CallError::Paging { message } => Some(message.clone()),
            CallError::Unreachable { message } => Some(format!(
                "the system cannot be reached ({message}): check --url and the network"
            )),
            _ => None,
        }
    }
}

impl std::error::Error for CallError {}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Refused { message, .. }
            | CallError::Unauthorized { message, .. }
            | CallError::Unknown { message }
            | CallError::Paging { message }
            | CallError::Unreachable { message }
            | CallError::GaveUp { message, .. } => f.write_str(message),
            CallError::Redirected { status, location } => {
                write!(f, "HTTP {status}: redirected to {location} (not followed)")
            }
            CallError::Stopping { reason } => write!(f, "not sent: the run stopped ({reason})"),
        }
    }
}

/// A 2xx answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// How a call ended, and after how many attempts.
#[derive(Debug, Clone)]
pub struct Reply {
    pub result: Result<Answer, CallError>,
    pub attempts: u32,
}

/// The API transport shared by every worker.
#[derive(Debug)]
pub struct ApiClient {
    /// For calls that are not GETs: never follows a redirect.
    http: reqwest::Client,
    /// For GETs: follows at most five redirects, none to another host.
    http_get: reqwest::Client,
    root: String,
    auth: HeaderValue,
    pacer: Pacer,
    fixed_rate: f64,
    /// `--rate auto`: the controller that sets the pacer's rate.
    auto: Option<Mutex<Aimd>>,
    /// Seconds an attempt takes, smoothed (what calls in flight follow).
    latency: Mutex<f64>,
    policy: Policy,
    /// No attempt starts before this instant (raised by 429/503).
    pause_until: Mutex<Instant>,
    pub stats: WireStats,
    /// Connection attempts that failed in a row, across every call (any
    /// answer resets it), and whether any answer ever came.
    unreachable: std::sync::atomic::AtomicU32,
    answered: std::sync::atomic::AtomicBool,
    max_unreachable: u32,
    /// The `--rate auto` rate last logged.
    rate_said: Mutex<f64>,
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Requests per second across every endpoint; 0 or less: unlimited.
    pub rate: f64,
    /// `--rate auto:MAX`: find the rate, up to this ceiling (`rate` is then
    /// ignored).
    pub auto_max: Option<f64>,
    pub timeout: Duration,
    pub policy: Policy,
    /// Connection attempts in a row, across every call, that may fail
    /// before a call stops retrying (0: no limit): a system that went away
    /// stops the run in seconds. Before any answer at all, three do.
    pub max_unreachable: u32,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            rate: 10.0,
            auto_max: None,
            timeout: Duration::from_secs(30),
            policy: Policy::default(),
            max_unreachable: 20,
        }
    }
}

impl ApiClient {
    pub fn new(
        credentials: &Credentials,
        config: &ClientConfig,
    ) -> Result<Arc<ApiClient>, reqwest::Error> {
        // rustls with the platform's certificate checks, always on.
        let builder = |redirects: reqwest::redirect::Policy| {
            reqwest::Client::builder()
                .timeout(config.timeout)
                .connect_timeout(config.timeout.min(Duration::from_secs(10)))
                .pool_idle_timeout(Duration::from_secs(50))
                .user_agent(concat!("thulium-import/", env!("CARGO_PKG_VERSION")))
                .redirect(redirects)
                .build()
        };
        let http = builder(reqwest::redirect::Policy::none())?;
        // A GET follows a redirect only within the system it was sent to
        // (same scheme, host and port): a GET's query holds customer data
        // (`identifier=...`), which must not go to another host. A redirect
        // elsewhere is answered as it came, and ends the call naming it.
        let http_get = builder(reqwest::redirect::Policy::custom(|attempt| {
            let origin = |u: &reqwest::Url| {
                (
                    u.scheme().to_string(),
                    u.host_str().map(str::to_string),
                    u.port_or_known_default(),
                )
            };
            let same = attempt
                .previous()
                .first()
                .is_some_and(|first| origin(first) == origin(attempt.url()));
            if !same || attempt.previous().len() > 5 {
                attempt.stop()
            } else {
                attempt.follow()
            }
        }))?;
        let token = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            credentials.user,
            credentials.password.expose()
        ));
        let mut auth = HeaderValue::from_str(&format!("Basic {token}"))
            .unwrap_or(HeaderValue::from_static(""));
        auth.set_sensitive(true);
        let auto = config
            .auto_max
            .map(|max| Mutex::new(Aimd::new(Instant::now(), max)));
        let rate = match &auto {
            Some(a) => a.lock().unwrap_or_else(|e| e.into_inner()).rate(),
            None => config.rate,
        };
        Ok(Arc::new(ApiClient {
            http,
            http_get,
            root: credentials.root.clone(),
            auth,
            pacer: Pacer::new(rate),
            fixed_rate: config.rate.max(0.0),
            auto,
            latency: Mutex::new(0.1),
            policy: config.policy.clone(),
            pause_until: Mutex::new(Instant::now()),
            stats: WireStats::default(),
            unreachable: std::sync::atomic::AtomicU32::new(0),
            answered: std::sync::atomic::AtomicBool::new(false),
            max_unreachable: config.max_unreachable,
            rate_said: Mutex::new(0.0),
        }))
    }

    fn pause_all(&self, wait: Duration) {
        let mut until = self.pause_until.lock().unwrap_or_else(|e| e.into_inner());
        let new = Instant::now() + wait;
        if new > *until {
            *until = new;
        }
    }

    /// Waits for this attempt's turn: past any pause a 429 or 503 asked
    /// for, then its paced slot. A pause that began while it waited for its
    /// slot (a request already queued) holds it too.
    async fn wait_turn(&self) {
        loop {
            loop {
                let until = *self.pause_until.lock().unwrap_or_else(|e| e.into_inner());
                if until <= Instant::now() {
                    break;
                }
                tokio::time::sleep_until(until).await;
            }
            self.pacer.until_ready().await;
            let until = *self.pause_until.lock().unwrap_or_else(|e| e.into_inner());
            if until <= Instant::now() {
                return;
            }
        }
    }

    /// Counts a failed connection attempt; whether the system now counts
    /// as unreachable: `max_unreachable` in a row across every call, or
    /// three before any answer ever came (a wrong URL, a system down).
    fn unreachable_now(&self) -> bool {
        let n = self.unreachable.fetch_add(1, Ordering::Relaxed) + 1;
        let max = if self.answered.load(Ordering::Relaxed) {
            self.max_unreachable
        } else {
            self.max_unreachable.min(3)
        };
        max > 0 && n >= max
    }

    /// The rate in force, in requests per second (0: unlimited).
    pub fn rate(&self) -> f64 {
        match &self.auto {
            Some(a) => a.lock().unwrap_or_else(|e| e.into_inner()).rate(),
            None => self.fixed_rate,
        }
    }

    /// With `--rate auto`: the rate the server last refused (what it settled
    /// under).
    pub fn settled_limit(&self) -> Option<f64> {
        self.auto
            .as_ref()
            .and_then(|a| a.lock().unwrap_or_else(|e| e.into_inner()).limit())
    }

    /// Whether the rate is found as it goes (`--rate auto`).
    pub fn is_auto(&self) -> bool {
        self.auto.is_some()
    }

    /// How long an attempt takes, smoothed.
    pub fn latency(&self) -> Duration {
        Duration::from_secs_f64(*self.latency.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Feeds an attempt's fate to the latency average and `--rate auto`.
    fn observed(&self, took: Duration, class: &Class, wait: Option<Duration>) {
        {
            let mut l = self.latency.lock().unwrap_or_else(|e| e.into_inner());
            *l = *l * 0.8 + took.as_secs_f64() * 0.2;
        }
        let Some(auto) = &self.auto else { return };
        let mut auto = auto.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let changed = match class {
            Class::Throttled(_) => auto.on_throttle(now, wait.unwrap_or_default()),
            Class::Success | Class::Rejected => auto.on_success(now),
            _ => false,
        };
        if changed {
            self.pacer.set_rate(auto.rate());
            // Said when it moved by a tenth since last said, not on every
            // step (twice a second while it climbs).
            let mut said = self.rate_said.lock().unwrap_or_else(|e| e.into_inner());
            if (auto.rate() - *said).abs() >= *said * 0.1 {
                *said = auto.rate();
                tracing::info!(
                    rate = format!("{:.1}", auto.rate()),
                    limit = auto.limit().map(|l| format!("{l:.1}")),
                    "Rate in force changed (--rate auto)."
                );
            }
        }
    }

    /// Sends `body` (JSON text) to `path` under `/api/` (a path and, for a
    /// GET, its query), retrying per the rules, and says how it ended. Only
    /// [`crate::api`] calls this.
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
        idempotent: bool,
    ) -> Reply {
        let url = format!("{}/api/{}", self.root, path);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            self.wait_turn().await;
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            if attempt > 1 {
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
            }
            let http = if method == Method::GET {
                &self.http_get
            } else {
                &self.http
            };
            let mut req = http
                .request(method.clone(), &url)
                .header(AUTHORIZATION, self.auth.clone());
            if let Some(b) = &body {
                req = req
                    .header(CONTENT_TYPE, "application/json; charset=utf-8")
                    .body(b.clone());
            }
            let mut location = None;
            let sent_at = Instant::now();
            let (class, finished) = match req.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let header = |name| {
                        resp.headers()
                            .get(name)
                            .and_then(|v: &HeaderValue| v.to_str().ok())
                            .map(str::to_string)
                    };
                    let retry_after = retry::parse_retry_after(header(RETRY_AFTER).as_deref());
                    location = header(LOCATION);
                    if status == 429 {
                        self.stats.throttled_429.fetch_add(1, Ordering::Relaxed);
                    }
                    let class = retry::classify_status(status, retry_after);
                    match read_capped(resp).await {
                        Ok(text) => (class, Ok((status, text))),
                        Err(Unread::TooLarge(n)) => (
                            Class::TooLarge,
                            Err(format!(
                                "the answer ({status}) is larger than {n}: not read"
                            )),
                        ),
                        // The body broke off: for a 2xx the work was done
                        // but the answer is lost.
                        Err(Unread::BrokeOff(e)) => (
                            Class::Ambiguous,
                            Err(format!("the answer ({status}) broke off: {e}")),
                        ),
                    }
                }
                Err(e) => (retry::classify_error(&e), Err(describe(&e))),
            };
            tracing::debug!(%method, path, attempt, class = ?class, "Attempt finished.");
            let cannot_connect = class == Class::Undelivered && finished.is_err();
            let unreachable = cannot_connect && self.unreachable_now();
            let decision = {
                let mut rng = rand::rng();
                match self.policy.decide(&class, idempotent, attempt, &mut rng) {
                    Decision::Retry { .. } if unreachable => Decision::Stop,
                    d => d,
                }
            };
            if !cannot_connect {
                self.unreachable.store(0, Ordering::Relaxed);
                self.answered.store(true, Ordering::Relaxed);
            }
            let wait = match &decision {
                Decision::Retry { wait, .. } => Some(*wait),
                Decision::Stop => None,
            };
            self.observed(sent_at.elapsed(), &class, wait);
            if let Decision::Retry { wait, pause_all } = decision {
                if pause_all {
                    self.pause_all(wait);
                } else {
                    tokio::time::sleep(wait).await;
                }
                continue;
            }
            let result = match (class, finished) {
                (_, Err(e)) if unreachable => Err(CallError::Unreachable {
                    message: format!(
                        "{attempt} attempt(s) of this call, and the calls before it: {e}"
                    ),
                }),
                (Class::Success, Ok((status, body))) => Ok(Answer { status, body }),
                (Class::Rejected, Ok((status, body))) => Err(CallError::Refused {
                    status,
                    message: error_message(&body),
                }),
                (Class::Auth, Ok((status, body))) => Err(CallError::Unauthorized {
                    status,
                    message: error_message(&body),
                }),
                (Class::Redirected, Ok((status, _))) => Err(CallError::Redirected {
                    status,
                    location: location.unwrap_or_else(|| "(no Location header)".into()),
                }),
                (Class::Ambiguous | Class::TooLarge, result) if !idempotent => {
                    Err(CallError::Unknown {
                        message: match result {
                            Ok((status, body)) => {
                                format!("HTTP {status} after sending: {}", error_message(&body))
                            }
                            Err(e) => e,
                        },
                    })
                }
                (_, Ok((status, body))) => Err(CallError::GaveUp {
                    status: Some(status),
                    message: format!(
                        "gave up after {attempt} attempt(s): HTTP {status}: {}",
                        error_message(&body)
                    ),
                }),
                (_, Err(e)) => Err(CallError::GaveUp {
                    status: None,
                    message: format!("gave up after {attempt} attempt(s): {e}"),
                }),
            };
            return Reply {
                result,
                attempts: attempt,
            };
        }
    }
}

/// Why an answer's body was not read.
enum Unread {
    TooLarge(String),
    BrokeOff(String),
}

/// Reads an answer's body, at most [`MAX_ANSWER_BYTES`] of it.
async fn read_capped(mut resp: reqwest::Response) -> Result<String, Unread> {
    let too_large = || Unread::TooLarge(format!("{} MiB", MAX_ANSWER_BYTES / (1024 * 1024)));
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut buf = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Err(too_large());
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(String::from_utf8_lossy(&buf).into_owned()),
            Err(e) => return Err(Unread::BrokeOff(describe(&e))),
        }
    }
}

/// A transport error in words, without the URL's query or any header.
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "the connection failed"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {detail}")
    }
}

/// The vendor's error form `{"request_id", "errors": [{"message", "code"}]}`
/// as one line (with the request id, which the vendor's support asks for);
/// any other body shortened.
pub fn error_message(body: &str) -> String {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(body) {
        if let Some(errors) = v.get("errors").and_then(|e| e.as_array()) {
            let messages: Vec<String> = errors
                .iter()
                .filter_map(|e| {
                    e.get("message")
                        .and_then(|m| m.as_str())
                        .map(str::to_string)
                        .or_else(|| e.as_str().map(str::to_string))
                })
                .collect();
            let mut out = messages.join("; ");
            if let Some(id) = v.get("request_id").and_then(|r| r.as_str()) {
                out.push_str(&format!(" (request_id {id})"));
            }
            return out;
        }
        if let Some(m) = v.get("message").and_then(|m| m.as_str()) {
            return m.to_string();
        }
    }
    crate::source::shorten(body.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendor_error_form_is_read_with_its_request_id() {
        let body = r#"{"request_id":"53678450401cf","errors":[{"message":"Wrong format of phone number.","code":111111},{"message":"Other.","code":1}]}"#;
        assert_eq!(
            error_message(body),
            "Wrong format of phone number.; Other. (request_id 53678450401cf)"
        );
        assert_eq!(error_message("<html>oops</html>"), "<html>oops</html>");
    }
}
