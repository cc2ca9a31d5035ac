//! The sandbox lanes: the live path's transforms run back to back in a
//! lane's task, instead of each in its own message's task.
//!
//! A transform touches a lot of code and data (wasmtime's instantiation,
//! the guest's machine code, its slot's pages), and so do the HTTP client
//! and the AMQP driver around it. Interleaved message by message, each
//! evicts the other from the core's caches: the sandbox cost twice as much
//! in the service as in a loop. In a lane, the messages that arrive
//! together run their transforms one after the other, with the sandbox's
//! working set warm: measured end to end, about an eighth less CPU per
//! message (docs/benchmarks.md, seventh session). A lane woken from idle
//! first lets the rest of the burst reach it (`wait_for_burst`): about a
//! tenth less again (ninth session).
//!
//! Nothing of the sandbox changes: each message still gets a fresh
//! instance from [`Runtime::run`], with its limits. A guest that runs long
//! yields at every epoch tick, and the lane runs others between its
//! slices, but only [`RUNNING_AT_ONCE`] at a time: heavy guests
//! (JavaScript, Python: a millisecond or more each) run a couple at a
//! time in the order they came, instead of the whole burst at once with
//! every instance alive and its memory resident (a third of the peak RSS
//! or less; docs/benchmarks.md, thirteenth session). A guest still
//! running after [`LONG_RUNNING`] (at its time limit, or waiting in WASI)
//! stops counting against that bound, so it never holds up the messages
//! behind it. The queue needs no bound: each message task puts one job in
//! and waits for its answer, so the route's concurrency bounds it.
//!
//! A lane is one task, so it uses one core at a time. There are as many
//! lanes as cores, and a job goes to the first lane that keeps up (idle,
//! or its last job waited less than `SPILL_AFTER`): light transforms stay
//! together in the first lane, heavy ones (a JavaScript or Python guest at
//! full load) spill into the next lanes and use every core.

use std::num::NonZeroUsize;
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt as _, StreamExt as _};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tracing::Instrument as _;

use super::{Action, GuestMessage, Message, RouteContext, Runtime, Transform, TransformFailure};

/// A lane whose last job waited this long before it ran is behind: the
/// next job tries the next lane. Well above what a burst of light
/// transforms makes a job wait (64 messages of the shipped mapping: about
/// 1 ms), well below what heavy ones do.
const SPILL_AFTER: Duration = Duration::from_millis(5);
/// How many times a woken lane yields, at most, to gather a burst of jobs
/// before it runs them: a bound on the delay, should a job arrive at every
/// yield. In the benchmark (64 messages in flight) a woken lane yielded
/// about twice on average and then ran 26 jobs back to back.
const GATHER_YIELDS: usize = 8;
/// How many transforms a lane keeps going at once. Light ones finish in
/// their first poll and never meet the bound; heavy ones were all started
/// together before it (64 in flight: 64 live instances, each with
/// megabytes of memory resident). With two, the host's peak RSS running
/// the JavaScript mapping went from 372 to 122 MiB, the Python one's from
/// 748 to 173 MiB, at the same CPU a message (docs/benchmarks.md,
/// thirteenth session).
pub const RUNNING_AT_ONCE: usize = 2;
/// A transform still running after this is at its time limit, waiting in
/// WASI, or very heavy: it goes on, but lets the next job start, so that
/// it never holds up the messages behind it. Its lane falls behind and the
/// next messages go to another (`SPILL_AFTER`, the same 5 ms).
pub const LONG_RUNNING: Duration = Duration::from_millis(5);

/// Where the live path sends its transforms; cheap to clone. Each lane's
/// task ends once every clone is gone and its last transforms are done.
#[derive(Clone)]
pub struct Lanes {
    lanes: Arc<[Lane]>,
}

struct Lane {
    jobs: mpsc::UnboundedSender<Job>,
    load: Arc<Load>,
}

