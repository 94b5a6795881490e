//! `<data-dir>/monitor.toml`, the monitor's settings on one node, as the balancer's live in
//! `lb.toml`:
//!
//! ```toml
//! enabled = true                    # false: no collectors, no history, no /metrics
//! metrics_listen = "192.0.2.7:9101" # default: the node's advertised address, port 9101
//!
//! # Optional: push every sample to InfluxDB 1.x, as Telegraf would.
//! influx_url = "http://192.0.2.50:8086"
//! influx_database = "telegraf"
//! influx_username = "bramble"       # optional, with influx_password
//! influx_password = "..."           # then the file must be mode 0600
//! influx_interval = "10s"           # how often to push (1s to 5m; default 10s)
//!
//! # Optional: POST alerts as JSON when they fire and resolve (one node sends).
//! alert_webhook = "http://192.0.2.60:9000/hooks/bramble"
//! ```
//!
//! Everything is checked when the file is read, and an error names the setting. The
//! password is a secret: it never appears in logs, statuses or `Debug` output, and the push
//! refuses to start while others can read the file that holds it.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::MonitorError;
use crate::http_post::HttpTarget;

/// node_exporter has 9100; the next port is Bramble's, so both can run side by side.
pub const DEFAULT_METRICS_PORT: u16 = 9101;
/// The settings file in the node's data directory.
pub const SETTINGS_FILE: &str = "monitor.toml";
/// Telegraf's default flush interval.
pub const DEFAULT_INFLUX_INTERVAL: Duration = Duration::from_secs(10);
const MIN_INFLUX_INTERVAL: Duration = Duration::from_secs(1);
/// The backlog holds ten minutes; an interval longer than half of that would leave no room
/// for a failed push.
const MAX_INFLUX_INTERVAL: Duration = Duration::from_secs(300);
/// Longest database name, user name or password accepted.
const MAX_CREDENTIAL_BYTES: usize = 255;

/// A password read from the settings: printed as `<redacted>` everywhere.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Password(String);

impl Password {
    pub fn new(text: impl Into<String>) -> Password {
        Password(text.into())
    }

    /// The password itself, for the one place that sends it.
    pub fn reveal(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("<redacted>")
    }
}

/// `<data-dir>/monitor.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorSettings {
    /// Whether the monitor runs at all.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// Where `/metrics` listens; None: the node's advertised address, port 9101.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// InfluxDB 1.x to push samples to (`http://host:8086`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub influx_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub influx_database: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub influx_username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub influx_password: Option<Password>,
    /// How often to push, as `10s`, `1m` or `1500ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub influx_interval: Option<String>,
    /// Where one node of the cluster POSTs alerts as they fire and resolve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert_webhook: Option<String>,
}

fn enabled_by_default() -> bool {
    true
}

impl Default for MonitorSettings {
    fn default() -> Self {
        MonitorSettings {
            enabled: true,
            metrics_listen: None,
            influx_url: None,
            influx_database: None,
            influx_username: None,
            influx_password: None,
            influx_interval: None,
            alert_webhook: None,
        }
    }
}

/// The InfluxDB push, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct InfluxSettings {
    pub target: HttpTarget,
    pub database: String,
    /// User name and password, for HTTP basic authentication.
    pub credentials: Option<(String, Password)>,
    pub interval: Duration,
}

