//! The `fleet:` section: which deploys through the broker a host accepts,
//! and the key that `deploy`, `rollback` and the admin API sign them with.
//! Its own file because it draws a security line: no code reaches a host
//! unsigned, unless the file says `unsigned: allow` in so many words.

use serde::Deserialize;

use super::Secrets;
use super::validate::Problem;
use crate::reload::signature::{DeploySigner, DeployVerifier};

const SIGNING_KEY: &str = "fleet.signing_key_env";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    /// The fleet's public key (base64 of 32 bytes): a host refuses every
    /// deploy it did not sign. Not a secret.
    #[serde(default)]
    pub verify_key: Option<String>,
    /// The environment variable holding the private key (base64 of 32
    /// bytes), where deploys are made. Hosts need not have it.
    #[serde(default)]
    pub signing_key_env: Option<String>,
    /// Without a `verify_key`, a host refuses every deploy unless this is
    /// `allow`.
    #[serde(default)]
    pub unsigned: Unsigned,
    #[serde(skip)]
    pub verifier: Option<DeployVerifier>,
    #[serde(skip)]
    pub signer: Option<DeploySigner>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unsigned {
    #[default]
    Refuse,
    /// The explicit opt-out: anyone who may publish to the control
    /// exchange may deploy.
    Allow,
}

/// Reads the keys; the signing key only if `secrets` says so.
pub fn check(fleet: &mut Fleet, secrets: Secrets) -> Result<(), Problem> {
    if let Some(text) = &fleet.verify_key {
        let verifier = DeployVerifier::from_base64(text)
            .map_err(|problem| ("fleet.verify_key".to_string(), format!("{text:?} {problem}")))?;
        fleet.verifier = Some(verifier);
    }
    if fleet.unsigned == Unsigned::Allow && fleet.verifier.is_some() {
        let problem = "allow contradicts fleet.verify_key (a host with a key refuses unsigned deploys): keep one";
        return Err(("fleet.unsigned".into(), problem.into()));
    }
    fleet.signer = read_signer(fleet, secrets)?;
    if let (Some(signer), Some(verifier)) = (&fleet.signer, &fleet.verifier)
        && signer.verifier() != *verifier
    {
        let problem = format!(
            "{:?} is not the public key of the signing key in {} (that is {:?})",
            verifier.to_base64(),
            fleet.signing_key_env.as_deref().unwrap_or_default(),
            signer.verifier().to_base64(),
        );
        return Err(("fleet.verify_key".into(), problem));
    }
    Ok(())
}

/// The signing key: required with `Secrets::Signing` (unless deploys may
/// go unsigned), read when its variable is set with `Secrets::Read` (a host
/// whose admin API deploys), never with `Secrets::Skip`.
fn read_signer(fleet: &Fleet, secrets: Secrets) -> Result<Option<DeploySigner>, Problem> {
    let required = secrets == Secrets::Signing;
    if secrets == Secrets::Skip {
        return Ok(None);
    }
    let Some(variable) = &fleet.signing_key_env else {
        if required && fleet.unsigned == Unsigned::Refuse {
            let problem = "deploys are signed: name the environment variable holding the fleet's signing key \
                           (or set fleet.unsigned: allow)";
            return Err((SIGNING_KEY.into(), problem.into()));
        }
        return Ok(None);
    };
    match std::env::var(variable) {
        Ok(text) => DeploySigner::from_base64(&text)
            .map(Some)
            .map_err(|problem| (SIGNING_KEY.into(), format!("environment variable {variable} {problem}"))),
        Err(_) if required => Err((
            SIGNING_KEY.into(),
            format!("environment variable {variable} is not set"),
        )),
        Err(_) => Ok(None),
    }
}
