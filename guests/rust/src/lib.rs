//! Write Passerelle transforms in Rust.
//!
//! A transform is a WebAssembly component that turns one broker message into
//! the actions the host performs (HTTP calls to declared operations, or
//! publishes). This crate holds the bindings to the `passerelle:transform`
//! world (`wit/transform.wit`) plus the helpers every transform needs: decode
//! the JSON body, read the route's configuration, build calls and publishes,
//! log. The JavaScript and Python SDKs (`guests/js`, `guests/python`) offer
//! the same helpers, with the same reject reasons.
//!
//! A transform is one function and one macro:
//!
//! ```no_run
//! use passerelle_guest::{call, config_json, log, transform, Action, Failure, Message};
//! use serde::{Deserialize, Serialize};
//! use std::collections::BTreeMap;
//!
//! #[derive(Deserialize)]
//! struct Account {
//!     #[serde(rename = "Id")]
//!     id: String,
//!     #[serde(rename = "Name")]
//!     name: String,
//! }
//!
//! #[derive(Serialize)]
//! struct Args<'a> {
//!     #[serde(rename = "crmId")]
//!     crm_id: &'a str,
//!     name: &'a str,
//!     tier: u32,
//! }
//!
//! fn map(msg: Message) -> Result<Vec<Action>, Failure> {
//!     let account: Account = msg.json()?; // bad body: a reject naming the field
//!     let tiers: BTreeMap<String, u32> = config_json("tiers", BTreeMap::new())?;
//!     let tier = tiers.get(&account.name).copied().unwrap_or(0);
//!     log::debug(&format!("account {} is tier {tier}", account.id));
//!     let args = Args { crm_id: &account.id, name: &account.name, tier };
//!     Ok(vec![call("shop", "upsertBusiness", &args)?])
//! }
//!
//! transform!(map);
//! ```
//!
//! Build it as a `cdylib` for `wasm32-unknown-unknown` (no WASI, the cheapest
//! to instantiate) or `wasm32-wasip2` (see the crate's README). Return
//! `Err(reject(..))` for a message that can never succeed as it is (it is
//! dead-lettered with the reason), `Err(retry(..))` for a temporary problem,
//! and `Ok(vec![])` when there is nothing to do.

pub mod arena;
mod table;

pub use table::CodeTable;

/// Every Rust transform allocates from a per-message arena (see [`arena`]).
/// Not on a WebAssembly target with threads: the arena is not thread-safe.
#[cfg(all(target_family = "wasm", not(target_feature = "atomics"), feature = "arena"))]
#[global_allocator]
static ALLOCATOR: arena::Arena<{ arena::ARENA_BYTES }> = arena::Arena::new();

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The generated bindings. Public only so that [`transform!`] can reach them
/// from the partner's crate; use the re-exports below instead.
#[doc(hidden)]
#[allow(clippy::too_many_arguments)] // generated code: the lowered ABI of `transform`
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "transform",
        // `transform!` expands in the partner's crate, so the export macro
        // must be public and must find the types through this crate.
        pub_export_macro: true,
        default_bindings_module: "passerelle_guest::bindings",
        // Lets partners compare messages, actions and failures in tests.
        additional_derives: [PartialEq, Eq],
    });
}

pub use bindings::passerelle::transform::host::Level;
pub use bindings::passerelle::transform::types::{Action, Call, Failure, Header, Message, Publish};

/// A permanent failure: the message is dead-lettered with this reason.
pub fn reject(reason: impl Into<String>) -> Failure {
    Failure::Reject(reason.into())
}

/// A temporary failure: the whole message is tried again later.
pub fn retry(reason: impl Into<String>) -> Failure {
    Failure::Retry(reason.into())
}

impl Message {
    /// Decodes the body as JSON into `T`; a bad body is a [`Failure::Reject`]
    /// whose reason names the field path and the problem.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Failure> {
        decode_json("body", &self.body).map_err(Failure::Reject)
    }

    /// The value of the first header with this name (names compare as given).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|h| h.name == name).map(|h| h.value.as_str())
    }
}

/// This route's configuration value for `key`, as configured.
pub fn config(key: &str) -> Option<String> {
    bindings::passerelle::transform::host::config(key)
}

/// This route's configuration value for `key`, decoded from JSON into `T`;
/// `default` when the key is absent. A value that is not JSON or does not fit
/// `T` is a [`Failure::Reject`] naming the key and the problem.
pub fn config_json<T: DeserializeOwned>(key: &str, default: T) -> Result<T, Failure> {
    parse_config(key, config(key).as_deref(), || default)
}

/// The pure part of [`config_json`], apart so that it can be tested
/// natively; the default is made only when the key is absent.
fn parse_config<T: DeserializeOwned>(
    key: &str,
    value: Option<&str>,
    default: impl FnOnce() -> T,
) -> Result<T, Failure> {
    match value {
        None => Ok(default()),
        Some(text) => decode_json_naming(|| format!("config `{key}`"), text.as_bytes()).map_err(reject),
    }
}

