//! Join tokens: `bramble1-<CA fingerprint, 64 hex>-<join secret, 64 hex>`.
//!
//! The fingerprint lets the joining node authenticate the member it contacts before it
//! sends anything secret (like `kubeadm join --discovery-token-ca-cert-hash`); the secret
//! lets the member authenticate the joining node.

use std::fmt;
use std::str::FromStr;

use bramble_net::Fingerprint;

use crate::ClusterError;

const PREFIX: &str = "bramble1";

/// A 32-byte secret compared in constant time. Its Debug output is redacted.
#[derive(Clone)]
pub struct Secret(pub [u8; 32]);

impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        self.matches(&other.0)
    }
}

impl Eq for Secret {}

impl Secret {
    pub fn random() -> Secret {
        use ring::rand::SecureRandom;
        let mut bytes = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut bytes)
            .expect("the operating system's random number generator failed");
        Secret(bytes)
    }

    /// Compares without leaking, through timing, how many leading bytes matched.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        bramble_util::secrets::constant_time_eq(&self.0, candidate)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(text: &str) -> Option<Secret> {
        Some(Secret(hex::decode(text).ok()?.try_into().ok()?))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Secret(<redacted>)")
    }
}

/// A parsed join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_fingerprint: Fingerprint,
    pub secret: Secret,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("JoinToken")
            .field("ca_fingerprint", &self.ca_fingerprint)
            .field("secret", &self.secret)
            .finish()
    }
}

impl JoinToken {
    /// The token as users copy it. This is the only place the secret is printed.
    pub fn reveal(&self) -> String {
        format!(
            "{PREFIX}-{}-{}",
            self.ca_fingerprint.to_hex(),
            self.secret.to_hex()
        )
    }
}

impl FromStr for JoinToken {
    type Err = ClusterError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let malformed = |why: &str| {
            ClusterError::Invalid(format!(
                "the join token is malformed ({why}); expected {PREFIX}-<64 hex>-<64 hex> as printed by `bramble init`"
            ))
        };
        let text = text.trim();
        if text.len() > 200 {
            return Err(malformed("too long"));
        }
        let mut parts = text.split('-');
        if parts.next() != Some(PREFIX) {
            return Err(malformed(&format!("it does not start with {PREFIX}-")));
        }
        let ca_fingerprint = parts
            .next()
            .and_then(Fingerprint::from_hex)
            .ok_or_else(|| malformed("the CA fingerprint is not 64 hex digits"))?;
        let secret = parts
            .next()
            .and_then(Secret::from_hex)
            .ok_or_else(|| malformed("the secret is not 64 hex digits"))?;
        if parts.next().is_some() {
            return Err(malformed("it has extra parts"));
        }
        Ok(JoinToken {
            ca_fingerprint,
            secret,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_never_show_the_secret_in_debug() {
        let token = JoinToken {
            ca_fingerprint: Fingerprint([7; 32]),
            secret: Secret::random(),
        };
        let parsed: JoinToken = token.reveal().parse().unwrap();
        assert_eq!(parsed, token);
        assert!(!format!("{token:?}").contains(&token.secret.to_hex()));
    }

    #[test]
    fn malformed_tokens_say_what_is_wrong() {
        for bad in [
            "",
            "bramble1",
            "bramble2-aa-bb",
            "bramble1-zz-00",
            &"x".repeat(500),
        ] {
            let error = bad.parse::<JoinToken>().unwrap_err().to_string();
            assert!(error.contains("join token is malformed"), "{error}");
        }
    }

    #[test]
    fn secrets_compare_exactly() {
        let secret = Secret([1; 32]);
        assert!(secret.matches(&[1; 32]));
        assert!(!secret.matches(&[1; 31]));
        assert!(!secret.matches(&[2; 32]));
    }
}
