//! `<data-dir>/api.toml`, as the monitor's `monitor.toml`:
//!
//! ```toml
//! enabled = true                # false: no HTTPS listener on this node
//! listen = "192.0.2.7:9443"     # default: the node's advertised address, port 9443
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ApiError;

/// Where the API listens by default: HTTPS's port with a 9 in front, beside the
/// monitor's 9101.
pub const DEFAULT_API_PORT: u16 = 9443;
/// The settings file in the node's data directory.
pub const SETTINGS_FILE: &str = "api.toml";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// Where the API listens; None: the node's advertised address, port 9443.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
}

fn enabled_by_default() -> bool {
    true
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            enabled: true,
            listen: None,
        }
    }
}

impl ApiSettings {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(SETTINGS_FILE)
    }

    pub fn load(data_dir: &Path) -> Result<Self, ApiError> {
        let path = Self::path(data_dir);
        if !path.exists() {
            return Ok(Self::default());
        }
        bramble_util::files::read_toml(&path).map_err(|error| ApiError::Settings {
            path: path.display().to_string(),
            message: error.to_string(),
        })
    }

    pub fn save(&self, data_dir: &Path) -> Result<(), ApiError> {
        let path = Self::path(data_dir);
        bramble_util::files::write_toml(&path, self, bramble_util::files::Visibility::Public)
            .map_err(|error| ApiError::Settings {
                path: path.display().to_string(),
                message: error.to_string(),
            })
    }

    /// Where the API listens on a node advertised at `advertise`.
    pub fn address(&self, advertise: SocketAddr) -> SocketAddr {
        self.listen
            .unwrap_or_else(|| SocketAddr::new(advertise.ip(), DEFAULT_API_PORT))
    }

    /// The URL a client uses for this node's API, if it is on.
    pub fn url(&self, advertise: SocketAddr) -> Option<String> {
        self.enabled
            .then(|| format!("https://{}/api/v1", self.address(advertise)))
    }
}
