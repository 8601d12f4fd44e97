//! Pacing: how fast requests leave, and how many are in flight.
//!
//! - [`Pacer`]: requests start evenly spaced — never a burst — at 98 % of
//!   the rate in force, so that **any** 1-second window holds at most the
//!   rate's number of requests, however the server counts (a sliding
//!   window, fixed windows, a token bucket), with room for some jitter on
//!   the way. Every attempt passes it, retries included.
//! - [`Aimd`]: `--rate auto`: for a server whose limit nobody documented.
//!   It starts low and doubles while nothing is refused (slow start); a 429
//!   or 503 takes the rate the server let through in the second before it
//!   as the limit and cuts the rate under it (multiplicative decrease); then
//!   it climbs back quickly to just under that limit and probes above it
//!   slowly (additive increase), as TCP does. `Retry-After` is honoured by
//!   the client's shared pause.
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
    /// When the answers of the last second that went through came.
    passed: std::collections::VecDeque<Instant>,
    /// The last refusal, and the limit and phase before the run of
    /// refusals it belongs to began: an outage takes its cuts back.
    last_throttle: Option<Instant>,
    before_episode: (Option<f64>, bool),
    /// Answers stopped coming through (an outage, not a limit): once they
    /// come back the rate doubles each step back to the limit found.
    recovering: bool,
}

/// The rate `--rate auto` starts at.
pub const AUTO_START: f64 = 4.0;
/// The lowest rate it goes down to.
const AUTO_MIN: f64 = 0.5;
/// How often the rate steps up while nothing is refused: after a whole
/// second at a rate in slow start (a window's worth of evidence), twice a
/// second afterwards.
const STEP: Duration = Duration::from_millis(500);
const SLOW_START_STEP: Duration = Duration::from_secs(1);
/// The cut under the limit after a 429 or 503.
const DECREASE: f64 = 0.9;
/// How close under the known limit the rate climbs back quickly.
const NEAR: f64 = 0.98;
/// Refusals this far apart belong to one episode (a limit hit, an outage).
const EPISODE: Duration = Duration::from_secs(2);
/// The probe above it: this share more, plus [`PROBE_STEP`], per step.
const PROBE: f64 = 0.001;
const PROBE_STEP: f64 = 0.01;

impl Aimd {
    pub fn new(now: Instant, max: f64) -> Aimd {
        Aimd {
            rate: AUTO_START.min(max),
            max,
            slow_start: true,
            limit: None,
            last_step: now,
            quiet_until: now,
            passed: std::collections::VecDeque::new(),
            last_throttle: None,
            before_episode: (None, true),
            recovering: false,
        }
    }

