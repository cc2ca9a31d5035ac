//! The transform alone in a loop, for a profiler: `Runtime::run` of the
//! shipped crm-to-shop component in a fresh pooled instance, N times, with
//! the code tables `passerelle-bench` configures. Under
//! `valgrind --tool=callgrind` its instruction count per message is the
//! same from run to run, whatever else the machine does, so it judges a
//! change to the sandbox's path where timings are too noisy:
//!
//! ```text
//! cargo build --release --example transform_loop -p passerelle-bench
//! valgrind --tool=callgrind $CARGO_TARGET_DIR/release/examples/transform_loop build/transforms/crm-to-shop.wasm 2000
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context as _, ensure};
use passerelle::runtime::{GuestLimits, Message, PoolSize, RouteContext, Runtime};

/// The allocator of the `passerelle` binary, so that the loop costs what
/// `passerelle run` pays.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [component, runs] = args.as_slice() else {
        anyhow::bail!("usage: transform_loop COMPONENT.wasm RUNS");
    };
    let runs: u32 = runs.parse().context("RUNS")?;
    let bytes = std::fs::read(component).with_context(|| component.clone())?;
    let limits = GuestLimits::default();
    let runtime = Runtime::pooled(PoolSize {
        instances: 4,
        max_memory: limits.memory,
    })?;
    let transform = runtime.load(&bytes)?;
    let config = BTreeMap::from([
        ("status_codes".to_string(), r#"{"CLIENT_ACTIVE": 70}"#.to_string()),
        ("country_ids".to_string(), r#"{"FR": 76}"#.to_string()),
    ]);
    let context = RouteContext {
        route: "crm-to-shop".into(),
        config: Arc::new(config),
        limits,
    };
    let message = Message {
        body: br#"{"Id": "gg-11", "Name": "Eleven Labs", "Status__c": "CLIENT_ACTIVE", "Country__c": "FR"}"#.to_vec(),
        content_type: Some("application/json".into()),
        routing_key: "account.updated".into(),
        message_id: Some("msg-11".into()),
        attempt: 1,
        ..Default::default()
    };
    let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    tokio.block_on(async {
        let started = std::time::Instant::now();
        for _ in 0..runs {
            let actions = runtime.run(&transform, &context, &message).await?;
            ensure!(actions.len() == 1, "crm-to-shop gave {actions:?}");
        }
        let each = started.elapsed().as_nanos() as f64 / f64::from(runs.max(1));
        println!("{runs} messages, {each:.0} ns each");
        Ok(())
    })
}
