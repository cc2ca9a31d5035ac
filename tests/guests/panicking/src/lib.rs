//! Test fixture, not shipped: a transform that panics. With `panic = "abort"`
//! the component traps; the SDK's panic hook logs the message first, at error
//! level, so the host can show "fixture panic: boom".

use passerelle_guest::{Action, Failure, Message, transform};

fn boom(_msg: Message) -> Result<Vec<Action>, Failure> {
    panic!("fixture panic: boom");
}

transform!(boom);
