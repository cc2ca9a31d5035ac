//! The stale-update guard, end to end: real hosts, the real broker (the
//! guard's ledger is a stream on it), a real HTTP server as the shop and
//! the shipped crm-to-shop component. An update that failed and comes back
//! from its delayed retry after a newer one succeeded is dropped; so is an
//! old update replayed to a restarted host, and to a second host that
//! learned the newer one from the first while it ran.

mod support;

use std::time::Duration;

use support::*;

const DROPPED_STALE: &str = r#"passerelle_messages_dropped_total{route="crm-to-shop",reason="stale"}"#;
const DELIVERED: &str = r#"passerelle_messages_delivered_total{route="crm-to-shop"}"#;

/// gg-11 named `name`, as the CRM last modified it at 10:`minute`.
fn account(name: &str, minute: u32) -> String {
    format!(
        r#"{{"Id": "gg-11", "Name": "{name}", "Status__c": "CLIENT_ACTIVE", "Country__c": "FR", "LastModifiedDate": "2024-05-01T10:{minute:02}:00.000Z"}}"#
    )
}

/// The names the shop was sent for gg-11, in order.
fn names_sent(setup: &Deployment) -> Vec<String> {
    setup
        .server
        .calls()
        .iter()
        .map(|call| json(&call.body)["business"]["name"].as_str().unwrap().to_string())
        .collect()
}

async fn publish(setup: &Deployment, body: &str, id: &str) {
    setup
        .broker
        .publish(&setup.crm_exchange, "account.updated", body.as_bytes(), Some(id))
        .await;
}

#[tokio::test]
async fn a_retry_older_than_an_applied_update_is_dropped_across_restarts_and_hosts() {
    let setup = Deployment::new().await;
    let retry_queue = format!("{}.retry.2s", setup.crm_queue);
    setup.broker.also_delete_queue(&retry_queue);
    setup.broker.also_delete_queue(&format!("{}.guard", setup.crm_queue));
    let config = setup.config_with_admin(
        "    retry: { immediate: 0, delays: [2s] }\n    guard: { entity: /Id, order: /LastModifiedDate, compare: timestamp }\n",
        "",
    );
    let mut first = setup.start_host(&config).await;
    let admin = first.admin_url().await;

    // The 10:00 update fails and waits 2 s; the 10:05 one succeeds meanwhile.
    setup.server.reply_next(Reply::status(503));
    publish(&setup, &account("Old name", 0), "update-1000").await;
    setup.server.wait_for_calls(1, Duration::from_secs(30)).await;
    publish(&setup, &account("New name", 5), "update-1005").await;
    setup.server.wait_for_calls(2, Duration::from_secs(30)).await;
    // The 10:00 update comes back from its retry queue, and is dropped.
    wait_for_metric(&admin, DROPPED_STALE, 1.0).await;
    for queue in [&setup.crm_queue, &retry_queue] {
        setup.wait_until_queue_is_empty(queue).await;
    }
    assert_eq!(
        names_sent(&setup),
        ["Old name", "New name"],
        "the shop keeps the newer value"
    );
    assert_eq!(setup.broker.depth(&format!("{}.dead", setup.crm_queue)).await, 0);
    assert!(first.terminate().success());

    // A restarted host replays the ledger: the old update, sent again, is
    // dropped; the applied one, sent again, is not older, so it is delivered.
    let restarted = setup.start_host(&config).await;
    let admin = restarted.admin_url().await;
    publish(&setup, &account("Old name", 0), "update-1000").await;
    wait_for_metric(&admin, DROPPED_STALE, 1.0).await;
    publish(&setup, &account("New name", 5), "update-1005").await;
    setup.server.wait_for_calls(3, Duration::from_secs(30)).await;
    assert_eq!(names_sent(&setup), ["Old name", "New name", "New name"]);

    // Two hosts: the one that delivers 10:10 records it, the other learns
    // it while running; stop the first, and the other drops a 10:05 update.
    let second = setup.start_nth_host(&config, 2, &[]).await;
    let admins = [admin, second.admin_url().await];
    let mut hosts = [restarted, second];
    let before: Vec<f64> = futures_util::future::join_all(admins.iter().map(|a| metric(a, DELIVERED))).await;
    publish(&setup, &account("Newest name", 10), "update-1010").await;
    setup.server.wait_for_calls(4, Duration::from_secs(30)).await;
    let delivering = eventually("a host to count the delivery", Duration::from_secs(10), async || {
        for (index, admin) in admins.iter().enumerate() {
            if metric(admin, DELIVERED).await > before[index] {
                return Some(index);
            }
        }
        None
    })
    .await;
    assert!(hosts[delivering].terminate().success());
    let other = 1 - delivering;
    publish(&setup, &account("New name", 5), "update-1005-again").await;
    wait_for_metric(&admins[other], DROPPED_STALE, 1.0).await;
    setup.wait_until_queue_is_empty(&setup.crm_queue).await;
    assert_eq!(names_sent(&setup), ["Old name", "New name", "New name", "Newest name"]);
    drop(hosts);
}

#[tokio::test]
async fn a_guarded_message_without_an_ordering_value_is_dead_lettered_with_the_reason() {
    let setup = Deployment::new().await;
    setup.broker.also_delete_queue(&format!("{}.guard", setup.crm_queue));
    let config = setup.config("    guard: { entity: /Id, order: /LastModifiedDate }\n", "");
    let _host = setup.start_host(&config).await;
    setup.publish_crm_account("no-date").await;
    let dead_letter_queue = format!("{}.dead", setup.crm_queue);
    let dead = eventually("the dead letter", Duration::from_secs(30), async || {
        let taken = setup.broker.drain(&dead_letter_queue).await;
        (!taken.is_empty()).then_some(taken)
    })
    .await;
    let reason = &dead[0].headers["x-passerelle-reason"];
    assert!(reason.contains("no ordering value at /LastModifiedDate"), "{reason}");
    assert!(setup.server.calls().is_empty());
}

#[tokio::test]
async fn after_a_lost_connection_the_guard_still_learns_other_hosts_records() {
    let setup = Deployment::new().await;
    let ledger = format!("{}.guard", setup.crm_queue);
    setup.broker.also_delete_queue(&ledger);
    let config = setup.config_with_admin("    guard: { entity: /Id, order: /LastModifiedDate }\n", "");
    let host = setup.start_host(&config).await;
    let admin = host.admin_url().await;

    close_connection_of(host.pid());
    eventually("the host to reconnect", Duration::from_secs(60), async || {
        (host.log().matches("connected to the broker").count() >= 2).then_some(())
    })
    .await;
    setup.broker.wait_for_consumers(&setup.crm_queue, 1).await;

    // Another host applied gg-11 as of 10:30 (its record, as a host writes it).
    let record = r#"{"kind": "set", "key": "gg-11", "value": "2024-05-01T10:30:00Z", "origin": "another-host"}"#;
    setup.broker.publish("", &ledger, record.as_bytes(), None).await;
    // The record travels on its own stream; give it time to arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    publish(&setup, &account("Older name", 20), "update-1020").await;
    wait_for_metric(&admin, DROPPED_STALE, 1.0).await;
    publish(&setup, &account("Newer name", 40), "update-1040").await;
    setup.server.wait_for_calls(1, Duration::from_secs(30)).await;
    assert_eq!(names_sent(&setup), ["Newer name"]);
}
