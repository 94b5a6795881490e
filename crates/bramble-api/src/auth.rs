//! Who is asking, on every request, and the credential the API acts with for them.
//!
//! Three ways in, as Proxmox and Nomad offer: the TLS client certificate of an admin
//! credential (the TLS layer has verified it against the cluster CA before any request
//! is read), `Authorization: Bearer <token>` checked against the token's record in this
//! node's replica of the catalog, or the dashboard's session cookie. Node certificates are refused: they are every
//! agent's, and nothing in the API is for agents.
//!
//! The API then calls the subsystems over RPC *as the caller*: it mints (in memory,
//! never on disk) an admin certificate named after the caller — `admin/alice` for the
//! certificate `alice`, `admin/token:ci` for the token `ci` — with the cluster CA every
//! member holds. What a subsystem records about who did something (a cancelled job, the
//! exec audit log) therefore names the person or token, not the node that relayed it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bramble_cluster::NodeDir;
use bramble_http::PeerCertificates;
use bramble_http::server::BoundedRequest;
use bramble_meta::Meta;
use bramble_meta::api::Consistency;
use bramble_net::{Caller, Credential, RpcClient};
use hyper::header;

use crate::ApiError;
use crate::dashboard::sessions::{self, SessionView, Sessions};
use crate::tokens::{self, TokenRecord};

/// An authenticated caller of the API.
#[derive(Debug, Clone)]
pub enum Principal {
    /// An admin credential's certificate, by its name.
    Admin(String),
    /// An API token, by its name.
    Token(String),
    /// A dashboard session (logged in with the dashboard password).
    Dashboard(SessionView),
}

impl Principal {
    /// The admin name the API acts under on this caller's behalf.
    pub fn acting_name(&self) -> String {
        match self {
            Principal::Admin(name) => name.clone(),
            Principal::Token(name) => format!("token:{name}"),
            Principal::Dashboard(_) => "dashboard".to_string(),
        }
    }

    /// How logs and answers name the caller (`admin/alice`, `admin/token:ci`).
    pub fn describe(&self) -> String {
        format!("admin/{}", self.acting_name())
    }
}

/// Checks the credential of each request.
pub struct Authenticator {
    meta: Arc<Meta>,
    sessions: Arc<Sessions>,
}

impl Authenticator {
    pub fn new(meta: Arc<Meta>, sessions: Arc<Sessions>) -> Authenticator {
        Authenticator { meta, sessions }
    }

    /// The dashboard session a cookie names, if it still stands (the password it was
    /// opened under is still the current one).
    pub async fn session(&self, id: &str) -> Result<Option<SessionView>, ApiError> {
        let Some((_, version)) = crate::dashboard::password::current(&self.meta).await? else {
            return Ok(None);
        };
        Ok(self.sessions.find(id, version))
    }

    pub async fn authenticate(&self, request: &BoundedRequest) -> Result<Principal, ApiError> {
        if let Some(PeerCertificates(chain)) = request.extensions().get::<PeerCertificates>()
            && let Some(leaf) = chain.first()
        {
            return match Caller::from_verified_certificate(leaf) {
                Caller::Admin(name) => Ok(Principal::Admin(name)),
                Caller::Node(name) => Err(ApiError::Forbidden(format!(
                    "the certificate of node {name} is for agents, not for the API; use an admin credential or a token (bramble token create)"
                ))),
                Caller::Anonymous => Err(ApiError::Unauthenticated(
                    "the client certificate could not be read".into(),
                )),
            };
        }
        let Some(value) = request.headers().get(header::AUTHORIZATION) else {
            if let Some(id) = request
                .headers()
                .get(header::COOKIE)
                .and_then(|cookie| cookie.to_str().ok())
                .and_then(sessions::cookie_value)
            {
                return match self.session(id).await? {
                    Some(view) => Ok(Principal::Dashboard(view)),
                    None => Err(ApiError::Unauthenticated(
                        "the dashboard session has ended; log in again".into(),
                    )),
                };
            }
            return Err(ApiError::Unauthenticated(
                "every request needs a credential: an admin certificate, or Authorization: Bearer <token> (bramble token create)".into(),
            ));
        };
        let value = value.to_str().map_err(|_| {
            ApiError::Unauthenticated("the Authorization header is not ASCII text".into())
        })?;
        let presented = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => {
                return Err(ApiError::Unauthenticated(
                    "the Authorization header must be Bearer <token>".into(),
                ));
            }
        };
        let presented = tokens::parse(presented)?;
        // This node's replica: a revocation reaches it within a heartbeat, and a request
        // costs no round trip to the leader.
        let stored = self
            .meta
            .read(
                &tokens::token_key(&presented.name),
                Consistency::Stale,
                false,
            )
            .await
            .map_err(|error| ApiError::Unavailable(format!("reading the token: {error}")))?
            .ok_or_else(tokens::unknown_token)?;
        let record: TokenRecord = serde_json::from_slice(&stored.value)
            .map_err(|error| ApiError::Internal(format!("a token record is corrupt: {error}")))?;
        record.check(&presented, bramble_util::time::unix_millis())?;
        Ok(Principal::Token(presented.name))
    }
}

/// Most acting credentials kept; beyond, the cache starts afresh (minting one is a
/// P-256 key and a signature: milliseconds).
const MAX_DEPUTIES: usize = 64;

/// RPC clients that present an admin certificate minted for each principal.
pub struct Deputies {
    node: Arc<NodeDir>,
    clients: Mutex<HashMap<String, RpcClient>>,
}

impl Deputies {
    pub fn new(node: Arc<NodeDir>) -> Deputies {
        Deputies {
            node,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The RPC client acting for `principal`.
    pub fn client_for(&self, principal: &Principal) -> Result<RpcClient, ApiError> {
        let name = principal.acting_name();
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(client) = clients.get(&name) {
            return Ok(client.clone());
        }
        let issued = self
            .node
            .ca
            .issue_with_new_key(&Caller::Admin(name.clone()))
            .map_err(|error| ApiError::Internal(format!("minting a credential: {error}")))?;
        let credential = Credential::from_pem(
            &self.node.ca.certificate_pem,
            &issued.certificate_pem,
            &issued.key_pem,
        )
        .and_then(|credential| credential.client_config())
        .map_err(|error| ApiError::Internal(format!("minting a credential: {error}")))?;
        // An API request should not hang on a dead node for the default 10 s.
        let client = RpcClient::new(credential)
            .with_timeouts(Duration::from_secs(2), Duration::from_secs(8));
        if clients.len() >= MAX_DEPUTIES {
            clients.clear();
        }
        clients.insert(name, client.clone());
        Ok(client)
    }
}
