//! SHA-256 digests of executables, computed once per file version and cached.
//!
//! A file version is its device, inode, size and modification time: replacing an executable
//! on disk changes at least the inode or the modification time, so a rule pinned to the old
//! digest stops matching and the program is prompted for again.

use std::{
    collections::HashMap,
    fs::File,
    io::{self, Read},
    os::unix::fs::MetadataExt as _,
    path::Path,
    sync::Mutex,
};

use sha2::{Digest, Sha256};

/// Identity of one version of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileVersion {
    device: u64,
    inode: u64,
    size: u64,
    modified_ns: i128,
}

/// Maximum number of cached digests; the cache is cleared when it is full.
const CACHE_LIMIT: usize = 4096;

/// Computes and caches executable digests.
#[derive(Debug, Default)]
pub struct ExecutableHasher {
    cache: Mutex<HashMap<FileVersion, String>>,
}

impl ExecutableHasher {
    /// Creates an empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns the lowercase hex SHA-256 of the file at `path`, reading it only when this
    /// version of the file was not hashed before.
    pub fn digest(&self, path: &Path) -> io::Result<String> {
        let mut file = File::open(path)?;
        let metadata = file.metadata()?;
        let version = FileVersion {
            device: metadata.dev(),
            inode: metadata.ino(),
            size: metadata.size(),
            modified_ns: i128::from(metadata.mtime()) * 1_000_000_000
                + i128::from(metadata.mtime_nsec()),
        };
        if let Some(digest) = self.lock().get(&version) {
            return Ok(digest.clone());
        }

        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let read = file.read(&mut buffer)?;
            if read == 0 {
                break;
            }
            hasher.update(&buffer[..read]);
        }
        let digest = hex(&hasher.finalize());

        let mut cache = self.lock();
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(version, digest.clone());
        Ok(digest)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FileVersion, String>> {
        // The map is always consistent between statements, so a poisoned lock is usable.
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        // Writing to a String cannot fail.
        let _ = write!(text, "{byte:02x}");
    }
    text
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn digest_of_known_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("program");
        fs::write(&path, b"abc").unwrap();
        let hasher = ExecutableHasher::new();
        assert_eq!(
            hasher.digest(&path).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn replaced_file_gets_new_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("program");
        fs::write(&path, b"first version").unwrap();
        let hasher = ExecutableHasher::new();
        let first = hasher.digest(&path).unwrap();
        assert_eq!(hasher.digest(&path).unwrap(), first, "cached digest");

        // Replace the file as package managers do: write a new file and rename it over.
        let staged = dir.path().join("program.new");
        fs::write(&staged, b"second version").unwrap();
        fs::rename(&staged, &path).unwrap();
        assert_ne!(hasher.digest(&path).unwrap(), first);
    }

    #[test]
    fn missing_file_is_error() {
        let hasher = ExecutableHasher::new();
        assert!(hasher.digest(Path::new("/nonexistent/program")).is_err());
    }
}
