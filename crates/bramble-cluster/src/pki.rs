//! The cluster's certificate authority and the certificates it issues.
//!
//! Every member holds the CA key (it arrives with the join response over the pinned TLS
//! channel), so any member can admit new nodes and the cluster has no single node it
//! depends on to grow. The trade-off is that a compromised member can mint certificates;
//! that is the same trust a Gluster peer or a Consul server has. Certificates use the
//! rcgen default validity (1975-4096) on purpose: Raspberry Pis have no real-time clock
//! and boot with a wrong date until NTP answers, and a "not yet valid" certificate would
//! keep a rebooted board out of its own cluster.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SignatureAlgorithm,
};

use crate::{ClusterError, Result};
use bramble_net::{CLUSTER_SERVER_NAME, Caller};

/// A CA certificate and key in PEM.
pub struct CertificateAuthority {
    pub certificate_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("CertificateAuthority { .. }")
    }
}

/// A freshly issued certificate with the key it certifies, both PEM.
pub struct IssuedCertificate {
    pub certificate_pem: String,
    pub key_pem: String,
}

/// A P-256 public key sent by a joining node (uncompressed SEC1 point). The joining node
/// keeps its private key; only this travels.
pub struct JoinerPublicKey(Vec<u8>);

impl JoinerPublicKey {
    /// Accepts only an uncompressed P-256 point: 65 bytes starting with 0x04.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        if bytes.len() != 65 || bytes[0] != 0x04 {
            return Err(ClusterError::Invalid(format!(
                "the public key must be an uncompressed P-256 point (65 bytes starting with 0x04), got {} bytes",
                bytes.len()
            )));
        }
        Ok(JoinerPublicKey(bytes.to_vec()))
    }
}

impl PublicKeyData for JoinerPublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl CertificateAuthority {
    /// Creates a new CA for the cluster `cluster_id`.
    pub fn create(cluster_id: &str) -> Result<Self> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(
            DnType::CommonName,
            format!("bramble cluster CA {cluster_id}"),
        );
        name.push(DnType::OrganizationName, "bramble");
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let certificate = params.self_signed(&key)?;
        Ok(CertificateAuthority {
            certificate_pem: certificate.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    pub fn from_pem(certificate_pem: String, key_pem: String) -> Self {
        CertificateAuthority {
            certificate_pem,
            key_pem,
        }
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    fn issue(&self, caller: &Caller, public_key: &impl PublicKeyData) -> Result<String> {
        let key = KeyPair::from_pem(&self.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.certificate_pem, key)?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, caller.common_name().unwrap_or_default());
        params.distinguished_name = name;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        match caller {
            Caller::Node(node_name) => {
                params.subject_alt_names = vec![
                    rcgen::SanType::DnsName(CLUSTER_SERVER_NAME.try_into()?),
                    rcgen::SanType::DnsName(format!("{node_name}.node.bramble").try_into()?),
                ];
                params.extended_key_usages = vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ];
            }
            Caller::Admin(_) | Caller::Anonymous => {
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            }
        }
        Ok(params.signed_by(public_key, &issuer)?.pem())
    }

    /// Issues a certificate and a new key for `caller` (used for this node at `init` and
    /// for admin credentials).
    pub fn issue_with_new_key(&self, caller: &Caller) -> Result<IssuedCertificate> {
        let key = KeyPair::generate()?;
        Ok(IssuedCertificate {
            certificate_pem: self.issue(caller, &key)?,
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues a certificate and a new key for a node's HTTPS server (the API and the
    /// dashboard), valid for the addresses browsers and `curl` will dial, so that a client
    /// holding the cluster CA verifies it without `--insecure`. Server use only: it
    /// cannot pass for a node or an admin as a client.
    pub fn issue_web_server(
        &self,
        node_name: &str,
        addresses: &[std::net::IpAddr],
    ) -> Result<IssuedCertificate> {
        let key = KeyPair::generate()?;
        let ca_key = KeyPair::from_pem(&self.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.certificate_pem, ca_key)?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, format!("web/{node_name}"));
        params.distinguished_name = name;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let mut names = vec![
            rcgen::SanType::DnsName(format!("{node_name}.node.bramble").try_into()?),
            rcgen::SanType::DnsName("localhost".try_into()?),
        ];
        let mut seen = Vec::new();
        for address in addresses {
            if !address.is_unspecified() && !seen.contains(address) {
                seen.push(*address);
                names.push(rcgen::SanType::IpAddress(*address));
            }
        }
        params.subject_alt_names = names;
        Ok(IssuedCertificate {
            certificate_pem: params.signed_by(&key, &issuer)?.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues a node certificate for a key the joining node generated itself.
    pub fn issue_for_public_key(
        &self,
        node_name: &str,
        public_key: &JoinerPublicKey,
    ) -> Result<String> {
        self.issue(&Caller::Node(node_name.to_string()), public_key)
    }
}

/// A key pair for a joining node, generated before it contacts the cluster.
pub struct PendingKey {
    key: KeyPair,
}

impl PendingKey {
    pub fn generate() -> Result<Self> {
        Ok(PendingKey {
            key: KeyPair::generate()?,
        })
    }

    pub fn public_key(&self) -> Vec<u8> {
        self.key.public_key_raw().to_vec()
    }

    pub fn private_key_pem(&self) -> String {
        self.key.serialize_pem()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bramble_net::Credential;

    #[test]
    fn issued_certificates_form_working_tls_credentials() {
        let ca = CertificateAuthority::create("test").unwrap();
        let node = ca.issue_with_new_key(&Caller::Node("n1".into())).unwrap();
        let credential =
            Credential::from_pem(&ca.certificate_pem, &node.certificate_pem, &node.key_pem)
                .unwrap();
        credential.server_config().unwrap();
        credential.client_config().unwrap();
        assert_eq!(
            Caller::from_verified_certificate(&credential.certificate),
            Caller::Node("n1".into())
        );
    }

    #[test]
    fn joiner_keys_are_certified_without_leaving_the_joiner() {
        let ca = CertificateAuthority::create("test").unwrap();
        let pending = PendingKey::generate().unwrap();
        let public_key = JoinerPublicKey::parse(&pending.public_key()).unwrap();
        let certificate = ca.issue_for_public_key("n2", &public_key).unwrap();
        let credential = Credential::from_pem(
            &ca.certificate_pem,
            &certificate,
            &pending.private_key_pem(),
        )
        .unwrap();
        assert_eq!(
            Caller::from_verified_certificate(&credential.certificate),
            Caller::Node("n2".into())
        );
    }

    #[test]
    fn malformed_public_keys_are_refused() {
        assert!(JoinerPublicKey::parse(&[4u8; 10]).is_err());
        assert!(JoinerPublicKey::parse(&[3u8; 65]).is_err());
    }
}
