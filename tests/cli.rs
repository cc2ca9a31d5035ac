//! `passerelle transform` and `passerelle check` on the real components
//! built from this repository: the shipped mappings, and hostile guests
//! that must fail their call without taking the host down.

mod support;

use std::io::Write as _;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use support::{CRM_ACCOUNT, SHOP_BUSINESS, fixture, passerelle, transform};

const REJECT: i32 = 10;
const TRAP: i32 = 12;
const BAD_COMPONENT: i32 = 13;

fn run_transform(component: &Path, body: &str, extra: &[&str]) -> Output {
    let mut child = passerelle()
        .arg("transform")
        .arg("--component")
        .arg(component)
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The single call a mapping produced: (endpoint, operation, args).
fn single_call(output: &Output) -> (String, String, serde_json::Value) {
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(output));
    let actions = support::json(&output.stdout);
    let [action] = actions.as_array().unwrap().as_slice() else {
        panic!("expected one action, got {actions}");
    };
    assert_eq!(action["type"], "call");
    (
        action["endpoint"].as_str().unwrap().into(),
        action["operation"].as_str().unwrap().into(),
        action["args"].clone(),
    )
}

fn assert_rejected(output: &Output, expected_words: &[&str]) {
    let text = stderr(output);
    assert_eq!(output.status.code(), Some(REJECT), "stderr: {text}");
    assert!(text.starts_with("reject: "), "stderr: {text}");
    for word in expected_words {
        assert!(text.contains(word), "{word:?} not in: {text}");
    }
}

#[test]
fn the_crm_example_becomes_the_shop_body() {
    let output = run_transform(&transform("crm-to-shop"), CRM_ACCOUNT, &[]);
    let (endpoint, operation, args) = single_call(&output);
    assert_eq!((endpoint.as_str(), operation.as_str()), ("shop", "upsertBusiness"));
    assert_eq!(args["crmId"], "gg-11");
    let mut body = args.as_object().unwrap().clone();
    body.remove("crmId");
    assert_eq!(
        serde_json::Value::Object(body),
        json!({"business": {"name": "Eleven Labs"}, "status": 70, "country": {"id": 76}})
    );
}

#[test]
fn the_shop_example_becomes_the_crm_update() {
    let output = run_transform(&transform("shop-to-crm"), SHOP_BUSINESS, &[]);
    let (endpoint, operation, args) = single_call(&output);
    assert_eq!((endpoint.as_str(), operation.as_str()), ("salesforce", "updateAccount"));
    assert_eq!(
        args,
        json!({"accountId": "gg-11", "Name": "Eleven Labs", "Status__c": "CLIENT_ACTIVE", "Country__c": "FR"})
    );
}

