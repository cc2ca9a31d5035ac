//! Whether a request comes from the source it claims: a bearer token or a
//! token in the query, checked before the body is read (a stranger's body
//! is never buffered), or an HMAC-SHA256 of the raw body, checked after.
//! Every comparison is constant-time, so timing tells nothing about a secret.

use axum::http::{HeaderMap, header};
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use crate::config::IngestAuth;

/// The checks that need only the request's head. An HMAC passes here and
/// is checked by `body_signed`.
pub fn head_allowed(auth: Option<&IngestAuth>, headers: &HeaderMap, query: Option<&str>) -> bool {
    match auth {
        None | Some(IngestAuth::HmacSha256 { .. }) => true,
        Some(IngestAuth::Bearer { token, .. }) => {
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.strip_prefix("Bearer "))
                .unwrap_or_default();
            token.matches(given.as_bytes())
        }
        Some(IngestAuth::QueryToken { parameter, token, .. }) => {
            let given = query
                .and_then(|query| query_value(query, parameter))
                .unwrap_or_default();
            token.matches(&given)
        }
    }
}

/// The HMAC check, over the body as received. Other kinds pass.
pub fn body_signed(auth: Option<&IngestAuth>, headers: &HeaderMap, body: &[u8]) -> bool {
    let Some(IngestAuth::HmacSha256 { secret, header, .. }) = auth else {
        return true;
    };
    let Some(given) = headers.get(header.as_str()).and_then(|value| value.to_str().ok()) else {
        return false;
    };
    let given = given.trim();
    let Some(signature) = hex_decode(given.strip_prefix("sha256=").unwrap_or(given)) else {
        return false;
    };
    // Any key length is valid for HMAC.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&signature).is_ok()
}

/// The percent-decoded value of `name` in a query string.
fn query_value(query: &str, name: &str) -> Option<Vec<u8>> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| percent_encoding::percent_decode_str(value).collect())
    })
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    // `from_str_radix` alone would take a sign: `+f` is no hex pair.
    if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn hmac_auth() -> IngestAuth {
        IngestAuth::HmacSha256 {
            secret_env: "X".into(),
            header: "X-Signature".into(),
            secret: Secret::new("shh"),
        }
    }

    /// The hex HMAC-SHA256 of `body` under `secret`, the way a sender signs.
    fn sign(secret: &[u8], body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(body);
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }

    fn signed(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-signature", value.parse().unwrap());
        headers
    }

    #[test]
    fn a_known_signature_verifies() {
        // The example of Wikipedia's HMAC article.
        let auth = IngestAuth::HmacSha256 {
            secret_env: "X".into(),
            header: "X-Signature".into(),
            secret: Secret::new("key"),
        };
        let body = b"The quick brown fox jumps over the lazy dog";
        let known = "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8";
        assert!(body_signed(Some(&auth), &signed(known), body));
    }

    #[test]
    fn an_hmac_is_checked_over_the_raw_body_with_or_without_its_prefix() {
        let auth = hmac_auth();
        let body = br#"{"Id": "gg-11"}"#;
        let signature = sign(b"shh", body);
        assert!(body_signed(Some(&auth), &signed(&signature), body));
        assert!(body_signed(Some(&auth), &signed(&format!("sha256={signature}")), body));
        assert!(body_signed(Some(&auth), &signed(&signature.to_uppercase()), body));
        assert!(!body_signed(Some(&auth), &signed(&signature), b"{}"));
        assert!(!body_signed(Some(&auth), &signed(&sign(b"other", body)), body));
        assert!(!body_signed(Some(&auth), &signed("zz"), body));
        assert!(!body_signed(Some(&auth), &HeaderMap::new(), body));
    }

    /// Fuzz finding (`fuzz::hex_reads_back_what_it_decodes`): a `+` was
    /// read as part of a hex pair (`+f` as 0x0f).
    #[test]
    fn a_signature_with_a_sign_is_no_hex() {
        assert_eq!(hex_decode("+f0a"), None);
        assert_eq!(hex_decode("0F0a"), Some(vec![0x0f, 0x0a]));
    }

    #[test]
    fn bearer_and_query_tokens_must_match_exactly() {
        let bearer = IngestAuth::Bearer {
            token_env: "X".into(),
            token: Secret::new("t0k3n"),
        };
        let mut headers = HeaderMap::new();
        assert!(!head_allowed(Some(&bearer), &headers, None));
        headers.insert(header::AUTHORIZATION, "Bearer t0k3n".parse().unwrap());
        assert!(head_allowed(Some(&bearer), &headers, None));
        headers.insert(header::AUTHORIZATION, "Bearer t0k3".parse().unwrap());
        assert!(!head_allowed(Some(&bearer), &headers, None));

        let query = IngestAuth::QueryToken {
            token_env: "X".into(),
            parameter: "token".into(),
            token: Secret::new("a b/c"),
        };
        let none = HeaderMap::new();
        assert!(head_allowed(Some(&query), &none, Some("x=1&token=a%20b%2Fc")));
        assert!(!head_allowed(Some(&query), &none, Some("token=a%20b")));
        assert!(!head_allowed(Some(&query), &none, None));
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use crate::fuzzing;

    proptest! {
        #![proptest_config(fuzzing::config(1024))]

        #[test]
        fn hex_reads_back_what_it_decodes(text in fuzzing::text(&["0", "a", "F", "+", "-", " ", "é", "0x"], 12)) {
            if let Some(bytes) = hex_decode(&text) {
                let written: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
                prop_assert_eq!(written, text.to_ascii_lowercase());
            }
        }

        #[test]
        fn any_query_gives_the_value_of_its_parameter(query in fuzzing::text(&["&", "=", "token", "%", "%2", "%41", "+"], 10)) {
            if let Some(value) = query_value(&query, "token") {
                let written = query.split('&').find_map(|pair| pair.strip_prefix("token=")).unwrap();
                prop_assert_eq!(value, percent_encoding::percent_decode_str(written).collect::<Vec<u8>>());
            }
        }
    }
}
