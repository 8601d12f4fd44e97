//! Pacing against servers that count requests three ways: `--rate N` keeps
//! at most N in any 1-second window (as the sandbox itself counts them),
//! `--rate auto` finds an undocumented limit and settles under it, and the
//! calls in flight follow rate × latency within `--concurrency`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on purpose

use std::time::Duration;

use thulium_import::sandbox::{LimiterKind, Sandbox, SandboxConfig};

const PASSWORD: &str = "pace-secret";

/// Customers and one field-group item each: about a call per row.
const MAPPING: &str = "[source]\ndelimiter=\";\"\nencoding=\"windows-1250\"\n[customer]\nsurname=\"Nazwisko\"\nidentifier=\"ID klienta\"\n[[field_group]]\ngroup_id=2\n[field_group.values]\n12=\"Kanał pozyskania\"\n";

async fn import(sandbox: &Sandbox, extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mapping = dir.path().join("m.toml");
    std::fs::write(&mapping, MAPPING).unwrap();
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("thulium-import"));
    cmd.args(["run", "samples/crm_export.csv", "--mapping"])
        .arg(&mapping)
        .arg("--ledger")
        .arg(dir.path().join("l.jsonl"))
        .args([
            "--url",
            &sandbox.url(),
            "--user",
            "api_user",
            "--no-progress",
        ])
        .args(extra)
        .env("THULIUM_PASSWORD", PASSWORD)
        .env_remove("THULIUM_URL")
        .env_remove("THULIUM_USER");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    text
}

fn limited(n: u32, limiter: LimiterKind, latency_ms: u64) -> SandboxConfig {
    SandboxConfig {
        password: PASSWORD.into(),
        rate_limit: Some(n),
        limiter,
        latency: Duration::from_millis(latency_ms),
        retry_after_secs: 1,
        ..SandboxConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fixed_rate_never_exceeds_its_number_in_any_second_however_the_server_counts() {
    for limiter in [
        LimiterKind::Sliding,
        LimiterKind::Fixed,
        LimiterKind::Bucket,
    ] {
        let sandbox = Sandbox::start(limited(40, limiter, 5)).await.unwrap();
        import(&sandbox, &["--rate", "40"]).await;
        let stats = sandbox.stats();
        assert!(stats.requests_total > 250, "{stats:?}");
        assert!(
            stats.max_in_any_second <= 40,
            "{limiter:?}: {} requests in one second",
            stats.max_in_any_second
        );
        assert_eq!(stats.responses_429, 0, "{limiter:?}: {stats:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_auto_finds_an_undocumented_limit_and_settles_under_it() {
    let sandbox = Sandbox::start(limited(25, LimiterKind::Sliding, 5))
        .await
        .unwrap();
    let text = import(&sandbox, &["--rate", "auto"]).await;
    let stats = sandbox.stats();
    let line = text
        .lines()
        .find(|l| l.starts_with("rate: auto, settled at"))
        .unwrap_or_else(|| panic!("{text}"));
    let numbers: Vec<f64> = line
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|w| w.parse().ok())
        .collect();
    let (settled, refused) = (numbers[0], numbers[1]);
    // It found the limit, and runs just under it (or probes just above).
    assert!((20.0..=30.0).contains(&refused), "{line}");
    assert!(settled >= 18.0 && settled <= refused * 1.1, "{line}");
    // Refusals are few.
    let share = stats.responses_429 as f64 / stats.requests_total as f64;
    assert!(
        share < 0.05,
        "{} of {} answered 429",
        stats.responses_429,
        stats.requests_total
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_in_flight_follow_the_latency_within_concurrency() {
    // 300 ms a call at 20 requests/s needs about 6 calls in flight.
    let config = SandboxConfig {
        password: PASSWORD.into(),
        latency: Duration::from_millis(300),
        ..SandboxConfig::default()
    };
    let sandbox = Sandbox::start(config.clone()).await.unwrap();
    import(&sandbox, &["--rate", "20"]).await;
    let adaptive = sandbox.stats().max_concurrent;
    assert!(adaptive >= 6, "{adaptive} calls in flight at most");
    // --concurrency stays a hard upper bound.
    let sandbox = Sandbox::start(SandboxConfig {
        latency: Duration::from_millis(50),
        ..config
    })
    .await
    .unwrap();
    import(&sandbox, &["--rate", "20", "--concurrency", "2"]).await;
    assert!(sandbox.stats().max_concurrent <= 2, "{:?}", sandbox.stats());
}
