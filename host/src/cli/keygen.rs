//! `passerelle keygen`: a new key pair for signing fleet deploys. The
//! private key goes to a file only its owner may read, never to the
//! terminal; the public key, which every host's `fleet.verify_key` holds,
//! is printed.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use passerelle::reload::signature::DeploySigner;

#[derive(Args)]
pub struct KeygenArgs {
    /// Where to write the signing key (base64); an existing file is kept.
    signing_key_file: PathBuf,
}

pub async fn keygen(args: KeygenArgs) -> anyhow::Result<u8> {
    let path = &args.signing_key_file;
    let signer = DeploySigner::generate();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(file, "{}", signer.to_base64()).with_context(|| format!("writing {}", path.display()))?;
    let verifier = signer.verifier();
    println!(
        "signing key (key {}) written to {}: give it to what deploys, \
         in the variable fleet.signing_key_env names",
        verifier.id(),
        path.display()
    );
    println!(
        "every host's configuration:\n\nfleet:\n  verify_key: {}",
        verifier.to_base64()
    );
    Ok(0)
}
