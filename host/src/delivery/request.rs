//! Turns a call's arguments into an HTTP request, following the operation's
//! declaration: each argument goes where its parameter's `location` says.
//! A value is data, never syntax: it is percent-encoded in a URI segment
//! (and may not make a segment empty, `.` or `..`), form-encoded in the
//! query, and refused in a header when it holds a control character (CR,
//! LF), so it can neither reach another path or host nor add a header.

use std::collections::BTreeMap;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Map, Value};

use crate::config::{HttpMethod, Location, Operation, redact_url};

/// Everything but the unreserved characters of RFC 3986 is encoded, so a
/// value can never add a path segment, a query or a separator of ours.
pub const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub method: reqwest::Method,
    pub url: reqwest::Url,
    pub headers: Vec<(String, String)>,
    /// The JSON body, serialized once (a request sent again after a token
    /// refresh shares the same bytes).
    pub json: Option<bytes::Bytes>,
}

/// Checks the arguments (no unknown parameter, every required one present)
/// and builds the request. Errors name the parameter. `base_url` is the
/// endpoint's, parsed once when the endpoint is set up.
pub fn build_request(
    base_url: &reqwest::Url,
    operation: &Operation,
    args: &Map<String, Value>,
) -> Result<Request, String> {
    check_arguments(operation, args)?;
    let mut segments = Vec::new();
    let mut query = Vec::new();
    let mut headers = Vec::new();
    // Borrowed, not cloned: the body is serialized straight from the args.
    let mut json = BTreeMap::new();
    for (name, value) in args {
        let parameter = &operation.parameters[name];
        if value.is_null() && parameter.location != Location::Json {
            continue;
        }
        match parameter.location {
            Location::Uri => segments.push((name.as_str(), uri_segment(name, value)?)),
            Location::Query => query.push((name.as_str(), scalar(name, value)?)),
            Location::Header => headers.push((name.clone(), header_value(name, value)?)),
            Location::Json => {
                json.insert(name.as_str(), value);
            }
        }
    }
    let path = expand_uri(&operation.uri, &segments);
    check_segments(&path)?;
    let mut url = resolve(base_url, &path)?;
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(&query);
    }
    let has_body = operation.parameters.values().any(|p| p.location == Location::Json);
    let json = has_body
        .then(|| serde_json::to_vec(&json).map(bytes::Bytes::from))
        .transpose()
        .map_err(|e| format!("cannot write the JSON body: {e}"))?;
    Ok(Request {
        method: method(operation.method),
        url,
        headers,
        json,
    })
}

/// A URI argument as its path segment: text, percent-encoded, not empty.
fn uri_segment(name: &str, value: &Value) -> Result<String, String> {
    let text = scalar(name, value)?;
    if text.is_empty() {
        return Err(format!("parameter {name:?} is empty: a URI segment cannot be"));
    }
    Ok(utf8_percent_encode(&text, UNRESERVED).to_string())
}

/// The operation's `uri` template with each `{name}` of a URI argument
/// replaced by its segment; other braces stay as they are. One pass over
/// the template: a segment holds no braces (`{` is encoded), so no value
/// can fill another's placeholder.
fn expand_uri(template: &str, segments: &[(&str, String)]) -> String {
    let mut path = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        path.push_str(&rest[..open]);
        let placeholder = &rest[open..];
        let filled = placeholder[1..].split_once('}').and_then(|(name, _)| {
            let (_, segment) = segments.iter().find(|(argument, _)| *argument == name)?;
            Some((name, segment))
        });
        match filled {
            Some((name, segment)) => {
                path.push_str(segment);
                rest = &placeholder[name.len() + 2..];
            }
            // Not a placeholder of an argument: the brace stays, and the
            // scan goes on after it.
            None => {
                path.push('{');
                rest = &placeholder[1..];
            }
        }
    }
    path.push_str(rest);
    path
}

/// `.` and `..` are the only segments percent-encoding leaves as they are
/// (the dot is unreserved), and joining would resolve them: the request
/// would climb out of the operation's path. (URL parsers also read
/// `%2e` as a dot, but a value's `%` is encoded as `%25`.)
fn check_segments(path: &str) -> Result<(), String> {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    match path.split('/').find(|segment| matches!(*segment, "." | "..")) {
        Some(segment) => Err(format!(
            "the URI {path:?} has a {segment:?} segment: a parameter may not change the path"
        )),
        None => Ok(()),
    }
}

