//! What one guest instance lives in: its store data, the host interface it
//! imports (log, config) and the memory cap.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::RouteContext;
use super::bounds::cut;
use crate::version::Version;

pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "transform",
        imports: { default: trappable },
        exports: { default: async },
    });
}

use bindings::passerelle::transform::{host, types};

/// Log lines a guest may write per message; later ones are dropped.
const MAX_LOG_LINES: u32 = 100;
/// What a guest may write to stderr (read back only to report a panic).
const STDERR_CAPACITY: usize = 16 * 1024;

/// What a transform gets per message (time, memory, the body it is given)
/// and what it may give back (actions, their bytes, log lines).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestLimits {
    pub time: Duration,
    /// Bytes of linear memory.
    pub memory: usize,
    /// Bytes of message body; a larger message is dead-lettered unread.
    pub body: usize,
    /// Actions one message may produce.
    pub actions: usize,
    /// Bytes of actions one message may produce (names, args, bodies, headers).
    pub output: usize,
    /// Bytes of one log line; a longer one is cut, with a marker.
    pub log_line: usize,
}

impl Default for GuestLimits {
    fn default() -> Self {
        Self {
            time: Duration::from_millis(50),
            memory: 32 << 20,
            body: 4 << 20,
            actions: 100,
            output: 4 << 20,
            log_line: 4 << 10,
        }
    }
}

pub struct GuestState {
    /// Made on the guest's first WASI call, if it makes one: most
    /// transforms make none per message (the shipped Rust ones do not),
    /// and making it (its random generators, boxed streams, the stderr
    /// pipe) was a few percent of a message's cost.
    wasi: Option<LockedDownWasi>,
    table: ResourceTable,
    pub memory: MemoryCap,
    route: Arc<str>,
    version: Version,
    config: Arc<BTreeMap<String, String>>,
    log_lines: u32,
    log_line: usize,
    last_error_log: Option<String>,
}

impl GuestState {
    pub fn new(route: &RouteContext, version: &Version) -> Self {
        Self {
            wasi: None,
            table: ResourceTable::new(),
            memory: MemoryCap::new(route.limits.memory),
            route: route.route.clone(),
            version: version.clone(),
            config: route.config.clone(),
            log_lines: 0,
            log_line: route.limits.log_line,
            last_error_log: None,
        }
    }

    /// What the guest said last before a crash: its last error log (the
    /// SDK logs panics there) or else what it wrote to stderr (Rust's
    /// default panic hook writes there).
    pub fn last_words(&self) -> Option<String> {
        if let Some(line) = &self.last_error_log {
            return Some(line.clone());
        }
        let bytes = self.wasi.as_ref()?.stderr.contents();
        let text = String::from_utf8_lossy(&bytes);
        let text = text.trim();
        (!text.is_empty()).then(|| cut(text, self.log_line).into_owned())
    }

    /// Whether this message's next log line is past the cap (and dropped).
    fn line_cap_reached(&self) -> bool {
        self.log_lines >= MAX_LOG_LINES
    }
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi.get_or_insert_with(LockedDownWasi::new).ctx,
            table: &mut self.table,
        }
    }
}

/// The WASI a guest gets: nothing granted (no preopens, env, args, sockets
/// or stdin), a stopped clock, and stderr into a small buffer.
struct LockedDownWasi {
    ctx: WasiCtx,
    stderr: MemoryOutputPipe,
}

impl LockedDownWasi {
    fn new() -> Self {
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        let ctx = WasiCtxBuilder::new()
            .stderr(stderr.clone())
            .wall_clock(StoppedClock)
            .monotonic_clock(StoppedClock)
            .build();
        Self { ctx, stderr }
    }
}

impl types::Host for GuestState {}

impl host::Host for GuestState {
    fn log(&mut self, level: host::Level, message: String) -> wasmtime::Result<()> {
        let message = cut(&message, self.log_line);
        // Kept even past the line cap: a guest that logged a lot and then
        // crashed still has its last words in the dead letter.
        if level == host::Level::Error {
            self.last_error_log = Some(message.clone().into_owned());
        }
        let over_cap = self.line_cap_reached();
        self.log_lines += 1;
        if over_cap {
            return Ok(());
        }
        let (route, version) = (&*self.route, self.version.as_str());
        match level {
            host::Level::Trace => tracing::trace!(route, version, "guest: {message}"),
            host::Level::Debug => tracing::debug!(route, version, "guest: {message}"),
            host::Level::Info => tracing::info!(route, version, "guest: {message}"),
            host::Level::Warn => tracing::warn!(route, version, "guest: {message}"),
            host::Level::Error => tracing::error!(route, version, "guest: {message}"),
        }
        Ok(())
    }

