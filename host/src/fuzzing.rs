//! What the fuzz targets share. Every parser of outside input (the
//! configuration file, URI parameters, AMQP headers, `Retry-After`, a
//! guest's actions, ingest requests, `traceparent`, import files) has a
//! `fuzz` module beside it: proptest properties that feed it generated
//! input and check what it promises, not only that it does not panic.
//! A failing input is shrunk, saved under `host/proptest-regressions/`
//! (replayed first on every run) and kept as a named unit test once fixed.
//!
//! `cargo test -p passerelle --lib fuzz::` runs them all with a bounded
//! number of cases (the test suite's short form); `scripts/fuzz` runs them
//! longer through `PROPTEST_CASES`.

use proptest::prelude::*;
use proptest::test_runner::Config;

/// The runner's settings: `cases` per property unless `PROPTEST_CASES`
/// says otherwise. The counts each target passes keep the whole set
/// within about 30 seconds of a debug build on two cores.
pub fn config(cases: u32) -> Config {
    let mut config = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    config
}

/// Text built from `tokens` (what the parser under test treats specially)
/// mixed with arbitrary characters and short words, so that generated
/// input gets past a parser's first check instead of being refused at
/// its first byte.
pub fn text(tokens: &'static [&'static str], max_pieces: usize) -> impl Strategy<Value = String> + Clone {
    let piece = prop_oneof![
        3 => prop::sample::select(tokens).prop_map(str::to_string),
        1 => any::<char>().prop_map(String::from),
        1 => "[a-zA-Z0-9_.-]{1,6}",
    ];
    prop::collection::vec(piece, 0..max_pieces).prop_map(|pieces| pieces.concat())
}

/// Any JSON value, nested a few levels, with keys and strings from `tokens`.
pub fn json(tokens: &'static [&'static str]) -> impl Strategy<Value = serde_json::Value> + Clone {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        text(tokens, 6).prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 32, 5, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
            prop::collection::btree_map(text(tokens, 3), inner, 0..5)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}
