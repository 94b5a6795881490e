//! The catalog keys the storage subsystem owns, built and parsed here and nowhere else:
//! volume specs under `store/volumes/<volume>`, and each volume's files under
//! `fs/<volume>/<path>` — a file at its path, an explicit directory (made by `mkdir`) at
//! its path with a trailing `/`. Paths are kept flat, as S3 keys are: a directory listing
//! is a delimiter scan of the catalog (`meta.scan`), a directory that holds files exists
//! without a key of its own, and S3 and the mount see the same tree.

/// Where volume specs live.
pub const VOLUMES_PREFIX: &str = "store/volumes/";
/// Where every volume's files live.
pub const FILES_PREFIX: &str = "fs/";

/// The key of volume `name`'s spec.
pub fn volume_key(name: &str) -> String {
    format!("{VOLUMES_PREFIX}{name}")
}

/// The volume a spec key names.
pub fn volume_of_key(key: &str) -> Option<&str> {
    key.strip_prefix(VOLUMES_PREFIX)
}

/// The prefix of every file key of `volume`.
pub fn files_prefix(volume: &str) -> String {
    format!("{FILES_PREFIX}{volume}/")
}

/// The key of a file at `path` (validated, without a leading `/`; empty for the root).
pub fn file_key(volume: &str, path: &str) -> String {
    format!("{FILES_PREFIX}{volume}/{path}")
}

/// The key of an explicit directory at `path` (non-empty), and the prefix of every key
/// below it.
pub fn directory_key(volume: &str, path: &str) -> String {
    if path.is_empty() {
        files_prefix(volume)
    } else {
        format!("{FILES_PREFIX}{volume}/{path}/")
    }
}

/// The path of a file key of `volume` (without the volume prefix).
pub fn path_of_key<'a>(volume: &str, key: &'a str) -> Option<&'a str> {
    key.strip_prefix(FILES_PREFIX)?
        .strip_prefix(volume)?
        .strip_prefix('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        assert_eq!(volume_key("vol0"), "store/volumes/vol0");
        assert_eq!(volume_of_key("store/volumes/vol0"), Some("vol0"));
        assert_eq!(file_key("vol0", "a/b.txt"), "fs/vol0/a/b.txt");
        assert_eq!(directory_key("vol0", "a"), "fs/vol0/a/");
        assert_eq!(directory_key("vol0", ""), "fs/vol0/");
        assert_eq!(path_of_key("vol0", "fs/vol0/a/b.txt"), Some("a/b.txt"));
        assert_eq!(path_of_key("vol0", "fs/vol01/a"), None);
    }
}
