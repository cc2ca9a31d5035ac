//! The pooling allocator `passerelle run` uses, with real components: a
//! full pool makes messages wait for a slot instead of failing, a reused
//! slot starts clean (no state of one message is visible to the next) and
//! keeps the pages its guests wrote resident, however scattered, and
//! the time and memory limits still hold, also after the host sat idle,
//! and a guest waiting in a WASI call is stopped in wall time. And the
//! lanes the live path runs its transforms in (`runtime::Lanes`): many
//! messages at once each get their own answer from their own instance, a
//! guest that runs to its time limit, or waits in a WASI call, does not
//! hold up the messages behind it in its lane, a lane keeps only a few
//! transforms going at once, and a lane that falls behind sends the next
//! messages to another.

mod support;

use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt as _, StreamExt as _};
use passerelle::runtime::{
    Action, GuestLimits, LONG_RUNNING, Lanes, Message, PoolSize, RUNNING_AT_ONCE, RouteContext, Runtime, Transform,
    TransformFailure,
};
use support::{CRM_ACCOUNT, fixture, transform};

const MEMORY: usize = 16 << 20;

fn route() -> RouteContext {
    RouteContext {
        route: "pooled".into(),
        limits: GuestLimits {
            time: Duration::from_millis(500),
            memory: MEMORY,
            ..GuestLimits::default()
        },
        ..Default::default()
    }
}

