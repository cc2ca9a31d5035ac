//! A source's routing key, as a template: `account.{Type}` takes the
//! body's top-level field `Type`, `{header:X-Event}` a request header. It
//! is parsed when the configuration is read (a bad template refuses the
//! start), and rendered per request (a missing value refuses the request,
//! naming it, rather than publishing under a key nobody expects).

use axum::http::{HeaderMap, HeaderName};
use serde_json::{Map, Value};

/// AMQP routing keys are short strings.
const MAX_ROUTING_KEY: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct RoutingKeyTemplate {
    text: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Field(String),
    Header(HeaderName),
}

impl TryFrom<String> for RoutingKeyTemplate {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let parts = parse(&text)?;
        let literal_length: usize = parts
            .iter()
            .map(|part| match part {
                Part::Literal(literal) => literal.len(),
                _ => 0,
            })
            .sum();
        if literal_length > MAX_ROUTING_KEY {
            return Err(format!("{text:?} is longer than {MAX_ROUTING_KEY} bytes"));
        }
        Ok(Self { text, parts })
    }
}

fn parse(text: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Part::Literal(rest[..open].to_string()));
        }
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or_else(|| format!("unclosed {{ in {text:?}"))?;
        parts.push(placeholder(&after[..close], text)?);
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err(format!("unopened }} in {text:?}"));
    }
    if !rest.is_empty() {
        parts.push(Part::Literal(rest.to_string()));
    }
    Ok(parts)
}

fn placeholder(name: &str, text: &str) -> Result<Part, String> {
    if let Some(header) = name.strip_prefix("header:") {
        let header = HeaderName::from_bytes(header.as_bytes())
            .map_err(|_| format!("{{{name}}} in {text:?}: {header:?} is not a header name"))?;
        return Ok(Part::Header(header));
    }
    if name.is_empty() || name.contains(['{', ':']) {
        return Err(format!("bad placeholder {{{name}}} in {text:?}"));
    }
    Ok(Part::Field(name.to_string()))
}

impl RoutingKeyTemplate {
    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether rendering reads fields of the body.
    pub fn reads_fields(&self) -> bool {
        self.parts.iter().any(|part| matches!(part, Part::Field(_)))
    }

    /// The routing key for one message. `fields` is the body as a JSON
    /// object, when it is one. The error says which value is missing or bad.
    pub fn render(&self, fields: Option<&Map<String, Value>>, headers: &HeaderMap) -> Result<String, String> {
        let mut key = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(literal) => key.push_str(literal),
                Part::Field(name) => key.push_str(&field(fields, name, &self.text)?),
                Part::Header(name) => key.push_str(&header(headers, name, &self.text)?),
            }
        }
        if key.len() > MAX_ROUTING_KEY {
            return Err(format!("the routing key would be longer than {MAX_ROUTING_KEY} bytes"));
        }
        Ok(key)
    }
}

fn field(fields: Option<&Map<String, Value>>, name: &str, text: &str) -> Result<String, String> {
    let Some(fields) = fields else {
        return Err(format!(
            "the routing key {text:?} needs field {name:?}, but the body is not a JSON object"
        ));
    };
    let value = match fields.get(name) {
        None | Some(Value::Null) => return Err(format!("field {name:?} (for the routing key {text:?}) is missing")),
        Some(Value::String(value)) => value.clone(),
        Some(value @ (Value::Number(_) | Value::Bool(_))) => value.to_string(),
        Some(_) => {
            return Err(format!(
                "field {name:?} (for the routing key {text:?}) is not a string or number"
            ));
        }
    };
    if value.is_empty() {
        return Err(format!("field {name:?} (for the routing key {text:?}) is empty"));
    }
    Ok(value)
}