    /// How many answers went through in the second before `now`.
    fn passed_last_second(&mut self, now: Instant) -> usize {
        while self
            .passed
            .front()
            .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(1))
        {
            self.passed.pop_front();
        }
        self.passed.len()
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
        self.passed.push_back(now);
        self.passed_last_second(now);
        let step = if self.slow_start {
            SLOW_START_STEP
        } else {
            STEP
        };
        if now < self.quiet_until || now.duration_since(self.last_step) < step {
            return false;
        }
        self.last_step = now;
        let before = self.rate;
        let near = self.limit.map_or(self.max, |l| l * NEAR);
        self.rate = if self.recovering && self.rate * 2.0 < near {
            self.rate * 2.0
        } else if self.recovering {
            self.recovering = false;
            near.max(self.rate)
        } else if self.slow_start {
            self.rate * 2.0
        } else {
            let near = self.limit.map_or(self.max, |l| l * NEAR);
            if self.rate < near {
                // Back quickly to just under the limit...
                (self.rate + (near - self.rate) / 2.0).max(self.rate + 0.1)
            } else {
                // ...then probe above it slowly.
                self.rate * (1.0 + PROBE) + PROBE_STEP
            }
        }
        .min(self.max);
        self.rate != before
    }

    /// A 429 or 503: take what went through in the last second as the
    /// limit (the rate in force if that is lower; half of it at least, for
    /// a second in which little was asked), cut the rate under it. `wait`
    /// is the pause the answer asked for (`Retry-After`).
    ///
    /// A refusal when almost nothing went through in the last second (a
    /// quarter of the rate) is an outage, not a limit: the rate is halved
    /// while it lasts, but the limit found before it is kept (this run of
    /// refusals' cuts taken back), and once answers come back the rate
    /// doubles each step back to just under it.
    pub fn on_throttle(&mut self, now: Instant, wait: Duration) -> bool {
        if now < self.quiet_until {
            return false;
        }
        if self
            .last_throttle
            .is_none_or(|t| now.duration_since(t) > EPISODE)
        {
            self.before_episode = (self.limit, self.slow_start);
        }
        self.last_throttle = Some(now);
        let passed = self.passed_last_second(now) as f64;
        if passed < (self.rate / 4.0).max(1.0) {
            (self.limit, self.slow_start) = self.before_episode;
            self.rate = (self.rate / 2.0).max(AUTO_MIN);
            self.recovering = true;
            self.quiet_until = now + wait.max(STEP);
            self.last_step = self.quiet_until;
            return true;
        }
        let mut limit = passed.clamp(self.rate / 2.0, self.rate);
        // Refused before it even got back near the last limit: that limit
        // was too high.
        if self.limit.is_some_and(|l| self.rate < l * NEAR) {
            limit = limit.min(self.rate * DECREASE);
        }
        self.limit = Some(limit);
        self.rate = (limit * DECREASE).max(AUTO_MIN);
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

    /// Runs the controller against a server that lets `limit` requests a
    /// second through, on a fake clock, for `secs`, a request at a time
    /// (each refusal pausing everyone for a second): the requests that went
    /// through and the refusals.
    fn against(limit: f64, secs: u64) -> (Aimd, u64, u64) {
        let start = Instant::now();
        let mut aimd = Aimd::new(start, AUTO_MAX);
        let (mut passed, mut refused) = (0u64, 0u64);
        let mut window: std::collections::VecDeque<Instant> = Default::default();
        let mut t = start;
        let end = start + Duration::from_secs(secs);
        while t < end {
            while window
                .front()
                .is_some_and(|w| t.duration_since(*w) >= Duration::from_secs(1))
            {
                window.pop_front();
            }
            if (window.len() as f64) < limit {
                window.push_back(t);
                passed += 1;
                aimd.on_success(t);
            } else {
                refused += 1;
                aimd.on_throttle(t, Duration::from_secs(1));
                t += Duration::from_secs(1);
            }
            t += Duration::from_secs_f64(1.0 / (aimd.rate() * HEADROOM));
        }
        (aimd, passed, refused)
    }

    #[test]
    fn slow_start_doubles_until_refused_then_settles_under_what_passed() {
        let start = Instant::now();
        let mut aimd = Aimd::new(start, AUTO_MAX);
        assert_eq!(aimd.rate(), AUTO_START);
        assert!(!aimd.on_success(start + STEP), "a whole second first");
        assert!(aimd.on_success(start + SLOW_START_STEP));
        assert_eq!(aimd.rate(), 8.0);
        aimd.on_success(start + SLOW_START_STEP * 2);
        assert_eq!(aimd.rate(), 16.0);
        // 13 more answers went through (14 in the last second): that is
        // the limit.
        for i in 1..=13 {
            aimd.on_success(start + SLOW_START_STEP * 2 + Duration::from_millis(40 * i));
        }
        let at = start + SLOW_START_STEP * 2 + Duration::from_millis(600);
        assert!(aimd.on_throttle(at, Duration::from_secs(2)));
        assert_eq!(aimd.limit(), Some(14.0));
        assert!((aimd.rate() - 14.0 * DECREASE).abs() < 1e-9);
        // Answers still in flight are not held against the new rate, and
        // nothing steps up before Retry-After has passed.
        assert!(!aimd.on_throttle(at + STEP, Duration::from_secs(2)));
        assert!(!aimd.on_success(at + STEP));
        assert!(aimd.on_success(at + Duration::from_secs(2) + STEP));
        assert!(aimd.rate() > 14.0 * DECREASE && aimd.rate() <= 14.0 * NEAR);
    }

    #[test]
    fn it_settles_under_the_limit_and_probes_slowly() {
        let (aimd, passed, refused) = against(40.0, 60);
        let utilisation = passed as f64 / 60.0 / 40.0;
        assert!(utilisation > 0.85, "{utilisation}");
        assert!((refused as f64) < passed as f64 * 0.03, "{refused} refused");
        assert!(
            aimd.limit().is_some_and(|l| (36.0..=44.0).contains(&l)),
            "{:?}",
            aimd.limit()
        );
        // A ceiling is a ceiling.
        let start = Instant::now();
        let mut capped = Aimd::new(start, 12.0);
        for s in 1..100 {
            capped.on_success(start + STEP * s);
        }
        assert_eq!(capped.rate(), 12.0);
    }

    /// A limit of 40/s, and from 30 s to 33 s an outage (every call 503,
    /// no `Retry-After`, each refusal backing off a quarter second): the
    /// rate in force 12 s after the outage, over 20 s, is back near the
    /// limit. An outage is not a lower limit.
    #[test]
    fn an_outage_is_not_a_lower_limit() {
        let start = Instant::now();
        let mut aimd = Aimd::new(start, AUTO_MAX);
        let mut window: std::collections::VecDeque<Instant> = Default::default();
        let secs = |s: f64| start + Duration::from_secs_f64(s);
        let (outage, back) = (secs(30.0), secs(33.0));
        let (from, to) = (secs(45.0), secs(65.0));
        let mut measured = 0u64;
        let mut t = start;
        while t < to {
            while window
                .front()
                .is_some_and(|w| t.duration_since(*w) >= Duration::from_secs(1))
            {
                window.pop_front();
            }
            if t >= outage && t < back {
                aimd.on_throttle(t, Duration::ZERO);
                t += Duration::from_millis(250);
            } else if (window.len() as f64) < 40.0 {
                window.push_back(t);
                aimd.on_success(t);
                if t >= from {
                    measured += 1;
                }
            } else {
                aimd.on_throttle(t, Duration::from_secs(1));
                t += Duration::from_secs(1);
            }
            t += Duration::from_secs_f64(1.0 / (aimd.rate() * HEADROOM));
        }
        let rate = measured as f64 / 20.0;
        assert!(rate >= 34.0, "{rate} requests/s after the outage");
        assert!(
            aimd.limit().is_some_and(|l| l >= 34.0),
            "{:?}",
            aimd.limit()
        );
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
