//! Transforms in any language, run by the host end to end: the shipped
//! crm-to-shop mapping written in Rust, JavaScript and Python gives the
//! same requests and the same dead letters through RabbitMQ to an HTTP
//! server; a JavaScript or Python exception reaches the dead letter's
//! reason and the next message is served; a guest that reaches for the
//! machine (file, environment, socket, clock) finds nothing.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use support::one_route::OneRoute;
use support::{CRM_ACCOUNT, HttpServer, eventually};

/// The seed example and its reject cases, by message id.
const CASES: [(&str, &str); 4] = [
    ("seed", CRM_ACCOUNT),
    (
        "unknown-status",
        r#"{"Id": "gg-12", "Name": "Twelve", "Status__c": "CLIENT_GONE", "Country__c": "FR"}"#,
    ),
    (
        "missing-name",
        r#"{"Id": "gg-13", "Status__c": "CLIENT_ACTIVE", "Country__c": "FR"}"#,
    ),
    ("not-json", "{oops"),
];

/// One route running `component` against its own queue, exchange and HTTP
/// server, with the `fixture` endpoint the test guests call and the shop.
struct Route(OneRoute);

impl std::ops::Deref for Route {
    type Target = OneRoute;
    fn deref(&self) -> &OneRoute {
        &self.0
    }
}

fn endpoints(server: &HttpServer) -> String {
    format!(
        r#"{shop}
  fixture:
    base_url: {fixture}
    operations:
      echo: {{ method: POST, uri: echo, parameters: {{ boom: {{ location: json }}, n: {{ location: json }} }} }}
      report:
        method: POST
        uri: report
        parameters:
          file: {{ location: json }}
          env: {{ location: json }}
          socket: {{ location: json }}
          clock: {{ location: json }}
          random: {{ location: json }}
"#,
        shop = support::shop_endpoint(server, ""),
        fixture = server.url("fixture/"),
    )
}

const ROUTE: &str = r#"    endpoints: [shop, fixture]
    concurrency: 4
    retry: { immediate: 0, backoff: 10ms, delays: [] }
"#;

impl Route {
    async fn start(component: &Path) -> Self {
        // A JavaScript or Python component takes seconds to compile the
        // first time (then it comes from the compile cache).
        Self(OneRoute::start("guest", component, endpoints, ROUTE, Duration::from_secs(180)).await)
    }

    async fn publish(&self, id: &str, body: &str) {
        self.0.publish(id, body.as_bytes()).await;
    }

    /// Every dead letter once `count` are there: message id -> reason.
    async fn dead_letters(&self, count: u32) -> Vec<(String, String)> {
        let dead = self.dead_letter_queue();
        eventually(
            &format!("{count} dead letter(s)"),
            Duration::from_secs(60),
            async || (self.broker.depth(&dead).await >= count).then_some(()),
        )
        .await;
        let mut letters: Vec<_> = self
            .broker
            .drain(&dead)
            .await
            .into_iter()
            .map(|l| {
                (
                    l.message_id.unwrap_or_default(),
                    l.headers["x-passerelle-reason"].clone(),
                )
            })
            .collect();
        letters.sort();
        letters
    }
}

/// What one language's crm-to-shop does with the cases: the requests the
/// shop got (method, path, body) and the dead letters' reasons.
async fn crm_to_shop(name: &str) -> (Vec<(String, String, Value)>, Vec<(String, String)>) {
    let route = Route::start(&support::transform(name)).await;
    for (id, body) in CASES {
        route.publish(id, body).await;
    }
    let calls = route.server.wait_for_calls(1, Duration::from_secs(60)).await;
    let dead = route.dead_letters(3).await;
    let calls = calls
        .iter()
        .map(|c| (c.method.clone(), c.uri.clone(), support::json(&c.body)))
        .collect();
    let dead = dead.into_iter().map(|(id, reason)| (id, comparable(&reason))).collect();
    (calls, dead)
}

/// A reason as the SDKs word it alike: after "body is not JSON" comes the
/// JSON parser's own account (serde_json's, the JavaScript engine's,
/// Python's), which differs by language.
fn comparable(reason: &str) -> String {
    const NOT_JSON: &str = "body is not JSON";
    match reason.find(NOT_JSON) {
        Some(at) => reason[..at + NOT_JSON.len()].to_string(),
        None => reason.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_three_crm_to_shop_guests_give_the_same_requests_and_dead_letters() {
    let rust = crm_to_shop("crm-to-shop").await;
    assert_eq!(
        rust.0,
        vec![(
            "PUT".to_string(),
            "/api/businesses/gg-11".to_string(),
            json!({"business": {"name": "Eleven Labs"}, "status": 70, "country": {"id": 76}})
        )]
    );
    let reasons: Vec<_> = rust.1.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(reasons, ["missing-name", "not-json", "unknown-status"]);
    assert!(rust.1[0].1.contains("missing field `Name`"), "{:?}", rust.1);
    assert!(
        rust.1[2].1.contains(r#"unknown Status__c "CLIENT_GONE""#),
        "{:?}",
        rust.1
    );
    for name in ["crm-to-shop-js", "crm-to-shop-py"] {
        assert_eq!(crm_to_shop(name).await, rust, "{name} differs from the Rust guest");
    }
}

async fn an_exception_is_dead_lettered_with_its_message(guest: &str, exception: &str) {
    let route = Route::start(&support::fixture(guest)).await;
    route.publish("boom", r#"{"boom": true}"#).await;
    let dead = route.dead_letters(1).await;
    let reason = &dead[0].1;
    assert!(
        reason.contains("the transform failed: crashed") && reason.contains(exception),
        "{guest}: {reason}\n{}",
        route.host.log()
    );
    route.publish("next", r#"{"boom": false, "n": 2}"#).await;
    let calls = route.server.wait_for_calls(1, Duration::from_secs(30)).await;
    assert_eq!(calls[0].uri, "/fixture/echo");
    assert_eq!(support::json(&calls[0].body), json!({"boom": false, "n": 2}));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_javascript_exception_reaches_the_dead_letter_and_the_next_message_is_served() {
    an_exception_is_dead_lettered_with_its_message("throwing-js", "RangeError: fixture exception: boom").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_python_traceback_reaches_the_dead_letter_and_the_next_message_is_served() {
    an_exception_is_dead_lettered_with_its_message("throwing-py", "ValueError: fixture exception: boom").await;
}

/// What a sandbox guest found when it reached for the machine.
async fn probes(guest: &str) -> serde_json::Map<String, Value> {
    let route = Route::start(&support::fixture(guest)).await;
    route.publish("probe", "{}").await;
    let calls = route.server.wait_for_calls(1, Duration::from_secs(30)).await;
    assert_eq!(calls[0].uri, "/fixture/report", "{}", route.host.log());
    support::json(&calls[0].body).as_object().cloned().unwrap()
}

fn assert_refused(guest: &str, probes: &serde_json::Map<String, Value>, name: &str) {
    let value = &probes[name];
    assert!(
        value.is_null() || value.as_str().is_some_and(|text| text.starts_with("error")),
        "{guest}: {name} gave {value}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_reaching_for_files_environment_sockets_or_the_clock_finds_nothing() {
    for guest in ["sandbox-js", "sandbox-py"] {
        let found = probes(guest).await;
        for name in ["file", "env", "socket"] {
            assert_refused(guest, &found, name);
        }
        // No clock, or one stopped at the Unix epoch.
        let clock = &found["clock"];
        assert!(
            clock.as_str().is_some_and(|t| t.starts_with("error")) || clock.as_f64() == Some(0.0),
            "{guest}: clock gave {clock}"
        );
    }
}
