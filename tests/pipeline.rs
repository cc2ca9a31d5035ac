//! `passerelle run` end to end: the real broker, real HTTP servers started
//! here, the shipped transforms, and the real binary, including when the
//! broker drops it or it is killed mid-stream.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{CRM_ACCOUNT, Deployment as Setup, Reply, close_connection_of, eventually, transform};

/// Quick in-process retries keep failing tests short.
const QUICK_RETRY: &str = "    retry: { immediate: 1, backoff: 10ms }";

/// What shop-to-crm makes of `SHOP_BUSINESS`: the CRM's PATCH body.
fn crm_patch_body() -> serde_json::Value {
    json!({"Name": "Eleven Labs", "Status__c": "CLIENT_ACTIVE", "Country__c": "FR"})
}

fn version_of(name: &str) -> String {
    passerelle::version::Version::of(&std::fs::read(transform(name)).unwrap()).to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn both_directions_reach_their_target_exactly_as_declared() {
    let setup = Setup::new().await;
    let config = setup.config(QUICK_RETRY, "");
    let mut host = setup.start_host(&config).await;

    setup.publish_crm_account("crm-msg-1").await;
    let calls = setup.server.wait_for_calls(1, Duration::from_secs(30)).await;
    let shop = &calls[0];
    assert_eq!(
        (shop.method.as_str(), shop.uri.as_str()),
        ("PUT", "/api/businesses/gg-11")
    );
    assert_eq!(shop.header("authorization"), Some("Bearer shop-secret-token"));
    assert_eq!(shop.header("idempotency-key"), Some("crm-to-shop:crm-msg-1:0"));
    assert_eq!(
        shop.header("x-passerelle-transform-version"),
        Some(version_of("crm-to-shop").as_str())
    );
    assert_eq!(shop.header("content-type"), Some("application/json"));
    assert_eq!(
        support::json(&shop.body),
        json!({"business": {"name": "Eleven Labs"}, "status": 70, "country": {"id": 76}})
    );

    setup.publish_shop_business("shop-msg-1").await;
    let calls = setup.server.wait_for_calls(2, Duration::from_secs(30)).await;
    let crm = &calls[1];
    assert_eq!(
        (crm.method.as_str(), crm.uri.as_str()),
        ("PATCH", "/services/data/v60.0/sobjects/Account/gg-11")
    );
    assert_eq!(
        crm.header("authorization"),
        Some("Bearer token-1"),
        "the OAuth2 token fetched"
    );
    assert_eq!(crm.header("idempotency-key"), Some("shop-to-crm:shop-msg-1:0"));
    assert_eq!(
        crm.header("x-passerelle-transform-version"),
        Some(version_of("shop-to-crm").as_str())
    );
    assert_eq!(support::json(&crm.body), crm_patch_body());
    let token_request = setup
        .server
        .received()
        .into_iter()
        .find(|r| r.uri == "/oauth/token")
        .unwrap();
    let form = String::from_utf8(token_request.body).unwrap();
    assert!(
        form.contains("grant_type=client_credentials") && form.contains("client_id=crm-client"),
        "{form}"
    );

    setup.wait_until_queue_is_empty(&setup.crm_queue).await;
    setup.wait_until_queue_is_empty(&setup.shop_queue).await;
    assert_eq!(host.terminate().code(), Some(0), "{}", host.log());
    let log = host.log();
    assert!(
        !log.contains("shop-secret-token") && !log.contains("crm-client-secret"),
        "a secret leaked:\n{log}"
    );
}

/// A token can be revoked before it expires: a 401 fetches a new token and
/// sends the same request again, body included, once.
#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_token_is_replaced_and_the_same_request_sent_again() {
    let setup = Setup::new().await;
    let config = setup.config(QUICK_RETRY, "");
    let _host = setup.start_host(&config).await;
    setup.server.reply_next(Reply::status(401));
    setup.publish_shop_business("shop-msg-1").await;

    let calls = setup.server.wait_for_calls(2, Duration::from_secs(30)).await;
    let tokens: Vec<_> = calls.iter().map(|call| call.header("authorization")).collect();
    assert_eq!(tokens, [Some("Bearer token-1"), Some("Bearer token-2")]);
    for call in &calls {
        assert_eq!(call.uri, "/services/data/v60.0/sobjects/Account/gg-11");
        assert_eq!(call.header("content-type"), Some("application/json"));
        assert_eq!(support::json(&call.body), crm_patch_body());
    }
    setup.wait_until_queue_is_empty(&setup.shop_queue).await;
    assert_eq!(setup.server.calls().len(), 2, "sent again once, not retried further");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_messages_are_each_delivered_exactly_once() {
    let setup = Setup::new().await;
    let config = setup.config(QUICK_RETRY, "");
    let mut host = setup.start_host(&config).await;
    setup.publish_accounts(0..1000).await;

    setup.wait_until_every_account_arrives(1000, &host).await;
    setup.wait_until_queue_is_empty(&setup.crm_queue).await;
    let counts = setup.deliveries_per_account();
    let repeated: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(repeated.is_empty(), "delivered more than once: {repeated:?}");
    assert_eq!(counts.len(), 1000);
    assert_eq!(setup.broker.depth(&format!("{}.dead", setup.crm_queue)).await, 0);
    assert_eq!(host.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn rejected_and_malformed_messages_are_dead_lettered_with_their_reason() {
    let setup = Setup::new().await;
    let config = setup.config(QUICK_RETRY, "");
    let _host = setup.start_host(&config).await;
    let broker = &setup.broker;
    let gone = CRM_ACCOUNT.replace("CLIENT_ACTIVE", "CLIENT_GONE");
    broker
        .publish(
            &setup.crm_exchange,
            "account.updated",
            gone.as_bytes(),
            Some("bad-status"),
        )
        .await;
    broker
        .publish(&setup.crm_exchange, "account.updated", b"{oops", Some("malformed"))
        .await;
    broker
        .publish(
            &setup.crm_exchange,
            "account.updated",
            CRM_ACCOUNT.as_bytes(),
            Some("good"),
        )
        .await;

    let calls = setup.server.wait_for_calls(1, Duration::from_secs(30)).await;
    assert_eq!(
        calls[0].header("idempotency-key"),
        Some("crm-to-shop:good:0"),
        "the next message still flows"
    );

    let dead_queue = format!("{}.dead", setup.crm_queue);
    let dead = eventually("two dead letters", Duration::from_secs(30), async || {
        (broker.depth(&dead_queue).await >= 2).then_some(())
    });
    dead.await;
    let dead = broker.drain(&dead_queue).await;
    assert_eq!(dead.len(), 2);
    // Handled concurrently: either may be dead-lettered first.
    let letter = |body: &[u8]| dead.iter().find(|l| l.body == body).expect("the original body is kept");
    let reason = &letter(gone.as_bytes()).headers["x-passerelle-reason"];
    assert!(reason.contains("\"CLIENT_GONE\""), "{reason}");
    let reason = &letter(b"{oops").headers["x-passerelle-reason"];
    assert!(reason.contains("not JSON"), "{reason}");
    for letter in &dead {
        assert_eq!(
            letter.headers["x-passerelle-transform-version"],
            version_of("crm-to-shop")
        );
        assert_eq!(letter.headers["x-passerelle-route"], "crm-to-shop");
        assert_eq!(letter.headers["x-passerelle-attempt"], "1");
    }
    assert_eq!(setup.server.calls().len(), 1, "rejected messages call nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_permanent_http_error_is_dead_lettered_with_the_status() {
    let setup = Setup::new().await;
    let config = setup.config(QUICK_RETRY, "");
    let _host = setup.start_host(&config).await;
    setup
        .server
        .reply_next(Reply::status(400).with_body(r#"{"error": "country 76 is closed"}"#));
    setup.publish_accounts(0..1).await;

    let dead_queue = format!("{}.dead", setup.crm_queue);
    let broker = &setup.broker;
    eventually("a dead letter", Duration::from_secs(30), async || {
        (broker.depth(&dead_queue).await >= 1).then_some(())
    })
    .await;
    let dead = broker.drain(&dead_queue).await;
    assert_eq!(dead[0].headers["x-passerelle-http-status"], "400");
    assert!(
        dead[0].headers["x-passerelle-reason"].contains("country 76 is closed"),
        "{:?}",
        dead[0].headers
    );
    assert_eq!(setup.server.calls().len(), 1, "a 400 is not retried");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_closed_by_the_broker_loses_nothing() {
    let setup = Setup::new().await;
    let config = setup.config(QUICK_RETRY, "");
    let host = setup.start_host(&config).await;
    // Slow answers keep messages in flight when the connection drops.
    setup
        .server
        .reply_always(Some(Reply::status(200).after(Duration::from_millis(100))));
    let total = 600;
    setup.publish_accounts(0..total).await;
    setup.server.wait_for_calls(30, Duration::from_secs(60)).await;

    close_connection_of(host.pid());

    setup.wait_until_every_account_arrives(total, &host).await;
    setup.wait_until_queue_is_empty(&setup.crm_queue).await;
    assert!(host.log().contains("reconnecting"), "{}", host.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_given_several_brokers_uses_the_first_that_answers() {
    let setup = Setup::new().await;
    let config = setup.config(QUICK_RETRY, "");
    // Nothing listens on port 1: the host goes on to the second address.
    let one = format!("  url: {}", support::AMQP_URL);
    let list = format!("  urls: [amqp://guest:guest@127.0.0.1:1/%2f, {}]", support::AMQP_URL);
    let yaml = std::fs::read_to_string(&config).unwrap().replace(&one, &list);
    std::fs::write(&config, yaml).unwrap();
    let host = setup.start_host(&config).await;
    setup.publish_crm_account("several-brokers").await;
    setup.server.wait_for_calls(1, Duration::from_secs(30)).await;
    assert!(
        host.log().contains("connected to amqp://guest:***@127.0.0.1:5672"),
        "{}",
        host.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_host_loses_nothing_once_restarted() {
    let setup = Setup::new().await;
    let config = setup.config(QUICK_RETRY, "");
    let mut host = setup.start_host(&config).await;
    setup
        .server
        .reply_always(Some(Reply::status(200).after(Duration::from_millis(50))));
    let total = 300;
    setup.publish_accounts(0..total).await;
    setup.server.wait_for_calls(30, Duration::from_secs(60)).await;

    host.kill();
    let delivered_before_restart = setup.deliveries_per_account().len();
    assert!(
        delivered_before_restart < total,
        "the kill came too late to prove anything"
    );

    let host = setup.start_host(&config).await;
    setup.wait_until_every_account_arrives(total, &host).await;
    setup.wait_until_queue_is_empty(&setup.crm_queue).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_messages_in_flight_and_exits_zero() {
    let setup = Setup::new().await;
    let config = setup.config(QUICK_RETRY, "");
    let mut host = setup.start_host(&config).await;
    setup
        .server
        .reply_always(Some(Reply::status(200).after(Duration::from_millis(300))));
    let total = 40;
    setup.publish_accounts(0..total).await;
    setup.server.wait_for_calls(1, Duration::from_secs(30)).await;

    let status = host.terminate();
    assert_eq!(status.code(), Some(0), "{}", host.log());
    // Whatever was taken was finished: what left the queue reached the shop.
    let left_in_queue = setup.broker.depth(&setup.crm_queue).await as usize;
    assert_eq!(
        setup.deliveries_per_account().len() + left_in_queue,
        total,
        "{}",
        host.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn topology_is_declared_idempotently_and_quorum_queues_are_an_option() {
    let setup = Setup::new().await;
    let config = setup.config(&format!("{QUICK_RETRY}\n    queue_type: quorum"), "");
    let mut host = setup.start_host(&config).await;
    assert_eq!(host.terminate().code(), Some(0));
    setup.publish_accounts(0..3).await;
    let broker = &setup.broker;
    eventually(
        "the binding to route 3 messages to the queue",
        Duration::from_secs(10),
        async || (broker.depth(&setup.crm_queue).await == 3).then_some(()),
    )
    .await;

    // Declaring again (a restart) changes nothing and loses nothing.
    let mut host = setup.start_host(&config).await;
    setup.wait_until_every_account_arrives(3, &host).await;
    assert_eq!(host.terminate().code(), Some(0));

    // The queue really is a quorum queue: a classic declaration is refused.
    let channel = setup.broker.channel.clone();
    let classic = channel
        .queue_declare(
            setup.crm_queue.as_str().into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await;
    assert!(classic.is_err(), "a classic declaration of a quorum queue should fail");
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_actions_are_confirmed_and_unroutable_ones_are_not_lost() {
    let broker = support::Broker::connect().await;
    let source = broker.exchange("orders.in");
    let target = broker.exchange("orders.out");
    let queue = broker.queue("orders.route");
    let forwarded = broker.queue("orders.forwarded");
    broker.bind_queue(&forwarded, &target, "forwarded.order.*").await;
    let republisher = support::fixture("republisher");
    let control = broker.exchange("passerelle.control");
    broker.also_delete_queue(&format!("{control}.history.republish"));
    let dir = support::ConfigDir::new();
    let config = dir.write(
        "passerelle.yaml",
        &format!(
            r#"
amqp:
  url: {url}
  control_exchange: {control}
routes:
  republish:
    queue: {queue}
    bindings: [{{ exchange: {source} }}]
    transform: {wasm}
    config: {{ exchange: {target} }}
    retry: {{ immediate: 1, backoff: 10ms, delays: [] }}
"#,
            url = support::AMQP_URL,
            wasm = republisher.display(),
        ),
    );
    let _host = support::Host::start(&config);
    broker.wait_for_consumers(&queue, 1).await;

    broker
        .publish(&source, "order.created", br#"{"order": 1}"#, Some("order-1"))
        .await;
    eventually("the forwarded message", Duration::from_secs(30), async || {
        (broker.depth(&forwarded).await == 1).then_some(())
    })
    .await;
    let [message] = broker.drain(&forwarded).await.try_into().unwrap();
    assert_eq!(message.body, br#"{"order": 1}"#);
    assert_eq!(message.headers["x-original-routing-key"], "order.created");
    let version = passerelle::version::Version::of(&std::fs::read(&republisher).unwrap());
    assert_eq!(message.headers["x-passerelle-transform-version"], version.as_str());
    let trace = &message.headers["traceparent"];
    assert!(
        trace.len() == 55 && trace.starts_with("00-"),
        "a publish action carries the message's trace: {trace:?}"
    );

    // No queue takes `forwarded.invoice.created`: a failure, not a loss.
    broker
        .publish(&source, "invoice.created", b"{}", Some("invoice-1"))
        .await;
    let dead_queue = format!("{queue}.dead");
    eventually(
        "the unroutable message in the dead-letter queue",
        Duration::from_secs(30),
        async || (broker.depth(&dead_queue).await == 1).then_some(()),
    )
    .await;
    let [dead] = broker.drain(&dead_queue).await.try_into().unwrap();
    assert!(
        dead.headers["x-passerelle-reason"].contains("no queue takes messages"),
        "{:?}",
        dead.headers
    );
    assert_eq!(broker.depth(&forwarded).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_auth_credentials_come_from_the_environment() {
    let setup = Setup::new().await;
    let yaml = std::fs::read_to_string(setup.config(QUICK_RETRY, "")).unwrap().replace(
        "auth: { bearer: { token_env: TEST_SHOP_TOKEN } }",
        "auth: { basic: { username: passerelle, password_env: TEST_SHOP_PASSWORD } }",
    );
    let config = setup.config_dir.write("basic.yaml", &yaml);
    let mut host = support::Host::start_with_env(
        &config,
        &[
            ("TEST_SHOP_PASSWORD", "open sesame"),
            ("TEST_CRM_CLIENT_ID", "crm-client"),
            ("TEST_CRM_CLIENT_SECRET", "crm-client-secret"),
        ],
    );
    setup.broker.wait_for_consumers(&setup.crm_queue, 1).await;
    setup.publish_accounts(0..1).await;
    let calls = setup.server.wait_for_calls(1, Duration::from_secs(30)).await;
    // base64("passerelle:open sesame")
    assert_eq!(
        calls[0].header("authorization"),
        Some("Basic cGFzc2VyZWxsZTpvcGVuIHNlc2FtZQ==")
    );
    assert_eq!(host.terminate().code(), Some(0));
    assert!(!host.log().contains("open sesame"), "the password leaked into the log");
}

/// The acks of a route's channel go in batches (`amqp::settler`); against
/// the real broker, verdicts given out of order settle exactly what they
/// say: requeued deliveries come back, acked ones never do, one still in
/// hand is not covered by a multiple ack of those after it, and the acks
/// held back for it are sent anyway once they have waited long enough.
#[tokio::test(flavor = "multi_thread")]
async fn the_settler_acks_and_requeues_exactly_what_was_decided() {
    use futures_util::StreamExt as _;
    use lapin::options::{BasicConsumeOptions, BasicQosOptions};
    use passerelle::amqp::settler::{Settler, Verdict};

    let broker = support::Broker::connect().await;
    let queue = broker.queue("settler");
    broker.declare_queue(&queue).await;
    for n in 0..20 {
        broker.publish("", &queue, n.to_string().as_bytes(), None).await;
    }
    let channel = broker.open_channel().await;
    // A quarter of the prefetch (20) is more than the 13 acks that wait
    // above the delivery left in hand: only their time limit sends them.
    channel.basic_qos(80, BasicQosOptions::default()).await.unwrap();
    let mut deliveries = channel
        .basic_consume(
            queue.as_str().into(),
            "settler-test".into(),
            BasicConsumeOptions::default(),
            Default::default(),
        )
        .await
        .unwrap();
    let (settler, task) = Settler::start(channel.clone(), "settler-test".into(), 80);
    let mut taken = Vec::new();
    for _ in 0..20 {
        let delivery = deliveries.next().await.unwrap().unwrap();
        settler.taken(delivery.delivery_tag);
        let body: u32 = String::from_utf8_lossy(&delivery.data).parse().unwrap();
        taken.push((body, delivery.delivery_tag));
    }
    let requeued = |body: u32| body.is_multiple_of(5);
    // Decided from the last to the first, all but body 3, which stays in hand.
    for &(body, tag) in taken.iter().rev().filter(|(body, _)| *body != 3) {
        let verdict = if requeued(body) { Verdict::Requeue } else { Verdict::Ack };
        settler.decided(tag, verdict);
    }
    let mut back = Vec::new();
    while back.len() < 4 {
        let delivery = tokio::time::timeout(Duration::from_secs(10), deliveries.next())
            .await
            .expect("the requeued deliveries come back")
            .unwrap()
            .unwrap();
        assert!(delivery.redelivered);
        back.push(String::from_utf8_lossy(&delivery.data).parse::<u32>().unwrap());
    }
    back.sort();
    assert_eq!(back, [0, 5, 10, 15]);

    // Well past the time an ack may wait, the settler still running:
    // closing the channel returns what it holds unacked, body 3 and the
    // four that came back. The fifteen acked ones are gone for good.
    tokio::time::sleep(Duration::from_millis(200)).await;
    channel.close(200, "done".into()).await.unwrap();
    drop(settler);
    task.finish().await;
    eventually(
        "the unacked five back in the queue",
        Duration::from_secs(10),
        async || (broker.depth(&queue).await == 5).then_some(()),
    )
    .await;
    let mut left: Vec<u32> = broker
        .drain(&queue)
        .await
        .iter()
        .map(|taken| String::from_utf8_lossy(&taken.body).parse().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, [0, 3, 5, 10, 15]);
}

/// A shop that answers with a body it finishes a little later (chunked,
/// as a streaming server does): the body is read to its end, so the
/// connection goes back to the pool and one carries every call. Dropped
/// unread, it would be closed, and every call would open a new one.
#[tokio::test(flavor = "multi_thread")]
async fn a_success_body_is_read_to_its_end_and_the_connection_reused() {
    let setup = Setup::new().await;
    let streamed = Reply::status(200)
        .with_header("content-type", "application/json")
        .with_body(r#"{"id": 11}"#)
        .ending_body_after(Duration::from_millis(30));
    setup.server.reply_always(Some(streamed));
    let config = setup.config(QUICK_RETRY, "");
    let _host = setup.start_host(&config).await;
    for n in 1..=4 {
        setup.publish_crm_account(&format!("crm-msg-{n}")).await;
        setup.server.wait_for_calls(n, Duration::from_secs(30)).await;
        // The answer's end, then the next message on an idle pool.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(setup.server.calls().len(), 4);
    assert_eq!(
        setup.server.connections(),
        1,
        "each call opened a connection of its own"
    );
}
