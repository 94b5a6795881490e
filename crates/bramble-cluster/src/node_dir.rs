//! A node's data directory: everything a node needs to come back as itself after a
//! restart, with no token and no operator.
//!
//! ```text
//! <data-dir>/node.toml                 name, cluster id, addresses, roles, gossip settings
//! <data-dir>/secrets.toml        0600  gossip key and join secret
//! <data-dir>/tls/ca.crt                cluster CA certificate
//! <data-dir>/tls/ca.key          0600  cluster CA key (any member can admit nodes)
//! <data-dir>/tls/node.crt              this node's certificate (CN node/<name>)
//! <data-dir>/tls/node.key        0600  this node's private key (generated here, never sent)
//! <data-dir>/peers.toml                members last seen alive: seeds for the next start
//! <data-dir>/admin.credential.toml 0600  admin credential (on the node that ran init)
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use bramble_net::{Caller, Credential};
use bramble_util::files::{self, Visibility};
use bramble_util::names::validate_name;
use serde::{Deserialize, Serialize};

use crate::pki::CertificateAuthority;
use crate::settings::MembershipSettings;
use crate::token::{JoinToken, Secret};
use crate::{ClusterError, Result};

/// The default port for both RPC (TCP) and gossip (UDP).
pub const DEFAULT_PORT: u16 = 7946;

/// `node.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub name: String,
    pub cluster_id: String,
    /// Where the agent binds: TCP for RPC and UDP for gossip, same port.
    pub listen: SocketAddr,
    /// Where other members reach this node.
    pub advertise: SocketAddr,
    #[serde(default)]
    pub roles: Vec<String>,
    /// Members to contact at start besides those in `peers.toml`.
    #[serde(default)]
    pub seeds: Vec<SocketAddr>,
    #[serde(default)]
    pub membership: MembershipSettings,
}

impl NodeConfig {
    pub fn validate(&self) -> Result<()> {
        validate_name("node name", &self.name)?;
        for role in &self.roles {
            validate_name("role", role)?;
        }
        if self.roles.len() > 16 {
            return Err(ClusterError::Invalid(format!(
                "a node may have at most 16 roles, not {}",
                self.roles.len()
            )));
        }
        if self.advertise.ip().is_unspecified() {
            return Err(ClusterError::Invalid(format!(
                "the advertised address {} is unspecified; give --advertise with an address other nodes can reach",
                self.advertise
            )));
        }
        self.membership.validate()
    }
}

/// `secrets.toml`: shared by every member.
#[derive(Clone, Serialize, Deserialize)]
pub struct ClusterSecrets {
    /// Seals every gossip datagram (ChaCha20-Poly1305).
    pub gossip_key: String,
    /// The secret half of the join token.
    pub join_secret: String,
}

impl std::fmt::Debug for ClusterSecrets {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("ClusterSecrets { <redacted> }")
    }
}

impl ClusterSecrets {
    pub fn generate() -> Self {
        ClusterSecrets {
            gossip_key: Secret::random().to_hex(),
            join_secret: Secret::random().to_hex(),
        }
    }

    fn parse_secret(what: &str, text: &str) -> Result<Secret> {
        Secret::from_hex(text).ok_or_else(|| {
            ClusterError::Invalid(format!("secrets.toml: {what} is not 64 hex digits"))
        })
    }

    pub fn gossip_key(&self) -> Result<Secret> {
        Self::parse_secret("gossip_key", &self.gossip_key)
    }

    pub fn join_secret(&self) -> Result<Secret> {
        Self::parse_secret("join_secret", &self.join_secret)
    }
}

/// `peers.toml`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KnownPeers {
    pub peers: Vec<SocketAddr>,
}

/// What an operator needs to reach the cluster: the CA to trust, an admin certificate and
/// key, and agent addresses to try. Stored 0600 as TOML.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminCredential {
    pub cluster_id: String,
    pub agents: Vec<SocketAddr>,
    pub ca_pem: String,
    pub certificate_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for AdminCredential {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("AdminCredential")
            .field("cluster_id", &self.cluster_id)
            .field("agents", &self.agents)
            .finish_non_exhaustive()
    }
}

impl AdminCredential {
    pub const FILE_NAME: &'static str = "admin.credential.toml";

    pub fn load(path: &Path) -> Result<Self> {
        Ok(files::read_toml(path)?)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        Ok(files::write_toml(path, self, Visibility::Private)?)
    }

    pub fn tls(&self) -> Result<Credential> {
        Ok(Credential::from_pem(
            &self.ca_pem,
            &self.certificate_pem,
            &self.key_pem,
        )?)
    }
}

/// Options for `bramble init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub name: String,
    pub listen: SocketAddr,
    pub advertise: Option<SocketAddr>,
    pub roles: Vec<String>,
    pub membership: MembershipSettings,
}

/// An opened data directory.
pub struct NodeDir {
    pub path: PathBuf,
    pub config: NodeConfig,
    pub credential: Credential,
    pub secrets: ClusterSecrets,
    pub ca: CertificateAuthority,
}

