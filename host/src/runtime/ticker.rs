//! The epoch ticker: the clock of the guests' time limits. Wasmtime stops
//! or yields guest code when the engine's epoch passes a store's deadline;
//! this thread advances the epoch every [`EPOCH_TICK`] while guests run.
//!
//! An idle host needs no clock: after [`QUIET_TICKS`] ticks without a
//! guest, the thread sleeps until one starts, instead of waking a
//! thousand times a second for nothing. Under load guests start all the
//! time, so it never sleeps and a start costs two atomic additions and a
//! load. The one invariant: a guest never runs while the ticker sleeps
//! (it would run without a time limit, and a busy one would never yield).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use wasmtime::{Engine, EngineWeak};

/// How often the epoch advances: the granularity of time limits.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);
/// Ticks with no guest running and none started before the ticker sleeps.
const QUIET_TICKS: u32 = 100;
/// How often a sleeping ticker checks that its engine is still in use.
const ENGINE_CHECK: Duration = Duration::from_secs(1);

/// The handle a runtime keeps: it tells the ticker when guests run.
#[derive(Clone)]
pub struct Ticker {
    shared: Arc<Shared>,
}

struct Shared {
    /// Guests running now.
    running: AtomicUsize,
    /// Guests started so far: a start during a quiet spell ends it.
    starts: AtomicU64,
    /// Set, under `lock`, by a ticker about to sleep: a starting guest that
    /// sees it wakes the ticker.
    asleep: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
    /// Epochs advanced so far.
    ticks: AtomicU64,
}

/// A guest counted as running until this is dropped.
pub struct Running<'a>(&'a Shared);

impl Ticker {
    /// Starts the ticker of `engine`'s epoch. It ends within
    /// [`ENGINE_CHECK`] of the engine's last user.
    pub fn spawn(engine: &Engine) -> Self {
        let shared = Arc::new(Shared {
            running: AtomicUsize::new(0),
            starts: AtomicU64::new(0),
            asleep: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            ticks: AtomicU64::new(0),
        });
        let engine = engine.weak();
        let ticking = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("passerelle-epoch".into())
            .spawn(move || ticking.tick(&engine))
            .expect("spawning the epoch ticker thread");
        Self { shared }
    }

    /// Counts a guest as running (waking the ticker if it sleeps) until the
    /// returned guard is dropped. Take it before the guest's store is armed.
    pub fn guest_running(&self) -> Running<'_> {
        let shared = &*self.shared;
        shared.starts.fetch_add(1, SeqCst);
        shared.running.fetch_add(1, SeqCst);
        // SeqCst on both sides: either the ticker sees this start before it
        // sleeps, or this sees `asleep` and wakes it (under the lock, so not
        // before it waits).
        if shared.asleep.load(SeqCst) {
            let _locked = shared.lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            shared.wake.notify_one();
        }
        Running(shared)
    }

    /// Epochs advanced so far.
    #[cfg(test)]
    fn ticks(&self) -> u64 {
        self.shared.ticks.load(SeqCst)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, SeqCst);
    }
}

impl Shared {
    /// The ticker thread: sleep a tick, advance the epoch, and sleep for
    /// good after a quiet spell, until the engine has no user left.
    fn tick(&self, engine: &EngineWeak) {
        let mut quiet = 0;
        let mut starts = self.starts.load(SeqCst);
        loop {
            // A tick first: a guest that woke the ticker gets a whole one.
            std::thread::sleep(EPOCH_TICK);
            let Some(live) = engine.upgrade() else { return };
            live.increment_epoch();
            drop(live);
            self.ticks.fetch_add(1, SeqCst);

            let now = self.starts.load(SeqCst);
            if now != starts || self.running.load(SeqCst) > 0 {
                (quiet, starts) = (0, now);
                continue;
            }
            quiet += 1;
            if quiet >= QUIET_TICKS {
                if !self.sleep_until_a_start(starts, engine) {
                    return;
                }
                quiet = 0;
            }
        }
    }

    /// Sleeps until a guest starts after the `seen` starts; false when the
    /// engine lost its last user meanwhile.
    fn sleep_until_a_start(&self, seen: u64, engine: &EngineWeak) -> bool {
        let mut locked = self.lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        self.asleep.store(true, SeqCst);
        let mut engine_in_use = true;
        while self.starts.load(SeqCst) == seen {
            let (again, waited) = self
                .wake
                .wait_timeout(locked, ENGINE_CHECK)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            locked = again;
            if waited.timed_out() && engine.upgrade().is_none() {
                engine_in_use = false;
                break;
            }
        }
        self.asleep.store(false, SeqCst);
        engine_in_use
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn engine() -> Engine {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        Engine::new(&config).unwrap()
    }

    /// Polls `done` every few milliseconds, up to 10 s.
    fn eventually(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "never: {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// True when no tick comes in 20 ticks' time.
    fn stopped(ticker: &Ticker) -> bool {
        let before = ticker.ticks();
        std::thread::sleep(EPOCH_TICK * 20);
        ticker.ticks() == before
    }

    #[test]
    fn an_idle_ticker_sleeps_and_a_starting_guest_wakes_it() {
        let engine = engine();
        let ticker = Ticker::spawn(&engine);
        eventually("the idle ticker sleeps", || stopped(&ticker));

        let running = ticker.guest_running();
        let woken_at = ticker.ticks();
        eventually("the ticker ticks again", || ticker.ticks() >= woken_at + 10);
        // While a guest runs, it never sleeps, however long that is.
        std::thread::sleep(EPOCH_TICK * (QUIET_TICKS + 50));
        assert!(!stopped(&ticker), "slept while a guest ran");

        drop(running);
        eventually("it sleeps again once the guest is done", || stopped(&ticker));
    }

    #[test]
    fn starts_without_a_pause_keep_it_awake() {
        let engine = engine();
        let ticker = Ticker::spawn(&engine);
        let until = Instant::now() + EPOCH_TICK * (QUIET_TICKS * 3);
        while Instant::now() < until {
            drop(ticker.guest_running());
            assert!(!ticker.shared.asleep.load(SeqCst), "asleep between starts");
            std::thread::sleep(EPOCH_TICK * 5);
        }
    }

    #[test]
    fn the_ticker_ends_with_its_engine_even_asleep() {
        let engine = engine();
        let ticker = Ticker::spawn(&engine);
        eventually("the idle ticker sleeps", || stopped(&ticker));
        drop(engine);
        // The thread holds the other reference to what it shares.
        eventually("the ticker's thread ends", || Arc::strong_count(&ticker.shared) == 1);
    }
}
