//! Test fixture, not shipped: a transform that never returns, so only the
//! host's time limit (epoch interruption or fuel) can stop it.

use passerelle_guest::{Action, Failure, Message, transform};
use std::hint::black_box;

fn spin(_msg: Message) -> Result<Vec<Action>, Failure> {
    let mut n: u64 = 0;
    // black_box keeps the optimizer from proving the loop useless.
    loop {
        n = black_box(n.wrapping_add(1));
    }
}

transform!(spin);
