//! Paths inside a volume, as users and clients send them (`vol0:/a/b.txt`, an S3 key, a
//! name the mount is asked to create). Every path is validated before it reaches the
//! catalog or a brick: a bad one is refused with an error that names the problem, never
//! normalised into something the user did not ask for.

/// Longest path, in bytes (Linux's `PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest name of one path component, in bytes (Linux's `NAME_MAX`).
pub const MAX_NAME_BYTES: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path is {0} bytes; at most {MAX_PATH_BYTES} are allowed")]
    TooLong(usize),
    #[error("the name {0:?}… is over {MAX_NAME_BYTES} bytes")]
    NameTooLong(String),
    #[error("the path contains a NUL byte")]
    Nul,
    #[error("the path contains a control character (newline, tab, ...)")]
    Control,
    #[error("the path contains {0:?}, which is not allowed in a volume path")]
    Dots(String),
    #[error("the path has an empty component (two slashes in a row)")]
    EmptyComponent,
    #[error("the path names the volume's root, not a file")]
    Root,
}

/// Validates a path and returns it without leading or trailing slashes (`/a/b/` is
/// `a/b`; `/` and `` are the root, the empty string). `.` and `..` components are
/// refused rather than resolved, so a path can never step outside its volume.
pub fn normalize(path: &str) -> Result<String, PathError> {
    if path.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong(path.len()));
    }
    if path.contains('\0') {
        return Err(PathError::Nul);
    }
    if path.chars().any(char::is_control) {
        return Err(PathError::Control);
    }
    let trimmed = path.trim_start_matches('/').trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    for component in trimmed.split('/') {
        match component {
            "" => return Err(PathError::EmptyComponent),
            "." | ".." => return Err(PathError::Dots(component.to_string())),
            name if name.len() > MAX_NAME_BYTES => {
                let shown: String = name.chars().take(16).collect();
                return Err(PathError::NameTooLong(shown));
            }
            _ => {}
        }
    }
    Ok(trimmed.to_string())
}

/// Like [`normalize`], for a path that must name something inside the root.
pub fn normalize_entry(path: &str) -> Result<String, PathError> {
    let normalized = normalize(path)?;
    if normalized.is_empty() {
        return Err(PathError::Root);
    }
    Ok(normalized)
}

/// The parent directory of a normalized path (`a/b` → `a`, `a` → the root).
pub fn parent(path: &str) -> &str {
    path.rsplit_once('/')
        .map(|(parent, _)| parent)
        .unwrap_or("")
}

/// The last component of a normalized path.
pub fn file_name(path: &str) -> &str {
    path.rsplit_once('/').map(|(_, name)| name).unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_paths_are_trimmed() {
        assert_eq!(normalize("/a/b.txt").unwrap(), "a/b.txt");
        assert_eq!(normalize("a/b/").unwrap(), "a/b");
        assert_eq!(normalize("/").unwrap(), "");
        assert_eq!(normalize("").unwrap(), "");
        assert_eq!(normalize("dir/.hidden").unwrap(), "dir/.hidden");
        assert_eq!(normalize("a/..b").unwrap(), "a/..b");
        assert_eq!(parent("a/b/c"), "a/b");
        assert_eq!(parent("a"), "");
        assert_eq!(file_name("a/b/c"), "c");
    }

    #[test]
    fn bad_paths_are_refused_by_name() {
        assert_eq!(normalize("a/../b"), Err(PathError::Dots("..".into())));
        assert_eq!(normalize("/.."), Err(PathError::Dots("..".into())));
        assert_eq!(normalize("./a"), Err(PathError::Dots(".".into())));
        assert_eq!(normalize("a//b"), Err(PathError::EmptyComponent));
        assert_eq!(normalize("a\0b"), Err(PathError::Nul));
        assert_eq!(normalize("a\nb"), Err(PathError::Control));
        assert!(matches!(
            normalize(&"x".repeat(256)),
            Err(PathError::NameTooLong(_))
        ));
        assert!(normalize(&"x".repeat(255)).is_ok());
        let long = vec!["abcdefgh"; 500].join("/");
        assert!(matches!(normalize(&long), Err(PathError::TooLong(_))));
        assert_eq!(normalize_entry("/"), Err(PathError::Root));
    }
}