impl std::fmt::Debug for NodeDir {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("NodeDir")
            .field("path", &self.path)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The paths inside a data directory.
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn new(root: &Path) -> Self {
        Layout {
            root: root.to_path_buf(),
        }
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("node.toml")
    }
    pub fn secrets(&self) -> PathBuf {
        self.root.join("secrets.toml")
    }
    pub fn tls_dir(&self) -> PathBuf {
        self.root.join("tls")
    }
    pub fn ca_certificate(&self) -> PathBuf {
        self.tls_dir().join("ca.crt")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.tls_dir().join("ca.key")
    }
    pub fn node_certificate(&self) -> PathBuf {
        self.tls_dir().join("node.crt")
    }
    pub fn node_key(&self) -> PathBuf {
        self.tls_dir().join("node.key")
    }
    pub fn peers(&self) -> PathBuf {
        self.root.join("peers.toml")
    }
    pub fn admin_credential(&self) -> PathBuf {
        self.root.join(AdminCredential::FILE_NAME)
    }
    pub fn pid_file(&self) -> PathBuf {
        self.root.join("agent.pid")
    }
    pub fn is_initialised(&self) -> bool {
        self.config().exists()
    }
}

fn random_cluster_id() -> String {
    format!("c{}", &Secret::random().to_hex()[..16])
}

/// The first IPv4 address of an up, non-loopback interface: what to advertise when the
/// agent listens on 0.0.0.0 and the operator gave no `--advertise`.
pub fn first_interface_address() -> Option<IpAddr> {
    let mut addresses: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a linked list that we walk read-only and free exactly once.
    unsafe {
        if libc::getifaddrs(&mut addresses) != 0 {
            return None;
        }
        let mut found = None;
        let mut cursor = addresses;
        while !cursor.is_null() {
            let entry = &*cursor;
            let is_up = entry.ifa_flags & (libc::IFF_UP as u32) != 0;
            let is_loopback = entry.ifa_flags & (libc::IFF_LOOPBACK as u32) != 0;
            if is_up
                && !is_loopback
                && !entry.ifa_addr.is_null()
                && (*entry.ifa_addr).sa_family as i32 == libc::AF_INET
            {
                let socket = &*(entry.ifa_addr as *const libc::sockaddr_in);
                found = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    socket.sin_addr.s_addr,
                ))));
                break;
            }
            cursor = entry.ifa_next;
        }
        libc::freeifaddrs(addresses);
        found
    }
}

/// The address to advertise for `listen` when none was given.
pub fn default_advertise(listen: SocketAddr) -> SocketAddr {
    if !listen.ip().is_unspecified() {
        return listen;
    }
    let ip = first_interface_address().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    SocketAddr::new(ip, listen.port())
}

impl NodeDir {
    /// Fails with a message naming the node already in `path`, if there is one.
    pub fn refuse_if_initialised(path: &Path) -> Result<()> {
        let layout = Layout::new(path);
        if layout.is_initialised() {
            let existing: Result<NodeConfig> =
                files::read_toml(&layout.config()).map_err(Into::into);
            let what = existing
                .map(|config| format!("node {} of cluster {}", config.name, config.cluster_id))
                .unwrap_or_else(|_| "a node".to_string());
            return Err(ClusterError::Invalid(format!(
                "{} already holds {what}; start it with `bramble agent --data-dir {}` or remove the directory to start over",
                layout.root.display(),
                layout.root.display()
            )));
        }
        Ok(())
    }

    /// Creates a new cluster in `path`: a CA, this node's certificate, the cluster
    /// secrets, and an admin credential. Returns the join token to print.
    pub fn init(
        path: &Path,
        options: InitOptions,
    ) -> Result<(NodeDir, JoinToken, AdminCredential)> {
        let layout = Layout::new(path);
        Self::refuse_if_initialised(path)?;
        let cluster_id = random_cluster_id();
        let config = NodeConfig {
            name: options.name.clone(),
            cluster_id: cluster_id.clone(),
            listen: options.listen,
            advertise: options
                .advertise
                .unwrap_or_else(|| default_advertise(options.listen)),
            roles: options.roles,
            seeds: Vec::new(),
            membership: options.membership,
        };
        config.validate()?;
        let ca = CertificateAuthority::create(&cluster_id)?;
        let node = ca.issue_with_new_key(&Caller::Node(options.name))?;
        let secrets = ClusterSecrets::generate();
        Self::write(
            &layout,
            &config,
            &ca,
            &node.certificate_pem,
            &node.key_pem,
            &secrets,
        )?;
        let node_dir = Self::open(path)?;
        let admin = node_dir.issue_admin_credential("admin")?;
        admin.save(&layout.admin_credential())?;
        let token = node_dir.join_token()?;
        Ok((node_dir, token, admin))
    }

    /// Writes a data directory for a node that has just been admitted by a member.
    pub fn create_joined(
        path: &Path,
        config: NodeConfig,
        ca: CertificateAuthority,
        certificate_pem: &str,
        key_pem: &str,
        secrets: ClusterSecrets,
        peers: &[SocketAddr],
    ) -> Result<NodeDir> {
        let layout = Layout::new(path);
        Self::refuse_if_initialised(path)?;
        config.validate()?;
        Self::write(&layout, &config, &ca, certificate_pem, key_pem, &secrets)?;
        files::write_toml(
            &layout.peers(),
            &KnownPeers {
                peers: peers.to_vec(),
            },
            Visibility::Public,
        )?;
        Self::open(path)
    }

