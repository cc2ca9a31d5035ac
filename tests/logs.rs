//! Logs of `passerelle run`, end to end: with `--log-format json` every
//! line on stderr is a JSON object, and the lines about a message carry
//! its route, id, transform version and attempt; with `logging.gelf` the
//! same records reach a local Graylog stand-in (a UDP socket, a TCP
//! listener) as GELF 1.1. The human format, in a file, is plain text with
//! the same fields; a RUST_LOG that is no filter is named, and logging
//! goes on at info.

mod support;

use std::io::Read as _;
use std::net::{TcpListener, UdpSocket};
use std::time::Duration;

use serde_json::Value;
use support::{Deployment, Host, Reply, TEST_SECRETS, eventually};

fn version_of_shipped() -> String {
    passerelle::version::Version::of(&std::fs::read(support::transform("crm-to-shop")).unwrap()).to_string()
}

/// Starts a host logging as JSON with GELF to `gelf`, delivers one account
/// and dead-letters another (the shop answers 400 to it).
async fn one_delivered_one_dead_lettered(setup: &Deployment, gelf: &str) -> Host {
    let config = setup.config("", "");
    let yaml = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{yaml}logging:\n  gelf: {gelf}\n")).unwrap();
    let env: Vec<(&str, &str)> = TEST_SECRETS
        .iter()
        .copied()
        .chain([("PASSERELLE_LOG_FORMAT", "json")])
        .collect();
    let host = Host::start_with_env(&config, &env);
    setup.broker.wait_for_consumers(&setup.crm_queue, 1).await;
    setup.publish_accounts(0..1).await;
    setup.server.wait_for_calls(1, Duration::from_secs(30)).await;
    setup.server.reply_next(Reply::status(400));
    setup.publish_accounts(1..2).await;
    eventually("the dead letter's log line", Duration::from_secs(30), async || {
        host.log().contains("dead-lettered").then_some(())
    })
    .await;
    host
}

/// Asserts that a record names the message it is about.
fn assert_about_message(fields: &Value, prefix: &str, message_id: &str) {
    let field = |name: &str| &fields[format!("{prefix}{name}")];
    assert_eq!(field("route"), "crm-to-shop", "{fields}");
    assert_eq!(field("message_id"), message_id, "{fields}");
    assert_eq!(field("version"), version_of_shipped().as_str(), "{fields}");
    assert_eq!(field("attempt"), 1, "{fields}");
}

#[tokio::test(flavor = "multi_thread")]
async fn json_lines_parse_and_gelf_over_udp_carries_the_message_fields() {
    let graylog = UdpSocket::bind("127.0.0.1:0").unwrap();
    graylog.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let setup = Deployment::new().await;
    let gelf = format!("udp://{}", graylog.local_addr().unwrap());
    let host = one_delivered_one_dead_lettered(&setup, &gelf).await;

    let lines: Vec<Value> = host
        .log()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}")))
        .collect();
    let about = |text: &str| {
        lines
            .iter()
            .find(|line| line["message"].as_str().is_some_and(|m| m.starts_with(text)))
            .unwrap_or_else(|| panic!("no line starting {text:?}"))
    };
    assert_about_message(&about("delivered")["span"], "", "msg-0");
    assert_about_message(&about("dead-lettered")["span"], "", "msg-1");

    let mut buffer = vec![0; 65536];
    let record = loop {
        let size = graylog.recv(&mut buffer).expect("a GELF datagram");
        let record: Value = serde_json::from_slice(&buffer[..size]).unwrap();
        assert_eq!(record["version"], "1.1");
        assert!(record["host"].as_str().is_some_and(|h| !h.is_empty()));
        if record["short_message"].as_str().unwrap().starts_with("dead-lettered") {
            break record;
        }
    };
    assert_eq!(record["level"], 4, "a warning");
    assert_about_message(&record, "_", "msg-1");
}