/// What a sender needs to know to choose a lane.
#[derive(Default)]
struct Load {
    /// Jobs sent and not finished.
    in_flight: AtomicUsize,
    /// How long the lane's latest job to start had waited for it.
    last_wait_micros: AtomicU64,
}

impl Load {
    fn keeps_up(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0
            || self.last_wait_micros.load(Ordering::Relaxed) < SPILL_AFTER.as_micros() as u64
    }
}

/// One transform's outcome, how long it waited for its lane and how long
/// it ran (apart: the wait is not the transform's time), and which lane
/// ran it.
#[derive(Debug)]
pub struct Ran {
    pub outcome: Result<Vec<Action>, TransformFailure>,
    pub waited: Duration,
    pub took: Duration,
    /// 0 unless the first lanes were behind.
    pub lane: usize,
}

struct Job {
    transform: Transform,
    route: RouteContext,
    message: GuestMessage,
    /// The message's span, so that the guest's log lines name its message.
    span: tracing::Span,
    sent: Instant,
    done: oneshot::Sender<Ran>,
}

impl Lanes {
    /// Starts one lane per core on the current tokio runtime.
    pub fn start(runtime: Runtime) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        Self::with_lanes(runtime, cores)
    }

    /// Starts `count` lanes (at least one).
    pub fn with_lanes(runtime: Runtime, count: usize) -> Self {
        let lanes = (0..count.max(1))
            .map(|index| {
                let (jobs, queue) = mpsc::unbounded_channel();
                let load = Arc::<Load>::default();
                tokio::spawn(serve(runtime.clone(), queue, index, load.clone()));
                Lane { jobs, load }
            })
            .collect();
        Self { lanes }
    }

    /// Runs one message through a fresh instance of `transform`, in the
    /// first lane that keeps up (else the least behind).
    pub async fn run(&self, transform: &Transform, route: &RouteContext, message: &Message) -> Ran {
        let (index, lane) = self.choose();
        let (done, ran) = oneshot::channel();
        let job = Job {
            transform: transform.clone(),
            route: route.clone(),
            message: message.to_guest(),
            span: tracing::Span::current(),
            sent: Instant::now(),
            done,
        };
        lane.load.in_flight.fetch_add(1, Ordering::Relaxed);
        if lane.jobs.send(job).is_err() {
            lane.load.in_flight.fetch_sub(1, Ordering::Relaxed);
            return stopped("the sandbox lane has stopped", index);
        }
        // Dropped unanswered only if the host code around the guest panicked.
        ran.await
            .unwrap_or_else(|_| stopped("the sandbox failed while running the transform", index))
    }

    fn choose(&self) -> (usize, &Lane) {
        let lanes = self.lanes.iter().enumerate();
        lanes.clone().find(|(_, lane)| lane.load.keeps_up()).unwrap_or_else(|| {
            lanes
                .min_by_key(|(_, lane)| lane.load.last_wait_micros.load(Ordering::Relaxed))
                .expect("at least one lane")
        })
    }
}

fn stopped(reason: &str, lane: usize) -> Ran {
    Ran {
        outcome: Err(TransformFailure::Trap(reason.into())),
        waited: Duration::ZERO,
        took: Duration::ZERO,
        lane,
    }
}

/// Lane `index`'s task. Takes the jobs that are waiting, up to
/// `RUNNING_AT_ONCE`, before it polls the running ones (`biased`), so
/// that the jobs that arrived together run back to back; woken from idle,
/// it first lets the rest of the burst arrive.
async fn serve(runtime: Runtime, mut queue: mpsc::UnboundedReceiver<Job>, index: usize, load: Arc<Load>) {
    let admissions = Arc::new(Semaphore::new(RUNNING_AT_ONCE));
    let mut running = FuturesUnordered::new();
    loop {
        tokio::select! {
            biased;
            job = admit(&mut queue, &admissions) => match job {
                Some((job, admission)) => {
                    if running.is_empty() {
                        // Let the rest of the burst reach the queue: its jobs then run back to back.
                        wait_for_burst(&queue).await;
                    }
                    running.push(run(&runtime, job, admission, index, &load));
                }
                None => break,
            },
            Some(()) = running.next(), if !running.is_empty() => {}
        }
    }
    while running.next().await.is_some() {}
}

