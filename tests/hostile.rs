//! Hostile input, each case through the real path: published to a real
//! queue, run by a real `passerelle run` with real guest components
//! (`tests/guests/hostile`, `tests/guests/sandbox-rust`), delivered to a
//! real HTTP server that records what reaches it. Every case ends with a
//! clear reason (the dead letter's `x-passerelle-reason`) or a delivery to
//! the declared path only, and the host then serves the next ordinary
//! message.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString};
use serde_json::{Value, json};
use support::one_route::OneRoute;
use support::{HttpServer, Received, Taken, eventually};

/// One route running a test guest against its own queue, exchange and HTTP
/// server. Its calls go to `target.put` (`PUT things/{id}`, with a query
/// parameter `q`, a header parameter `X-Tenant` and a JSON field `value`)
/// or to `fixture.report`.
struct Route(OneRoute);

impl std::ops::Deref for Route {
    type Target = OneRoute;
    fn deref(&self) -> &OneRoute {
        &self.0
    }
}

fn endpoints(server: &HttpServer) -> String {
    format!(
        r#"  target:
    base_url: {target}
    timeout: 2s
    operations:
      put:
        method: PUT
        uri: things/{{id}}
        parameters:
          id: {{ location: uri }}
          q: {{ location: query }}
          X-Tenant: {{ location: header }}
          value: {{ location: json }}
  fixture:
    base_url: {fixture}
    operations:
      report:
        method: POST
        uri: report
        parameters:
          file: {{ location: json }}
          preopens: {{ location: json }}
          env: {{ location: json }}
          wall_clock: {{ location: json }}
          monotonic_clock: {{ location: json }}
          random: {{ location: json }}
          socket: {{ location: json }}
"#,
        target = server.url("target/"),
        fixture = server.url("fixture/"),
    )
}

const ROUTE: &str = r#"    endpoints: [target, fixture]
    concurrency: 4
    retry: { immediate: 0, backoff: 10ms, delays: [] }
    # Room for 100,000 actions on a loaded machine; the bounds tested here are others.
    limits: { time: 2s }
"#;

impl Route {
    async fn start(guest: &str) -> Self {
        let wasm = support::fixture(guest);
        Self(OneRoute::start("hostile", &wasm, endpoints, ROUTE, Duration::from_secs(60)).await)
    }

    /// Publishes `{"do": "call", "args": args}`: one call to `target.put`.
    async fn publish_call(&self, id: &str, args: Value) {
        let body = json!({"do": "call", "args": args});
        self.publish(id, body.to_string().as_bytes()).await;
    }

    /// Every dead letter once `count` are there, by message id.
    async fn dead_letters(&self, count: usize) -> BTreeMap<String, Taken> {
        let dead = self.dead_letter_queue();
        let mut letters = BTreeMap::new();
        eventually(
            &format!("{count} dead letter(s)"),
            Duration::from_secs(60),
            async || {
                for letter in self.broker.drain(&dead).await {
                    letters.insert(letter.message_id.clone().unwrap_or_default(), letter);
                }
                (letters.len() >= count).then_some(())
            },
        )
        .await;
        letters
    }

    /// Publishes an ordinary order and waits for its call: the host still
    /// serves after whatever came before.
    async fn serves_the_next_message(&self) {
        let id = format!("next-{:08x}", rand::random::<u32>());
        self.publish_call(&id, json!({"id": id})).await;
        let path = format!("/target/things/{id}");
        eventually("the next ordinary message", Duration::from_secs(30), async || {
            self.server.calls().iter().any(|call| call.uri == path).then_some(())
        })
        .await;
    }
}

/// The reason a dead letter gives.
fn reason(letter: &Taken) -> &str {
    letter
        .headers
        .get("x-passerelle-reason")
        .map(String::as_str)
        .unwrap_or_default()
}