#[tokio::test(flavor = "multi_thread")]
async fn gelf_over_tcp_is_framed_by_nul_bytes() {
    let graylog = TcpListener::bind("127.0.0.1:0").unwrap();
    let setup = Deployment::new().await;
    let gelf = format!("tcp://{}", graylog.local_addr().unwrap());
    let _host = one_delivered_one_dead_lettered(&setup, &gelf).await;

    let (mut connection, _) = graylog.accept().unwrap();
    connection.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut stream = Vec::new();
    let mut chunk = [0; 4096];
    let record = loop {
        let read = connection.read(&mut chunk).expect("GELF records");
        assert!(read > 0, "the host closed the GELF connection");
        stream.extend_from_slice(&chunk[..read]);
        let records: Vec<Value> = stream
            .split(|byte| *byte == 0)
            .filter(|frame| !frame.is_empty() && frame.ends_with(b"}"))
            .filter_map(|frame| serde_json::from_slice(frame).ok())
            .collect();
        let dead = records.into_iter().find(|r| {
            r["short_message"]
                .as_str()
                .unwrap_or_default()
                .starts_with("dead-lettered")
        });
        if let Some(record) = dead {
            break record;
        }
    };
    assert_eq!(record["version"], "1.1");
    assert_about_message(&record, "_", "msg-1");
}

#[tokio::test(flavor = "multi_thread")]
async fn human_lines_in_a_file_are_plain_text_naming_the_message() {
    let setup = Deployment::new().await;
    let host = Host::start_with_env(&setup.config("", ""), TEST_SECRETS);
    setup.broker.wait_for_consumers(&setup.crm_queue, 1).await;
    setup.publish_accounts(0..1).await;
    setup.server.wait_for_calls(1, Duration::from_secs(30)).await;
    let line = eventually("the delivery's log line", Duration::from_secs(30), async || {
        host.log()
            .lines()
            .find(|line| line.contains("delivered"))
            .map(str::to_owned)
    })
    .await;

    // stderr is a file here, not a terminal: no colour codes, so a search
    // for `route=crm-to-shop` in a log file finds the line.
    assert!(!host.log().contains('\u{1b}'), "escape codes in:\n{}", host.log());
    let version = version_of_shipped();
    for field in [
        "route=crm-to-shop".to_string(),
        r#"message_id="msg-0""#.to_string(),
        "attempt=1".to_string(),
        format!(r#"version="{version}""#),
    ] {
        assert!(line.contains(&field), "{field} not in {line:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rust_log_that_is_not_a_filter_is_named_and_the_host_logs_at_info() {
    let setup = Deployment::new().await;
    let env: Vec<(&str, &str)> = TEST_SECRETS
        .iter()
        .copied()
        .chain([("RUST_LOG", "passerelle=loud")])
        .collect();
    let host = Host::start_with_env(&setup.config("", ""), &env);
    host.wait_for_log(r#"RUST_LOG "passerelle=loud" is not a log filter"#, 1)
        .await;
    // Still at info, not filtered down to nothing.
    host.wait_for_log("connected to the broker", 1).await;
}

/// A guest asks the host whether a level is on before it formats a line
/// (`host.log-enabled`): the shipped mapping's debug line is in the log
/// with debug on (so the host said yes), and absent at info (the unit test
/// in `runtime/guest.rs` shows the host says no there), in its message's
/// span.
#[tokio::test(flavor = "multi_thread")]
async fn a_guest_s_debug_line_is_logged_only_with_debug_on() {
    for (filter, expected) in [("passerelle=debug", true), ("passerelle=info", false)] {
        let setup = Deployment::new().await;
        let env: Vec<(&str, &str)> = TEST_SECRETS.iter().copied().chain([("RUST_LOG", filter)]).collect();
        let mut host = Host::start_with_env(&setup.config("", ""), &env);
        setup.broker.wait_for_consumers(&setup.crm_queue, 1).await;
        setup.publish_accounts(0..1).await;
        setup.server.wait_for_calls(1, Duration::from_secs(30)).await;
        // Stopped, so that every line it wrote is in the file.
        assert!(host.terminate().success(), "{}", host.log());
        let line = "guest: account gg-0: status CLIENT_ACTIVE -> 70, country FR -> 76";
        let logged = host
            .log()
            .lines()
            .find(|logged| logged.contains(line))
            .map(str::to_owned);
        assert_eq!(logged.is_some(), expected, "RUST_LOG={filter}:\n{}", host.log());
        // The guest runs in the sandbox's lane, not in its message's task:
        // its line still names the message it was about.
        if let Some(logged) = logged {
            for field in ["route=crm-to-shop", r#"message_id="msg-0""#, "attempt=1"] {
                assert!(logged.contains(field), "{field} not in {logged:?}");
            }
        }
    }
}
