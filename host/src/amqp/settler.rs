//! Settles a consumer channel's deliveries with as few frames as the order
//! of their outcomes allows.
//!
//! A route handles many messages at once and they finish out of order. An
//! ack per message costs a frame, a trip through lapin's I/O thread and a
//! wake-up of the task that waits for it, and the broker's work on each.
//! Here the message tasks only note their verdict and go; one settler task
//! per channel sends, for every run of acked deliveries below the oldest
//! one still in hand, a single `basic.ack` with `multiple` set. An ack
//! above a delivery still in hand waits for it, to join its run, but not
//! long: at most `HOLD_AT_MOST`, and at most a quarter of the prefetch of
//! them at once, since a waiting ack holds a place in the broker's window.
//! Then, and for a requeue, a frame of its own. Under load, verdicts pile
//! up while a frame is on its way, and the settler lets the tasks ready to
//! run finish before it reads them, so the batches grow with the load; on
//! a quiet channel every verdict is sent at once.
//!
//! What it must never do: ack a delivery that is still in hand or that was
//! decided otherwise. A multiple ack covers every outstanding delivery up
//! to its tag, so a run ends below the oldest delivery in hand, and a
//! requeue is sent, in order, before any ack above it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long an ack above a delivery in hand may wait for it.
const HOLD_AT_MOST: Duration = Duration::from_millis(5);

/// What the message path decided for one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Delivered, dropped, or safely moved to another queue.
    Ack,
    /// Could not be settled here: the broker delivers it again.
    Requeue,
}

/// One frame the settler sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    /// Every outstanding delivery up to and including this tag.
    AckUpTo(u64),
    Ack(u64),
    Requeue(u64),
}

/// What the message path tells the settler, in the order it happened.
#[derive(Debug)]
enum Note {
    Taken(u64),
    Decided(u64, Verdict),
}

/// The message path's side of a channel's settler: cheap to clone, one per
/// message task.
#[derive(Clone)]
pub struct Settler {
    notes: mpsc::UnboundedSender<Note>,
}

/// The settler task, to be finished once the message tasks are done.
pub struct SettlerTask {
    task: JoinHandle<()>,
}

impl Settler {
    /// Starts the settler of `channel`'s deliveries, consumed with
    /// `prefetch`. `route` names it in logs.
    pub fn start(channel: Channel, route: String, prefetch: u16) -> (Self, SettlerTask) {
        let (notes, inbox) = mpsc::unbounded_channel();
        let hold_max = usize::from(prefetch / 4).max(1);
        let task = tokio::spawn(settle_until_closed(channel, route, hold_max, inbox));
        (Self { notes }, SettlerTask { task })
    }

    /// A delivery was taken from the channel: it is in hand until decided.
    /// Called in the order of delivery, before its task starts.
    pub fn taken(&self, tag: u64) {
        // The settler ends only after every sender is gone.
        let _ = self.notes.send(Note::Taken(tag));
    }

    /// The message path is done with a delivery.
    pub fn decided(&self, tag: u64, verdict: Verdict) {
        let _ = self.notes.send(Note::Decided(tag, verdict));
    }
}

impl SettlerTask {
    /// Sends what was decided and ends, once every [`Settler`] is dropped.
    /// Deliveries never decided stay unacked: the broker delivers them
    /// again.
    pub async fn finish(self) {
        let _ = self.task.await;
    }
}

/// Why the settler woke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    Notes,
    /// The oldest held ack has waited `HOLD_AT_MOST`.
    HoldOver,
    /// Every `Settler` is gone and every note read.
    Closed,
}

async fn settle_until_closed(
    channel: Channel,
    route: String,
    hold_max: usize,
    mut inbox: mpsc::UnboundedReceiver<Note>,
) {
    let mut book = Book::default();
    let mut notes = Vec::new();
    let mut channel_failed = false;
    let mut held_since: Option<Instant> = None;
    loop {
        let wake = receive(&mut inbox, &mut notes, held_since.map(|since| since + HOLD_AT_MOST)).await;
        for note in notes.drain(..) {
            match note {
                Note::Taken(tag) => book.taken(tag),
                Note::Decided(tag, verdict) => book.decided(tag, verdict),
            }
        }
        let mut frames = book.frames(Hold::Acks);
        if wake != Wake::Notes || book.held() >= hold_max {
            frames.extend(book.frames(Hold::Nothing));
        }
        held_since = match book.held() {
            0 => None,
            _ => held_since.or_else(|| Some(Instant::now())),
        };
        if !channel_failed {
            channel_failed = !send_all(&channel, &route, frames).await;
        }
        if wake == Wake::Closed {
            return;
        }
    }
}

