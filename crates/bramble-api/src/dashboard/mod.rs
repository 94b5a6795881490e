//! The dashboard: one page embedded in the binary and served by every agent beside the API
//! (`/`), with a password login, live node grid and charts (Server-Sent Events, uPlot),
//! the balancers in HAProxy's stats-page view, and a panel per subsystem. The page only
//! calls `/api/v1` with its session cookie: it can see and do exactly what the API offers.
//!
//! - [`password`]: the one dashboard password (argon2id in the catalog; none by default).
//! - [`sessions`]: sessions, CSRF tokens, and the login's brakes.
//! - [`events`]: the one-event-a-second stream the page draws from.
//!
//! The static files are public (they hold no data) and sent with a Content-Security-Policy
//! that allows this origin's scripts and styles only: no inline script, no third-party
//! origin, no framing.

pub mod events;
pub mod password;
pub mod sessions;

use std::net::IpAddr;
use std::sync::Arc;

use bramble_meta::Meta;
use tokio::sync::Semaphore;

use crate::ApiError;
use sessions::{NewSession, Sessions};

/// A file of the page.
pub struct Asset {
    pub content_type: &'static str,
    pub body: &'static [u8],
}

/// The page's files by path.
pub fn asset(path: &str) -> Option<Asset> {
    let (content_type, body): (&str, &[u8]) = match path {
        "/" | "/index.html" => (
            "text/html; charset=utf-8",
            include_bytes!("../../assets/index.html"),
        ),
        "/assets/dashboard.js" => (
            "text/javascript; charset=utf-8",
            include_bytes!("../../assets/dashboard.js"),
        ),
        "/assets/dashboard.css" => (
            "text/css; charset=utf-8",
            include_bytes!("../../assets/dashboard.css"),
        ),
        "/assets/uplot.min.js" => (
            "text/javascript; charset=utf-8",
            include_bytes!("../../assets/uplot/uPlot.iife.min.js"),
        ),
        "/assets/uplot.min.css" => (
            "text/css; charset=utf-8",
            include_bytes!("../../assets/uplot/uPlot.min.css"),
        ),
        _ => return None,
    };
    Some(Asset { content_type, body })
}

/// The policy every page file is sent with.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The dashboard's state on this agent.
pub struct Dashboard {
    pub sessions: Arc<Sessions>,
    /// One password check at a time: each is 19 MiB and tens of milliseconds of argon2.
    verifying: Semaphore,
    /// Event streams open at once.
    pub streams: Arc<Semaphore>,
}

impl Default for Dashboard {
    fn default() -> Self {
        Dashboard {
            sessions: Arc::new(Sessions::default()),
            verifying: Semaphore::new(1),
            streams: Arc::new(Semaphore::new(events::MAX_STREAMS)),
        }
    }
}

impl Dashboard {
    /// A login: the brakes first, then the password against the catalog's hash.
    pub async fn log_in(
        &self,
        meta: &Meta,
        address: IpAddr,
        password: &str,
    ) -> Result<NewSession, ApiError> {
        self.sessions.admit_attempt(address)?;
        if password.is_empty() || password.len() > password::MAX_PASSWORD_BYTES {
            self.sessions.record_failure(address);
            return Err(ApiError::Unauthenticated("wrong password".into()));
        }
        let (record, version) = password::current(meta).await?.ok_or_else(|| {
            ApiError::Unavailable(
                "no dashboard password is set; an administrator sets one with bramble dashboard --set-password".into(),
            )
        })?;
        let _turn = self
            .verifying
            .acquire()
            .await
            .map_err(|_| ApiError::Unavailable("the agent is stopping".into()))?;
        let candidate = password.as_bytes().to_vec();
        let matches = tokio::task::spawn_blocking(move || {
            bramble_util::password::verify_password(&record.phc, &candidate)
        })
        .await
        .map_err(|error| ApiError::Internal(format!("checking the password: {error}")))?;
        if !matches {
            self.sessions.record_failure(address);
            return Err(ApiError::Unauthenticated("wrong password".into()));
        }
        self.sessions.open(version)
    }
}
