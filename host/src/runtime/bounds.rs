//! What a guest may hand the host, bounded: how many actions and how many
//! bytes of them, publish names that fit AMQP's short strings and headers
//! that fit one frame; and how a text too long for a log line or a dead
//! letter's header is cut, with a marker that says so. Past a bound the
//! message fails with a reason naming it, and the host goes on serving:
//! a guest never fails the host.

use std::borrow::Cow;

use bytesize::ByteSize;

use super::TransformFailure;
use super::guest::GuestLimits;
use super::guest::bindings::passerelle::transform::types::{Action, Header};

/// AMQP short strings (exchange names, routing keys, header names) hold at
/// most 255 bytes: a longer one cannot be framed at all.
pub const AMQP_SHORT_STRING: usize = crate::amqp::MAX_SHORT_STRING;
/// A publish's headers travel in one frame (RabbitMQ's `frame_max` is
/// 128 KiB by default): the rest of the frame is left for ours.
pub const MAX_PUBLISH_HEADERS: usize = 64 << 10;
/// A failure's reason goes into a dead letter's headers and into logs.
pub const MAX_REASON: usize = 2 << 10;

/// Checks what a guest returned against the route's limits, before any of
/// it is parsed or performed. The list was already copied out of the
/// guest, so that copy is bounded by the guest's memory limit; these
/// bounds keep what the host then works on small.
pub fn check_actions(actions: &[Action], limits: &GuestLimits) -> Result<(), TransformFailure> {
    if actions.len() > limits.actions {
        return Err(TransformFailure::Trap(format!(
            "returned {} actions, more than limits.actions ({})",
            actions.len(),
            limits.actions
        )));
    }
    let mut total = 0usize;
    for (index, action) in actions.iter().enumerate() {
        if let Action::Publish(publish) = action {
            check_publish(index, &publish.exchange, &publish.routing_key, &publish.headers)?;
        }
        total = total.saturating_add(size_of(action));
    }
    if total > limits.output {
        return Err(TransformFailure::Trap(format!(
            "returned {} of actions, more than limits.output ({})",
            iec(total),
            iec(limits.output)
        )));
    }
    Ok(())
}

/// What the host will hold of one action: its texts and bytes.
fn size_of(action: &Action) -> usize {
    match action {
        Action::Call(call) => call.endpoint.len() + call.operation.len() + call.args.len(),
        Action::Publish(publish) => {
            publish.exchange.len() + publish.routing_key.len() + publish.body.len() + headers_size(&publish.headers)
        }
    }
}

fn headers_size(headers: &[Header]) -> usize {
    headers.iter().map(|h| h.name.len() + h.value.len()).sum()
}

/// A publish the broker could not take would fail its whole connection,
/// not just this message: refuse it here.
fn check_publish(index: usize, exchange: &str, routing_key: &str, headers: &[Header]) -> Result<(), TransformFailure> {
    let too_long = |what: &str, text: &str| {
        TransformFailure::Trap(format!(
            "action {index}: publish {what} of {} bytes, more than AMQP's {AMQP_SHORT_STRING}",
            text.len()
        ))
    };
    if exchange.len() > AMQP_SHORT_STRING {
        return Err(too_long("exchange name", exchange));
    }
    if routing_key.len() > AMQP_SHORT_STRING {
        return Err(too_long("routing key", routing_key));
    }
    if let Some(header) = headers.iter().find(|h| h.name.len() > AMQP_SHORT_STRING) {
        return Err(too_long("header name", &header.name));
    }
    let size = headers_size(headers);
    if size > MAX_PUBLISH_HEADERS {
        return Err(TransformFailure::Trap(format!(
            "action {index}: publish headers of {}, more than {} (they must fit one AMQP frame)",
            iec(size),
            iec(MAX_PUBLISH_HEADERS)
        )));
    }
    Ok(())
}

/// `text`, or its first `max` bytes (on a character boundary) and a marker
/// saying it was cut and how long it was.
pub fn cut(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}… [cut: {} bytes in all]", &text[..end], text.len()))
}

/// A failure's reason, cut to `MAX_REASON`.
pub fn bounded_reason(reason: String) -> String {
    match cut(&reason, MAX_REASON) {
        Cow::Borrowed(_) => reason,
        Cow::Owned(cut) => cut,
    }
}

fn iec(bytes: usize) -> String {
    ByteSize(bytes as u64).display().iec().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::guest::bindings::passerelle::transform::types::{Call, Publish};

    fn call(args: &str) -> Action {
        Action::Call(Call {
            endpoint: "shop".into(),
            operation: "upsertBusiness".into(),
            args: args.into(),
        })
    }

    fn publish(routing_key: &str, headers: Vec<Header>) -> Action {
        Action::Publish(Publish {
            exchange: "out".into(),
            routing_key: routing_key.into(),
            body: b"{}".to_vec(),
            headers,
        })
    }

    fn reason(result: Result<(), TransformFailure>) -> String {
        result.unwrap_err().reason().to_string()
    }

    #[test]
    fn too_many_actions_or_bytes_name_the_limit() {
        let limits = GuestLimits {
            actions: 2,
            output: 64,
            ..GuestLimits::default()
        };
        assert_eq!(check_actions(&[call("{}"), call("{}")], &limits), Ok(()));
        let many = reason(check_actions(&[call("{}"), call("{}"), call("{}")], &limits));
        assert_eq!(many, "returned 3 actions, more than limits.actions (2)");
        let large = reason(check_actions(&[call(&"x".repeat(100))], &limits));
        assert!(large.contains("more than limits.output (64 B)"), "{large}");
    }

    #[test]
    fn a_publish_must_fit_amqp() {
        let limits = GuestLimits::default();
        let key = reason(check_actions(&[publish(&"k".repeat(256), vec![])], &limits));
        assert_eq!(key, "action 0: publish routing key of 256 bytes, more than AMQP's 255");
        let long_name = Header {
            name: "n".repeat(300),
            value: String::new(),
        };
        let name = reason(check_actions(&[publish("k", vec![long_name])], &limits));
        assert!(name.contains("header name of 300 bytes"), "{name}");
        let big_value = Header {
            name: "n".into(),
            value: "v".repeat(MAX_PUBLISH_HEADERS),
        };
        let headers = reason(check_actions(&[publish("k", vec![big_value])], &limits));
        assert!(headers.contains("must fit one AMQP frame"), "{headers}");
    }

    #[test]
    fn a_cut_text_says_so_and_keeps_whole_characters() {
        assert_eq!(cut("short", 10), "short");
        assert_eq!(cut("ééé", 3), "é… [cut: 6 bytes in all]");
    }
}
