//! The HTTP client: one shared rate limiter charged for every attempt, one
//! shared pause that 429/503 answers extend for every worker, the retry rules
//! of [`crate::retry`], and nothing else. It knows endpoints only as method,
//! path and body; the pipeline gives them meaning.
//!
//! The `Authorization` header is marked sensitive and no body is ever logged,
//! at any level.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use reqwest::Method;
use tokio::time::Instant;

use crate::credentials::Credentials;
use crate::retry::{self, Class, Decision, Policy};

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

/// How a call ended, after retries.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// A 2xx answer and its body.
    Answered { status: u16, body: String },
    /// A 4xx (not 401/403/429): nothing was applied.
    Rejected { status: u16, message: String },
    /// 401/403: stop the run.
    Unauthorized { status: u16, message: String },
    /// A non-idempotent call that may or may not have been applied.
    Unknown { message: String },
    /// Retries exhausted on a cause that left nothing applied (or an
    /// idempotent call): safe to send again later.
    GaveUp {
        http_status: Option<u16>,
        message: String,
    },
}

/// A call's outcome and how many attempts it took.
#[derive(Debug, Clone)]
pub struct Reply {
    pub outcome: Outcome,
    pub attempts: u32,
}

/// The API client shared by every worker.
#[derive(Debug)]
pub struct ApiClient {
    http: reqwest::Client,
    root: String,
    auth: HeaderValue,
    limiter: Option<DefaultDirectRateLimiter>,
    policy: Policy,
    /// No attempt starts before this instant (raised by 429/503).
    pause_until: Mutex<Instant>,
    pub stats: WireStats,
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Requests per second across every endpoint; 0 or less: unlimited.
    pub rate: f64,
    pub timeout: Duration,
    pub policy: Policy,
}

impl ApiClient {
    pub fn new(
        credentials: &Credentials,
        config: &ClientConfig,
    ) -> Result<Arc<ApiClient>, reqwest::Error> {
        // rustls with the platform's certificate checks, always on.
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(50))
            .user_agent(concat!("thulium-import/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let token = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            credentials.user,
            credentials.password.expose()
        ));
        let mut auth = HeaderValue::from_str(&format!("Basic {token}"))
            .unwrap_or(HeaderValue::from_static(""));
        auth.set_sensitive(true);
        let limiter = (config.rate > 0.0 && config.rate.is_finite()).then(|| {
            let period = Duration::from_secs_f64(1.0 / config.rate);
            // A small burst: a fifth of a second's worth, at least 1.
            let burst = std::num::NonZeroU32::new(((config.rate / 5.0).ceil() as u32).clamp(1, 10))
                .unwrap_or(std::num::NonZeroU32::MIN);
            let quota =
                Quota::with_period(period).unwrap_or(Quota::per_second(std::num::NonZeroU32::MIN));
            RateLimiter::direct(quota.allow_burst(burst))
        });
        Ok(Arc::new(ApiClient {
            http,
            root: credentials.root.clone(),
            auth,
            limiter,
            policy: config.policy.clone(),
            pause_until: Mutex::new(Instant::now()),
            stats: WireStats::default(),
        }))
    }

    fn pause_all(&self, wait: Duration) {
        let mut until = self.pause_until.lock().unwrap_or_else(|e| e.into_inner());
        let new = Instant::now() + wait;
        if new > *until {
            *until = new;
        }
    }

    async fn wait_turn(&self) {
        loop {
            let until = *self.pause_until.lock().unwrap_or_else(|e| e.into_inner());
            if until <= Instant::now() {
                break;
            }
            tokio::time::sleep_until(until).await;
        }
        if let Some(l) = &self.limiter {
            l.until_ready().await;
        }
    }

    /// Sends `body` (JSON text) to `path` under `/api/`, retrying per the
    /// rules, and says how it ended.
    pub async fn call(
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
            let mut req = self
                .http
                .request(method.clone(), &url)
                .header(AUTHORIZATION, self.auth.clone());
            if let Some(b) = &body {
                req = req
                    .header(CONTENT_TYPE, "application/json; charset=utf-8")
                    .body(b.clone());
            }
            let (class, finished) = match req.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let retry_after = retry::parse_retry_after(
                        resp.headers()
                            .get(RETRY_AFTER)
                            .and_then(|v| v.to_str().ok()),
                    );
                    if status == 429 {
                        self.stats.throttled_429.fetch_add(1, Ordering::Relaxed);
                    }
                    let class = retry::classify_status(status, retry_after);
                    match resp.text().await {
                        Ok(text) => (class, Ok((status, text))),
                        // The body broke off: for a 2xx the work was done
                        // but the answer is lost.
                        Err(e) => (
                            Class::Ambiguous,
                            Err(format!("the answer ({status}) broke off: {e}")),
                        ),
                    }
                }
                Err(e) => (retry::classify_error(&e), Err(describe(&e))),
            };
            tracing::debug!(%method, path, attempt, class = ?class, "Attempt finished.");
            let decision = {
                let mut rng = rand::rng();
                self.policy.decide(&class, idempotent, attempt, &mut rng)
            };
            if let Decision::Retry { wait, pause_all } = decision {
                if pause_all {
                    self.pause_all(wait);
                } else {
                    tokio::time::sleep(wait).await;
                }
                continue;
            }
            let outcome = match (class, finished) {
                (Class::Success, Ok((status, body))) => Outcome::Answered { status, body },
                (Class::Rejected, Ok((status, body))) => Outcome::Rejected {
                    status,
                    message: error_message(&body),
                },
                (Class::Auth, Ok((status, body))) => Outcome::Unauthorized {
                    status,
                    message: error_message(&body),
                },
                (Class::Ambiguous, result) if !idempotent => Outcome::Unknown {
                    message: match result {
                        Ok((status, body)) => {
                            format!("HTTP {status} after sending: {}", error_message(&body))
                        }
                        Err(e) => e,
                    },
                },
                (_, Ok((status, body))) => Outcome::GaveUp {
                    http_status: Some(status),
                    message: format!(
                        "gave up after {attempt} attempt(s): HTTP {status}: {}",
                        error_message(&body)
                    ),
                },
                (_, Err(e)) => Outcome::GaveUp {
                    http_status: None,
                    message: format!("gave up after {attempt} attempt(s): {e}"),
                },
            };
            return Reply {
                outcome,
                attempts: attempt,
            };
        }
    }
}

/// An integer from an answer, given as a number or as a string of one
/// (`customer_id` comes back as `"13"` from one endpoint and `13` from the
/// others): liberal in what we accept.
pub fn lenient_int(v: Option<&serde_json::Value>) -> Option<i64> {
    match v? {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
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
