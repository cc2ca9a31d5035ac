//! Checks that serde cannot express: cross-references between sections,
//! URI templates against their parameters, secrets present in the
//! environment. Each error names the key path and the offending value.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use bytesize::ByteSize;

use super::{Amqp, Auth, Config, EchoSettings, Endpoint, Location, Locator, Operation, Route, Secret, Secrets};

pub(super) type Problem = (String, String);

pub fn check(config: &mut Config, base: &Path, secrets: Secrets) -> Result<(), Problem> {
    check_amqp_urls(&mut config.amqp)?;
    for (name, endpoint) in &mut config.endpoints {
        check_endpoint(name, endpoint, secrets)?;
    }
    if config.routes.is_empty() {
        return Err(("routes".into(), "no routes: nothing to consume".into()));
    }
    for (name, route) in &mut config.routes {
        check_route(name, route, &config.endpoints, base)?;
    }
    check_echo_ledgers(&config.routes)?;
    if let (Some(admin), Secrets::Read) = (&mut config.admin, secrets) {
        admin.token = secret_from_env("admin.token_env", &admin.token_env)?;
        if admin.token.expose().is_empty() {
            let problem = format!("environment variable {} is empty", admin.token_env);
            return Err(("admin.token_env".into(), problem));
        }
    }
    if let Some(ingest) = &mut config.ingest {
        super::ingest::check(ingest, secrets)?;
    }
    super::fleet::check(&mut config.fleet, secrets)?;
    Ok(())
}

pub(super) fn secret_from_env(key: &str, variable: &str) -> Result<Secret, Problem> {
    std::env::var(variable)
        .map(Secret::new)
        .map_err(|_| (key.to_string(), format!("environment variable {variable} is not set")))
}

/// Exactly one of `amqp.url` and `amqp.urls`; after this, `urls` holds
/// the addresses either way.
fn check_amqp_urls(amqp: &mut Amqp) -> Result<(), Problem> {
    let listed = amqp.listed.take();
    let listed_empty = listed.as_ref().is_some_and(Vec::is_empty);
    let listed = listed.filter(|urls| !urls.is_empty());
    match (amqp.url.take(), listed) {
        (Some(url), None) => {
            check_amqp_url("amqp.url".into(), url.expose())?;
            amqp.urls = vec![url];
        }
        (None, Some(urls)) => {
            for (n, url) in urls.iter().enumerate() {
                check_amqp_url(format!("amqp.urls[{n}]"), url.expose())?;
            }
            amqp.urls = urls;
        }
        (Some(_), Some(_)) => {
            return Err((
                "amqp".into(),
                "both url and urls are set: write one or the other".into(),
            ));
        }
        (None, None) => {
            let problem = "no broker: set url (one broker) or urls (the nodes of a cluster)";
            // An empty list is a problem of the section; nothing at all,
            // a missing url (what most files have).
            let key = if listed_empty { "amqp" } else { "amqp.url" };
            return Err((key.into(), problem.into()));
        }
    }
    Ok(())
}

fn check_amqp_url(key: String, url: &str) -> Result<(), Problem> {
    if url.starts_with("amqp://") || url.starts_with("amqps://") {
        return Ok(());
    }
    Err((key, format!("{:?} is not an amqp:// or amqps:// URL", redact_url(url))))
}

/// Hides the password of a URL, for errors and logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "***".into();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_string(),
    }
}

