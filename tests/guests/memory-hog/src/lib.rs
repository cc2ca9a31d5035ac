//! Test fixture, not shipped: a transform that allocates without bound, so
//! only the host's memory limit can stop it (the failed grow traps).

use passerelle_guest::{Action, Failure, Message, transform};
use std::hint::black_box;

const MIB: usize = 1 << 20;

fn hog(_msg: Message) -> Result<Vec<Action>, Failure> {
    let mut chunks = Vec::new();
    loop {
        // Filled with a non-zero byte so every page is really written.
        chunks.push(black_box(vec![0xA5u8; MIB]));
        black_box(&chunks);
    }
}

transform!(hog);
