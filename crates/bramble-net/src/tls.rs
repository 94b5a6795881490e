//! rustls configurations for the cluster. One crypto provider (ring) and TLS 1.3 only.
//!
//! Members verify each other against the cluster CA in both directions. The server side
//! also accepts connections that present no certificate at all, because a joining node
//! has none yet; such connections are [`crate::Caller::Anonymous`] and the RPC router lets
//! them reach only the join method. A joining node in turn trusts a member only if the
//! member's chain contains a CA whose SHA-256 fingerprint equals the one in its token, so
//! a join cannot be intercepted by a machine that merely answers on the address.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// The DNS name every node certificate carries and every client verifies, so a client can
/// dial any member by address without knowing its node name first.
pub const CLUSTER_SERVER_NAME: &str = "agent.bramble";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} is not valid PEM: {message}")]
    BadPem { what: &'static str, message: String },
    #[error("{what} holds no {expected}")]
    Missing {
        what: &'static str,
        expected: &'static str,
    },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("TLS client verifier: {0}")]
    Verifier(String),
}

/// The SHA-256 of a DER certificate: what a join token pins.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn of(certificate_der: &[u8]) -> Fingerprint {
        let digest = ring::digest::digest(&ring::digest::SHA256, certificate_der);
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(digest.as_ref());
        Fingerprint(bytes)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(text: &str) -> Option<Fingerprint> {
        let bytes = hex::decode(text).ok()?;
        Some(Fingerprint(bytes.try_into().ok()?))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "sha256:{}", self.to_hex())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, formatter)
    }
}

/// A certificate issued by the cluster CA, its private key, and the CA itself.
#[derive(Clone)]
pub struct Credential {
    pub ca: CertificateDer<'static>,
    pub certificate: CertificateDer<'static>,
    key: Arc<PrivateKeyDer<'static>>,
}

impl fmt::Debug for Credential {
    // The private key never reaches a log line.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Credential")
            .field("ca", &Fingerprint::of(&self.ca))
            .field("certificate", &Fingerprint::of(&self.certificate))
            .finish_non_exhaustive()
    }
}

fn first_certificate(what: &'static str, pem: &str) -> Result<CertificateDer<'static>, TlsError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or(TlsError::Missing {
            what,
            expected: "certificate",
        })?
        .map_err(|error| TlsError::BadPem {
            what,
            message: error.to_string(),
        })
}

impl Credential {
    /// Builds a credential from PEM text (the CA certificate, the holder's certificate and
    /// its PKCS#8 private key).
    pub fn from_pem(ca_pem: &str, certificate_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|error| {
            TlsError::BadPem {
                what: "private key",
                message: error.to_string(),
            }
        })?;
        Ok(Credential {
            ca: first_certificate("CA certificate", ca_pem)?,
            certificate: first_certificate("certificate", certificate_pem)?,
            key: Arc::new(key),
        })
    }

    pub fn ca_fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.ca)
    }

    fn roots(&self) -> Result<RootCertStore, TlsError> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone())?;
        Ok(roots)
    }

    /// The chain a member presents: its certificate, then the CA, so that a joining node
    /// can find the CA to compare with its token's fingerprint.
    fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.certificate.clone(), self.ca.clone()]
    }

    /// Server side of an agent's listener: members and admins must present a certificate
    /// from the cluster CA; connections without one are allowed through as anonymous.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let provider = provider();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(self.roots()?), provider.clone())
                .allow_unauthenticated()
                .build()
                .map_err(|error| TlsError::Verifier(error.to_string()))?;
        let config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain(), self.key.clone_key())?;
        Ok(Arc::new(config))
    }

    /// Client side for members and admins: verify the server against the cluster CA and
    /// present our own certificate.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain(), self.key.clone_key())?;
        Ok(Arc::new(config))
    }
}

fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = cipher_suites_fastest_first(cpu_has_aes_instructions());
    Arc::new(provider)
}

/// The TLS 1.3 suites, fastest on this CPU first (a client offers them in this order and
/// the server takes the client's first). Every suite stays on offer, so nodes that order
/// them differently still agree on one. Where the CPU has AES instructions (x86-64
/// AES-NI, the ARMv8 crypto extensions of a Pi 5) AES-128-GCM goes first: the same
/// hardware, fewer rounds than AES-256. Where it has none (a Pi 4's Cortex-A72, 32-bit
/// ARM boards) ChaCha20-Poly1305 goes first: ring's constant-time software AES is several
/// times slower than ChaCha20 on NEON, and every block copy crosses TLS.
fn cipher_suites_fastest_first(aes_instructions: bool) -> Vec<rustls::SupportedCipherSuite> {
    use rustls::crypto::ring::cipher_suite::{
        TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
    };
    if aes_instructions {
        vec![
            TLS13_AES_128_GCM_SHA256,
            TLS13_AES_256_GCM_SHA384,
            TLS13_CHACHA20_POLY1305_SHA256,
        ]
    } else {
        vec![
            TLS13_CHACHA20_POLY1305_SHA256,
            TLS13_AES_128_GCM_SHA256,
            TLS13_AES_256_GCM_SHA384,
        ]
    }
}

fn cpu_has_aes_instructions() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// Client side for a node that is joining: it has no certificate yet and trusts only a
/// server whose chain contains the CA pinned by its join token.
pub fn pinned_ca_client_config(pin: Fingerprint) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let verifier = PinnedCaVerifier {
        pin,
        algorithms: provider.signature_verification_algorithms,
        provider: provider.clone(),
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct PinnedCaVerifier {
    pin: Fingerprint,
    algorithms: WebPkiSupportedAlgorithms,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates
            .iter()
            .find(|candidate| Fingerprint::of(candidate) == self.pin)
        else {
            let presented = intermediates
                .last()
                .map(|ca| Fingerprint::of(ca).to_string())
                .unwrap_or_else(|| "no CA".to_string());
            return Err(rustls::Error::General(format!(
                "the member's cluster CA ({presented}) does not match the CA fingerprint in the join token ({})",
                self.pin
            )));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|error| rustls::Error::General(error.to_string()))?;
        inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, certificate, signature, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, certificate, signature, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_suite_stays_on_offer_whatever_the_order() {
        let names = |aes: bool| -> Vec<String> {
            cipher_suites_fastest_first(aes)
                .iter()
                .map(|suite| format!("{:?}", suite.suite()))
                .collect()
        };
        let with_aes = names(true);
        let without = names(false);
        assert_eq!(with_aes[0], "TLS13_AES_128_GCM_SHA256");
        assert_eq!(without[0], "TLS13_CHACHA20_POLY1305_SHA256");
        let mut sorted_with = with_aes.clone();
        let mut sorted_without = without.clone();
        sorted_with.sort();
        sorted_without.sort();
        assert_eq!(
            sorted_with, sorted_without,
            "both orders offer the same suites"
        );
        let defaults: Vec<String> = rustls::crypto::ring::default_provider()
            .cipher_suites
            .iter()
            .filter(|suite| suite.version() == &rustls::version::TLS13)
            .map(|suite| format!("{:?}", suite.suite()))
            .collect();
        for suite in defaults {
            assert!(sorted_with.contains(&suite), "{suite} was dropped");
        }
    }
}
