//! The endpoints of `/api/v1`. Each answers with the same JSON as the CLI command named in
//! [`ENDPOINTS`] with `--json`, because both come from the same RPC: the API asks this
//! node's own subsystems (which answer for the cluster: the catalog, the schedulers and
//! the reconcilers are reachable from every node) or, for one node's figures, that node.
//! Errors are `{"error": "..."}` with the status that fits (401, 403, 404, 405, 409, 503).

use std::net::SocketAddr;
use std::sync::Arc;

use bramble_cluster::{Membership, NodeState, NodeView};
use bramble_compute::jobs::admin as jobs;
use bramble_compute::services::admin as services;
use bramble_http::server::{BoundedRequest, SimpleResponse};
use bramble_lb::config::{BackendChange, BalancerSpec};
use bramble_lb::pool::BalancerStats;
use bramble_meta::Meta;
use bramble_meta::api::Consistency;
use bramble_meta::types::{Command, CommandResult};
use bramble_monitor::history::Tier;
use bramble_monitor::service::{
    AlertScope, AlertsResponse, HistoryResponse, METHOD_ALERTS, METHOD_HISTORY, METHOD_SAMPLE,
    SampleResponse,
};
use bramble_net::RpcClient;
use bramble_platform::service::{METHOD_WORKERS, WorkersResponse};
use bramble_store::admin as store;
use bramble_util::Shutdown;
use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Response, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::ApiError;
use crate::auth::{Authenticator, Deputies, Principal};
use crate::dashboard::Dashboard;
use crate::dashboard::events::EventBody;
use crate::dashboard::sessions;

/// Every endpoint: method, path, what it answers, and the CLI command with the same JSON.
pub const ENDPOINTS: &[(&str, &str, &str, &str)] = &[
    ("GET", "/api/v1", "this list", ""),
    ("GET", "/api/v1/whoami", "who the API takes you for", ""),
    (
        "GET",
        "/api/v1/events",
        "Server-Sent Events, one a second: every node with its last second's figures",
        "",
    ),
    (
        "POST",
        "/api/v1/session",
        "body {\"password\": \"...\"}: a dashboard session cookie and its CSRF token (GET: the token again; DELETE: log out)",
        "",
    ),
    (
        "GET",
        "/api/v1/cluster",
        "the catalog: leader, term, voters, commit index",
        "bramble cluster status --json",
    ),
    (
        "GET",
        "/api/v1/nodes",
        "every node: state, address, roles, load, memory, version",
        "bramble nodes --json",
    ),
    (
        "GET",
        "/api/v1/nodes/{node}/sample",
        "the node's latest one-second sample (CPU, memory, disks, network, temperature, throttling)",
        "bramble metrics {node} --json",
    ),
    (
        "GET",
        "/api/v1/nodes/{node}/history?tier=hour|day",
        "the node's last hour at 1 s, or last day at 1 min",
        "bramble metrics {node} --history hour|day --json",
    ),
    (
        "GET",
        "/api/v1/nodes/{node}/workers",
        "the node's background workers",
        "bramble workers --node {node} --json",
    ),
    (
        "GET",
        "/api/v1/alerts",
        "active alerts across the cluster (node or backend down, throttled, hot, disk full) and the nodes that did not answer",
        "bramble alerts --json",
    ),
    (
        "GET",
        "/api/v1/balancers",
        "each balancer node's live view: frontends, backends and their states, sessions, errors",
        "bramble lb status --json",
    ),
    (
        "POST",
        "/api/v1/balancers/{name}/backends/{backend}/drain|enable|disable|weight",
        "changes a backend at run time (weight: body {\"weight\": N}); the balancer's new spec",
        "bramble lb backend drain|enable|disable|weight {name} {backend}",
    ),
    (
        "GET",
        "/api/v1/services",
        "every service: version, replicas running and wanted, update state",
        "bramble service ls --json",
    ),
    (
        "GET",
        "/api/v1/services/{name}",
        "a service's spec, replicas and rollout",
        "bramble service ps {name} --json",
    ),
    (
        "POST",
        "/api/v1/services/{name}/scale",
        "body {\"replicas\": N}: scales the service",
        "bramble service scale {name} N",
    ),
    (
        "GET",
        "/api/v1/jobs?all=true",
        "running jobs (all=true: the finished ones still kept too)",
        "bramble jobs --json",
    ),
    (
        "GET",
        "/api/v1/jobs/{id}?tasks=true",
        "a job's state and counts (tasks=true: each task too)",
        "bramble job {id} --json",
    ),
    (
        "POST",
        "/api/v1/jobs/{id}/cancel",
        "cancels a job",
        "bramble cancel {id}",
    ),
    (
        "GET",
        "/api/v1/volumes",
        "every volume's spec",
        "bramble volume ls --json",
    ),
    (
        "GET",
        "/api/v1/volumes/{name}",
        "a volume's bricks, their nodes' states and heal queues",
        "bramble volume status {name} --json",
    ),
];