impl MonitorSettings {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(SETTINGS_FILE)
    }

    /// Reads and checks the file; defaults when there is none.
    pub fn load(data_dir: &Path) -> Result<Self, MonitorError> {
        let path = Self::path(data_dir);
        if !path.exists() {
            return Ok(Self::default());
        }
        let settings: MonitorSettings =
            bramble_util::files::read_toml(&path).map_err(|error| MonitorError::Settings {
                path: path.display().to_string(),
                message: error.to_string(),
            })?;
        settings.check().map_err(|message| MonitorError::Settings {
            path: path.display().to_string(),
            message,
        })?;
        Ok(settings)
    }

    /// Writes the file: mode 0600 when it holds a password, 0644 otherwise.
    pub fn save(&self, data_dir: &Path) -> Result<(), MonitorError> {
        let path = Self::path(data_dir);
        let visibility = if self.influx_password.is_some() {
            bramble_util::files::Visibility::Private
        } else {
            bramble_util::files::Visibility::Public
        };
        bramble_util::files::write_toml(&path, self, visibility).map_err(|error| {
            MonitorError::Settings {
                path: path.display().to_string(),
                message: error.to_string(),
            }
        })
    }

    /// Every setting that can be wrong, checked; the message names the setting.
    pub fn check(&self) -> Result<(), String> {
        self.influx()?;
        self.webhook()?;
        Ok(())
    }

    /// Where `/metrics` listens on a node advertised at `advertise`.
    pub fn metrics_address(&self, advertise: SocketAddr) -> SocketAddr {
        self.metrics_listen
            .unwrap_or_else(|| SocketAddr::new(advertise.ip(), DEFAULT_METRICS_PORT))
    }

    /// The InfluxDB push, if configured.
    pub fn influx(&self) -> Result<Option<InfluxSettings>, String> {
        let Some(url) = &self.influx_url else {
            let stray = [
                ("influx_database", self.influx_database.is_some()),
                ("influx_username", self.influx_username.is_some()),
                ("influx_password", self.influx_password.is_some()),
                ("influx_interval", self.influx_interval.is_some()),
            ];
            if let Some((name, _)) = stray.iter().find(|(_, set)| *set) {
                return Err(format!("{name} is set but influx_url is not"));
            }
            return Ok(None);
        };
        let target = HttpTarget::parse(url).map_err(|problem| format!("influx_url: {problem}"))?;
        if target.path().contains('?') {
            return Err("influx_url: no query please; the push adds /write?db=...".to_string());
        }
        let database = self
            .influx_database
            .clone()
            .ok_or("influx_url is set but influx_database is not (Telegraf's is \"telegraf\")")?;
        check_text("influx_database", &database)?;
        let credentials = match (&self.influx_username, &self.influx_password) {
            (None, None) => None,
            (Some(user), Some(password)) => {
                check_text("influx_username", user)?;
                if user.contains(':') {
                    return Err("influx_username must not contain ':' (HTTP basic authentication splits there)".to_string());
                }
                check_text("influx_password", password.reveal())?;
                Some((user.clone(), password.clone()))
            }
            (Some(_), None) => {
                return Err("influx_username is set without influx_password".to_string());
            }
            (None, Some(_)) => {
                return Err("influx_password is set without influx_username".to_string());
            }
        };
        let interval = match &self.influx_interval {
            None => DEFAULT_INFLUX_INTERVAL,
            Some(text) => {
                let interval = parse_interval(text)
                    .ok_or_else(|| format!("influx_interval: {text:?} is not a duration such as \"10s\", \"1m\" or \"1500ms\""))?;
                if !(MIN_INFLUX_INTERVAL..=MAX_INFLUX_INTERVAL).contains(&interval) {
                    return Err(format!("influx_interval: {text} is outside 1s to 5m"));
                }
                interval
            }
        };
        Ok(Some(InfluxSettings {
            target,
            database,
            credentials,
            interval,
        }))
    }

    /// The alert webhook, if configured.
    pub fn webhook(&self) -> Result<Option<HttpTarget>, String> {
        self.alert_webhook
            .as_deref()
            .map(|url| {
                HttpTarget::parse(url).map_err(|problem| format!("alert_webhook: {problem}"))
            })
            .transpose()
    }

    /// Refuses a password in a file others may read (the push then does not start): the
    /// same rule ssh applies to its keys. `mode` is the file's permission bits.
    pub fn check_password_protection(&self, mode: u32) -> Result<(), String> {
        if self.influx_password.is_some() && mode & 0o077 != 0 {
            return Err(format!(
                "{SETTINGS_FILE} holds influx_password but its mode is {:04o}, readable by others: run `chmod 600` on it and restart the agent; the InfluxDB push is off until then",
                mode & 0o7777
            ));
        }
        Ok(())
    }
}

