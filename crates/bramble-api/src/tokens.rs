//! API tokens: what scripts and `curl` present as `Authorization: Bearer <token>`.
//!
//! A token is `brt_<name>_<64 hex digits>`: the name says which record to look up, the
//! 32 random bytes are the secret. The catalog keeps only the secret's SHA-256 under
//! `api/tokens/<name>` (this module owns that prefix), so a copy of the catalog, a
//! snapshot or a node's disk gives no usable token. A plain hash is enough here, unlike
//! for passwords: the secret has 256 bits of entropy, so there is nothing to guess, and
//! a check costs one SHA-256 rather than an argon2 run on a Pi per request (GitHub and
//! Nomad store their tokens the same way). The comparison is constant-time.
//!
//! A token is the cluster administrator's power for as long as it lives: whoever holds
//! it can do through the API what an admin certificate can. Tokens may expire
//! (`--expires`), and `bramble token rm` revokes one at once on every node (each check
//! reads the node's replica of the catalog, which is at most a heartbeat behind).

use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::ApiError;

/// Where the records live in the catalog.
pub const KEY_PREFIX: &str = "api/tokens/";
/// What every token starts with, so a leaked one is recognisable (secret scanners key on
/// such prefixes).
pub const TOKEN_PREFIX: &str = "brt_";
/// Most tokens a cluster holds: each is a record read on every request it authenticates,
/// and a list this long is already more than an operator can review.
pub const MAX_TOKENS: usize = 256;
/// Longest lifetime `--expires` accepts: ten years.
pub const MAX_LIFETIME_SECONDS: u64 = 10 * 365 * 24 * 3600;
const SECRET_BYTES: usize = 32;
/// Longest `Authorization` value looked at: the prefix, a name and the secret.
const MAX_TOKEN_LENGTH: usize =
    TOKEN_PREFIX.len() + bramble_util::names::MAX_NAME_LENGTH + 1 + 2 * SECRET_BYTES;

/// A token as the catalog holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub name: String,
    /// SHA-256 of the secret, hex.
    pub secret_sha256: String,
    pub created_unix_ms: u64,
    /// Who created it (`admin/<name>`, or the token that did).
    pub created_by: String,
    /// When it stops working; None: never.
    pub expires_unix_ms: Option<u64>,
}

/// A token as `bramble token ls` and the API show it: everything but the hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub name: String,
    pub created_unix_ms: u64,
    pub created_by: String,
    pub expires_unix_ms: Option<u64>,
    pub expired: bool,
}

/// `api.token_create`'s request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateToken {
    pub name: String,
    /// Lifetime in seconds; None: the token does not expire.
    pub expires_in_seconds: Option<u64>,
}

/// `api.token_create`'s answer: the token, shown this once and never stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedToken {
    pub token: String,
    pub info: TokenInfo,
}

/// The catalog key of the token `name`.
pub fn token_key(name: &str) -> String {
    format!("{KEY_PREFIX}{name}")
}

/// Checks a token name (the node-name alphabet: it is part of the token and a key).
pub fn validate_token_name(name: &str) -> Result<(), ApiError> {
    bramble_util::names::validate_name("a token name", name)
        .map_err(|error| ApiError::Invalid(error.to_string()))
}

/// A new token for `name` and its record.
pub fn mint(
    name: &str,
    created_by: &str,
    now_unix_ms: u64,
    expires_in_seconds: Option<u64>,
) -> Result<(TokenRecord, String), ApiError> {
    validate_token_name(name)?;
    let expires_unix_ms = match expires_in_seconds {
        None => None,
        Some(0) => {
            return Err(ApiError::Invalid(
                "a token's lifetime must be at least one second".into(),
            ));
        }
        Some(seconds) if seconds > MAX_LIFETIME_SECONDS => {
            return Err(ApiError::Invalid(format!(
                "a token lives at most {MAX_LIFETIME_SECONDS} seconds (ten years), not {seconds}"
            )));
        }
        Some(seconds) => Some(now_unix_ms.saturating_add(seconds.saturating_mul(1000))),
    };
    let mut secret = [0u8; SECRET_BYTES];
    SystemRandom::new()
        .fill(&mut secret)
        .map_err(|_| ApiError::Internal("the system's random source failed".into()))?;
    let secret_hex = hex::encode(secret);
    let record = TokenRecord {
        name: name.to_string(),
        secret_sha256: hash_secret(&secret_hex),
        created_unix_ms: now_unix_ms,
        created_by: created_by.to_string(),
        expires_unix_ms,
    };
    Ok((record, format!("{TOKEN_PREFIX}{name}_{secret_hex}")))
}

fn hash_secret(secret_hex: &str) -> String {
    hex::encode(digest(&SHA256, secret_hex.as_bytes()))
}

/// A token as a client presented it, split but not yet checked.
#[derive(Debug, PartialEq, Eq)]
pub struct PresentedToken {
    pub name: String,
    secret_hex: String,
}