/// The API's state, shared by every request.
pub struct Api {
    pub node_name: String,
    /// This agent's RPC address: most endpoints ask their own agent.
    pub own_address: SocketAddr,
    pub membership: Arc<Membership>,
    pub meta: Arc<Meta>,
    pub authenticator: Arc<Authenticator>,
    pub deputies: Deputies,
    pub dashboard: Dashboard,
    /// Ends the event streams when the agent stops.
    pub shutdown: Shutdown,
}

/// What the API answers with: a whole body, or an event stream.
pub type ApiBody = Either<Full<Bytes>, EventBody>;
pub type ApiResponse = Response<ApiBody>;

/// Longest path looked at; every endpoint's is far shorter.
const MAX_PATH_SEGMENTS: usize = 8;
const SESSION_PATH: &str = "/api/v1/session";
const EVENTS_PATH: &str = "/api/v1/events";

impl Api {
    /// Answers one request: the page's files and the login need no credential; the rest
    /// is authenticated, then routed.
    pub async fn respond(
        self: Arc<Self>,
        request: BoundedRequest,
        peer: SocketAddr,
    ) -> ApiResponse {
        let path = request.uri().path();
        if request.method() == Method::GET
            && let Some(asset) = crate::dashboard::asset(path)
        {
            return static_response(asset).map(Either::Left);
        }
        if path == SESSION_PATH && request.method() == Method::POST {
            return self.log_in(&request, peer).await.map(Either::Left);
        }
        let principal = match self.authenticator.authenticate(&request).await {
            Ok(principal) => principal,
            Err(error) => {
                if matches!(error, ApiError::Unauthenticated(_)) {
                    // No token in the log; the peer, to find who keeps trying.
                    info!(%peer, "API request refused: {error}");
                }
                return error_response(&error).map(Either::Left);
            }
        };
        if let Err(error) = check_action(&principal, &request) {
            return error_response(&error).map(Either::Left);
        }
        if path == EVENTS_PATH {
            return match self.events(&principal, &request) {
                Ok(response) => response,
                Err(error) => error_response(&error).map(Either::Left),
            };
        }
        if path == SESSION_PATH && request.method() == Method::DELETE {
            let mut response = match &principal {
                Principal::Dashboard(view) => {
                    self.dashboard.sessions.close(&view.key);
                    json_response(StatusCode::OK, &json!({ "logged_out": true }))
                }
                _ => error_response(&ApiError::Invalid(
                    "only a dashboard session logs out".into(),
                )),
            };
            set_cookie(&mut response, &sessions::expired_cookie());
            return response.map(Either::Left);
        }
        match self.route(&principal, &request).await {
            Ok(body) => json_response(StatusCode::OK, &body),
            Err(error) => error_response(&error),
        }
        .map(Either::Left)
    }

