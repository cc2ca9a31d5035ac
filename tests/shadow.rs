//! Shadow runs end to end: the real `passerelle run` with its admin API,
//! the real broker, a real HTTP server standing in for the shop, the
//! shipped crm-to-shop live and real candidates beside it (`crm-to-shop-next`,
//! which gives inactive accounts another status; a panicking guest; a
//! component of another world). The report counts exactly the messages
//! whose actions differ and names the field with both values; nothing
//! from a candidate reaches the shop; a promotion swaps the candidate in;
//! a bad candidate is refused with the reason.

mod support;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use serde_json::{Value, json};
use support::{ADMIN_TOKEN, CRM_ACCOUNT, Deployment, Host, eventually, fixture, passerelle};

/// Inactive accounts map to 80 live; the candidate gives them 90.
const STATUS_CODES: &str = r#"    config: { status_codes: '{"CLIENT_ACTIVE": 70, "CLIENT_INACTIVE": 80}' }"#;
const BAD_COMPONENT: i32 = 13;
const FIXTURES_FAILED: i32 = 14;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// `passerelle shadow ROUTE ARGS...` against the host's admin API, with
/// only the admin token in its environment.
fn shadow_command(args: &[&str], config: &Path, admin: &str) -> Output {
    passerelle()
        .arg("shadow")
        .args(args)
        .args(["--admin", admin, "--config"])
        .arg(config)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("TEST_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn succeeded(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout: {}\nstderr: {stderr}",
        stdout(output)
    );
    stdout(output)
}

async fn get(url: &str) -> (u16, Value) {
    let response = client().get(url).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn live_version(admin: &str) -> String {
    let (_, listed) = get(&format!("{admin}/transforms")).await;
    let route = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|route| route["route"] == "crm-to-shop")
        .unwrap()
        .clone();
    route["version"].as_str().unwrap().to_string()
}

/// Waits until the shadow has compared `count` messages; returns its report.
async fn report_after(admin: &str, count: u64, host: &Host) -> Value {
    let url = format!("{admin}/transforms/crm-to-shop/shadow");
    eventually(
        &format!("the shadow to compare {count} messages"),
        Duration::from_secs(60),
        async || {
            let (status, report) = get(&url).await;
            assert_eq!(status, 200, "{report}\n{}", host.log());
            let seen = report["compared"].as_u64().unwrap() + report["skipped"].as_u64().unwrap();
            (seen >= count).then_some(report)
        },
    )
    .await
}