/// Non-empty, bounded, no control characters.
fn check_text(name: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{name} is empty"));
    }
    if value.len() > MAX_CREDENTIAL_BYTES {
        return Err(format!(
            "{name} has {} bytes; at most {MAX_CREDENTIAL_BYTES}",
            value.len()
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{name} holds control characters"));
    }
    Ok(())
}

/// `10s`, `1m`, `1500ms`, `2h`; or a bare number of seconds.
fn parse_interval(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|character: char| !character.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let millis = match unit {
        "" | "s" => number.checked_mul(1000)?,
        "ms" => number,
        "m" => number.checked_mul(60_000)?,
        "h" => number.checked_mul(3_600_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn influx(url: &str) -> MonitorSettings {
        MonitorSettings {
            influx_url: Some(url.to_string()),
            influx_database: Some("telegraf".to_string()),
            ..MonitorSettings::default()
        }
    }

    #[test]
    fn the_influx_settings_are_checked_and_name_the_setting() {
        let settings = influx("http://127.0.0.1:8086").influx().expect("valid");
        let settings = settings.expect("configured");
        assert_eq!(settings.interval, DEFAULT_INFLUX_INTERVAL);
        assert_eq!(settings.credentials, None);
        assert_eq!(MonitorSettings::default().influx(), Ok(None));

        let cases: Vec<(MonitorSettings, &str)> = vec![
            (
                MonitorSettings {
                    influx_database: None,
                    ..influx("http://x:8086")
                },
                "influx_database is not",
            ),
            (influx("https://x:8086"), "influx_url: https://"),
            (influx("http://x:8086/api?x=1"), "influx_url: no query"),
            (
                MonitorSettings {
                    influx_username: Some("u".into()),
                    ..influx("http://x:8086")
                },
                "without influx_password",
            ),
            (
                MonitorSettings {
                    influx_username: Some("a:b".into()),
                    influx_password: Some(Password::new("p")),
                    ..influx("http://x:8086")
                },
                "must not contain ':'",
            ),
            (
                MonitorSettings {
                    influx_interval: Some("10 parsecs".into()),
                    ..influx("http://x:8086")
                },
                "influx_interval",
            ),
            (
                MonitorSettings {
                    influx_interval: Some("500ms".into()),
                    ..influx("http://x:8086")
                },
                "outside 1s to 5m",
            ),
            (
                MonitorSettings {
                    influx_database: Some("tele\ngraf".into()),
                    ..influx("http://x:8086")
                },
                "influx_database holds control",
            ),
            (
                MonitorSettings {
                    influx_database: Some("telegraf".into()),
                    ..MonitorSettings::default()
                },
                "influx_database is set but influx_url is not",
            ),
            (
                MonitorSettings {
                    alert_webhook: Some("hooks.example".into()),
                    ..MonitorSettings::default()
                },
                "alert_webhook: the URL must start",
            ),
        ];
        for (settings, problem) in cases {
            let error = settings.check().expect_err(problem);
            assert!(error.contains(problem), "{error:?} lacks {problem:?}");
        }
        assert_eq!(parse_interval("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_interval("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_interval("1500ms"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_interval("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_interval("s"), None);
        assert_eq!(parse_interval("99999999999999999999h"), None);
    }

    #[test]
    fn the_password_never_prints_and_needs_a_private_file() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let settings = MonitorSettings {
            influx_username: Some("bramble".into()),
            influx_password: Some(Password::new("hunter2 secret")),
            ..influx("http://127.0.0.1:8086")
        };
        assert!(!format!("{settings:?}").contains("hunter2"));
        let checked = settings.influx().expect("valid").expect("configured");
        assert!(!format!("{checked:?}").contains("hunter2"));

        // Saved with a password: 0600, and read back the same.
        settings.save(dir.path()).expect("saved");
        use std::os::unix::fs::PermissionsExt as _;
        let path = MonitorSettings::path(dir.path());
        let mode = std::fs::metadata(&path)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(MonitorSettings::load(dir.path()).expect("loads"), settings);
        assert_eq!(settings.check_password_protection(mode), Ok(()));
        let error = settings
            .check_password_protection(0o100644)
            .expect_err("readable by others");
        assert!(
            error.contains("chmod 600") && error.contains("0644"),
            "{error}"
        );
        // Without a password the mode does not matter.
        assert_eq!(
            influx("http://x:1").check_password_protection(0o644),
            Ok(())
        );

        // An unknown or mistyped setting is refused with its name.
        std::fs::write(&path, "influx_urll = \"http://x:8086\"\n").expect("write");
        let error = MonitorSettings::load(dir.path()).expect_err("unknown field");
        assert!(error.to_string().contains("influx_urll"), "{error}");
        std::fs::write(&path, "influx_url = \"http://x:8086\"\n").expect("write");
        let error = MonitorSettings::load(dir.path()).expect_err("no database");
        assert!(error.to_string().contains("influx_database"), "{error}");
    }
}
