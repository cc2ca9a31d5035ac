//! Fixtures: example messages with the outcome a transform must give for
//! them. A fixtures file beside a component (`crm-to-shop.fixtures.json`
//! beside `crm-to-shop.wasm`) must pass before the component is swapped
//! in; `passerelle transform --fixtures` checks the same file.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::runtime::{Action, Message, RouteContext, Runtime, Transform, TransformFailure};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixture {
    pub name: String,
    pub message: Message,
    pub expect: Expected,
}

/// The actions exactly, or a failure whose reason contains the text.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Expected {
    Actions(Vec<Action>),
    Reject(String),
    Retry(String),
    Trap(String),
}

/// Where a component's fixtures live, whether or not there are any.
pub fn fixtures_path(component: &Path) -> PathBuf {
    let stem = component.file_stem().and_then(|s| s.to_str()).unwrap_or("transform");
    component.with_file_name(format!("{stem}.fixtures.json"))
}

/// Reads the fixtures beside a component; a missing file is no fixtures.
pub fn fixtures_beside(component: &Path) -> Result<Option<String>, String> {
    let path = fixtures_path(component);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read fixtures {}: {e}", path.display())),
    }
}

pub fn parse_fixtures(text: &str, origin: &str) -> Result<Vec<Fixture>, String> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(&mut deserializer)
        .map_err(|e| format!("fixtures {origin}: {}: {}", e.path(), e.inner()))
}

/// How one fixture came out.
#[derive(Debug)]
pub struct Verdict {
    pub name: String,
    /// None when the outcome was the expected one.
    pub mismatch: Option<Mismatch>,
}

/// An expected outcome and the one that came, each as JSON
/// (`{"actions": [..]}`, `{"reject": ".."}`…) so they can be shown side by
/// side; a failure matches when its reason contains the expected text.
#[derive(Debug, PartialEq)]
pub struct Mismatch {
    pub expected: serde_json::Value,
    pub got: serde_json::Value,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "expected {}, got {}",
            describe(&self.expected, " containing"),
            describe(&self.got, ":")
        )
    }
}

/// Runs every fixture through a fresh instance, in order.
pub async fn run_fixtures(
    runtime: &Runtime,
    transform: &Transform,
    route: &RouteContext,
    fixtures: &[Fixture],
) -> Vec<Verdict> {
    let mut verdicts = Vec::with_capacity(fixtures.len());
    for fixture in fixtures {
        let outcome = runtime.run(transform, route, &fixture.message).await;
        verdicts.push(Verdict {
            name: fixture.name.clone(),
            mismatch: mismatch(&fixture.expect, &outcome),
        });
    }
    verdicts
}

/// Runs every fixture; the error lists each one that failed and how.
pub async fn check_fixtures(
    runtime: &Runtime,
    transform: &Transform,
    route: &RouteContext,
    fixtures: &[Fixture],
) -> Result<(), String> {
    let failures: Vec<String> = run_fixtures(runtime, transform, route, fixtures)
        .await
        .into_iter()
        .filter_map(|verdict| Some(format!("fixture {:?}: {}", verdict.name, verdict.mismatch?)))
        .collect();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

fn mismatch(expected: &Expected, outcome: &Result<Vec<Action>, TransformFailure>) -> Option<Mismatch> {
    let matches = match (expected, outcome) {
        (Expected::Actions(want), Ok(actions)) => want == actions,
        (Expected::Reject(text), Err(TransformFailure::Reject(reason)))
        | (Expected::Retry(text), Err(TransformFailure::Retry(reason)))
        | (Expected::Trap(text), Err(TransformFailure::Trap(reason))) => reason.contains(text.as_str()),
        _ => false,
    };
    let expected = match expected {
        Expected::Actions(actions) => serde_json::json!({ "actions": actions }),
        Expected::Reject(text) => serde_json::json!({ "reject": text }),
        Expected::Retry(text) => serde_json::json!({ "retry": text }),
        Expected::Trap(text) => serde_json::json!({ "trap": text }),
    };
    let got = match outcome {
        Ok(actions) => serde_json::json!({ "actions": actions }),
        Err(TransformFailure::Reject(reason)) => serde_json::json!({ "reject": reason }),
        Err(TransformFailure::Retry(reason)) => serde_json::json!({ "retry": reason }),
        Err(TransformFailure::Trap(reason)) => serde_json::json!({ "trap": reason }),
    };
    (!matches).then_some(Mismatch { expected, got })
}

/// `actions [..]`, or `a reject{joiner} "text"`.
fn describe(outcome: &serde_json::Value, joiner: &str) -> String {
    let Some((kind, value)) = outcome.as_object().and_then(|o| o.iter().next()) else {
        return outcome.to_string();
    };
    match value {
        serde_json::Value::String(text) => format!("a {kind}{joiner} {text:?}"),
        actions => format!("{kind} {actions}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixtures_read_bodies_as_json_or_text_and_name_bad_keys() {
        let text = r#"[
            {"name": "object body", "message": {"body": {"Id": "1"}}, "expect": {"reject": "x"}},
            {"name": "text body", "message": {"body": "{oops", "attempt": 2}, "expect": {"actions": []}}
        ]"#;
        let fixtures = parse_fixtures(text, "f.json").unwrap();
        assert_eq!(fixtures[0].message.body, br#"{"Id":"1"}"#);
        assert_eq!(fixtures[0].message.attempt, 1);
        assert_eq!(fixtures[1].message.body, b"{oops");

        let error = parse_fixtures(
            r#"[{"name": "n", "message": {"body": ""}, "expect": {"rejected": "x"}}]"#,
            "f.json",
        )
        .unwrap_err();
        assert!(error.contains("[0].expect") && error.contains("rejected"), "{error}");
    }

    #[test]
    fn a_mismatch_says_what_was_expected_and_what_came() {
        let expected = Expected::Reject("CLIENT_GONE".into());
        assert_eq!(
            mismatch(&expected, &Err(TransformFailure::Reject("unknown CLIENT_GONE".into()))),
            None
        );
        let problem = mismatch(&expected, &Ok(vec![])).unwrap();
        assert_eq!(
            problem.to_string(),
            "expected a reject containing \"CLIENT_GONE\", got actions []"
        );
        let problem = mismatch(&expected, &Err(TransformFailure::Trap("crashed".into()))).unwrap();
        assert_eq!(
            problem.to_string(),
            "expected a reject containing \"CLIENT_GONE\", got a trap: \"crashed\""
        );
        assert_eq!(problem.got, serde_json::json!({"trap": "crashed"}));
    }
}
