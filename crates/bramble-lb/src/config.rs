//! A balancer's specification, stored as JSON in the catalog under
//! `lb/balancers/<name>` so every `lb` node runs the same configuration and learns of
//! changes through a catalog watch.
//!
//! Every field a user can set is validated here, once, with an error that names the field:
//! the proxy trusts a spec that passed [`BalancerSpec::validate`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use bramble_util::names::validate_name;
use serde::{Deserialize, Serialize};

/// Most backends one balancer may have.
pub const MAX_BACKENDS: usize = 256;
/// Largest weight (HAProxy's range is 0-256 too).
pub const MAX_WEIGHT: u32 = 256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError {
        field: field.into(),
        message: message.into(),
    }
}

/// HTTP (layer 7: balancing per request, checks, cookies, X-Forwarded-For) or TCP (layer 4:
/// per connection, for anything that is not HTTP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Http,
    Tcp,
}

impl FromStr for Mode {
    type Err = SpecError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "http" => Ok(Mode::Http),
            "tcp" => Ok(Mode::Tcp),
            other => Err(invalid("mode", format!("{other:?} is not http or tcp"))),
        }
    }
}

/// How a backend is chosen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Weighted round robin.
    #[default]
    Roundrobin,
    /// Fewest active connections, weighted.
    Leastconn,
    /// Power of two random choices (the less loaded of two random backends).
    Random,
    /// Consistent hash of the client's IP address.
    HashSource,
    /// Consistent hash of a request header's value.
    HashHeader(String),
    /// Consistent hash of the request path.
    HashUri,
}

impl fmt::Display for Balance {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Balance::Roundrobin => write!(formatter, "roundrobin"),
            Balance::Leastconn => write!(formatter, "leastconn"),
            Balance::Random => write!(formatter, "random"),
            Balance::HashSource => write!(formatter, "hash-source"),
            Balance::HashHeader(header) => write!(formatter, "hash-header:{header}"),
            Balance::HashUri => write!(formatter, "hash-uri"),
        }
    }
}

impl FromStr for Balance {
    type Err = SpecError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(match text {
            "roundrobin" => Balance::Roundrobin,
            "leastconn" => Balance::Leastconn,
            "random" => Balance::Random,
            "hash-source" => Balance::HashSource,
            "hash-uri" => Balance::HashUri,
            other => match other.strip_prefix("hash-header:") {
                Some(header) if is_header_name(header) => {
                    Balance::HashHeader(header.to_ascii_lowercase())
                }
                _ => {
                    return Err(invalid(
                        "balance",
                        format!(
                            "{other:?} is not one of roundrobin, leastconn, random, hash-source, hash-header:<name>, hash-uri"
                        ),
                    ));
                }
            },
        })
    }
}

/// An HTTP header name (RFC 9110 token), bounded in length.
fn is_header_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte))
}

/// Whether a backend takes traffic (the runtime `lb backend drain|enable|disable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    #[default]
    Enabled,
    /// No new sessions, except sticky ones; open connections finish.
    Drain,
    /// No traffic at all.
    Disabled,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSpec {
    pub name: String,
    pub addr: SocketAddr,
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub admin: AdminState,
}

fn default_weight() -> u32 {
    1
}

impl FromStr for BackendSpec {
    type Err = SpecError;
    /// `ADDR`, `NAME=ADDR`, optionally followed by `,weight=N`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut parts = text.split(',');
        let main = parts.next().unwrap_or_default();
        let (name, address) = match main.split_once('=') {
            Some((name, address)) => (name.to_string(), address),
            None => (String::new(), main),
        };
        let addr = address
            .parse()
            .map_err(|_| invalid("backend", format!("{address:?} is not an IP:port address")))?;
        let mut weight = default_weight();
        for option in parts {
            match option.split_once('=') {
                Some(("weight", value)) => {
                    weight = value.parse().map_err(|_| {
                        invalid("backend", format!("weight {value:?} is not a number"))
                    })?;
                }
                _ => {
                    return Err(invalid(
                        "backend",
                        format!("unknown backend option {option:?}; use weight=N"),
                    ));
                }
            }
        }
        Ok(BackendSpec {
            name,
            addr,
            weight,
            admin: AdminState::Enabled,
        })
    }
}

/// An active health check: HAProxy's `check` with `inter`, `rise` and `fall`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    pub kind: CheckKind,
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    #[serde(default = "default_rise")]
    pub rise: u32,
    #[serde(default = "default_fall")]
    pub fall: u32,
}