    fn write(
        layout: &Layout,
        config: &NodeConfig,
        ca: &CertificateAuthority,
        certificate_pem: &str,
        key_pem: &str,
        secrets: &ClusterSecrets,
    ) -> Result<()> {
        files::create_private_dir(&layout.root)?;
        files::create_private_dir(&layout.tls_dir())?;
        files::write_atomic(
            &layout.ca_certificate(),
            ca.certificate_pem.as_bytes(),
            Visibility::Public,
        )?;
        files::write_atomic(
            &layout.ca_key(),
            ca.key_pem().as_bytes(),
            Visibility::Private,
        )?;
        files::write_atomic(
            &layout.node_certificate(),
            certificate_pem.as_bytes(),
            Visibility::Public,
        )?;
        files::write_atomic(&layout.node_key(), key_pem.as_bytes(), Visibility::Private)?;
        files::write_toml(&layout.secrets(), secrets, Visibility::Private)?;
        // node.toml last: its presence marks the directory as complete.
        files::write_toml(&layout.config(), config, Visibility::Public)?;
        Ok(())
    }

    /// Opens an initialised data directory.
    pub fn open(path: &Path) -> Result<NodeDir> {
        let layout = Layout::new(path);
        if !layout.is_initialised() {
            return Err(ClusterError::Invalid(format!(
                "{} is not a Bramble data directory (no node.toml); create one with `bramble init` or `bramble join`",
                path.display()
            )));
        }
        let config: NodeConfig = files::read_toml(&layout.config())?;
        config.validate()?;
        let ca_pem = files::read_small_text(&layout.ca_certificate())?;
        let ca_key_pem = files::read_small_text(&layout.ca_key())?;
        let certificate_pem = files::read_small_text(&layout.node_certificate())?;
        let key_pem = files::read_small_text(&layout.node_key())?;
        let credential = Credential::from_pem(&ca_pem, &certificate_pem, &key_pem)?;
        let secrets: ClusterSecrets = files::read_toml(&layout.secrets())?;
        secrets.gossip_key()?;
        secrets.join_secret()?;
        Ok(NodeDir {
            path: path.to_path_buf(),
            config,
            credential,
            secrets,
            ca: CertificateAuthority::from_pem(ca_pem, ca_key_pem),
        })
    }

    pub fn layout(&self) -> Layout {
        Layout::new(&self.path)
    }

    pub fn join_token(&self) -> Result<JoinToken> {
        Ok(JoinToken {
            ca_fingerprint: self.credential.ca_fingerprint(),
            secret: self.secrets.join_secret()?,
        })
    }

    /// Issues an admin credential pointing at this node.
    pub fn issue_admin_credential(&self, admin_name: &str) -> Result<AdminCredential> {
        validate_name("admin name", admin_name)?;
        let issued = self
            .ca
            .issue_with_new_key(&Caller::Admin(admin_name.to_string()))?;
        Ok(AdminCredential {
            cluster_id: self.config.cluster_id.clone(),
            agents: vec![self.config.advertise],
            ca_pem: self.ca.certificate_pem.clone(),
            certificate_pem: issued.certificate_pem,
            key_pem: issued.key_pem,
        })
    }

    pub fn known_peers(&self) -> KnownPeers {
        files::read_toml(&self.layout().peers()).unwrap_or_default()
    }

    pub fn save_known_peers(&self, peers: &KnownPeers) -> Result<()> {
        Ok(files::write_toml(
            &self.layout().peers(),
            peers,
            Visibility::Public,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn options(name: &str) -> InitOptions {
        InitOptions {
            name: name.to_string(),
            listen: "127.0.0.1:7946".parse().unwrap(),
            advertise: None,
            roles: vec!["lb".into()],
            membership: MembershipSettings::default(),
        }
    }

    #[test]
    fn init_writes_a_reopenable_directory_with_private_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n1");
        let (node, token, admin) = NodeDir::init(&path, options("n1")).unwrap();
        assert_eq!(token.ca_fingerprint, node.credential.ca_fingerprint());
        admin.tls().unwrap();
        let reopened = NodeDir::open(&path).unwrap();
        assert_eq!(reopened.config.name, "n1");
        assert_eq!(reopened.config.cluster_id, node.config.cluster_id);
        let layout = reopened.layout();
        for secret in [
            layout.secrets(),
            layout.ca_key(),
            layout.node_key(),
            layout.admin_credential(),
        ] {
            let mode = std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", secret.display());
        }
        let again = NodeDir::init(&path, options("n1")).unwrap_err().to_string();
        assert!(again.contains("already holds node n1"), "{again}");
    }

    #[test]
    fn bad_names_are_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        let error = NodeDir::init(&path, options("../evil"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("node name"), "{error}");
        assert!(!path.join("node.toml").exists());
    }
}
