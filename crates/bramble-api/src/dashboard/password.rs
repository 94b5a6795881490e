//! The dashboard's password: one for the cluster, kept in the catalog as an argon2id hash
//! (`api/dashboard/password`; this module owns the key) so every node's dashboard takes it.
//! There is no default: `bramble up` generates one, `bramble dashboard --set-password`
//! sets one. The CLI hashes it before it leaves, so the password itself never travels.
//! Changing it ends every session (a session remembers the record's version).

use bramble_meta::Meta;
use bramble_meta::api::Consistency;
use serde::{Deserialize, Serialize};

use crate::ApiError;

/// Where the record lives.
pub const PASSWORD_KEY: &str = "api/dashboard/password";
/// The shortest password accepted: generated ones are longer; people's must not be short.
pub const MIN_PASSWORD_CHARACTERS: usize = 12;
/// The longest password looked at (argon2 takes any length; a login body does not).
pub const MAX_PASSWORD_BYTES: usize = 256;

/// The stored password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasswordRecord {
    /// argon2id PHC string.
    pub phc: String,
    pub set_by: String,
    pub set_unix_ms: u64,
}

/// `api.dashboard_password_set`'s request: the PHC string of the new password.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetPassword {
    pub phc: String,
}

/// Checks a password a person chose before it is hashed.
pub fn validate_new_password(password: &str) -> Result<(), ApiError> {
    let characters = password.chars().count();
    if characters < MIN_PASSWORD_CHARACTERS {
        return Err(ApiError::Invalid(format!(
            "the dashboard password must have at least {MIN_PASSWORD_CHARACTERS} characters, not {characters}"
        )));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(ApiError::Invalid(format!(
            "the dashboard password must be at most {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    Ok(())
}

/// The current record and its catalog version, from this node's replica.
pub async fn current(meta: &Meta) -> Result<Option<(PasswordRecord, u64)>, ApiError> {
    let Some(stored) = meta
        .read(PASSWORD_KEY, Consistency::Stale, false)
        .await
        .map_err(|error| {
            ApiError::Unavailable(format!("reading the dashboard password: {error}"))
        })?
    else {
        return Ok(None);
    };
    let record: PasswordRecord = serde_json::from_slice(&stored.value).map_err(|error| {
        ApiError::Internal(format!("the dashboard password record is corrupt: {error}"))
    })?;
    Ok(Some((record, stored.version)))
}

/// Generates a password for `bramble up`: 24 characters from an alphabet without
/// look-alikes (about 138 bits).
pub fn generate() -> Result<String, ApiError> {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut random = [0u8; 24];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random)
        .map_err(|_| ApiError::Internal("the system's random source failed".into()))?;
    // 256 is not a multiple of the alphabet's length; the bias (under 0.4 % per
    // character) costs a fraction of a bit of the 138.
    Ok(random
        .iter()
        .map(|byte| ALPHABET[usize::from(*byte) % ALPHABET.len()] as char)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_passwords_are_long_distinct_and_valid() {
        let first = generate().expect("generate");
        let second = generate().expect("generate");
        assert_eq!(first.len(), 24);
        assert_ne!(first, second);
        validate_new_password(&first).expect("valid");
        assert!(!first.contains(['0', 'O', 'l', '1', 'I']));
    }

    #[test]
    fn short_and_huge_passwords_are_refused() {
        assert!(validate_new_password("short").is_err());
        assert!(validate_new_password(&"x".repeat(MAX_PASSWORD_BYTES + 1)).is_err());
        validate_new_password("twelve chars").expect("twelve is enough");
    }
}
