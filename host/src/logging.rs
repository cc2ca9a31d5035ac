//! How the process logs. Lines go to stderr, human-readable by default
//! (coloured only at a terminal) or
//! one JSON object per line (`--log-format json`); with `logging.gelf` in
//! the configuration, every record also goes to Graylog as GELF 1.1, over
//! UDP (chunked when large) or TCP (NUL-framed).
//!
//! Lines about a message are written inside its span, whose fields are
//! `route`, `message_id`, `version` and `attempt`: the human format prints
//! them before the text, JSON puts them under `"span"`, GELF as the
//! additional fields `_route`, `_message_id`, `_version`, `_attempt`.
//!
//! GELF never slows the caller: records go through a bounded queue to a
//! thread of their own; when Graylog cannot keep up they are dropped and
//! counted, never waited for.

use std::io::{IsTerminal as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs as _, UdpSocket};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// Where GELF records go: `udp://host:port`, `tcp://host:port`, or a bare
/// `host:port` (UDP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GelfTarget {
    pub transport: GelfTransport,
    pub address: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GelfTransport {
    Udp,
    Tcp,
}

impl FromStr for GelfTarget {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (transport, address) = match text.split_once("://") {
            Some(("udp", address)) => (GelfTransport::Udp, address),
            Some(("tcp", address)) => (GelfTransport::Tcp, address),
            Some((scheme, _)) => return Err(format!("{text:?}: unknown scheme {scheme:?} (expected udp or tcp)")),
            None => (GelfTransport::Udp, text),
        };
        let port = address.rsplit_once(':').map(|(host, port)| (host, port.parse::<u16>()));
        match port {
            Some((host, Ok(port))) if !host.is_empty() && port != 0 => Ok(Self {
                transport,
                address: address.to_string(),
            }),
            _ => Err(format!(
                "{text:?} is not host:port (expected e.g. udp://graylog:12201 or tcp://graylog:12201)"
            )),
        }
    }
}

impl<'de> serde::Deserialize<'de> for GelfTarget {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Installs the global subscriber: stderr in `format`, filtered by
/// `RUST_LOG` (default `info`), plus GELF when `gelf` is given. Call once.
pub fn init(format: LogFormat, gelf: Option<&GelfTarget>) -> anyhow::Result<()> {
    let rust_log = std::env::var("RUST_LOG").ok();
    let (filter, refused) = match filter_from(rust_log.as_deref()) {
        Ok(filter) => (filter, None),
        Err(problem) => (filter_from(None).expect("info is a filter"), Some(problem)),
    };
    let stderr = match format {
        // Colours only for a person at a terminal: in a file or a journal the
        // escape codes are noise (and styling every field costs each message).
        LogFormat::Human => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => json_layer(std::io::stderr).boxed(),
    };
    let gelf = gelf.map(GelfLayer::start).transpose()?;
    tracing_subscriber::registry()
        .with(filter.targets)
        .with(filter.env)
        .with(stderr)
        .with(gelf)
        .try_init()?;
    if let Some(problem) = refused {
        tracing::warn!("{problem}");
    }
    Ok(())
}

/// What filters stderr: one of the two is set.
struct LogFilter {
    targets: Option<Targets>,
    env: Option<EnvFilter>,
}

/// The `RUST_LOG` filter, `info` when unset or blank, as one of two kinds.
/// A list of `target=level` (or bare `level`) directives, the usual case,
/// becomes a `Targets` filter: it takes no lock when a span is entered or
/// left, where `EnvFilter` takes a read lock, shared by the worker threads,
/// on every poll of every message's future. Span and field directives
/// (`[message{route=crm-to-shop}]=debug`) need `EnvFilter`. A value with
/// a directive neither can read is refused, naming it (the host then logs
/// at `info` rather than filter everything out).
fn filter_from(spec: Option<&str>) -> Result<LogFilter, String> {
    let spec = spec.map(str::trim).filter(|spec| !spec.is_empty()).unwrap_or("info");
    if let Ok(targets) = spec.parse::<Targets>()
        && !spec.contains(['[', '{'])
    {
        return Ok(LogFilter {
            targets: Some(targets),
            env: None,
        });
    }
    match EnvFilter::try_new(spec) {
        Ok(env) => Ok(LogFilter {
            targets: None,
            env: Some(env),
        }),
        Err(e) => Err(format!("RUST_LOG {spec:?} is not a log filter ({e}): logging at info")),
    }
}

/// One JSON object per line, the current span's fields under `"span"`.
pub fn json_layer<S, W>(writer: W) -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_writer(writer)
}

