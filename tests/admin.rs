//! The admin HTTP API of `passerelle run`, end to end: the real binary,
//! the real broker, a real HTTP server standing in for the shop, and a
//! real HTTP client. Metrics after a known sequence of events, readiness
//! following the broker connection, uploads (swap, refusal, token), and
//! trace context from the AMQP message to the HTTP call.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::{ADMIN_TOKEN, CRM_ACCOUNT, Deployment, Reply, close_connection_of, eventually, new_version, transform};

/// One quick in-process retry, no delayed ones: each step below settles fast.
const QUICK_RETRY: &str = "    retry: { immediate: 1, backoff: 10ms, delays: [] }";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// The samples of an OpenMetrics/Prometheus text exposition, keyed by
/// `name{labels}` exactly as written. Every line must be a comment or a
/// well-formed sample: anything else fails the test.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    for line in text.lines().filter(|line| !line.is_empty()) {
        if let Some(comment) = line.strip_prefix("# ") {
            let kind = comment.split_whitespace().next().unwrap_or_default();
            assert!(
                ["HELP", "TYPE", "UNIT", "EOF"].contains(&kind),
                "bad comment line {line:?}"
            );
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line {line:?}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "unclosed labels in {line:?}");
        }
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        samples.insert(series.to_string(), value);
    }
    samples
}

