//! A slot whose written pages the kernel swapped out still starts clean:
//! the next message in it sees none of the last one's data. In a test
//! binary of its own because, to have the pool's pages swapped out, it
//! asks the kernel to page out its whole process, which would disturb the
//! timings and page-fault counts of the tests beside it.

mod support;

use std::time::Duration;

use passerelle::runtime::{GuestLimits, Message, PoolSize, RouteContext, Runtime, TransformFailure};
use support::fixture;
use support::swap::{self, page_out_this_process};

const MEMORY: usize = 16 << 20;

fn scatter(sleep_millis: u64) -> Message {
    Message {
        body: format!(r#"{{"do": "scatter", "pages": 400, "sleep_millis": {sleep_millis}}}"#).into_bytes(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slot_whose_written_pages_were_swapped_out_starts_clean() {
    let _swap = swap::active();
    // One slot: the second message reuses the first one's memory.
    let runtime = Runtime::pooled(PoolSize {
        instances: 1,
        max_memory: MEMORY,
    })
    .unwrap();
    let hostile = runtime.load(&std::fs::read(fixture("hostile")).unwrap()).unwrap();
    let route = RouteContext {
        route: "swapped".into(),
        limits: GuestLimits {
            time: Duration::from_secs(10),
            memory: MEMORY,
            ..GuestLimits::default()
        },
        ..Default::default()
    };

    // The first message writes 200 pages, then waits while the kernel
    // swaps them out: when its instance ends, the pages it wrote are in
    // swap, not in memory. wasmtime 48.0.8's reset asked the kernel for
    // written pages that are present, so it neither reset these nor let
    // them go, and the next instance in the slot read them back
    // (vendor/README.md).
    let writes_then_waits = scatter(1000);
    let (first, swapped_kib) = tokio::join!(runtime.run(&hostile, &route, &writes_then_waits), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        tokio::task::spawn_blocking(page_out_this_process).await.unwrap()
    });
    first.expect("the first message");
    assert!(
        swapped_kib >= 800,
        "only {swapped_kib} KiB of the process went to swap: the test swapped too little to test anything"
    );

    // The guest rejects its message if a page it writes is not zero.
    let second = runtime.run(&hostile, &route, &scatter(0)).await;
    if let Err(TransformFailure::Reject(reason)) = &second {
        panic!("the next message in the slot saw the last one's data: {reason}");
    }
    second.expect("the second message");
}
