//! The cluster layer: who belongs to the cluster and who is alive.
//!
//! - [`node_dir`]: a node's data directory — its configuration, certificates and secrets —
//!   and how `init` and `join` create one.
//! - [`pki`]: the cluster CA and the certificates it issues to nodes and admins.
//! - [`token`]: join tokens, which carry the join secret and pin the CA fingerprint.
//! - [`join`]: the join exchange, both the joining side and the member side.
//! - [`gossip`]: membership and failure detection with chitchat, over UDP datagrams
//!   sealed with the cluster key.
//! - [`membership`]: the node table everyone can ask for (`bramble nodes`).
//! - [`service`]: the `cluster.*` RPC methods an agent serves.
//! - [`settings`]: the gossip and failure-detection settings.
//! - [`protocol`]: the wire protocol numbers that say which builds can share a cluster.

pub mod gossip;
pub mod join;
pub mod load;
pub mod membership;
pub mod node_dir;
pub mod pki;
pub mod protocol;
pub mod service;
pub mod settings;
pub mod token;

pub use membership::{Membership, NodeState, NodeView};
pub use node_dir::{AdminCredential, NodeConfig, NodeDir};
pub use settings::MembershipSettings;
pub use token::JoinToken;

/// The version every agent announces in gossip.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Errors of the cluster layer.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    File(#[from] bramble_util::files::FileError),
    #[error(transparent)]
    Name(#[from] bramble_util::names::NameError),
    #[error(transparent)]
    Tls(#[from] bramble_net::TlsError),
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Call(#[from] bramble_net::CallError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = ClusterError> = std::result::Result<T, E>;
