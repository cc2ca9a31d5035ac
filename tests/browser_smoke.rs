//! The admin page in a real headless Chromium, against a stand-in for the
//! admin API served here: the token (typed, remembered in the tab, taken
//! from the URL fragment, sent as the bearer token), the message on 401,
//! values shown as text and never as HTML, and the requests behind the
//! dead-letter and upload controls. No broker, no host: tests/admin_page.rs
//! does the same against the real thing.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use serde_json::{Value, json};
use support::browser::{Browser, TempFile};

const PAGE: &str = include_str!("../host/src/admin/page.html");
const TOKEN: &str = "good-token";
const WAIT: Duration = Duration::from_secs(15);
/// A hostile name: must show as text, never become an element.
const HOSTILE: &str = "<img src=x onerror=\"document.title='pwned'\">";

/// One API request as the stand-in received it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    uri: String,
    authorization: Option<String>,
    content_type: Option<String>,
    body: Vec<u8>,
}

struct Api {
    seen: Vec<Seen>,
    version: String,
    delivered: u64,
    dead_letters: Vec<Value>,
}

#[derive(Clone)]
struct FakeAdmin {
    port: u16,
    state: Arc<Mutex<Api>>,
}

impl FakeAdmin {
    async fn start() -> Self {
        let state = Arc::new(Mutex::new(Api {
            seen: Vec::new(),
            version: "3f2a9c1b0d4e".into(),
            delivered: 8,
            dead_letters: vec![
                json!({"message_id": "m-1", "reason": "HTTP 400: {\"error\": \"country 76 is closed\"}",
                       "attempts": "1", "version": "3f2a9c1b0d4e", "http_status": "400", "age_seconds": 12}),
                json!({"message_id": "m-2", "reason": HOSTILE, "attempts": "3", "version": "3f2a9c1b0d4e",
                       "http_status": null, "age_seconds": null}),
            ],
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = axum::Router::new().fallback(answer).with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { port, state }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }
}

async fn answer(
    axum::extract::State(state): axum::extract::State<Arc<Mutex<Api>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    if method == Method::GET && uri.path() == "/" {
        return Html(PAGE).into_response();
    }
    let mut api = state.lock().unwrap();
    api.seen.push(Seen {
        method: method.to_string(),
        uri: uri.to_string(),
        authorization: header("authorization"),
        content_type: header("content-type"),
        body: body.to_vec(),
    });
    if header("authorization").as_deref() != Some(&format!("Bearer {TOKEN}")) {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "missing or wrong bearer token"})),
        )
            .into_response();
    }
    let ok = |value: Value| axum::Json(value).into_response();
    match (method.as_str(), uri.path()) {
        ("GET", "/status") => {
            api.delivered += 1;
            ok(json!({"broker_connected": true, "routes": [
                {"route": "crm-to-shop", "queue": "crm.account.changed", "version": api.version,
                 "loaded_at": "2026-11-28T22:00:00Z", "source": "file", "received": api.delivered + 2,
                 "delivered": api.delivered, "retried": 1, "dead_lettered": 1,
                 "endpoints": [{"name": "shop", "breaker": "closed"}]},
                {"route": HOSTILE, "queue": "odd.queue", "version": "9c0e11aa77b2",
                 "loaded_at": "2026-11-28T21:55:12Z", "source": "cache", "received": 0, "delivered": 0,
                 "retried": 0, "dead_lettered": 0, "endpoints": [{"name": "salesforce", "breaker": "open"}]}
            ]}))
        }
        ("GET", "/dlq/crm-to-shop") => ok(json!({"route": "crm-to-shop", "dead_letters": api.dead_letters})),
        ("POST", "/dlq/crm-to-shop/replay") => {
            let selection: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let before = api.dead_letters.len();
            if selection["all"] == true {
                api.dead_letters.clear();
            } else if let Some(ids) = selection["ids"].as_array() {
                api.dead_letters.retain(|l| !ids.contains(&l["message_id"]));
            }
            ok(json!({"replayed": before - api.dead_letters.len()}))
        }
        ("POST", "/transforms/crm-to-shop") => {
            if body.windows(b"BAD COMPONENT".len()).any(|w| w == b"BAD COMPONENT") {
                return (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    axum::Json(json!({"error": "not a WebAssembly file"})),
                )
                    .into_response();
            }
            let previous = std::mem::replace(&mut api.version, "0123456789ab".into());
            ok(json!({"route": "crm-to-shop", "version": api.version, "previous": previous}))
        }
        _ => (StatusCode::NOT_FOUND, axum::Json(json!({"error": "no such thing"}))).into_response(),
    }
}

