//! Signed fleet deploys, against the real broker, real hosts (processes)
//! and real components. What someone with broker access publishes to the
//! control exchange (unsigned, signed with another key, a signature of
//! other bytes or for another route, garbage) is refused before it is
//! compiled, logged and counted, and v1 keeps serving the next message; a
//! deploy signed with the fleet's key swaps every host that holds its
//! public key; a rollback republishes only what the key signed.

mod support;

use std::path::Path;
use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use passerelle::reload::signature::DeploySigner;
use support::{ConfigDir, Deployment, Host, eventually, fleet_signer, new_version, operator_command};

const ROUTE: &str = "crm-to-shop";
const SIGNATURE: &str = "x-passerelle-signature";

fn version_of(bytes: &[u8]) -> String {
    passerelle::version::Version::of(bytes).to_string()
}

fn shipped_version() -> String {
    version_of(&std::fs::read(support::transform(ROUTE)).unwrap())
}

/// The last log line containing `what`.
fn last_line(host: &Host, what: &str) -> String {
    let log = host.log();
    log.lines()
        .rev()
        .find(|line| line.contains(what))
        .unwrap_or_else(|| panic!("no line with {what:?} in:\n{log}"))
        .to_string()
}

fn headers(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in pairs {
        table.insert((*name).into(), value.clone());
    }
    table
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

/// Publishes to the test's control exchange as anyone with broker access
/// could: any body, any headers.
async fn publish_control(setup: &Deployment, routing_key: &str, body: &[u8], properties: BasicProperties) {
    setup
        .broker
        .publish_with_properties(&setup.control_exchange, routing_key, body, properties)
        .await;
}

async fn attack(setup: &Deployment, body: &[u8], table: FieldTable) {
    let properties = BasicProperties::default().with_headers(table);
    publish_control(setup, &format!("deploy.{ROUTE}"), body, properties).await;
}

/// Publishes account `n` and returns the version that delivered it.
async fn version_serving(setup: &Deployment, n: usize) -> String {
    setup.publish_accounts(n..n + 1).await;
    let account = format!("/gg-{n}");
    eventually(
        &format!("account gg-{n} delivered"),
        Duration::from_secs(30),
        async || {
            let calls = setup.server.calls();
            let call = calls.iter().find(|call| call.uri.ends_with(&account))?;
            Some(call.header("x-passerelle-transform-version")?.to_string())
        },
    )
    .await
}

async fn metrics(host: &Host) -> String {
    let admin = host.admin_url().await;
    let text = reqwest::Client::new()
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    support::keep_seen("metrics", &text);
    text
}

fn deploy(config: &Path, component: &[u8], dir: &Path) -> std::process::Output {
    let file = dir.join(format!("{}.wasm", version_of(component)));
    std::fs::write(&file, component).unwrap();
    operator_command(&["deploy", ROUTE, &file.display().to_string()], config)
}

fn assert_success(output: &std::process::Output) {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[tokio::test(flavor = "multi_thread")]
async fn unsigned_and_wrongly_signed_deploys_are_refused_and_v1_keeps_serving() {
    let setup = Deployment::new().await;
    let config_a = setup.config_with_admin("", "");
    let other_dir = ConfigDir::new();
    let config_b = setup.config_in(&other_dir, "", "");
    let v1 = shipped_version();
    let host_a = setup.start_nth_host(&config_a, 1, &[]).await;
    let host_b = setup.start_nth_host(&config_b, 2, &[]).await;

    let fleet = fleet_signer();
    let intruder = DeploySigner::generate();
    let payload = new_version();
    let other_bytes = new_version();
    let attacks: [(&str, FieldTable, &str); 5] = [
        ("unsigned", headers(&[]), "unsigned"),
        (
            "signed with another key",
            headers(&[(SIGNATURE, text(&intruder.sign(ROUTE, &payload, None)))]),
            "does not match the fleet's key",
        ),
        (
            "the fleet's signature of other bytes",
            headers(&[(SIGNATURE, text(&fleet.sign(ROUTE, &other_bytes, None)))]),
            "does not match the fleet's key",
        ),
        (
            "the fleet's signature for another route",
            headers(&[(SIGNATURE, text(&fleet.sign("shop-to-crm", &payload, None)))]),
            "does not match the fleet's key",
        ),
        (
            "the fleet's signature, fixtures added",
            headers(&[
                (SIGNATURE, text(&fleet.sign(ROUTE, &payload, None))),
                ("x-passerelle-fixtures", text("[]")),
            ]),
            "does not match the fleet's key",
        ),
    ];
    let refused = format!("refused deploy of {}", version_of(&payload));
    for (index, (what, table, reason)) in attacks.into_iter().enumerate() {
        attack(&setup, &payload, table).await;
        for host in [&host_a, &host_b] {
            host.wait_for_log(&refused, index + 1).await;
            let line = last_line(host, &refused);
            assert!(
                line.contains(reason) && line.contains(&format!("{v1} keeps serving")),
                "{what}: {line}"
            );
            assert!(line.contains("an unnamed publisher"), "{what}: {line}");
        }
        assert_eq!(version_serving(&setup, index).await, v1, "after the deploy {what}");
    }

    // Who published is logged as the broker vouches for it.
    let properties = BasicProperties::default()
        .with_user_id("guest".into())
        .with_app_id("intruder".into());
    publish_control(&setup, &format!("deploy.{ROUTE}"), &payload, properties).await;
    host_a.wait_for_log(&refused, 6).await;
    let line = last_line(&host_a, &refused);
    assert!(line.contains(r#"from user "guest", app "intruder""#), "{line}");
    assert_eq!(version_serving(&setup, 10).await, v1);

    // Refused before validation: counted apart, and no reload refused.
    let metrics = metrics(&host_a).await;
    let count = |series: &str| {
        metrics
            .lines()
            .find(|line| line.starts_with(series))
            .map(str::to_string)
    };
    let unsigned = r#"passerelle_fleet_deploys_refused_total{route="crm-to-shop",reason="unsigned"} 2"#;
    let forged = r#"passerelle_fleet_deploys_refused_total{route="crm-to-shop",reason="bad_signature"} 4"#;
    assert_eq!(count(unsigned).as_deref(), Some(unsigned), "{metrics}");
    assert_eq!(count(forged).as_deref(), Some(forged), "{metrics}");
    assert_eq!(count("passerelle_reloads_total"), None, "{metrics}");
    for host in [&host_a, &host_b] {
        assert!(!host.log().contains("refused transform"), "validated:\n{}", host.log());
    }
    let stored = other_dir.dir.path().join(format!("{ROUTE}.wasm"));
    assert_eq!(version_of(&std::fs::read(stored).unwrap()), v1, "nothing stored");

    // A host started later refuses them in the history too, and serves v1.
    let late_dir = ConfigDir::new();
    let config_c = setup.config_in(&late_dir, "", "");
    let host_c = setup.start_nth_host(&config_c, 3, &[]).await;
    assert!(host_c.log().contains(&refused), "{}", host_c.log());
    assert!(!host_c.log().contains("(latest deploy"), "{}", host_c.log());
    drop((host_a, host_b));
    assert_eq!(version_serving(&setup, 20).await, v1);
}

#[tokio::test(flavor = "multi_thread")]
async fn control_messages_that_are_not_deploys_are_refused_cleanly_and_the_host_keeps_serving() {
    let setup = Deployment::new().await;
    let config = setup.config_with_admin("", "");
    let v1 = shipped_version();
    let host = setup.start_host(&config).await;
    let fleet = fleet_signer();
    let signed = |body: &[u8]| headers(&[(SIGNATURE, text(&fleet.sign(ROUTE, body, None)))]);
    let truncated_signature = fleet.sign(ROUTE, b"garbage", None)[..20].to_string();
    let truncated_component = new_version()[..4000].to_vec();

    // Refused by their signature, before anything reads them.
    let unsigned: [(&str, &[u8], FieldTable, &str); 6] = [
        ("empty, no headers", b"", headers(&[]), "unsigned"),
        ("garbage bytes", b"\x00\xffgarbage", headers(&[]), "unsigned"),
        (
            "a signature that is a number",
            b"garbage",
            headers(&[(SIGNATURE, AMQPValue::LongLongInt(42))]),
            "not the base64 of 64 bytes",
        ),
        (
            "a signature that is a table",
            b"garbage",
            headers(&[(SIGNATURE, AMQPValue::FieldTable(FieldTable::default()))]),
            "unsigned",
        ),
        (
            "a truncated signature",
            b"garbage",
            headers(&[(SIGNATURE, text(&truncated_signature))]),
            "not the base64 of 64 bytes",
        ),
        (
            "fixtures that are bytes",
            b"garbage",
            headers(&[("x-passerelle-fixtures", AMQPValue::ByteArray(vec![0xff, 0x00].into()))]),
            "unsigned",
        ),
    ];
    for (index, (what, body, table, reason)) in unsigned.into_iter().enumerate() {
        attack(&setup, body, table).await;
        host.wait_for_log("refused deploy of", index + 1).await;
        let line = last_line(&host, "refused deploy of");
        assert!(line.contains(reason), "{what}: {line}");
        assert_eq!(version_serving(&setup, index).await, v1, "after {what}");
    }
    assert!(!host.log().contains("refused transform"), "{}", host.log());

    // Signed, so validated: refused there, the old version serving.
    let not_components: [(&str, Vec<u8>, &str); 3] = [
        ("signed garbage", b"garbage".to_vec(), "not a WebAssembly file"),
        ("a signed empty body", Vec::new(), "not a WebAssembly file"),
        ("a signed truncated component", truncated_component, "does not compile"),
    ];
    for (index, (what, body, reason)) in not_components.into_iter().enumerate() {
        attack(&setup, &body, signed(&body)).await;
        host.wait_for_log(&format!("{v1} keeps serving"), 6 + index + 1).await;
        let line = last_line(&host, "refused transform");
        assert!(line.contains(reason), "{what}: {line}");
        assert_eq!(version_serving(&setup, 10 + index).await, v1, "after {what}");
    }

    // The listener lived through it all: a signed deploy still swaps.
    let v2_bytes = new_version();
    let v2 = version_of(&v2_bytes);
    assert_success(&deploy(&config, &v2_bytes, setup.config_dir.dir.path()));
    host.wait_for_log(&format!("swapped transform {v1} -> {v2}"), 1).await;
    assert_eq!(version_serving(&setup, 20).await, v2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_deploy_swaps_hosts_with_the_key_and_rollback_republishes_only_what_it_signed() {
    let setup = Deployment::new().await;
    let config_a = setup.config("", "");
    // Host B has no fleet section: it refuses every deploy.
    let keyless_dir = ConfigDir::new();
    let config_b = setup.config_in(&keyless_dir, "", "");
    let keyless = std::fs::read_to_string(&config_b)
        .unwrap()
        .replace(&support::fleet_section(), "");
    std::fs::write(&config_b, keyless).unwrap();
    let v1 = shipped_version();
    let host_a = setup.start_nth_host(&config_a, 1, &[]).await;
    let host_b = setup.start_nth_host(&config_b, 2, &[]).await;
    assert!(host_b.log().contains("fleet deploys: all refused"), "{}", host_b.log());

    let v2_bytes = new_version();
    let v2 = version_of(&v2_bytes);
    assert_success(&deploy(&config_a, &v2_bytes, setup.config_dir.dir.path()));
    host_a.wait_for_log(&format!("swapped transform {v1} -> {v2}"), 1).await;
    host_b.wait_for_log(&format!("refused deploy of {v2}"), 1).await;
    assert!(last_line(&host_b, "refused deploy of").contains("accepts no deploys"));

    // An intruder's v3 lands in the history too; hosts refuse it.
    let v3_bytes = new_version();
    let v3 = version_of(&v3_bytes);
    attack(&setup, &v3_bytes, headers(&[])).await;
    host_a.wait_for_log(&format!("refused deploy of {v3}"), 1).await;

    // A host started now takes v2, the latest signed deploy, not v3.
    let late_dir = ConfigDir::new();
    let config_c = setup.config_in(&late_dir, "", "");
    let host_c = setup.start_nth_host(&config_c, 3, &[]).await;
    let log = host_c.log();
    assert!(log.contains(&format!("-> {v2} (latest deploy")), "{log}");
    assert!(log.contains(&format!("refused deploy of {v3}")), "{log}");

    // Rollback skips v3: it goes from v2 to v1, signed anew.
    let rolled_back = operator_command(&["rollback", ROUTE], &config_a);
    assert_success(&rolled_back);
    let said = String::from_utf8_lossy(&rolled_back.stdout);
    assert!(said.contains(&format!("back from {v2} to {v1}")), "{said}");
    for host in [&host_a, &host_c] {
        host.wait_for_log(&format!("swapped transform {v2} -> {v1}"), 1).await;
    }
    assert!(!host_a.log().contains(&format!("-> {v3}")), "{}", host_a.log());
}

/// `deploy` as an operator runs it, with `env` only.
fn deploy_with_env(config: &Path, env: &[(&str, &str)]) -> std::process::Output {
    let output = support::passerelle()
        .args([
            "deploy",
            ROUTE,
            &support::transform(ROUTE).display().to_string(),
            "--config",
        ])
        .arg(config)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .unwrap();
    support::keep_for_secret_scan("passerelle deploy", &output);
    output
}

#[tokio::test(flavor = "multi_thread")]
async fn deploys_without_a_good_key_are_refused_at_start_naming_the_key_not_its_value() {
    let setup = Deployment::new().await;
    let config = setup.config("", "");
    let file = config.display().to_string();
    let variable = support::FLEET_SIGNING_KEY_ENV;
    let not_a_key = "not-a-key-but-still-a-secret";
    let other_key = DeploySigner::generate().to_base64();
    // What is wrong, the environment it runs with, the error expected.
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, String);
    let cases: [Case; 3] = [
        (
            "no key",
            vec![],
            format!("fleet.signing_key_env: environment variable {variable} is not set"),
        ),
        (
            "not a key",
            vec![(variable, not_a_key)],
            format!("fleet.signing_key_env: environment variable {variable} is not base64"),
        ),
        (
            "another key",
            vec![(variable, other_key.as_str())],
            format!(
                "fleet.verify_key: {:?} is not the public key",
                fleet_signer().verifier().to_base64()
            ),
        ),
    ];
    for (what, env, expected) in cases {
        let output = deploy_with_env(&config, &env);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{what}: {stderr}");
        assert!(stderr.contains(&format!("{file}: {expected}")), "{what}: {stderr}");
        for (_, value) in &env {
            assert!(!stderr.contains(value), "{what}: the key in the error: {stderr}");
        }
    }

    // A verify key that is not one, and a contradiction, are refused too.
    let yaml = std::fs::read_to_string(&config).unwrap();
    let fleet = support::fleet_section();
    let refusals = [
        (
            "fleet:\n  verify_key: abc\n",
            r#"fleet.verify_key: "abc" is not base64"#,
        ),
        (
            "fleet:\n  verify_key: AAAA\n",
            r#"fleet.verify_key: "AAAA" is 3 bytes long; an ed25519 public key is 32"#,
        ),
        (
            &format!("{fleet}  unsigned: allow\n"),
            "fleet.unsigned: allow contradicts fleet.verify_key",
        ),
        ("fleet:\n  unsigned: maybe\n", "fleet.unsigned: unknown variant `maybe`"),
    ];
    for (section, expected) in refusals {
        std::fs::write(&config, yaml.replace(&fleet, section)).unwrap();
        let output = deploy_with_env(&config, &[(variable, support::FLEET_SIGNING_KEY)]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{section}: {stderr}");
        assert!(stderr.contains(&format!("{file}: {expected}")), "{section}: {stderr}");
        assert!(!stderr.contains(support::FLEET_SIGNING_KEY), "{stderr}");
    }
}

#[test]
fn keygen_writes_a_private_key_file_and_prints_the_public_key() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("fleet.key");
    let output = support::passerelle().arg("keygen").arg(&key_file).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let private = std::fs::read_to_string(&key_file).unwrap();
    let signer = DeploySigner::from_base64(&private).unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(&format!("verify_key: {}", signer.verifier().to_base64())),
        "{stdout}"
    );
    assert!(!stdout.contains(private.trim()), "the private key was printed");

    let again = support::passerelle().arg("keygen").arg(&key_file).output().unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert_eq!(
        std::fs::read_to_string(&key_file).unwrap(),
        private,
        "an existing key is kept"
    );
}
