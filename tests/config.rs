//! Bad configuration files are refused at start, naming the file, the key
//! and the value, and never showing a secret. `passerelle check --config`
//! and `passerelle run` read files the same way.

mod support;

use std::path::Path;
use std::process::Output;

use support::{ConfigDir, passerelle, transform};

/// A valid file; each test breaks one thing in it.
fn good_config() -> String {
    format!(
        r#"
amqp:
  url: amqp://guest:guest@127.0.0.1:5672/%2f
endpoints:
  shop:
    base_url: http://127.0.0.1:9/api/
    auth: {{ bearer: {{ token_env: CONFIG_TEST_TOKEN }} }}
    timeout: 5s
    operations:
      upsertBusiness:
        method: PUT
        uri: businesses/{{crmId}}
        parameters:
          crmId: {{ location: uri, required: true }}
          business: {{ location: json }}
routes:
  crm-to-shop:
    queue: crm.account.changed
    bindings: [{{ exchange: crm.events, routing_key: "account.*" }}]
    transform: {wasm}
    endpoints: [shop]
    concurrency: 4
    limits: {{ time: 50ms, memory: 32MiB }}
"#,
        wasm = transform("crm-to-shop").display()
    )
}

fn check(yaml: &str) -> (Output, String) {
    let dir = ConfigDir::new();
    let path = dir.write("passerelle.yaml", yaml);
    let output = passerelle()
        .args(["check", "--config"])
        .arg(&path)
        .env("CONFIG_TEST_TOKEN", "t0k3n-value")
        .env_remove("NOT_SET_ANYWHERE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output, stderr)
}

/// The file is refused and the error names the file, key and words given.
fn assert_refused(yaml: &str, key: &str, words: &[&str]) {
    let (output, stderr) = check(yaml);
    assert_eq!(output.status.code(), Some(1), "accepted:\n{yaml}\nstderr: {stderr}");
    assert!(stderr.contains("passerelle.yaml: "), "file not named: {stderr}");
    assert!(stderr.contains(&format!(": {key}: ")), "key {key} not named: {stderr}");
    for word in words {
        assert!(stderr.contains(word), "{word:?} not in: {stderr}");
    }
}

#[test]
fn a_good_file_passes_and_names_each_route_with_its_version() {
    let (output, stderr) = check(&good_config());
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("route crm-to-shop"), "{stdout}");
}

#[test]
fn an_unknown_endpoint_in_a_route_is_named() {
    let yaml = good_config().replace("endpoints: [shop]", "endpoints: [shopp]");
    assert_refused(
        &yaml,
        "routes.crm-to-shop.endpoints[0]",
        &["unknown endpoint \"shopp\"", "declared: shop"],
    );
}

#[test]
fn an_operation_missing_its_uri_parameter_is_named() {
    let yaml = good_config().replace("          crmId: { location: uri, required: true }\n", "");
    assert_refused(
        &yaml,
        "endpoints.shop.operations.upsertBusiness.parameters",
        &["{crmId}"],
    );

    let yaml = good_config().replace("crmId: { location: uri, required: true }", "crmId: { location: query }");
    assert_refused(
        &yaml,
        "endpoints.shop.operations.upsertBusiness.parameters.crmId.location",
        &["must be uri"],
    );
}

#[test]
fn an_unparsable_duration_is_named_with_its_value() {
    let yaml = good_config().replace("timeout: 5s", "timeout: 5 parsecs");
    assert_refused(&yaml, "endpoints.shop.timeout", &["\"5 parsecs\"", "expected e.g."]);
    let yaml = good_config().replace("time: 50ms", "time: soon");
    assert_refused(&yaml, "routes.crm-to-shop.limits.time", &["\"soon\""]);
}

#[test]
fn a_missing_environment_variable_is_named() {
    let yaml = good_config().replace("CONFIG_TEST_TOKEN", "NOT_SET_ANYWHERE");
    assert_refused(
        &yaml,
        "endpoints.shop.auth.bearer.token_env",
        &["NOT_SET_ANYWHERE is not set"],
    );
    let yaml = good_config().replace("queue: crm.account.changed", "queue: ${NOT_SET_ANYWHERE}");
    assert_refused(&yaml, "routes.crm-to-shop.queue", &["NOT_SET_ANYWHERE is not set"]);
}

