//! Retry rules, in one place (after Vector's `RetryLogic`): what an answer or
//! a transport error means, and whether the call may be sent again.
//!
//! | what happened | idempotent call | non-idempotent call |
//! |---|---|---|
//! | 2xx | success | success |
//! | 429, 503 | not processed: wait (`Retry-After`, capped) and retry | same |
//! | connection refused / failed before sending, 408 | retry | retry |
//! | timeout, dropped connection, other 5xx | retry | **unknown**: never resent |
//! | 401, 403 | stop the run | stop the run |
//! | 3xx (a redirect, never followed but for a GET) | stop the run: the URL is wrong | same |
//! | other 4xx | rejected: nothing applied (split the batch) | same |
//! | an answer larger than the cap | not resent (it would be as large again): given up | **unknown** |
//!
//! Waits are exponential with full jitter, capped, and the number of
//! attempts is bounded.

use std::time::Duration;

use rand::Rng;

/// What one attempt's result means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Class {
    /// A 2xx answer.
    Success,
    /// 429 or 503: the server did not process it; `Retry-After` if given.
    Throttled(Option<Duration>),
    /// The request never reached the server (connect error), or 408.
    Undelivered,
    /// It may or may not have been applied (timeout, dropped, 5xx).
    Ambiguous,
    /// 401/403: credentials or permissions.
    Auth,
    /// Another 4xx: refused as a whole, nothing applied.
    Rejected,
    /// A 3xx that was not followed: nothing applied where it was sent.
    Redirected,
    /// The answer was larger than the client reads: the call was processed
    /// (for a 2xx), but its answer is lost, and sending it again would give
    /// the same.
    TooLarge,
}

/// Classifies an HTTP status.
pub fn classify_status(status: u16, retry_after: Option<Duration>) -> Class {
    match status {
        200..=299 => Class::Success,
        429 | 503 => Class::Throttled(retry_after),
        408 => Class::Undelivered,
        401 | 403 => Class::Auth,
        300..=399 => Class::Redirected,
        400..=499 => Class::Rejected,
        _ => Class::Ambiguous,
    }
}

/// Classifies a transport error: only a failure to connect proves that
/// nothing was sent.
pub fn classify_error(e: &reqwest::Error) -> Class {
    if e.is_connect() && !e.is_timeout() {
        Class::Undelivered
    } else {
        Class::Ambiguous
    }
}

/// Parses `Retry-After` as delay-seconds (the HTTP-date form is rare for
/// APIs and is treated as absent).
pub fn parse_retry_after(value: Option<&str>) -> Option<Duration> {
    value?.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The bounds of retrying.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Attempts per call, the first included.
    pub max_attempts: u32,
    /// First backoff step.
    pub base: Duration,
    /// Longest backoff step.
    pub max_backoff: Duration,
    /// Longest `Retry-After` honoured.
    pub max_retry_after: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_attempts: 6,
            base: Duration::from_millis(250),
            max_backoff: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

/// What to do after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Done: hand the class to the caller.
    Stop,
    /// Send again after this wait; `pause_all` when the server asked every
    /// client to slow down (429/503), so that all workers wait, not just one.
    Retry { wait: Duration, pause_all: bool },
}

impl Policy {
    /// Full-jitter exponential backoff for attempt `n` (1-based).
    pub fn backoff(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        let cap = exp.min(self.max_backoff);
        cap.mul_f64(rng.random_range(0.0..=1.0))
    }