fn check_endpoint(name: &str, endpoint: &mut Endpoint, secrets: Secrets) -> Result<(), Problem> {
    let key = format!("endpoints.{name}");
    let parsed = reqwest::Url::parse(&endpoint.base_url).map_err(|e| {
        (
            format!("{key}.base_url"),
            format!("{:?} is not a URL: {e}", endpoint.base_url),
        )
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err((
            format!("{key}.base_url"),
            format!("{:?} must be an http:// or https:// URL", endpoint.base_url),
        ));
    }
    // Operation URIs are relative: without the slash, joining would drop
    // the last segment of the base.
    if !endpoint.base_url.ends_with('/') {
        endpoint.base_url.push('/');
    }
    if endpoint.timeout.is_zero() {
        return Err((format!("{key}.timeout"), "must be more than 0".into()));
    }
    if let (Some(auth), Secrets::Read) = (&mut endpoint.auth, secrets) {
        read_auth_secrets(&format!("{key}.auth"), auth)?;
    }
    check_pace(&key, endpoint)?;
    if endpoint.breaker.failures == 0 {
        return Err((format!("{key}.breaker.failures"), "must be at least 1".into()));
    }
    if endpoint.breaker.max_cool_down < endpoint.breaker.cool_down {
        return Err((
            format!("{key}.breaker.max_cool_down"),
            "must not be shorter than cool_down".into(),
        ));
    }
    if endpoint.operations.is_empty() {
        return Err((format!("{key}.operations"), "no operations declared".into()));
    }
    for (op_name, operation) in &mut endpoint.operations {
        check_operation(&format!("{key}.operations.{op_name}"), operation)?;
    }
    Ok(())
}

fn check_pace(key: &str, endpoint: &Endpoint) -> Result<(), Problem> {
    if endpoint.max_in_flight == Some(0) {
        return Err((format!("{key}.max_in_flight"), "must be at least 1".into()));
    }
    match (endpoint.burst, endpoint.rate_limit) {
        (Some(0), _) => Err((format!("{key}.burst"), "must be at least 1".into())),
        (Some(burst), None) => Err((
            format!("{key}.burst"),
            format!("burst {burst} needs a rate_limit (e.g. rate_limit: 50/s)"),
        )),
        _ => Ok(()),
    }
}

fn read_auth_secrets(key: &str, auth: &mut Auth) -> Result<(), Problem> {
    let from_env = |field: &str, variable: &str| secret_from_env(&format!("{key}.{field}"), variable);
    match auth {
        Auth::Bearer { token_env, token } => {
            *token = from_env("bearer.token_env", token_env)?;
        }
        Auth::Basic {
            password_env, password, ..
        } => {
            *password = from_env("basic.password_env", password_env)?;
        }
        Auth::OAuth2ClientCredentials {
            token_url,
            client_id_env,
            client_secret_env,
            client_id,
            client_secret,
            ..
        } => {
            reqwest::Url::parse(token_url).map_err(|e| {
                (
                    format!("{key}.oauth2_client_credentials.token_url"),
                    format!("{token_url:?} is not a URL: {e}"),
                )
            })?;
            *client_id = from_env("oauth2_client_credentials.client_id_env", client_id_env)?;
            *client_secret = from_env("oauth2_client_credentials.client_secret_env", client_secret_env)?;
        }
    }
    Ok(())
}

fn check_operation(key: &str, operation: &mut Operation) -> Result<(), Problem> {
    let uri_key = format!("{key}.uri");
    if operation.uri.starts_with('/') || operation.uri.contains("://") {
        return Err((
            uri_key,
            format!(
                "{:?} must be relative to the endpoint's base_url (no leading /)",
                operation.uri
            ),
        ));
    }
    if operation
        .uri
        .split(['?', '#'])
        .next()
        .unwrap_or_default()
        .split('/')
        .any(|s| matches!(s, "." | ".."))
    {
        return Err((
            uri_key,
            format!("{:?} has a . or .. segment: name the path as it is", operation.uri),
        ));
    }
    let placeholders = placeholders(&operation.uri).map_err(|problem| (uri_key.clone(), problem))?;
    for name in &placeholders {
        match operation.parameters.get(name) {
            Some(p) if p.location == Location::Uri => {}
            Some(_) => {
                return Err((
                    format!("{key}.parameters.{name}.location"),
                    format!(
                        "{{{name}}} appears in uri {:?}, so its location must be uri",
                        operation.uri
                    ),
                ));
            }
            None => {
                return Err((
                    format!("{key}.parameters"),
                    format!(
                        "uri {:?} uses {{{name}}} but no parameter {name} is declared",
                        operation.uri
                    ),
                ));
            }
        }
    }
    for (name, parameter) in &mut operation.parameters {
        if parameter.location == Location::Header && reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err((
                format!("{key}.parameters.{name}"),
                format!("{name:?} is not a valid HTTP header name"),
            ));
        }
        if parameter.location == Location::Uri {
            if !placeholders.contains(name) {
                return Err((
                    format!("{key}.parameters.{name}"),
                    format!("location is uri but uri {:?} has no {{{name}}}", operation.uri),
                ));
            }
            parameter.required = true;
        }
    }
    Ok(())
}