async fn token_field(browser: &Browser) -> String {
    let value = browser
        .execute("return document.querySelector('[data-testid=\"token\"]').value", vec![])
        .await;
    value.as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_is_sent_remembered_and_a_401_is_explained() {
    let api = FakeAdmin::start().await;
    let browser = Browser::start().await;
    browser.goto(&api.url("")).await;

    let message = browser.wait_for("auth-error", WAIT).await;
    assert!(message.contains("Enter the admin token"), "{message}");

    browser.type_into("token", "not-the-token").await;
    let message = browser
        .wait_until("auth-error", WAIT, |text| text.contains("refused"))
        .await;
    assert!(message.contains("401"), "{message}");
    assert!(
        message.contains("missing or wrong bearer token"),
        "the API's reason is shown: {message}"
    );
    assert!(
        !browser.is_present("route-row-crm-to-shop").await,
        "no data without a token"
    );

    browser.type_into("token", TOKEN).await;
    let version = browser.wait_for("route-version-crm-to-shop", WAIT).await;
    assert_eq!(version, "3f2a9c1b0d4e");
    assert_eq!(browser.text("route-queue-crm-to-shop").await, "crm.account.changed");
    assert_eq!(browser.text("breaker-crm-to-shop-shop").await, "shop: closed");
    assert_eq!(
        browser
            .attribute("breaker-crm-to-shop-shop", "data-state")
            .await
            .as_deref(),
        Some("closed")
    );
    assert_eq!(browser.text("broker-status").await, "broker connected");
    assert!(browser.text("auth-error").await.is_empty(), "the 401 message is gone");
    // Rates appear from the second poll on.
    let rate = browser
        .wait_until("route-delivered-rate-crm-to-shop", WAIT, |t| t.ends_with("/s"))
        .await;
    assert!(rate.ends_with("/s"), "{rate}");
    let seen = api.seen();
    let last = seen.last().unwrap();
    assert_eq!(last.authorization.as_deref(), Some("Bearer good-token"));

    // Values are text, never markup.
    let hostile_name = browser.wait_for(&format!("route-name-{HOSTILE}"), WAIT).await;
    assert_eq!(hostile_name, HOSTILE);
    let images = browser
        .execute(
            "return document.querySelectorAll('img').length + ' ' + document.title",
            vec![],
        )
        .await;
    assert_eq!(images, json!("0 Passerelle"));

    // Remembered in the tab: a reload keeps the token.
    browser.goto(&api.url("")).await;
    browser.wait_for("route-version-crm-to-shop", WAIT).await;
    assert_eq!(token_field(&browser).await, TOKEN);

    // Taken from the URL fragment, which is then cleared from the address bar.
    browser.goto(&api.url("#token=from-the-link")).await;
    browser
        .wait_until("auth-error", WAIT, |text| text.contains("refused"))
        .await;
    assert_eq!(token_field(&browser).await, "from-the-link");
    let url = browser.execute("return location.href", vec![]).await;
    assert_eq!(url, json!(api.url("")), "the token left the address bar");
    let stored = browser
        .execute("return sessionStorage.getItem('passerelle.admin.token')", vec![])
        .await;
    assert_eq!(stored, json!("from-the-link"));

    browser.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_and_uploads_call_the_api_as_documented() {
    let api = FakeAdmin::start().await;
    let browser = Browser::start().await;
    browser.goto(&api.url(&format!("#token={TOKEN}"))).await;
    browser.wait_for("route-row-crm-to-shop", WAIT).await;

    // Dead letters: listed as text, one replayed, then all.
    browser.click("dlq-open-crm-to-shop").await;
    let row = browser.wait_for("dlq-row-m-1", WAIT).await;
    assert!(row.contains("country 76 is closed") && row.contains("400"), "{row}");
    assert!(browser.text("dlq-row-m-2").await.contains(HOSTILE));
    assert_eq!(browser.text("dlq-count").await, "2 dead letters");
    browser.click("replay-m-1").await;
    browser
        .wait_until("dlq-count", WAIT, |text| text == "1 dead letter")
        .await;
    assert!(!browser.is_present("dlq-row-m-1").await);
    let status = browser.text("dlq-status").await;
    assert!(status.contains("Replayed 1 message"), "{status}");
    browser.click("replay-all").await;
    browser.wait_for("dlq-empty", WAIT).await;
    let replays: Vec<Value> = api
        .seen()
        .iter()
        .filter(|s| s.method == "POST" && s.uri == "/dlq/crm-to-shop/replay")
        .map(|s| {
            assert_eq!(s.content_type.as_deref(), Some("application/json"));
            serde_json::from_slice(&s.body).unwrap()
        })
        .collect();
    assert_eq!(replays, vec![json!({"ids": ["m-1"]}), json!({"all": true})]);

    // Upload refused: the reason from the 422 body.
    let bad = TempFile::new("bad.wasm", b"BAD COMPONENT");
    browser.select("upload-route", "crm-to-shop").await;
    browser.upload_file("upload-component", &bad.path).await;
    browser.click("upload-submit").await;
    let result = browser
        .wait_until("upload-result", WAIT, |text| !text.starts_with("Checking"))
        .await;
    assert!(result.contains("not a WebAssembly file"), "{result}");
    assert_eq!(
        browser.attribute("upload-result", "data-state").await.as_deref(),
        Some("refused")
    );

    // Upload accepted, with fixtures, to the fleet: the new version shows.
    let good = TempFile::new("good.wasm", b"\0asm good component");
    let fixtures = TempFile::new("good.fixtures.json", b"[]");
    browser.upload_file("upload-component", &good.path).await;
    browser.upload_file("upload-fixtures", &fixtures.path).await;
    browser.click("upload-fleet").await;
    browser.click("upload-submit").await;
    let result = browser
        .wait_until("upload-result", WAIT, |text| text.contains("0123456789ab"))
        .await;
    assert!(result.contains("was 3f2a9c1b0d4e"), "{result}");
    browser
        .wait_until("route-version-crm-to-shop", WAIT, |text| text == "0123456789ab")
        .await;
    let uploads: Vec<Seen> = api
        .seen()
        .into_iter()
        .filter(|s| s.method == "POST" && s.uri.starts_with("/transforms/"))
        .collect();
    assert_eq!(uploads.len(), 2);
    assert_eq!(uploads[0].uri, "/transforms/crm-to-shop");
    assert_eq!(uploads[1].uri, "/transforms/crm-to-shop?fleet=true");
    let body = String::from_utf8_lossy(&uploads[1].body);
    assert!(
        uploads[1]
            .content_type
            .as_deref()
            .unwrap()
            .starts_with("multipart/form-data"),
        "{:?}",
        uploads[1].content_type
    );
    assert!(body.contains("name=\"component\"; filename=\"good.wasm\""), "{body}");
    assert!(body.contains("good component"), "{body}");
    assert!(
        body.contains("name=\"fixtures\"; filename=\"good.fixtures.json\""),
        "{body}"
    );

    browser.close().await;
}
