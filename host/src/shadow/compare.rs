//! One message's two outcomes side by side, the live version's and the
//! candidate's: identical, different (field by field, with both values),
//! or the candidate failed. Pure, so that it is tested without a guest.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use treediff::tools::{ChangeType, Recorder};
use treediff::value::Key;

use crate::runtime::{Action, TransformFailure};

/// What a transform made of one message.
pub type Outcome = Result<Vec<Action>, TransformFailure>;

/// One field where the outcomes differ. A side that lacks the field (an
/// action or an argument only the other has) has no value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldDiff {
    /// Where, as `actions[0].args.status`.
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Identical,
    Different(Vec<FieldDiff>),
    /// The candidate failed (reject, retry or trap) where the live version
    /// did something else: its reason.
    Failing(String),
}

impl Verdict {
    /// The label of the shadow metric.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Identical => "identical",
            Self::Different(_) => "different",
            Self::Failing(_) => "failing",
        }
    }
}

pub fn compare(live: &Outcome, candidate: &Outcome) -> Verdict {
    let (live_json, candidate_json) = (as_json(live), as_json(candidate));
    if live_json == candidate_json {
        return Verdict::Identical;
    }
    match candidate {
        Err(failure) => Verdict::Failing(failure.to_string()),
        Ok(_) => Verdict::Different(field_diffs(&live_json, &candidate_json)),
    }
}

/// `{"actions": [...]}` or `{"failure": "reject", "reason": "..."}`: the
/// shapes fixtures use, so that paths read the same.
fn as_json(outcome: &Outcome) -> Value {
    match outcome {
        Ok(actions) => json!({ "actions": actions }),
        Err(failure) => json!(failure),
    }
}

fn field_diffs(live: &Value, candidate: &Value) -> Vec<FieldDiff> {
    let mut recorder = Recorder::default();
    treediff::diff(live, candidate, &mut recorder);
    let field = |keys: &[Key], live: Option<&Value>, candidate: Option<&Value>| FieldDiff {
        path: path_of(keys),
        live: live.cloned(),
        candidate: candidate.cloned(),
    };
    recorder
        .calls
        .iter()
        .filter_map(|change| match change {
            ChangeType::Modified(keys, live, candidate) => Some(field(keys, Some(live), Some(candidate))),
            ChangeType::Removed(keys, live) => Some(field(keys, Some(live), None)),
            ChangeType::Added(keys, candidate) => Some(field(keys, None, Some(candidate))),
            ChangeType::Unchanged(..) => None,
        })
        .collect()
}

/// `actions[0].args.status`; a key that is not a plain name is quoted:
/// `args["x-id"]`.
fn path_of(keys: &[Key]) -> String {
    let mut path = String::new();
    for key in keys {
        match key {
            Key::Index(index) => {
                let _ = write!(path, "[{index}]");
            }
            Key::String(name) if is_plain(name) => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(name);
            }
            Key::String(name) => {
                let _ = write!(path, "[{}]", Value::from(name.as_str()));
            }
        }
    }
    path
}

fn is_plain(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upsert(status: i64) -> Outcome {
        let args = json!({"crmId": "gg-11", "business": {"name": "Eleven Labs"}, "status": status});
        Ok(vec![Action::Call {
            endpoint: "shop".into(),
            operation: "upsertBusiness".into(),
            args: args.as_object().unwrap().clone(),
        }])
    }

    #[test]
    fn the_same_actions_are_identical() {
        assert_eq!(compare(&upsert(70), &upsert(70)), Verdict::Identical);
        let reject = Err(TransformFailure::Reject("unknown Status__c".into()));
        assert_eq!(compare(&reject, &reject.clone()), Verdict::Identical);
    }

    #[test]
    fn a_changed_field_is_named_with_both_values() {
        let fields = vec![FieldDiff {
            path: "actions[0].args.status".into(),
            live: Some(json!(80)),
            candidate: Some(json!(90)),
        }];
        assert_eq!(compare(&upsert(80), &upsert(90)), Verdict::Different(fields));
    }

    #[test]
    fn an_extra_action_or_field_has_one_side() {
        let Ok(mut two) = upsert(70) else { unreachable!() };
        two.push(two[0].clone());
        let Verdict::Different(fields) = compare(&upsert(70), &Ok(two.clone())) else {
            panic!("not different")
        };
        assert_eq!(fields.len(), 1);
        assert_eq!(fields[0].path, "actions[1]");
        assert_eq!(fields[0].live, None);
        assert_eq!(fields[0].candidate, Some(json!(two[1])));

        let Verdict::Different(fields) = compare(&Ok(two), &upsert(70)) else {
            panic!("not different")
        };
        assert_eq!(
            (fields[0].path.as_str(), fields[0].candidate.as_ref()),
            ("actions[1]", None)
        );
    }

    #[test]
    fn a_candidate_failure_is_failing_with_its_reason() {
        let trap = Err(TransformFailure::Trap("crashed: boom".into()));
        assert_eq!(
            compare(&upsert(70), &trap),
            Verdict::Failing("the transform failed: crashed: boom".into())
        );
    }

    #[test]
    fn actions_where_the_live_version_rejected_are_different() {
        let reject = Err(TransformFailure::Reject("unknown Status__c".into()));
        let Verdict::Different(fields) = compare(&reject, &upsert(70)) else {
            panic!("not different")
        };
        let paths: Vec<&str> = fields.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["actions", "failure", "reason"]);
        assert_eq!(fields[1].live, Some(json!("reject")));
    }

    #[test]
    fn keys_that_are_not_plain_names_are_quoted() {
        let keys = [
            Key::String("actions".into()),
            Key::Index(0),
            Key::String("args".into()),
            Key::String("x-id.a".into()),
        ];
        assert_eq!(path_of(&keys), r#"actions[0].args["x-id.a"]"#);
    }
}