fn account(n: usize, status: &str) -> String {
    CRM_ACCOUNT
        .replace("gg-11", &format!("gg-{n}"))
        .replace("CLIENT_ACTIVE", status)
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_that_changes_one_field_is_reported_never_delivers_and_is_promoted() {
    let setup = Deployment::new().await;
    let config = setup.config_with_admin(STATUS_CODES, "");
    let host = setup.start_host(&config).await;
    let admin = host.admin_url().await;
    let live = live_version(&admin).await;
    let candidate = fixture("crm-to-shop-next");
    let candidate_version = passerelle::version::Version::of(&std::fs::read(&candidate).unwrap()).to_string();

    let started = succeeded(&shadow_command(
        &["crm-to-shop", candidate.to_str().unwrap()],
        &config,
        &admin,
    ));
    assert!(
        started.contains(&format!("candidate {candidate_version} beside live {live}")),
        "{started}"
    );

    // Nine accounts, every third inactive, and one the live version
    // rejects (an unknown status): the candidate rejects it the same way.
    let inactive: Vec<usize> = (0..9).filter(|n| n % 3 == 0).collect();
    for n in 0..9 {
        let status = if inactive.contains(&n) {
            "CLIENT_INACTIVE"
        } else {
            "CLIENT_ACTIVE"
        };
        let id = format!("msg-{n}");
        setup
            .broker
            .publish(
                &setup.crm_exchange,
                "account.updated",
                account(n, status).as_bytes(),
                Some(&id),
            )
            .await;
    }
    let unknown = account(9, "CLIENT_GONE");
    setup
        .broker
        .publish(
            &setup.crm_exchange,
            "account.updated",
            unknown.as_bytes(),
            Some("msg-9"),
        )
        .await;

    let report = report_after(&admin, 10, &host).await;
    assert_eq!(
        [
            &report["compared"],
            &report["identical"],
            &report["different"],
            &report["failing"],
            &report["skipped"]
        ],
        [&json!(10), &json!(7), &json!(3), &json!(0), &json!(0)],
        "{report}"
    );
    assert_eq!(report["candidate"], candidate_version.as_str());
    assert_eq!(report["live"], live.as_str());
    let mut different_ids: Vec<&str> = report["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|difference| {
            let expected = json!([{"path": "actions[0].args.status", "live": 80, "candidate": 90}]);
            assert_eq!(difference["fields"], expected, "{difference}");
            assert_eq!(difference["live_version"], live.as_str());
            difference["message_id"].as_str().unwrap()
        })
        .collect();
    different_ids.sort();
    assert_eq!(different_ids, ["msg-0", "msg-3", "msg-6"]);

    // The shop got the live version's nine requests, and nothing else.
    let calls = setup.server.wait_for_calls(9, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let calls_after = setup.server.calls();
    assert_eq!(calls_after.len(), 9, "{calls_after:#?}");
    for call in &calls {
        assert_eq!(call.header("x-passerelle-transform-version"), Some(live.as_str()));
        let body = support::json(&call.body);
        let crm_id = call.uri.rsplit('/').next().unwrap();
        let n: usize = crm_id["gg-".len()..].parse().unwrap();
        let expected = if inactive.contains(&n) { 80 } else { 70 };
        assert_eq!(body["status"], expected, "{body}");
    }

    let metrics = client()
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (outcome, count) in [("identical", 7.0), ("different", 3.0)] {
        let series = format!(r#"passerelle_shadow_messages_total{{route="crm-to-shop",outcome="{outcome}"}}"#);
        assert_eq!(metric(&metrics, &series), Some(count), "{series} in:\n{metrics}");
    }

    let shown = succeeded(&shadow_command(&["crm-to-shop", "--report"], &config, &admin));
    for line in [
        "compared 10: 7 identical, 3 different, 0 failing; 0 skipped",
        "actions[0].args.status: live 80, candidate 90",
    ] {
        assert!(shown.contains(line), "{line:?} not in:\n{shown}");
    }

    // Promotion: a swap; the shadow ends; the next message is the candidate's.
    let promoted = succeeded(&shadow_command(&["crm-to-shop", "--promote"], &config, &admin));
    assert!(
        promoted.contains(&format!(
            "promoted {candidate_version} on route crm-to-shop (was {live})"
        )),
        "{promoted}"
    );
    assert_eq!(live_version(&admin).await, candidate_version);
    let (status, _) = get(&format!("{admin}/transforms/crm-to-shop/shadow")).await;
    assert_eq!(status, 404);
    setup
        .broker
        .publish(
            &setup.crm_exchange,
            "account.updated",
            account(20, "CLIENT_INACTIVE").as_bytes(),
            Some("msg-20"),
        )
        .await;
    let calls = setup.server.wait_for_calls(10, Duration::from_secs(30)).await;
    let last = calls.last().unwrap();
    assert_eq!(
        last.header("x-passerelle-transform-version"),
        Some(candidate_version.as_str())
    );
    assert_eq!(support::json(&last.body)["status"], 90);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_candidate_is_counted_with_its_reason_and_a_bad_one_is_refused() {
    let setup = Deployment::new().await;
    let config = setup.config_with_admin(STATUS_CODES, "");
    let host = setup.start_host(&config).await;
    let admin = host.admin_url().await;
    let live = live_version(&admin).await;
    let url = format!("{admin}/transforms/crm-to-shop/shadow");

    // Another world: refused by the API (with the kind) and by the CLI (13).
    let wrong_world = std::fs::read(fixture("wrong-world")).unwrap();
    let refused = client()
        .post(&url)
        .bearer_auth(ADMIN_TOKEN)
        .body(wrong_world)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 422);
    let reason: Value = refused.json().await.unwrap();
    assert_eq!(reason["refusal"], "component");
    assert!(reason["error"].as_str().unwrap().contains("does not fit"), "{reason}");
    let cli = shadow_command(
        &["crm-to-shop", fixture("wrong-world").to_str().unwrap()],
        &config,
        &admin,
    );
    assert_eq!(cli.status.code(), Some(BAD_COMPONENT), "{}", stdout(&cli));

    // A fixture it fails: refused, naming the fixture (the CLI says 14).
    let dir = tempfile::tempdir().unwrap();
    let next = dir.path().join("next.wasm");
    std::fs::copy(fixture("crm-to-shop-next"), &next).unwrap();
    let expects_80 = json!([{
        "name": "an inactive account keeps status 80",
        "message": {"body": account(1, "CLIENT_INACTIVE")},
        "expect": {"actions": [{"type": "call", "endpoint": "shop", "operation": "upsertBusiness",
            "args": {"crmId": "gg-1", "business": {"name": "Eleven Labs"}, "status": 80, "country": {"id": 76}}}]}
    }]);
    std::fs::write(dir.path().join("next.fixtures.json"), expects_80.to_string()).unwrap();
    let cli = shadow_command(&["crm-to-shop", next.to_str().unwrap()], &config, &admin);
    assert_eq!(cli.status.code(), Some(FIXTURES_FAILED), "{}", stdout(&cli));
    assert!(
        String::from_utf8_lossy(&cli.stderr).contains("an inactive account keeps status 80"),
        "{cli:?}"
    );
    let (status, answer) = get(&url).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (404, Some("route crm-to-shop has no shadow running"))
    );

    // A candidate that crashes on every message: failing, with its reason.
    let panicking = std::fs::read(fixture("panicking")).unwrap();
    let started = client()
        .post(&url)
        .bearer_auth(ADMIN_TOKEN)
        .body(panicking.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 200, "{}", started.text().await.unwrap());
    let again = client()
        .post(&url)
        .bearer_auth(ADMIN_TOKEN)
        .body(panicking)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409, "one shadow per route");

    setup.publish_accounts(0..3).await;
    let report = report_after(&admin, 3, &host).await;
    assert_eq!(
        [
            &report["compared"],
            &report["failing"],
            &report["identical"],
            &report["different"]
        ],
        [&json!(3), &json!(3), &json!(0), &json!(0)],
        "{report}"
    );
    let failures = report["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 3);
    assert!(
        failures[0]["reason"].as_str().unwrap().contains("fixture panic: boom"),
        "{report}"
    );
    let calls = setup.server.wait_for_calls(3, Duration::from_secs(30)).await;
    assert!(
        calls
            .iter()
            .all(|call| call.header("x-passerelle-transform-version") == Some(live.as_str()))
    );

    // Stopped: the last report, then no shadow; the live version serves on.
    let stopped = succeeded(&shadow_command(&["crm-to-shop", "--stop"], &config, &admin));
    assert!(
        stopped.contains("compared 3: 0 identical, 0 different, 3 failing"),
        "{stopped}"
    );
    assert!(stopped.contains("fixture panic: boom"), "{stopped}");
    let (status, _) = get(&url).await;
    assert_eq!(status, 404);
    assert_eq!(live_version(&admin).await, live);
}
