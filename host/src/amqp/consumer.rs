//! The AMQP side of a route's message path: consume the route's queue with
//! its concurrency, turn each delivery into a `Message`, hand it to
//! `Pipeline::process`, and carry out the outcome: ack, or copy it to a
//! delayed-retry queue or the dead-letter queue and ack once the broker
//! confirmed the copy. When even the copy fails the message is requeued:
//! nothing is acked that is not delivered or safely moved. The acks
//! themselves go through the channel's `Settler`, in batches.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use futures_util::StreamExt as _;
use lapin::Connection;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::settler::{Settler, Verdict};
use super::{Publisher, headers};
use crate::pipeline::{Failure, Outcome, Pipeline};
use crate::runtime::Message;
use crate::stats::RetryKind;
use crate::trace::TraceContext;

/// Consumes one route's queue, handling up to `concurrency` messages at
/// once, until `shutdown` (then lets messages in flight finish, up to
/// `grace`) or until the channel fails (an error: the caller reconnects).
pub async fn consume(
    connection: Arc<Connection>,
    pipeline: Arc<Pipeline>,
    shutdown: CancellationToken,
    grace: Duration,
) -> anyhow::Result<()> {
    let route = &pipeline.route.route;
    let name = pipeline.name().to_string();
    let channel = connection.create_channel().await.context("opening a channel")?;
    channel
        .basic_qos(route.prefetch(), BasicQosOptions::default())
        .await
        .context("setting the prefetch")?;
    let tag = format!("passerelle-{name}-{}", std::process::id());
    let mut deliveries = channel
        .basic_consume(
            route.queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("route {name}: consuming {}", route.queue))?;
    let publisher = Publisher::new(connection.clone());
    let (settler, settler_task) = Settler::start(channel.clone(), name.clone(), route.prefetch());
    let slots = Arc::new(Semaphore::new(usize::from(route.concurrency)));
    let mut in_flight = JoinSet::new();
    loop {
        while in_flight.try_join_next().is_some() {}
        // While an endpoint is down, messages stay in the queue instead of
        // being taken and failed.
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = pipeline.wait_until_endpoints_usable() => {}
        }
        let delivery = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = deliveries.next() => match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(error)) => return Err(error).context(format!("route {name}: consumer")),
                None => return Err(anyhow!("route {name}: the broker cancelled the consumer")),
            },
        };
        let slot = slots.clone().acquire_owned().await?;
        settler.taken(delivery.delivery_tag);
        let (pipeline, publisher, settler) = (pipeline.clone(), publisher.clone(), settler.clone());
        in_flight.spawn(async move {
            let verdict = handle(&pipeline, &delivery, &publisher).await;
            settler.decided(delivery.delivery_tag, verdict);
            drop(slot);
        });
    }
    let _ = channel
        .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
        .await;
    drain(&name, in_flight, grace).await;
    // The verdicts of the messages that finished are sent before the
    // channel closes.
    drop(settler);
    settler_task.finish().await;
    // Closed here, not dropped: the connection closes right after, and a
    // channel still closing would be reported as an error.
    let _ = channel.close(200, "shutting down".into()).await;
    publisher.close().await;
    Ok(())
}

/// Handles one delivery to the end, every log line of it in a span that
/// names the route, the message, its attempt and the transform version.
async fn handle(pipeline: &Pipeline, delivery: &Delivery, publisher: &Publisher) -> Verdict {
    let message = message_of(delivery);
    // The version that will most likely run, named when the span opens:
    // recording it later would format the span's fields a second time.
    let transform = pipeline.route.slot.current();
    let span = tracing::info_span!(
        "message",
        route = %pipeline.name(),
        message_id = message.message_id.as_deref().unwrap_or("-"),
        attempt = message.attempt,
        version = transform.version.as_str(),
    );
    async {
        let trace = TraceContext::for_message(&message.headers);
        let outcome = pipeline.process(&message, &trace, publisher, &transform.version).await;
        settle(pipeline, delivery, &message, &trace, outcome, publisher).await
    }
    .instrument(span)
    .await
}

