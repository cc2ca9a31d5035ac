//! The `ingest:` section: the HTTP server that takes webhooks and
//! Salesforce outbound messages from the CRM and puts them on the broker.
//! Its own file so that the checks specific to it (source names that are
//! URL segments, who may call, Salesforce's organization) stay together.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use bytesize::ByteSize;
use serde::Deserialize;

use super::validate::{Problem, secret_from_env};
use super::{Secret, Secrets};
use crate::ingest::template::RoutingKeyTemplate;

/// The ingest server: where it listens and what it accepts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ingest {
    /// It faces the CRM: unlike the admin server, it is meant to be reached.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The body limit of sources that do not set their own.
    #[serde(default = "default_max_body")]
    pub max_body: ByteSize,
    /// By name: `POST /ingest/{name}`.
    pub sources: BTreeMap<String, IngestSource>,
}

/// One sender: what it may post, how it proves who it is, where it goes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestSource {
    /// The source's key in the file.
    #[serde(skip)]
    pub name: String,
    #[serde(default)]
    pub kind: SourceKind,
    /// Where its messages are published; they must reach a queue.
    pub exchange: String,
    /// Over the body's top-level JSON fields (a Salesforce notification's
    /// sObject fields) and `{header:Name}` request headers.
    pub routing_key: RoutingKeyTemplate,
    /// Larger bodies are refused with 413; defaults to `ingest.max_body`.
    #[serde(default)]
    pub max_body: Option<ByteSize>,
    #[serde(default)]
    pub auth: Option<IngestAuth>,
    /// `salesforce_outbound_message` only: the organization (15 or 18
    /// characters) whose notifications are accepted.
    #[serde(default)]
    pub organization_id: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// Any body, published as it came.
    #[default]
    Webhook,
    /// Salesforce's SOAP envelope: one message per notification, then the SOAP Ack.
    SalesforceOutboundMessage,
}

/// How a sender proves who it is. Secrets come from the environment.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum IngestAuth {
    /// `Authorization: Bearer <token>`.
    Bearer {
        token_env: String,
        #[serde(skip)]
        token: Secret,
    },
    /// A header holding the hex HMAC-SHA256 of the raw body (optionally `sha256=`-prefixed).
    HmacSha256 {
        secret_env: String,
        header: String,
        #[serde(skip)]
        secret: Secret,
    },
    /// A token in the URL's query (`?token=...`): for senders that cannot set
    /// a header, such as Salesforce outbound messages.
    QueryToken {
        token_env: String,
        #[serde(default = "default_query_parameter")]
        parameter: String,
        #[serde(skip)]
        token: Secret,
    },
}

fn default_listen() -> SocketAddr {
    ([127, 0, 0, 1], 8088).into()
}

fn default_max_body() -> ByteSize {
    ByteSize::mib(1)
}

fn default_query_parameter() -> String {
    "token".into()
}

impl IngestSource {
    pub fn max_body(&self, ingest: &Ingest) -> u64 {
        self.max_body.unwrap_or(ingest.max_body).as_u64()
    }
}

/// Names the sources, reads their secrets (with `Secrets::Read`) and checks
/// what serde cannot.
pub fn check(ingest: &mut Ingest, secrets: Secrets) -> Result<(), Problem> {
    if ingest.max_body.as_u64() == 0 {
        return Err(("ingest.max_body".into(), "must be more than 0".into()));
    }
    if ingest.sources.is_empty() {
        return Err(("ingest.sources".into(), "no sources: nothing could be posted".into()));
    }
    for (name, source) in &mut ingest.sources {
        source.name.clone_from(name);
        check_source(&format!("ingest.sources.{name}"), source, secrets)?;
    }
    Ok(())
}

fn check_source(key: &str, source: &mut IngestSource, secrets: Secrets) -> Result<(), Problem> {
    let name = &source.name;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        let problem = format!("source name {name:?} must be letters, digits, '-', '_' or '.': it is a URL segment");
        return Err((key.into(), problem));
    }
    if source.max_body.is_some_and(|size| size.as_u64() == 0) {
        return Err((format!("{key}.max_body"), "must be more than 0".into()));
    }
    match source.kind {
        SourceKind::Webhook => check_webhook(key, source)?,
        SourceKind::SalesforceOutboundMessage => check_salesforce(key, source)?,
    }
    if let Some(auth) = &mut source.auth {
        check_auth(&format!("{key}.auth"), auth, secrets)?;
    }
    Ok(())
}

fn check_webhook(key: &str, source: &IngestSource) -> Result<(), Problem> {
    if source.auth.is_none() {
        let problem = "a webhook source needs auth (bearer, hmac_sha256 or query_token): anyone could post".into();
        return Err((format!("{key}.auth"), problem));
    }
    if let Some(id) = &source.organization_id {
        let problem = format!("{id:?}: only a salesforce_outbound_message source has an organization");
        return Err((format!("{key}.organization_id"), problem));
    }
    Ok(())
}

fn check_salesforce(key: &str, source: &IngestSource) -> Result<(), Problem> {
    let key = format!("{key}.organization_id");
    let Some(id) = &source.organization_id else {
        let problem =
            "required for a salesforce_outbound_message source: notifications of other organizations are refused";
        return Err((key, problem.into()));
    };
    if !matches!(id.len(), 15 | 18) || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err((
            key,
            format!("{id:?} is not a Salesforce id (15 or 18 letters and digits)"),
        ));
    }
    Ok(())
}

fn check_auth(key: &str, auth: &mut IngestAuth, secrets: Secrets) -> Result<(), Problem> {
    if let IngestAuth::HmacSha256 { header, .. } = auth
        && axum::http::HeaderName::from_bytes(header.as_bytes()).is_err()
    {
        return Err((
            format!("{key}.hmac_sha256.header"),
            format!("{header:?} is not a header name"),
        ));
    }
    if let IngestAuth::QueryToken { parameter, .. } = auth
        && parameter.is_empty()
    {
        return Err((format!("{key}.query_token.parameter"), "must not be empty".into()));
    }
    if secrets != Secrets::Read {
        return Ok(());
    }
    let (field, variable, secret) = match auth {
        IngestAuth::Bearer { token_env, token } => ("bearer.token_env", token_env, token),
        IngestAuth::HmacSha256 { secret_env, secret, .. } => ("hmac_sha256.secret_env", secret_env, secret),
        IngestAuth::QueryToken { token_env, token, .. } => ("query_token.token_env", token_env, token),
    };
    let key = format!("{key}.{field}");
    *secret = secret_from_env(&key, variable)?;
    // An empty token would let an empty credential in.
    if secret.expose().is_empty() {
        return Err((key, format!("environment variable {variable} is empty")));
    }
    Ok(())
}
