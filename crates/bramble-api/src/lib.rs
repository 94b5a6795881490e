//! The HTTP API (issue 12, second part): `/api/v1` over HTTPS on every agent, answering
//! for the whole cluster from any node, so scripts, `curl` and the dashboard to come need
//! no CLI. Every request is authenticated: an admin certificate from the cluster CA
//! (what the CLI holds), or an API token (`bramble token create`).
//!
//! - [`settings`]: `api.toml` (on or off, where it listens).
//! - [`tokens`]: the tokens' format, their catalog records (hashes only) and checks.
//! - [`auth`]: who is asking — certificate or token — and the credential the API then
//!   acts with on the caller's behalf.
//! - [`routes`]: the endpoints: each is the same RPC the CLI's `--json` output comes from,
//!   so the API and the CLI answer alike by construction.
//! - [`service`]: `api.*` RPC, the token commands behind `bramble token`.
//! - [`dashboard`]: the web page on `/` (login, node grid, charts, balancers, panels) and
//!   its sessions and live events.
//! - [`subsystem`]: the `api` subsystem: the server certificate, the HTTPS listener.
//!
//! The server is the shared hardened one (`bramble-http`), not axum: every HTTP surface
//! of the agent then has the same bounds (head, body, connections, timeouts), and the
//! route table is one `match` on the path's segments (see `docs/ARCHITECTURE.md`).

pub mod auth;
pub mod dashboard;
pub mod routes;
pub mod service;
pub mod settings;
pub mod subsystem;
pub mod tokens;

/// What can go wrong in the API; each maps to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No credential, or one that is not valid: 401.
    #[error("{0}")]
    Unauthenticated(String),
    /// Too many failed logins lately: 429, with when to try again.
    #[error("too many failed logins; try again in {retry_after_seconds} s")]
    TooManyAttempts { retry_after_seconds: u64 },
    /// A valid credential that may not do this: 403.
    #[error("{0}")]
    Forbidden(String),
    /// A malformed request: 400.
    #[error("{0}")]
    Invalid(String),
    /// No such endpoint or resource: 404.
    #[error("{0}")]
    NotFound(String),
    /// The endpoint exists but not with this method: 405.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The request conflicts with the cluster's state: 409.
    #[error("{0}")]
    Conflict(String),
    /// The cluster cannot answer now (no quorum, a node unreachable): 503.
    #[error("{0}")]
    Unavailable(String),
    /// A node did not answer in time: 504.
    #[error("{0}")]
    Timeout(String),
    /// A bug or an I/O failure: 500.
    #[error("{0}")]
    Internal(String),
    /// `api.toml` is unreadable or wrong.
    #[error("{path}: {message}")]
    Settings { path: String, message: String },
}

impl ApiError {
    pub fn status(&self) -> hyper::StatusCode {
        use hyper::StatusCode;
        match self {
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::TooManyAttempts { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Invalid(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal(_) | ApiError::Settings { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The RPC error an `api.*` call answers with.
    pub fn into_rpc(self) -> bramble_net::RpcError {
        use bramble_net::ErrorKind;
        let kind = match &self {
            ApiError::Unauthenticated(_)
            | ApiError::Forbidden(_)
            | ApiError::TooManyAttempts { .. } => ErrorKind::Unauthorized,
            ApiError::Invalid(_) => ErrorKind::BadRequest,
            ApiError::NotFound(_) | ApiError::MethodNotAllowed(_) => ErrorKind::NotFound,
            ApiError::Conflict(_) => ErrorKind::AlreadyExists,
            ApiError::Unavailable(_) => ErrorKind::Unavailable,
            ApiError::Timeout(_) => ErrorKind::Timeout,
            ApiError::Internal(_) | ApiError::Settings { .. } => ErrorKind::Internal,
        };
        bramble_net::RpcError::new(kind, self.to_string())
    }
}

/// An RPC error from a node, as the API reports it.
impl From<bramble_net::RpcError> for ApiError {
    fn from(error: bramble_net::RpcError) -> Self {
        use bramble_net::ErrorKind;
        let message = error.message.clone();
        match error.kind {
            ErrorKind::BadRequest | ErrorKind::TooLarge => ApiError::Invalid(message),
            ErrorKind::Unauthorized => ApiError::Forbidden(message),
            ErrorKind::NotFound => ApiError::NotFound(message),
            ErrorKind::Refused
            | ErrorKind::AlreadyExists
            | ErrorKind::NotEmpty
            | ErrorKind::WrongType
            | ErrorKind::Full => ApiError::Conflict(message),
            ErrorKind::Unavailable => ApiError::Unavailable(message),
            ErrorKind::Timeout => ApiError::Timeout(message),
            _ => ApiError::Internal(message),
        }
    }
}

impl From<bramble_net::CallError> for ApiError {
    fn from(error: bramble_net::CallError) -> Self {
        match error {
            bramble_net::CallError::Remote { error, .. } => error.into(),
            bramble_net::CallError::Timeout { .. } => ApiError::Timeout(error.to_string()),
            other => ApiError::Unavailable(other.to_string()),
        }
    }
}
