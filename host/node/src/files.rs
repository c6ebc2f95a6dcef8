//! Reading the files a node is given (its config, cookie, gateway token): bounded, and
//! with errors that say what the path is when it is not a file. `/dev/zero` given as a
//! cookie file is named a device, not read until memory runs out.

use std::fmt;
use std::io::Read;
use std::path::Path;

/// The largest config file read.
pub const CONFIG_LIMIT: u64 = 1 << 20;
/// The largest cookie or token file read.
pub const SECRET_LIMIT: u64 = 4 << 10;

/// Why a file could not be read.
#[derive(Debug)]
pub enum FileError {
    NotFound,
    /// A directory where a file was expected.
    Directory,
    /// A device, FIFO or socket where a regular file was expected.
    NotRegular(&'static str),
    /// Longer than `limit` bytes.
    TooLarge {
        limit: u64,
    },
    /// Not UTF-8 where text was expected.
    NotText,
    Io(std::io::Error),
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileError::NotFound => write!(f, "does not exist"),
            FileError::Directory => write!(f, "is a directory, not a file"),
            FileError::NotRegular(what) => write!(f, "is a {what}, not a regular file"),
            FileError::TooLarge { limit } => write!(f, "is larger than {limit} bytes"),
            FileError::NotText => write!(f, "is not UTF-8 text"),
            FileError::Io(e) => write!(f, "cannot be read: {e}"),
        }
    }
}

impl std::error::Error for FileError {}

/// Reads `path`, a regular file of at most `limit` bytes (symbolic links followed, as
/// Kubernetes mounts Secrets).
pub fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, FileError> {
    let file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => FileError::NotFound,
        _ => FileError::Io(e),
    })?;
    let meta = file.metadata().map_err(FileError::Io)?;
    check_type(&meta)?;
    if meta.len() > limit {
        return Err(FileError::TooLarge { limit });
    }
    // The size can change between the check and the read: read one byte past the limit
    // at most, and refuse if it is there.
    let mut out = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1).read_to_end(&mut out).map_err(FileError::Io)?;
    if out.len() as u64 > limit {
        return Err(FileError::TooLarge { limit });
    }
    Ok(out)
}

/// Reads `path` as UTF-8 text, bounded as [`read_limited`].
pub fn read_text(path: &Path, limit: u64) -> Result<String, FileError> {
    let bytes = read_limited(path, limit)?;
    String::from_utf8(bytes).map_err(|_| FileError::NotText)
}

/// Whether a regular file's permissions let users other than its owner and group read it.
#[cfg(unix)]
pub fn readable_by_others(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o004 != 0)
}

#[cfg(not(unix))]
pub fn readable_by_others(_: &Path) -> bool {
    false
}

fn check_type(meta: &std::fs::Metadata) -> Result<(), FileError> {
    let t = meta.file_type();
    if t.is_file() {
        return Ok(());
    }
    if t.is_dir() {
        return Err(FileError::Directory);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_char_device() || t.is_block_device() {
            return Err(FileError::NotRegular("device"));
        }
        if t.is_fifo() {
            return Err(FileError::NotRegular("FIFO"));
        }
        if t.is_socket() {
            return Err(FileError::NotRegular("socket"));
        }
    }
    Err(FileError::NotRegular("special file"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_a_directory_and_a_missing_file_are_named_as_such() {
        assert!(matches!(read_limited(Path::new("/dev/zero"), SECRET_LIMIT), Err(FileError::NotRegular("device"))));
        assert!(matches!(read_limited(Path::new("/"), SECRET_LIMIT), Err(FileError::Directory)));
        assert!(matches!(read_limited(Path::new("/no/such/file"), SECRET_LIMIT), Err(FileError::NotFound)));
        assert_eq!(read_limited(Path::new("/dev/zero"), 1).unwrap_err().to_string(), "is a device, not a regular file");
    }

    #[test]
    fn a_file_past_the_limit_is_refused_and_one_within_it_read() {
        let dir = std::env::temp_dir().join(format!("wasmnode-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("f");
        std::fs::write(&f, vec![b'x'; 100]).unwrap();
        assert!(matches!(read_limited(&f, 99), Err(FileError::TooLarge { limit: 99 })));
        assert_eq!(read_limited(&f, 100).unwrap().len(), 100);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