    /// `POST /api/v1/session` with `{"password": "..."}`: a session cookie and the CSRF
    /// token the page sends with its actions.
    async fn log_in(&self, request: &BoundedRequest, peer: SocketAddr) -> SimpleResponse {
        if let Err(error) = check_origin(request) {
            return error_response(&error);
        }
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Login {
            password: String,
        }
        let login: Login = match json_body(request) {
            Ok(login) => login,
            Err(error) => return error_response(&error),
        };
        match self
            .dashboard
            .log_in(&self.meta, peer.ip(), &login.password)
            .await
        {
            Ok(session) => {
                info!(%peer, "dashboard login");
                let mut response = json_response(
                    StatusCode::OK,
                    &json!({ "csrf": session.csrf, "node": self.node_name }),
                );
                set_cookie(&mut response, &sessions::session_cookie(&session.id));
                response
            }
            Err(error) => {
                info!(%peer, "dashboard login refused: {error}");
                error_response(&error)
            }
        }
    }

    /// `GET /api/v1/events`: the live stream.
    fn events(
        &self,
        principal: &Principal,
        request: &BoundedRequest,
    ) -> Result<ApiResponse, ApiError> {
        only(request.method(), Method::GET, EVENTS_PATH)?;
        let permit = self
            .dashboard
            .streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                ApiError::Unavailable(format!(
                    "this node serves {} event streams already; close a dashboard or use another node",
                    crate::dashboard::events::MAX_STREAMS
                ))
            })?;
        let still_allowed: crate::dashboard::events::StillAllowed = match principal {
            Principal::Dashboard(_) => {
                let cookie = request
                    .headers()
                    .get(header::COOKIE)
                    .and_then(|cookie| cookie.to_str().ok())
                    .and_then(sessions::cookie_value)
                    .unwrap_or_default()
                    .to_string();
                let authenticator = self.authenticator.clone();
                Box::new(move || {
                    let authenticator = authenticator.clone();
                    let cookie = cookie.clone();
                    Box::pin(
                        async move { matches!(authenticator.session(&cookie).await, Ok(Some(_))) },
                    )
                })
            }
            // A token or certificate was checked at the start; the stream ends with the
            // connection's lifetime (10 minutes), after which the client asks again.
            _ => Box::new(|| Box::pin(async { true })),
        };
        let body = crate::dashboard::events::open(
            permit,
            self.membership.clone(),
            self.deputies.client_for(principal)?,
            still_allowed,
            self.shutdown.clone(),
        );
        let mut response = Response::new(Either::Right(body));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(response)
    }

    async fn route(
        &self,
        principal: &Principal,
        request: &BoundedRequest,
    ) -> Result<Value, ApiError> {
        let path = request.uri().path();
        let rest = path
            .strip_prefix("/api/v1")
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))
            .ok_or_else(|| {
                ApiError::NotFound(format!("no endpoint {path}: the API is under /api/v1"))
            })?;
        let segments: Vec<&str> = rest
            .split('/')
            .filter(|segment| !segment.is_empty())
            .collect();
        if segments.len() > MAX_PATH_SEGMENTS {
            return Err(not_found(path));
        }
        let query = Query::parse(request.uri().query())?;
        let method = request.method();
        let client = self.deputies.client_for(principal)?;
        match segments.as_slice() {
            [] => {
                only(method, Method::GET, path)?;
                Ok(index())
            }
            ["whoami"] => {
                only(method, Method::GET, path)?;
                Ok(json!({
                    "principal": principal.describe(),
                    "node": self.node_name,
                }))
            }
            ["session"] => {
                only(method, Method::GET, path)?;
                let Principal::Dashboard(view) = principal else {
                    return Err(ApiError::NotFound(
                        "no dashboard session: this request came with a token or certificate"
                            .into(),
                    ));
                };
                Ok(json!({ "csrf": view.csrf, "node": self.node_name }))
            }
            ["cluster"] => {
                only(method, Method::GET, path)?;
                Ok(to_json(&self.meta.status(false).await?))
            }
            ["nodes"] => {
                only(method, Method::GET, path)?;
                Ok(to_json(&self.membership.nodes().await))
            }
            ["nodes", node, "sample"] => {
                only(method, Method::GET, path)?;
                let address = self.address_of(node).await?;
                let (node, sample): SampleResponse =
                    call(&client, address, METHOD_SAMPLE, &()).await?;
                Ok(json!({ "node": node, "sample": sample }))
            }
            ["nodes", node, "history"] => {
                only(method, Method::GET, path)?;
                let tier = match query.get("tier").unwrap_or("hour") {
                    "hour" => Tier::Hour,
                    "day" => Tier::Day,
                    other => {
                        return Err(ApiError::Invalid(format!(
                            "tier must be hour or day, not {other:?}"
                        )));
                    }
                };
                let address = self.address_of(node).await?;
                let history: HistoryResponse =
                    call(&client, address, METHOD_HISTORY, &tier).await?;
                Ok(to_json(&history))
            }
            ["nodes", node, "workers"] => {
                only(method, Method::GET, path)?;
                let address = self.address_of(node).await?;
                let (node, workers): WorkersResponse =
                    call(&client, address, METHOD_WORKERS, &()).await?;
                Ok(json!({ "node": node, "workers": workers }))
            }
            ["alerts"] => {
                only(method, Method::GET, path)?;
                let alerts: AlertsResponse = call(
                    &client,
                    self.own_address,
                    METHOD_ALERTS,
                    &AlertScope::Cluster,
                )
                .await?;
                Ok(to_json(&alerts))
            }
            ["balancers"] => {
                only(method, Method::GET, path)?;
                self.balancers(&client).await
            }
            ["balancers", balancer, "backends", backend, action] => {
                only(method, Method::POST, path)?;
                let change = match *action {
                    "drain" => BackendChange::Drain,
                    "enable" => BackendChange::Enable,
                    "disable" => BackendChange::Disable,
                    "weight" => {
                        #[derive(serde::Deserialize)]
                        #[serde(deny_unknown_fields)]
                        struct Weight {
                            weight: u32,
                        }
                        BackendChange::Weight(json_body::<Weight>(request)?.weight)
                    }
                    _ => return Err(not_found(path)),
                };
                let spec = self.change_backend(balancer, backend, change).await?;
                info!(by = %principal.describe(), %balancer, %backend, ?change, "API: backend changed");
                Ok(to_json(&spec))
            }
            ["services"] => {
                only(method, Method::GET, path)?;
                let list: Vec<services::ServiceSummary> =
                    call(&client, self.own_address, services::METHOD_LIST, &()).await?;
                Ok(to_json(&list))
            }
            ["services", name] => {
                only(method, Method::GET, path)?;
                let answer: services::PsAnswer = call(
                    &client,
                    self.own_address,
                    services::METHOD_PS,
                    &name.to_string(),
                )
                .await?;
                Ok(to_json(&answer))
            }
            ["services", name, "scale"] => {
                only(method, Method::POST, path)?;
                #[derive(serde::Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Scale {
                    replicas: u32,
                }
                let scale: Scale = json_body(request)?;
                let spec: bramble_compute::services::spec::ServiceSpec = call(
                    &client,
                    self.own_address,
                    services::METHOD_SCALE,
                    &services::ScaleRequest {
                        name: name.to_string(),
                        replicas: scale.replicas,
                    },
                )
                .await?;
                info!(by = %principal.describe(), service = %name, replicas = scale.replicas, "API: service scaled");
                Ok(to_json(&spec))
            }
            ["jobs"] => {
                only(method, Method::GET, path)?;
                let all = query.flag("all")?;
                let list: Vec<jobs::JobSummary> = call(
                    &client,
                    self.own_address,
                    jobs::METHOD_LIST,
                    &jobs::ListJobs { all },
                )
                .await?;
                Ok(to_json(&list))
            }
            ["jobs", id] => {
                only(method, Method::GET, path)?;
                let id = job_id(id)?;
                let view: jobs::JobView = call(
                    &client,
                    self.own_address,
                    jobs::METHOD_JOB,
                    &jobs::JobQuery {
                        id,
                        with_tasks: query.flag("tasks")?,
                        forwarded: false,
                    },
                )
                .await?;
                Ok(to_json(&view))
            }
            ["jobs", id, "cancel"] => {
                only(method, Method::POST, path)?;
                let id = job_id(id)?;
                let state: bramble_compute::jobs::record::JobState =
                    call(&client, self.own_address, jobs::METHOD_CANCEL, &id).await?;
                info!(by = %principal.describe(), job = id, "API: job cancelled");
                Ok(json!({ "job": id, "state": state.name() }))
            }
            ["volumes"] => {
                only(method, Method::GET, path)?;
                let list: Vec<bramble_store::volume::VolumeSpec> =
                    call(&client, self.own_address, store::METHOD_VOLUME_LIST, &()).await?;
                Ok(to_json(&list))
            }
            ["volumes", name] => {
                only(method, Method::GET, path)?;
                let status: store::VolumeStatus = call(
                    &client,
                    self.own_address,
                    store::METHOD_VOLUME_STATUS,
                    &store::VolumeName {
                        name: name.to_string(),
                    },
                )
                .await?;
                Ok(to_json(&status))
            }
            _ => Err(not_found(path)),
        }
    }

    /// A member's RPC address by name.
    async fn address_of(&self, name: &str) -> Result<SocketAddr, ApiError> {
        let nodes = self.membership.nodes().await;
        let node = nodes
            .iter()
            .find(|node| node.name == name)
            .ok_or_else(|| ApiError::NotFound(format!("there is no node named {name:?}")))?;
        if !is_up(node) {
            return Err(ApiError::Unavailable(format!(
                "node {name} is {}",
                node.state.as_str()
            )));
        }
        Ok(node.addr)
    }

    /// Changes one backend of a balancer's spec in the catalog: read, change, and write
    /// only if no one else wrote it meanwhile (as `bramble lb backend` does).
    async fn change_backend(
        &self,
        balancer: &str,
        backend: &str,
        change: BackendChange,
    ) -> Result<BalancerSpec, ApiError> {
        let key = bramble_lb::keys::balancer_key(balancer);
        let stored = self
            .meta
            .read(&key, Consistency::Linearizable, false)
            .await?
            .ok_or_else(|| {
                ApiError::NotFound(format!("there is no balancer named {balancer:?}"))
            })?;
        let mut spec: BalancerSpec = serde_json::from_slice(&stored.value).map_err(|error| {
            ApiError::Internal(format!(
                "the stored spec of {balancer} is unreadable: {error}"
            ))
        })?;
        spec.change_backend(backend, change)
            .map_err(|error| ApiError::Invalid(error.to_string()))?;
        let value = serde_json::to_vec(&spec)
            .map_err(|error| ApiError::Internal(format!("encoding the spec: {error}")))?;
        let command = Command::PutIfVersion {
            key,
            value,
            expected_version: stored.version,
        };
        match self.meta.write(command, false).await? {
            CommandResult::Written { .. } => Ok(spec),
            CommandResult::VersionMismatch { .. } => Err(ApiError::Conflict(format!(
                "{balancer} was changed by someone else meanwhile; send the request again"
            ))),
            other => Err(ApiError::Internal(format!(
                "the catalog answered {other:?} to the change of {balancer}"
            ))),
        }
    }

    /// Every balancer node's live stats, asked at once; a node that does not answer is
    /// listed with the error rather than holding the others back.
    async fn balancers(&self, client: &RpcClient) -> Result<Value, ApiError> {
        let mut asked = JoinSet::new();
        for node in self.membership.nodes().await {
            if !is_up(&node)
                || !node
                    .roles
                    .iter()
                    .any(|role| role == bramble_lb::subsystem::LB_ROLE)
            {
                continue;
            }
            let client = client.clone();
            asked.spawn(async move {
                let answer: Result<Vec<BalancerStats>, ApiError> =
                    call(&client, node.addr, "lb.stats", &()).await;
                (node.name, answer)
            });
        }
        let mut nodes = Vec::new();
        while let Some(joined) = asked.join_next().await {
            let Ok((node, answer)) = joined else {
                continue;
            };
            nodes.push(match answer {
                Ok(balancers) => json!({ "node": node, "balancers": balancers }),
                Err(error) => {
                    warn!(%node, %error, "a balancer node did not answer the API");
                    json!({ "node": node, "error": error.to_string() })
                }
            });
        }
        nodes.sort_by(|left, right| left["node"].as_str().cmp(&right["node"].as_str()));
        Ok(Value::Array(nodes))
    }
}

