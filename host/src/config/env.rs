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
