//! `${VAR}` interpolation from the environment, applied to every string of
//! the file before it is read. `${VAR:-default}` gives a fallback and `$$`
//! writes a literal `$`.

use serde_json::Value;

/// Replaces references in every string of `tree`. On error, returns the key
/// path and the problem (naming the variable, never its value). Remembers
/// what it substituted, so that later errors can hide those values.
pub fn interpolate(
    tree: &mut Value,
    path: &mut Vec<String>,
    substituted: &mut Substitutions,
) -> Result<(), (String, String)> {
    match tree {
        Value::String(text) => {
            let lookup = |name: &str| {
                let value = std::env::var(name).ok()?;
                substituted.0.push((name.to_string(), value.clone()));
                Some(value)
            };
            *text = expand(text, lookup).map_err(|problem| (key_path(path), problem))?;
        }
        Value::Array(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                path.push(format!("[{index}]"));
                interpolate(item, path, substituted)?;
                path.pop();
            }
        }
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                path.push(key.clone());
                interpolate(value, path, substituted)?;
                path.pop();
            }
        }
        _ => {}
    }
    Ok(())
}

/// Environment values put into the file: any of them may be a secret.
#[derive(Default)]
pub struct Substitutions(Vec<(String, String)>);

impl Substitutions {
    /// Writes `${NAME}` back in place of every substituted value, as it is
    /// or as `{:?}` quotes it (escaping tabs, quotes, backslashes...).
    pub fn hide_in(&self, text: &str) -> String {
        // Very short values would mask unrelated text; they are no secret.
        const SHORTEST_HIDDEN: usize = 3;
        let mut text = text.to_string();
        for (name, value) in &self.0 {
            if value.len() >= SHORTEST_HIDDEN {
                let reference = format!("${{{name}}}");
                let quoted = format!("{value:?}");
                let escaped = &quoted[1..quoted.len() - 1];
                text = text.replace(value.as_str(), &reference).replace(escaped, &reference);
            }
        }
        text
    }
}

/// `["routes", "a", "bindings", "[0]"]` reads `routes.a.bindings[0]`.
fn key_path(segments: &[String]) -> String {
    if segments.is_empty() {
        return super::TOP_LEVEL.into();
    }
    let mut path = String::new();
    for segment in segments {
        if !path.is_empty() && !segment.starts_with('[') {
            path.push('.');
        }
        path.push_str(segment);
    }
    path
}