    fn log_enabled(&mut self, level: host::Level) -> wasmtime::Result<bool> {
        if level == host::Level::Error {
            return Ok(true);
        }
        if self.line_cap_reached() {
            return Ok(false);
        }
        // The same callsite filter as the lines `log` writes (this module's
        // target), so a guest is told yes exactly when its line would show.
        Ok(match level {
            host::Level::Trace => tracing::enabled!(tracing::Level::TRACE),
            host::Level::Debug => tracing::enabled!(tracing::Level::DEBUG),
            host::Level::Info => tracing::enabled!(tracing::Level::INFO),
            host::Level::Warn | host::Level::Error => tracing::enabled!(tracing::Level::WARN),
        })
    }

    fn config(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.config.get(&key).cloned())
    }
}

/// The clock a guest sees: stopped at the Unix epoch (1970-01-01T00:00:00Z).
/// A transform is a function of its message, so that a replay or a
/// redelivery gives the same actions; a time it needs comes with the
/// message (a header, a field of the body). Nor does the host's clock
/// tell a guest anything about the machine.
struct StoppedClock;

impl HostWallClock for StoppedClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for StoppedClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }

    fn now(&self) -> u64 {
        0
    }
}

/// Refuses memory growth past the route's limit and remembers that it did,
/// so the resulting trap can be reported as "out of memory".
pub struct MemoryCap {
    limit: usize,
    pub exceeded: bool,
}

impl MemoryCap {
    fn new(limit: usize) -> Self {
        Self { limit, exceeded: false }
    }
}

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.exceeded = true;
            // An error traps at once; returning false would let the guest's
            // allocator see a failed grow and abort less clearly.
            wasmtime::bail!("memory limit of {} bytes reached", self.limit);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        const MAX_TABLE_ELEMENTS: usize = 100_000;
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

pub fn headers_to_guest(headers: &[(String, String)]) -> Vec<types::Header> {
    headers
        .iter()
        .map(|(name, value)| types::Header {
            name: name.clone(),
            value: value.clone(),
        })
        .collect()
}

pub fn headers_from_guest(headers: Vec<types::Header>) -> Vec<(String, String)> {
    headers.into_iter().map(|h| (h.name, h.value)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use host::Host as _;

    #[test]
    fn a_level_is_enabled_when_its_line_would_be_kept() {
        let at_info = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_writer(std::io::sink)
            .finish();
        tracing::subscriber::with_default(at_info, || {
            let mut state = GuestState::new(&RouteContext::default(), &Version::of(b"guest"));
            let enabled = |state: &mut GuestState| {
                [
                    host::Level::Trace,
                    host::Level::Debug,
                    host::Level::Info,
                    host::Level::Error,
                ]
                .map(|level| state.log_enabled(level).unwrap())
            };
            assert_eq!(enabled(&mut state), [false, false, true, true]);
            for n in 0..MAX_LOG_LINES {
                state.log(host::Level::Info, format!("line {n}")).unwrap();
            }
            // Over the cap only an error line is still read.
            assert_eq!(enabled(&mut state), [false, false, false, true]);
        });
    }

    #[test]
    fn the_last_error_line_is_kept_past_the_line_cap() {
        let mut state = GuestState::new(&RouteContext::default(), &Version::of(b"guest"));
        for n in 0..=MAX_LOG_LINES {
            state.log(host::Level::Info, format!("line {n}")).unwrap();
        }
        state.log(host::Level::Error, "ValueError: boom".into()).unwrap();
        assert_eq!(state.last_words().as_deref(), Some("ValueError: boom"));
    }

    #[test]
    fn wasi_is_made_on_the_first_call_and_its_stderr_gives_last_words() {
        let mut state = GuestState::new(&RouteContext::default(), &Version::of(b"guest"));
        assert!(state.wasi.is_none(), "made before any WASI call");
        assert_eq!(state.last_words(), None);
        let _ = state.ctx();
        let mut stderr = state.wasi.as_ref().expect("made by the call").stderr.clone();
        wasmtime_wasi::p2::OutputStream::write(&mut stderr, "thread panicked at src/lib.rs".into()).unwrap();
        assert_eq!(state.last_words().as_deref(), Some("thread panicked at src/lib.rs"));
    }

    #[test]
    fn a_long_log_line_is_cut_with_a_marker() {
        let route = RouteContext {
            limits: GuestLimits {
                log_line: 8,
                ..GuestLimits::default()
            },
            ..RouteContext::default()
        };
        let mut state = GuestState::new(&route, &Version::of(b"guest"));
        state.log(host::Level::Error, "x".repeat(20)).unwrap();
        assert_eq!(state.last_words().as_deref(), Some("xxxxxxxx… [cut: 20 bytes in all]"));
    }
}