/// Waits for notes, or until `hold_over` if acks are held.
async fn receive(inbox: &mut mpsc::UnboundedReceiver<Note>, notes: &mut Vec<Note>, hold_over: Option<Instant>) -> Wake {
    let received = match hold_over {
        None => inbox.recv_many(notes, usize::MAX).await,
        // `recv_many` loses nothing when the timer wins.
        Some(deadline) => tokio::select! {
            received = inbox.recv_many(notes, usize::MAX) => received,
            () = tokio::time::sleep_until(deadline) => return Wake::HoldOver,
        },
    };
    if received == 0 {
        return Wake::Closed;
    }
    // Under load, the message tasks ready to run decide more in the
    // meantime: one batch for all of them.
    tokio::task::yield_now().await;
    while let Ok(note) = inbox.try_recv() {
        notes.push(note);
    }
    Wake::Notes
}

/// Sends `frames` in order; false once the channel failed.
async fn send_all(channel: &Channel, route: &str, frames: Vec<Frame>) -> bool {
    for frame in frames {
        if let Err(error) = send(channel, frame).await {
            // The channel is gone, and with it every unacked delivery:
            // the broker delivers them again.
            tracing::warn!(
                route,
                "could not settle messages, the broker will deliver them again: {error}"
            );
            return false;
        }
    }
    true
}

async fn send(channel: &Channel, frame: Frame) -> lapin::Result<()> {
    match frame {
        Frame::AckUpTo(tag) => channel.basic_ack(tag, BasicAckOptions { multiple: true }).await,
        Frame::Ack(tag) => channel.basic_ack(tag, BasicAckOptions { multiple: false }).await,
        Frame::Requeue(tag) => {
            let requeue = BasicNackOptions {
                requeue: true,
                multiple: false,
            };
            channel.basic_nack(tag, requeue).await
        }
    }
}

/// What `Book::frames` may keep back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// Acks above a delivery in hand, to join its run later.
    Acks,
    Nothing,
}

/// The deliveries in hand and the verdicts not yet sent.
#[derive(Debug, Default)]
struct Book {
    in_hand: BTreeSet<u64>,
    decided: BTreeMap<u64, Verdict>,
}

impl Book {
    fn taken(&mut self, tag: u64) {
        self.in_hand.insert(tag);
    }

    fn decided(&mut self, tag: u64, verdict: Verdict) {
        self.in_hand.remove(&tag);
        self.decided.insert(tag, verdict);
    }

    /// Acks decided but kept back.
    fn held(&self) -> usize {
        self.decided.len()
    }