fn check_arguments(operation: &Operation, args: &Map<String, Value>) -> Result<(), String> {
    if let Some(unknown) = args.keys().find(|name| !operation.parameters.contains_key(*name)) {
        let declared: Vec<&str> = operation.parameters.keys().map(String::as_str).collect();
        return Err(format!(
            "unknown parameter {unknown:?} (declared: {})",
            declared.join(", ")
        ));
    }
    let missing = operation
        .parameters
        .iter()
        .find(|(name, p)| p.required && args.get(*name).is_none_or(Value::is_null));
    match missing {
        Some((name, _)) => Err(format!("missing required parameter {name:?}")),
        None => Ok(()),
    }
}

/// The operation's `path` (relative, with its values encoded) under the
/// endpoint's base URL. `Url::join` parses the whole URL again, host
/// included, for every call; when the base URL has no query or fragment
/// (which a join would drop) and the path is plain URL path characters
/// (as encoded values and usual templates are: no `?`, `#`, `:`, `\`, control
/// or non-ASCII characters, no leading `/`), appending the path to the
/// base's gives the same URL with only the path parsed.
fn resolve(base_url: &reqwest::Url, path: &str) -> Result<reqwest::Url, String> {
    let plain_path = !path.starts_with('/')
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~%/!$&'()*+,;=@".contains(&b));
    let plain =
        plain_path && base_url.query().is_none() && base_url.fragment().is_none() && base_url.path().ends_with('/');
    if plain {
        let mut url = base_url.clone();
        url.set_path(&format!("{}{path}", base_url.path()));
        return Ok(url);
    }
    base_url.join(path).map_err(|e| {
        format!(
            "cannot build a URL from {} and {path:?}: {e}",
            redact_url(base_url.as_str())
        )
    })
}

/// URI, query and header values are text: strings as they are, numbers and
/// booleans written out; objects and arrays have no single spelling.
fn scalar(name: &str, value: &Value) -> Result<String, String> {
    match value {
        Value::String(text) => Ok(text.clone()),
        Value::Number(number) => Ok(number.to_string()),
        Value::Bool(flag) => Ok(flag.to_string()),
        other => Err(format!(
            "parameter {name:?} must be a string, number or boolean, got {other}"
        )),
    }
}

fn header_value(name: &str, value: &Value) -> Result<String, String> {
    let text = scalar(name, value)?;
    if text.chars().any(|c| c.is_control()) {
        return Err(format!(
            "parameter {name:?} has a control character: not a valid header value"
        ));
    }
    Ok(text)
}