/// The next job, once one of the lane's `RUNNING_AT_ONCE` admissions is
/// free. Cancel-safe, as `select!` needs: dropped before a job came, it
/// gives its admission back and has taken nothing from the queue.
async fn admit(
    queue: &mut mpsc::UnboundedReceiver<Job>,
    admissions: &Arc<Semaphore>,
) -> Option<(Job, OwnedSemaphorePermit)> {
    let admission = admissions
        .clone()
        .acquire_owned()
        .await
        .expect("a lane never closes its admissions");
    let job = queue.recv().await?;
    Some((job, admission))
}

/// Jobs come in bursts: the broker delivers messages in batches, and each
/// message's task sends its job when a worker gets to it. A lane woken by
/// the first job of a burst would otherwise run it at once, on the other
/// core, and then each of the next ones as it trickles in, between HTTP
/// and AMQP work that evicts the sandbox from the caches. So it yields to
/// the scheduler until a yield brings no new job (at most `GATHER_YIELDS`
/// times), and the burst's transforms run back to back (the saving is in
/// the module's doc). An idle host pays one yield per message.
async fn wait_for_burst<J>(queue: &mpsc::UnboundedReceiver<J>) {
    for _ in 0..GATHER_YIELDS {
        let waiting = queue.len();
        tokio::task::yield_now().await;
        if queue.len() == waiting {
            return;
        }
    }
}

