//! `passerelle import`, end to end: the real binary publishing NDJSON and
//! CSV files (and stdin) to the real broker, read back from a bound queue.

mod support;

use std::io::Write as _;
use std::path::Path;
use std::process::{Output, Stdio};

use support::{Broker, ConfigDir, Taken, passerelle};

/// A broker config (no routes are used by `import`, but one is required).
fn config(dir: &ConfigDir) -> std::path::PathBuf {
    let yaml = format!(
        "amqp:\n  url: {}\nroutes:\n  unused:\n    queue: unused\n    transform: {}\n",
        support::AMQP_URL,
        support::transform("crm-to-shop").display()
    );
    dir.write("passerelle.yaml", &yaml)
}

/// An exchange and a queue bound to it with `imported.#`.
async fn target(broker: &Broker) -> (String, String) {
    let (exchange, queue) = (broker.exchange("import.in"), broker.queue("import.out"));
    broker.bind_queue(&queue, &exchange, "imported.#").await;
    (exchange, queue)
}

fn import(config: &Path, exchange: &str, file: &Path, extra: &[&str]) -> Output {
    passerelle()
        .args(["import", "--config"])
        .arg(config)
        .args(["--exchange", exchange, "--routing-key", "imported.account"])
        .arg(file)
        .args(extra)
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn line_of(message: &Taken) -> u64 {
    message.headers["x-passerelle-import-line"].parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_ndjson_lines_become_ten_thousand_messages() {
    let (broker, dir) = (Broker::connect().await, ConfigDir::new());
    let (exchange, queue) = target(&broker).await;
    let file = dir.dir.path().join("accounts.ndjson");
    let mut writer = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
    for n in 1..=10_000 {
        writeln!(writer, r#"{{"Id": "gg-{n}", "Name": "Account {n}"}}"#).unwrap();
    }
    drop(writer);
    let output = import(&config(&dir), &exchange, &file, &[]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("10000 published"), "{}", text(&output));

    let messages = broker.drain(&queue).await;
    assert_eq!(messages.len(), 10_000);
    let mut lines: Vec<u64> = messages.iter().map(line_of).collect();
    lines.sort_unstable();
    assert_eq!(lines, (1..=10_000).collect::<Vec<_>>(), "each line exactly once");
    for message in messages.iter().take(50) {
        let line = line_of(message);
        let body: serde_json::Value = serde_json::from_slice(&message.body).unwrap();
        assert_eq!(body["Id"], format!("gg-{line}"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn csv_rows_with_quotes_and_utf8_become_json_objects_and_bad_lines_are_named() {
    let (broker, dir) = (Broker::connect().await, ConfigDir::new());
    let (exchange, queue) = target(&broker).await;
    let file = dir.dir.path().join("accounts.csv");
    let csv = "Id,Name,Country__c\n\
               gg-1,\"Eleven, Labs\",FR\n\
               gg-2,\"Café \"\"Le Bon\"\" 日本\",JP\n\
               gg-3,too,many,fields\n\
               gg-4,\"Two\nlines\",FR\n";
    std::fs::write(&file, csv).unwrap();
    let output = import(&config(&dir), &exchange, &file, &[]);
    assert_eq!(output.status.code(), Some(15), "{}", text(&output));
    assert!(text(&output).contains("bad line 4"), "{}", text(&output));

    let messages = broker.drain(&queue).await;
    let bodies: Vec<serde_json::Value> = messages
        .iter()
        .map(|m| serde_json::from_slice(&m.body).unwrap())
        .collect();
    assert_eq!(
        bodies,
        vec![
            serde_json::json!({"Id": "gg-1", "Name": "Eleven, Labs", "Country__c": "FR"}),
            serde_json::json!({"Id": "gg-2", "Name": "Café \"Le Bon\" 日本", "Country__c": "JP"}),
            serde_json::json!({"Id": "gg-4", "Name": "Two\nlines", "Country__c": "FR"}),
        ]
    );
    let ids: Vec<&str> = messages.iter().map(|m| m.message_id.as_deref().unwrap()).collect();
    assert!(ids[0].starts_with("import:") && ids[0].ends_with(":2"), "{ids:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn strict_stops_at_the_first_bad_line_and_from_line_resumes_there() {
    let (broker, dir) = (Broker::connect().await, ConfigDir::new());
    let (exchange, queue) = target(&broker).await;
    let file = dir.dir.path().join("accounts.jsonl");
    std::fs::write(
        &file,
        "{\"Id\": \"gg-1\"}\n{\"Id\": \"gg-2\"}\n{oops\n{\"Id\": \"gg-4\"}\n",
    )
    .unwrap();
    let config = config(&dir);

    let strict = import(&config, &exchange, &file, &["--strict"]);
    assert_eq!(strict.status.code(), Some(1));
    assert!(text(&strict).contains("line 3"), "{}", text(&strict));
    assert_eq!(broker.drain(&queue).await.len(), 2, "the lines before the bad one");

    let resumed = import(&config, &exchange, &file, &["--from-line", "4"]);
    assert!(resumed.status.success(), "{}", text(&resumed));
    assert!(text(&resumed).contains("3 skipped"), "{}", text(&resumed));
    let [message] = broker.drain(&queue).await.try_into().unwrap();
    assert_eq!(line_of(&message), 4);

    // The same file imported again: the same message ids.
    let again = import(&config, &exchange, &file, &["--from-line", "4"]);
    assert!(again.status.success());
    let [repeat] = broker.drain(&queue).await.try_into().unwrap();
    assert_eq!(repeat.message_id, message.message_id);
}

#[tokio::test(flavor = "multi_thread")]
async fn stdin_is_read_with_dash() {
    let (broker, dir) = (Broker::connect().await, ConfigDir::new());
    let (exchange, queue) = target(&broker).await;
    let mut child = passerelle()
        .args(["import", "--config"])
        .arg(config(&dir))
        .args([
            "--exchange",
            &exchange,
            "--routing-key",
            "imported.x",
            "--format",
            "ndjson",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"{\"a\": 1}\n{\"a\": 2}\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", text(&output));
    let messages = broker.drain(&queue).await;
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[1].message_id.as_deref(), Some("import:stdin:2"));
}