/// Acks once delivered (and recorded) or dropped, or once moved
/// (confirmed) to a delayed-retry queue or the dead-letter queue;
/// requeues when the record or the move failed.
async fn settle(
    pipeline: &Pipeline,
    delivery: &Delivery,
    message: &Message,
    trace: &TraceContext,
    outcome: Outcome,
    publisher: &Publisher,
) -> Verdict {
    let moved = match &outcome {
        Outcome::Delivered { .. } | Outcome::Dropped(_) => Ok(()),
        Outcome::Unrecorded => Err(anyhow!("its delivery could not be recorded")),
        Outcome::RetryLater { failure, queue } => {
            let moved = retry_later(delivery, message, trace, failure, queue, publisher).await;
            if moved.is_ok() {
                pipeline.stats().retried(pipeline.name(), RetryKind::Delayed);
            }
            moved
        }
        Outcome::DeadLetter(failure) => {
            let moved = dead_letter(pipeline, delivery, message, trace, failure, publisher).await;
            if moved.is_ok() {
                pipeline.stats().dead_lettered(pipeline.name(), failure.class.label());
            }
            moved
        }
    };
    match moved {
        Ok(()) => Verdict::Ack,
        Err(error) => {
            tracing::error!("could not settle a message, the broker will redeliver it: {error:#}");
            Verdict::Requeue
        }
    }
}

/// Parks the message in a delayed-retry queue; the broker puts it back
/// into the work queue when the delay is over, one attempt later.
async fn retry_later(
    delivery: &Delivery,
    message: &Message,
    trace: &TraceContext,
    failure: &Failure,
    queue: &str,
    publisher: &Publisher,
) -> anyhow::Result<()> {
    tracing::info!("retrying later through {queue}: {}", failure.reason);
    let mut table = copied_headers(delivery, trace);
    headers::set_attempt(&mut table, message.attempt + 1);
    headers::set_last_reason(&mut table, &failure.reason);
    let properties = delivery.properties.clone().with_headers(table);
    publisher.publish("", queue, &delivery.data, properties).await
}

/// Copies the message to the route's dead-letter queue with headers
/// saying why, and waits for the broker's confirm.
async fn dead_letter(
    pipeline: &Pipeline,
    delivery: &Delivery,
    message: &Message,
    trace: &TraceContext,
    failure: &Failure,
    publisher: &Publisher,
) -> anyhow::Result<()> {
    tracing::warn!("dead-lettered: {}", failure.reason);
    let mut table = copied_headers(delivery, trace);
    let record = headers::DeadLetterRecord {
        reason: failure.reason.clone(),
        route: pipeline.name().to_string(),
        version: failure.version.to_string(),
        attempt: message.attempt,
        original_exchange: delivery.exchange.to_string(),
        original_routing_key: delivery.routing_key.to_string(),
        http_status: failure.status,
        at: None,
    };
    record.write(&mut table);
    let properties = delivery.properties.clone().with_headers(table);
    let queue = pipeline.route.route.dead_letter_queue();
    publisher.publish("", &queue, &delivery.data, properties).await
}

/// The delivery's headers for a copy of it. A message that came without a
/// trace keeps the one it was given here, so its later attempts join it.
fn copied_headers(delivery: &Delivery, trace: &TraceContext) -> FieldTable {
    let mut table = delivery.properties.headers().clone().unwrap_or_default();
    if headers::get(Some(&table), headers::TRACEPARENT).is_none() {
        headers::set_traceparent(&mut table, &trace.to_string());
    }
    table
}

/// The message as the transform sees it. A redelivery (the broker lost
/// track of an earlier try, say after a crash) counts as an attempt.
pub fn message_of(delivery: &Delivery) -> Message {
    let table = delivery.properties.headers().as_ref();
    let counted = headers::attempt(table).unwrap_or(1).max(1);
    Message {
        body: delivery.data.clone(),
        content_type: delivery.properties.content_type().as_ref().map(|c| c.to_string()),
        routing_key: delivery.routing_key.to_string(),
        headers: headers::as_text(table),
        message_id: delivery.properties.message_id().as_ref().map(|m| m.to_string()),
        attempt: counted + u32::from(delivery.redelivered),
    }
}

/// Lets the messages in flight finish, up to `grace`; the rest stay
/// unacked and the broker redelivers them.
async fn drain(route: &str, mut in_flight: JoinSet<()>, grace: Duration) {
    let finished = tokio::time::timeout(grace, async { while in_flight.join_next().await.is_some() {} }).await;
    if finished.is_err() {
        tracing::warn!(
            route,
            "{} message(s) still in flight after {grace:?}; the broker will redeliver them",
            in_flight.len()
        );
        in_flight.abort_all();
    }
}