fn is_up(node: &NodeView) -> bool {
    matches!(node.state, NodeState::Alive | NodeState::Suspect)
}

async fn call<Request: Serialize, Answer: DeserializeOwned>(
    client: &RpcClient,
    address: SocketAddr,
    method: &str,
    request: &Request,
) -> Result<Answer, ApiError> {
    client
        .call(address, method, request)
        .await
        .map_err(ApiError::from)
}

fn to_json<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or_else(|error| json!({ "error": error.to_string() }))
}

fn index() -> Value {
    Value::Array(
        ENDPOINTS
            .iter()
            .map(|(method, path, what, cli)| {
                json!({ "method": method, "path": path, "answers": what, "cli": cli })
            })
            .collect(),
    )
}

fn not_found(path: &str) -> ApiError {
    ApiError::NotFound(format!("no endpoint {path} (GET /api/v1 lists them)"))
}

fn only(method: &Method, wanted: Method, path: &str) -> Result<(), ApiError> {
    if *method == wanted {
        Ok(())
    } else {
        Err(ApiError::MethodNotAllowed(format!(
            "{path} answers {wanted}, not {method}"
        )))
    }
}

fn job_id(text: &str) -> Result<u64, ApiError> {
    text.parse()
        .map_err(|_| ApiError::Invalid(format!("a job id is a number, not {text:?}")))
}