fn default_interval() -> u64 {
    2000
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// A TCP connection succeeds.
    Tcp,
    /// An HTTP request answers with `expect_status`, or any 2xx/3xx when unset.
    Http {
        method: String,
        path: String,
        expect_status: Option<u16>,
    },
}

impl FromStr for CheckSpec {
    type Err = SpecError;
    /// `tcp`, or `METHOD /path` optionally followed by ` STATUS` (e.g. `HEAD /lb-check.txt`).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let kind = match words.as_slice() {
            ["tcp"] => CheckKind::Tcp,
            [method, path] | [method, path, _] => {
                let expect_status = match words.get(2) {
                    Some(status) => Some(status.parse().map_err(|_| {
                        invalid("check", format!("status {status:?} is not a number"))
                    })?),
                    None => None,
                };
                CheckKind::Http {
                    method: method.to_string(),
                    path: path.to_string(),
                    expect_status,
                }
            }
            _ => {
                return Err(invalid(
                    "check",
                    format!("{text:?} is not `tcp` or `METHOD /path [STATUS]`"),
                ));
            }
        };
        Ok(CheckSpec {
            kind,
            interval_ms: default_interval(),
            rise: default_rise(),
            fall: default_fall(),
        })
    }
}

/// Session stickiness by cookie.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sticky {
    /// Prefix the application's own cookie (the recipe's `cookie JSESSIONID prefix`): the
    /// balancer adds `<server>~` to its value and strips it on the way back in.
    PrefixCookie(String),
    /// Insert a cookie of this name naming the server.
    InsertCookie(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    pub connect_ms: u64,
    pub client_ms: u64,
    pub server_ms: u64,
    /// An idempotent request whose backend has not answered after this long goes to
    /// another server when one is left (HAProxy's `retry-on response-timeout` with a
    /// shorter timeout); 0 turns it off.
    pub retry_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect_ms: 5_000,
            client_ms: 30_000,
            server_ms: 30_000,
            retry_ms: 3_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_body_bytes: u64,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 64 * 1024,
            max_body_bytes: 64 * 1024 * 1024,
            max_connections: 10_000,
        }
    }
}

/// Virtual-IP failover among the `lb` nodes (Keepalived's job).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct VipSpec {
    /// Network interface to add the VIP to (real mode, needs CAP_NET_ADMIN). None: the
    /// loopback mode of the emulator, where only the holder binds the 127.x address.
    pub interface: Option<String>,
    /// Priority per node name (higher wins; Keepalived's `priority`). Nodes not listed
    /// have priority 100.
    pub priorities: BTreeMap<String, u8>,
    /// Keepalived's `nopreempt` inverted: with false, a recovered higher-priority node does
    /// not take the VIP back.
    pub preempt: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalancerSpec {
    pub name: String,
    /// The VIP and port clients use.
    pub listen: SocketAddr,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub balance: Balance,
    pub backends: Vec<BackendSpec>,
    /// Services whose replicas are backends too (`--backend service:web`): each placed
    /// replica becomes the backend `<service>-<index>` at its node's address and port,
    /// added and removed as the service's placements change.
    #[serde(default)]
    pub services: Vec<String>,
    #[serde(default)]
    pub check: Option<CheckSpec>,
    #[serde(default)]
    pub sticky: Option<Sticky>,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub limits: Limits,
    /// Seconds over which a recovered backend's weight ramps up to full.
    #[serde(default)]
    pub slow_start_secs: u32,
    #[serde(default)]
    pub vip: VipSpec,
}

/// A runtime change to one backend (`bramble lb backend ...`, and the API's actions):
/// HAProxy's `set server ... state drain|ready|maint` and `set weight`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChange {
    Drain,
    Enable,
    Disable,
    Weight(u32),
}

impl BalancerSpec {
    /// Applies `change` to the backend named `backend`, and checks the result.
    pub fn change_backend(
        &mut self,
        backend: &str,
        change: BackendChange,
    ) -> Result<(), SpecError> {
        let name = self.name.clone();
        let target = self
            .backends
            .iter_mut()
            .find(|candidate| candidate.name == backend)
            .ok_or_else(|| {
                invalid(
                    "backend",
                    if self.services.is_empty() {
                        format!("balancer {name} has no backend {backend:?}")
                    } else {
                        format!(
                            "balancer {name} has no backend {backend:?} (replicas of its services ({}) come and go with their placements and cannot be changed one by one)",
                            self.services.join(", ")
                        )
                    },
                )
            })?;
        match change {
            BackendChange::Drain => target.admin = AdminState::Drain,
            BackendChange::Enable => target.admin = AdminState::Enabled,
            BackendChange::Disable => target.admin = AdminState::Disabled,
            BackendChange::Weight(weight) => target.weight = weight,
        }
        self.validate()
    }