/// The `{name}` placeholders of a URI template.
pub fn placeholders(template: &str) -> Result<BTreeSet<String>, String> {
    let mut names = BTreeSet::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("unclosed {{ in uri {template:?}"))?;
        let name = &after[..close];
        if name.is_empty() || name.contains('{') {
            return Err(format!("bad placeholder {{{name}}} in uri {template:?}"));
        }
        names.insert(name.to_string());
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err(format!("unopened }} in uri {template:?}"));
    }
    Ok(names)
}

fn check_route(
    name: &str,
    route: &mut Route,
    endpoints: &std::collections::BTreeMap<String, Endpoint>,
    base: &Path,
) -> Result<(), Problem> {
    let key = format!("routes.{name}");
    if route.queue.trim().is_empty() {
        return Err((format!("{key}.queue"), "must not be empty".into()));
    }
    for (index, binding) in route.bindings.iter().enumerate() {
        if binding.exchange.is_empty() {
            return Err((
                format!("{key}.bindings[{index}].exchange"),
                "the default exchange cannot be bound; name an exchange".into(),
            ));
        }
    }
    let transform = base.join(&route.transform);
    if !transform.is_file() {
        return Err((
            format!("{key}.transform"),
            format!("no such file: {}", transform.display()),
        ));
    }
    // The file watcher reports absolute paths.
    route.transform = transform.canonicalize().unwrap_or(transform);
    for (index, endpoint) in route.endpoints.iter().enumerate() {
        if !endpoints.contains_key(endpoint) {
            let known: Vec<&str> = endpoints.keys().map(String::as_str).collect();
            return Err((
                format!("{key}.endpoints[{index}]"),
                format!("unknown endpoint {endpoint:?} (declared: {})", known.join(", ")),
            ));
        }
    }
    if route.concurrency == 0 {
        return Err((format!("{key}.concurrency"), "must be at least 1".into()));
    }
    if route.prefetch() < route.concurrency {
        return Err((
            format!("{key}.prefetch"),
            format!(
                "{} is below concurrency {}: workers would sit idle",
                route.prefetch(),
                route.concurrency
            ),
        ));
    }
    if let Some(index) = route.retry.delays.iter().position(|d| d.as_millis() == 0) {
        return Err((
            format!("{key}.retry.delays[{index}]"),
            "a delay must be at least 1ms".into(),
        ));
    }
    // A delay is its retry queue's message TTL: milliseconds in 32 bits.
    let longest = Duration::from_millis(i32::MAX as u64);
    if let Some(index) = route.retry.delays.iter().position(|d| *d > longest) {
        let problem = format!(
            "{} is longer than a message TTL can be ({})",
            humantime::format_duration(route.retry.delays[index]),
            humantime::format_duration(longest)
        );
        return Err((format!("{key}.retry.delays[{index}]"), problem));
    }
    let limits = route.limits.guest();
    if limits.time.is_zero() {
        return Err((format!("{key}.limits.time"), "must be more than 0".into()));
    }
    if limits.memory < 1 << 20 {
        return Err((format!("{key}.limits.memory"), "must be at least 1MiB".into()));
    }
    if limits.memory > 4 << 30 {
        let problem = "must be at most 4GiB, all a 32-bit guest can address".into();
        return Err((format!("{key}.limits.memory"), problem));
    }
    if limits.body >= limits.memory {
        let problem = format!(
            "{} is not below limits.memory ({}): the transform could never read such a body",
            ByteSize(limits.body as u64).display().iec(),
            ByteSize(limits.memory as u64).display().iec()
        );
        return Err((format!("{key}.limits.body"), problem));
    }
    let at_least_one = [
        ("body", limits.body),
        ("actions", limits.actions),
        ("output", limits.output),
        ("log_line", limits.log_line),
    ];
    if let Some((name, _)) = at_least_one.iter().find(|(_, value)| *value == 0) {
        return Err((format!("{key}.limits.{name}"), "must be more than 0".into()));
    }
    if let Some(guard) = &route.guard
        && guard.keep.as_secs() == 0
    {
        return Err((format!("{key}.guard.keep"), "must be at least 1s".into()));
    }
    if let Some(echo) = &route.echo {
        check_echo(&format!("{key}.echo"), echo, &route.endpoints, endpoints)?;
    }
    Ok(())
}

