//! The ops page end to end: a real host with its admin server, the real
//! broker and HTTP server, and the page in a real headless Chromium. An
//! operator enters the token, sees the route and its version, replays a
//! dead letter from the page and sees it delivered, then uploads a new
//! version of the transform and sees it take over.

mod support;

use std::time::Duration;

use support::browser::{Browser, TempFile};
use support::{ADMIN_TOKEN, Deployment, Reply, eventually, new_version};

/// Quick in-process retries keep the test short.
const QUICK_RETRY: &str = "    retry: { immediate: 1, backoff: 10ms }";
const WAIT: Duration = Duration::from_secs(30);

fn version_of(bytes: &[u8]) -> String {
    passerelle::version::Version::of(bytes).to_string()
}

fn number(text: &str) -> u64 {
    text.trim().parse().unwrap_or_else(|_| panic!("not a count: {text:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_replays_a_dead_letter_and_uploads_a_version_from_the_page() {
    let setup = Deployment::new().await;
    let config = setup.config_with_admin(QUICK_RETRY, "");
    let v1 = version_of(&std::fs::read(setup.config_dir.dir.path().join("crm-to-shop.wasm")).unwrap());
    let host = setup.start_host(&config).await;
    let admin = format!("{}/", host.admin_url().await);
    let http = reqwest::Client::new();
    eventually("the admin server", WAIT, async || {
        let response = http.get(format!("{admin}healthz")).send().await.ok()?;
        response.status().is_success().then_some(())
    })
    .await;

    // One account dead-lettered: the shop answers 400 once (not retried).
    setup
        .server
        .reply_next(Reply::status(400).with_body(r#"{"error": "country 76 is closed"}"#));
    setup.publish_accounts(0..1).await;
    let dead_queue = format!("{}.dead", setup.crm_queue);
    let broker = &setup.broker;
    eventually("a dead letter", WAIT, async || {
        (broker.depth(&dead_queue).await >= 1).then_some(())
    })
    .await;
    assert_eq!(setup.server.calls().len(), 1);

    // The page, with the token typed in.
    let browser = Browser::start().await;
    browser.goto(&admin).await;
    browser.type_into("token", ADMIN_TOKEN).await;
    let version = browser.wait_for("route-version-crm-to-shop", WAIT).await;
    assert_eq!(version, v1, "the page shows the running version");
    assert_eq!(browser.text("route-queue-crm-to-shop").await, setup.crm_queue);
    browser
        .wait_until("route-dead-lettered-crm-to-shop", WAIT, |t| t == "1")
        .await;
    let delivered_before = number(&browser.text("route-delivered-crm-to-shop").await);
    assert_eq!(delivered_before, 0, "the only message was dead-lettered");
    assert_eq!(browser.text("breaker-crm-to-shop-shop").await, "shop: closed");
    assert_eq!(browser.text("broker-status").await, "broker connected");

    // Its dead letter, replayed from the page.
    browser.click("dlq-open-crm-to-shop").await;
    let row = browser.wait_for("dlq-row-msg-0", WAIT).await;
    assert!(row.contains("400"), "the HTTP status is shown: {row}");
    assert!(row.contains(&v1), "the version is shown: {row}");
    assert!(row.contains("country 76 is closed"), "the reason is shown: {row}");
    browser.click("replay-msg-0").await;
    let status = browser
        .wait_until("dlq-status", WAIT, |t| {
            t.contains("Replayed") || t.contains("Nothing") || t.contains("failed")
        })
        .await;
    assert!(status.contains("Replayed 1 message"), "{status}");
    browser.wait_for("dlq-empty", WAIT).await;
    assert!(!browser.is_present("dlq-row-msg-0").await);

    let calls = setup.server.wait_for_calls(2, WAIT).await;
    assert_eq!(calls[1].method, "PUT");
    assert!(calls[1].uri.ends_with("/businesses/gg-0"), "{}", calls[1].uri);
    assert_eq!(calls[1].header("idempotency-key"), Some("crm-to-shop:msg-0:0"));
    let delivered = browser
        .wait_until("route-delivered-crm-to-shop", WAIT, |t| {
            t.trim().parse::<u64>().is_ok_and(|n| n > delivered_before)
        })
        .await;
    assert_eq!(number(&delivered), 1);
    setup.wait_until_queue_is_empty(&dead_queue).await;

    // A new version, uploaded from the page (this host only).
    let v2_bytes = new_version();
    let v2 = version_of(&v2_bytes);
    let component = TempFile::new("crm-to-shop-v2.wasm", &v2_bytes);
    browser.select("upload-route", "crm-to-shop").await;
    browser.upload_file("upload-component", &component.path).await;
    browser.click("upload-submit").await;
    let result = browser
        .wait_until("upload-result", Duration::from_secs(60), |t| !t.starts_with("Checking"))
        .await;
    assert!(result.contains(&v2), "{result}");
    assert!(result.contains(&format!("was {v1}")), "{result}");
    assert_eq!(
        browser.attribute("upload-result", "data-state").await.as_deref(),
        Some("ok")
    );
    browser.wait_until("route-version-crm-to-shop", WAIT, |t| t == v2).await;
    assert_eq!(browser.text("route-source-crm-to-shop").await, "upload");

    // And it serves the next message.
    setup.publish_accounts(1..2).await;
    let calls = setup.server.wait_for_calls(3, WAIT).await;
    assert_eq!(calls[2].header("x-passerelle-transform-version"), Some(v2.as_str()));

    browser.close().await;
    drop(host);
}