    /// Names unnamed backends (`s1`, `s2`, ...) and checks every bound.
    pub fn normalize_and_validate(&mut self) -> Result<(), SpecError> {
        for (index, backend) in self.backends.iter_mut().enumerate() {
            if backend.name.is_empty() {
                backend.name = format!("s{}", index + 1);
            }
        }
        self.validate()
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        validate_name("balancer name", &self.name)
            .map_err(|error| invalid("name", error.to_string()))?;
        if self.listen.port() == 0 {
            return Err(invalid("listen", "the port must not be 0"));
        }
        if self.backends.is_empty() && self.services.is_empty() {
            return Err(invalid(
                "backends",
                "at least one backend (ADDR, NAME=ADDR or service:NAME) is needed",
            ));
        }
        if self.services.len() > 16 {
            return Err(invalid("backends", "at most 16 services per balancer"));
        }
        for service in &self.services {
            validate_name("service name", service)
                .map_err(|error| invalid("backends", error.to_string()))?;
        }
        if self.backends.len() > MAX_BACKENDS {
            return Err(invalid(
                "backends",
                format!("{} backends; at most {MAX_BACKENDS}", self.backends.len()),
            ));
        }
        let mut names = BTreeSet::new();
        for backend in &self.backends {
            validate_name("backend name", &backend.name)
                .map_err(|error| invalid("backends", error.to_string()))?;
            if !names.insert(&backend.name) {
                return Err(invalid(
                    "backends",
                    format!("the name {} is used twice", backend.name),
                ));
            }
            if backend.weight > MAX_WEIGHT {
                return Err(invalid(
                    "backends",
                    format!(
                        "{} has weight {}; at most {MAX_WEIGHT}",
                        backend.name, backend.weight
                    ),
                ));
            }
            if backend.addr.port() == 0 {
                return Err(invalid("backends", format!("{} has port 0", backend.name)));
            }
        }
        if let Some(check) = &self.check {
            if !(100..=3_600_000).contains(&check.interval_ms) {
                return Err(invalid(
                    "check.interval_ms",
                    "must be between 100 and 3600000",
                ));
            }
            if !(1..=100).contains(&check.rise) || !(1..=100).contains(&check.fall) {
                return Err(invalid("check", "rise and fall must be between 1 and 100"));
            }
            if let CheckKind::Http {
                method,
                path,
                expect_status,
            } = &check.kind
            {
                if !["GET", "HEAD", "OPTIONS"].contains(&method.as_str()) {
                    return Err(invalid(
                        "check",
                        format!("method {method:?}: use GET, HEAD or OPTIONS"),
                    ));
                }
                if !path.starts_with('/')
                    || path.len() > 1024
                    || path.bytes().any(|byte| byte <= b' ' || byte == 0x7f)
                {
                    return Err(invalid(
                        "check",
                        format!(
                            "path {path:?} must start with / and have no spaces or control characters"
                        ),
                    ));
                }
                if let Some(status) = expect_status
                    && !(100..=599).contains(status)
                {
                    return Err(invalid(
                        "check",
                        format!("status {status} is not an HTTP status"),
                    ));
                }
            }
        }
        if let Some(Sticky::PrefixCookie(name) | Sticky::InsertCookie(name)) = &self.sticky
            && !is_header_name(name)
        {
            return Err(invalid(
                "sticky",
                format!("{name:?} is not a valid cookie name"),
            ));
        }
        if self.mode == Mode::Tcp
            && (self.sticky.is_some()
                || matches!(self.balance, Balance::HashHeader(_) | Balance::HashUri))
        {
            return Err(invalid(
                "mode",
                "tcp mode cannot use cookies or hash on headers/URIs; use hash-source",
            ));
        }
        for (field, value) in [
            ("timeouts.connect_ms", self.timeouts.connect_ms),
            ("timeouts.client_ms", self.timeouts.client_ms),
            ("timeouts.server_ms", self.timeouts.server_ms),
        ] {
            if !(10..=3_600_000).contains(&value) {
                return Err(invalid(field, "must be between 10 and 3600000 ms"));
            }
        }
        if self.timeouts.retry_ms != 0 && !(10..=3_600_000).contains(&self.timeouts.retry_ms) {
            return Err(invalid(
                "timeouts.retry_ms",
                "must be 0 (off) or between 10 and 3600000 ms",
            ));
        }
        if !(1024..=1024 * 1024).contains(&self.limits.max_header_bytes) {
            return Err(invalid(
                "limits.max_header_bytes",
                "must be between 1 KiB and 1 MiB",
            ));
        }
        if self.limits.max_connections == 0 || self.limits.max_connections > 1_000_000 {
            return Err(invalid(
                "limits.max_connections",
                "must be between 1 and 1000000",
            ));
        }
        if self.slow_start_secs > 3600 {
            return Err(invalid("slow_start_secs", "at most 3600"));
        }
        if let Some(interface) = &self.vip.interface
            && (interface.is_empty()
                || interface.len() > 15
                || !interface
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || b"-_.@".contains(&byte)))
        {
            return Err(invalid(
                "vip.interface",
                format!("{interface:?} is not an interface name"),
            ));
        }
        if self.vip.interface.is_some() {
            match self.listen.ip() {
                IpAddr::V4(address)
                    if !(address.is_loopback()
                        || address.is_unspecified()
                        || address.is_multicast()
                        || address.is_broadcast()) => {}
                other => {
                    return Err(invalid(
                        "vip.interface",
                        format!(
                            "a VIP on an interface must be a unicast IPv4 address, not {other} \
                             (IPv6 VIPs are not built yet; loopback VIPs need no interface)"
                        ),
                    ));
                }
            }
        }
        for node in self.vip.priorities.keys() {
            validate_name("node name", node)
                .map_err(|error| invalid("vip.priorities", error.to_string()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe() -> BalancerSpec {
        let mut spec = BalancerSpec {
            name: "webfarm".into(),
            listen: "127.0.2.100:8080".parse().unwrap(),
            mode: Mode::Http,
            balance: "roundrobin".parse().unwrap(),
            backends: vec![
                "web1=127.0.0.1:8081".parse().unwrap(),
                "127.0.0.1:8082,weight=3".parse().unwrap(),
            ],
            services: Vec::new(),
            check: Some("HEAD /lb-check.txt".parse().unwrap()),
            sticky: Some(Sticky::PrefixCookie("JSESSIONID".into())),
            timeouts: Timeouts::default(),
            limits: Limits::default(),
            slow_start_secs: 10,
            vip: VipSpec::default(),
        };
        spec.normalize_and_validate().unwrap();
        spec
    }

    #[test]
    fn the_recipe_parses_validates_and_round_trips_through_json() {
        let spec = recipe();
        assert_eq!(spec.backends[1].name, "s2");
        assert_eq!(spec.backends[1].weight, 3);
        assert_eq!(spec.check.as_ref().unwrap().interval_ms, 2000);
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<BalancerSpec>(&json).unwrap(), spec);
    }

    #[test]
    fn bad_fields_are_named_in_the_error() {
        type Breakage = Box<dyn Fn(&mut BalancerSpec)>;
        let cases: Vec<(&str, Breakage)> = vec![
            ("backends", Box::new(|spec| spec.backends.clear())),
            (
                "backends",
                Box::new(|spec| spec.backends[1].name = "web1".into()),
            ),
            ("backends", Box::new(|spec| spec.backends[0].weight = 1000)),
            (
                "check",
                Box::new(|spec| spec.check = Some("POST /x".parse().unwrap())),
            ),
            (
                "check",
                Box::new(|spec| spec.check = Some("GET /a\u{1}b".parse().unwrap())),
            ),
            (
                "sticky",
                Box::new(|spec| spec.sticky = Some(Sticky::InsertCookie("bad cookie".into()))),
            ),
            ("mode", Box::new(|spec| spec.mode = Mode::Tcp)),
            ("name", Box::new(|spec| spec.name = "../x".into())),
        ];
        for (field, breaks) in cases {
            let mut spec = recipe();
            breaks(&mut spec);
            let error = spec.validate().unwrap_err();
            assert_eq!(error.field, field, "{error}");
        }
    }

    #[test]
    fn parsers_refuse_nonsense_with_a_reason() {
        assert!(
            "roundrobinx"
                .parse::<Balance>()
                .unwrap_err()
                .message
                .contains("roundrobin")
        );
        assert!("hash-header:".parse::<Balance>().is_err());
        assert_eq!(
            "hash-header:X-User".parse::<Balance>().unwrap(),
            Balance::HashHeader("x-user".into())
        );
        assert!("web1=nowhere".parse::<BackendSpec>().is_err());
        assert!("127.0.0.1:1,speed=3".parse::<BackendSpec>().is_err());
        assert!("".parse::<CheckSpec>().is_err());
        assert_eq!("tcp".parse::<CheckSpec>().unwrap().kind, CheckKind::Tcp);
    }
}