#[test]
fn configured_tables_change_the_output_both_ways() {
    let tables = [
        "--config",
        r#"status_codes={"CLIENT_ACTIVE": 70, "PROSPECT": 10}"#,
        "--config",
        r#"country_ids={"FR": 76, "DE": 49}"#,
    ];
    let account = r#"{"Id": "gg-12", "Name": "Zwölf", "Status__c": "PROSPECT", "Country__c": "DE"}"#;
    let (_, _, args) = single_call(&run_transform(&transform("crm-to-shop"), account, &tables));
    assert_eq!(
        (args["status"].clone(), args["country"].clone()),
        (json!(10), json!({"id": 49}))
    );

    let business = r#"{"crmId": "gg-12", "business": {"name": "Zwölf"}, "status": 10, "country": {"id": 49}}"#;
    let (_, _, args) = single_call(&run_transform(&transform("shop-to-crm"), business, &tables));
    assert_eq!(
        (args["Status__c"].clone(), args["Country__c"].clone()),
        (json!("PROSPECT"), json!("DE"))
    );

    // A configured table replaces the default: FR is unknown once the
    // table no longer lists it.
    let only_de = ["--config", r#"country_ids={"DE": 49}"#];
    let output = run_transform(&transform("crm-to-shop"), CRM_ACCOUNT, &only_de);
    assert_rejected(&output, &["\"FR\"", "country_ids"]);
}

#[test]
fn unknown_status_and_country_are_rejected_by_value() {
    let gone = CRM_ACCOUNT.replace("CLIENT_ACTIVE", "CLIENT_GONE");
    assert_rejected(
        &run_transform(&transform("crm-to-shop"), &gone, &[]),
        &["Status__c", "\"CLIENT_GONE\""],
    );
    let mars = CRM_ACCOUNT.replace("\"FR\"", "\"MARS\"");
    assert_rejected(
        &run_transform(&transform("crm-to-shop"), &mars, &[]),
        &["Country__c", "\"MARS\""],
    );

    let status_99 = SHOP_BUSINESS.replace("\"status\": 70", "\"status\": 99");
    assert_rejected(
        &run_transform(&transform("shop-to-crm"), &status_99, &[]),
        &["status 99"],
    );
    let country_1 = SHOP_BUSINESS.replace("\"id\": 76", "\"id\": 1");
    assert_rejected(
        &run_transform(&transform("shop-to-crm"), &country_1, &[]),
        &["country.id 1"],
    );
}

#[test]
fn malformed_bodies_and_missing_fields_are_rejected_by_name() {
    let crm = transform("crm-to-shop");
    assert_rejected(&run_transform(&crm, "{not json", &[]), &["not JSON"]);
    let no_name = r#"{"Id": "gg-11", "Status__c": "CLIENT_ACTIVE", "Country__c": "FR"}"#;
    assert_rejected(&run_transform(&crm, no_name, &[]), &["missing field `Name`"]);
    let no_id = r#"{"Name": "E", "Status__c": "CLIENT_ACTIVE", "Country__c": "FR"}"#;
    assert_rejected(&run_transform(&crm, no_id, &[]), &["missing field `Id`"]);
    let number_status = CRM_ACCOUNT.replace("\"CLIENT_ACTIVE\"", "3");
    assert_rejected(
        &run_transform(&crm, &number_status, &[]),
        &["Status__c", "invalid type"],
    );

    let shop = transform("shop-to-crm");
    let no_crm_id = r#"{"business": {"name": "E"}, "status": 70, "country": {"id": 76}}"#;
    assert_rejected(&run_transform(&shop, no_crm_id, &[]), &["missing field `crmId`"]);
    let bad_table = ["--config", "status_codes=[1, 2]"];
    assert_rejected(&run_transform(&shop, SHOP_BUSINESS, &bad_table), &["status_codes"]);
}

#[test]
fn an_infinite_loop_is_stopped_at_the_time_limit() {
    let started = Instant::now();
    let output = run_transform(&fixture("looping"), "{}", &["--time-limit", "100ms"]);
    assert_eq!(output.status.code(), Some(TRAP), "stderr: {}", stderr(&output));
    assert!(
        stderr(&output).contains("exceeded its time limit of 100ms"),
        "{}",
        stderr(&output)
    );
    // Not a benchmark: proof that the loop was cut rather than left to run.
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn unbounded_allocation_is_stopped_at_the_memory_limit() {
    let output = run_transform(
        &fixture("memory-hog"),
        "{}",
        &["--memory-limit", "16MiB", "--time-limit", "5s"],
    );
    assert_eq!(output.status.code(), Some(TRAP), "stderr: {}", stderr(&output));
    assert!(
        stderr(&output).contains("exceeded its memory limit of 16.0 MiB"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_panicking_guest_fails_cleanly_with_its_message() {
    let output = run_transform(&fixture("panicking"), "{}", &[]);
    assert_eq!(output.status.code(), Some(TRAP), "stderr: {}", stderr(&output));
    assert!(stderr(&output).contains("fixture panic: boom"), "{}", stderr(&output));
}

#[test]
fn a_component_of_another_world_is_refused_with_what_does_not_match() {
    for command in ["transform", "check"] {
        let output = passerelle()
            .args([command, "--component"])
            .arg(fixture("wrong-world"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(BAD_COMPONENT), "{command}: {text}");
        assert!(
            text.contains("does not fit the passerelle:transform@0.1.0 world"),
            "{text}"
        );
        assert!(text.contains("export func `transform`"), "{text}");
    }
}

#[test]
fn files_that_are_not_components_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[u8], &str); 3] = [
        ("garbage.wasm", b"this is not wasm at all", "not a WebAssembly file"),
        (
            "module.wasm",
            b"\0asm\x01\0\0\0",
            "core WebAssembly module, not a component",
        ),
        (
            "truncated.wasm",
            &std::fs::read(transform("crm-to-shop")).unwrap()[..5000],
            "does not compile",
        ),
    ];
    for (name, bytes, expected) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let output = passerelle().args(["check", "--component"]).arg(&path).output().unwrap();
        assert_eq!(output.status.code(), Some(BAD_COMPONENT), "{name}: {}", stderr(&output));
        assert!(stderr(&output).contains(expected), "{name}: {}", stderr(&output));
    }
}

#[test]
fn check_accepts_the_shipped_transforms_and_names_their_version() {
    for name in ["crm-to-shop", "shop-to-crm"] {
        let path = transform(name);
        let output = passerelle().args(["check", "--component"]).arg(&path).output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        let version = passerelle::version::Version::of(&std::fs::read(&path).unwrap());
        assert!(stdout.contains(&format!("version {version}")), "{stdout}");
    }
}

/// One runtime survives every hostile guest and still serves a good one.
#[tokio::test]
async fn the_host_survives_hostile_guests() {
    use passerelle::runtime::{GuestLimits, Message, RouteContext, Runtime, TransformFailure};
    let runtime = Runtime::new().unwrap();
    let route = RouteContext {
        route: "survival".into(),
        limits: GuestLimits {
            time: Duration::from_millis(200),
            memory: 16 << 20,
            ..GuestLimits::default()
        },
        ..Default::default()
    };
    let message = Message {
        body: CRM_ACCOUNT.as_bytes().to_vec(),
        ..Default::default()
    };
    let good = runtime.load(&std::fs::read(transform("crm-to-shop")).unwrap()).unwrap();
    for hostile in ["looping", "memory-hog", "panicking"] {
        let bad = runtime.load(&std::fs::read(fixture(hostile)).unwrap()).unwrap();
        let failure = runtime.run(&bad, &route, &message).await.unwrap_err();
        assert!(matches!(failure, TransformFailure::Trap(_)), "{hostile}: {failure:?}");
        let actions = runtime.run(&good, &route, &message).await.unwrap();
        assert_eq!(actions.len(), 1, "after {hostile}");
    }
}

#[test]
fn passerelle_test_gives_a_line_per_case_a_diff_for_a_failure_and_exit_14() {
    // The fixtures beside the shipped component, found without naming them.
    let output = passerelle().arg("test").arg(transform("crm-to-shop")).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{text}{}", stderr(&output));
    assert_eq!(text.lines().filter(|l| l.starts_with("pass  ")).count(), 4, "{text}");
    assert!(text.contains("\nok: 4 passed, 0 failed, of 4 in "), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let fixtures = dir.path().join("wrong.json");
    let expected_args =
        json!({"crmId": "gg-11", "business": {"name": "Eleven Labs"}, "status": 71, "country": {"id": 76}});
    let cases = json!([
        {"name": "a wrong status", "message": {"body": CRM_ACCOUNT},
         "expect": {"actions": [{"type": "call", "endpoint": "shop", "operation": "upsertBusiness", "args": expected_args}]}},
        {"name": "bad JSON", "message": {"body": "{oops"}, "expect": {"reject": "not JSON"}}
    ]);
    std::fs::write(&fixtures, cases.to_string()).unwrap();
    let output = passerelle()
        .arg("test")
        .arg(transform("crm-to-shop"))
        .arg(&fixtures)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(14), "{text}{}", stderr(&output));
    assert!(text.contains("FAIL  a wrong status\n"), "{text}");
    assert!(text.contains("pass  bad JSON\n"), "{text}");
    // Only the field that differs is marked.
    let marked: Vec<String> = text
        .lines()
        .filter(|l| l.trim_start().starts_with(['-', '+']))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        marked,
        ["--- expected", "+++ got", r#"- "status": 71"#, r#"+ "status": 70"#],
        "{text}"
    );
    assert!(
        text.ends_with(&format!("FAILED: 1 passed, 1 failed, of 2 in {}\n", fixtures.display())),
        "{text}"
    );
}
