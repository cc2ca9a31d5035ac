//! The initial import: the records of an NDJSON or CSV file (or stdin) put
//! on the broker, so that existing data takes the same path as live
//! changes. It streams (one record in memory at a time), keeps a window of
//! publisher confirms in flight instead of waiting for each, paces itself
//! when asked, and reports bad lines by number without stopping. Each
//! message id is derived from the file and the line, so that a resumed or
//! repeated import is recognisable downstream.

use std::collections::VecDeque;
use std::io::BufRead;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};

use lapin::{BasicProperties, Channel, Connection, PublisherConfirm};

use crate::amqp::headers;

/// Confirms awaited at once: enough to keep the broker busy, few enough
/// that a failure re-sends little on resume.
pub const CONFIRM_WINDOW: usize = 256;
/// Bad lines listed in the summary; beyond, only counted.
const BAD_LINES_SHOWN: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON document per line.
    Ndjson,
    /// A header row, then one record per row, published as a JSON object of strings.
    Csv,
}

impl Format {
    /// From the file's extension: `.csv`, or `.ndjson`/`.jsonl`/`.json`.
    pub fn of_path(path: &str) -> Option<Self> {
        let extension = path.rsplit_once('.')?.1.to_ascii_lowercase();
        match extension.as_str() {
            "csv" => Some(Self::Csv),
            "ndjson" | "jsonl" | "json" => Some(Self::Ndjson),
            _ => None,
        }
    }
}

/// Where the messages go and how.
#[derive(Debug, Clone)]
pub struct Options {
    pub exchange: String,
    pub routing_key: String,
    /// The first line to publish (1-based); earlier ones are skipped.
    pub from_line: u64,
    /// Messages per second at most.
    pub rate: Option<f64>,
    /// Stop at the first bad line.
    pub strict: bool,
    /// Names the file in message ids: `import:<source>:<line>`.
    pub source: String,
}

/// What an import did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub published: u64,
    pub skipped: u64,
    pub bad: Vec<BadLine>,
    pub bad_count: u64,
    pub elapsed: Duration,
    /// The last line read, for a progress report.
    pub line: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    pub line: u64,
    pub problem: String,
}

/// One record read: its first line number, and its JSON body or why not.
pub struct Record {
    pub line: u64,
    pub body: Result<Vec<u8>, String>,
}

/// The records of an NDJSON stream; blank lines are not records.
pub fn ndjson_records(mut input: impl BufRead) -> impl Iterator<Item = std::io::Result<Record>> {
    let mut line = 0;
    std::iter::from_fn(move || {
        loop {
            let mut bytes = Vec::new();
            match input.read_until(b'\n', &mut bytes) {
                Ok(0) => return None,
                Ok(_) => line += 1,
                Err(error) => return Some(Err(error)),
            }
            let text = bytes.trim_ascii();
            if text.is_empty() {
                continue;
            }
            let body = serde_json::from_slice::<serde::de::IgnoredAny>(text)
                .map(|_| text.to_vec())
                .map_err(|e| format!("not JSON: {e}"));
            return Some(Ok(Record { line, body }));
        }
    })
}

/// The records of a CSV stream with a header row, each a JSON object of
/// strings keyed by the header's names.
pub fn csv_records(input: impl BufRead) -> impl Iterator<Item = std::io::Result<Record>> {
    let mut reader = csv::ReaderBuilder::new().flexible(false).from_reader(input);
    let header = reader
        .byte_headers()
        .cloned()
        .map_err(|e| e.to_string())
        .and_then(unique_names);
    let mut rows = reader.into_byte_records();
    let mut header_reported = false;
    std::iter::from_fn(move || {
        let names = match &header {
            Ok(names) => names,
            Err(problem) if !header_reported => {
                header_reported = true;
                let body = Err(format!("the header row cannot be read: {problem}"));
                return Some(Ok(Record { line: 1, body }));
            }
            Err(_) => return None,
        };
        let row = rows.next()?;
        Some(Ok(match row {
            Ok(row) => {
                let line = row.position().map_or(0, |p| p.line());
                Record {
                    line,
                    body: csv_object(names, &row),
                }
            }
            Err(error) => Record {
                line: error.position().map_or(0, |p| p.line()),
                body: Err(error.to_string()),
            },
        }))
    })
}