#[test]
fn typos_and_wrong_values_are_named() {
    let yaml = good_config().replace("concurrency: 4", "concurrancy: 4");
    assert_refused(
        &yaml,
        "routes.crm-to-shop.concurrancy",
        &["unknown field `concurrancy`"],
    );
    let yaml = good_config().replace("location: json", "location: body");
    assert_refused(
        &yaml,
        "endpoints.shop.operations.upsertBusiness.parameters.business.location",
        &["`body`"],
    );
    let yaml = good_config().replace("memory: 32MiB", "memory: lots");
    assert_refused(&yaml, "routes.crm-to-shop.limits.memory", &["lots"]);
    let missing = good_config().replace(&transform("crm-to-shop").display().to_string(), "nowhere/x.wasm");
    assert_refused(&missing, "routes.crm-to-shop.transform", &["nowhere/x.wasm"]);
}

#[test]
fn limits_no_transform_could_meet_and_operations_a_value_could_subvert_are_named() {
    let yaml = good_config().replace("memory: 32MiB", "memory: 32MiB, body: 64MiB");
    assert_refused(
        &yaml,
        "routes.crm-to-shop.limits.body",
        &["64.0 MiB is not below limits.memory (32.0 MiB)"],
    );
    let yaml = good_config().replace("memory: 32MiB", "memory: 32MiB, actions: 0");
    assert_refused(&yaml, "routes.crm-to-shop.limits.actions", &["must be more than 0"]);
    let yaml = good_config().replace("memory: 32MiB", "memory: 32MiB, log_line: many");
    assert_refused(&yaml, "routes.crm-to-shop.limits.log_line", &["many"]);
    let yaml = good_config().replace("uri: businesses/{crmId}", "uri: businesses/../{crmId}");
    assert_refused(
        &yaml,
        "endpoints.shop.operations.upsertBusiness.uri",
        &["\"businesses/../{crmId}\" has a . or .. segment"],
    );
    let yaml = good_config().replace(
        "business: { location: json }",
        "business: { location: json }\n          \"X Tenant\": { location: header }",
    );
    assert_refused(
        &yaml,
        "endpoints.shop.operations.upsertBusiness.parameters.X Tenant",
        &["\"X Tenant\" is not a valid HTTP header name"],
    );
}

#[test]
fn yaml_syntax_errors_name_the_file() {
    let (output, stderr) = check("amqp: [unclosed\n");
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr.contains("passerelle.yaml: (syntax): not valid YAML"), "{stderr}");
}

#[test]
fn secrets_never_appear_in_errors() {
    let yaml = good_config().replace("amqp://guest:guest@", "http://admin:hunter2@");
    assert_refused(&yaml, "amqp.url", &["admin:***@"]);
    let (_, stderr) = check(&yaml);
    assert!(!stderr.contains("hunter2"), "{stderr}");

    // A secret read from the environment stays out of errors too.
    let yaml = good_config().replace("base_url: http://127.0.0.1:9/api/", "base_url: ${CONFIG_TEST_TOKEN}");
    let (_, stderr) = check(&yaml);
    assert!(!stderr.contains("t0k3n-value"), "{stderr}");
}

#[test]
fn broker_urls_are_one_of_url_and_urls_and_each_bad_one_is_named_without_its_password() {
    let one = "  url: amqp://guest:guest@127.0.0.1:5672/%2f\n";
    let list = "  urls: [amqp://guest:guest@127.0.0.1:5672/%2f, amqp://guest:guest@127.0.0.1:5673/%2f]\n";
    let (output, stderr) = check(&good_config().replace(one, list));
    assert!(output.status.success(), "a list of nodes is refused: {stderr}");

    let bad_second = list.replace(
        "amqp://guest:guest@127.0.0.1:5673",
        "http://admin:hunter2@rabbit-2:5672",
    );
    assert_refused(
        &good_config().replace(one, &bad_second),
        "amqp.urls[1]",
        &["admin:***@rabbit-2"],
    );
    let (_, stderr) = check(&good_config().replace(one, &bad_second));
    assert!(!stderr.contains("hunter2"), "{stderr}");

    assert_refused(
        &good_config().replace(one, &format!("{one}{list}")),
        "amqp",
        &["both url and urls"],
    );
    assert_refused(&good_config().replace(one, "  urls: []\n"), "amqp", &["no broker"]);
}

#[test]
fn a_refused_broker_login_names_the_broker_but_not_the_password() {
    let dir = ConfigDir::new();
    let yaml = good_config().replace("amqp://guest:guest@", "amqp://guest:not-the-password-42@");
    let path = dir.write("passerelle.yaml", &yaml);
    let output = passerelle()
        .args(["run", "--config"])
        .arg(&path)
        .env("CONFIG_TEST_TOKEN", "x")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("connecting to amqp://guest:***@127.0.0.1:5672"),
        "{stderr}"
    );
    assert!(!stderr.contains("not-the-password-42"), "{stderr}");
}

