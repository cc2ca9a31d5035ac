//! One circuit breaker per endpoint. After repeated temporary failures it
//! opens: no request goes to the endpoint and the routes that need it stop
//! taking work, so an outage does not burn every message's retries. After a
//! cool-down (growing while the outage lasts) one probe goes through;
//! success closes the breaker. It also keeps the endpoint's `Retry-After`:
//! no request leaves before it.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::BreakerSettings;
use crate::stats::BreakerState;

pub struct Breaker {
    endpoint: String,
    settings: BreakerSettings,
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Debug)]
struct State {
    phase: Phase,
    consecutive_failures: u32,
    cool_down: Duration,
    /// From the endpoint's last `Retry-After`.
    not_before: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Closed,
    Open {
        until: Instant,
    },
    /// The cool-down is over and one probe is on its way.
    Probing,
}

/// Leave to send one request. A probe that is dropped without an outcome
/// (its task was cancelled) lets the next caller probe instead.
pub struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    settled: bool,
}

/// What became of a request, as far as the endpoint's health goes.
pub enum Outcome {
    /// The endpoint answered (even with a permanent error): it is up.
    Answered,
    /// Unreachable, timed out, 5xx, 408 or 429.
    Unavailable { retry_after: Option<Duration> },
}

enum Wait {
    Until(Instant),
    ForChange,
}

impl Breaker {
    pub fn new(endpoint: &str, settings: BreakerSettings) -> Self {
        Self {
            endpoint: endpoint.to_string(),
            state: Mutex::new(State {
                phase: Phase::Closed,
                consecutive_failures: 0,
                cool_down: settings.cool_down,
                not_before: None,
            }),
            settings,
            changed: Notify::new(),
        }
    }

    /// Waits until a request may go: the breaker is closed and any
    /// `Retry-After` has passed, or a probe is due and this caller takes it.
    pub async fn acquire(&self) -> Permit<'_> {
        loop {
            let notified = self.changed.notified();
            let wait = match self.try_acquire() {
                Ok(probe) => {
                    return Permit {
                        breaker: self,
                        probe,
                        settled: false,
                    };
                }
                Err(wait) => wait,
            };
            match wait {
                Wait::Until(instant) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(instant) => {}
                        _ = notified => {}
                    }
                }
                Wait::ForChange => notified.await,
            }
        }
    }

    /// Ok(is_probe) when a request may go now.
    fn try_acquire(&self) -> Result<bool, Wait> {
        let mut state = self.lock();
        let now = Instant::now();
        if let Some(not_before) = state.not_before.filter(|t| *t > now) {
            return Err(Wait::Until(not_before));
        }
        match state.phase {
            Phase::Closed => Ok(false),
            Phase::Open { until } if now >= until => {
                state.phase = Phase::Probing;
                tracing::info!(endpoint = %self.endpoint, "circuit half-open: sending a probe");
                Ok(true)
            }
            Phase::Open { until } => Err(Wait::Until(until)),
            Phase::Probing => Err(Wait::ForChange),
        }
    }

    /// Waits while the breaker is open (or a probe is out), so that a
    /// consumer takes no message that could not be delivered. Returns at
    /// once when closed, or when a probe is due so that a message can carry it.
    pub async fn wait_until_usable(&self) {
        loop {
            let notified = self.changed.notified();
            let phase = self.lock().phase;
            match phase {
                Phase::Closed => return,
                Phase::Open { until } if Instant::now() >= until => return,
                Phase::Open { until } => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => {}
                        _ = notified => {}
                    }
                }
                Phase::Probing => notified.await,
            }
        }
    }

    /// The state as ops see it. An open breaker whose cool-down is over
    /// still counts as open until a probe goes.
    pub fn state(&self) -> BreakerState {
        match self.lock().phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Probing => BreakerState::Probing,
            Phase::Open { .. } => BreakerState::Open,
        }
    }

    #[cfg(test)]
    fn is_closed(&self) -> bool {
        self.lock().phase == Phase::Closed
    }

    fn record(&self, probe: bool, outcome: Outcome) {
        let mut state = self.lock();
        match outcome {
            Outcome::Answered => {
                if state.phase != Phase::Closed {
                    tracing::info!(endpoint = %self.endpoint, "circuit closed: the endpoint answers again");
                }
                state.phase = Phase::Closed;
                state.consecutive_failures = 0;
                state.cool_down = self.settings.cool_down;
            }
            Outcome::Unavailable { retry_after } => {
                state.consecutive_failures += 1;
                if let Some(wait) = retry_after {
                    state.not_before = Some(Instant::now() + wait);
                }
                let trips = state.phase == Phase::Closed && state.consecutive_failures >= self.settings.failures;
                if probe || trips {
                    self.open(&mut state);
                }
            }
        }
        drop(state);
        self.changed.notify_waiters();
    }

    fn open(&self, state: &mut State) {
        let cool_down = state.cool_down;
        state.phase = Phase::Open {
            until: Instant::now() + cool_down,
        };
        state.cool_down = (cool_down * 2).min(self.settings.max_cool_down);
        tracing::warn!(
            endpoint = %self.endpoint,
            "circuit open after {} temporary failure(s): pausing its routes for {cool_down:?}",
            state.consecutive_failures
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Permit<'_> {
    pub fn settle(mut self, outcome: Outcome) {
        self.settled = true;
        self.breaker.record(self.probe, outcome);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe && !self.settled {
            let mut state = self.breaker.lock();
            if state.phase == Phase::Probing {
                state.phase = Phase::Open { until: Instant::now() };
            }
            drop(state);
            self.breaker.changed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        let settings = BreakerSettings {
            failures: 2,
            cool_down: Duration::from_secs(10),
            max_cool_down: Duration::from_secs(40),
        };
        Breaker::new("shop", settings)
    }

    fn down() -> Outcome {
        Outcome::Unavailable { retry_after: None }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_repeated_failures_then_probes_and_closes() {
        let breaker = breaker();
        breaker.acquire().await.settle(down());
        assert!(breaker.is_closed(), "one failure is not an outage");
        breaker.acquire().await.settle(down());
        assert!(!breaker.is_closed());

        let started = Instant::now();
        let probe = breaker.acquire().await;
        assert!(probe.probe);
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(10),
            "the probe waits for the cool-down"
        );
        probe.settle(Outcome::Answered);
        assert!(breaker.is_closed());
        assert!(!breaker.acquire().await.probe);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_doubles_the_cool_down_up_to_its_ceiling() {
        let breaker = breaker();
        breaker.acquire().await.settle(down());
        breaker.acquire().await.settle(down());
        let mut waits = Vec::new();
        for _ in 0..4 {
            let started = Instant::now();
            breaker.acquire().await.settle(down());
            waits.push(started.elapsed().as_secs());
        }
        assert_eq!(waits, [10, 20, 40, 40]);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_holds_every_request_to_the_endpoint() {
        let breaker = breaker();
        let retry_after = Some(Duration::from_secs(2));
        breaker.acquire().await.settle(Outcome::Unavailable { retry_after });
        let started = Instant::now();
        breaker.acquire().await.settle(Outcome::Answered);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_lets_another_caller_probe() {
        let breaker = breaker();
        breaker.acquire().await.settle(down());
        breaker.acquire().await.settle(down());
        drop(breaker.acquire().await);
        let started = Instant::now();
        let next = breaker.acquire().await;
        assert!(next.probe);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
