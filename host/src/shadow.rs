//! Shadow runs: a candidate transform runs beside a route's live one, on
//! the live traffic, and never delivers. The live version's actions are
//! delivered as usual; the candidate's are computed on the same message
//! and context, in a fresh sandboxed instance with the same limits, and
//! compared with them (`compare`). The report counts the messages
//! compared, identical, different (the first few, field by field) and
//! failing; promoting the candidate is a swap like any other
//! (`Reloader::try_swap`).
//!
//! The live path's whole cost is the hand-off (`ShadowSlot::offer`): a
//! clone of the message and its outcome into a bounded queue, never a
//! wait. One thread per shadow, at the lowest CPU priority, takes them
//! one at a time; when it falls behind the queue is full and messages
//! are skipped (and counted), so a slow candidate never slows the route.

mod compare;

use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

pub use compare::{FieldDiff, Outcome, Verdict, compare};

use crate::reload::{self, Refusal};
use crate::routes::RouteHandle;
use crate::runtime::{Message, RouteContext, Runtime, Transform};
use crate::stats::Stats;
use crate::version::Version;

/// Messages waiting for the candidate; past that, messages are skipped.
pub const QUEUE_CAPACITY: usize = 256;
/// Differences and failures the report keeps, the first ones.
pub const KEPT: usize = 10;

/// A candidate's component and optional fixtures (JSON text), kept for
/// its promotion.
#[derive(Clone)]
pub struct Candidate {
    pub bytes: Vec<u8>,
    pub fixtures: Option<String>,
}

/// Why a shadow did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The checks of a swap refused the candidate.
    #[error("refused: {0}")]
    Refused(#[from] Refusal),
    /// One shadow per route: stop it (or promote it) first.
    #[error("route {route} already shadows candidate {running}: stop or promote it first")]
    Running { route: String, running: Version },
}

/// What a shadow has seen so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    /// Messages the candidate ran on: identical + different + failing.
    pub compared: u64,
    pub identical: u64,
    pub different: u64,
    pub failing: u64,
    /// Messages left out because the candidate was behind.
    pub skipped: u64,
    /// The first `KEPT` differences.
    pub differences: Vec<Difference>,
    /// The first `KEPT` failures of the candidate.
    pub failures: Vec<CandidateFailure>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Difference {
    pub message_id: Option<String>,
    /// The live version it was compared with (a swap may come meanwhile).
    pub live_version: String,
    pub fields: Vec<FieldDiff>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateFailure {
    pub message_id: Option<String>,
    pub reason: String,
}

/// The answer of `GET /transforms/{route}/shadow`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub route: String,
    pub candidate: String,
    /// The version the route runs now.
    pub live: String,
    /// When the shadow started, RFC 3339.
    pub since: String,
    #[serde(flatten)]
    pub tally: Tally,
}

impl Tally {
    fn record(&mut self, message: &Message, live_version: &Version, verdict: Verdict) {
        self.compared += 1;
        match verdict {
            Verdict::Identical => self.identical += 1,
            Verdict::Different(fields) => {
                self.different += 1;
                if self.differences.len() < KEPT {
                    self.differences.push(Difference {
                        message_id: message.message_id.clone(),
                        live_version: live_version.to_string(),
                        fields,
                    });
                }
            }
            Verdict::Failing(reason) => {
                self.failing += 1;
                if self.failures.len() < KEPT {
                    self.failures.push(CandidateFailure {
                        message_id: message.message_id.clone(),
                        reason,
                    });
                }
            }
        }
    }
}

/// One message as the live version handled it, for the candidate.
struct Sample {
    message: Message,
    live: Outcome,
    live_version: Version,
}

/// A candidate running beside a route's live transform. Dropping the
/// last handle stops its thread.
pub struct Shadow {
    route: String,
    pub version: Version,
    pub candidate: Candidate,
    since: SystemTime,
    samples: mpsc::Sender<Sample>,
    tally: Arc<Mutex<Tally>>,
    stats: Arc<Stats>,
    stop: CancellationToken,
}

impl Shadow {
    /// Hands one message and the live outcome to the candidate, without
    /// waiting: when the queue is full the message is skipped.
    fn offer(&self, message: &Message, live: &Outcome, live_version: &Version) {
        match self.samples.try_reserve() {
            Ok(permit) => permit.send(Sample {
                message: message.clone(),
                live: live.clone(),
                live_version: live_version.clone(),
            }),
            Err(_full_or_stopped) => {
                lock(&self.tally).skipped += 1;
                self.stats.shadowed(&self.route, "skipped");
            }
        }
    }