fn header(headers: &HeaderMap, name: &HeaderName, text: &str) -> Result<String, String> {
    let value = headers
        .get(name)
        .ok_or_else(|| format!("header {name} (for the routing key {text:?}) is missing"))?;
    let value = value
        .to_str()
        .map_err(|_| format!("header {name} (for the routing key {text:?}) is not visible ASCII"))?;
    if value.is_empty() {
        return Err(format!("header {name} (for the routing key {text:?}) is empty"));
    }
    Ok(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(text: &str) -> RoutingKeyTemplate {
        RoutingKeyTemplate::try_from(text.to_string()).unwrap()
    }

    fn object(json: &str) -> Map<String, Value> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn renders_fields_headers_and_literals() {
        let mut headers = HeaderMap::new();
        headers.insert("x-event", "updated".parse().unwrap());
        let fields = object(r#"{"Type": "Customer", "Level": 3}"#);
        let rendered = template("account.{Type}.{header:X-Event}.{Level}").render(Some(&fields), &headers);
        assert_eq!(rendered.unwrap(), "account.Customer.updated.3");
        assert_eq!(
            template("account.updated").render(None, &headers).unwrap(),
            "account.updated"
        );
        assert!(!template("account.{header:X-Event}").reads_fields());
        assert!(template("account.{Type}").reads_fields());
    }

    #[test]
    fn a_missing_value_is_named() {
        let headers = HeaderMap::new();
        let error = template("account.{Type}")
            .render(Some(&object("{}")), &headers)
            .unwrap_err();
        assert!(error.contains(r#"field "Type""#), "{error}");
        let error = template("account.{Type}").render(None, &headers).unwrap_err();
        assert!(error.contains("not a JSON object"), "{error}");
        let error = template("{header:X-Event}").render(None, &headers).unwrap_err();
        assert!(error.contains("header x-event"), "{error}");
        let nested = object(r#"{"Type": {"a": 1}}"#);
        let error = template("account.{Type}").render(Some(&nested), &headers).unwrap_err();
        assert!(error.contains("not a string or number"), "{error}");
    }

    #[test]
    fn broken_templates_are_refused() {
        for bad in [
            "account.{Type",
            "account.Type}",
            "account.{}",
            "{header:bad header}",
            "{a:b}",
        ] {
            assert!(RoutingKeyTemplate::try_from(bad.to_string()).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use crate::fuzzing;

    const TOKENS: &[&str] = &[
        "{",
        "}",
        "{header:",
        "header:",
        "{Type}",
        "{header:x-event}",
        ":",
        ".",
        "#",
        "*",
        " ",
        "é",
    ];

    #[derive(Debug, Clone)]
    enum Piece {
        Literal(String),
        Field(String, Value),
        Header(String, String),
    }

    fn piece() -> impl Strategy<Value = Piece> {
        let value = prop_oneof![
            "[^{}]{1,8}".prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<bool>().prop_map(Value::from),
        ];
        prop_oneof![
            "[^{}]{1,12}".prop_map(Piece::Literal),
            ("[A-Za-z_][A-Za-z0-9_ ]{0,5}", value).prop_map(|(name, value)| Piece::Field(name, value)),
            (prop::sample::select(&["x-event", "x-tenant"][..]), "[!-~]{1,8}")
                .prop_map(|(name, value)| Piece::Header(name.to_string(), value)),
        ]
    }

    proptest! {
        #![proptest_config(fuzzing::config(1024))]

        #[test]
        fn any_text_is_a_template_or_refused_naming_it(text in fuzzing::text(TOKENS, 12)) {
            match RoutingKeyTemplate::try_from(text.clone()) {
                Ok(template) => prop_assert_eq!(template.as_str(), text),
                Err(problem) => prop_assert!(problem.contains(&format!("{text:?}")), "{}", problem),
            }
        }

        /// A template renders its literals and values in order, or says the
        /// key would not fit in a routing key.
        #[test]
        fn a_template_renders_its_values_in_place(pieces in prop::collection::vec(piece(), 0..6)) {
            let mut text = String::new();
            let mut expected = String::new();
            let mut fields = Map::new();
            let mut headers = HeaderMap::new();
            for piece in &pieces {
                match piece {
                    Piece::Literal(literal) => {
                        text.push_str(literal);
                        expected.push_str(literal);
                    }
                    Piece::Field(name, value) => {
                        text.push_str(&format!("{{{name}}}"));
                        let value = fields.entry(name.clone()).or_insert(value.clone());
                        expected.push_str(&value.as_str().map_or_else(|| value.to_string(), str::to_string));
                    }
                    Piece::Header(name, value) => {
                        text.push_str(&format!("{{header:{name}}}"));
                        let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
                        let value = headers.entry(name).or_insert(value.parse().unwrap());
                        expected.push_str(value.to_str().unwrap());
                    }
                }
            }
            let Ok(template) = RoutingKeyTemplate::try_from(text.clone()) else {
                prop_assert!(text.len() > MAX_ROUTING_KEY);
                return Ok(());
            };
            match template.render(Some(&fields), &headers) {
                Ok(key) => prop_assert_eq!(key, expected),
                Err(problem) => {
                    prop_assert!(expected.len() > MAX_ROUTING_KEY, "{}", problem);
                    prop_assert!(problem.contains("longer than 255 bytes"), "{}", problem);
                }
            }
        }

        /// Whatever the body holds, a rendered key fits AMQP.
        #[test]
        fn any_body_renders_a_key_that_fits_or_names_the_field(
            body in fuzzing::json(&["Type", "a", "é", ".", "#"]),
        ) {
            let template = RoutingKeyTemplate::try_from("account.{Type}".to_string()).unwrap();
            match template.render(body.as_object(), &HeaderMap::new()) {
                Ok(key) => prop_assert!(lapin::types::ShortString::try_new(key).is_ok()),
                Err(problem) => prop_assert!(problem.contains("\"Type\"") || problem.contains("255 bytes"), "{}", problem),
            }
        }
    }
}
