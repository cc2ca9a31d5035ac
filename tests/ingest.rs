//! Ingest, end to end: the real binary's ingest server taking webhooks and
//! Salesforce outbound messages over HTTP, publishing them to the real
//! broker, read back from a queue the test binds (or delivered by the
//! crm-to-shop route to the test's HTTP server). A sender is answered 202
//! (or the SOAP Ack) only for what is on the broker.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use hmac::{Hmac, Mac as _};
use reqwest::StatusCode;
use sha2::Sha256;
use support::{CRM_ACCOUNT, Deployment, Host, Taken, close_connection_named, eventually};

const INGEST_TOKEN: &str = "ingest-secret-token";
const INGEST_SECRET: &str = "ingest-hmac-secret";
const ORGANIZATION: &str = "00D000000000001AAA";
const EXAMPLE_ENVELOPE: &str = include_str!("../examples/events/salesforce-outbound-message.xml");

/// A deployment whose host runs an ingest server with three sources: `crm`
/// (bearer, routing key from the body's `Type`), `signed` (HMAC, 1 KiB) and
/// `salesforce` (outbound messages, token in the query). They publish to
/// `inbox`, an exchange of the test's own, whose queue no host consumes;
/// `salesforce-live` publishes to the crm-to-shop route's exchange.
struct Ingest {
    setup: Deployment,
    host: Host,
    url: String,
    queue: String,
}

impl Ingest {
    async fn start() -> Self {
        let setup = Deployment::new().await;
        let (inbox, queue) = (setup.broker.exchange("ingest.in"), setup.broker.queue("ingest.out"));
        setup.broker.bind_queue(&queue, &inbox, "account.#").await;
        let config = setup.config("", "");
        let yaml = std::fs::read_to_string(&config).unwrap();
        let ingest = format!(
            r#"
ingest:
  listen: 127.0.0.1:0
  sources:
    crm:
      exchange: {inbox}
      routing_key: "account.{{Type}}"
      auth: {{ bearer: {{ token_env: TEST_INGEST_TOKEN }} }}
    signed:
      exchange: {inbox}
      routing_key: account.signed
      max_body: 1KiB
      auth: {{ hmac_sha256: {{ secret_env: TEST_INGEST_SECRET, header: X-Signature }} }}
    salesforce:
      kind: salesforce_outbound_message
      exchange: {inbox}
      routing_key: account.updated
      organization_id: {ORGANIZATION}
      auth: {{ query_token: {{ token_env: TEST_INGEST_TOKEN }} }}
    salesforce-live:
      kind: salesforce_outbound_message
      exchange: {crm}
      routing_key: account.updated
      organization_id: {ORGANIZATION}
      auth: {{ query_token: {{ token_env: TEST_INGEST_TOKEN }} }}
"#,
            crm = setup.crm_exchange,
        );
        std::fs::write(&config, format!("{yaml}{ingest}")).unwrap();
        let env = [
            ("TEST_INGEST_TOKEN", INGEST_TOKEN),
            ("TEST_INGEST_SECRET", INGEST_SECRET),
        ];
        let host = setup.start_nth_host(&config, 1, &env).await;
        let url = host.ingest_url().await;
        Self {
            setup,
            host,
            url,
            queue,
        }
    }

    fn source(&self, name: &str) -> String {
        format!("{}/ingest/{name}", self.url)
    }

    /// A webhook to `crm`, with the bearer token and an idempotency key.
    async fn post_crm(&self, body: &str, idempotency_key: Option<&str>) -> reqwest::Response {
        let mut request = reqwest::Client::new()
            .post(self.source("crm"))
            .bearer_auth(INGEST_TOKEN)
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(key) = idempotency_key {
            request = request.header("idempotency-key", key);
        }
        request.send().await.unwrap()
    }

    async fn post_salesforce(&self, source: &str, envelope: &str) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!("{}?token={INGEST_TOKEN}", self.source(source)))
            .header("content-type", "text/xml; charset=utf-8")
            .header("soapaction", "\"\"")
            .body(envelope.to_string())
            .send()
            .await
            .unwrap()
    }

    async fn taken(&self) -> Vec<Taken> {
        self.setup.broker.drain(&self.queue).await
    }
}

