//! A transform's version: the short content hash of its component file.
//! The same bytes are the same version on every host, so deliveries,
//! dead letters and logs can say exactly which mapping produced them.

use std::fmt;
use std::sync::Arc;

use sha2::{Digest, Sha256};

/// Hex digits kept from the SHA-256: enough to tell versions apart, short
/// enough to read in a log line or an HTTP header.
const SHORT_LEN: usize = 12;

/// Shared text: a version is cloned into every message's outcome, failure
/// and guest state, so a clone is a reference count, not a new string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version(Arc<str>);

impl Version {
    pub fn of(bytes: &[u8]) -> Self {
        let digest = Sha256::digest(bytes);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        Self(Arc::from(&hex[..SHORT_LEN]))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_is_the_short_sha256_of_the_bytes() {
        // sha256("abc") = ba7816bf8f01cfea414140de5dae2223...
        assert_eq!(Version::of(b"abc").as_str(), "ba7816bf8f01");
        assert_ne!(Version::of(b"abc"), Version::of(b"abd"));
    }
}