/// Records queued for the sender beyond this are dropped.
const QUEUE: usize = 4096;
/// The largest UDP datagram GELF servers take whole; larger records are chunked.
const UDP_CHUNK: usize = 8192;
/// GELF's limit on the chunks of one record.
const MAX_CHUNKS: usize = 128;

/// Turns events into GELF records for a sender thread.
pub struct GelfLayer {
    queue: SyncSender<Vec<u8>>,
    dropped: Arc<AtomicU64>,
    host: String,
}

/// A span's fields, kept for the events inside it.
struct SpanFields(Map<String, Value>);

impl GelfLayer {
    /// Starts the sender thread. An address that does not resolve is
    /// refused now; one that is down later only loses records.
    pub fn start(target: &GelfTarget) -> anyhow::Result<Self> {
        let resolved = target
            .address
            .to_socket_addrs()
            .map_err(|e| anyhow::anyhow!("logging.gelf: cannot resolve {}: {e}", target.address))?
            .next()
            .ok_or_else(|| anyhow::anyhow!("logging.gelf: {} resolves to no address", target.address))?;
        let (queue, records) = sync_channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let sender = Sender {
            transport: target.transport,
            address: resolved,
            dropped: dropped.clone(),
        };
        std::thread::Builder::new()
            .name("gelf".into())
            .spawn(move || sender.run(records))?;
        Ok(Self {
            queue,
            dropped,
            host: hostname(),
        })
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for GelfLayer {
    fn on_new_span(&self, attributes: &Attributes<'_>, id: &Id, context: Context<'_, S>) {
        let mut fields = FieldsVisitor::default();
        attributes.record(&mut fields);
        if let Some(span) = context.span(id) {
            span.extensions_mut().insert(SpanFields(fields.0));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, context: Context<'_, S>) {
        let mut fields = FieldsVisitor::default();
        values.record(&mut fields);
        if let Some(span) = context.span(id)
            && let Some(kept) = span.extensions_mut().get_mut::<SpanFields>()
        {
            kept.0.extend(fields.0);
        }
    }

    fn on_event(&self, event: &Event<'_>, context: Context<'_, S>) {
        let mut fields = Map::new();
        for span in context
            .event_scope(event)
            .into_iter()
            .flat_map(|scope| scope.from_root())
        {
            if let Some(kept) = span.extensions().get::<SpanFields>() {
                fields.extend(kept.0.clone());
            }
        }
        let mut visitor = FieldsVisitor::default();
        event.record(&mut visitor);
        fields.extend(visitor.0);
        let metadata = event.metadata();
        let record = gelf_record(&self.host, *metadata.level(), metadata.target(), fields);
        let bytes = serde_json::to_vec(&record).unwrap_or_default();
        if let Err(TrySendError::Full(_)) = self.queue.try_send(bytes) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A GELF 1.1 record: the event's `message` is the short message, every
/// other field (the event's and its spans') an additional `_field`.
pub fn gelf_record(host: &str, level: Level, target: &str, mut fields: Map<String, Value>) -> Value {
    let message = match fields.remove("message") {
        Some(Value::String(text)) => text,
        Some(other) => other.to_string(),
        None => String::new(),
    };
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let mut record = Map::new();
    record.insert("version".into(), "1.1".into());
    record.insert("host".into(), host.into());
    record.insert("short_message".into(), message.into());
    record.insert("timestamp".into(), timestamp.into());
    record.insert("level".into(), syslog_level(level).into());
    record.insert("_target".into(), target.into());
    for (name, value) in fields {
        // `_id` is reserved by GELF.
        let key = if name == "id" {
            "_field_id".to_string()
        } else {
            format!("_{name}")
        };
        record.insert(key, value);
    }
    Value::Object(record)
}

fn syslog_level(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// Splits a record into GELF UDP chunks (magic, message id, sequence,
/// count, data), or keeps it whole when it fits one datagram. None when it
/// would need more chunks than GELF allows.
pub fn udp_datagrams(record: &[u8], message_id: [u8; 8]) -> Option<Vec<Vec<u8>>> {
    if record.len() <= UDP_CHUNK {
        return Some(vec![record.to_vec()]);
    }
    const HEADER: usize = 12;
    let pieces: Vec<&[u8]> = record.chunks(UDP_CHUNK - HEADER).collect();
    if pieces.len() > MAX_CHUNKS {
        return None;
    }
    let count = pieces.len() as u8;
    let datagrams = pieces
        .iter()
        .enumerate()
        .map(|(sequence, piece)| {
            let mut datagram = Vec::with_capacity(HEADER + piece.len());
            datagram.extend_from_slice(&[0x1e, 0x0f]);
            datagram.extend_from_slice(&message_id);
            datagram.extend_from_slice(&[sequence as u8, count]);
            datagram.extend_from_slice(piece);
            datagram
        })
        .collect();
    Some(datagrams)
}

/// Collects fields as JSON values: numbers and booleans stay typed.
#[derive(Default)]
struct FieldsVisitor(Map<String, Value>);

impl Visit for FieldsVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}").into());
    }
}

/// The thread that owns the socket.
struct Sender {
    transport: GelfTransport,
    address: std::net::SocketAddr,
    dropped: Arc<AtomicU64>,
}

/// How often dropped records are reported on stderr, at most.
const DROP_REPORT_EVERY: Duration = Duration::from_secs(60);

impl Sender {
    fn run(self, records: Receiver<Vec<u8>>) {
        let mut udp = None;
        let mut tcp: Option<TcpStream> = None;
        let mut tcp_retry_at = Instant::now();
        let mut last_report = Instant::now();
        for record in records {
            let sent = match self.transport {
                GelfTransport::Udp => self.send_udp(&mut udp, &record),
                GelfTransport::Tcp => self.send_tcp(&mut tcp, &mut tcp_retry_at, &record),
            };
            if !sent {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            if last_report.elapsed() >= DROP_REPORT_EVERY {
                last_report = Instant::now();
                let dropped = self.dropped.swap(0, Ordering::Relaxed);
                if dropped > 0 {
                    eprintln!("gelf: {dropped} log record(s) could not be sent to {}", self.address);
                }
            }
        }
    }

    fn send_udp(&self, socket: &mut Option<UdpSocket>, record: &[u8]) -> bool {
        if socket.is_none() {
            let bind = if self.address.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
            *socket = UdpSocket::bind(bind).ok();
        }
        let (Some(socket), Some(datagrams)) = (socket.as_ref(), udp_datagrams(record, rand::random())) else {
            return false;
        };
        datagrams
            .iter()
            .all(|datagram| socket.send_to(datagram, self.address).is_ok())
    }

    /// Reconnects at most once a second while Graylog is down.
    fn send_tcp(&self, stream: &mut Option<TcpStream>, retry_at: &mut Instant, record: &[u8]) -> bool {
        if stream.is_none() && Instant::now() >= *retry_at {
            *retry_at = Instant::now() + Duration::from_secs(1);
            *stream = TcpStream::connect_timeout(&self.address, Duration::from_secs(1)).ok();
        }
        let Some(connection) = stream.as_mut() else {
            return false;
        };
        let written = connection
            .write_all(record)
            .and_then(|()| connection.write_all(&[0]))
            .is_ok();
        if !written {
            *stream = None;
        }
        written
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "passerelle".into())
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn rust_log_lists_of_targets_need_no_env_filter() {
        let LogFilter { targets, env } = filter_from(None).unwrap();
        let targets = targets.expect("info is a list of targets");
        assert!(env.is_none());
        assert!(targets.would_enable("passerelle::pipeline", &Level::INFO));
        assert!(!targets.would_enable("passerelle::pipeline", &Level::DEBUG));

        let targets = filter_from(Some(" passerelle=debug,lapin=warn ")).unwrap().targets;
        let targets = targets.expect("a list of targets");
        assert!(targets.would_enable("passerelle::amqp::consumer", &Level::DEBUG));
        assert!(!targets.would_enable("lapin::channel", &Level::INFO));
        assert!(
            !targets.would_enable("hyper", &Level::ERROR),
            "no default: off, as EnvFilter"
        );

        let targets = filter_from(Some("  ")).unwrap().targets;
        assert!(
            targets.unwrap().would_enable("any", &Level::INFO),
            "blank is the default"
        );
    }

    #[test]
    fn span_and_field_directives_go_to_env_filter() {
        for spec in ["[message]=debug", "passerelle[message{route=crm-to-shop}]=trace"] {
            let LogFilter { targets, env } = filter_from(Some(spec)).unwrap();
            assert!(targets.is_none() && env.is_some(), "{spec}");
        }
    }

    #[test]
    fn a_rust_log_neither_filter_reads_is_refused_naming_it() {
        for spec in ["passerelle=loud", "[bad{=debug"] {
            let Err(problem) = filter_from(Some(spec)) else {
                panic!("{spec} was taken");
            };
            assert!(
                problem.contains(&format!("{spec:?}")) && problem.ends_with("logging at info"),
                "{problem}"
            );
        }
    }

    #[test]
    fn gelf_targets_read_udp_tcp_and_bare_addresses_and_name_bad_ones() {
        let udp: GelfTarget = "udp://graylog:12201".parse().unwrap();
        assert_eq!(
            (udp.transport, udp.address.as_str()),
            (GelfTransport::Udp, "graylog:12201")
        );
        let tcp: GelfTarget = "tcp://127.0.0.1:12201".parse().unwrap();
        assert_eq!(tcp.transport, GelfTransport::Tcp);
        let bare: GelfTarget = "graylog:12201".parse().unwrap();
        assert_eq!(bare.transport, GelfTransport::Udp);
        for bad in [
            "http://graylog:12201",
            "graylog",
            "graylog:port",
            ":12201",
            "udp://graylog:0",
        ] {
            let error = bad.parse::<GelfTarget>().unwrap_err();
            assert!(error.contains(&format!("{bad:?}")), "{error}");
        }
    }

    #[test]
    fn a_record_is_gelf_1_1_with_every_field_prefixed() {
        let mut fields = Map::new();
        fields.insert("message".into(), "dead-lettered: HTTP 400".into());
        fields.insert("route".into(), "crm-to-shop".into());
        fields.insert("attempt".into(), 2.into());
        fields.insert("id".into(), "x".into());
        let record = gelf_record("box", Level::WARN, "passerelle::amqp", fields);
        assert_eq!(record["version"], "1.1");
        assert_eq!(record["host"], "box");
        assert_eq!(record["short_message"], "dead-lettered: HTTP 400");
        assert_eq!(record["level"], 4);
        assert_eq!(record["_route"], "crm-to-shop");
        assert_eq!(record["_attempt"], 2);
        assert!(record.get("_id").is_none());
        assert!(record["timestamp"].as_f64().unwrap() > 1.7e9);
    }

    #[test]
    fn large_records_are_chunked_and_reassemble() {
        let record: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let datagrams = udp_datagrams(&record, *b"abcdefgh").unwrap();
        assert_eq!(datagrams.len(), 3);
        let mut whole = Vec::new();
        for (sequence, datagram) in datagrams.iter().enumerate() {
            assert!(datagram.len() <= UDP_CHUNK);
            assert_eq!(&datagram[..2], &[0x1e, 0x0f]);
            assert_eq!(&datagram[2..10], b"abcdefgh");
            assert_eq!((datagram[10], datagram[11]), (sequence as u8, 3));
            whole.extend_from_slice(&datagram[12..]);
        }
        assert_eq!(whole, record);
        assert_eq!(udp_datagrams(b"{}", [0; 8]).unwrap(), vec![b"{}".to_vec()]);
        assert!(udp_datagrams(&vec![b'x'; UDP_CHUNK * 130], [0; 8]).is_none());
    }

    fn emit_in_a_message_span(layer: impl Layer<tracing_subscriber::Registry> + Send + Sync + 'static) {
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "message",
                route = "crm-to-shop",
                message_id = "msg-1",
                version = tracing::field::Empty,
                attempt = 1
            );
            let _entered = span.enter();
            tracing::Span::current().record("version", "0123456789ab");
            tracing::warn!("dead-lettered: HTTP 400");
        });
    }

    fn assert_message_fields(record: &Value) {
        assert_eq!(record["version"], "1.1");
        assert_eq!(record["short_message"], "dead-lettered: HTTP 400");
        assert_eq!(record["_route"], "crm-to-shop");
        assert_eq!(record["_message_id"], "msg-1");
        assert_eq!(record["_version"], "0123456789ab");
        assert_eq!(record["_attempt"], 1);
    }

    #[test]
    fn gelf_over_udp_reaches_a_local_socket() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let target = format!("udp://{}", socket.local_addr().unwrap()).parse().unwrap();
        emit_in_a_message_span(GelfLayer::start(&target).unwrap());
        let mut buffer = vec![0; 65536];
        let size = socket.recv(&mut buffer).unwrap();
        assert_message_fields(&serde_json::from_slice(&buffer[..size]).unwrap());
    }

