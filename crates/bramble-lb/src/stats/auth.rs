//! Who may see the stats page: HTTP Basic authentication, like the recipe's `stats auth`,
//! against a password stored as an argon2id hash (PHC string format, random salt).
//!
//! Hashing and its cost bounds are `bramble_util::password`'s (the dashboard's password
//! uses the same); argon2 is slow on purpose, so:
//! - one verification runs at a time, on a blocking thread, so a flood of guesses costs
//!   at most one core and one hash's memory, and never stalls the agent's runtime;
//! - a credential that verified is remembered (as a SHA-256 of the header, never the
//!   password) for [`VERIFIED_FOR`], so a browser reloading the page every 2 s costs one
//!   argon2 run a minute, not one per request.
//!
//! Earlier versions stored an unsalted SHA-256 (`stats_password_sha256`); it still works,
//! with a warning to re-hash. Every comparison of secrets is constant-time
//! ([`bramble_util::secrets::constant_time_eq`]).

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::{GeneralPurpose, PAD_INDIFFERENT};
use bramble_util::password::{self, PasswordError};
use bramble_util::secrets::constant_time_eq;
use hyper::header::HeaderValue;
use tokio::sync::Semaphore;
use tracing::warn;

/// A verified credential is trusted without argon2 for this long.
pub const VERIFIED_FOR: Duration = Duration::from_secs(60);
/// Verified credentials remembered at once (a few browsers and a scraper).
const MAX_VERIFIED: usize = 16;
/// The longest `Authorization` header considered; anything longer is refused unread.
const MAX_AUTHORIZATION_BYTES: usize = 1024;

/// Standard base64 with or without padding, as browsers and curl send it.
const BASIC_BASE64: GeneralPurpose =
    GeneralPurpose::new(&base64::alphabet::STANDARD, PAD_INDIFFERENT);

#[derive(Debug, thiserror::Error)]
pub enum StatsPasswordError {
    #[error("the stats password hash: {0}")]
    Hash(#[from] PasswordError),
    #[error("stats_password_sha256 must be 64 hexadecimal digits")]
    BadLegacyDigest,
}

/// The stats password as stored in a node's settings.
#[derive(Clone)]
pub enum StoredPassword {
    /// An argon2id hash in the PHC string format, checked against the cost bounds.
    Argon2id(String),
    /// The unsalted SHA-256 digest earlier versions stored; accepted, with a warning.
    LegacySha256([u8; 32]),
}

impl StoredPassword {
    /// Hashes a new password with argon2id, a fresh random salt and the shared costs.
    pub fn hash(password: &str) -> Result<StoredPassword, StatsPasswordError> {
        Ok(StoredPassword::Argon2id(password::hash_password(password)?))
    }

    /// An argon2id PHC string from a settings file, validated and bounded in cost.
    pub fn from_phc(phc: &str) -> Result<StoredPassword, StatsPasswordError> {
        Ok(StoredPassword::Argon2id(password::check_phc(phc)?))
    }

    /// The digest of earlier versions' `stats_password_sha256`, as 64 hex digits.
    pub fn from_legacy_sha256_hex(digest: &str) -> Result<StoredPassword, StatsPasswordError> {
        let bytes = hex::decode(digest.trim()).map_err(|_| StatsPasswordError::BadLegacyDigest)?;
        let digest: [u8; 32] = bytes
            .try_into()
            .map_err(|_| StatsPasswordError::BadLegacyDigest)?;
        Ok(StoredPassword::LegacySha256(digest))
    }

    /// The PHC string to store in a settings file (None for a legacy digest).
    pub fn phc(&self) -> Option<&str> {
        match self {
            StoredPassword::Argon2id(phc) => Some(phc),
            StoredPassword::LegacySha256(_) => None,
        }
    }

    /// Whether `password` is this one. Slow for argon2id: call off the async runtime.
    fn verify(&self, password: &[u8]) -> bool {
        match self {
            StoredPassword::Argon2id(phc) => password::verify_password(phc, password),
            StoredPassword::LegacySha256(digest) => constant_time_eq(&sha256(password), digest),
        }
    }
}

impl fmt::Debug for StoredPassword {
    /// Leaves the hash out: it lets anyone who has it try guesses offline.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoredPassword::Argon2id(_) => formatter.write_str("Argon2id(<redacted>)"),
            StoredPassword::LegacySha256(_) => formatter.write_str("LegacySha256(<redacted>)"),
        }
    }
}

/// Earlier versions' credentials: a user and the unsalted SHA-256 of the password, as
/// `stats_password_sha256` in `lb.toml` still gives them. Serving the page with these
/// logs a warning to re-hash with argon2id.
#[derive(Clone)]
pub struct StatsCredentials {
    pub user: String,
    pub password_sha256: [u8; 32],
}