/// A call to `operation` of `endpoint` (both declared in the host's
/// configuration). `args` must serialize to a JSON object, one field per
/// declared parameter; anything else is a [`Failure::Reject`].
pub fn call(endpoint: &str, operation: &str, args: &impl Serialize) -> Result<Action, Failure> {
    let what = format!("call {endpoint}.{operation}");
    let args = serde_json::to_string(args).map_err(|e| reject(format!("{what}: {e}")))?;
    // Only a JSON object serializes to text that starts with `{`.
    if !args.starts_with('{') {
        return Err(reject(format!("{what}: args must be a JSON object, not {args}")));
    }
    Ok(Action::Call(Call {
        endpoint: endpoint.to_owned(),
        operation: operation.to_owned(),
        args,
    }))
}

/// A message to publish on `exchange` with `routing_key` (with publisher
/// confirms), carrying `body` as it is and `headers` as (name, value) pairs.
pub fn publish(exchange: &str, routing_key: &str, body: impl Into<Vec<u8>>, headers: &[(&str, &str)]) -> Action {
    Action::Publish(Publish {
        exchange: exchange.to_owned(),
        routing_key: routing_key.to_owned(),
        body: body.into(),
        headers: headers
            .iter()
            .map(|&(name, value)| Header {
                name: name.to_owned(),
                value: value.to_owned(),
            })
            .collect(),
    })
}

/// Decodes `bytes` as JSON into `T`. The error names `what` was decoded, the
/// field path (when not the root) and the problem, e.g.
/// ``body: Status__c: invalid type: integer `3`, expected a string``.
pub fn decode_json<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, String> {
    decode_json_naming(|| what.to_owned(), bytes)
}

/// [`decode_json`], with `what` written only for an error. A message runs
/// in a fresh instance, so this is paid on every message: the plain decode
/// goes first, and only one that fails pays for tracking the field path,
/// by decoding again (the same bytes fail the same way).
fn decode_json_naming<T: DeserializeOwned>(what: impl FnOnce() -> String, bytes: &[u8]) -> Result<T, String> {
    match serde_json::from_slice(bytes) {
        Ok(value) => Ok(value),
        Err(_) => decode_json_tracking_the_path(&what(), bytes),
    }
}

fn decode_json_tracking_the_path<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        describe(what, &path, &err.into_inner())
    })?;
    // Trailing characters after the value are a syntax error too.
    de.end().map_err(|err| describe(what, ".", &err))?;
    Ok(value)
}

/// The reason for a failed decode of `what` at `path` ("." is the root).
fn describe(what: &str, path: &str, err: &serde_json::Error) -> String {
    if err.is_syntax() || err.is_eof() || err.is_io() {
        return format!("{what} is not JSON: {err}");
    }
    // The path already says where; the line and column add noise.
    let problem = without_position(err);
    if path == "." {
        format!("{what}: {problem}")
    } else {
        format!("{what}: {path}: {problem}")
    }
}

/// serde_json's message without its trailing " at line L column C".
fn without_position(err: &serde_json::Error) -> String {
    let text = err.to_string();
    let suffix = format!(" at line {} column {}", err.line(), err.column());
    match text.strip_suffix(&suffix) {
        Some(stripped) => stripped.to_owned(),
        None => text,
    }
}

/// Logging through the host: lines go to the host's log, tagged with the
/// route and the transform's version. The host decides which levels it keeps,
/// and a line it would drop is never formatted: pass `format_args!(..)`
/// rather than `&format!(..)`, and a disabled `debug` costs one host call.
pub mod log {
    use std::fmt::Display;

    pub use crate::Level;

    /// Whether the host keeps lines at `level` (always true for `Error`).
    pub fn enabled(level: Level) -> bool {
        crate::bindings::passerelle::transform::host::log_enabled(level)
    }

    /// Logs `message` at `level`, if the host keeps lines at that level.
    pub fn log(level: Level, message: impl Display) {
        if enabled(level) {
            crate::bindings::passerelle::transform::host::log(level, &message.to_string());
        }
    }

    /// Logs at trace level.
    pub fn trace(message: impl Display) {
        log(Level::Trace, message);
    }

    /// Logs at debug level.
    pub fn debug(message: impl Display) {
        log(Level::Debug, message);
    }

    /// Logs at info level.
    pub fn info(message: impl Display) {
        log(Level::Info, message);
    }

    /// Logs at warn level.
    pub fn warn(message: impl Display) {
        log(Level::Warn, message);
    }

    /// Logs at error level.
    pub fn error(message: impl Display) {
        log(Level::Error, message);
    }
}

/// Exports `function` (a `fn(Message) -> Result<Vec<Action>, Failure>`) as the
/// component's `transform`. Use it once, at the root of the crate.
#[macro_export]
macro_rules! transform {
    ($function:path) => {
        struct __PasserelleTransform;

        impl $crate::bindings::Guest for __PasserelleTransform {
            fn transform(
                msg: $crate::Message,
            ) -> ::core::result::Result<::std::vec::Vec<$crate::Action>, $crate::Failure> {
                $crate::__run($function, msg)
            }
        }

        $crate::bindings::export!(__PasserelleTransform with_types_in $crate::bindings);
    };
}