#[test]
fn run_refuses_a_bad_file_before_connecting() {
    let dir = ConfigDir::new();
    let yaml = good_config().replace("endpoints: [shop]", "endpoints: [shopp]");
    let path = dir.write("passerelle.yaml", &yaml);
    let output = passerelle()
        .args(["run", "--config"])
        .arg(Path::new(&path))
        .env("CONFIG_TEST_TOKEN", "x")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("routes.crm-to-shop.endpoints[0]"), "{stderr}");
}

/// `good_config` with an ingest server of one webhook and one Salesforce source.
fn with_ingest() -> String {
    good_config()
        + r#"
ingest:
  listen: 127.0.0.1:0
  sources:
    crm:
      exchange: crm.events
      routing_key: "account.{Type}"
      auth: { hmac_sha256: { secret_env: CONFIG_TEST_TOKEN, header: X-Signature } }
    salesforce:
      kind: salesforce_outbound_message
      exchange: crm.events
      routing_key: account.updated
      organization_id: 00D000000000001AAA
      auth: { query_token: { token_env: CONFIG_TEST_TOKEN } }
"#
}

#[test]
fn a_bad_ingest_source_is_named_with_its_value() {
    let (output, stderr) = check(&with_ingest());
    assert_eq!(output.status.code(), Some(0), "{stderr}");

    let yaml = with_ingest().replace("      organization_id: 00D000000000001AAA\n", "");
    assert_refused(&yaml, "ingest.sources.salesforce.organization_id", &["required"]);
    let yaml = with_ingest().replace("00D000000000001AAA", "00D-1");
    assert_refused(
        &yaml,
        "ingest.sources.salesforce.organization_id",
        &["\"00D-1\"", "15 or 18"],
    );
    let yaml = with_ingest().replace("account.{Type}", "account.{Type");
    assert_refused(
        &yaml,
        "ingest.sources.crm.routing_key",
        &["unclosed {", "account.{Type"],
    );
    let yaml = with_ingest().replace(
        "      auth: { hmac_sha256: { secret_env: CONFIG_TEST_TOKEN, header: X-Signature } }\n",
        "",
    );
    assert_refused(&yaml, "ingest.sources.crm.auth", &["needs auth"]);
    let yaml = with_ingest().replace("secret_env: CONFIG_TEST_TOKEN", "secret_env: NOT_SET_ANYWHERE");
    assert_refused(
        &yaml,
        "ingest.sources.crm.auth.hmac_sha256.secret_env",
        &["NOT_SET_ANYWHERE is not set"],
    );
    let yaml = with_ingest().replace("    crm:\n", "    crm/events:\n");
    assert_refused(&yaml, "ingest.sources.crm/events", &["URL segment"]);
    let yaml = with_ingest().replace("kind: salesforce_outbound_message", "kind: soap");
    assert_refused(&yaml, "ingest.sources.salesforce.kind", &["soap"]);
}

/// `good_config` with a route setting added to crm-to-shop.
fn with_route_setting(setting: &str) -> String {
    good_config().replace("    concurrency: 4\n", &format!("    concurrency: 4\n{setting}"))
}

#[test]
fn guard_and_echo_settings_are_checked_naming_key_and_value() {
    let guard = "    guard: { entity: /Id, order: /LastModifiedDate, compare: number, keep: 1d }\n";
    let (output, stderr) = check(&with_route_setting(guard));
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert_refused(
        &with_route_setting("    guard: { entity: Id, order: /LastModifiedDate }\n"),
        "routes.crm-to-shop.guard.entity",
        &["\"Id\"", "JSON pointer", "header:<name>"],
    );
    assert_refused(
        &with_route_setting("    guard: { entity: /Id, order: /LastModifiedDate, compare: date }\n"),
        "routes.crm-to-shop.guard.compare",
        &["date"],
    );
    let echo = |target: &str| {
        with_route_setting(&format!(
            "    echo:\n      ledger: accounts.echo\n      source: {{ endpoint: shop, entity: header:X-Id, fields: [/Name] }}\n      target: {target}\n"
        ))
    };
    let (output, stderr) = check(&echo("{ endpoint: shop, entity: /crmId, fields: [/business/name] }"));
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert_refused(
        &echo("{ endpoint: shopp, entity: /crmId, fields: [/business/name] }"),
        "routes.crm-to-shop.echo.target.endpoint",
        &["unknown endpoint \"shopp\""],
    );
    assert_refused(
        &echo("{ endpoint: shop, entity: header:X-Id, fields: [/business/name] }"),
        "routes.crm-to-shop.echo.target.entity",
        &["header:X-Id", "JSON pointer"],
    );
    assert_refused(
        &echo("{ endpoint: shop, entity: /crmId, fields: [] }"),
        "routes.crm-to-shop.echo.target.fields",
        &["at least one field"],
    );
}