    #[test]
    fn gelf_over_tcp_reaches_a_local_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = format!("tcp://{}", listener.local_addr().unwrap()).parse().unwrap();
        emit_in_a_message_span(GelfLayer::start(&target).unwrap());
        let (mut connection, _) = listener.accept().unwrap();
        connection.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut received = Vec::new();
        let mut byte = [0];
        while connection.read(&mut byte).unwrap() == 1 && byte[0] != 0 {
            received.push(byte[0]);
        }
        assert_message_fields(&serde_json::from_slice(&received).unwrap());
    }

    #[derive(Clone, Default)]
    struct Buffer(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_parse_and_carry_the_message_span() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        emit_in_a_message_span(json_layer(move || writer.clone()));
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let line: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["message"], "dead-lettered: HTTP 400");
        assert_eq!(line["span"]["route"], "crm-to-shop");
        assert_eq!(line["span"]["version"], "0123456789ab");
        assert_eq!(line["span"]["attempt"], 1);
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use crate::fuzzing;

    proptest! {
        #![proptest_config(fuzzing::config(1024))]

        #[test]
        fn a_gelf_target_is_host_and_port_or_refused_naming_it(text in fuzzing::text(&["udp://", "tcp://", "://", ":", "0", "12201", "65536", "[::1]", "h"], 6)) {
            match text.parse::<GelfTarget>() {
                Ok(target) => {
                    let (host, port) = target.address.rsplit_once(':').unwrap();
                    prop_assert!(!host.is_empty() && port.parse::<u16>().is_ok_and(|port| port != 0));
                    prop_assert!(text.ends_with(&target.address));
                }
                Err(problem) => prop_assert!(problem.contains(&format!("{text:?}")), "{}", problem),
            }
        }
    }
}
