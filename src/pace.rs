//! Pacing: how fast requests leave, and how many are in flight.
//!
//! - [`Pacer`]: requests start evenly spaced — never a burst — at 98 % of
//!   the rate in force, so that **any** 1-second window holds at most the
//!   rate's number of requests, however the server counts (a sliding
//!   window, fixed windows, a token bucket), with room for some jitter on
//!   the way. Every attempt passes it, retries included.
//! - [`Aimd`]: `--rate auto`: for a server whose limit nobody documented.
//!   It starts low and doubles while nothing is refused (slow start); a 429
//!   or 503 remembers the rate it came at as the limit and cuts the rate
//!   (multiplicative decrease); then it climbs back quickly to just under
//!   that limit and probes above it slowly (additive increase), as TCP
//!   does. `Retry-After` is honoured by the client's shared pause.
//! - [`in_flight`]: how many calls to keep in flight so that the rate is
//!   reachable at the latency measured: rate × latency, with headroom, up to
//!   a cap (`--concurrency` when given).

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The share of the rate the pacer uses: the rest absorbs jitter between
/// the client's clock and the server's.
pub const HEADROOM: f64 = 0.98;

/// `--rate`: a number of requests per second, or `auto` (`auto:MAX`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RateSpec {
    Fixed(f64),
    Auto { max: f64 },
}

/// The ceiling of `--rate auto` without `:MAX`.
pub const AUTO_MAX: f64 = 1000.0;

impl std::str::FromStr for RateSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let number = |t: &str| -> Result<f64, String> {
            match t.parse::<f64>() {
                Ok(n) if n > 0.0 && n.is_finite() => Ok(n),
                _ => Err(format!(
                    "\"{t}\" is not a positive number of requests per second"
                )),
            }
        };
        match s.strip_prefix("auto") {
            Some("") => Ok(RateSpec::Auto { max: AUTO_MAX }),
            Some(rest) => match rest.strip_prefix(':') {
                Some(max) => Ok(RateSpec::Auto { max: number(max)? }),
                None => Err(format!("expected auto or auto:MAX, not \"{s}\"")),
            },
            None => number(s).map(RateSpec::Fixed),
        }
    }
}

impl std::fmt::Display for RateSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RateSpec::Fixed(r) => write!(f, "{r}"),
            RateSpec::Auto { max } if *max == AUTO_MAX => f.write_str("auto"),
            RateSpec::Auto { max } => write!(f, "auto:{max}"),
        }
    }
}

/// Evenly spaced request starts at an adjustable rate.
#[derive(Debug)]
pub struct Pacer {
    /// Seconds between starts (0: unlimited).
    interval: Mutex<f64>,
    /// The next start allowed; requests take their turns in order.
    next: tokio::sync::Mutex<Option<Instant>>,
}

impl Pacer {
    /// A pacer for `rate` requests per second (0 or less: unlimited).
    pub fn new(rate: f64) -> Pacer {
        let pacer = Pacer {
            interval: Mutex::new(0.0),
            next: tokio::sync::Mutex::new(None),
        };
        pacer.set_rate(rate);
        pacer
    }

    /// Changes the rate (the next starts are spaced by the new interval).
    pub fn set_rate(&self, rate: f64) {
        let interval = if rate > 0.0 && rate.is_finite() {
            1.0 / (rate * HEADROOM)
        } else {
            0.0
        };
        *self.interval.lock().unwrap_or_else(|e| e.into_inner()) = interval;
    }