    /// The frames that send the verdicts so far, in tag order: one
    /// multiple ack per run of acks below the oldest delivery in hand, a
    /// frame each for requeues and, unless `hold` keeps them back, for
    /// acks above a delivery in hand.
    fn frames(&mut self, hold: Hold) -> Vec<Frame> {
        let oldest_in_hand = self.in_hand.first().copied().unwrap_or(u64::MAX);
        let mut frames = Vec::new();
        let mut run_end = None;
        let mut held = BTreeMap::new();
        for (tag, verdict) in std::mem::take(&mut self.decided) {
            if verdict == Verdict::Ack && tag < oldest_in_hand {
                run_end = Some(tag);
                continue;
            }
            if verdict == Verdict::Ack && hold == Hold::Acks {
                held.insert(tag, verdict);
                continue;
            }
            frames.extend(run_end.take().map(Frame::AckUpTo));
            frames.push(match verdict {
                Verdict::Ack => Frame::Ack(tag),
                Verdict::Requeue => Frame::Requeue(tag),
            });
        }
        frames.extend(run_end.map(Frame::AckUpTo));
        self.decided = held;
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::Verdict::{Ack, Requeue};
    use super::*;

    fn book(in_hand: &[u64], decided: &[(u64, Verdict)]) -> Book {
        let mut book = Book::default();
        for &tag in in_hand.iter().chain(decided.iter().map(|(tag, _)| tag)) {
            book.taken(tag);
        }
        for &(tag, verdict) in decided {
            book.decided(tag, verdict);
        }
        book
    }

    #[test]
    fn acks_finished_in_any_order_go_as_one_frame() {
        let mut book = book(&[], &[(3, Ack), (1, Ack), (2, Ack)]);
        assert_eq!(book.frames(Hold::Nothing), [Frame::AckUpTo(3)]);
        assert_eq!(book.frames(Hold::Nothing), [], "each verdict is sent once");
    }

    #[test]
    fn a_delivery_in_hand_is_never_covered_by_a_multiple_ack() {
        let mut book = book(&[3], &[(1, Ack), (2, Ack), (4, Ack), (5, Ack)]);
        assert_eq!(
            book.frames(Hold::Nothing),
            [Frame::AckUpTo(2), Frame::Ack(4), Frame::Ack(5)]
        );
        book.decided(3, Ack);
        book.taken(6);
        book.decided(6, Ack);
        assert_eq!(book.frames(Hold::Nothing), [Frame::AckUpTo(6)]);
    }

    #[test]
    fn a_requeue_goes_before_any_ack_that_would_cover_it() {
        let mut book = book(&[], &[(1, Ack), (2, Requeue), (3, Ack), (4, Ack)]);
        assert_eq!(
            book.frames(Hold::Nothing),
            [Frame::AckUpTo(1), Frame::Requeue(2), Frame::AckUpTo(4)]
        );
    }

    #[test]
    fn a_requeue_above_a_delivery_in_hand_is_sent_at_once() {
        let mut book = book(&[1], &[(2, Requeue), (3, Ack)]);
        assert_eq!(book.frames(Hold::Nothing), [Frame::Requeue(2), Frame::Ack(3)]);
        assert!(book.in_hand.contains(&1));
    }

    #[test]
    fn acks_above_a_delivery_in_hand_wait_to_join_its_run() {
        let mut book = book(&[3], &[(1, Ack), (2, Ack), (4, Ack), (5, Requeue), (6, Ack)]);
        assert_eq!(book.frames(Hold::Acks), [Frame::AckUpTo(2), Frame::Requeue(5)]);
        assert_eq!(book.held(), 2);
        book.decided(3, Ack);
        assert_eq!(book.frames(Hold::Acks), [Frame::AckUpTo(6)]);
        assert_eq!(book.held(), 0);
    }

    #[test]
    fn held_acks_go_alone_once_released() {
        let mut book = book(&[1], &[(2, Ack), (3, Ack)]);
        assert_eq!(book.frames(Hold::Acks), []);
        assert_eq!(book.frames(Hold::Nothing), [Frame::Ack(2), Frame::Ack(3)]);
        assert_eq!(book.held(), 0);
    }

    #[test]
    fn nothing_decided_sends_nothing() {
        let mut book = book(&[1, 2], &[]);
        assert_eq!(book.frames(Hold::Nothing), []);
    }

    /// The broker's side: which deliveries are outstanding, and what each
    /// frame did to them. A frame for a tag that is not outstanding is the
    /// broker's "unknown delivery tag", which closes the channel.
    #[derive(Default)]
    struct Broker {
        outstanding: BTreeSet<u64>,
        settled: BTreeMap<u64, Verdict>,
    }

    impl Broker {
        fn receive(&mut self, frame: Frame) -> Result<(), String> {
            let (tag, multiple, verdict) = match frame {
                Frame::AckUpTo(tag) => (tag, true, Ack),
                Frame::Ack(tag) => (tag, false, Ack),
                Frame::Requeue(tag) => (tag, false, Requeue),
            };
            if !self.outstanding.contains(&tag) {
                return Err(format!("{frame:?}: unknown delivery tag {tag}"));
            }
            let covered: Vec<u64> = match multiple {
                true => self.outstanding.range(..=tag).copied().collect(),
                false => vec![tag],
            };
            for tag in covered {
                self.outstanding.remove(&tag);
                self.settled.insert(tag, verdict);
            }
            Ok(())
        }
    }

    proptest::proptest! {
        /// Deliveries decided in any order, with flushes anywhere between:
        /// every delivery ends settled as decided, none while in hand, and
        /// the broker never sees an unknown tag.
        #[test]
        fn every_delivery_is_settled_as_decided_whatever_the_order(
            decisions in proptest::collection::vec((proptest::bool::ANY, 0..3u8), 1..40),
            order in proptest::collection::vec(proptest::num::usize::ANY, 40),
        ) {
            let count = decisions.len() as u64;
            let mut broker = Broker::default();
            let mut book = Book::default();
            for tag in 1..=count {
                broker.outstanding.insert(tag);
                book.taken(tag);
            }
            let mut undecided: Vec<u64> = (1..=count).collect();
            let mut verdicts = BTreeMap::new();
            // After each decision: no flush, a flush holding acks, or one
            // releasing them.
            for (step, (requeue, flush)) in decisions.iter().enumerate() {
                let tag = undecided.remove(order[step] % undecided.len());
                let verdict = if *requeue { Requeue } else { Ack };
                verdicts.insert(tag, verdict);
                book.decided(tag, verdict);
                let hold = if *flush == 1 && !undecided.is_empty() { Hold::Acks } else { Hold::Nothing };
                if *flush > 0 || undecided.is_empty() {
                    for frame in book.frames(hold) {
                        broker.receive(frame).map_err(proptest::test_runner::TestCaseError::fail)?;
                    }
                    for tag in &undecided {
                        proptest::prop_assert!(broker.outstanding.contains(tag), "{tag} settled while in hand");
                    }
                }
            }
            proptest::prop_assert!(broker.outstanding.is_empty());
            proptest::prop_assert_eq!(broker.settled, verdicts);
        }
    }
}