fn sign(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(INGEST_SECRET.as_bytes()).unwrap();
    mac.update(body);
    let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// The account with another Id and a `Type` for the routing key.
fn account(id: &str) -> String {
    CRM_ACCOUNT
        .replace("gg-11", id)
        .replace("{", r#"{"Type": "Customer", "#)
}

/// An envelope of the shipped example's shape with one notification per id.
fn envelope(organization: &str, notifications: &[(&str, &str)]) -> String {
    let start = EXAMPLE_ENVELOPE.find("   <Notification>").unwrap();
    let end = EXAMPLE_ENVELOPE.find("  </notifications>").unwrap();
    let template = &EXAMPLE_ENVELOPE[start..end];
    let notifications: String = notifications
        .iter()
        .map(|(notification, account)| {
            template
                .replace("04l000000000001AAA", notification)
                .replace("001000000000001AAA", account)
        })
        .collect();
    let whole = format!(
        "{}{notifications}{}",
        &EXAMPLE_ENVELOPE[..start],
        &EXAMPLE_ENVELOPE[end..]
    );
    whole.replace(ORGANIZATION, organization)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_is_on_the_queue_with_its_id_and_source_when_202_is_answered() {
    let ingest = Ingest::start().await;
    let body = account("gg-1");

    let response = ingest.post_crm(&body, Some("crm-event-1")).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["message_id"], "crm-event-1");

    let taken = ingest.taken().await;
    assert_eq!(taken.len(), 1, "{taken:?}");
    assert_eq!(taken[0].message_id.as_deref(), Some("crm-event-1"));
    assert_eq!(taken[0].body, body.as_bytes());
    assert_eq!(
        taken[0].headers.get("x-passerelle-source").map(String::as_str),
        Some("crm")
    );

    // Without an idempotency key, the host gives a fresh id, and says which.
    let response = ingest.post_crm(&account("gg-2"), None).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let answer: serde_json::Value = response.json().await.unwrap();
    let given = answer["message_id"].as_str().unwrap().to_string();
    assert_eq!(given.len(), 36, "{given}");
    let taken = ingest.taken().await;
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].message_id.as_deref(), Some(given.as_str()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_or_bad_credential_is_401_a_large_body_413_and_nothing_is_published() {
    let ingest = Ingest::start().await;
    let client = reqwest::Client::new();
    let body = account("gg-3");

    let unauthenticated = client
        .post(ingest.source("crm"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), StatusCode::UNAUTHORIZED);
    let wrong_token = client
        .post(ingest.source("crm"))
        .bearer_auth("not-the-token")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_token.status(), StatusCode::UNAUTHORIZED);

    let signed = |signature: Option<String>, body: String| {
        let mut request = client.post(ingest.source("signed")).body(body);
        if let Some(signature) = signature {
            request = request.header("x-signature", signature);
        }
        request.send()
    };
    let bad_signature = signed(Some(sign(b"another body")), body.clone()).await.unwrap();
    assert_eq!(bad_signature.status(), StatusCode::UNAUTHORIZED);
    let no_signature = signed(None, body.clone()).await.unwrap();
    assert_eq!(no_signature.status(), StatusCode::UNAUTHORIZED);
    let large = format!(r#"{{"Id": "gg-4", "Note": "{}"}}"#, "x".repeat(2048));
    let too_large = signed(Some(sign(large.as_bytes())), large).await.unwrap();
    assert_eq!(too_large.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let unknown = client
        .post(ingest.source("nobody"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    // A body without the field its routing key needs: refused, named.
    let no_type = ingest.post_crm(&CRM_ACCOUNT.replace("gg-11", "gg-5"), None).await;
    assert_eq!(no_type.status(), StatusCode::BAD_REQUEST);
    assert!(no_type.text().await.unwrap().contains("\\\"Type\\\""));
    assert!(ingest.taken().await.is_empty(), "a refused request was published");

    let good = signed(Some(sign(body.as_bytes())), body.clone()).await.unwrap();
    assert_eq!(good.status(), StatusCode::ACCEPTED);
    let taken = ingest.taken().await;
    assert_eq!(taken.len(), 1);
    assert_eq!(
        taken[0].headers.get("x-passerelle-source").map(String::as_str),
        Some("signed")
    );
    assert!(!ingest.host.log().contains(INGEST_TOKEN) && !ingest.host.log().contains(INGEST_SECRET));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_closed_by_the_broker_is_503_with_retry_after_then_202_again() {
    let ingest = Ingest::start().await;
    close_connection_named(&format!("passerelle pid {} ingest", ingest.host.pid()));

    let refused = ingest.post_crm(&account("gg-6"), Some("refused-1")).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        refused.headers().get("retry-after").is_some(),
        "{:?}",
        refused.headers()
    );

    eventually("a 202 once the broker is back", Duration::from_secs(30), async || {
        let response = ingest.post_crm(&account("gg-7"), Some("accepted-1")).await;
        (response.status() == StatusCode::ACCEPTED).then_some(())
    })
    .await;
    let ids: Vec<Option<String>> = ingest.taken().await.into_iter().map(|t| t.message_id).collect();
    assert!(ids.contains(&Some("accepted-1".into())), "{ids:?}");
    assert!(
        !ids.contains(&Some("refused-1".into())),
        "a refused request reached the queue: {ids:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_posts_are_fifty_messages_none_lost_or_doubled() {
    let ingest = Ingest::start().await;
    let posts = (0..50).map(|n| {
        let ingest = &ingest;
        async move {
            let key = format!("concurrent-{n}");
            let status = ingest
                .post_crm(&account(&format!("gg-c{n}")), Some(&key))
                .await
                .status();
            (key, status)
        }
    });
    let answers = futures_util::future::join_all(posts).await;
    for (key, status) in &answers {
        assert_eq!(*status, StatusCode::ACCEPTED, "{key}");
    }
    // Every 202 was confirmed by the broker: the messages are there at once.
    let ids: Vec<String> = ingest.taken().await.into_iter().filter_map(|t| t.message_id).collect();
    let distinct: BTreeSet<&String> = ids.iter().collect();
    let expected: BTreeSet<String> = (0..50).map(|n| format!("concurrent-{n}")).collect();
    assert_eq!(ids.len(), 50, "doubled or lost: {ids:?}");
    assert_eq!(distinct, expected.iter().collect());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_salesforce_envelope_of_three_notifications_is_three_messages_and_one_ack() {
    let ingest = Ingest::start().await;
    let notifications = [("04lN1", "001A1"), ("04lN2", "001A2"), ("04lN3", "001A3")];
    let response = ingest
        .post_salesforce("salesforce", &envelope(ORGANIZATION, &notifications))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let answer = response.text().await.unwrap();
    assert!(answer.contains("<Ack>true</Ack>"), "{answer}");
    assert!(answer.contains("notificationsResponse"), "{answer}");

    let taken = ingest.taken().await;
    let ids: Vec<&str> = taken.iter().filter_map(|t| t.message_id.as_deref()).collect();
    assert_eq!(ids, ["04lN1", "04lN2", "04lN3"]);
    for (message, (_, account)) in taken.iter().zip(notifications) {
        let fields: serde_json::Value = serde_json::from_slice(&message.body).unwrap();
        let expected = serde_json::json!({
            "Id": account, "Name": "Eleven Labs", "Status__c": "CLIENT_ACTIVE", "Country__c": "FR"
        });
        assert_eq!(fields, expected);
        let source = message.headers.get("x-passerelle-source").map(String::as_str);
        assert_eq!(source, Some("salesforce"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_organization_or_token_is_a_soap_fault_and_nothing_is_published() {
    let ingest = Ingest::start().await;
    let stranger = envelope("00D000000000009ZZZ", &[("04lN4", "001A4")]);
    let response = ingest.post_salesforce("salesforce", &stranger).await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let fault = response.text().await.unwrap();
    assert!(
        fault.contains("<soapenv:Fault>") && fault.contains("00D000000000009ZZZ"),
        "{fault}"
    );
    assert!(!fault.contains("<Ack>true</Ack>"), "{fault}");

    let no_token = reqwest::Client::new()
        .post(ingest.source("salesforce"))
        .body(envelope(ORGANIZATION, &[("04lN5", "001A5")]))
        .send()
        .await
        .unwrap();
    assert_eq!(no_token.status(), StatusCode::UNAUTHORIZED);
    assert!(no_token.text().await.unwrap().contains("<soapenv:Fault>"));

    let broken = ingest.post_salesforce("salesforce", "<soapenv:Envelope>").await;
    assert_eq!(broken.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(ingest.taken().await.is_empty(), "a refused envelope was published");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shipped_salesforce_example_reaches_the_shop() {
    let ingest = Ingest::start().await;
    let response = ingest.post_salesforce("salesforce-live", EXAMPLE_ENVELOPE).await;
    assert_eq!(response.status(), StatusCode::OK);

    let calls = ingest.setup.server.wait_for_calls(1, Duration::from_secs(30)).await;
    assert_eq!(calls[0].method, "PUT");
    assert!(
        calls[0].uri.ends_with("/businesses/001000000000001AAA"),
        "{}",
        calls[0].uri
    );
    let business = support::json(&calls[0].body);
    assert_eq!(business["business"]["name"], "Eleven Labs");
    assert_eq!(business["status"], 70);
    // The inbox got nothing: each source publishes where it says.
    assert!(ingest.taken().await.is_empty());
}