/// Two columns of one name would be one field of the JSON object, and one
/// column's values would be lost.
fn unique_names(names: csv::ByteRecord) -> Result<csv::ByteRecord, String> {
    let mut seen = std::collections::BTreeSet::new();
    match names.iter().find(|name| !seen.insert(*name)) {
        Some(twice) => Err(format!(
            "it names {:?} twice: one column's values would be lost",
            String::from_utf8_lossy(twice)
        )),
        None => Ok(names),
    }
}

fn csv_object(names: &csv::ByteRecord, row: &csv::ByteRecord) -> Result<Vec<u8>, String> {
    let text = |bytes: &[u8], what: &str| {
        std::str::from_utf8(bytes)
            .map(str::to_string)
            .map_err(|_| format!("{what} is not UTF-8"))
    };
    let mut object = serde_json::Map::new();
    for (index, (name, value)) in names.iter().zip(row.iter()).enumerate() {
        let name = text(name, &format!("header field {}", index + 1))?;
        let value = text(value, &format!("field {name:?}"))?;
        object.insert(name, value.into());
    }
    serde_json::to_vec(&object).map_err(|e| e.to_string())
}

/// Publishes `records` and returns what happened. `progress` is called
/// every few hundred records. A refused publish stops the import, saying
/// where to resume.
pub async fn run(
    connection: &Connection,
    records: impl Iterator<Item = std::io::Result<Record>>,
    options: &Options,
    mut progress: impl FnMut(&Summary),
) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let channel = connection.create_channel().await.context("opening a channel")?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .context("enabling publisher confirms")?;
    let mut summary = Summary::default();
    let mut in_flight = VecDeque::new();
    let fed = feed(
        &channel,
        records,
        options,
        &mut summary,
        &mut in_flight,
        started,
        &mut progress,
    )
    .await;
    // Also after a failure: what was published before it is confirmed
    // (or reported) before the import says where to resume.
    let mut settled = Ok(());
    while let Some(oldest) = in_flight.pop_front() {
        if settled.is_ok() {
            settled = settle(Some(oldest), options).await;
        }
    }
    fed.and(settled)?;
    let _ = channel.close(200, "imported".into()).await;
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// Publishes every record, keeping up to `CONFIRM_WINDOW` confirms in flight.
async fn feed(
    channel: &Channel,
    records: impl Iterator<Item = std::io::Result<Record>>,
    options: &Options,
    summary: &mut Summary,
    in_flight: &mut VecDeque<(u64, PublisherConfirm)>,
    started: Instant,
    progress: &mut impl FnMut(&Summary),
) -> anyhow::Result<()> {
    let mut pace = Pace::new(options.rate);
    for record in records {
        let record = record.context("reading the input")?;
        summary.line = record.line;
        if record.line < options.from_line {
            summary.skipped += 1;
            continue;
        }
        let body = match record.body {
            Ok(body) => body,
            Err(problem) => {
                report_bad(summary, record.line, problem, options.strict)?;
                continue;
            }
        };
        pace.wait().await;
        let confirm = publish(channel, options, record.line, &body).await?;
        in_flight.push_back((record.line, confirm));
        if in_flight.len() >= CONFIRM_WINDOW {
            settle(in_flight.pop_front(), options).await?;
        }
        summary.published += 1;
        if summary.published.is_multiple_of(500) {
            summary.elapsed = started.elapsed();
            progress(summary);
        }
    }
    Ok(())
}

fn report_bad(summary: &mut Summary, line: u64, problem: String, strict: bool) -> anyhow::Result<()> {
    if strict {
        return Err(anyhow!("line {line}: {problem} (--strict: stopped here)"));
    }
    tracing::warn!("line {line}: {problem}");
    summary.bad_count += 1;
    if summary.bad.len() < BAD_LINES_SHOWN {
        summary.bad.push(BadLine { line, problem });
    }
    Ok(())
}

/// The message id of a line: the same for the same file and line.
pub fn message_id(source: &str, line: impl std::fmt::Display) -> String {
    format!("import:{source}:{line}")
}

async fn publish(channel: &Channel, options: &Options, line: u64, body: &[u8]) -> anyhow::Result<PublisherConfirm> {
    let mut table = lapin::types::FieldTable::default();
    headers::set(&mut table, headers::IMPORT_LINE, &line.to_string());
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(message_id(&options.source, line).as_str().into())
        .with_headers(table);
    let mandatory = BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    };
    channel
        .basic_publish(
            options.exchange.as_str().into(),
            options.routing_key.as_str().into(),
            mandatory,
            body,
            properties,
        )
        .await
        .with_context(|| format!("publishing line {line}; resume with --from-line {line}"))
}

