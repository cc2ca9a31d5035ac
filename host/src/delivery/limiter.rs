//! The pace of one endpoint: a token bucket (`rate_limit`, `burst`) and a
//! cap on requests in flight (`max_in_flight`), shared by every route that
//! calls the endpoint, so that neither an import nor a burst of live
//! changes floods it. Like the breaker, it waits instead of failing: no
//! attempt is spent. Waiters are served by priority, then in order of
//! arrival: while a route of higher priority waits, lower ones do not take
//! a token or a slot, so live changes are never queued behind a million
//! imported records; within a priority, nobody starves.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::{Pace, Priority};

pub struct Limiter {
    pace: Pace,
    state: Mutex<State>,
    changed: Notify,
}

struct State {
    tokens: f64,
    refilled_at: Instant,
    in_flight: u32,
    /// Tickets of the waiters per priority (index: `Priority as usize`),
    /// in order of arrival.
    waiting: [BTreeSet<u64>; 3],
    next_ticket: u64,
}

/// Leave to send one request; gives its in-flight slot back when dropped
/// (none is taken from an endpoint without limits).
pub struct Slot<'a> {
    limiter: Option<&'a Limiter>,
}

/// A waiter's place in line, given up when it leaves, also when its
/// task is cancelled.
struct Waiting<'a> {
    limiter: &'a Limiter,
    priority: Priority,
    ticket: u64,
}

impl Limiter {
    pub fn new(pace: Pace) -> Self {
        Self {
            state: Mutex::new(State {
                tokens: f64::from(pace.burst),
                refilled_at: Instant::now(),
                in_flight: 0,
                waiting: Default::default(),
                next_ticket: 0,
            }),
            pace,
            changed: Notify::new(),
        }
    }

