//! Who is calling. Certificates issued by the cluster CA carry the holder's kind and name in
//! their common name (`node/<name>` or `admin/<name>`); the TLS layer has already verified
//! the chain, so here we only read the subject.

use std::fmt;

use rustls_pki_types::CertificateDer;

/// The authenticated party on the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A cluster member presenting its node certificate.
    Node(String),
    /// An operator presenting an admin credential.
    Admin(String),
    /// A connection without a client certificate (only a joining node has a reason to do
    /// this; it may call nothing but the methods a router marks open).
    Anonymous,
}

impl Caller {
    pub fn is_authenticated(&self) -> bool {
        !matches!(self, Caller::Anonymous)
    }

    /// The common name a certificate for this caller carries.
    pub fn common_name(&self) -> Option<String> {
        match self {
            Caller::Node(name) => Some(format!("node/{name}")),
            Caller::Admin(name) => Some(format!("admin/{name}")),
            Caller::Anonymous => None,
        }
    }

    /// Reads the caller from a certificate the TLS layer has already verified against the
    /// cluster CA. A verified certificate with an unknown subject is still a cluster
    /// credential, so it is treated as a node with that subject as its name.
    pub fn from_verified_certificate(certificate: &CertificateDer<'_>) -> Caller {
        let Ok((_, parsed)) = x509_parser::parse_x509_certificate(certificate.as_ref()) else {
            return Caller::Anonymous;
        };
        let common_name = parsed
            .subject()
            .iter_common_name()
            .next()
            .and_then(|attribute| attribute.as_str().ok())
            .unwrap_or_default()
            .to_string();
        match common_name.split_once('/') {
            Some(("admin", name)) => Caller::Admin(name.to_string()),
            Some(("node", name)) => Caller::Node(name.to_string()),
            _ => Caller::Node(common_name),
        }
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Node(name) => write!(formatter, "node {name}"),
            Caller::Admin(name) => write!(formatter, "admin {name}"),
            Caller::Anonymous => write!(formatter, "an anonymous peer"),
        }
    }
}
