//! The epoch ticker: the clock of the guests' time limits. Wasmtime stops
//! or yields guest code when the engine's epoch passes a store's deadline;
//! this thread advances the epoch every [`EPOCH_TICK`].

use std::time::Duration;

use wasmtime::Engine;

/// How often the epoch advances: the granularity of time limits.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Starts the ticker of `engine`'s epoch.
pub fn spawn(engine: &Engine) {
    // A weak handle: the ticker ends with the last user of the engine.
    let engine = engine.weak();
    std::thread::Builder::new()
        .name("passerelle-epoch".into())
        .spawn(move || {
            while let Some(engine) = engine.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawning the epoch ticker thread");
}