fn check_echo(
    key: &str,
    echo: &EchoSettings,
    route_endpoints: &[String],
    endpoints: &std::collections::BTreeMap<String, Endpoint>,
) -> Result<(), Problem> {
    if echo.ledger.trim().is_empty() {
        return Err((format!("{key}.ledger"), "must name a stream".into()));
    }
    if echo.ttl.as_secs() == 0 {
        return Err((format!("{key}.ttl"), "must be at least 1s".into()));
    }
    for (side, settings) in [("source", &echo.source), ("target", &echo.target)] {
        if !endpoints.contains_key(&settings.endpoint) {
            let known: Vec<&str> = endpoints.keys().map(String::as_str).collect();
            let problem = format!(
                "unknown endpoint {:?} (declared: {})",
                settings.endpoint,
                known.join(", ")
            );
            return Err((format!("{key}.{side}.endpoint"), problem));
        }
        if settings.fields.is_empty() {
            return Err((format!("{key}.{side}.fields"), "name at least one field".into()));
        }
    }
    if !route_endpoints.contains(&echo.target.endpoint) {
        let problem = format!("{:?} is not among the route's endpoints", echo.target.endpoint);
        return Err((format!("{key}.target.endpoint"), problem));
    }
    // The target side reads the args of a call: there are no headers there.
    let target = std::iter::once(("entity".to_string(), &echo.target.entity)).chain(
        echo.target
            .fields
            .iter()
            .enumerate()
            .map(|(i, f)| (format!("fields[{i}]"), f)),
    );
    for (field, locator) in target {
        if let Locator::Header(_) = locator {
            let problem = format!("{locator} reads a header; a call's args have none: use a JSON pointer");
            return Err((format!("{key}.target.{field}"), problem));
        }
    }
    Ok(())
}

/// Routes that share an echo ledger must agree on it: one retention for
/// its stream, and one number of fields per system, or fingerprints of a
/// system's events and of the writes to it would never compare.
fn check_echo_ledgers(routes: &std::collections::BTreeMap<String, Route>) -> Result<(), Problem> {
    let mut seen: std::collections::BTreeMap<&str, (&str, &EchoSettings)> = Default::default();
    let mut fields: std::collections::BTreeMap<(&str, &str), (String, usize)> = Default::default();
    for (name, route) in routes {
        let Some(echo) = &route.echo else { continue };
        let key = format!("routes.{name}.echo");
        if let Some((first, earlier)) = seen.insert(&echo.ledger, (name, echo))
            && earlier.ttl != echo.ttl
        {
            let problem = format!(
                "{:?} differs from routes.{first}.echo.ttl {:?}, which shares ledger {}",
                humantime::format_duration(echo.ttl).to_string(),
                humantime::format_duration(earlier.ttl).to_string(),
                echo.ledger
            );
            return Err((format!("{key}.ttl"), problem));
        }
        for (side, settings) in [("source", &echo.source), ("target", &echo.target)] {
            let here = (format!("{key}.{side}.fields"), settings.fields.len());
            let entry = fields.entry((&echo.ledger, &settings.endpoint)).or_insert(here.clone());
            if entry.1 != here.1 {
                let problem = format!(
                    "{} field(s) for {}, but {} has {}: a system's events and the writes to it must name the same fields",
                    here.1, settings.endpoint, entry.0, entry.1
                );
                return Err((here.0, problem));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_the_password_of_a_url() {
        assert_eq!(
            redact_url("amqp://guest:hunter2@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact_url("amqp://127.0.0.1"), "amqp://127.0.0.1");
    }

    #[test]
    fn finds_placeholders_and_refuses_broken_templates() {
        let names = placeholders("a/{x}/b/{y}").unwrap();
        assert_eq!(names.into_iter().collect::<Vec<_>>(), ["x", "y"]);
        assert!(placeholders("a/{x").is_err());
        assert!(placeholders("a/x}").is_err());
        assert!(placeholders("a/{}").is_err());
    }
}
