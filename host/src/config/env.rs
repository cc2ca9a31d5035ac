//! `${VAR}` interpolation from the environment, applied to every string of
//! the file before it is read. `${VAR:-default}` gives a fallback and `$$`
//! writes a literal `$`.

use serde_json::Value;

/// Replaces references in every string of `tree`. On error, returns the key
/// path and the problem (naming the variable, never its value).
pub fn interpolate(tree: &mut Value, path: &mut Vec<String>) -> Result<(), (String, String)> {
    match tree {
        Value::String(text) => {
            *text = expand(text, |name| std::env::var(name).ok())
                .map_err(|problem| (key_path(path), problem))?;
        }
        Value::Array(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                path.push(format!("[{index}]"));
                interpolate(item, path)?;
                path.pop();
            }
        }
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                path.push(key.clone());
                interpolate(value, path)?;
                path.pop();
            }
        }
        _ => {}
    }
    Ok(())
}

/// `["routes", "a", "bindings", "[0]"]` reads `routes.a.bindings[0]`.
fn key_path(segments: &[String]) -> String {
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
pub fn expand(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
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
            out.push_str(&resolve(&body[..end], &lookup)?);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn resolve(reference: &str, lookup: &impl Fn(&str) -> Option<String>) -> Result<String, String> {
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
        .ok_or_else(|| {
            format!("environment variable {name} is not set (referenced as ${{{name}}})")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "USER_PASS").then(|| "s3cret".to_string())
    }

    #[test]
    fn expands_references_defaults_and_dollars() {
        assert_eq!(
            expand("amqp://u:${USER_PASS}@h", env).unwrap(),
            "amqp://u:s3cret@h"
        );
        assert_eq!(expand("${MISSING:-fallback}", env).unwrap(), "fallback");
        assert_eq!(expand("cost $$5 and $x", env).unwrap(), "cost $5 and $x");
    }

    #[test]
    fn a_missing_variable_is_named() {
        let error = expand("${NOPE}", env).unwrap_err();
        assert!(error.contains("NOPE is not set"), "{error}");
        assert!(
            expand("${UNCLOSED", env)
                .unwrap_err()
                .contains("unterminated")
        );
    }

    #[test]
    fn errors_carry_the_key_path() {
        let mut tree =
            serde_json::json!({"routes": {"a": {"bindings": [{"exchange": "${NOPE_X}"}]}}});
        let (key, problem) = interpolate(&mut tree, &mut Vec::new()).unwrap_err();
        assert_eq!(key, "routes.a.bindings[0].exchange");
        assert!(problem.contains("NOPE_X"));
    }
}
