//! Small filesystem helpers for broker metadata: TOML files read and replaced atomically, and
//! durable directory entries (`docs/operations.md`, "Data directory").

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use crate::error::{Error, RpcError};

/// Replaces `path` with `contents` atomically: writes a temporary file next to it (readable
/// and writable by the broker's user only), fsyncs it, renames it over `path` and fsyncs the
/// directory. A crash leaves either the old or the new
/// file, never a mix (the temporary file may stay behind; it is overwritten next time).
///
/// # Errors
/// The first failing step's OS error.
pub fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no parent"))?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    sync_dir(dir)
}

/// The TOML file at `path` read as a `T`; `T::default()` if there is none.
///
/// # Errors
/// [`Error::Io`] if it exists but cannot be read, [`Error::Metadata`] if it does not parse.
pub fn read_toml<T: serde::de::DeserializeOwned + Default>(path: &Path) -> Result<T, Error> {
    match fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).map_err(|e| Error::Metadata {
            path: path.to_owned(),
            reason: e.to_string().trim().replace('\n', " "),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(Error::io("read", path, e)),
    }
}

/// Replaces the file at `path` with `value` as TOML, durably ([`write_atomic`]). Blocking.
///
/// # Errors
/// `DISK_FULL` or `INTERNAL` if it cannot be written; the file is then unchanged.
pub fn write_toml<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), RpcError> {
    let text = toml::to_string(value)
        .map_err(|e| RpcError::internal(format!("encode {}: {e}", path.display())))?;
    write_atomic(path, text.as_bytes()).map_err(|e| RpcError::io("write", path, &e))
}

/// fsyncs a directory so that entries created, renamed or removed in it are durable.
///
/// # Errors
/// The OS error.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.toml");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert!(!dir.path().join("meta.toml.tmp").exists());
        use std::os::unix::fs::PermissionsExt as _;
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
}