    /// Decides after attempt `attempt` (1-based) ended in `class`.
    pub fn decide(
        &self,
        class: &Class,
        idempotent: bool,
        attempt: u32,
        rng: &mut impl Rng,
    ) -> Decision {
        let retryable = match class {
            Class::Throttled(_) | Class::Undelivered => true,
            Class::Ambiguous => idempotent,
            Class::Success
            | Class::Auth
            | Class::Rejected
            | Class::Redirected
            | Class::TooLarge => false,
        };
        if !retryable || attempt >= self.max_attempts {
            return Decision::Stop;
        }
        let backoff = self.backoff(attempt, rng);
        match class {
            Class::Throttled(Some(after)) => Decision::Retry {
                wait: (*after)
                    .min(self.max_retry_after)
                    .max(backoff.min(Duration::from_millis(50))),
                pause_all: true,
            },
            Class::Throttled(None) => Decision::Retry {
                wait: backoff.max(self.base / 2),
                pause_all: true,
            },
            _ => Decision::Retry {
                wait: backoff,
                pause_all: false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(1)
    }

    #[test]
    fn every_status_class() {
        assert_eq!(classify_status(200, None), Class::Success);
        assert_eq!(classify_status(201, None), Class::Success);
        assert_eq!(classify_status(204, None), Class::Success);
        assert_eq!(
            classify_status(429, Some(Duration::from_secs(2))),
            Class::Throttled(Some(Duration::from_secs(2)))
        );
        assert_eq!(classify_status(503, None), Class::Throttled(None));
        assert_eq!(classify_status(408, None), Class::Undelivered);
        assert_eq!(classify_status(401, None), Class::Auth);
        assert_eq!(classify_status(403, None), Class::Auth);
        for s in [400, 404, 409, 413, 415, 422] {
            assert_eq!(classify_status(s, None), Class::Rejected, "{s}");
        }
        for s in [301, 302, 307, 308] {
            assert_eq!(classify_status(s, None), Class::Redirected, "{s}");
        }
        for s in [500, 502, 504] {
            assert_eq!(classify_status(s, None), Class::Ambiguous, "{s}");
        }
    }

    #[test]
    fn ambiguous_is_retried_only_when_idempotent() {
        let p = Policy::default();
        assert!(matches!(
            p.decide(&Class::Ambiguous, true, 1, &mut rng()),
            Decision::Retry {
                pause_all: false,
                ..
            }
        ));
        assert_eq!(
            p.decide(&Class::Ambiguous, false, 1, &mut rng()),
            Decision::Stop
        );
    }

    #[test]
    fn throttling_pauses_everyone_and_honours_retry_after_capped() {
        let p = Policy::default();
        let d = p.decide(
            &Class::Throttled(Some(Duration::from_secs(3))),
            false,
            1,
            &mut rng(),
        );
        assert_eq!(
            d,
            Decision::Retry {
                wait: Duration::from_secs(3),
                pause_all: true
            }
        );
        let d = p.decide(
            &Class::Throttled(Some(Duration::from_secs(3600))),
            false,
            1,
            &mut rng(),
        );
        assert_eq!(
            d,
            Decision::Retry {
                wait: Duration::from_secs(60),
                pause_all: true
            }
        );
        assert!(matches!(
            p.decide(&Class::Undelivered, false, 1, &mut rng()),
            Decision::Retry { .. }
        ));
    }

    #[test]
    fn attempts_are_bounded_and_final_classes_stop() {
        let p = Policy {
            max_attempts: 3,
            ..Policy::default()
        };
        assert!(matches!(
            p.decide(&Class::Undelivered, true, 2, &mut rng()),
            Decision::Retry { .. }
        ));
        assert_eq!(
            p.decide(&Class::Undelivered, true, 3, &mut rng()),
            Decision::Stop
        );
        for c in [
            Class::Success,
            Class::Auth,
            Class::Rejected,
            Class::Redirected,
            Class::TooLarge,
        ] {
            assert_eq!(p.decide(&c, true, 1, &mut rng()), Decision::Stop);
        }
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let p = Policy::default();
        let mut r = rng();
        for attempt in 1..20 {
            let cap = p
                .base
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(p.max_backoff);
            assert!(p.backoff(attempt, &mut r) <= cap);
        }
        let waits: Vec<Duration> = (0..20).map(|_| p.backoff(5, &mut r)).collect();
        assert!(
            waits.windows(2).any(|w| w[0] != w[1]),
            "jitter varies the wait"
        );
    }

    #[test]
    fn retry_after_parsing() {
        assert_eq!(parse_retry_after(Some("2")), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT")),
            None
        );
        assert_eq!(parse_retry_after(None), None);
    }
}