/// Waits for the broker's word on one message; a refusal stops the import.
async fn settle(published: Option<(u64, PublisherConfirm)>, options: &Options) -> anyhow::Result<()> {
    let Some((line, confirm)) = published else {
        return Ok(());
    };
    let resume = format!("resume with --from-line {line}");
    let confirmation = confirm
        .await
        .with_context(|| format!("line {line}: no confirm from the broker; {resume}"))?;
    let target = format!(
        "exchange {:?} with routing key {:?}",
        options.exchange, options.routing_key
    );
    if confirmation.is_nack() {
        return Err(anyhow!("line {line}: the broker refused it; {resume}"));
    }
    if confirmation.take_message().is_some() {
        return Err(anyhow!("line {line}: no queue takes messages from {target}; {resume}"));
    }
    Ok(())
}

/// `--rate`: one message every 1/rate seconds, never a burst to catch up.
struct Pace {
    period: Option<Duration>,
    next: tokio::time::Instant,
}

impl Pace {
    fn new(rate: Option<f64>) -> Self {
        Self {
            period: rate.map(|rate| Duration::from_secs_f64(1.0 / rate)),
            next: tokio::time::Instant::now(),
        }
    }

    async fn wait(&mut self) {
        let Some(period) = self.period else {
            return;
        };
        let now = tokio::time::Instant::now();
        self.next = self.next.max(now);
        tokio::time::sleep_until(self.next).await;
        self.next += period;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bodies(records: impl Iterator<Item = std::io::Result<Record>>) -> Vec<(u64, Result<String, String>)> {
        records
            .map(|r| r.unwrap())
            .map(|r| (r.line, r.body.map(|b| String::from_utf8(b).unwrap())))
            .collect()
    }

    #[test]
    fn ndjson_lines_keep_their_numbers_and_bad_ones_say_why() {
        let input = b"{\"Id\": \"a\"}\n\n  {\"Id\": \"b\"}  \r\nnot json\n{\"Id\": \"c\"}" as &[u8];
        let records = bodies(ndjson_records(input));
        assert_eq!(records.len(), 4);
        assert_eq!(records[0], (1, Ok("{\"Id\": \"a\"}".into())));
        assert_eq!(records[1], (3, Ok("{\"Id\": \"b\"}".into())));
        assert_eq!(records[2].0, 4);
        assert!(records[2].1.as_ref().unwrap_err().starts_with("not JSON"));
        assert_eq!(records[3], (5, Ok("{\"Id\": \"c\"}".into())));
    }

    #[test]
    fn csv_rows_become_objects_with_quotes_newlines_and_utf8() {
        let input =
            "Id,Name,Note\ngg-1,\"Eleven, Labs\",\"said \"\"hi\"\"\"\ngg-2,Café 日本,\"two\nlines\"\ngg-3,short\n";
        let records = bodies(csv_records(input.as_bytes()));
        assert_eq!(records.len(), 3);
        let first: serde_json::Value = serde_json::from_str(records[0].1.as_ref().unwrap()).unwrap();
        assert_eq!(
            first,
            serde_json::json!({"Id": "gg-1", "Name": "Eleven, Labs", "Note": "said \"hi\""})
        );
        let second: serde_json::Value = serde_json::from_str(records[1].1.as_ref().unwrap()).unwrap();
        assert_eq!(second["Name"], "Café 日本");
        assert_eq!(second["Note"], "two\nlines");
        assert_eq!(records[0].0, 2);
        assert_eq!(records[1].0, 3);
        // The row after a two-line field starts on line 5.
        assert_eq!(records[2].0, 5);
        assert!(
            records[2].1.as_ref().unwrap_err().contains("fields"),
            "{:?}",
            records[2].1
        );
    }

    /// Fuzz finding (`fuzz::csv_rows_read_back_as_objects_of_their_header`):
    /// a header naming a column twice kept only the last column's values.
    #[test]
    fn a_header_naming_a_column_twice_is_a_bad_line() {
        let records = bodies(csv_records("Id,Name,Id\n1,a,2\n".as_bytes()));
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].0, 1);
        let problem = records[0].1.as_ref().unwrap_err();
        assert!(problem.contains("\"Id\" twice"), "{problem}");
    }

    #[test]
    fn formats_come_from_extensions() {
        assert_eq!(Format::of_path("accounts.CSV"), Some(Format::Csv));
        assert_eq!(Format::of_path("a/b.jsonl"), Some(Format::Ndjson));
        assert_eq!(Format::of_path("accounts.ndjson"), Some(Format::Ndjson));
        assert_eq!(Format::of_path("accounts"), None);
        assert_eq!(Format::of_path("-"), None);
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use crate::fuzzing;

    fn records(records: impl Iterator<Item = std::io::Result<Record>>) -> Vec<Record> {
        records.map(Result::unwrap).collect()
    }

    /// A line of an NDJSON file: JSON, almost JSON, blank, or bytes.
    fn ndjson_line() -> impl Strategy<Value = Vec<u8>> {
        let line = prop_oneof![
            3 => fuzzing::json(&["a", "é", "\n", "\""]).prop_map(|value| value.to_string().into_bytes()),
            1 => fuzzing::text(&["{", "}", "\"", " ", "\r", "\t", "null", ","], 6).prop_map(String::into_bytes),
            1 => prop::collection::vec(any::<u8>(), 0..12),
        ];
        line.prop_map(|bytes| bytes.into_iter().filter(|b| *b != b'\n').collect())
    }

    proptest! {
        #![proptest_config(fuzzing::config(512))]

        /// Each non-blank line is one record with its line number: its
        /// bytes when they are JSON, else why not.
        #[test]
        fn ndjson_lines_are_records_with_their_numbers(lines in prop::collection::vec(ndjson_line(), 0..8)) {
            let input = lines.join(&b'\n');
            let read = records(ndjson_records(input.as_slice()));
            let expected: Vec<(u64, &[u8])> = lines
                .iter()
                .enumerate()
                .map(|(index, line)| (index as u64 + 1, line.trim_ascii()))
                .filter(|(_, line)| !line.is_empty())
                .collect();
            prop_assert_eq!(read.len(), expected.len());
            for (record, (line, text)) in read.iter().zip(expected) {
                prop_assert_eq!(record.line, line);
                let json = serde_json::from_slice::<serde::de::IgnoredAny>(text).is_ok();
                match &record.body {
                    Ok(body) => prop_assert!(json && body == text),
                    Err(problem) => prop_assert!(!json && problem.starts_with("not JSON"), "{}", problem),
                }
            }
        }

        /// A CSV file written by a CSV writer reads back row by row, each
        /// row an object of its header's names, on the line it starts.
        #[test]
        fn csv_rows_read_back_as_objects_of_their_header(
            names in prop::collection::vec("[a-zA-Z ,\"\n]{0,4}", 1..4),
            cells in prop::collection::vec(prop::collection::vec("[a-zé ,\"\n\r]{0,5}", 4), 0..4),
        ) {
            let mut writer = csv::Writer::from_writer(Vec::new());
            writer.write_record(&names).unwrap();
            let mut starts = Vec::new();
            for row in &cells {
                writer.flush().unwrap();
                starts.push(writer.get_ref().iter().filter(|b| **b == b'\n').count() as u64 + 1);
                writer.write_record(&row[..names.len()]).unwrap();
            }
            let input = writer.into_inner().unwrap();
            let read = records(csv_records(input.as_slice()));
            let mut unique = names.clone();
            unique.sort();
            unique.dedup();
            if unique.len() < names.len() {
                prop_assert_eq!(read.len(), 1);
                let problem = read[0].body.as_ref().unwrap_err();
                prop_assert!(problem.contains("twice"), "{}", problem);
                return Ok(());
            }
            prop_assert_eq!(read.len(), cells.len());
            for ((record, row), start) in read.iter().zip(&cells).zip(starts) {
                prop_assert_eq!(record.line, start);
                let object: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_slice(record.body.as_ref().unwrap()).unwrap();
                let expected: serde_json::Map<String, serde_json::Value> =
                    names.iter().cloned().zip(row.iter().map(|cell| cell.as_str().into())).collect();
                prop_assert_eq!(object, expected);
            }
        }

        #[test]
        fn any_csv_bytes_give_records_in_line_order(input in fuzzing::text(&[",", "\"", "\n", "\r\n", "\u{fffd}", "é"], 30)) {
            let mut last = 0;
            for record in records(csv_records(input.as_bytes())) {
                prop_assert!(record.line >= last, "{} after {}", record.line, last);
                last = record.line;
                if let Ok(body) = record.body {
                    prop_assert!(serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&body).is_ok());
                }
            }
        }
    }
}
