//! Compiled components on disk, by content hash, so that a restart does
//! not recompile. Deserializing machine code is only safe for bytes this
//! host's engine wrote: each file is named after the engine's
//! compatibility hash and sealed with a key that only this cache holds;
//! anything else is ignored and recompiled.

use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

const SEAL_LEN: usize = 32;

pub struct ComponentCache {
    dir: PathBuf,
    key: [u8; 32],
    engine_tag: String,
}

impl ComponentCache {
    /// Opens (creating if needed) a cache folder private to this user.
    pub fn open(dir: &Path, engine: &Engine) -> anyhow::Result<Self> {
        create_private_dir(dir)?;
        let key = read_or_create_key(&dir.join("key"))?;
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(Self {
            dir: dir.to_path_buf(),
            key,
            engine_tag: format!("{:016x}", hasher.finish()),
        })
    }

    /// The default folder: `$PASSERELLE_CACHE_DIR`, else the user's cache.
    pub fn default_dir() -> PathBuf {
        if let Some(dir) = std::env::var_os("PASSERELLE_CACHE_DIR") {
            return PathBuf::from(dir);
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
            .unwrap_or_else(std::env::temp_dir);
        base.join("passerelle").join("components")
    }

    /// A component compiled earlier from exactly these bytes, if any.
    pub fn get(&self, engine: &Engine, source: &[u8]) -> Option<Component> {
        let sealed = std::fs::read(self.path(source)).ok()?;
        let code = self.unseal(&sealed)?;
        // SAFETY: the seal proves these bytes were serialized by this cache's
        // owner, and the file name ties them to this engine's settings.
        unsafe { Component::deserialize(engine, code) }.ok()
    }

    /// Stores a compiled component; a failure only costs a recompile later.
    pub fn put(&self, source: &[u8], component: &Component) {
        let result = component
            .serialize()
            .map_err(|e| anyhow::anyhow!("{e}"))
            .and_then(|code| write_atomically(&self.path(source), &self.seal(code), 0o600));
        if let Err(error) = result {
            tracing::warn!("could not cache a compiled component: {error:#}");
        }
    }

    fn path(&self, source: &[u8]) -> PathBuf {
        let digest = Sha256::digest(source);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(format!("{hex}-{}.cwasm", self.engine_tag))
    }

    fn seal(&self, mut code: Vec<u8>) -> Vec<u8> {
        let seal = self.mac(&code);
        code.extend_from_slice(&seal);
        code
    }

    fn unseal<'a>(&self, sealed: &'a [u8]) -> Option<&'a [u8]> {
        let split = sealed.len().checked_sub(SEAL_LEN)?;
        let (code, seal) = sealed.split_at(split);
        (self.mac(code).as_slice() == seal).then_some(code)
    }

    /// A keyed hash: enough to tell our own files from any other.
    fn mac(&self, code: &[u8]) -> [u8; SEAL_LEN] {
        let mut hasher = Sha256::new();
        hasher.update(self.key);
        hasher.update(code);
        hasher.update(self.key);
        hasher.finalize().into()
    }
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating the compile cache {}", dir.display()))
}

fn read_or_create_key(path: &Path) -> anyhow::Result<[u8; 32]> {
    if let Ok(bytes) = std::fs::read(path)
        && let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice())
    {
        return Ok(key);
    }
    let key: [u8; 32] = rand::random();
    write_atomically(path, &key, 0o600)?;
    Ok(key)
}

/// Writes beside the target then renames, so that no reader (or a crash)
/// ever sees half a file.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let temporary = dir.join(format!(".{name}.{:08x}.tmp", rand::random::<u32>()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temporary)
        .with_context(|| format!("writing {}", temporary.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path).with_context(|| format!("replacing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seal_tells_our_files_from_others() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::default();
        let cache = ComponentCache::open(dir.path(), &engine).unwrap();
        let sealed = cache.seal(b"machine code".to_vec());
        assert_eq!(cache.unseal(&sealed), Some(&b"machine code"[..]));

        let mut tampered = sealed.clone();
        tampered[0] ^= 1;
        assert_eq!(cache.unseal(&tampered), None);
        let other = ComponentCache::open(tempfile::tempdir().unwrap().path(), &engine).unwrap();
        assert_eq!(other.unseal(&sealed), None, "another cache's key");
        assert_eq!(cache.unseal(b"short"), None);
    }
}
