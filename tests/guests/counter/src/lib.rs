//! Test fixture, not shipped: a transform that counts its calls in a
//! global and rejects with the count. In a fresh instance per message it
//! must say "call 1" every time, even when the pooling allocator reuses a
//! slot: no state may survive from one message to the next.

use std::sync::atomic::{AtomicU32, Ordering};

use passerelle_guest::{Action, Failure, Message, transform};

static CALLS: AtomicU32 = AtomicU32::new(0);

fn count(_msg: Message) -> Result<Vec<Action>, Failure> {
    let call = CALLS.fetch_add(1, Ordering::SeqCst) + 1;
    Err(Failure::Reject(format!("call {call}")))
}

transform!(count);