/// Expands `${NAME}`, `${NAME:-default}` and `$$` in one string.
pub fn expand(text: &str, mut lookup: impl FnMut(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| "unterminated ${...} reference".to_string())?;
            out.push_str(&resolve(&body[..end], &mut lookup)?);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn resolve(reference: &str, lookup: &mut impl FnMut(&str) -> Option<String>) -> Result<String, String> {
    let (name, default) = match reference.split_once(":-") {
        Some((name, default)) => (name, Some(default)),
        None => (reference, None),
    };
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "invalid environment variable name {name:?} in ${{{reference}}}"
        ));
    }
    lookup(name)
        .or_else(|| default.map(str::to_string))
        .ok_or_else(|| format!("environment variable {name} is not set (referenced as ${{{name}}})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "USER_PASS").then(|| "s3cret".to_string())
    }

    #[test]
    fn substituted_values_are_hidden_again() {
        let mut tree = serde_json::json!({"url": "amqp://u:${PATH}@h"});
        let mut substituted = Substitutions::default();
        interpolate(&mut tree, &mut Vec::new(), &mut substituted).unwrap();
        let path = std::env::var("PATH").unwrap();
        assert_eq!(substituted.hide_in(&format!("bad {path}!")), "bad ${PATH}!");
    }

    /// Fuzz finding (`fuzz::a_substituted_value_never_shows_in_an_error`):
    /// errors quote values with `{:?}`, and a value with a tab, a quote or
    /// a backslash showed through in its escaped form.
    #[test]
    fn a_substituted_value_is_hidden_in_its_quoted_form_too() {
        let substituted = Substitutions(vec![("PASS".into(), "pa\"ss\tword".into())]);
        let problem = format!("{:?} is not a URL", "http://u:pa\"ss\tword@h");
        assert_eq!(substituted.hide_in(&problem), r#""http://u:${PASS}@h" is not a URL"#);
    }

    /// Fuzz finding (`config::fuzz::any_text_is_a_config_or_an_error_naming_the_file`):
    /// a file that is one bad string gave an error with an empty key.
    #[test]
    fn an_error_in_a_file_of_one_string_names_the_top_level() {
        let mut tree = serde_json::json!("${");
        let (key, _) = interpolate(&mut tree, &mut Vec::new(), &mut Substitutions::default()).unwrap_err();
        assert_eq!(key, "(top level)");
    }

    #[test]
    fn expands_references_defaults_and_dollars() {
        assert_eq!(expand("amqp://u:${USER_PASS}@h", env).unwrap(), "amqp://u:s3cret@h");
        assert_eq!(expand("${MISSING:-fallback}", env).unwrap(), "fallback");
        assert_eq!(expand("cost $$5 and $x", env).unwrap(), "cost $5 and $x");
    }

    #[test]
    fn a_missing_variable_is_named() {
        let error = expand("${NOPE}", env).unwrap_err();
        assert!(error.contains("NOPE is not set"), "{error}");
        assert!(expand("${UNCLOSED", env).unwrap_err().contains("unterminated"));
    }

    #[test]
    fn errors_carry_the_key_path() {
        let mut tree = serde_json::json!({"routes": {"a": {"bindings": [{"exchange": "${NOPE_X}"}]}}});
        let (key, problem) = interpolate(&mut tree, &mut Vec::new(), &mut Substitutions::default()).unwrap_err();
        assert_eq!(key, "routes.a.bindings[0].exchange");
        assert!(problem.contains("NOPE_X"));
    }
}

#[cfg(test)]
mod fuzz {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::fuzzing;

    const TOKENS: &[&str] = &["$", "$$", "${", "}", ":-", "${A}", "${B:-x}", "${_1}", "${ }", "{", "é"];

    /// One piece of a template, and what it should expand to.
    #[derive(Debug, Clone)]
    enum Piece {
        Literal(String),
        Dollar,
        Reference { name: String, default: Option<String> },
    }

    fn piece() -> impl Strategy<Value = Piece> {
        prop_oneof![
            "[^$]{0,8}".prop_map(Piece::Literal),
            Just(Piece::Dollar),
            ("[A-Z_][A-Z0-9_]{0,3}", proptest::option::of("[^}]{0,6}"))
                .prop_map(|(name, default)| Piece::Reference { name, default }),
        ]
    }

    fn environment() -> impl Strategy<Value = BTreeMap<String, String>> {
        prop::collection::btree_map("[A-Z_][A-Z0-9_]{0,3}", ".{0,8}", 0..6)
    }

    proptest! {
        #![proptest_config(fuzzing::config(512))]

        #[test]
        fn escaped_text_expands_back_to_itself(text in fuzzing::text(TOKENS, 24)) {
            let escaped = text.replace('$', "$$");
            prop_assert_eq!(expand(&escaped, |_| None), Ok(text));
        }

        #[test]
        fn a_template_expands_to_its_values_or_names_the_missing_one(
            pieces in prop::collection::vec(piece(), 0..8),
            env in environment(),
        ) {
            let template: String = pieces.iter().map(|piece| match piece {
                Piece::Literal(text) => text.clone(),
                Piece::Dollar => "$$".into(),
                Piece::Reference { name, default: None } => format!("${{{name}}}"),
                Piece::Reference { name, default: Some(default) } => format!("${{{name}:-{default}}}"),
            }).collect();
            let mut expected = String::new();
            let mut missing = None;
            for piece in &pieces {
                match piece {
                    Piece::Literal(text) => expected.push_str(text),
                    Piece::Dollar => expected.push('$'),
                    Piece::Reference { name, default } => match env.get(name).or(default.as_ref()) {
                        Some(value) => expected.push_str(value),
                        None => {
                            missing = Some(name.clone());
                            break;
                        }
                    },
                }
            }
            let expanded = expand(&template, |name| env.get(name).cloned());
            match missing {
                None => prop_assert_eq!(expanded, Ok(expected)),
                Some(name) => {
                    let error = expanded.unwrap_err();
                    prop_assert!(error.contains(&format!("{name} is not set")), "{}", error);
                }
            }
        }

        #[test]
        fn any_text_expands_or_says_what_is_wrong(text in fuzzing::text(TOKENS, 24)) {
            if let Err(problem) = expand(&text, |name| (name == "A").then(|| "a".to_string())) {
                let known = ["unterminated ${...}", "invalid environment variable name", "is not set"];
                prop_assert!(known.iter().any(|k| problem.contains(k)), "{}", problem);
            }
        }

        #[test]
        fn a_substituted_value_never_shows_in_an_error(
            // No `$`, `{` or `}`: a value that is part of `${S}` is no secret shown.
            value in "[ -#%-z|~é\\n\\t]{3,12}",
            before in ".{0,6}",
            after in ".{0,6}",
        ) {
            let substituted = Substitutions(vec![("S".into(), value.clone())]);
            for shown in [value.clone(), format!("{value:?}")] {
                let problem = substituted.hide_in(&format!("{before}{shown}{after}"));
                let escaped = format!("{value:?}");
                prop_assert!(!problem.contains(&value), "{} shows {:?}", problem, value);
                prop_assert!(!problem.contains(&escaped[1..escaped.len() - 1]), "{} shows {}", problem, escaped);
            }
        }
    }

    #[test]
    fn interpolation_errors_name_the_key_path_of_the_bad_string() {
        let mut tree = serde_json::json!({"a": [{"b": "ok"}, {"c.d": "${BAD NAME}"}]});
        let (key, problem) = interpolate(&mut tree, &mut Vec::new(), &mut Substitutions::default()).unwrap_err();
        assert_eq!(key, "a[1].c.d");
        assert!(problem.contains("BAD NAME"), "{problem}");
    }
}
