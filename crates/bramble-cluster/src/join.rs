//! Joining a cluster.
//!
//! The joining node generates its key pair locally and connects to any member over TLS,
//! trusting it only if the member's chain holds the CA whose fingerprint the token pins;
//! so the join secret is never sent to an impostor. It sends the secret, its chosen name and
//! its public key. The member checks the secret in constant time and that the name is not
//! taken by a live member, then answers with a certificate for that key, the CA (with its
//! key, so every member can admit nodes), the cluster secrets and the addresses of live
//! members to gossip with.

use std::net::SocketAddr;
use std::path::Path;

use bramble_net::rpc::Request;
use bramble_net::tls::pinned_ca_client_config;
use bramble_net::{ErrorKind, RpcClient, RpcError};
use bramble_util::names::validate_name;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::membership::{Membership, NodeState};
use crate::node_dir::{ClusterSecrets, NodeConfig, NodeDir, default_advertise};
use crate::pki::{CertificateAuthority, JoinerPublicKey, PendingKey};
use crate::settings::MembershipSettings;
use crate::token::JoinToken;
use crate::{ClusterError, Result};

pub const METHOD: &str = "cluster.join";

#[derive(Serialize, Deserialize)]
pub struct JoinRequest {
    pub secret: Vec<u8>,
    pub name: String,
    pub public_key: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
pub struct JoinResponse {
    pub cluster_id: String,
    pub ca_certificate_pem: String,
    pub ca_key_pem: String,
    pub node_certificate_pem: String,
    pub gossip_key: String,
    pub join_secret: String,
    pub members: Vec<SocketAddr>,
}

/// Options for `bramble join`.
#[derive(Debug, Clone)]
pub struct JoinOptions {
    pub name: String,
    pub listen: SocketAddr,
    pub advertise: Option<SocketAddr>,
    pub roles: Vec<String>,
    pub membership: MembershipSettings,
}

/// The joining side: obtains a certificate from the member at `member` and writes the data
/// directory at `path`. Nothing is written unless the member admits us.
pub async fn join(
    member: SocketAddr,
    token: &JoinToken,
    path: &Path,
    options: JoinOptions,
) -> Result<NodeDir> {
    validate_name("node name", &options.name)?;
    NodeDir::refuse_if_initialised(path)?;
    let key = PendingKey::generate()?;
    let client = RpcClient::new(pinned_ca_client_config(token.ca_fingerprint)?);
    let request = JoinRequest {
        secret: token.secret.0.to_vec(),
        name: options.name.clone(),
        public_key: key.public_key(),
    };
    let response: JoinResponse = client.call(member, METHOD, &request).await?;
    // The TLS layer already checked the member's CA against the pin; check the CA we are
    // about to store as well, so a member cannot hand us a different one.
    let returned_ca = bramble_net::Credential::from_pem(
        &response.ca_certificate_pem,
        &response.node_certificate_pem,
        &key.private_key_pem(),
    )?;
    if returned_ca.ca_fingerprint() != token.ca_fingerprint {
        return Err(ClusterError::Invalid(format!(
            "the member sent a CA ({}) other than the one the token pins ({})",
            returned_ca.ca_fingerprint(),
            token.ca_fingerprint
        )));
    }
    let config = NodeConfig {
        name: options.name,
        cluster_id: response.cluster_id,
        listen: options.listen,
        advertise: options
            .advertise
            .unwrap_or_else(|| default_advertise(options.listen)),
        roles: options.roles,
        seeds: vec![member],
        membership: options.membership,
    };
    let mut members = response.members;
    members.push(member);
    members.sort();
    members.dedup();
    NodeDir::create_joined(
        path,
        config,
        CertificateAuthority::from_pem(response.ca_certificate_pem, response.ca_key_pem),
        &response.node_certificate_pem,
        &key.private_key_pem(),
        ClusterSecrets {
            gossip_key: response.gossip_key,
            join_secret: response.join_secret,
        },
        &members,
    )
}

/// The member side of a join.
pub async fn admit(
    node: &NodeDir,
    membership: &Membership,
    request: &Request<'_>,
) -> std::result::Result<JoinResponse, RpcError> {
    let join: JoinRequest = request.decode()?;
    let peer = request.peer_address;
    let refuse = |why: String| {
        if bramble_net::rpc::noisy_event_may_log() {
            warn!(%peer, "refused a join: {why}");
        }
        RpcError::new(ErrorKind::Refused, format!("join refused: {why}"))
    };
    let join_secret = node
        .secrets
        .join_secret()
        .map_err(|error| RpcError::internal(error.to_string()))?;
    if !join_secret.matches(&join.secret) {
        return Err(refuse(
            "the token's secret is not this cluster's join secret".to_string(),
        ));
    }
    validate_name("node name", &join.name).map_err(|error| refuse(error.to_string()))?;
    let public_key =
        JoinerPublicKey::parse(&join.public_key).map_err(|error| refuse(error.to_string()))?;
    let nodes = membership.nodes().await;
    if let Some(holder) = nodes.iter().find(|existing| {
        existing.name == join.name
            && matches!(existing.state, NodeState::Alive | NodeState::Suspect)
    }) {
        return Err(refuse(format!(
            "the name {} is taken by a live member at {}; choose another --name",
            join.name, holder.addr
        )));
    }
    let certificate = node
        .ca
        .issue_for_public_key(&join.name, &public_key)
        .map_err(|error| RpcError::internal(format!("could not issue a certificate: {error}")))?;
    info!(%peer, name = %join.name, "admitted a new node");
    Ok(JoinResponse {
        cluster_id: node.config.cluster_id.clone(),
        ca_certificate_pem: node.ca.certificate_pem.clone(),
        ca_key_pem: node.ca.key_pem().to_string(),
        node_certificate_pem: certificate,
        gossip_key: node.secrets.gossip_key.clone(),
        join_secret: node.secrets.join_secret.clone(),
        members: nodes
            .iter()
            .filter(|member| matches!(member.state, NodeState::Alive | NodeState::Suspect))
            .map(|member| member.addr)
            .collect(),
    })
}
