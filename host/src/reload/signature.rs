//! Signatures of fleet deploys. Anyone who may publish to the broker could
//! otherwise push code to every host: a deploy carries an ed25519
//! signature of what it installs (route, component, fixtures), made with
//! the fleet's signing key where deploys are made, and every host checks it
//! with the public key alone before it even compiles the component. Hosts
//! holding only the public key cannot forge a deploy.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{SECRET_KEY_LENGTH, Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// What a signature covers, so that one made for a route or for other
/// fixtures verifies nowhere else. Fixed-size digests leave no ambiguity
/// in where one field ends.
fn signed_bytes(route: &str, component: &[u8], fixtures: Option<&str>) -> Vec<u8> {
    let mut bytes = b"passerelle deploy v1\n".to_vec();
    bytes.extend_from_slice(&Sha256::digest(route.as_bytes()));
    bytes.extend_from_slice(&Sha256::digest(component));
    match fixtures {
        Some(fixtures) => {
            bytes.push(1);
            bytes.extend_from_slice(&Sha256::digest(fixtures.as_bytes()));
        }
        None => bytes.push(0),
    }
    bytes
}

/// A short name for a public key, for logs: who signed, never the key.
fn key_id(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// The fleet's private key. Its `Debug` prints only the key's id.
#[derive(Clone)]
pub struct DeploySigner(SigningKey);

impl DeploySigner {
    /// Reads a key written as the base64 of its 32 bytes. The error never
    /// contains the text.
    pub fn from_base64(text: &str) -> Result<Self, String> {
        let bytes = BASE64
            .decode(text.trim())
            .map_err(|_| "is not base64 (expected the 32 bytes of an ed25519 signing key)".to_string())?;
        let seed: [u8; SECRET_KEY_LENGTH] = bytes
            .try_into()
            .map_err(|bytes: Vec<u8>| format!("is {} bytes long; an ed25519 signing key is 32", bytes.len()))?;
        Ok(Self(SigningKey::from_bytes(&seed)))
    }

    /// A new key pair, from the operating system's randomness.
    pub fn generate() -> Self {
        Self(SigningKey::from_bytes(&rand::random()))
    }

    /// The base64 text `from_base64` reads: for `passerelle keygen` only.
    pub fn to_base64(&self) -> String {
        BASE64.encode(self.0.to_bytes())
    }

    /// The signature header's value for a deploy of `component` to `route`.
    pub fn sign(&self, route: &str, component: &[u8], fixtures: Option<&str>) -> String {
        let signature = self.0.sign(&signed_bytes(route, component, fixtures));
        BASE64.encode(signature.to_bytes())
    }

    pub fn verifier(&self) -> DeployVerifier {
        DeployVerifier(self.0.verifying_key())
    }
}

impl fmt::Debug for DeploySigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeploySigner(key {})", self.verifier().id())
    }
}

/// The fleet's public key: what a host checks deploys with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployVerifier(VerifyingKey);

/// Why a signature does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadSignature {
    #[error("unsigned")]
    Missing,
    #[error("the signature is not the base64 of 64 bytes")]
    Malformed,
    #[error("the signature does not match the fleet's key {0}")]
    Mismatch(String),
}

impl DeployVerifier {
    /// Reads a key written as the base64 of its 32 bytes.
    pub fn from_base64(text: &str) -> Result<Self, String> {
        let bytes = BASE64
            .decode(text.trim())
            .map_err(|_| "is not base64 (expected the 32 bytes of an ed25519 public key)".to_string())?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|bytes: Vec<u8>| format!("is {} bytes long; an ed25519 public key is 32", bytes.len()))?;
        VerifyingKey::from_bytes(&bytes)
            .map(Self)
            .map_err(|_| "is not a valid ed25519 public key".to_string())
    }

    pub fn to_base64(&self) -> String {
        BASE64.encode(self.0.as_bytes())
    }

    /// A short name for the key, for logs.
    pub fn id(&self) -> String {
        key_id(&self.0)
    }

    /// Checks a deploy's signature header against this key. Strict
    /// verification: no malleable or weak-key signatures.
    pub fn verify(
        &self,
        route: &str,
        component: &[u8],
        fixtures: Option<&str>,
        signature: Option<&str>,
    ) -> Result<(), BadSignature> {
        let text = signature.ok_or(BadSignature::Missing)?;
        let bytes = BASE64.decode(text.trim()).map_err(|_| BadSignature::Malformed)?;
        let signature = Signature::from_slice(&bytes).map_err(|_| BadSignature::Malformed)?;
        self.0
            .verify_strict(&signed_bytes(route, component, fixtures), &signature)
            .map_err(|_| BadSignature::Mismatch(self.id()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (DeploySigner, DeployVerifier) {
        let signer = DeploySigner::generate();
        let verifier = signer.verifier();
        (signer, verifier)
    }

    #[test]
    fn a_signature_verifies_for_what_was_signed_only() {
        let (signer, verifier) = pair();
        let signature = signer.sign("crm-to-shop", b"component", Some("[]"));
        let check = |route, component: &[u8], fixtures| verifier.verify(route, component, fixtures, Some(&signature));
        assert_eq!(check("crm-to-shop", b"component", Some("[]")), Ok(()));
        let mismatch = Err(BadSignature::Mismatch(verifier.id()));
        assert_eq!(check("shop-to-crm", b"component", Some("[]")), mismatch);
        assert_eq!(check("crm-to-shop", b"c0mponent", Some("[]")), mismatch);
        assert_eq!(check("crm-to-shop", b"component", None), mismatch);
        assert_eq!(check("crm-to-shop", b"component", Some("[ ]")), mismatch);
    }

    #[test]
    fn unsigned_malformed_and_other_keys_are_told_apart() {
        let (signer, verifier) = pair();
        let verify = |signature: Option<&str>| verifier.verify("r", b"c", None, signature);
        assert_eq!(verify(None), Err(BadSignature::Missing));
        assert_eq!(verify(Some("not base64!")), Err(BadSignature::Malformed));
        assert_eq!(verify(Some("AAAA")), Err(BadSignature::Malformed));
        let (other, _) = pair();
        let forged = other.sign("r", b"c", None);
        assert_eq!(verify(Some(&forged)), Err(BadSignature::Mismatch(verifier.id())));
        assert_eq!(verify(Some(&signer.sign("r", b"c", None))), Ok(()));
    }

    #[test]
    fn keys_round_trip_through_base64_and_errors_never_show_them() {
        let (signer, verifier) = pair();
        let text = signer.to_base64();
        let read = DeploySigner::from_base64(&format!("{text}\n")).unwrap();
        assert_eq!(read.verifier(), verifier);
        assert_eq!(DeployVerifier::from_base64(&verifier.to_base64()).unwrap(), verifier);
        assert!(!format!("{read:?}").contains(&text), "{read:?}");
        let short = &text[..20];
        for bad in [short, "%%%"] {
            let error = DeploySigner::from_base64(bad).unwrap_err();
            assert!(!error.contains(bad), "{error}");
        }
        assert!(DeployVerifier::from_base64("AAAA").unwrap_err().contains("3 bytes"));
    }
}