    /// Waits for a token and an in-flight slot, behind every waiter of
    /// higher priority and those of its own that came first.
    pub async fn acquire(&self, priority: Priority) -> Slot<'_> {
        // Without a rate or a cap nobody ever waits, so there is no line to
        // keep: no lock, no ticket (this is every request's path).
        if self.pace.per_second.is_none() && self.pace.max_in_flight.is_none() {
            return Slot { limiter: None };
        }
        let waiting = Waiting::register(self, priority);
        loop {
            let notified = self.changed.notified();
            match self.try_take(priority, waiting.ticket) {
                Ok(()) => {
                    // Lower priorities may now go, and others may retry.
                    self.changed.notify_waiters();
                    return Slot { limiter: Some(self) };
                }
                Err(Some(until)) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => {}
                        _ = notified => {}
                    }
                }
                Err(None) => notified.await,
            }
        }
    }

    /// Takes a token and a slot now, or says until when to wait (None:
    /// until something changes).
    fn try_take(&self, priority: Priority, ticket: u64) -> Result<(), Option<Instant>> {
        let mut state = self.lock();
        let higher_waits = state.waiting[priority as usize + 1..].iter().any(|w| !w.is_empty());
        let first_in_line = state.waiting[priority as usize].first() == Some(&ticket);
        if higher_waits || !first_in_line {
            return Err(None);
        }
        if self.pace.max_in_flight.is_some_and(|max| state.in_flight >= max) {
            return Err(None);
        }
        let Some(rate) = self.pace.per_second else {
            state.in_flight += 1;
            return Ok(());
        };
        let now = Instant::now();
        let refill = now.duration_since(state.refilled_at).as_secs_f64() * rate;
        state.tokens = (state.tokens + refill).min(f64::from(self.pace.burst));
        state.refilled_at = now;
        if state.tokens >= 1.0 {
            state.tokens -= 1.0;
            state.in_flight += 1;
            return Ok(());
        }
        let missing = (1.0 - state.tokens) / rate;
        Err(Some(now + Duration::from_secs_f64(missing)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let Some(limiter) = self.limiter {
            limiter.lock().in_flight -= 1;
            limiter.changed.notify_waiters();
        }
    }
}

impl<'a> Waiting<'a> {
    fn register(limiter: &'a Limiter, priority: Priority) -> Self {
        let mut state = limiter.lock();
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.waiting[priority as usize].insert(ticket);
        Self {
            limiter,
            priority,
            ticket,
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.limiter.lock().waiting[self.priority as usize].remove(&self.ticket);
        // The next in line, or a lower priority, may go now.
        self.limiter.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn pace(per_second: Option<f64>, burst: u32, max_in_flight: Option<u32>) -> Pace {
        Pace {
            per_second,
            burst,
            max_in_flight,
        }
    }

    /// Takes `n` slots one after the other (each released at once) and
    /// returns when each was granted, from the start.
    async fn grant_times(limiter: &Limiter, n: usize) -> Vec<Duration> {
        let start = Instant::now();
        let mut times = Vec::new();
        for _ in 0..n {
            drop(limiter.acquire(Priority::Normal).await);
            times.push(start.elapsed());
        }
        times
    }

    #[tokio::test(start_paused = true)]
    async fn the_burst_goes_at_once_then_the_rate_holds() {
        let limiter = Limiter::new(pace(Some(10.0), 3, None));
        let times = grant_times(&limiter, 8).await;
        assert!(times[..3].iter().all(|t| *t == Duration::ZERO), "{times:?}");
        // Then one every 100 ms.
        for (i, t) in times[3..].iter().enumerate() {
            let expected = Duration::from_millis(100 * (i as u64 + 1));
            assert!(t.abs_diff(expected) < Duration::from_millis(2), "{i}: {t:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn max_in_flight_waits_for_a_slot() {
        let limiter = Arc::new(Limiter::new(pace(None, 1, Some(2))));
        let first = limiter.acquire(Priority::Normal).await;
        let _second = limiter.acquire(Priority::Normal).await;
        let third = {
            let limiter = limiter.clone();
            tokio::spawn(async move {
                drop(limiter.acquire(Priority::Normal).await);
                Instant::now()
            })
        };
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!third.is_finished(), "a third request went with two in flight");
        let released = Instant::now();
        drop(first);
        assert_eq!(third.await.unwrap(), released);
    }

    #[tokio::test(start_paused = true)]
    async fn higher_priorities_are_served_first() {
        let limiter = Arc::new(Limiter::new(pace(Some(10.0), 1, None)));
        drop(limiter.acquire(Priority::Low).await); // the burst is spent
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // Five low waiters first, then one high: the high one goes next.
        for (i, priority) in [Priority::Low; 5].into_iter().chain([Priority::High]).enumerate() {
            let (limiter, order) = (limiter.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                drop(limiter.acquire(priority).await);
                order.lock().unwrap().push((i, priority));
            }));
            tokio::task::yield_now().await;
        }
        for task in tasks {
            task.await.unwrap();
        }
        let order = order.lock().unwrap();
        assert_eq!(order[0], (5, Priority::High), "{order:?}");
        assert_eq!(order.len(), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn within_a_priority_first_come_first_served() {
        let limiter = Arc::new(Limiter::new(pace(Some(10.0), 1, None)));
        drop(limiter.acquire(Priority::Normal).await);
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..6 {
            let (limiter, order) = (limiter.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                drop(limiter.acquire(Priority::Normal).await);
                order.lock().unwrap().push(i);
            }));
            tokio::task::yield_now().await;
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4, 5]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_waiter_does_not_block_lower_priorities() {
        let limiter = Arc::new(Limiter::new(pace(Some(1.0), 1, None)));
        drop(limiter.acquire(Priority::Normal).await);
        let high = {
            let limiter = limiter.clone();
            tokio::spawn(async move { drop(limiter.acquire(Priority::High).await) })
        };
        tokio::task::yield_now().await;
        high.abort();
        let _ = high.await;
        let start = Instant::now();
        drop(limiter.acquire(Priority::Low).await);
        assert!(start.elapsed() <= Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn no_pace_means_no_wait() {
        let limiter = Limiter::new(pace(None, 1, None));
        let times = grant_times(&limiter, 100).await;
        assert!(times.iter().all(|t| *t == Duration::ZERO));
        // Held at once, of any priority: still none waits.
        let start = Instant::now();
        let mut held = Vec::new();
        for priority in [Priority::Low, Priority::Normal, Priority::High].repeat(100) {
            held.push(limiter.acquire(priority).await);
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(limiter.lock().in_flight, 0, "an unlimited endpoint keeps no count");
    }
}