fn assert_reason(letters: &BTreeMap<String, Taken>, id: &str, expected: &str) {
    let letter = letters.get(id).unwrap_or_else(|| panic!("no dead letter {id}"));
    assert!(
        reason(letter).contains(expected),
        "{id}: {expected:?} not in {:?}",
        reason(letter)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_10_mb_body_is_dead_lettered_whole_naming_the_body_limit() {
    let route = Route::start("hostile").await;
    let filler = "x".repeat(10 << 20);
    let body = json!({"do": "call", "args": {"id": "big", "value": filler}}).to_string();
    route.publish("ten-mb", body.as_bytes()).await;

    let letters = route.dead_letters(1).await;
    assert_reason(
        &letters,
        "ten-mb",
        "the message body (10.0 MiB) is larger than the route's limits.body (4.0 MiB)",
    );
    assert_eq!(
        letters["ten-mb"].body,
        body.as_bytes(),
        "the dead letter keeps the whole body"
    );
    route.serves_the_next_message().await;
    assert!(route.server.calls().iter().all(|call| !call.uri.ends_with("/big")));
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_utf8_in_the_body_and_headers_is_dead_lettered_with_the_decoder_s_reason() {
    let route = Route::start("hostile").await;
    let mut body = br#"{"do": "call", "args": {"id": "caf"#.to_vec();
    body.extend_from_slice(&[0xE9, 0xFF, 0xFE]);
    body.extend_from_slice(br#""}}"#);
    let mut headers = FieldTable::default();
    headers.insert(
        "x-note".into(),
        AMQPValue::LongString(LongString::from(vec![0xFF, 0xC3])),
    );
    let properties = BasicProperties::default()
        .with_message_id("not-utf8".into())
        .with_headers(headers);
    route
        .broker
        .channel
        .basic_publish(
            route.exchange.as_str().into(),
            "any".into(),
            BasicPublishOptions::default(),
            &body,
            properties,
        )
        .await
        .unwrap()
        .await
        .unwrap();

    let letters = route.dead_letters(1).await;
    assert_reason(
        &letters,
        "not-utf8",
        "rejected by the transform: body is not JSON: invalid unicode code point",
    );
    assert_eq!(letters["not-utf8"].body, body);
    route.serves_the_next_message().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn json_nested_100_000_deep_is_dead_lettered_in_the_body_and_in_a_guest_s_args() {
    let route = Route::start("hostile").await;
    let depth = 100_000;
    // Inside the args, which the guest decodes as a whole.
    let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let deep_body = format!(r#"{{"do": "call", "args": {{"id": "deep", "value": {nested}}}}}"#);
    route.publish("deep-body", deep_body.as_bytes()).await;
    // The guest hands the host args nested as deep: the host parses them.
    let deep_args = json!({"do": "deep-args", "depth": depth}).to_string();
    route.publish("deep-args", deep_args.as_bytes()).await;

    let letters = route.dead_letters(2).await;
    assert_reason(
        &letters,
        "deep-body",
        "rejected by the transform: body is not JSON: recursion limit exceeded",
    );
    assert_reason(
        &letters,
        "deep-args",
        "call to target.put: args are not JSON (recursion limit exceeded",
    );
    route.serves_the_next_message().await;
    assert!(
        route.host.log().contains("dead-lettered"),
        "the host is the same process"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn values_in_uri_segments_and_queries_are_encoded_and_in_headers_never_split() {
    let route = Route::start("hostile").await;
    // Where a value that escaped its segment would land.
    let elsewhere = HttpServer::start().await;
    let other = format!("127.0.0.1:{}", elsewhere.port);
    let port = elsewhere.port;
    let delivered: [(&str, String, String); 6] = [
        ("dotdot", "../../admin".into(), "..%2F..%2Fadmin".into()),
        ("encoded-dotdot", "%2e%2e".into(), "%252e%252e".into()),
        ("crlf", "a\r\nX-Injected: 1".into(), "a%0D%0AX-Injected%3A%201".into()),
        (
            "at",
            format!("attacker@{other}"),
            format!("attacker%40127.0.0.1%3A{port}"),
        ),
        (
            "slashes",
            format!("//{other}/stolen"),
            format!("%2F%2F127.0.0.1%3A{port}%2Fstolen"),
        ),
        (
            "url",
            format!("http://{other}/stolen"),
            format!("http%3A%2F%2F127.0.0.1%3A{port}%2Fstolen"),
        ),
    ];
    for (id, value, _) in &delivered {
        route.publish_call(id, json!({"id": value})).await;
    }
    route
        .publish_call("query", json!({"id": "q", "q": "x&admin=1\r\nX-Injected: 1#frag"}))
        .await;
    let refused = [
        ("header-crlf", json!({"id": "h1", "X-Tenant": "eu\r\nX-Injected: 1"})),
        ("header-lf", json!({"id": "h2", "X-Tenant": "eu\nHost: other"})),
        ("segment-dot", json!({"id": "."})),
        ("segment-dotdot", json!({"id": ".."})),
        ("segment-empty", json!({"id": ""})),
    ];
    for (id, args) in &refused {
        route.publish_call(id, args.clone()).await;
    }

    let letters = route.dead_letters(refused.len()).await;
    let control = "parameter \"X-Tenant\" has a control character: not a valid header value";
    assert_reason(&letters, "header-crlf", control);
    assert_reason(&letters, "header-lf", control);
    assert_reason(
        &letters,
        "segment-dot",
        "has a \".\" segment: a parameter may not change the path",
    );
    assert_reason(
        &letters,
        "segment-dotdot",
        "has a \"..\" segment: a parameter may not change the path",
    );
    assert_reason(&letters, "segment-empty", "parameter \"id\" is empty");

    let calls = route
        .server
        .wait_for_calls(delivered.len() + 1, Duration::from_secs(30))
        .await;
    let uris: Vec<&str> = calls.iter().map(|call| call.uri.as_str()).collect();
    for (id, _, encoded) in &delivered {
        let expected = format!("/target/things/{encoded}");
        assert!(uris.contains(&expected.as_str()), "{id}: {expected} not in {uris:?}");
    }
    let query: Vec<&Received> = calls
        .iter()
        .filter(|c| c.uri.starts_with("/target/things/q?"))
        .collect();
    assert_eq!(query.len(), 1, "{uris:?}");
    let pairs: Vec<(String, String)> = reqwest::Url::parse(&format!("http://x{}", query[0].uri))
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    assert_eq!(
        pairs,
        [("q".to_string(), "x&admin=1\r\nX-Injected: 1#frag".to_string())]
    );
    for call in &calls {
        assert!(
            call.uri.starts_with("/target/things/"),
            "a call left its path: {}",
            call.uri
        );
        assert!(call.header("x-injected").is_none(), "a header was injected: {call:?}");
        assert_eq!(
            call.header("host"),
            Some(format!("127.0.0.1:{}", route.server.port).as_str())
        );
    }
    route.serves_the_next_message().await;
    assert!(
        elsewhere.received().is_empty(),
        "another host was reached: {:?}",
        elsewhere.received()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn gigantic_guest_output_fails_the_message_cleanly() {
    let route = Route::start("hostile").await;
    let orders = [
        ("many-actions", json!({"do": "actions", "count": 100_000})),
        ("huge-args", json!({"do": "huge-args", "bytes": 5 << 20})),
        ("huge-reject", json!({"do": "huge-reject", "bytes": 1 << 20})),
        ("long-routing-key", json!({"do": "long-routing-key", "bytes": 300})),
    ];
    for (id, order) in &orders {
        route.publish(id, order.to_string().as_bytes()).await;
    }

    let letters = route.dead_letters(orders.len()).await;
    assert_reason(
        &letters,
        "many-actions",
        "the transform failed: returned 100000 actions, more than limits.actions (100)",
    );
    assert_reason(&letters, "huge-args", "of actions, more than limits.output (4.0 MiB)");
    // A 1 MiB reason would not fit the dead letter's header frame: it is cut.
    let rejected = reason(&letters["huge-reject"]);
    assert!(
        rejected.starts_with("rejected by the transform: rrrr"),
        "{rejected:.100}"
    );
    assert!(rejected.ends_with("… [cut: 1048603 bytes in all]"), "{rejected:.100}");
    assert!(rejected.len() < 4 << 10, "a reason of {} bytes", rejected.len());
    assert_reason(
        &letters,
        "long-routing-key",
        "the transform failed: action 0: publish routing key of 300 bytes, more than AMQP's 255",
    );
    route.serves_the_next_message().await;
    assert_eq!(route.server.calls().len(), 1, "only the ordinary message was delivered");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gigantic_log_line_is_cut_with_a_marker_and_the_message_delivered() {
    let route = Route::start("hostile").await;
    let order = json!({"do": "huge-log", "bytes": 10 << 20});
    route.publish("huge-log", order.to_string().as_bytes()).await;

    let calls = route.server.wait_for_calls(1, Duration::from_secs(30)).await;
    assert_eq!(calls[0].uri, "/target/things/after-huge-log");
    let log = route.host.log();
    assert!(log.contains("… [cut: 10485760 bytes in all]"), "no marker in the log");
    assert!(log.len() < 1 << 20, "the host log grew to {} bytes", log.len());
    route.serves_the_next_message().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_that_overflows_its_stack_is_dead_lettered() {
    let route = Route::start("hostile").await;
    route.publish("recurse", br#"{"do": "recurse"}"#).await;

    let letters = route.dead_letters(1).await;
    assert_reason(
        &letters,
        "recurse",
        "the transform failed: crashed: wasm trap: call stack exhausted",
    );
    route.serves_the_next_message().await;
}

/// A guest's first WASI call makes its WASI context (runtime/guest.rs):
/// what it wrote to stderr before trapping is still its last words.
#[tokio::test(flavor = "multi_thread")]
async fn what_a_guest_wrote_to_stderr_before_a_trap_is_in_the_reason() {
    let route = Route::start("hostile").await;
    route
        .publish(
            "stderr",
            br#"{"do": "stderr-then-trap", "text": "gave up on account gg-11"}"#,
        )
        .await;

    let letters = route.dead_letters(1).await;
    assert_reason(
        &letters,
        "stderr",
        "the transform failed: crashed (wasm trap: wasm `unreachable` instruction executed): gave up on account gg-11",
    );
    route.serves_the_next_message().await;
}

/// What the Rust sandbox guest found when it reached for the machine.
async fn probe(route: &Route, nth: usize) -> serde_json::Map<String, Value> {
    route.publish(&format!("probe-{nth}"), b"{}").await;
    let calls = route.server.wait_for_calls(nth, Duration::from_secs(30)).await;
    let call = &calls[nth - 1];
    assert_eq!(call.uri, "/fixture/report", "{}", route.host.log());
    support::json(&call.body).as_object().cloned().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rust_guest_finds_no_files_environment_or_sockets_a_stopped_clock_and_real_random() {
    let route = Route::start("sandbox-rust").await;
    let first = probe(&route, 1).await;
    let refused = |name: &str| first[name].as_str().is_some_and(|text| text.starts_with("error"));
    assert!(refused("file"), "file: {}", first["file"]);
    assert!(refused("socket"), "socket: {}", first["socket"]);
    assert_eq!(first["preopens"], json!(0));
    assert_eq!(first["env"], json!([]));
    // Stopped at the Unix epoch, by design.
    assert_eq!(first["wall_clock"], json!([0, 0]));
    assert_eq!(first["monotonic_clock"], json!(0));
    // Random is granted, by design: each fresh instance draws its own.
    let random = |probes: &serde_json::Map<String, Value>| probes["random"].as_array().unwrap().clone();
    assert_eq!(random(&first).len(), 16);
    let second = probe(&route, 2).await;
    assert_ne!(random(&first), random(&second), "two instances drew the same bytes");
    assert!(random(&first).iter().any(|byte| byte != &json!(0)));
}
