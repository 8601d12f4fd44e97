//! HTTP hygiene against a misbehaving server on 127.0.0.1: a redirect is
//! never followed for a call that is not a GET (it stops the run, naming
//! the `Location`), a GET is never redirected to another host, and an
//! answer larger than the cap is not read.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on purpose

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Router;

const PASSWORD: &str = "hygiene-secret";

/// Serves `router` on a free loopback port; returns its URL.
async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    format!("http://{addr}")
}

async fn run(url: &str, dir: &std::path::Path) -> (Option<i32>, String, serde_json::Value) {
    run_with(url, dir, "mappings/crm_export.toml", &[]).await
}

async fn run_with(
    url: &str,
    dir: &std::path::Path,
    mapping: &str,
    extra: &[&str],
) -> (Option<i32>, String, serde_json::Value) {
    let ledger = dir.join("l.jsonl");
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("thulium-import"));
    cmd.args([
        "run",
        "samples/crm_export.csv",
        "--mapping",
        mapping,
        "--url",
        url,
        "--user",
        "api_user",
        "--no-progress",
        "--rate",
        "1000",
        "--concurrency",
        "1",
        // The stand-in answers only the call under test.
        "--no-preflight",
        "--ledger",
    ])
    .arg(&ledger)
    .args(extra)
    .env("THULIUM_PASSWORD", PASSWORD)
    .env_remove("THULIUM_URL")
    .env_remove("THULIUM_USER");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let report = std::process::Command::new(assert_cmd::cargo::cargo_bin("thulium-import"))
        .arg("report")
        .arg(&ledger)
        .arg("--json")
        .output()
        .unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        // No ledger when the run stopped before beginning one.
        serde_json::from_slice(&report.stdout).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redirected_post_is_not_followed_and_stops_the_run() {
    let posts = Arc::new(AtomicU64::new(0));
    let followed = Arc::new(AtomicU64::new(0));
    let (p, f) = (posts.clone(), followed.clone());
    let router = Router::new()
        // The first contact before the ledger is begun (nothing else is
        // asked with this mapping and --no-preflight).
        .route(
            "/api/customers",
            axum::routing::get(|| async {
                axum::Json(serde_json::json!({"count": 0, "result": []}))
            }),
        )
        .route(
            "/api/batch/customers",
            axum::routing::post(move || {
                p.fetch_add(1, Ordering::SeqCst);
                async {
                    (
                        StatusCode::FOUND,
                        [(header::LOCATION, "/elsewhere/batch/customers")],
                    )
                        .into_response()
                }
            }),
        )
        .fallback(move || {
            f.fetch_add(1, Ordering::SeqCst);
            async { StatusCode::OK }
        });
    let url = serve(router).await;
    let dir = tempfile::tempdir().unwrap();
    let (code, text, report) = run(&url, dir.path()).await;
    assert_eq!(code, Some(3), "{text}");
    assert!(text.contains("/elsewhere/batch/customers"), "{text}");
    assert_eq!(
        posts.load(Ordering::SeqCst),
        1,
        "one call, then the run stopped"
    );
    assert_eq!(
        followed.load(Ordering::SeqCst),
        0,
        "the redirect was not followed"
    );
    // Nothing was applied anywhere: the rows are failed, not unknown, and
    // may be sent again.
    assert_eq!(report["stages"]["customer"]["unknown"], 0, "{report}");
    assert!(
        report["aborted"].as_str().unwrap().contains("redirect"),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_larger_than_the_cap_is_not_read_and_its_rows_are_unknown() {
    let router = Router::new().route(
        "/api/batch/customers",
        axum::routing::post(|| async {
            // 17 MiB of JSON-looking text, without a length up front.
            let stream = futures::stream::iter(
                (0..17).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1024 * 1024])),
            );
            axum::body::Body::from_stream(stream).into_response()
        }),
    );
    let url = serve(router).await;
    let dir = tempfile::tempdir().unwrap();
    let (code, text, report) = run(&url, dir.path()).await;
    assert!(matches!(code, Some(1 | 3)), "{text}");
    let lines = std::fs::read_to_string(dir.path().join("l.jsonl")).unwrap();
    let unknown = lines
        .lines()
        .find(|l| l.contains("\"stage\":\"customer\"") && l.contains("\"status\":\"unknown\""))
        .unwrap_or_else(|| panic!("{report}"));
    assert!(unknown.contains("larger than 16 MiB"), "{unknown}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_get_is_never_redirected_to_another_host() {
    // The other host: `localhost` is not `127.0.0.1` to a URL.
    let elsewhere = Arc::new(AtomicU64::new(0));
    let e = elsewhere.clone();
    let other = serve(Router::new().fallback(move || {
        e.fetch_add(1, Ordering::SeqCst);
        async { axum::Json(serde_json::json!({"count": 0, "result": []})) }
    }))
    .await
    .replace("127.0.0.1", "localhost");
    let posts = Arc::new(AtomicU64::new(0));
    let p = posts.clone();
    let target = format!("{other}/api/customers");
    let router = Router::new()
        .route(
            "/api/customers",
            axum::routing::get(move || {
                let target = target.clone();
                async move { (StatusCode::FOUND, [(header::LOCATION, target)]).into_response() }
            }),
        )
        .fallback(move || {
            p.fetch_add(1, Ordering::SeqCst);
            async { StatusCode::OK }
        });
    let url = serve(router).await;
    let dir = tempfile::tempdir().unwrap();
    // Per-row lookups: a GET with the row's identifier in its query.
    let mapping = dir.path().join("m.toml");
    let text = std::fs::read_to_string("mappings/crm_export.toml")
        .unwrap()
        .replace(
            "[customer]                      # POST /api/batch/customers\n",
            "[customer]\nmatch = \"identifier\"\n",
        );
    assert!(text.contains("match = \"identifier\""));
    std::fs::write(&mapping, text).unwrap();
    let (code, text, _) = run_with(
        &url,
        dir.path(),
        mapping.to_str().unwrap(),
        &["--index", "never"],
    )
    .await;
    assert_eq!(
        elsewhere.load(Ordering::SeqCst),
        0,
        "a GET went to another host: {text}"
    );
    assert!(
        text.contains("redirected the call to http://localhost:")
            || text.contains("redirected to http://localhost:"),
        "the redirect is named: {text}"
    );
    assert_ne!(code, Some(0), "{text}");
    // No row was created on the strength of a lookup that did not happen.
    assert_eq!(posts.load(Ordering::SeqCst), 0, "{text}");
}