impl StatsCredentials {
    /// Credentials from a plain password, which is hashed at once and not kept.
    pub fn from_password(user: impl Into<String>, password: &str) -> StatsCredentials {
        StatsCredentials {
            user: user.into(),
            password_sha256: sha256(password.as_bytes()),
        }
    }
}

impl fmt::Debug for StatsCredentials {
    /// Leaves the digest out: it is password-equivalent for anyone who can guess.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("StatsCredentials")
            .field("user", &self.user)
            .field("password_sha256", &"<redacted>")
            .finish()
    }
}

impl From<StatsCredentials> for StatsLogin {
    fn from(credentials: StatsCredentials) -> StatsLogin {
        warn!(
            user = %credentials.user,
            "the stats password is stored as an unsalted SHA-256 (stats_password_sha256); \
             re-hash it with argon2id (stats_password_argon2id) so a leaked lb.toml does not \
             give it away to a dictionary attack"
        );
        StatsLogin::new(
            &credentials.user,
            StoredPassword::LegacySha256(credentials.password_sha256),
        )
    }
}

/// The stats page's login check, with its cache of recently verified credentials.
pub struct StatsLogin {
    user_sha256: [u8; 32],
    password: Arc<StoredPassword>,
    verified: Mutex<Vec<([u8; 32], Instant)>>,
    verifying: Semaphore,
}

impl StatsLogin {
    pub fn new(user: &str, password: StoredPassword) -> StatsLogin {
        StatsLogin {
            user_sha256: sha256(user.as_bytes()),
            password: Arc::new(password),
            verified: Mutex::new(Vec::new()),
            verifying: Semaphore::new(1),
        }
    }

    /// The login a node's settings describe: a user and an argon2id hash, or (from older
    /// settings) a SHA-256 digest, which is accepted with a warning. None without a user
    /// or any password: the page then stays off.
    pub fn from_settings(
        user: Option<&str>,
        argon2id_phc: Option<&str>,
        legacy_sha256_hex: Option<&str>,
    ) -> Result<Option<StatsLogin>, StatsPasswordError> {
        let Some(user) = user else {
            return Ok(None);
        };
        if let Some(phc) = argon2id_phc {
            return Ok(Some(StatsLogin::new(user, StoredPassword::from_phc(phc)?)));
        }
        let Some(digest) = legacy_sha256_hex else {
            return Ok(None);
        };
        let StoredPassword::LegacySha256(password_sha256) =
            StoredPassword::from_legacy_sha256_hex(digest)?
        else {
            return Err(StatsPasswordError::BadLegacyDigest);
        };
        Ok(Some(StatsLogin::from(StatsCredentials {
            user: user.to_string(),
            password_sha256,
        })))
    }

    /// Whether an `Authorization` header carries these credentials. The user and the
    /// password are both always checked (no early return on a wrong user), so timing tells
    /// an attacker nothing about either.
    pub async fn accepts(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some(header) = authorization else {
            return false;
        };
        let Some((user, password)) = parse_basic_authorization(header) else {
            return false;
        };
        let header_sha256 = sha256(header.as_bytes());
        if self.recently_verified(&header_sha256) {
            return true;
        }
        let user_matches = constant_time_eq(&sha256(&user), &self.user_sha256);
        let Ok(_turn) = self.verifying.acquire().await else {
            return false;
        };
        let stored = self.password.clone();
        let password_matches = tokio::task::spawn_blocking(move || stored.verify(&password))
            .await
            .unwrap_or(false);
        let accepted = user_matches & password_matches;
        if accepted {
            self.remember(header_sha256);
        }
        accepted
    }

    fn recently_verified(&self, header_sha256: &[u8; 32]) -> bool {
        let now = Instant::now();
        let mut verified = self
            .verified
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        verified.retain(|(_, at)| now.duration_since(*at) < VERIFIED_FOR);
        // Every entry is compared, so the time taken does not say which one matched.
        verified.iter().fold(false, |found, (digest, _)| {
            found | constant_time_eq(digest, header_sha256)
        })
    }

    fn remember(&self, header_sha256: [u8; 32]) {
        let mut verified = self
            .verified
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if verified.len() >= MAX_VERIFIED {
            verified.remove(0);
        }
        verified.push((header_sha256, Instant::now()));
    }
}

impl fmt::Debug for StatsLogin {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("StatsLogin")
            .field("password", &self.password)
            .finish_non_exhaustive()
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut bytes = [0u8; 32];
    bytes.copy_from_slice(digest.as_ref());
    bytes
}

