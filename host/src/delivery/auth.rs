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

    /// `text` (an endpoint's answer, bound for a dead letter's reason and
    /// the logs) with this endpoint's credentials written `***`: a server
    /// that echoes what it was sent must not make us leak them.
    pub async fn hide_secrets(&self, text: &str) -> String {
        let mut secrets: Vec<String> = match &self.auth {
            None => Vec::new(),
            Some(Auth::Bearer { token, .. }) => vec![token.expose().into()],
            Some(Auth::Basic { username, password, .. }) => {
                use base64::Engine as _;
                let header =
                    base64::engine::general_purpose::STANDARD.encode(format!("{username}:{}", password.expose()));
                vec![password.expose().into(), header]
            }
            Some(Auth::OAuth2ClientCredentials { client_secret, .. }) => vec![client_secret.expose().into()],
        };
        if let Some(token) = self.token.lock().await.as_ref() {
            secrets.push(token.value.expose().into());
        }
        let mut text = text.to_string();
        for secret in secrets.iter().filter(|secret| !secret.is_empty()) {
            text = text.replace(secret.as_str(), "***");
        }
        text
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn credentials_an_answer_echoes_are_hidden() {
        let auth = Authenticator::new(Some(Auth::Basic {
            username: "passerelle".into(),
            password_env: "TEST_SHOP_PASSWORD".into(),
            password: Secret::new("open sesame"),
        }));
        let echoed = "wrong password open sesame (Authorization: Basic cGFzc2VyZWxsZTpvcGVuIHNlc2FtZQ==)";
        assert_eq!(
            auth.hide_secrets(echoed).await,
            "wrong password *** (Authorization: Basic ***)"
        );
    }
}
