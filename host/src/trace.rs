//! W3C trace context (`traceparent`): a message that arrives with one
//! keeps its trace through everything it causes (HTTP calls, publish
//! actions, retry copies, dead letters); one that arrives without gets a
//! new trace. Each message and each HTTP call is a span of its own, a
//! child of the span that caused it. Only the header is carried: no
//! tracing backend is needed.

use std::fmt;

use rand::Rng as _;

/// One span's identity within a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    flags: u8,
}

impl TraceContext {
    /// Parses a `traceparent` value (version 00, or a later version read
    /// the way the specification says: its first four fields only).
    pub fn parse(header: &str) -> Option<Self> {
        let mut fields = header.trim().split('-');
        let version = hex_bytes::<1>(fields.next()?)?[0];
        let trace_id = hex_bytes::<16>(fields.next()?)?;
        let span_id = hex_bytes::<8>(fields.next()?)?;
        let flags = hex_bytes::<1>(fields.next()?)?[0];
        let valid =
            version != 0xff && (version != 0 || fields.next().is_none()) && trace_id != [0; 16] && span_id != [0; 8];
        valid.then_some(Self {
            trace_id,
            span_id,
            flags,
        })
    }

    /// A new trace, sampled.
    pub fn new_root() -> Self {
        let mut rng = rand::rng();
        Self {
            trace_id: rng.random::<u128>().max(1).to_be_bytes(),
            span_id: rng.random::<u64>().max(1).to_be_bytes(),
            flags: 1,
        }
    }

    /// The span of a message: a child of the one it carries, else a new trace.
    pub fn for_message(headers: &[(String, String)]) -> Self {
        headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(crate::amqp::headers::TRACEPARENT))
            .and_then(|(_, value)| Self::parse(value))
            .map_or_else(Self::new_root, |parent| parent.child())
    }

    /// A new span in the same trace, caused by this one.
    pub fn child(&self) -> Self {
        Self {
            span_id: rand::rng().random::<u64>().max(1).to_be_bytes(),
            ..*self
        }
    }

    pub fn trace_id(&self) -> String {
        hex(&self.trace_id)
    }
}

/// The `traceparent` header value, written in one piece: it is formatted
/// for every message and every call it makes.
impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = *b"00-00000000000000000000000000000000-0000000000000000-00";
        hex_into(&mut text[3..35], &self.trace_id);
        hex_into(&mut text[36..52], &self.span_id);
        hex_into(&mut text[53..55], &[self.flags]);
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

fn hex_bytes<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != N * 2 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut bytes = [0; N];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(bytes)
}

fn hex(bytes: &[u8]) -> String {
    let mut text = vec![0; bytes.len() * 2];
    hex_into(&mut text, bytes);
    String::from_utf8(text).unwrap_or_default()
}

/// Lowercase hex digits of `bytes` into `out` (twice as long).
fn hex_into(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0x0f)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_prints_the_specification_example() {
        let context = TraceContext::parse(EXAMPLE).unwrap();
        assert_eq!(context.to_string(), EXAMPLE);
        assert_eq!(context.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn prints_every_digit_and_the_flags() {
        let context = TraceContext {
            trace_id: *b"\x01\x23\x45\x67\x89\xab\xcd\xef\xfe\xdc\xba\x98\x76\x54\x32\x10",
            span_id: [0x0f, 0xf0, 0, 0xff, 0x10, 0x01, 0x7f, 0x80],
            flags: 0x0a,
        };
        assert_eq!(
            context.to_string(),
            "00-0123456789abcdeffedcba9876543210-0ff000ff10017f80-0a"
        );
    }

    #[test]
    fn refuses_malformed_values() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e47\u{e9}-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad:?}");
        }
        // A later version may add fields: the first four still count.
        assert!(TraceContext::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra").is_some());
    }

    #[test]
    fn a_message_span_continues_the_trace_it_carries_or_starts_one() {
        let headers = vec![("traceparent".to_string(), EXAMPLE.to_string())];
        let span = TraceContext::for_message(&headers);
        assert_eq!(span.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(span.to_string(), EXAMPLE);
        let child = span.child();
        assert_eq!(child.trace_id(), span.trace_id());
        assert_ne!(child.span_id, span.span_id);

        let fresh = TraceContext::for_message(&[]);
        assert!(TraceContext::parse(&fresh.to_string()).is_some());
        assert_ne!(fresh.trace_id(), TraceContext::for_message(&[]).trace_id());
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use crate::fuzzing;

    /// Text shaped like a `traceparent`, field by field, each field right or a little wrong.
    fn traceparent() -> impl Strategy<Value = String> {
        let version = prop_oneof!["[0-9a-f]{2}", Just("ff".to_string()), "[0-9a-fA-F]{1,3}"];
        let trace_id = prop_oneof![4 => "[0-9a-f]{32}", 1 => Just("0".repeat(32)), 1 => "[0-9a-fA-F-]{30,34}"];
        let span_id = prop_oneof![4 => "[0-9a-f]{16}", 1 => Just("0".repeat(16)), 1 => "[0-9a-fA-F]{15,17}"];
        let flags = prop_oneof!["[0-9a-f]{2}", "[0-9a-fA-F]{1,3}"];
        let rest = prop_oneof![Just(String::new()), "-[ -~]{0,8}", "[ \t]{1,2}"];
        (version, trace_id, span_id, flags, rest).prop_map(|(v, t, s, f, r)| format!("{v}-{t}-{s}-{f}{r}"))
    }

    proptest! {
        #![proptest_config(fuzzing::config(1024))]

        /// A parsed context prints back the trace, span and flags it was given.
        #[test]
        fn a_parsed_traceparent_prints_back_its_fields(
            header in prop_oneof![3 => traceparent(), 1 => fuzzing::text(&["-", "00", "0", "f", "é"], 20)],
        ) {
            if let Some(context) = TraceContext::parse(&header) {
                let written = header.trim();
                prop_assert!(written.len() >= 55, "{:?}", header);
                prop_assert_eq!(&context.to_string()[3..], &written[3..55]);
                prop_assert!(!written.starts_with("ff"));
                prop_assert!(written[..2] != *"00" || written.len() == 55, "{:?}", header);
            }
        }

        #[test]
        fn any_context_prints_what_parses_back(trace_id in 1..=u128::MAX, span_id in 1..=u64::MAX, flags in any::<u8>()) {
            let context = TraceContext { trace_id: trace_id.to_be_bytes(), span_id: span_id.to_be_bytes(), flags };
            prop_assert_eq!(TraceContext::parse(&context.to_string()), Some(context));
            prop_assert!(TraceContext::parse(&context.child().to_string()).is_some());
        }
    }
}