    fn interval(&self) -> f64 {
        *self.interval.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for this request's turn. Turns are spaced by the interval from
    /// the previous turn's scheduled time; a waiter woken late by more than
    /// a tenth of the interval restarts the schedule from its own start, so
    /// that a late start never leaves a shorter gap after it.
    pub async fn until_ready(&self) {
        let interval = self.interval();
        if interval <= 0.0 {
            return;
        }
        let mut next = self.next.lock().await;
        let now = Instant::now();
        let slot = match *next {
            Some(n) if n > now => n,
            _ => now,
        };
        tokio::time::sleep_until(slot).await;
        let woke = Instant::now();
        let step = Duration::from_secs_f64(interval);
        let anchor = if woke.duration_since(slot) > step / 10 {
            woke
        } else {
            slot
        };
        *next = Some(anchor + step);
    }
}

/// The `--rate auto` controller. Pure logic: time is passed in, so that its
/// decisions can be tested with a fake clock.
#[derive(Debug, Clone)]
pub struct Aimd {
    rate: f64,
    max: f64,
    slow_start: bool,
    /// The rate at the last 429 or 503: the limit it settled on.
    limit: Option<f64>,
    last_step: Instant,
    /// After a throttle, the answers still in flight were sent at the old
    /// rate: they are not held against the new one.
    quiet_until: Instant,
}

/// The rate `--rate auto` starts at.
pub const AUTO_START: f64 = 2.0;
/// The lowest rate it goes down to.
const AUTO_MIN: f64 = 0.5;
/// How often the rate steps up while nothing is refused.
const STEP: Duration = Duration::from_millis(500);
/// The cut after a 429 or 503.
const DECREASE: f64 = 0.85;
/// How close under the known limit the rate climbs back quickly.
const NEAR: f64 = 0.97;
/// The probe above it: this share more, per step.
const PROBE: f64 = 0.0025;

impl Aimd {
    pub fn new(now: Instant, max: f64) -> Aimd {
        Aimd {
            rate: AUTO_START.min(max),
            max,
            slow_start: true,
            limit: None,
            last_step: now,
            quiet_until: now,
        }
    }

    /// The rate in force.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The rate it was last refused at, if it has been.
    pub fn limit(&self) -> Option<f64> {
        self.limit
    }

    /// A request went through: step up, at most once per step.
    pub fn on_success(&mut self, now: Instant) -> bool {
        if now < self.quiet_until || now.duration_since(self.last_step) < STEP {
            return false;
        }
        self.last_step = now;
        let before = self.rate;
        self.rate = if self.slow_start {
            self.rate * 2.0
        } else {
            let near = self.limit.map_or(self.max, |l| l * NEAR);
            if self.rate < near {
                // Back quickly to just under the limit...
                (self.rate + (near - self.rate) / 2.0).max(self.rate + 0.1)
            } else {
                // ...then probe above it slowly.
                self.rate * (1.0 + PROBE) + 0.02
            }
        }
        .min(self.max);
        self.rate != before
    }