async fn metrics(admin: &str) -> BTreeMap<String, f64> {
    let response = client().get(format!("{admin}/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    support::keep_seen("metrics", &text);
    parse_metrics(&text)
}

fn sample(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no sample {series} in:\n{samples:#?}"))
}

async fn ready_status(admin: &str) -> u16 {
    client()
        .get(format!("{admin}/readyz"))
        .send()
        .await
        .map_or(0, |response| response.status().as_u16())
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_a_known_sequence_and_readiness_follows_the_broker() {
    let setup = Deployment::new().await;
    let config = setup.config_with_admin(QUICK_RETRY, "");
    let host = setup.start_host(&config).await;
    let admin = host.admin_url().await;
    assert_eq!(ready_status(&admin).await, 200);
    let healthy = client().get(format!("{admin}/healthz")).send().await.unwrap();
    assert_eq!(healthy.status(), 200);

    // Three delivered at once.
    setup.publish_accounts(0..3).await;
    setup.server.wait_for_calls(3, Duration::from_secs(30)).await;
    // One retried in process: a 503, then the default 200.
    setup.server.reply_next(Reply::status(503));
    setup.publish_accounts(3..4).await;
    setup.server.wait_for_calls(5, Duration::from_secs(30)).await;
    // One dead-lettered: a 400 is permanent.
    setup.server.reply_next(Reply::status(400));
    setup.publish_accounts(4..5).await;
    let dead = format!("{}.dead", setup.crm_queue);
    eventually("a dead letter", Duration::from_secs(30), async || {
        (setup.broker.depth(&dead).await == 1).then_some(())
    })
    .await;
    // One reload refused, then one swap.
    let component = setup.config_dir.dir.path().join("crm-to-shop.wasm");
    std::fs::write(&component, b"not a component").unwrap();
    host.wait_for_log("refused transform", 1).await;
    let v2 = new_version();
    std::fs::write(&component, &v2).unwrap();
    host.wait_for_log("swapped transform", 1).await;

    let samples = metrics(&admin).await;
    let route = r#"route="crm-to-shop""#;
    let expected = [
        (format!("passerelle_messages_received_total{{{route}}}"), 5.0),
        (format!("passerelle_messages_delivered_total{{{route}}}"), 4.0),
        (
            format!(r#"passerelle_messages_retried_total{{{route},kind="in_process"}}"#),
            1.0,
        ),
        (
            format!(r#"passerelle_messages_dead_lettered_total{{{route},reason="http_permanent"}}"#),
            1.0,
        ),
        (format!(r#"passerelle_reloads_total{{{route},outcome="done"}}"#), 1.0),
        (format!(r#"passerelle_reloads_total{{{route},outcome="refused"}}"#), 1.0),
    ];
    for (series, count) in expected {
        assert_eq!(sample(&samples, &series), count, "{series}");
    }
    let calls = |class: &str| {
        let series = format!(
            r#"passerelle_http_request_duration_seconds_count{{endpoint="shop",operation="upsertBusiness",status_class="{class}"}}"#
        );
        sample(&samples, &series)
    };
    assert_eq!((calls("2xx"), calls("5xx"), calls("4xx")), (4.0, 1.0, 1.0));
    let v1 = passerelle::version::Version::of(&std::fs::read(transform("crm-to-shop")).unwrap());
    let runs = format!(r#"passerelle_transform_duration_seconds_count{{{route},version="{v1}"}}"#);
    assert_eq!(sample(&samples, &runs), 6.0, "five messages, one of them twice");
    // Each of those runs waited for a sandbox lane first.
    let waits = format!("passerelle_transform_wait_seconds_count{{{route}}}");
    assert_eq!(sample(&samples, &waits), 6.0);
    assert_eq!(sample(&samples, r#"passerelle_breaker_state{endpoint="shop"}"#), 0.0);
    assert_eq!(sample(&samples, "passerelle_broker_connected"), 1.0);
    // The other route counted nothing; its series exist from the start, at
    // 0, so that a rate over them sees its first message.
    let other = r#"passerelle_messages_received_total{route="shop-to-crm"}"#;
    assert_eq!(sample(&samples, other), 0.0);

    // Not ready while the broker has dropped the host; ready once it is back.
    close_connection_of(host.pid());
    eventually("/readyz to say 503", Duration::from_secs(10), async || {
        (ready_status(&admin).await == 503).then_some(())
    })
    .await;
    eventually("/readyz to say 200 again", Duration::from_secs(30), async || {
        (ready_status(&admin).await == 200).then_some(())
    })
    .await;
}

fn upload_form(component: Vec<u8>, fixtures: Option<&str>) -> reqwest::multipart::Form {
    let part = reqwest::multipart::Part::bytes(component).file_name("candidate.wasm");
    let form = reqwest::multipart::Form::new().part("component", part);
    match fixtures {
        Some(text) => form.part(
            "fixtures",
            reqwest::multipart::Part::text(text.to_string()).file_name("candidate.fixtures.json"),
        ),
        None => form,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_swaps_the_transform_and_a_failing_one_is_refused() {
    let setup = Deployment::new().await;
    let config = setup.config_with_admin("", "");
    let host = setup.start_host(&config).await;
    let admin = host.admin_url().await;
    let upload_url = format!("{admin}/transforms/crm-to-shop");
    let v2 = new_version();
    let v2_version = passerelle::version::Version::of(&v2).to_string();

    // Without the token, or with a wrong one: 401, nothing swapped.
    let anonymous = client().post(&upload_url).body(v2.clone()).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let wrong = client()
        .post(&upload_url)
        .bearer_auth("not-the-token")
        .body(v2.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert_eq!(
        client()
            .get(format!("{admin}/transforms"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    // A failing fixture: 422 with the reason, the old version serves on.
    let failing = r#"[{"name": "expects a reject", "message": {"body": {"Id": "gg-11", "Name": "Eleven Labs", "Status__c": "CLIENT_ACTIVE", "Country__c": "FR"}}, "expect": {"reject": "never"}}]"#;
    let refused = client()
        .post(&upload_url)
        .bearer_auth(ADMIN_TOKEN)
        .multipart(upload_form(v2.clone(), Some(failing)))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 422);
    let reason: serde_json::Value = refused.json().await.unwrap();
    assert!(
        reason["error"].as_str().unwrap().contains("expects a reject"),
        "{reason}"
    );

    // A good one swaps: the next delivery carries its version.
    let good = client()
        .post(&upload_url)
        .bearer_auth(ADMIN_TOKEN)
        .multipart(upload_form(v2.clone(), None))
        .send()
        .await
        .unwrap();
    assert_eq!(good.status(), 200);
    let answer: serde_json::Value = good.json().await.unwrap();
    assert_eq!(answer["version"], v2_version.as_str());
    let listed: serde_json::Value = client()
        .get(format!("{admin}/transforms"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entry = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["route"] == "crm-to-shop")
        .unwrap();
    assert_eq!(
        (entry["version"].as_str(), entry["source"].as_str()),
        (Some(v2_version.as_str()), Some("upload"))
    );

    setup.publish_accounts(0..1).await;
    let calls = setup.server.wait_for_calls(1, Duration::from_secs(30)).await;
    assert_eq!(
        calls[0].header("x-passerelle-transform-version"),
        Some(v2_version.as_str())
    );

    // To every host through the broker, then back with a rollback.
    let v3 = new_version();
    let v3_version = passerelle::version::Version::of(&v3).to_string();
    let fleet = client()
        .post(format!("{upload_url}?fleet=true"))
        .bearer_auth(ADMIN_TOKEN)
        .body(v3)
        .send()
        .await
        .unwrap();
    assert_eq!(fleet.status(), 200, "{}", fleet.text().await.unwrap());
    host.wait_for_log(&format!("swapped transform {v2_version} -> {v3_version} (deploy"), 1)
        .await;
    let rollback = client()
        .post(format!("{upload_url}/rollback"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(rollback.status(), 200);
    let rolled: serde_json::Value = rollback.json().await.unwrap();
    assert_eq!(
        (rolled["from"].as_str(), rolled["to"].as_str()),
        (Some(v3_version.as_str()), Some(v2_version.as_str()))
    );
    host.wait_for_log(&format!("swapped transform {v3_version} -> {v2_version} (deploy"), 1)
        .await;
    // Counted once the swap returns, just after its log line.
    let applied = r#"passerelle_fleet_deploys_applied_total{route="crm-to-shop"}"#;
    eventually(
        "the deploy and the rollback counted",
        Duration::from_secs(10),
        async || (metrics(&admin).await.get(applied) == Some(&2.0)).then_some(()),
    )
    .await;

    // A body over the limit is refused, and read to its end first (never
    // kept), so that the client, still sending it, gets the 413 and not a
    // reset connection.
    let huge = vec![0u8; 17 * 1024 * 1024];
    let too_big = client()
        .post(&upload_url)
        .bearer_auth(ADMIN_TOKEN)
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(too_big.status(), 413);
    let refusal: serde_json::Value = too_big.json().await.unwrap();
    assert_eq!(
        refusal["error"],
        "the body (17.0 MiB) is larger than admin.max_body (16.0 MiB)"
    );

    // Sent without a length (chunked), the same: a 413 once the whole body
    // is sent, never a reset; and a component sent so within the limit is
    // taken as any other.
    let (status, refusal) = post_chunked(&upload_url, &vec![0u8; 17 * 1024 * 1024]).await;
    assert_eq!(status, 413, "{refusal}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&refusal).unwrap()["error"],
        "the body (sent without a length) is larger than admin.max_body (16.0 MiB)"
    );
    let v4 = new_version();
    let v4_version = passerelle::version::Version::of(&v4).to_string();
    let (status, answer) = post_chunked(&upload_url, &v4).await;
    assert_eq!(status, 200, "{answer}");
    host.wait_for_log(&format!("swapped transform {v2_version} -> {v4_version}"), 1)
        .await;
}

/// POSTs `body` to `url` (`http://host:port/path`) in 1 MiB chunks, with
/// no length, sent whole before the answer is read: a server that answers
/// early and closes makes this fail. The status and the answer's body.
async fn post_chunked(url: &str, body: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (authority, path) = url.strip_prefix("http://").unwrap().split_once('/').unwrap();
    let mut stream = tokio::net::TcpStream::connect(authority).await.unwrap();
    let head = format!(
        "POST /{path} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Content-Type: application/wasm\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for chunk in body.chunks(1 << 20) {
        stream
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await
            .unwrap();
        stream.write_all(chunk).await.unwrap();
        stream.write_all(b"\r\n").await.unwrap();
    }
    stream.write_all(b"0\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_traceparent_is_carried_to_the_http_call_and_onto_dead_letters() {
    let setup = Deployment::new().await;
    let config = setup.config("", "");
    let _host = setup.start_host(&config).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    setup
        .broker
        .publish_with_headers(
            &setup.crm_exchange,
            "account.updated",
            CRM_ACCOUNT.as_bytes(),
            Some("traced"),
            &[("traceparent", &parent)],
        )
        .await;
    let calls = setup.server.wait_for_calls(1, Duration::from_secs(30)).await;
    let carried = calls[0].header("traceparent").expect("a traceparent on the call");
    let fields: Vec<&str> = carried.split('-').collect();
    assert_eq!(fields.len(), 4, "{carried}");
    assert_eq!(fields[1], trace_id, "same trace");
    assert_ne!(fields[2], "00f067aa0ba902b7", "a span of its own");

    // Without one, a trace starts here, and the dead letter carries it.
    setup.server.reply_next(Reply::status(400));
    setup.publish_crm_account("untraced").await;
    let calls = setup.server.wait_for_calls(2, Duration::from_secs(30)).await;
    let started = calls[1].header("traceparent").expect("a new trace").to_string();
    let dead = format!("{}.dead", setup.crm_queue);
    let letters = eventually("the dead letter", Duration::from_secs(30), async || {
        let letters = setup.broker.drain(&dead).await;
        (!letters.is_empty()).then_some(letters)
    })
    .await;
    let on_letter = letters[0]
        .headers
        .get("traceparent")
        .expect("the dead letter's traceparent");
    assert_eq!(on_letter.split('-').nth(1), started.split('-').nth(1), "the same trace");
}
