//! The data directory as a whole: created if missing and locked, so that two brokers never
//! share one.

use std::fs::File;
use std::path::Path;

use crate::error::Error;

/// Creates the data directory if needed and takes its lock; the lock is held until the
/// returned value is dropped.
///
/// # Errors
/// [`Error::Io`] if it cannot be created or locked, [`Error::Locked`] if another process
/// holds it.
pub(crate) fn open(data_dir: &Path) -> Result<DataDirLock, Error> {
    std::fs::create_dir_all(data_dir)
        .map_err(|e| Error::io("create data directory", data_dir, e))?;
    DataDirLock::acquire(data_dir)
}

/// An exclusive lock on the data directory (`<data_dir>/.lock`, `flock`), so that two brokers
/// never share one; the kernel releases it when the process dies.
#[derive(Debug)]
pub(crate) struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    fn acquire(data_dir: &Path) -> Result<Self, Error> {
        let path = data_dir.join(".lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(DataDirLock { _file: file }),
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(Error::Locked {
                data_dir: data_dir.to_path_buf(),
                lock: path,
            }),
            Err(e) => Err(Error::io("lock", &path, e.into())),
        }
    }
}
