//! Test fixture, not shipped: a transform that turns against the host the
//! way its message says, `{"do": "<case>", ...}`, so that `tests/hostile.rs`
//! can check that each case ends with a clear reason and the host serving
//! the next message. Every call goes to the `target` endpoint's `put`.

use std::hint::black_box;

use passerelle_guest::{Action, Call, Failure, Message, call, log, publish, reject, transform};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
#[serde(tag = "do", rename_all = "kebab-case")]
enum Order {
    /// One call with these args, as they are: values that become URI
    /// segments, query parameters, headers.
    Call { args: Value },
    /// `count` calls.
    Actions { count: usize },
    /// One call whose args hold a string of `bytes` bytes.
    HugeArgs { bytes: usize },
    /// A reject whose reason is `bytes` bytes long.
    HugeReject { bytes: usize },
    /// An info line of `bytes` bytes, then an ordinary call.
    HugeLog { bytes: usize },
    /// One call whose args are JSON nested `depth` deep.
    DeepArgs { depth: usize },
    /// A publish whose routing key is `bytes` bytes long.
    LongRoutingKey { bytes: usize },
    /// Recursion without end: the stack overflows.
    Recurse,
    /// Writes `text` to stderr (WASI), then traps without a log line.
    StderrThenTrap { text: String },
    /// Sleeps `millis` in a WASI call, where no epoch deadline reaches it,
    /// then makes an ordinary call.
    Sleep { millis: u64 },
    /// Writes one byte in every other page of the first `pages` pages (of
    /// 4 KiB, the host's) of a zeroed static area: its memory's written
    /// pages lie in about `pages / 2` separate runs. Rejects the message if
    /// one of those bytes was not zero: a page kept an earlier message's
    /// write. Then sleeps `sleep_millis` (if given) in a WASI call, the
    /// time for a test to have the kernel swap those pages out while the
    /// instance still holds them, and makes an ordinary call.
    Scatter {
        pages: usize,
        #[serde(default)]
        sleep_millis: u64,
    },
}

fn turn(msg: Message) -> Result<Vec<Action>, Failure> {
    match msg.json()? {
        Order::Call { args } => Ok(vec![put(&args)?]),
        Order::Actions { count } => (0..count).map(|n| put(&json!({ "id": n }))).collect(),
        Order::HugeArgs { bytes } => Ok(vec![put(&json!({ "id": "huge", "value": "x".repeat(bytes) }))?]),
        Order::HugeReject { bytes } => Err(reject("r".repeat(bytes))),
        Order::HugeLog { bytes } => {
            log::info("l".repeat(bytes));
            Ok(vec![put(&json!({ "id": "after-huge-log" }))?])
        }
        Order::DeepArgs { depth } => {
            let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            Ok(vec![Action::Call(Call {
                endpoint: "target".into(),
                operation: "put".into(),
                args: format!(r#"{{"id": "deep", "value": {nested}}}"#),
            })])
        }
        Order::LongRoutingKey { bytes } => Ok(vec![publish("amq.topic", &"k".repeat(bytes), "{}", &[])]),
        Order::Recurse => Ok(vec![put(&json!({ "id": deeper(0) }))?]),
        Order::StderrThenTrap { text } => {
            eprintln!("{text}");
            std::process::abort()
        }
        Order::Sleep { millis } => {
            std::thread::sleep(std::time::Duration::from_millis(millis));
            Ok(vec![put(&json!({ "id": "slept" }))?])
        }
        Order::Scatter { pages, sleep_millis } => {
            scatter(pages)?;
            std::thread::sleep(std::time::Duration::from_millis(sleep_millis));
            Ok(vec![put(&json!({ "id": "scattered" }))?])
        }
    }
}

fn put(args: &Value) -> Result<Action, Failure> {
    call("target", "put", args)
}

const PAGE: usize = 4096;
const SCATTER_PAGES: usize = 512;
/// Zero in every fresh instance (it is `.bss`), whatever earlier
/// instances in the same slot wrote.
static mut SCATTER_AREA: [u8; SCATTER_PAGES * PAGE] = [0; SCATTER_PAGES * PAGE];

fn scatter(pages: usize) -> Result<(), Failure> {
    if pages > SCATTER_PAGES {
        return Err(reject(format!("scatter: at most {SCATTER_PAGES} pages")));
    }
    let area = &raw mut SCATTER_AREA;
    for page in (0..pages).step_by(2) {
        // SAFETY: within the area; one instance runs one message, on one thread.
        unsafe {
            let byte = area.cast::<u8>().add(page * PAGE);
            if byte.read_volatile() != 0 {
                return Err(reject(format!("scatter: page {page} kept an earlier message's write")));
            }
            byte.write_volatile(1);
        }
    }
    Ok(())
}

/// Never returns: each frame waits for the next one's result.
#[expect(unconditional_recursion, reason = "the stack overflow is this case's point")]
fn deeper(depth: u64) -> u64 {
    black_box(deeper(black_box(depth + 1))) + 1
}

transform!(turn);
