//! The soak's shop: a real HTTP server that records every id it accepted
//! (and how many times), and that can misbehave on purpose: answer 503 or
//! slowly to a share of the requests, or go down altogether (its port
//! closed, the requests it holds never answered) and come back on the same
//! port. The soak reconciles what was published against this ledger.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

/// How the server misbehaves, per request, while it is up.
#[derive(Debug, Clone, Copy, Default)]
pub struct Misbehaviour {
    /// Share of requests answered 503 (nothing recorded).
    pub unavailable: f64,
    /// Share of requests answered after `slow_delay` (recorded).
    pub slow: f64,
    pub slow_delay: Duration,
}

#[derive(Default)]
struct State {
    accepted: BTreeMap<String, u32>,
    /// Accepted requests per transform version (the host's version header).
    versions: BTreeMap<String, u32>,
    misbehaviour: Misbehaviour,
    answered_503: u64,
    answered_slowly: u64,
}

#[derive(Clone)]
pub struct Ledger {
    pub port: u16,
    state: Arc<Mutex<State>>,
    /// True while up; going down closes the listener and holds requests.
    up: watch::Sender<bool>,
}

impl Ledger {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (up, _) = watch::channel(true);
        let ledger = Self {
            port: listener.local_addr().unwrap().port(),
            state: Arc::default(),
            up,
        };
        ledger.serve(listener);
        ledger
    }

    /// The base URL of the shop API, ending in `/`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/api/", self.port)
    }

    pub fn misbehave(&self, misbehaviour: Misbehaviour) {
        self.state.lock().unwrap().misbehaviour = misbehaviour;
    }

    /// Closes the port: new connections are refused, requests on open
    /// connections are never answered (the client times out).
    pub fn go_down(&self) {
        self.up.send_replace(false);
    }

    /// Listens again on the same port.
    pub async fn come_back(&self) {
        let listener = loop {
            match tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(listener) => break listener,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        self.up.send_replace(true);
        self.serve(listener);
    }

    /// Every id accepted (answered 2xx), with how many times.
    pub fn accepted(&self) -> BTreeMap<String, u32> {
        self.state.lock().unwrap().accepted.clone()
    }

    /// Accepted requests per transform version, in order of version name.
    pub fn versions(&self) -> BTreeMap<String, u32> {
        self.state.lock().unwrap().versions.clone()
    }

    /// (answered 503, answered slowly) so far.
    pub fn misbehaved(&self) -> (u64, u64) {
        let state = self.state.lock().unwrap();
        (state.answered_503, state.answered_slowly)
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let app = axum::Router::new()
            .route("/api/businesses/{id}", axum::routing::put(accept))
            .with_state(self.clone());
        let mut up = self.up.subscribe();
        tokio::spawn(async move {
            let down = async move {
                let _ = up.wait_for(|up| !*up).await;
            };
            axum::serve(listener, app).with_graceful_shutdown(down).await.unwrap();
        });
    }
}

async fn accept(
    axum::extract::State(ledger): axum::extract::State<Ledger>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
) -> axum::http::StatusCode {
    use axum::http::StatusCode;
    if !*ledger.up.borrow() {
        return never_answer().await;
    }
    let misbehaviour = ledger.state.lock().unwrap().misbehaviour;
    let draw: f64 = rand::random();
    if draw < misbehaviour.unavailable {
        ledger.state.lock().unwrap().answered_503 += 1;
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    if draw < misbehaviour.unavailable + misbehaviour.slow {
        ledger.state.lock().unwrap().answered_slowly += 1;
        tokio::time::sleep(misbehaviour.slow_delay).await;
    }
    // Down while this one waited: it is never answered, so it does not count.
    if !*ledger.up.borrow() {
        return never_answer().await;
    }
    let version = headers
        .get("x-passerelle-transform-version")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("(none)")
        .to_string();
    let mut state = ledger.state.lock().unwrap();
    *state.accepted.entry(id).or_insert(0) += 1;
    *state.versions.entry(version).or_insert(0) += 1;
    StatusCode::OK
}

/// A server that is down answers nothing; the client's timeout ends the request.
async fn never_answer() -> axum::http::StatusCode {
    std::future::pending().await
}