fn json_body<T: DeserializeOwned>(request: &BoundedRequest) -> Result<T, ApiError> {
    serde_json::from_slice(request.body()).map_err(|error| {
        ApiError::Invalid(format!(
            "the request body is not the JSON expected: {error}"
        ))
    })
}

/// The query string's parameters (none of the API's need percent-decoding: they are
/// words and numbers).
struct Query<'a> {
    pairs: Vec<(&'a str, &'a str)>,
}

/// More parameters than any endpoint takes, with room.
const MAX_QUERY_PAIRS: usize = 16;

impl<'a> Query<'a> {
    fn parse(query: Option<&'a str>) -> Result<Query<'a>, ApiError> {
        let pairs: Vec<(&str, &str)> = query
            .unwrap_or_default()
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
            .collect();
        if pairs.len() > MAX_QUERY_PAIRS {
            return Err(ApiError::Invalid(format!(
                "at most {MAX_QUERY_PAIRS} query parameters, not {}",
                pairs.len()
            )));
        }
        Ok(Query { pairs })
    }

    fn get(&self, name: &str) -> Option<&'a str> {
        self.pairs
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| *value)
    }

    fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.get(name) {
            None | Some("false") | Some("0") => Ok(false),
            Some("") | Some("true") | Some("1") => Ok(true),
            Some(other) => Err(ApiError::Invalid(format!(
                "{name} must be true or false, not {other:?}"
            ))),
        }
    }
}