    /// The counts so far; `live` is the version the route runs now.
    pub fn report(&self, live: &Version) -> Report {
        Report {
            route: self.route.clone(),
            candidate: self.version.to_string(),
            live: live.to_string(),
            since: humantime::format_rfc3339_seconds(self.since).to_string(),
            tally: lock(&self.tally).clone(),
        }
    }
}

impl Drop for Shadow {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn lock(tally: &Mutex<Tally>) -> std::sync::MutexGuard<'_, Tally> {
    tally.lock().unwrap_or_else(|e| e.into_inner())
}

/// Validates a candidate like a swap (compile, world, fixtures), then
/// starts shadowing `route` with it. One shadow per route.
pub async fn start(
    route: &RouteHandle,
    runtime: &Runtime,
    stats: Arc<Stats>,
    candidate: Candidate,
) -> Result<Arc<Shadow>, StartError> {
    let running = |shadow: &Shadow| StartError::Running {
        route: route.name.clone(),
        running: shadow.version.clone(),
    };
    if let Some(shadow) = route.shadow.current() {
        return Err(running(&shadow));
    }
    let bytes = candidate.bytes.clone();
    let transform = reload::validate(runtime, bytes, &route.context, candidate.fixtures.as_deref()).await?;
    let (samples, queue) = mpsc::channel(QUEUE_CAPACITY);
    let shadow = Arc::new(Shadow {
        route: route.name.clone(),
        version: transform.version.clone(),
        candidate,
        since: SystemTime::now(),
        samples,
        tally: Arc::default(),
        stats: stats.clone(),
        stop: CancellationToken::new(),
    });
    route.shadow.install(shadow.clone()).map_err(|other| running(&other))?;
    Worker {
        runtime: runtime.clone(),
        transform,
        context: route.context.clone(),
        tally: shadow.tally.clone(),
        stats,
        queue,
        stop: shadow.stop.clone(),
    }
    .spawn();
    tracing::info!(route = %route.name, candidate = %shadow.version, "shadowing with candidate {}", shadow.version);
    Ok(shadow)
}

/// Where a route's shadow, if any, is found: by the live path to hand
/// messages over, by the admin API to start, report, stop and promote.
#[derive(Default)]
pub struct ShadowSlot(RwLock<Option<Arc<Shadow>>>);

impl ShadowSlot {
    pub fn current(&self) -> Option<Arc<Shadow>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The live path's hand-off: a clone into the shadow's queue, if a
    /// shadow runs; nothing else.
    pub fn offer(&self, message: &Message, live: &Outcome, live_version: &Version) {
        if let Some(shadow) = &*self.0.read().unwrap_or_else(|e| e.into_inner()) {
            shadow.offer(message, live, live_version);
        }
    }

    /// Installs `shadow`, unless one runs already (returned).
    fn install(&self, shadow: Arc<Shadow>) -> Result<(), Arc<Shadow>> {
        let mut slot = self.0.write().unwrap_or_else(|e| e.into_inner());
        match &*slot {
            Some(running) => Err(running.clone()),
            None => {
                *slot = Some(shadow);
                Ok(())
            }
        }
    }

    /// Removes the shadow, if it is still `shadow`; it stops once its last
    /// handle is dropped.
    pub fn stop(&self, shadow: &Arc<Shadow>) -> bool {
        let mut slot = self.0.write().unwrap_or_else(|e| e.into_inner());
        let is_it = slot.as_ref().is_some_and(|running| Arc::ptr_eq(running, shadow));
        if is_it {
            *slot = None;
        }
        is_it
    }
}

/// The candidate's side: its own thread and single-threaded async
/// runtime, so that it never occupies a worker of the live path.
struct Worker {
    runtime: Runtime,
    transform: Transform,
    context: RouteContext,
    tally: Arc<Mutex<Tally>>,
    stats: Arc<Stats>,
    queue: mpsc::Receiver<Sample>,
    stop: CancellationToken,
}

impl Worker {
    fn spawn(self) {
        std::thread::Builder::new()
            .name("passerelle-shadow".into())
            .spawn(move || self.run())
            .expect("spawning a shadow thread");
    }

    fn run(self) {
        lower_priority();
        let span = tracing::info_span!("shadow", route = %self.context.route, version = %self.transform.version);
        match tokio::runtime::Builder::new_current_thread().enable_time().build() {
            Ok(runtime) => runtime.block_on(self.serve().instrument(span)),
            Err(error) => tracing::error!(parent: &span, "the shadow could not start its runtime: {error}"),
        }
    }

    async fn serve(mut self) {
        loop {
            let sample = tokio::select! {
                biased;
                _ = self.stop.cancelled() => return,
                sample = self.queue.recv() => sample,
            };
            let Some(sample) = sample else { return };
            self.compare(sample).await;
        }
    }

