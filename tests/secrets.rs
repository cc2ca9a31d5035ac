//! No secret leaves the host. Failures are provoked with every kind of
//! secret configured: an endpoint that answers 401 echoing the bearer token
//! it was sent, an OAuth2 token endpoint that refuses and echoes the client
//! secret, a broker URL with a wrong password, the fleet's signing key in
//! the host's environment. None of the secrets may appear in the dead
//! letters' headers, `/metrics`, `/status`, `/transforms`, the host's log,
//! or the output of the commands. What the test sees is also kept for
//! scripts/test's scan of the whole suite.

mod support;

use std::time::Duration;

use support::{ADMIN_TOKEN, Deployment, HttpServer, Reply, TEST_SECRETS, eventually, operator_command};

const WRONG_BROKER_PASSWORD: &str = "wrong-broker-password";

/// Every secret of the test: the values of `TEST_SECRETS` but the OAuth2
/// client id (an id, not a secret), and the broker's password in its URL.
fn secrets() -> Vec<&'static str> {
    let mut secrets: Vec<&str> = TEST_SECRETS
        .iter()
        .filter(|(name, _)| *name != "TEST_CRM_CLIENT_ID")
        .map(|(_, value)| *value)
        .collect();
    secrets.extend(["guest:guest@", WRONG_BROKER_PASSWORD]);
    secrets
}

fn assert_no_secret(what: &str, text: &str) {
    support::keep_seen("secrets", &format!("{what}\n{text}"));
    for secret in secrets() {
        assert!(!text.contains(secret), "{what} shows the secret {secret:?}:\n{text}");
    }
}

async fn admin_get(admin: &str, path: &str) -> String {
    let response = reqwest::Client::new()
        .get(format!("{admin}{path}"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{path}");
    response.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_with_secrets_configured_leave_them_nowhere() {
    let setup = Deployment::new().await;
    let no_retries = "    retry: { immediate: 0, delays: [] }";
    let config = setup.config_with_admin(no_retries, "");
    // The CRM's token endpoint is a server of its own that refuses, echoing
    // the client secret; shop-to-crm dead-letters at the first failure.
    let token_server = HttpServer::start().await;
    token_server.reply_always(Some(
        Reply::status(401).with_body("invalid_client: client_secret=crm-client-secret is unknown"),
    ));
    let yaml = std::fs::read_to_string(&config)
        .unwrap()
        .replace(&setup.server.url("oauth/token"), &token_server.url("token"))
        .replace(
            "    endpoints: [salesforce]\n",
            &format!("    endpoints: [salesforce]\n{no_retries}\n"),
        );
    std::fs::write(&config, yaml).unwrap();
    // The shop refuses the token, echoing it.
    setup.server.reply_always(Some(
        Reply::status(401).with_body("the token shop-secret-token was revoked (Bearer shop-secret-token)"),
    ));
    let host = setup.start_host(&config).await;

    setup.publish_crm_account("msg-secret-1").await;
    setup.publish_shop_business("msg-secret-2").await;

    for queue in [&setup.crm_queue, &setup.shop_queue] {
        let dead = format!("{queue}.dead");
        eventually(
            &format!("a dead letter in {dead}"),
            Duration::from_secs(60),
            async || (setup.broker.depth(&dead).await == 1).then_some(()),
        )
        .await;
    }
    let [shop_letter] = setup
        .broker
        .drain(&format!("{}.dead", setup.crm_queue))
        .await
        .try_into()
        .unwrap();
    let reason = &shop_letter.headers["x-passerelle-reason"];
    assert!(
        reason.contains("HTTP 401") && reason.contains("the token *** was revoked"),
        "{reason}"
    );
    assert_no_secret("the shop's dead letter", &format!("{:?}", shop_letter.headers));
    let [crm_letter] = setup
        .broker
        .drain(&format!("{}.dead", setup.shop_queue))
        .await
        .try_into()
        .unwrap();
    assert!(
        crm_letter.headers["x-passerelle-reason"].contains("OAuth2 token"),
        "{:?}",
        crm_letter.headers
    );
    assert_no_secret("the CRM's dead letter", &format!("{:?}", crm_letter.headers));

    let admin = host.admin_url().await;
    for path in ["/metrics", "/status", "/transforms"] {
        assert_no_secret(path, &admin_get(&admin, path).await);
    }
    assert_no_secret("the host's log", &host.log());

    let listed = operator_command(&["dlq", "list", "crm-to-shop"], &config);
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    assert_no_secret("dlq list", &String::from_utf8_lossy(&listed.stdout));

    // A broker URL with a wrong password: the error names the URL, hidden.
    let yaml = std::fs::read_to_string(&config).unwrap();
    let wrong = yaml.replace("guest:guest@", &format!("guest:{WRONG_BROKER_PASSWORD}@"));
    std::fs::write(&config, wrong).unwrap();
    for command in [&["dlq", "list", "crm-to-shop"][..], &["rollback", "crm-to-shop"]] {
        let failed = operator_command(command, &config);
        let stderr = String::from_utf8_lossy(&failed.stderr);
        assert_eq!(failed.status.code(), Some(1), "{command:?}: {stderr}");
        assert!(stderr.contains("guest:***@127.0.0.1"), "{command:?}: {stderr}");
        assert_no_secret(&format!("{command:?}"), &stderr);
    }
}