fn method(method: HttpMethod) -> reqwest::Method {
    match method {
        HttpMethod::Get => reqwest::Method::GET,
        HttpMethod::Post => reqwest::Method::POST,
        HttpMethod::Put => reqwest::Method::PUT,
        HttpMethod::Patch => reqwest::Method::PATCH,
        HttpMethod::Delete => reqwest::Method::DELETE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Parameter;
    use serde_json::json;

    /// The request's JSON body, parsed back.
    fn body_of(request: &Request) -> Option<Value> {
        let bytes = request.json.as_ref()?;
        Some(serde_json::from_slice(bytes).expect("the body is JSON"))
    }

    fn upsert_business() -> Operation {
        let parameter = |location, required| Parameter { location, required };
        Operation {
            method: HttpMethod::Put,
            uri: "businesses/{crmId}".into(),
            parameters: [
                ("crmId".to_string(), parameter(Location::Uri, true)),
                ("business".to_string(), parameter(Location::Json, false)),
                ("status".to_string(), parameter(Location::Json, false)),
                ("dryRun".to_string(), parameter(Location::Query, false)),
                ("X-Tenant".to_string(), parameter(Location::Header, false)),
            ]
            .into_iter()
            .collect(),
        }
    }

    fn base(url: &str) -> reqwest::Url {
        reqwest::Url::parse(url).unwrap()
    }

    fn args(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn fills_every_placeholder_of_an_argument_and_leaves_other_braces() {
        let segments = [("a", "x%7Bb%7D".to_string()), ("b", "y".to_string())];
        assert_eq!(expand_uri("t/{a}/{b}/{a}", &segments), "t/x%7Bb%7D/y/x%7Bb%7D");
        assert_eq!(expand_uri("{{a}}/{c}/{", &segments), "{x%7Bb%7D}/{c}/{");
        assert_eq!(expand_uri("plain/path", &segments), "plain/path");
        assert_eq!(expand_uri("{b", &segments), "{b");
    }

    #[test]
    fn places_each_argument_where_its_parameter_says() {
        let request = build_request(
            &base("http://shop.test/api/"),
            &upsert_business(),
            &args(
                json!({"crmId": "gg/11 é", "business": {"name": "E"}, "status": 70, "dryRun": true, "X-Tenant": "eu"}),
            ),
        )
        .unwrap();
        assert_eq!(request.method, reqwest::Method::PUT);
        assert_eq!(
            request.url.as_str(),
            "http://shop.test/api/businesses/gg%2F11%20%C3%A9?dryRun=true"
        );
        assert_eq!(request.headers, [("X-Tenant".to_string(), "eu".to_string())]);
        assert_eq!(
            body_of(&request),
            Some(json!({"business": {"name": "E"}, "status": 70}))
        );
    }

    /// Paths the fast way would get wrong go the long way: a control
    /// character (which URL parsing drops, so `\r/` is the root) and a
    /// first segment with a colon (`A:/` reads as a URL of scheme `a`).
    #[test]
    fn paths_a_join_reads_differently_are_joined() {
        let base = base("https://shop.test:8443/api/v1/");
        for path in ["\r/", "A:/", "items?x=1", "/root", "café"] {
            assert_eq!(resolve(&base, path).unwrap(), base.join(path).unwrap(), "{path:?}");
        }
    }

    #[test]
    fn a_value_cannot_change_the_path_the_host_or_the_headers() {
        let op = upsert_business();
        let url = |id: &str| {
            build_request(&base("http://shop.test/api/"), &op, &args(json!({"crmId": id})))
                .map(|request| request.url.to_string())
        };
        let encoded = [
            ("../admin", "http://shop.test/api/businesses/..%2Fadmin"),
            ("%2e%2e", "http://shop.test/api/businesses/%252e%252e"),
            ("//other-host/x", "http://shop.test/api/businesses/%2F%2Fother-host%2Fx"),
            ("user@other-host", "http://shop.test/api/businesses/user%40other-host"),
            (
                "http://other-host/",
                "http://shop.test/api/businesses/http%3A%2F%2Fother-host%2F",
            ),
            (
                "a\r\nX-Injected: 1",
                "http://shop.test/api/businesses/a%0D%0AX-Injected%3A%201",
            ),
            ("...", "http://shop.test/api/businesses/..."),
        ];
        for (id, expected) in encoded {
            assert_eq!(url(id).as_deref(), Ok(expected), "{id:?}");
        }
        for climbing in [".", ".."] {
            let error = url(climbing).unwrap_err();
            assert!(error.contains("may not change the path"), "{error}");
        }
        assert!(url("").unwrap_err().contains("\"crmId\" is empty"));
        let header = build_request(
            &base("http://s/"),
            &op,
            &args(json!({"crmId": "1", "X-Tenant": "eu\r\nX-Injected: 1"})),
        );
        assert!(header.unwrap_err().contains("control character"));
    }

    #[test]
    fn refuses_unknown_and_missing_parameters_by_name() {
        let op = upsert_business();
        let unknown = build_request(&base("http://s/"), &op, &args(json!({"crmId": "1", "colour": "red"})));
        assert!(unknown.unwrap_err().contains("unknown parameter \"colour\""));
        let missing = build_request(&base("http://s/"), &op, &args(json!({"status": 70})));
        assert!(missing.unwrap_err().contains("missing required parameter \"crmId\""));
        let object_in_uri = build_request(&base("http://s/"), &op, &args(json!({"crmId": {"a": 1}})));
        assert!(object_in_uri.unwrap_err().contains("\"crmId\" must be a string"));
    }
}

#[cfg(test)]
mod fuzz {
    use percent_encoding::percent_decode_str;
    use proptest::prelude::*;

    use super::*;
    use crate::config::Parameter;
    use crate::fuzzing;

    const TOKENS: &[&str] = &[
        "/",
        "..",
        ".",
        "?",
        "#",
        "%",
        "%2e",
        "%2F",
        "@",
        ":",
        "\r",
        "\n",
        "\\",
        "{id}",
        "{q}",
        " ",
        "é",
        "\u{7f}",
        "\u{85}",
        "&",
        "=",
        "+",
        "http://evil.test/",
    ];

    /// `items/{id}/sub`, with one parameter in each location.
    fn operation() -> Operation {
        let parameter = |location, required| Parameter { location, required };
        Operation {
            method: HttpMethod::Post,
            uri: "items/{id}/sub".into(),
            parameters: [
                ("id".to_string(), parameter(Location::Uri, true)),
                ("q".to_string(), parameter(Location::Query, false)),
                ("X-Tag".to_string(), parameter(Location::Header, false)),
                ("body".to_string(), parameter(Location::Json, false)),
            ]
            .into_iter()
            .collect(),
        }
    }

    fn value() -> impl Strategy<Value = Value> {
        let text = fuzzing::text(TOKENS, 8);
        prop_oneof![
            6 => text.prop_map(Value::String),
            1 => any::<i64>().prop_map(Value::from),
            1 => any::<f64>().prop_map(Value::from),
            1 => any::<bool>().prop_map(Value::from),
            1 => Just(Value::Null),
            1 => fuzzing::text(TOKENS, 3).prop_map(|text| serde_json::json!({"a": text})),
        ]
    }

    fn arguments() -> impl Strategy<Value = Map<String, Value>> {
        let name = prop::sample::select(&["id", "q", "X-Tag", "body", "other"][..]);
        prop::collection::btree_map(name, value(), 0..5).prop_map(|args| {
            args.into_iter()
                .map(|(name, value)| (name.to_string(), value))
                .collect()
        })
    }

    fn text_of(value: &Value) -> String {
        match value {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        }
    }

    proptest! {
        #![proptest_config(fuzzing::config(1024))]

        /// A value can change neither the host nor the path's other
        /// segments, and it reads back from where its parameter put it.
        #[test]
        fn arguments_stay_where_their_parameters_put_them(args in arguments()) {
            let base = reqwest::Url::parse("https://shop.test:8443/api/v1/").unwrap();
            let Ok(request) = build_request(&base, &operation(), &args) else {
                return Ok(());
            };
            let url = &request.url;
            prop_assert_eq!(url.scheme(), "https");
            prop_assert_eq!(url.host_str(), Some("shop.test"));
            prop_assert_eq!(url.port(), Some(8443));
            prop_assert_eq!(url.fragment(), None);
            prop_assert!(!url.as_str().contains(['\r', '\n']), "{}", url);
            let segments: Vec<&str> = url.path_segments().unwrap().collect();
            prop_assert_eq!(segments.len(), 5, "{}", url);
            prop_assert_eq!(&segments[..3], &["api", "v1", "items"][..]);
            prop_assert_eq!(segments[4], "sub");
            let id = percent_decode_str(segments[3]).decode_utf8().unwrap();
            prop_assert_eq!(id, text_of(&args["id"]));

            let query: Vec<(String, String)> = url.query_pairs().into_owned().collect();
            match args.get("q").filter(|q| !q.is_null()) {
                Some(q) => prop_assert_eq!(query, vec![("q".to_string(), text_of(q))]),
                None => prop_assert!(query.is_empty()),
            }
            for (name, value) in &request.headers {
                prop_assert!(reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_ok());
                prop_assert!(reqwest::header::HeaderValue::from_str(value).is_ok(), "{:?}", value);
            }
            // Compared as bytes: a float need not read back the same.
            let body: Map<String, Value> = args.iter().filter(|(name, _)| *name == "body")
                .map(|(name, value)| (name.clone(), value.clone())).collect();
            prop_assert_eq!(request.json.as_deref(), Some(&serde_json::to_vec(&body).unwrap()[..]));
        }

        /// Appending the path to the base URL's (the fast way) gives the
        /// URL a join would, for any path a call can make (values encoded)
        /// and bases with a path, a port, credentials or a query.
        #[test]
        fn a_resolved_path_is_what_a_join_gives(text in fuzzing::text(TOKENS, 8), raw in fuzzing::text(TOKENS, 3)) {
            let encoded = utf8_percent_encode(&text, UNRESERVED).to_string();
            for path in [format!("items/{encoded}/sub"), format!("{raw}/{encoded}")] {
                if check_segments(&path).is_err() || path.starts_with('/') || path.contains("://") {
                    continue;
                }
                for base in ["https://shop.test:8443/api/v1/", "http://u:p@shop.test/", "http://shop.test/a/?k=v", "http://xn--caf-dma.test/é/"] {
                    let base = reqwest::Url::parse(base).unwrap();
                    let joined = base.join(&path).map_err(|e| e.to_string());
                    let resolved = resolve(&base, &path).map(|url| url.to_string());
                    match joined {
                        Ok(joined) => prop_assert_eq!(resolved, Ok(joined.to_string()), "{} + {:?}", base, path),
                        Err(_) => prop_assert!(resolved.is_err(), "{} + {:?}", base, path),
                    }
                }
            }
        }

        /// Whatever the arguments, a refusal names the parameter at fault
        /// (or the path it would have made).
        #[test]
        fn a_refused_call_names_its_parameter(args in arguments()) {
            let base = reqwest::Url::parse("http://shop.test/").unwrap();
            if let Err(problem) = build_request(&base, &operation(), &args) {
                let named = ["id", "q", "X-Tag", "other"].iter().any(|name| problem.contains(&format!("{name:?}")));
                // A `.` or `..` segment is named by the path it would make.
                prop_assert!(named || problem.contains("may not change the path"), "{}", problem);
            }
        }
    }
}
