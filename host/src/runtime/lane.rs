//! The sandbox lane: the live path's transforms run back to back in one
//! task, instead of each in its own message's task.
//!
//! A transform touches a lot of code and data (wasmtime's instantiation,
//! the guest's machine code, its slot's pages), and so do the HTTP client
//! and the AMQP driver around it. Interleaved message by message, each
//! evicts the other from the core's caches: the sandbox cost twice as much
//! in the service as in a loop. In the lane, the messages that arrive
//! together run their transforms one after the other, with the sandbox's
//! working set warm, while the message tasks do the rest on the other
//! core; measured end to end, a fifth less CPU per message
//! (docs/benchmarks.md, seventh session).
//!
//! Nothing of the sandbox changes: each message still gets a fresh
//! instance from [`Runtime::run`], with its limits. A guest that runs long
//! yields at every epoch tick, as it yielded to its worker before, and the
//! lane runs the others between its slices. The queue needs no bound: each
//! message task puts one job in and waits for its answer, so the route's
//! concurrency bounds it.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt as _, StreamExt as _};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument as _;

use super::{Action, Message, RouteContext, Runtime, Transform, TransformFailure};

/// Where the live path sends its transforms; cheap to clone. The lane's
/// task ends once every clone is gone and its last transforms are done.
#[derive(Clone)]
pub struct Lane {
    jobs: mpsc::UnboundedSender<Job>,
}

/// One transform's outcome, and how long it ran (without the wait for the
/// lane: that is not the transform's time).
#[derive(Debug)]
pub struct Ran {
    pub outcome: Result<Vec<Action>, TransformFailure>,
    pub took: Duration,
}

struct Job {
    transform: Transform,
    route: RouteContext,
    message: Message,
    /// The message's span, so that the guest's log lines name its message.
    span: tracing::Span,
    done: oneshot::Sender<Ran>,
}

impl Lane {
    /// Starts the lane's task on the current tokio runtime.
    pub fn start(runtime: Runtime) -> Self {
        let (jobs, queue) = mpsc::unbounded_channel();
        tokio::spawn(serve(runtime, queue));
        Self { jobs }
    }

    /// Runs one message through a fresh instance of `transform`, in the lane.
    pub async fn run(&self, transform: &Transform, route: &RouteContext, message: &Message) -> Ran {
        let (done, ran) = oneshot::channel();
        let job = Job {
            transform: transform.clone(),
            route: route.clone(),
            message: message.clone(),
            span: tracing::Span::current(),
            done,
        };
        if self.jobs.send(job).is_err() {
            return stopped("the sandbox lane has stopped");
        }
        // Dropped unanswered only if the host code around the guest panicked.
        ran.await
            .unwrap_or_else(|_| stopped("the sandbox failed while running the transform"))
    }
}

fn stopped(reason: &str) -> Ran {
    Ran {
        outcome: Err(TransformFailure::Trap(reason.into())),
        took: Duration::ZERO,
    }
}

/// Takes every job that is waiting before running any (`biased`), so that
/// the jobs that arrived together run together.
async fn serve(runtime: Runtime, mut queue: mpsc::UnboundedReceiver<Job>) {
    let mut running = FuturesUnordered::new();
    loop {
        tokio::select! {
            biased;
            job = queue.recv() => match job {
                Some(job) => running.push(run(&runtime, job)),
                None => break,
            },
            Some(()) = running.next(), if !running.is_empty() => {}
        }
    }
    while running.next().await.is_some() {}
}

async fn run(runtime: &Runtime, job: Job) {
    let started = Instant::now();
    let outcome = AssertUnwindSafe(runtime.run(&job.transform, &job.route, &job.message))
        .catch_unwind()
        .instrument(job.span.clone())
        .await;
    match outcome {
        Ok(outcome) => {
            // The caller may have gone (its message task was cancelled at shutdown).
            let _ = job.done.send(Ran {
                outcome,
                took: started.elapsed(),
            });
        }
        // One message fails, as its own task would have; the lane goes on.
        Err(_panic) => tracing::error!(route = %job.route.route, "the host panicked running a transform"),
    }
}