/// Splits a presented token. The errors are what the client is told, so they say what is
/// wrong with its shape and never echo the token.
pub fn parse(presented: &str) -> Result<PresentedToken, ApiError> {
    if presented.len() > MAX_TOKEN_LENGTH {
        return Err(ApiError::Unauthenticated(
            "the bearer token is longer than any Bramble token".into(),
        ));
    }
    let malformed = || {
        ApiError::Unauthenticated(format!(
            "the bearer token is not a Bramble API token ({TOKEN_PREFIX}<name>_<64 hex digits>, from bramble token create)"
        ))
    };
    let rest = presented.strip_prefix(TOKEN_PREFIX).ok_or_else(malformed)?;
    let (name, secret_hex) = rest.rsplit_once('_').ok_or_else(malformed)?;
    if validate_token_name(name).is_err()
        || secret_hex.len() != 2 * SECRET_BYTES
        || !secret_hex
            .bytes()
            .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
    {
        return Err(malformed());
    }
    Ok(PresentedToken {
        name: name.to_string(),
        secret_hex: secret_hex.to_string(),
    })
}

impl TokenRecord {
    /// Whether `presented` is this token and it is still valid at `now_unix_ms`.
    pub fn check(&self, presented: &PresentedToken, now_unix_ms: u64) -> Result<(), ApiError> {
        let offered = hash_secret(&presented.secret_hex);
        let matches = presented.name == self.name
            && bramble_util::secrets::constant_time_eq(
                offered.as_bytes(),
                self.secret_sha256.as_bytes(),
            );
        if !matches {
            // The same answer as for a name that has no token: nothing to probe with.
            return Err(unknown_token());
        }
        if self.is_expired(now_unix_ms) {
            return Err(ApiError::Unauthenticated(format!(
                "the token {} has expired (bramble token create makes a new one)",
                self.name
            )));
        }
        Ok(())
    }

    pub fn is_expired(&self, now_unix_ms: u64) -> bool {
        self.expires_unix_ms
            .is_some_and(|expires| now_unix_ms >= expires)
    }

    pub fn info(&self, now_unix_ms: u64) -> TokenInfo {
        TokenInfo {
            name: self.name.clone(),
            created_unix_ms: self.created_unix_ms,
            created_by: self.created_by.clone(),
            expires_unix_ms: self.expires_unix_ms,
            expired: self.is_expired(now_unix_ms),
        }
    }
}

/// The answer for a token that is not (or no longer) known.
pub fn unknown_token() -> ApiError {
    ApiError::Unauthenticated("the token is not valid (revoked, or never issued)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_token_checks_against_its_record_and_nothing_else() {
        let (record, token) = mint("ci", "admin/alice", 1_000, None).expect("mint");
        assert!(token.starts_with("brt_ci_"));
        assert_eq!(token.len(), "brt_ci_".len() + 64);
        // The record keeps a hash, never the secret.
        assert!(!token.contains(&record.secret_sha256));
        let presented = parse(&token).expect("parse");
        assert_eq!(presented.name, "ci");
        record.check(&presented, 2_000).expect("valid");

        let (other, other_token) = mint("ci", "admin/alice", 1_000, None).expect("mint");
        assert_ne!(token, other_token, "every token has its own secret");
        assert!(other.check(&presented, 2_000).is_err());

        let mut flipped = token.clone();
        let last = flipped.pop().expect("a digit");
        flipped.push(if last == '0' { '1' } else { '0' });
        assert!(
            record
                .check(&parse(&flipped).expect("shape"), 2_000)
                .is_err()
        );
    }

    #[test]
    fn tokens_expire() {
        let (record, token) = mint("short", "admin/a", 10_000, Some(5)).expect("mint");
        assert_eq!(record.expires_unix_ms, Some(15_000));
        let presented = parse(&token).expect("parse");
        record.check(&presented, 14_999).expect("still valid");
        let error = record.check(&presented, 15_000).expect_err("expired");
        assert!(error.to_string().contains("expired"), "{error}");
        assert!(record.info(15_000).expired);
        assert!(mint("x", "a", 0, Some(0)).is_err());
        assert!(mint("x", "a", 0, Some(MAX_LIFETIME_SECONDS + 1)).is_err());
    }

    #[test]
    fn malformed_tokens_and_names_are_refused_without_echoing_them() {
        for bad in [
            "",
            "Bearer",
            "brt_",
            "brt_ci",
            "brt_ci_",
            "brt_CI_0000000000000000000000000000000000000000000000000000000000000000",
            "brt_ci_000000000000000000000000000000000000000000000000000000000000000",
            "brt_ci_000000000000000000000000000000000000000000000000000000000000000g",
            "xyz_ci_0000000000000000000000000000000000000000000000000000000000000000",
        ] {
            let error = parse(bad).expect_err(bad);
            // (Short inputs may coincide with the message's own example.)
            if bad.len() > 8 {
                assert!(!error.to_string().contains(bad), "{error}");
            }
        }
        let long = format!("brt_{}_{}", "a".repeat(500), "0".repeat(64));
        assert!(parse(&long).is_err());
        assert!(mint("../etc", "a", 0, None).is_err());
        assert!(mint("", "a", 0, None).is_err());
        // Names may hold '-' but not '_', so the split is unambiguous.
        let (record, token) = mint("ci-deploy", "a", 0, None).expect("mint");
        record
            .check(&parse(&token).expect("parse"), 1)
            .expect("valid");
    }
}
