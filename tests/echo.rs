//! Echo suppression in two-way sync, end to end: one host runs both
//! shipped routes (crm-to-shop, shop-to-crm) sharing an echo ledger on the
//! real broker; a real HTTP server plays the shop and the CRM. A CRM
//! change written to the shop comes back as the shop's event and makes no
//! CRM call; a genuine shop change does, and its own echo from the CRM
//! makes no shop call.

mod support;

use std::time::Duration;

use support::*;

const SHOP_SIDE: &str = "{ endpoint: shop, entity: /crmId, fields: [/business/name, /status, /country/id] }";
const CRM_EVENT_SIDE: &str = "{ endpoint: salesforce, entity: /Id, fields: [/Name, /Status__c, /Country__c] }";
const CRM_WRITE_SIDE: &str = "{ endpoint: salesforce, entity: /accountId, fields: [/Name, /Status__c, /Country__c] }";

fn dropped_echo(route: &str) -> String {
    format!(r#"passerelle_messages_dropped_total{{route="{route}",reason="echo"}}"#)
}

/// Calls that reached the shop and the CRM, apart.
fn calls_to(setup: &Deployment, path: &str) -> Vec<Received> {
    setup
        .server
        .calls()
        .into_iter()
        .filter(|call| call.uri.contains(path))
        .collect()
}

/// What the shop announces after a write: its business, with the CRM id.
fn shop_event(put: &Received) -> Vec<u8> {
    let mut event = json(&put.body);
    event["crmId"] = put.uri.rsplit('/').next().unwrap().into();
    serde_json::to_vec(&event).unwrap()
}

/// What the CRM announces after a write: the account, with its id.
fn crm_event(patch: &Received) -> Vec<u8> {
    let mut event = json(&patch.body);
    event["Id"] = patch.uri.rsplit('/').next().unwrap().into();
    serde_json::to_vec(&event).unwrap()
}

async fn publish(setup: &Deployment, exchange: &str, routing_key: &str, body: &[u8], id: &str) {
    setup.broker.publish(exchange, routing_key, body, Some(id)).await;
}

#[tokio::test]
async fn a_write_coming_back_makes_no_call_and_a_genuine_change_does() {
    let setup = Deployment::new().await;
    let ledger = format!("accounts.echo.{}", unique_suffix());
    setup.broker.also_delete_queue(&ledger);
    let crm_echo =
        format!("    echo:\n      ledger: {ledger}\n      source: {CRM_EVENT_SIDE}\n      target: {SHOP_SIDE}\n");
    let config = setup.config_with_admin(&crm_echo, "");
    let shop_echo =
        format!("    echo:\n      ledger: {ledger}\n      source: {SHOP_SIDE}\n      target: {CRM_WRITE_SIDE}\n");
    let yaml = std::fs::read_to_string(&config).unwrap();
    let yaml = yaml.replacen(
        "    endpoints: [salesforce]\n",
        &format!("    endpoints: [salesforce]\n{shop_echo}"),
        1,
    );
    std::fs::write(&config, yaml).unwrap();
    let host = setup.start_host(&config).await;
    let admin = host.admin_url().await;
    let (crm, shop) = (&setup.crm_exchange, &setup.shop_exchange);

    // A CRM change reaches the shop; the shop's event for it comes back.
    setup.publish_crm_account("crm-1").await;
    let put = setup.server.wait_for_calls(1, Duration::from_secs(30)).await.remove(0);
    publish(&setup, shop, "business.updated", &shop_event(&put), "shop-1").await;
    wait_for_metric(&admin, &dropped_echo("shop-to-crm"), 1.0).await;
    assert!(calls_to(&setup, "/sobjects/").is_empty(), "the echo made no CRM call");

    // A genuine shop change reaches the CRM; the CRM's event for it comes back.
    let renamed = SHOP_BUSINESS.replace("Eleven Labs", "Eleven Labs SAS");
    publish(&setup, shop, "business.updated", renamed.as_bytes(), "shop-2").await;
    let patch = setup.server.wait_for_calls(2, Duration::from_secs(30)).await.remove(1);
    assert!(patch.uri.ends_with("/sobjects/Account/gg-11"), "{}", patch.uri);
    assert_eq!(json(&patch.body)["Name"], "Eleven Labs SAS");
    publish(&setup, crm, "account.updated", &crm_event(&patch), "crm-2").await;
    wait_for_metric(&admin, &dropped_echo("crm-to-shop"), 1.0).await;
    assert_eq!(calls_to(&setup, "/businesses/").len(), 1, "the echo made no shop call");

    // Changing the name back at the shop is a change again, not an echo.
    publish(&setup, shop, "business.updated", SHOP_BUSINESS.as_bytes(), "shop-3").await;
    let patch = setup.server.wait_for_calls(3, Duration::from_secs(30)).await.remove(2);
    assert_eq!(json(&patch.body)["Name"], "Eleven Labs");
    for queue in [&setup.crm_queue, &setup.shop_queue] {
        setup.wait_until_queue_is_empty(queue).await;
    }
    assert_eq!(metric(&admin, &dropped_echo("shop-to-crm")).await, 1.0);
    assert_eq!(metric(&admin, &dropped_echo("crm-to-shop")).await, 1.0);
}