/// Runs a transform function; used by [`transform!`].
#[doc(hidden)]
pub fn __run(function: fn(Message) -> Result<Vec<Action>, Failure>, msg: Message) -> Result<Vec<Action>, Failure> {
    static PANIC_HOOK: std::sync::Once = std::sync::Once::new();
    // A panic traps the component (`panic = "abort"`). Its last words go to
    // the host's log at error level, which the host puts in the failure's
    // reason (the contract on `log` in wit/transform.wit).
    PANIC_HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let message = info.payload_as_str().unwrap_or("(no message)");
            match info.location() {
                Some(at) => log::error(format_args!("panic: {message} (at {at})")),
                None => log::error(format_args!("panic: {message}")),
            }
        }));
    });
    function(msg)
}

/// Compiles the README's example, so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExample;

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)] // only the errors are looked at
    struct Account {
        #[serde(rename = "Name")]
        name: String,
        #[serde(rename = "Status__c")]
        status: String,
        owner: Option<Owner>,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Owner {
        id: u32,
    }

    fn decode(body: &str) -> Result<Account, String> {
        decode_json("body", body.as_bytes())
    }

    #[test]
    fn decode_errors_name_the_field_and_the_problem() {
        assert_eq!(
            decode(r#"{"Name": "x", "Status__c": 3}"#).unwrap_err(),
            "body: Status__c: invalid type: integer `3`, expected a string"
        );
        assert_eq!(
            decode(r#"{"Status__c": "A"}"#).unwrap_err(),
            "body: missing field `Name`"
        );
        assert_eq!(
            decode(r#"{"Name": "x", "Status__c": "A", "owner": {"id": "7"}}"#).unwrap_err(),
            "body: owner.id: invalid type: string \"7\", expected u32"
        );
    }

    #[test]
    fn decode_errors_say_when_it_is_not_json() {
        assert_eq!(
            decode("hello").unwrap_err(),
            "body is not JSON: expected value at line 1 column 1"
        );
        assert_eq!(
            decode("").unwrap_err(),
            "body is not JSON: EOF while parsing a value at line 1 column 0"
        );
        assert_eq!(
            decode(r#"{"Name": "x", "Status__c": "A"} x"#).unwrap_err(),
            "body is not JSON: trailing characters at line 1 column 33"
        );
    }

    #[test]
    fn config_absent_is_the_default_present_is_decoded() {
        let default = BTreeMap::from([("FR".to_owned(), 76)]);
        let table: BTreeMap<String, i64> = parse_config("ids", None, || default.clone()).unwrap();
        assert_eq!(table, default);
        let table: BTreeMap<String, i64> = parse_config("ids", Some(r#"{"DE": 80}"#), || default.clone()).unwrap();
        assert_eq!(table, BTreeMap::from([("DE".to_owned(), 80)]));
    }

    #[test]
    fn bad_config_is_a_reject_naming_the_key() {
        let bad = parse_config::<BTreeMap<String, i64>>("ids", Some(r#"{"DE": "80"}"#), BTreeMap::new);
        assert_eq!(
            bad.unwrap_err(),
            reject("config `ids`: DE: invalid type: string \"80\", expected i64")
        );
        let bad = parse_config::<BTreeMap<String, i64>>("ids", Some("DE=80"), BTreeMap::new);
        assert_eq!(
            bad.unwrap_err(),
            reject("config `ids` is not JSON: expected value at line 1 column 1")
        );
    }

    #[derive(Serialize)]
    struct Args {
        #[serde(rename = "crmId")]
        crm_id: &'static str,
    }

    #[test]
    fn call_carries_the_args_as_a_json_object() {
        let Action::Call(c) = call("shop", "upsertBusiness", &Args { crm_id: "gg-11" }).unwrap() else {
            panic!("not a call");
        };
        assert_eq!((c.endpoint.as_str(), c.operation.as_str()), ("shop", "upsertBusiness"));
        assert_eq!(c.args, r#"{"crmId":"gg-11"}"#);
    }

    #[test]
    fn publish_carries_body_and_headers() {
        let Action::Publish(p) = publish("events", "crm.account", "{}", &[("x-source", "crm")]) else {
            panic!("not a publish");
        };
        assert_eq!((p.exchange.as_str(), p.routing_key.as_str()), ("events", "crm.account"));
        assert_eq!(
            (p.body, p.headers[0].name.as_str(), p.headers[0].value.as_str()),
            (b"{}".to_vec(), "x-source", "crm")
        );
    }

    #[test]
    fn call_args_must_be_an_object() {
        assert_eq!(
            call("shop", "upsertBusiness", &[1, 2]).unwrap_err(),
            reject("call shop.upsertBusiness: args must be a JSON object, not [1,2]")
        );
    }
}
