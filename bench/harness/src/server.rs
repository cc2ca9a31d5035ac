//! The shop every contestant delivers to: a minimal HTTP server that
//! answers 200 to everything and checks every request on the way. A
//! request must be `PUT /api/businesses/gg-<i>` with exactly the shop body
//! the mapping gives (compared as JSON values, so key order is free). In a
//! round it counts mismatches, duplicates and missing Ids, and marks the
//! first and the N-th request with the contestant's CPU time at that
//! moment (and the broker's, and the whole machine's): the window its
//! rate and CPU per message are measured over.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use tokio::sync::{Notify, oneshot};

use crate::broker::expected_shop_body;
use crate::process::{cpu_seconds, machine_busy_seconds};

/// A moment of the round: when, and the CPU time then of the contestant,
/// of the broker and of the whole machine (busy seconds, cores).
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    pub at: Instant,
    pub cpu: Option<f64>,
    pub broker: Option<f64>,
    pub machine: Option<(f64, usize)>,
}

impl Mark {
    pub fn now(pid: u32, broker: Option<u32>) -> Self {
        Self {
            at: Instant::now(),
            cpu: cpu_seconds(pid),
            broker: broker.and_then(cpu_seconds),
            machine: machine_busy_seconds(),
        }
    }
}

/// What a round's requests looked like.
#[derive(Debug, Default, Clone)]
pub struct Window {
    /// Ids gg-0..gg-(n-1) are expected, each once; 0 between rounds.
    n: usize,
    /// The contestant and the broker, whose CPU times the marks read.
    pid: u32,
    broker: Option<u32>,
    seen: Vec<bool>,
    pub received: usize,
    pub mismatches: usize,
    pub duplicates: usize,
    /// The first few problems, for the error message.
    pub examples: Vec<String>,
    pub first: Option<Mark>,
    pub last: Option<Mark>,
}

impl Window {
    pub fn missing(&self) -> usize {
        self.seen.iter().filter(|seen| !**seen).count()
    }

    /// Fails unless exactly the n expected requests came, each right.
    pub fn ensure_complete(&self) -> anyhow::Result<()> {
        let missing = self.missing();
        anyhow::ensure!(
            self.mismatches == 0 && self.duplicates == 0 && missing == 0,
            "{} requests: {} wrong, {} duplicates, {missing} Ids never delivered; {}",
            self.received,
            self.mismatches,
            self.duplicates,
            self.examples.join("; ")
        );
        Ok(())
    }

    /// Counts one request; true when it is the round's n-th.
    fn record(&mut self, id: Option<usize>, mut problem: Option<String>) -> bool {
        self.received += 1;
        if self.first.is_none() {
            self.first = Some(Mark::now(self.pid, self.broker));
        }
        match id {
            Some(i) if i < self.n => {
                if self.seen[i] {
                    self.duplicates += 1;
                    self.note(format!("gg-{i} delivered twice"));
                }
                self.seen[i] = true;
            }
            Some(i) if self.n > 0 => problem = problem.or_else(|| Some(format!("gg-{i} is not of this round"))),
            _ => {}
        }
        if let Some(problem) = problem {
            self.mismatches += 1;
            self.note(problem);
        }
        let done = self.n > 0 && self.received == self.n;
        if done {
            self.last = Some(Mark::now(self.pid, self.broker));
        }
        done
    }

    fn note(&mut self, problem: String) {
        if self.examples.len() < 3 {
            self.examples.push(problem);
        }
    }
}

pub struct Server {
    pub port: u16,
    state: Arc<Checks>,
}

struct Checks {
    expected: serde_json::Value,
    window: Mutex<Window>,
    done: Notify,
    /// A transform version (`X-Passerelle-Transform-Version`) and who to
    /// tell when its first request arrives.
    awaited: Mutex<Option<(String, oneshot::Sender<Instant>)>>,
}

impl Server {
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(Checks {
            expected: expected_shop_body(),
            window: Mutex::default(),
            done: Notify::new(),
            awaited: Mutex::default(),
        });
        let app = axum::Router::new().fallback(check).with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self { port, state })
    }

    /// Starts a round: Ids 0..n expected, nothing seen yet.
    pub fn arm(&self, n: usize) {
        *self.state.window.lock().unwrap() = Window {
            n,
            seen: vec![false; n],
            ..Window::default()
        };
    }

    /// The processes whose CPU times the round's marks read: the
    /// contestant and, when known, the broker.
    pub fn watch(&self, pid: u32, broker: Option<u32>) {
        let mut window = self.state.window.lock().unwrap();
        (window.pid, window.broker) = (pid, broker);
    }

    /// Returns once the round's n-th request has arrived.
    pub async fn delivered(&self) {
        loop {
            let notified = self.state.done.notified();
            if self.window().last.is_some() {
                return;
            }
            notified.await;
        }
    }

    pub fn window(&self) -> Window {
        self.state.window.lock().unwrap().clone()
    }

    /// The arrival time of the next request made by transform `version`.
    pub fn first_call_from(&self, version: &str) -> oneshot::Receiver<Instant> {
        let (tell, arrival) = oneshot::channel();
        *self.state.awaited.lock().unwrap() = Some((version.to_string(), tell));
        arrival
    }
}

async fn check(
    State(checks): State<Arc<Checks>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let arrived = Instant::now();
    let id = uri
        .path()
        .strip_prefix("/api/businesses/gg-")
        .and_then(|i| i.parse().ok());
    let problem = problem(&checks.expected, &method, &uri, id, &body);
    if checks.window.lock().unwrap().record(id, problem) {
        checks.done.notify_waiters();
    }
    let version = headers.get(passerelle::delivery::VERSION_HEADER).map(|v| v.as_bytes());
    let mut awaited = checks.awaited.lock().unwrap();
    if awaited.as_ref().is_some_and(|(v, _)| Some(v.as_bytes()) == version)
        && let Some((_, tell)) = awaited.take()
    {
        let _ = tell.send(arrived);
    }
    StatusCode::OK
}

/// What is wrong with a request, if anything.
fn problem(expected: &serde_json::Value, method: &Method, uri: &Uri, id: Option<usize>, body: &[u8]) -> Option<String> {
    if *method != Method::PUT || id.is_none() {
        return Some(format!("unexpected {method} {uri}"));
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(value) if value == *expected => None,
        _ => Some(format!("{uri}: body {}", String::from_utf8_lossy(body))),
    }
}