fn message() -> Message {
    Message {
        body: CRM_ACCOUNT.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn pooled(instances: u32) -> Runtime {
    Runtime::pooled(PoolSize {
        instances,
        max_memory: MEMORY,
    })
    .unwrap()
}

fn load(runtime: &Runtime, path: std::path::PathBuf) -> Transform {
    runtime.load(&std::fs::read(path).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_pool_makes_messages_wait_not_fail() {
    let runtime = pooled(2);
    let good = load(&runtime, transform("crm-to-shop"));
    let (route, message) = (route(), message());
    // Ten times more messages in flight than slots.
    let runs = (0..20).map(|_| runtime.run(&good, &route, &message));
    let outcomes = futures_util::future::join_all(runs).await;
    for outcome in outcomes {
        assert_eq!(outcome.expect("a full pool must not fail a message").len(), 1);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reused_slot_starts_clean() {
    // One slot: every run reuses it.
    let runtime = pooled(1);
    let counter = load(&runtime, fixture("counter"));
    let (route, message) = (route(), message());
    for _ in 0..5 {
        let failure = runtime.run(&counter, &route, &message).await.unwrap_err();
        assert_eq!(
            failure,
            TransformFailure::Reject("call 1".into()),
            "a global survived a message"
        );
    }
}

/// Minor page faults of the calling thread so far.
fn minor_faults_of_this_thread() -> i64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given, which outlives the call.
    let usage = unsafe {
        assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()), 0);
        usage.assume_init()
    };
    usage.ru_minflt
}

// One thread: the guests, their instances and the slot's resets all run
// on it, so its page faults are theirs.
#[tokio::test(flavor = "current_thread")]
async fn a_slot_keeps_scattered_writes_resident() {
    // One slot: every message reuses it.
    let runtime = pooled(1);
    let hostile = load(&runtime, fixture("hostile"));
    let route = route();
    // 400 pages written in 200 separate runs, within the 2 MiB a slot
    // keeps resident: wasmtime 48.0.8 as published reset the first 32 runs
    // and decommitted the rest, so each message faulted about 170 pages in
    // again (vendor/README.md). The guest rejects its message if one of
    // those pages still holds an earlier message's write: kept resident,
    // each is reset all the same.
    let scattered = Message {
        body: br#"{"do": "scatter", "pages": 400}"#.to_vec(),
        ..Default::default()
    };
    const MESSAGES: i64 = 20;
    // The first message faults its pages in.
    runtime
        .run(&hostile, &route, &scattered)
        .await
        .expect("scattered writes");
    let before = minor_faults_of_this_thread();
    for _ in 0..MESSAGES {
        runtime
            .run(&hostile, &route, &scattered)
            .await
            .expect("scattered writes");
    }
    let per_message = (minor_faults_of_this_thread() - before) / MESSAGES;
    assert!(
        per_message < 50,
        "{per_message} page faults a message: the slot's reset let the written pages go"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_still_hold_in_the_pool() {
    let runtime = pooled(2);
    let good = load(&runtime, transform("crm-to-shop"));
    let (route, message) = (route(), message());
    let expected = [
        ("looping", "time limit"),
        ("memory-hog", "exceeded its memory limit"),
        ("panicking", "boom"),
    ];
    for (hostile, words) in expected {
        let bad = load(&runtime, fixture(hostile));
        let failure = runtime.run(&bad, &route, &message).await.unwrap_err();
        assert!(
            matches!(&failure, TransformFailure::Trap(reason) if reason.contains(words)),
            "{hostile}: {failure:?}"
        );
        let actions = runtime.run(&good, &route, &message).await.unwrap();
        assert_eq!(actions.len(), 1, "after {hostile}");
    }
}

/// The epoch ticker sleeps on an idle host (runtime/ticker.rs); a guest
/// that starts then must still be stopped at its time limit, not loop
/// with no clock.
#[test]
fn a_busy_guest_is_stopped_after_the_host_sat_idle() {
    let runtime = pooled(1);
    let looping = load(&runtime, fixture("looping"));
    // Ten times the idle spell after which the ticker sleeps.
    std::thread::sleep(Duration::from_secs(1));

    // A guest with no clock never yields: apart, so that this test fails
    // rather than hangs with it.
    let outcome = run_apart(runtime, looping, message())
        .recv_timeout(Duration::from_secs(20))
        .expect("the looping guest was never stopped");
    assert!(
        matches!(&outcome, Err(TransformFailure::Trap(reason)) if reason.contains("time limit")),
        "{outcome:?}"
    );
}

/// Only a guest that imports WASI can wait in a host call, out of the epoch
/// deadline's reach: its call alone is also bounded in wall time.
#[test]
fn a_guest_waiting_in_a_wasi_call_is_stopped_in_wall_time() {
    let runtime = pooled(2);
    assert!(!load(&runtime, transform("crm-to-shop")).imports_wasi());
    assert!(load(&runtime, transform("crm-to-shop-js")).imports_wasi());
    let hostile = load(&runtime, fixture("hostile"));
    assert!(hostile.imports_wasi());

    let sleeping = Message {
        body: br#"{"do": "sleep", "millis": 3600000}"#.to_vec(),
        ..Default::default()
    };
    let outcome = run_apart(runtime, hostile, sleeping)
        .recv_timeout(Duration::from_secs(20))
        .expect("the sleeping guest was never stopped");
    assert!(
        matches!(&outcome, Err(TransformFailure::Trap(reason)) if reason.contains("time limit")),
        "{outcome:?}"
    );
}

/// Runs `message` through `transform` on a thread of its own, with the
/// outcome on the channel: a guest that is never stopped fails its test
/// at the caller's timeout instead of hanging it.
fn run_apart(
    runtime: Runtime,
    transform: Transform,
    message: Message,
) -> std::sync::mpsc::Receiver<Result<Vec<passerelle::runtime::Action>, TransformFailure>> {
    let (outcome_tx, outcome_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _ = outcome_tx.send(tokio.block_on(runtime.run(&transform, &route(), &message)));
    });
    outcome_rx
}

/// A CRM account of its own for each `n`.
fn account(n: usize) -> Message {
    let body =
        format!(r#"{{"Id": "gg-{n}", "Name": "Account {n}", "Status__c": "CLIENT_ACTIVE", "Country__c": "FR"}}"#);
    Message {
        body: body.into_bytes(),
        ..Default::default()
    }
}

/// The shipped crm-to-shop, and a guest that loops until its time limit.
fn good_and_looping(runtime: &Runtime) -> (Transform, Transform) {
    (
        load(runtime, transform("crm-to-shop")),
        load(runtime, fixture("looping")),
    )
}

/// Whether the guest was stopped by its time limit.
fn stopped_at_time_limit(outcome: &Result<Vec<Action>, TransformFailure>) -> bool {
    outcome
        .as_ref()
        .is_err_and(|failure| failure.reason().contains("time limit"))
}

/// The CRM id of crm-to-shop's one call.
fn crm_id(actions: &[Action]) -> String {
    match actions {
        [Action::Call { args, .. }] => args["crmId"].as_str().unwrap_or_default().to_string(),
        other => panic!("crm-to-shop gave {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_message_in_the_lane_gets_its_own_answer() {
    // Fewer slots than messages: some wait in the lane for an instance.
    let runtime = pooled(4);
    let lanes = Lanes::start(runtime.clone());
    let good = load(&runtime, transform("crm-to-shop"));
    let route = route();
    let messages: Vec<Message> = (0..64).map(account).collect();
    let answers =
        futures_util::future::join_all(messages.iter().map(|message| lanes.run(&good, &route, message))).await;
    for (n, ran) in answers.into_iter().enumerate() {
        let actions = ran.outcome.unwrap_or_else(|failure| panic!("message {n}: {failure:?}"));
        assert_eq!(crm_id(&actions), format!("gg-{n}"), "message {n} got another's answer");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_at_its_time_limit_does_not_hold_up_the_lane() {
    let runtime = pooled(8);
    // One lane: the slow guests and the good ones all share it.
    let lane = Lanes::with_lanes(runtime.clone(), 1);
    let (good, looping) = good_and_looping(&runtime);
    let hostile = load(&runtime, fixture("hostile"));
    let route = route();
    let sleeping = Message {
        body: br#"{"do": "sleep", "millis": 3600000}"#.to_vec(),
        ..Default::default()
    };
    let (first, messages): (Message, Vec<Message>) = (account(0), (0..20).map(account).collect());

    // The slow ones first: then every good message is behind them.
    let mut runs = FuturesUnordered::new();
    runs.push(async { ("looping", lane.run(&looping, &route, &first).await) }.boxed_local());
    runs.push(async { ("sleeping", lane.run(&hostile, &route, &sleeping).await) }.boxed_local());
    for message in &messages {
        runs.push(async { ("good", lane.run(&good, &route, message).await) }.boxed_local());
    }
    let mut finished = Vec::new();
    while let Some((name, ran)) = runs.next().await {
        match name {
            "good" => assert_eq!(ran.outcome.map(|actions| actions.len()), Ok(1)),
            slow => assert!(stopped_at_time_limit(&ran.outcome), "{slow}: {:?}", ran.outcome),
        }
        finished.push(name);
    }
    // Both slow guests ran for their whole limit; every good message was
    // answered before either of them.
    assert_eq!(finished.len(), 22);
    assert!(
        finished[..20].iter().all(|name| *name == "good"),
        "finished in this order: {finished:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lane_keeps_a_few_transforms_going_and_lets_long_ones_aside() {
    let runtime = pooled(16);
    let lane = Lanes::with_lanes(runtime.clone(), 1);
    let hostile = load(&runtime, fixture("hostile"));
    let route = route();
    // Each waits in WASI until its time limit stops it.
    let sleeping = Message {
        body: br#"{"do": "sleep", "millis": 3600000}"#.to_vec(),
        ..Default::default()
    };
    let count = RUNNING_AT_ONCE + 2;
    let runs = futures_util::future::join_all((0..count).map(|_| lane.run(&hostile, &route, &sleeping))).await;
    for ran in &runs {
        assert!(stopped_at_time_limit(&ran.outcome), "{:?}", ran.outcome);
    }
    let mut waits: Vec<Duration> = runs.iter().map(|ran| ran.waited).collect();
    waits.sort();
    // The first RUNNING_AT_ONCE started together; the next ones only once
    // those had run LONG_RUNNING, not as they came (all at once), and not
    // when those ended at their time limit.
    assert!(
        waits[RUNNING_AT_ONCE] >= LONG_RUNNING,
        "more than {RUNNING_AT_ONCE} started at once: {waits:?}"
    );
    assert!(
        waits[count - 1] < route.limits.time,
        "the last ones waited for the first ones' time limit: {waits:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lane_that_falls_behind_sends_the_next_messages_to_another() {
    let runtime = pooled(16);
    let lanes = Lanes::with_lanes(runtime.clone(), 2);
    let (good, looping) = good_and_looping(&runtime);
    let route = route();
    let message = account(1);
    // Idle: the first lane.
    assert_eq!(lanes.run(&good, &route, &message).await.lane, 0);

    // Ten guests that take their whole time limit, a tick at a time, all in
    // the first lane (it kept up until now): a message behind them waits a
    // round of ten ticks, twice SPILL_AFTER.
    let mut short = route.clone();
    short.limits.time = Duration::from_millis(100);
    let busy = futures_util::future::join_all((0..10).map(|_| lanes.run(&looping, &short, &message)));
    let answered_meanwhile = async {
        let mut lanes_used = Vec::new();
        for _ in 0..5 {
            let ran = lanes.run(&good, &route, &message).await;
            assert_eq!(ran.outcome.map(|actions| actions.len()), Ok(1));
            lanes_used.push(ran.lane);
        }
        lanes_used
    };
    let (busy, lanes_used) = tokio::join!(busy, answered_meanwhile);
    assert!(busy.iter().all(|ran| ran.lane == 0 && ran.outcome.is_err()), "{busy:?}");
    assert!(
        lanes_used.contains(&1),
        "every message waited in the busy lane: {lanes_used:?}"
    );

    // Idle again: back to the first lane.
    assert_eq!(lanes.run(&good, &route, &message).await.lane, 0);
}