/// Refuses an action (anything but GET) that a browser could have been tricked into
/// sending: from another origin, or, for a dashboard session, without its CSRF token.
fn check_action(principal: &Principal, request: &BoundedRequest) -> Result<(), ApiError> {
    if request.method() == Method::GET || request.method() == Method::HEAD {
        return Ok(());
    }
    check_origin(request)?;
    if let Principal::Dashboard(view) = principal {
        let sent = request
            .headers()
            .get("x-csrf-token")
            .map(|value| value.as_bytes())
            .unwrap_or_default();
        if !bramble_util::secrets::constant_time_eq(sent, view.csrf.as_bytes()) {
            return Err(ApiError::Forbidden(
                "a dashboard action needs the session's X-CSRF-Token".into(),
            ));
        }
    }
    Ok(())
}

/// A browser names the page a request comes from in `Origin`; it must be this server.
/// (curl and scripts send none.)
fn check_origin(request: &BoundedRequest) -> Result<(), ApiError> {
    let Some(origin) = request.headers().get(header::ORIGIN) else {
        return Ok(());
    };
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .unwrap_or_default();
    let same = origin
        .to_str()
        .ok()
        .and_then(|origin| origin.strip_prefix("https://"))
        .is_some_and(|authority| !host.is_empty() && authority.eq_ignore_ascii_case(host));
    if same {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "a request from another origin may not act on the cluster".into(),
        ))
    }
}

