//! How CLI commands reach a cluster once they know which one (`crate::target` decides):
//! the credential to present, the agents to try in order, and calls to any, one or every
//! agent.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use bramble_cluster::node_dir::Layout;
use bramble_cluster::{AdminCredential, NodeDir, NodeView};
use bramble_net::{CallError, RpcClient};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cli::GlobalOptions;

/// The default data directory of a real node.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/bramble";

/// The data directory commands like `init`, `join` and `agent` work on.
pub fn data_dir(global: &GlobalOptions) -> PathBuf {
    global
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
}

/// A way to talk to one cluster.
pub struct ClusterClient {
    rpc: RpcClient,
    /// The credential's TLS configuration, for mux clients.
    tls: std::sync::Arc<rustls::ClientConfig>,
    /// Agents to try, in order.
    agents: Vec<SocketAddr>,
    /// Node names we know the address of without asking (the emulator's nodes).
    known_names: BTreeMap<String, SocketAddr>,
    /// Where the credential came from, for error messages.
    pub source: String,
    /// The cluster CA's certificate (PEM), for clients of the HTTP API.
    ca_pem: String,
}

impl ClusterClient {
    /// A client presenting an admin credential; `known_names` are node addresses known
    /// without asking (the emulator's nodes), tried before the credential's agents.
    pub fn from_admin(
        global: &GlobalOptions,
        admin: AdminCredential,
        source: &str,
        known_names: BTreeMap<String, SocketAddr>,
    ) -> Result<ClusterClient> {
        let tls = admin
            .tls()
            .with_context(|| format!("loading the {source}"))?;
        let ca_pem = admin.ca_pem.clone();
        let mut agents: Vec<SocketAddr> = global.addr.into_iter().collect();
        agents.extend(known_names.values().copied());
        agents.extend(admin.agents.iter().copied());
        dedup_keep_order(&mut agents);
        let tls = tls.client_config()?;
        Ok(ClusterClient {
            rpc: client_with_cli_timeouts(tls.clone()),
            tls,
            agents,
            known_names,
            source: source.to_string(),
            ca_pem,
        })
    }

    /// A client for the node whose data directory is `path`: its admin credential if it
    /// has one, else the node's own certificate.
    pub fn from_data_dir(global: &GlobalOptions, path: &Path) -> Result<ClusterClient> {
        let layout = Layout::new(path);
        if layout.admin_credential().exists() {
            let admin = AdminCredential::load(&layout.admin_credential())?;
            let mut client = Self::from_admin(
                global,
                admin,
                &format!("data directory {}", path.display()),
                BTreeMap::new(),
            )?;
            let node = NodeDir::open(path)?;
            client.agents.insert(0, node.config.advertise);
            client.agents.extend(node.known_peers().peers);
            dedup_keep_order(&mut client.agents);
            return Ok(client);
        }
        // A joined node has no admin credential; its own certificate is a cluster
        // credential too (root on this board can read its key anyway).
        let node = NodeDir::open(path)?;
        let mut agents: Vec<SocketAddr> = global.addr.into_iter().collect();
        agents.push(node.config.advertise);
        agents.extend(node.known_peers().peers);
        dedup_keep_order(&mut agents);
        let tls = node.credential.client_config()?;
        Ok(ClusterClient {
            rpc: client_with_cli_timeouts(tls.clone()),
            tls,
            agents,
            known_names: BTreeMap::new(),
            source: format!("data directory {}", path.display()),
            ca_pem: node.ca.certificate_pem.clone(),
        })
    }

    /// Tries `first` (the agents known to answer) before the others, after an address
    /// given explicitly with `--addr`.
    pub fn prefer(&mut self, first: &[SocketAddr], explicit: Option<SocketAddr>) {
        self.agents
            .sort_by_key(|address| (Some(*address) != explicit, !first.contains(address)));
    }

    /// The agents this client tries, in order.
    /// The cluster CA's certificate in PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn agents(&self) -> &[SocketAddr] {
        &self.agents
    }

    pub fn rpc(&self) -> &RpcClient {
        &self.rpc
    }

    /// A mux client with the same credential, for streams (its connections end with
    /// `shutdown`).
    pub fn mux(&self, shutdown: bramble_util::Shutdown) -> bramble_net::MuxClient {
        bramble_net::MuxClient::new(self.tls.clone(), shutdown)
    }

    /// Calls `method` on the first agent that answers. Agents that cannot be reached are
    /// skipped; an agent that answers with an error ends the search with that error.
    pub async fn call_any<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        method: &str,
        request: &Req,
    ) -> Result<(SocketAddr, Resp)> {
        let mut failures = Vec::new();
        for agent in &self.agents {
            match self.rpc.call(*agent, method, request).await {
                Ok(response) => return Ok((*agent, response)),
                Err(error) if error.is_unreachable() => failures.push(error.to_string()),
                Err(error) => return Err(explain(error)),
            }
        }
        Err(anyhow!(
            "no agent of the {} answered:\n  {}",
            self.source,
            failures.join("\n  ")
        ))
    }

    /// The address of a node by name: known directly (emulator) or from any member's table.
    pub async fn address_of(&self, name: &str) -> Result<SocketAddr> {
        if let Some(address) = self.known_names.get(name) {
            return Ok(*address);
        }
        let (_, nodes): (_, Vec<NodeView>) = self.call_any("cluster.nodes", &()).await?;
        nodes
            .iter()
            .find(|node| node.name == name)
            .map(|node| node.addr)
            .ok_or_else(|| anyhow!("no node named {name:?} in the cluster"))
    }

    /// Proposes a catalog command through any member (which forwards it to the leader)
    /// and returns what applying it did, once committed.
    pub async fn catalog_write(
        &self,
        command: bramble_meta::types::Command,
    ) -> Result<bramble_meta::types::CommandResult> {
        let request = bramble_meta::api::WriteRequest {
            command,
            forwarded: false,
        };
        let (_, result) = self
            .call_any(bramble_meta::api::METHOD_WRITE, &request)
            .await?;
        Ok(result)
    }

    /// Calls `method` on one specific agent.
    pub async fn call_at<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        address: SocketAddr,
        method: &str,
        request: &Req,
    ) -> Result<Resp> {
        self.rpc
            .call(address, method, request)
            .await
            .map_err(explain)
    }
}

/// CLI calls fail fast: a stopped agent should not hold a command for long.
fn client_with_cli_timeouts(tls: std::sync::Arc<rustls::ClientConfig>) -> RpcClient {
    RpcClient::new(tls).with_timeouts(Duration::from_secs(1), Duration::from_secs(15))
}

fn dedup_keep_order(addresses: &mut Vec<SocketAddr>) {
    let mut seen = std::collections::HashSet::new();
    addresses.retain(|address| seen.insert(*address));
}

/// Turns a call error into a message for people, with a hint where one helps.
pub fn explain(error: CallError) -> anyhow::Error {
    let text = error.to_string();
    let foreign = [
        "UnknownIssuer",
        "UnknownCA",
        "CertificateRequired",
        "BadCertificate",
    ];
    if foreign.iter().any(|marker| text.contains(marker)) {
        return anyhow!(
            "{text}\n(the credential and the agent belong to different clusters: check --credential, --dir or --data-dir)"
        );
    }
    anyhow!(text)
}
