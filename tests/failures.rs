//! Failure handling against the real broker and an HTTP server that fails
//! on demand: in-process retries, delayed retries through TTL queues,
//! `Retry-After`, the circuit breaker, and the dead-letter tools. Delays
//! are short here; the defaults stay production-like.

mod support;

use std::process::Output;
use std::time::Duration;

use support::{Deployment, Reply, eventually};

/// A ladder of short delays for tests: quick retries, then two delayed ones.
fn ladder(immediate: u32, delays: &[&str]) -> String {
    format!(
        "    retry: {{ immediate: {immediate}, backoff: 20ms, delays: [{}] }}",
        delays.join(", ")
    )
}

/// Registers the retry queues of `delays` for deletion after the test.
fn forget_retry_queues(setup: &Deployment, delays: &[&str]) {
    for delay in delays {
        setup
            .broker
            .also_delete_queue(&format!("{}.retry.{delay}", setup.crm_queue));
    }
}

fn dead_queue(setup: &Deployment) -> String {
    format!("{}.dead", setup.crm_queue)
}

/// `passerelle dlq ARGS crm-to-shop`, which must succeed.
fn dlq(config: &std::path::Path, args: &[&str]) -> Output {
    let command: Vec<&str> = ["dlq"].iter().chain(args).chain(&["crm-to-shop"]).copied().collect();
    let output = support::operator_command(&command, config);
    assert!(
        output.status.success(),
        "dlq {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[tokio::test(flavor = "multi_thread")]
async fn two_503s_then_200_deliver_once_and_dead_letter_nothing() {
    let setup = Deployment::new().await;
    let config = setup.config(&ladder(2, &[]), "");
    let _host = setup.start_host(&config).await;
    setup.server.reply_next(Reply::status(503));
    setup.server.reply_next(Reply::status(503));
    setup.publish_accounts(0..1).await;

    let calls = setup.server.wait_for_calls(3, Duration::from_secs(30)).await;
    setup.wait_until_queue_is_empty(&setup.crm_queue).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(setup.server.calls().len(), 3, "exactly one success after two 503s");
    let keys: Vec<_> = calls
        .iter()
        .map(|c| c.header("idempotency-key").unwrap().to_string())
        .collect();
    assert!(
        keys.iter().all(|k| k == "crm-to-shop:msg-0:0"),
        "the key stays across attempts: {keys:?}"
    );
    assert_eq!(setup.broker.depth(&dead_queue(&setup)).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_400_is_dead_lettered_at_once_with_status_and_reason() {
    let setup = Deployment::new().await;
    let config = setup.config(&ladder(2, &["100ms"]), "");
    forget_retry_queues(&setup, &["100ms"]);
    let _host = setup.start_host(&config).await;
    setup.server.reply_next(Reply::status(400).with_body("unknown country"));
    setup.publish_accounts(0..1).await;

    let broker = &setup.broker;
    eventually("a dead letter", Duration::from_secs(30), async || {
        (broker.depth(&dead_queue(&setup)).await == 1).then_some(())
    })
    .await;
    let dead = broker.drain(&dead_queue(&setup)).await;
    assert_eq!(dead[0].headers["x-passerelle-http-status"], "400");
    assert!(
        dead[0].headers["x-passerelle-reason"].contains("unknown country"),
        "{:?}",
        dead[0].headers
    );
    assert_eq!(dead[0].headers["x-passerelle-attempt"], "1");
    assert_eq!(setup.server.calls().len(), 1, "no retry of a permanent error");
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_is_honoured() {
    let setup = Deployment::new().await;
    let config = setup.config(&ladder(2, &[]), "");
    let _host = setup.start_host(&config).await;
    setup
        .server
        .reply_next(Reply::status(429).with_header("Retry-After", "2"));
    setup.publish_accounts(0..1).await;

    let calls = setup.server.wait_for_calls(2, Duration::from_secs(30)).await;
    let waited = calls[1].at - calls[0].at;
    assert!(waited >= Duration::from_secs(2), "the retry came after only {waited:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outage_longer_than_the_quick_retries_rides_the_delayed_retry_queues() {
    let setup = Deployment::new().await;
    let delays = ["500ms", "1s"];
    let config = setup.config(&ladder(1, &delays), "");
    forget_retry_queues(&setup, &delays);
    let _host = setup.start_host(&config).await;
    // Attempt 1 (two tries) and attempt 2 (two tries) fail; attempt 3 succeeds.
    for _ in 0..4 {
        setup.server.reply_next(Reply::status(503));
    }
    setup.publish_accounts(0..1).await;

    let calls = setup.server.wait_for_calls(5, Duration::from_secs(30)).await;
    setup.wait_until_queue_is_empty(&setup.crm_queue).await;
    assert!(
        calls[2].at - calls[1].at >= Duration::from_millis(500),
        "first delayed retry too early"
    );
    assert!(
        calls[4].at - calls[3].at >= Duration::from_secs(1),
        "second delayed retry too early"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(setup.server.calls().len(), 5);
    assert_eq!(setup.broker.depth(&dead_queue(&setup)).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_breaker_keeps_messages_queued_during_an_outage_and_resumes() {
    let setup = Deployment::new().await;
    let delays = ["200ms"];
    let config = setup.config(
        &ladder(1, &delays),
        "    breaker: { failures: 3, cool_down: 500ms, max_cool_down: 1s }",
    );
    forget_retry_queues(&setup, &delays);
    let host = setup.start_host(&config).await;
    setup.server.reply_always(Some(Reply::status(503)));
    let total = 60;
    setup.publish_accounts(0..total).await;

    // A sustained outage: the breaker opens and the queue keeps its messages.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let attempts_during_outage = setup.server.calls().len();
    let depth = setup.broker.depth(&setup.crm_queue).await as usize;
    assert!(
        depth >= total - 20,
        "messages were taken during the outage: depth {depth}"
    );
    assert!(
        attempts_during_outage < 40,
        "the target was hammered: {attempts_during_outage} requests in 6 s"
    );
    assert_eq!(
        setup.broker.depth(&dead_queue(&setup)).await,
        0,
        "nothing dead-lettered"
    );

    setup.server.reply_always(None);
    setup.wait_until_every_account_arrives(total, &host).await;
    setup.wait_until_queue_is_empty(&setup.crm_queue).await;
    assert_eq!(
        setup.broker.depth(&dead_queue(&setup)).await,
        0,
        "nothing dead-lettered"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exhausted_ladder_dead_letters_and_the_dlq_tools_list_replay_and_purge() {
    let setup = Deployment::new().await;
    let delays = ["100ms", "200ms"];
    let config = setup.config(&ladder(0, &delays), "");
    forget_retry_queues(&setup, &delays);
    let host = setup.start_host(&config).await;
    setup
        .server
        .reply_always(Some(Reply::status(503).with_body("shop in maintenance")));
    setup.publish_accounts(0..1).await;

    let broker = &setup.broker;
    let dead = dead_queue(&setup);
    eventually("a dead letter", Duration::from_secs(30), async || {
        (broker.depth(&dead).await == 1).then_some(())
    })
    .await;
    assert_eq!(
        setup.server.calls().len(),
        3,
        "one try per rung: first, after 100ms, after 200ms"
    );

    let listing = String::from_utf8(dlq(&config, &["list"]).stdout).unwrap();
    assert!(listing.contains("1 dead letter(s)"), "{listing}");
    let row = listing
        .lines()
        .find(|l| l.starts_with("msg-0"))
        .unwrap_or_else(|| panic!("{listing}"));
    for expected in ["3", "503", "shop in maintenance"] {
        assert!(row.contains(expected), "{expected:?} not in {row:?}");
    }
    assert_eq!(broker.depth(&dead).await, 1, "listing leaves the dead letters in place");

    setup.server.reply_always(None);
    let replay = String::from_utf8(dlq(&config, &["replay", "--all"]).stdout).unwrap();
    assert!(replay.contains("replayed 1 message"), "{replay}");
    setup.server.wait_for_calls(4, Duration::from_secs(30)).await;
    setup.wait_until_queue_is_empty(&setup.crm_queue).await;
    assert_eq!(broker.depth(&dead).await, 0);

    setup.server.reply_always(Some(Reply::status(422)));
    setup.publish_accounts(1..3).await;
    eventually("two dead letters", Duration::from_secs(30), async || {
        (broker.depth(&dead).await == 2).then_some(())
    })
    .await;
    let replay_one = String::from_utf8(dlq(&config, &["replay", "--id", "msg-2"]).stdout).unwrap();
    assert!(replay_one.contains("replayed 1 message"), "{replay_one}");
    eventually(
        "the replayed message to fail again",
        Duration::from_secs(30),
        async || (broker.depth(&dead).await == 2).then_some(()),
    )
    .await;
    let purge = String::from_utf8(dlq(&config, &["purge"]).stdout).unwrap();
    assert!(purge.contains("purged 2 message"), "{purge}");
    assert_eq!(broker.depth(&dead).await, 0);
    drop(host);
}
