//! Passwords people type (the stats page's, the dashboard's), stored as argon2id hashes in
//! the PHC string format with a random salt, and checked against them.
//!
//! Argon2 is slow on purpose (tens of milliseconds here, several hundred on a Pi Zero):
//! - the cost is the smallest OWASP recommends: 19 MiB, 2 passes, 1 lane; stored hashes
//!   costing more than [`MAX_MEMORY_KIB`] or [`MAX_PASSES`] are refused, so a mistyped
//!   setting cannot make every login take seconds;
//! - callers verify on a blocking thread, one at a time, so a flood of guesses costs at
//!   most one core and one hash's memory and never stalls an async runtime.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// Argon2id memory cost of new hashes, in KiB (OWASP's 19 MiB).
pub const ARGON2_MEMORY_KIB: u32 = 19 * 1024;
/// Argon2id passes over that memory.
pub const ARGON2_PASSES: u32 = 2;
/// Argon2id lanes; one, as a Pi Zero has one core.
pub const ARGON2_LANES: u32 = 1;
/// The largest costs accepted in a stored hash.
pub const MAX_MEMORY_KIB: u32 = 256 * 1024;
pub const MAX_PASSES: u32 = 16;
pub const MAX_LANES: u32 = 8;
/// The longest PHC string accepted.
pub const MAX_PHC_BYTES: usize = 512;
/// Random salt bytes of a new hash.
const SALT_BYTES: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("not an argon2id PHC string ($argon2id$v=19$m=..,t=..,p=..$salt$hash): {detail}")]
    NotArgon2id { detail: String },
    #[error(
        "the hash costs too much to verify (m={memory_kib} KiB, t={passes}, p={lanes}; at most m={MAX_MEMORY_KIB}, t={MAX_PASSES}, p={MAX_LANES})"
    )]
    TooCostly {
        memory_kib: u32,
        passes: u32,
        lanes: u32,
    },
    #[error("hashing the password failed: {detail}")]
    Hashing { detail: String },
}

/// Hashes a new password with argon2id, a fresh random salt and this module's costs; the
/// PHC string.
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    let hashing = |detail: String| PasswordError::Hashing { detail };
    let mut salt = [0u8; SALT_BYTES];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
        .map_err(|_| hashing("no system randomness for the salt".into()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|error| hashing(error.to_string()))?;
    let params = Params::new(ARGON2_MEMORY_KIB, ARGON2_PASSES, ARGON2_LANES, None)
        .map_err(|error| hashing(error.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .map_err(|error| hashing(error.to_string()))?
        .to_string())
}

/// Checks a stored PHC string: argon2id, with a salt and a hash, within the cost bounds.
/// Returns it trimmed.
pub fn check_phc(phc: &str) -> Result<String, PasswordError> {
    let phc = phc.trim();
    let not_argon2id = |detail: String| PasswordError::NotArgon2id { detail };
    if phc.len() > MAX_PHC_BYTES {
        return Err(not_argon2id(format!("longer than {MAX_PHC_BYTES} bytes")));
    }
    let parsed = PasswordHash::new(phc).map_err(|error| not_argon2id(error.to_string()))?;
    if parsed.algorithm != argon2::ARGON2ID_IDENT {
        return Err(not_argon2id(format!("algorithm {}", parsed.algorithm)));
    }
    if parsed.hash.is_none() || parsed.salt.is_none() {
        return Err(not_argon2id("no salt or no hash".into()));
    }
    let params = Params::try_from(&parsed).map_err(|error| not_argon2id(error.to_string()))?;
    if params.m_cost() > MAX_MEMORY_KIB
        || params.t_cost() > MAX_PASSES
        || params.p_cost() > MAX_LANES
    {
        return Err(PasswordError::TooCostly {
            memory_kib: params.m_cost(),
            passes: params.t_cost(),
            lanes: params.p_cost(),
        });
    }
    Ok(phc.to_string())
}

/// Whether `password` matches the PHC string `phc` (checked with [`check_phc`] first).
/// Slow: call it off the async runtime.
pub fn verify_password(phc: &str, password: &[u8]) -> bool {
    PasswordHash::new(phc)
        .is_ok_and(|parsed| Argon2::default().verify_password(password, &parsed).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_their_password_only() {
        let phc = hash_password("correct horse").expect("hash");
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert_eq!(check_phc(&phc).expect("valid"), phc);
        assert!(verify_password(&phc, b"correct horse"));
        assert!(!verify_password(&phc, b"correct horsE"));
        assert_ne!(hash_password("correct horse").expect("hash"), phc, "salted");
    }

    #[test]
    fn stored_hashes_are_validated_and_bounded() {
        for bad in [
            "",
            "plain-password",
            "$argon2i$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g",
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0",
        ] {
            assert!(
                matches!(check_phc(bad), Err(PasswordError::NotArgon2id { .. })),
                "{bad}"
            );
        }
        let costly = "$argon2id$v=19$m=4194304,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g";
        assert!(matches!(
            check_phc(costly),
            Err(PasswordError::TooCostly { .. })
        ));
        let long = format!("$argon2id${}", "a".repeat(MAX_PHC_BYTES));
        assert!(check_phc(&long).is_err());
    }
}