/// `Basic <base64(user:password)>` → (user, password) as raw bytes.
fn parse_basic_authorization(value: &HeaderValue) -> Option<(Vec<u8>, Vec<u8>)> {
    let bytes = value.as_bytes();
    if bytes.len() > MAX_AUTHORIZATION_BYTES {
        return None;
    }
    let text = std::str::from_utf8(bytes).ok()?.trim();
    let (scheme, encoded) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = BASIC_BASE64.decode(encoded.trim()).ok()?;
    let colon = decoded.iter().position(|&byte| byte == b':')?;
    Some((decoded[..colon].to_vec(), decoded[colon + 1..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_client::basic;

    fn header(text: &str) -> HeaderValue {
        HeaderValue::from_str(text).expect("a valid header value")
    }

    #[tokio::test]
    async fn argon2id_hashes_verify_and_are_salted() {
        let first = StoredPassword::hash("rasp:berry").expect("hash");
        let second = StoredPassword::hash("rasp:berry").expect("hash");
        let phc = first.phc().expect("a PHC string").to_string();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert_ne!(
            Some(phc.as_str()),
            second.phc(),
            "each hash has its own salt"
        );
        assert!(!format!("{first:?}").contains(&phc));

        let login = StatsLogin::new("pi", StoredPassword::from_phc(&phc).expect("parses"));
        let started = Instant::now();
        assert!(
            login
                .accepts(Some(&header(&basic("pi", "rasp:berry"))))
                .await
        );
        let verify_cost = started.elapsed();
        eprintln!("argon2id verification (m=19 MiB, t=2, p=1): {verify_cost:?}");
        // Verified once, the same credential is then answered from the cache.
        let started = Instant::now();
        assert!(
            login
                .accepts(Some(&header(&basic("pi", "rasp:berry"))))
                .await
        );
        assert!(
            started.elapsed() < verify_cost / 2,
            "{:?}",
            started.elapsed()
        );

        assert!(!login.accepts(Some(&header(&basic("pi", "rasp")))).await);
        assert!(
            !login
                .accepts(Some(&header(&basic("pj", "rasp:berry"))))
                .await
        );
        assert!(!login.accepts(None).await);
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
                matches!(
                    StoredPassword::from_phc(bad),
                    Err(StatsPasswordError::Hash(PasswordError::NotArgon2id { .. }))
                ),
                "{bad}"
            );
        }
        let costly = "$argon2id$v=19$m=4194304,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g";
        assert!(matches!(
            StoredPassword::from_phc(costly),
            Err(StatsPasswordError::Hash(PasswordError::TooCostly { .. }))
        ));
        let long = format!("$argon2id${}", "a".repeat(password::MAX_PHC_BYTES));
        assert!(StoredPassword::from_phc(&long).is_err());
        for bad in ["abc", &"zz".repeat(32), &"ab".repeat(31)] {
            assert!(
                StoredPassword::from_legacy_sha256_hex(bad).is_err(),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn settings_choose_argon2id_and_still_accept_a_legacy_digest() {
        assert!(
            StatsLogin::from_settings(None, None, Some(&"00".repeat(32)))
                .expect("valid")
                .is_none()
        );
        assert!(
            StatsLogin::from_settings(Some("pi"), None, None)
                .expect("valid")
                .is_none()
        );
        let legacy_hex = hex::encode(sha256(b"raspberry"));
        let legacy = StatsLogin::from_settings(Some("pi"), None, Some(&legacy_hex))
            .expect("valid")
            .expect("a login");
        assert!(
            legacy
                .accepts(Some(&header(&basic("pi", "raspberry"))))
                .await
        );
        assert!(
            !legacy
                .accepts(Some(&header(&basic("pi", "raspberr"))))
                .await
        );

        let phc = StoredPassword::hash("new").expect("hash");
        let login = StatsLogin::from_settings(Some("pi"), phc.phc(), Some(&legacy_hex))
            .expect("valid")
            .expect("a login");
        assert!(login.accepts(Some(&header(&basic("pi", "new")))).await);
        assert!(
            !login
                .accepts(Some(&header(&basic("pi", "raspberry"))))
                .await,
            "the argon2id hash wins over the old digest"
        );
    }

    #[tokio::test]
    async fn basic_authorization_is_decoded_strictly() {
        let login = StatsLogin::from(StatsCredentials::from_password("pi", "rasp:berry"));
        assert!(
            login
                .accepts(Some(&header(&basic("pi", "rasp:berry"))))
                .await
        );
        let unpadded = format!(
            "basic  {}",
            BASIC_BASE64.encode(b"pi:rasp:berry").trim_end_matches('=')
        );
        assert!(login.accepts(Some(&header(&unpadded))).await);
        for bad in [
            "Basic !!!notbase64",
            "Bearer cGk6cmFzcDpiZXJyeQ==",
            "Basic cGlyYXNwYmVycnk=", // no colon
            "Basic",
        ] {
            assert!(!login.accepts(Some(&header(bad))).await, "{bad}");
        }
        let long = format!("Basic {}", "A".repeat(MAX_AUTHORIZATION_BYTES));
        assert!(!login.accepts(Some(&header(&long))).await);
        assert!(
            !format!("{:?}", StatsCredentials::from_password("pi", "rasp:berry")).contains("berry")
        );
    }
}
