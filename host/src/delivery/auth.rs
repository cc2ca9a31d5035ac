//! Endpoint authentication: a bearer token, basic credentials, or an OAuth2
//! client-credentials token fetched on demand and cached until it expires.

use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::Mutex;

use super::DeliveryError;
use crate::config::{Auth, Secret};

/// A token is renewed this long before it expires, so that it does not
/// expire in flight.
const EXPIRY_MARGIN: Duration = Duration::from_secs(30);
/// When the token endpoint does not say how long a token lives.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(300);

pub struct Authenticator {
    auth: Option<Auth>,
    token: Mutex<Option<CachedToken>>,
}

struct CachedToken {
    value: Secret,
    renew_at: Instant,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl Authenticator {
    pub fn new(auth: Option<Auth>) -> Self {
        Self {
            auth,
            token: Mutex::new(None),
        }
    }

    /// Whether a 401 may be cured by fetching a new token.
    pub fn can_refresh(&self) -> bool {
        matches!(self.auth, Some(Auth::OAuth2ClientCredentials { .. }))
    }

    pub async fn invalidate(&self) {
        *self.token.lock().await = None;
    }

    pub async fn apply(
        &self,
        client: &reqwest::Client,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, DeliveryError> {
        Ok(match &self.auth {
            None => request,
            Some(Auth::Bearer { token, .. }) => request.bearer_auth(token.expose()),
            Some(Auth::Basic { username, password, .. }) => request.basic_auth(username, Some(password.expose())),
            Some(Auth::OAuth2ClientCredentials { .. }) => {
                request.bearer_auth(self.oauth2_token(client).await?.expose())
            }
        })
    }

    /// The cached token, or a new one. The lock makes concurrent callers
    /// wait for one fetch instead of each fetching their own.
    async fn oauth2_token(&self, client: &reqwest::Client) -> Result<Secret, DeliveryError> {
        let mut cached = self.token.lock().await;
        if let Some(token) = cached.as_ref().filter(|t| Instant::now() < t.renew_at) {
            return Ok(token.value.clone());
        }
        let fresh = self.fetch_token(client).await?;
        let value = fresh.value.clone();
        *cached = Some(fresh);
        Ok(value)
    }

    async fn fetch_token(&self, client: &reqwest::Client) -> Result<CachedToken, DeliveryError> {
        let Some(Auth::OAuth2ClientCredentials {
            token_url,
            scope,
            client_id,
            client_secret,
            ..
        }) = &self.auth
        else {
            unreachable!("fetch_token is only called for OAuth2 endpoints");
        };
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_id", client_id.expose()),
            ("client_secret", client_secret.expose()),
        ];
        if let Some(scope) = scope {
            form.push(("scope", scope));
        }
        // A failing token endpoint is treated as temporary: the credentials
        // may be fixed or the service may come back, and no message is lost.
        let failed = |problem: String| DeliveryError::temporary(format!("OAuth2 token from {token_url}: {problem}"));
        let response = client
            .post(token_url)
            .form(&form)
            .send()
            .await
            .map_err(|e| failed(e.without_url().to_string()))?;
        let status = response.status();
        if !status.is_success() {
            return Err(failed(format!("HTTP {status}")));
        }
        let token: TokenResponse = response
            .json()
            .await
            .map_err(|e| failed(format!("unreadable answer: {}", e.without_url())))?;
        let lifetime = token.expires_in.map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs);
        Ok(CachedToken {
            value: Secret::new(token.access_token),
            renew_at: Instant::now() + lifetime.saturating_sub(EXPIRY_MARGIN),
        })
    }
}