    /// A 429 or 503: remember the limit, cut the rate. `wait` is the pause
    /// the answer asked for (`Retry-After`).
    pub fn on_throttle(&mut self, now: Instant, wait: Duration) -> bool {
        if now < self.quiet_until {
            return false;
        }
        self.limit = Some(self.rate);
        self.rate = if self.slow_start {
            // The rate before the last doubling went through.
            self.rate / 2.0
        } else {
            self.rate * DECREASE
        }
        .max(AUTO_MIN);
        self.slow_start = false;
        self.quiet_until = now + wait.max(STEP);
        self.last_step = self.quiet_until;
        true
    }
}

/// How many calls to keep in flight to reach `rate` at `latency` a call:
/// rate × latency, half again for headroom, one more, at most `cap`.
pub fn in_flight(rate: f64, latency: Duration, cap: usize) -> usize {
    let needed = (rate * latency.as_secs_f64() * 1.5).ceil() as usize + 1;
    needed.clamp(1, cap.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!("10".parse(), Ok(RateSpec::Fixed(10.0)));
        assert_eq!("2.5".parse(), Ok(RateSpec::Fixed(2.5)));
        assert_eq!("auto".parse(), Ok(RateSpec::Auto { max: AUTO_MAX }));
        assert_eq!("auto:60".parse(), Ok(RateSpec::Auto { max: 60.0 }));
        for bad in ["0", "-1", "fast", "auto:0", "automatic", "inf"] {
            assert!(bad.parse::<RateSpec>().is_err(), "{bad}");
        }
        assert_eq!(RateSpec::Auto { max: 60.0 }.to_string(), "auto:60");
    }

    /// Runs the controller against a server that refuses above `limit`
    /// requests/s, on a fake clock, for `secs`: the rates in force.
    fn against(limit: f64, secs: u64) -> (Aimd, Vec<f64>, u32) {
        let start = Instant::now();
        let mut aimd = Aimd::new(start, AUTO_MAX);
        let mut rates = Vec::new();
        let mut throttles = 0;
        for tenth in 0..secs * 10 {
            let now = start + Duration::from_millis(tenth * 100);
            if aimd.rate() > limit {
                throttles += u32::from(aimd.on_throttle(now, Duration::from_secs(1)));
            } else {
                aimd.on_success(now);
            }
            rates.push(aimd.rate());
        }
        (aimd, rates, throttles)
    }

    #[test]
    fn slow_start_doubles_until_refused_then_halves() {
        let start = Instant::now();
        let mut aimd = Aimd::new(start, AUTO_MAX);
        assert_eq!(aimd.rate(), AUTO_START);
        assert!(
            !aimd.on_success(start + Duration::from_millis(100)),
            "once per step"
        );
        assert!(aimd.on_success(start + STEP));
        assert_eq!(aimd.rate(), 4.0);
        aimd.on_success(start + STEP * 2);
        aimd.on_success(start + STEP * 3);
        assert_eq!(aimd.rate(), 16.0);
        assert!(aimd.on_throttle(start + STEP * 3, Duration::from_secs(2)));
        assert_eq!((aimd.rate(), aimd.limit()), (8.0, Some(16.0)));
        // Answers still in flight are not held against the new rate, and
        // nothing steps up before Retry-After has passed.
        assert!(!aimd.on_throttle(start + STEP * 4, Duration::from_secs(2)));
        assert!(!aimd.on_success(start + STEP * 4));
        assert!(aimd.on_success(start + STEP * 3 + Duration::from_secs(2) + STEP));
        assert!(aimd.rate() > 8.0 && aimd.rate() < 16.0 * NEAR);
    }

    #[test]
    fn it_settles_under_the_limit_and_probes_slowly() {
        let (aimd, rates, throttles) = against(40.0, 120);
        let late = &rates[rates.len() / 2..];
        let mean = late.iter().sum::<f64>() / late.len() as f64;
        assert!(mean > 36.0 && mean <= 40.5, "mean {mean}");
        assert!(throttles < 30, "{throttles} throttles in two minutes");
        assert!(aimd.limit().is_some_and(|l| (38.0..44.0).contains(&l)));
        // A ceiling is a ceiling.
        let start = Instant::now();
        let mut capped = Aimd::new(start, 12.0);
        for s in 1..100 {
            capped.on_success(start + STEP * s);
        }
        assert_eq!(capped.rate(), 12.0);
    }

    #[test]
    fn calls_in_flight_follow_rate_and_latency() {
        assert_eq!(in_flight(50.0, Duration::from_millis(300), 32), 24);
        assert_eq!(in_flight(10.0, Duration::from_millis(20), 32), 2);
        assert_eq!(in_flight(1000.0, Duration::from_secs(1), 32), 32);
        assert_eq!(in_flight(1000.0, Duration::from_secs(1), 4), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn the_pacer_spaces_starts_evenly_without_a_burst() {
        let pacer = Pacer::new(50.0);
        let start = Instant::now();
        let mut starts = Vec::new();
        for _ in 0..101 {
            pacer.until_ready().await;
            starts.push(Instant::now().duration_since(start).as_secs_f64());
        }
        // Never more than 50 in any 1-second window.
        for (i, t) in starts.iter().enumerate() {
            let in_window = starts[i..].iter().take_while(|u| **u < t + 1.0).count();
            assert!(in_window <= 50, "{in_window} starts in the second from {t}");
        }
        let gap = starts[1] - starts[0];
        assert!((gap - 1.0 / (50.0 * HEADROOM)).abs() < 1e-3, "{gap}");
    }
}