async fn run(runtime: &Runtime, job: Job, admission: OwnedSemaphorePermit, lane: usize, load: &Load) {
    let Job {
        transform,
        route,
        message,
        span,
        sent,
        done,
    } = job;
    let started = Instant::now();
    let waited = started.saturating_duration_since(sent);
    load.last_wait_micros
        .store(u64::try_from(waited.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    // The span moves into the guest's future: a clone would cost the log
    // layer a reference count in its registry, and a close, per message.
    let guest = AssertUnwindSafe(runtime.run_guest_message(&transform, &route, &message))
        .catch_unwind()
        .instrument(span);
    let outcome = admitted_until_long(guest, admission).await;
    load.in_flight.fetch_sub(1, Ordering::Relaxed);
    match outcome {
        Ok(outcome) => {
            // The caller may have gone (its message task was cancelled at shutdown).
            let _ = done.send(Ran {
                outcome,
                waited,
                took: started.elapsed(),
                lane,
            });
        }
        // One message fails, as its own task would have; the lane goes on.
        Err(_panic) => tracing::error!(route = %route.route, "the host panicked running a transform"),
    }
}

/// Runs `work` holding its `admission` to the lane until it ends or has
/// run `LONG_RUNNING`, then lets it go on without. The usual transform
/// ends in its first poll, and sets no timer.
async fn admitted_until_long<F: Future>(work: F, admission: OwnedSemaphorePermit) -> F::Output {
    let mut work = pin!(work);
    if let Poll::Ready(output) = futures_util::poll!(work.as_mut()) {
        return output;
    }
    tokio::select! {
        output = work.as_mut() => return output,
        () = tokio::time::sleep(LONG_RUNNING) => drop(admission),
    }
    work.await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(load: &Load, in_flight: usize, last_wait: Duration) {
        load.in_flight.store(in_flight, Ordering::Relaxed);
        load.last_wait_micros
            .store(last_wait.as_micros() as u64, Ordering::Relaxed);
    }

    /// Sends `jobs` one per turn of the scheduler, as message tasks woken
    /// by one batch of deliveries do, then keeps the queue open until told.
    fn trickle(
        jobs: impl Iterator<Item = u32> + Send + 'static,
    ) -> (mpsc::UnboundedReceiver<u32>, oneshot::Sender<()>) {
        let (sender, queue) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            for job in jobs {
                sender.send(job).unwrap();
                tokio::task::yield_now().await;
            }
            let _ = stopped.await;
        });
        (queue, stop)
    }

    /// What a lane woken by the queue's first job gathers; fails the test
    /// if the lane never stops gathering.
    async fn gathered_after_the_first(queue: &mut mpsc::UnboundedReceiver<u32>) -> Vec<u32> {
        queue.recv().await.expect("the job that wakes the lane");
        tokio::time::timeout(Duration::from_secs(10), wait_for_burst(queue))
            .await
            .expect("a woken lane stops gathering and runs its jobs");
        std::iter::from_fn(|| queue.try_recv().ok()).collect()
    }

    #[tokio::test]
    async fn a_woken_lane_gathers_the_rest_of_the_burst_before_running_it() {
        let (mut queue, _stop) = trickle(1..=5);
        assert_eq!(gathered_after_the_first(&mut queue).await, [2, 3, 4, 5]);
    }

    #[tokio::test]
    async fn a_lane_stops_gathering_after_a_bounded_number_of_yields() {
        let (mut queue, _stop) = trickle(1..);
        let gathered = gathered_after_the_first(&mut queue).await;
        assert!(
            (1..=GATHER_YIELDS).contains(&gathered.len()),
            "{} jobs gathered",
            gathered.len()
        );
    }

    #[tokio::test]
    async fn a_lone_job_is_not_held_back_waiting_for_more() {
        // The queue stays open but quiet.
        let (mut queue, _stop) = trickle(std::iter::once(1));
        assert!(gathered_after_the_first(&mut queue).await.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_job_holds_its_admission_until_it_ends_or_runs_long() {
        let admissions = Arc::new(Semaphore::new(1));
        let admission = || admissions.clone().try_acquire_owned().expect("a free admission");

        // Ends in its first poll: the admission comes back with it.
        assert_eq!(admitted_until_long(async { 7 }, admission()).await, 7);
        assert_eq!(admissions.available_permits(), 1);

        // Heavy, and ends before LONG_RUNNING: held to its end.
        let heavy = tokio::spawn(admitted_until_long(tokio::time::sleep(LONG_RUNNING / 2), admission()));
        tokio::time::sleep(LONG_RUNNING / 4).await;
        assert_eq!(admissions.available_permits(), 0, "held while it runs");
        heavy.await.unwrap();
        assert_eq!(admissions.available_permits(), 1);

        // Long: it lets the admission go at LONG_RUNNING and goes on.
        let long = tokio::spawn(admitted_until_long(tokio::time::sleep(LONG_RUNNING * 10), admission()));
        tokio::time::sleep(LONG_RUNNING - Duration::from_millis(1)).await;
        assert_eq!(admissions.available_permits(), 0, "held until LONG_RUNNING");
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(admissions.available_permits(), 1, "given back at LONG_RUNNING");
        assert!(!long.is_finished(), "and it goes on");
        long.await.unwrap();
    }

    #[tokio::test]
    async fn a_job_goes_to_the_first_lane_that_keeps_up_else_the_least_behind() {
        let lanes = Lanes::with_lanes(Runtime::new().unwrap(), 3);
        let load = |index: usize| &lanes.lanes[index].load;
        let chosen = || lanes.choose().0;
        let behind = SPILL_AFTER * 2;

        assert_eq!(chosen(), 0, "all idle");
        set(load(0), 5, SPILL_AFTER / 2);
        assert_eq!(chosen(), 0, "busy but keeping up");
        set(load(0), 5, behind);
        assert_eq!(chosen(), 1, "the first behind, the second idle");
        set(load(1), 1, behind * 2);
        set(load(2), 1, behind * 3);
        assert_eq!(chosen(), 0, "all behind: the least behind");
        set(load(0), 0, behind);
        assert_eq!(chosen(), 0, "idle again, whatever its last wait");
    }
}