fn set_cookie(response: &mut SimpleResponse, cookie: &str) {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
}

fn static_response(asset: crate::dashboard::Asset) -> SimpleResponse {
    let mut response = Response::new(Full::new(Bytes::from_static(asset.body)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    // Revalidated each time, so an upgraded agent's page is never mixed with an old one.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(crate::dashboard::CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

fn json_response(status: StatusCode, body: &Value) -> SimpleResponse {
    let mut text = serde_json::to_vec(body).unwrap_or_default();
    text.push(b'\n');
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // Answers describe the cluster now and may name secrets' owners: never cached.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

fn error_response(error: &ApiError) -> SimpleResponse {
    let mut response = json_response(error.status(), &json!({ "error": error.to_string() }));
    if let ApiError::TooManyAttempts {
        retry_after_seconds,
    } = error
        && let Ok(value) = HeaderValue::from_str(&retry_after_seconds.to_string())
    {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    if error.status() == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"bramble\""),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_flags_and_bounds() {
        let query = Query::parse(Some("all=true&tasks&tier=day")).expect("parse");
        assert!(query.flag("all").expect("all"));
        assert!(query.flag("tasks").expect("tasks"));
        assert!(!query.flag("missing").expect("missing"));
        assert_eq!(query.get("tier"), Some("day"));
        assert!(
            Query::parse(Some("all=maybe"))
                .expect("parse")
                .flag("all")
                .is_err()
        );
        let many = vec!["a=1"; MAX_QUERY_PAIRS + 1].join("&");
        assert!(Query::parse(Some(&many)).is_err());
    }

    #[test]
    fn every_endpoint_is_listed_under_the_prefix() {
        for (method, path, what, _) in ENDPOINTS {
            assert!(path.starts_with("/api/v1"), "{path}");
            assert!(["GET", "POST"].contains(method), "{method}");
            assert!(!what.is_empty());
        }
        assert_eq!(index().as_array().map(Vec::len), Some(ENDPOINTS.len()));
    }

    #[test]
    fn errors_carry_their_status_and_a_bearer_challenge() {
        let response = error_response(&ApiError::Unauthenticated("no".into()));
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(response.headers().contains_key(header::WWW_AUTHENTICATE));
        let response = error_response(&ApiError::MethodNotAllowed("x".into()));
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert!(!response.headers().contains_key(header::WWW_AUTHENTICATE));
    }
}
