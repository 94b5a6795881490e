//! Files on disk: every write is atomic (a reader sees the old or the new content, never a
//! torn mix, even across power loss), secrets are created 0600 from the first byte, and
//! every read is bounded so a hostile or corrupted file cannot make the agent allocate
//! without limit.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Largest configuration or credential file we agree to read: all of ours are a few KiB.
pub const MAX_SMALL_FILE: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is {size} bytes, larger than the {limit}-byte limit for this file")]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("{path} is not valid TOML: {message}")]
    BadToml { path: PathBuf, message: String },
    #[error("{path} is not valid UTF-8")]
    NotUtf8 { path: PathBuf },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> FileError + '_ {
    move |source| FileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Who may read a file we write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    /// Readable by everyone (0644): configuration without secrets.
    Public,
    /// Owner only (0600): keys, tokens, credentials.
    Private,
}

impl Visibility {
    fn mode(self) -> u32 {
        match self {
            Visibility::Public => 0o644,
            Visibility::Private => 0o600,
        }
    }
}

/// Writes `contents` to `path` atomically: a temporary file in the same directory is
/// written with the final mode from creation (so a secret is never briefly world
/// readable), fsynced, renamed over the target, and the directory is fsynced so the rename
/// itself survives power loss.
pub fn write_atomic(path: &Path, contents: &[u8], visibility: Visibility) -> Result<(), FileError> {
    write_atomic_with(path, visibility, |file| {
        file.write_all(contents).map_err(|source| FileError::Io {
            path: path.to_path_buf(),
            source,
        })
    })
}

/// [`write_atomic`] for contents too large to hold in memory: `write` streams them into
/// the temporary file (and may seek in it, to fill in a header last). On any error the
/// temporary file is removed and the target is left as it was.
pub fn write_atomic_with<E: From<FileError>>(
    path: &Path,
    visibility: Visibility,
    write: impl FnOnce(&mut File) -> Result<(), E>,
) -> Result<(), E> {
    let directory = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".to_string());
    let temporary = directory.join(format!(".{file_name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(visibility.mode())
            .open(&temporary)
            .map_err(io_error(&temporary))?;
        // The mode given to open() is filtered by the umask; set it explicitly.
        file.set_permissions(fs::Permissions::from_mode(visibility.mode()))
            .map_err(io_error(&temporary))?;
        write(&mut file)?;
        file.sync_all().map_err(io_error(&temporary))?;
        fs::rename(&temporary, path).map_err(io_error(path))?;
        if let Ok(dir) = File::open(directory) {
            let _ = dir.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    result
}

/// Reads a whole file, refusing files larger than `limit` bytes.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, FileError> {
    let file = File::open(path).map_err(io_error(path))?;
    let size = file.metadata().map_err(io_error(path))?.len();
    if size > limit {
        return Err(FileError::TooLarge {
            path: path.to_path_buf(),
            size,
            limit,
        });
    }
    let mut contents = Vec::with_capacity(size as usize);
    // take() guards against a file that grows between metadata() and read().
    file.take(limit + 1)
        .read_to_end(&mut contents)
        .map_err(io_error(path))?;
    if contents.len() as u64 > limit {
        return Err(FileError::TooLarge {
            path: path.to_path_buf(),
            size: contents.len() as u64,
            limit,
        });
    }
    Ok(contents)
}

/// Reads a small UTF-8 text file (configuration, PEM).
pub fn read_small_text(path: &Path) -> Result<String, FileError> {
    let bytes = read_bounded(path, MAX_SMALL_FILE)?;
    String::from_utf8(bytes).map_err(|_| FileError::NotUtf8 {
        path: path.to_path_buf(),
    })
}

/// Reads and parses a small TOML file.
pub fn read_toml<T: DeserializeOwned>(path: &Path) -> Result<T, FileError> {
    let text = read_small_text(path)?;
    toml::from_str(&text).map_err(|error| FileError::BadToml {
        path: path.to_path_buf(),
        message: error.message().to_string(),
    })
}

/// Serializes `value` as TOML and writes it atomically.
pub fn write_toml<T: Serialize>(
    path: &Path,
    value: &T,
    visibility: Visibility,
) -> Result<(), FileError> {
    let text = toml::to_string_pretty(value).map_err(|error| FileError::BadToml {
        path: path.to_path_buf(),
        message: error.to_string(),
    })?;
    write_atomic(path, text.as_bytes(), visibility)
}

/// Creates a directory (and parents) readable only by its owner, as data directories
/// hold keys.
pub fn create_private_dir(path: &Path) -> Result<(), FileError> {
    fs::create_dir_all(path).map_err(io_error(path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(io_error(path))
}

/// Free (for unprivileged users) and total bytes of the file system holding `path`.
pub fn file_system_space(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("the path contains a NUL byte"))?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: c_path is a valid NUL-terminated string and stats points to writable memory
    // of the right type; statvfs initialises it when it returns 0.
    let result = unsafe { libc::statvfs(c_path.as_ptr(), stats.as_mut_ptr()) };
    if result != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled the structure.
    let stats = unsafe { stats.assume_init() };
    // The fields are 32 bits wide on armv7 and 64 on x86_64 and aarch64.
    #[allow(clippy::unnecessary_cast)]
    let fragment = stats.f_frsize as u64;
    #[allow(clippy::unnecessary_cast)]
    Ok((
        stats.f_bavail as u64 * fragment,
        stats.f_blocks as u64 * fragment,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_are_0600_and_replaced_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        write_atomic(&path, b"first", Visibility::Private).unwrap();
        write_atomic(&path, b"second", Visibility::Private).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(fs::read(&path).unwrap(), b"second");
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn oversized_files_are_refused_with_their_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.toml");
        fs::write(&path, vec![b'a'; 2048]).unwrap();
        let error = read_bounded(&path, 1024).unwrap_err();
        assert!(error.to_string().contains("2048 bytes"), "{error}");
        assert_eq!(read_bounded(&path, 4096).unwrap().len(), 2048);
    }

    #[test]
    fn bad_toml_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        fs::write(&path, "name = [unclosed").unwrap();
        let error = read_toml::<toml::Value>(&path).unwrap_err();
        assert!(error.to_string().contains("node.toml"), "{error}");
    }
}