    async fn compare(&self, sample: Sample) {
        let candidate = self.runtime.run(&self.transform, &self.context, &sample.message).await;
        let verdict = compare(&sample.live, &candidate);
        self.stats.shadowed(&self.context.route, verdict.label());
        if let Verdict::Different(fields) = &verdict {
            let paths: Vec<&str> = fields.iter().map(|field| field.path.as_str()).collect();
            tracing::debug!(message_id = ?sample.message.message_id, "the candidate differs at {}", paths.join(", "));
        }
        lock(&self.tally).record(&sample.message, &sample.live_version, verdict);
    }
}

/// The shadow's thread takes only the CPU the live path leaves (nice 19):
/// on a busy host the candidate falls behind and skips, the route does
/// not slow down.
#[cfg(target_os = "linux")]
fn lower_priority() {
    // SAFETY: plain system calls on this thread's own id, no memory shared.
    // On Linux, PRIO_PROCESS with a thread id sets that thread's nice value.
    let done = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) };
    if done != 0 {
        let error = std::io::Error::last_os_error();
        tracing::warn!("the shadow runs at normal priority: {error}");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{Action, TransformFailure};
    use serde_json::json;

    fn message(id: &str) -> Message {
        Message {
            message_id: Some(id.into()),
            ..Default::default()
        }
    }

    #[test]
    fn the_tally_counts_every_verdict_and_keeps_the_first_few() {
        let mut tally = Tally::default();
        let live = Version::of(b"live");
        let field = FieldDiff {
            path: "actions[0].args.status".into(),
            live: Some(json!(80)),
            candidate: Some(json!(90)),
        };
        for n in 0..KEPT + 2 {
            tally.record(
                &message(&format!("d{n}")),
                &live,
                Verdict::Different(vec![field.clone()]),
            );
        }
        tally.record(&message("f"), &live, Verdict::Failing("boom".into()));
        tally.record(&message("i"), &live, Verdict::Identical);
        assert_eq!(
            (tally.compared, tally.identical, tally.different, tally.failing),
            (KEPT as u64 + 4, 1, KEPT as u64 + 2, 1)
        );
        assert_eq!(tally.differences.len(), KEPT);
        assert_eq!(tally.differences[0].message_id.as_deref(), Some("d0"));
        assert_eq!(tally.differences[0].fields, [field]);
        assert_eq!(tally.failures[0].reason, "boom");
    }

    #[test]
    fn the_report_flattens_the_tally() {
        let report = Report {
            route: "r".into(),
            candidate: "c".into(),
            live: "l".into(),
            since: "2026-01-01T00:00:00Z".into(),
            tally: Tally {
                compared: 1,
                failing: 1,
                failures: vec![CandidateFailure {
                    message_id: None,
                    reason: "boom".into(),
                }],
                ..Tally::default()
            },
        };
        let value = serde_json::to_value(&report).unwrap();
        assert_eq!(value["compared"], 1);
        assert_eq!(value["failures"][0]["reason"], "boom");
        assert_eq!(serde_json::from_value::<Report>(value).unwrap(), report);
    }

    #[test]
    fn a_full_queue_skips_instead_of_waiting() {
        let (samples, mut queue) = mpsc::channel(1);
        let stats = Arc::new(Stats::default());
        let shadow = Shadow {
            route: "r".into(),
            version: Version::of(b"candidate"),
            candidate: Candidate {
                bytes: Vec::new(),
                fixtures: None,
            },
            since: SystemTime::now(),
            samples,
            tally: Arc::default(),
            stats: stats.clone(),
            stop: CancellationToken::new(),
        };
        let live = Version::of(b"live");
        for id in ["first", "second", "third"] {
            shadow.offer(&message(id), &Ok(Vec::new()), &live);
        }
        assert_eq!(lock(&shadow.tally).skipped, 2);
        let taken = queue.try_recv().unwrap();
        assert_eq!(taken.message.message_id.as_deref(), Some("first"));
        assert!(
            stats
                .encode()
                .contains(r#"passerelle_shadow_messages_total{route="r",outcome="skipped"} 2"#)
        );
    }

    #[test]
    fn outcomes_compare_as_actions_or_failures() {
        let reject: Outcome = Err(TransformFailure::Reject("no".into()));
        let nothing: Outcome = Ok(Vec::<Action>::new());
        assert_eq!(compare(&nothing, &nothing), Verdict::Identical);
        assert!(matches!(compare(&nothing, &reject), Verdict::Failing(_)));
    }
}
